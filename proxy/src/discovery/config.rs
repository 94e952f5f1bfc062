//! The snapshot in the form the data path uses: lookups by address, built
//! once per snapshot rather than per connection.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use weft_api::SpiffeId;
use weft_api::v1::{self, MtlsMode, Protocol};

/// One endpoint of a Service port. Its load (open connections) carries over
/// from one snapshot to the next, so a push does not reset the balancer.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// None when the pod is not meshed (then plaintext).
    pub identity: Option<SpiffeId>,
    pub pod: String,
    active: Arc<AtomicUsize>,
    /// Connections ever sent here: breaks ties so that, under light load,
    /// traffic still spreads evenly instead of by coin flips.
    picked: Arc<AtomicUsize>,
    /// Peak-EWMA of response latency, for balancing requests.
    latency: Arc<Mutex<PeakEwma>>,
    /// Consecutive failures and ejection, for circuit breaking.
    outlier: Arc<Mutex<Outlier>>,
}

/// Consecutive-failure ejection state of one endpoint.
#[derive(Debug, Default)]
pub struct Outlier {
    consecutive: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl Outlier {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|u| now < u)
    }
}

/// How fast old latency observations are forgotten.
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// The latency assumed of an endpoint not yet measured: low enough that a
/// new endpoint gets tried soon, and it decays like any other estimate.
const DEFAULT_RTT: Duration = Duration::from_millis(5);

/// A latency estimate that jumps up to a slower observation at once and
/// decays down slowly, so a slow endpoint is avoided quickly and tried
/// again only gradually (the peak-EWMA of Finagle, tower and linkerd2-proxy).
#[derive(Debug)]
pub struct PeakEwma {
    cost_ns: f64,
    stamp: Instant,
}

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma {
            cost_ns: DEFAULT_RTT.as_nanos() as f64,
            stamp: Instant::now(),
        }
    }
}

impl PeakEwma {
    fn decayed(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        self.cost_ns * (-elapsed / EWMA_DECAY.as_secs_f64()).exp()
    }

    fn observe(&mut self, rtt: Duration) {
        let now = Instant::now();
        let rtt = rtt.as_nanos() as f64;
        let current = self.decayed(now);
        self.cost_ns = if rtt > current {
            rtt
        } else {
            let w = (-(now.saturating_duration_since(self.stamp).as_secs_f64())
                / EWMA_DECAY.as_secs_f64())
            .exp();
            current * w + rtt * (1.0 - w)
        };
        self.stamp = now;
    }
}

impl Endpoint {
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// The request balancer's load: latency estimate × (requests in flight + 1).
    pub fn load(&self) -> f64 {
        let cost = self
            .latency
            .lock()
            .map(|e| e.decayed(Instant::now()))
            .unwrap_or(DEFAULT_RTT.as_nanos() as f64);
        cost * (self.active() as f64 + 1.0)
    }

    pub fn is_ejected(&self) -> bool {
        self.outlier
            .lock()
            .map(|o| o.ejected(Instant::now()))
            .unwrap_or(false)
    }

    /// Records a request's outcome. After `cfg.consecutive_failures` failures
    /// in a row the endpoint is ejected for the base time, doubled for each
    /// ejection since its last success (capped at 32×), with up to 25%
    /// jitter — unless `may_eject` says too many are out already. True when
    /// this outcome ejected it.
    pub fn record(&self, success: bool, cfg: &v1::OutlierDetection, may_eject: bool) -> bool {
        let Ok(mut o) = self.outlier.lock() else {
            return false;
        };
        if success {
            o.consecutive = 0;
            o.ejections = 0;
            return false;
        }
        o.consecutive += 1;
        if cfg.consecutive_failures == 0 || o.consecutive < cfg.consecutive_failures || !may_eject {
            return false;
        }
        let base = Duration::from_millis(u64::from(cfg.base_ejection_ms));
        let time = base
            .saturating_mul(1 << o.ejections.min(5))
            .mul_f64(1.0 + rand::random::<f64>() * 0.25);
        o.ejected_until = Some(Instant::now() + time);
        o.ejections += 1;
        o.consecutive = 0;
        true
    }

    /// Records how long a request took to answer.
    pub fn observe(&self, rtt: Duration) {
        if let Ok(mut e) = self.latency.lock() {
            e.observe(rtt);
        }
    }

    /// Counts a connection (or request) to this endpoint while the guard lives.
    pub fn track(&self) -> ActiveGuard {
        self.picked.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.active.clone())
    }
}

#[derive(Debug)]
pub struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct ServicePort {
    /// `name.namespace:port`, for logs.
    pub name: String,
    pub protocol: Protocol,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// HTTP routes for requests to this port (empty: to its own endpoints).
    pub routes: crate::http::routes::Routes,
    /// Retry budget, limits, outlier detection and defaults.
    pub policy: Arc<Policy>,
}

/// A Service port's TrafficPolicy, with the state that must outlive one
/// snapshot (the budget's window, the bulkhead's permits): kept as long as
/// the policy itself does not change.
#[derive(Debug)]
pub struct Policy {
    pub spec: v1::TrafficPolicy,
    pub budget: Arc<tower::retry::budget::TpsBudget>,
    /// Concurrent requests (maxConcurrentRequests).
    pub permits: Option<Arc<tokio::sync::Semaphore>>,
    /// Open L4 connections (maxConnections).
    pub connections: Option<Arc<tokio::sync::Semaphore>>,
    /// Requests waiting for an endpoint (maxPendingRequests).
    pub pending: Option<Arc<tokio::sync::Semaphore>>,
    /// The round-robin balancer's position.
    next: AtomicUsize,
    /// Serializes ejection decisions, so two endpoints failing at once
    /// cannot both pass the max-ejected check.
    pub eject_lock: Mutex<()>,
}

impl Policy {
    pub fn new(spec: v1::TrafficPolicy) -> Policy {
        let b = spec.retry_budget.unwrap_or_default();
        let window = Duration::from_millis(u64::from(b.window_ms.max(1000)));
        let budget = tower::retry::budget::TpsBudget::new(
            window,
            b.min_per_second,
            b.ratio.clamp(0.0, 1000.0),
        );
        let limits = spec.limits.unwrap_or_default();
        let cap = |n: u32| (n > 0).then(|| Arc::new(tokio::sync::Semaphore::new(n as usize)));
        Policy {
            budget: Arc::new(budget),
            permits: cap(limits.max_concurrent_requests),
            connections: cap(limits.max_connections),
            pending: cap(limits.max_pending_requests),
            next: AtomicUsize::new(0),
            eject_lock: Mutex::new(()),
            spec,
        }
    }

    /// The idle timeout for pooled connections to this Service, if it sets one.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.spec.idle_timeout_ms > 0)
            .then(|| Duration::from_millis(u64::from(self.spec.idle_timeout_ms)))
    }

    /// How long a request may wait for an endpoint (0: not at all).
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(
            self.spec.limits.map_or(0, |l| l.queue_timeout_ms),
        ))
    }

    pub fn outlier(&self) -> v1::OutlierDetection {
        self.spec.outlier_detection.unwrap_or_default()
    }
}

impl ServicePort {
    /// Power of two choices over open connections: two endpoints at random,
    /// the less loaded wins (ties to the one picked less often). Cheap, and
    /// it keeps away from a slow endpoint whose connections pile up.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        match self.endpoints.len() {
            0 => None,
            1 => self.endpoints.first().cloned(),
            n => {
                let a = rand::random_range(0..n);
                let b = (a + rand::random_range(1..n)) % n;
                let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
                let load = |e: &Endpoint| (e.active(), e.picked.load(Ordering::Relaxed));
                let pick = if load(ea) <= load(eb) { ea } else { eb };
                Some(pick.clone())
            }
        }
    }

    /// The endpoint for one request attempt: P2C over peak-EWMA among those
    /// not ejected, avoiding `avoid` (the previous attempt's) when there is
    /// another.
    pub fn pick_request(
        &self,
        avoid: Option<SocketAddr>,
    ) -> Result<Arc<Endpoint>, crate::http::ProxyError> {
        use crate::http::ProxyError;
        if self.endpoints.is_empty() {
            return Err(ProxyError::NoEndpoints(self.name.clone()));
        }
        let live: Vec<&Arc<Endpoint>> = self.endpoints.iter().filter(|e| !e.is_ejected()).collect();
        if live.is_empty() {
            return Err(ProxyError::CircuitOpen);
        }
        let fresh: Vec<&Arc<Endpoint>> = live
            .iter()
            .copied()
            .filter(|e| Some(e.addr) != avoid)
            .collect();
        let pool = if fresh.is_empty() { live } else { fresh };
        let n = pool.len();
        let pick = match v1::LoadBalancer::try_from(self.policy.spec.load_balancer) {
            Ok(v1::LoadBalancer::RoundRobin) => {
                pool[self.policy.next.fetch_add(1, Ordering::Relaxed) % n]
            }
            Ok(v1::LoadBalancer::Random) => pool[rand::random_range(0..n)],
            _ => {
                let a = rand::random_range(0..n);
                if n == 1 {
                    pool[a]
                } else {
                    let b = (a + rand::random_range(1..n)) % n;
                    if pool[a].load() <= pool[b].load() {
                        pool[a]
                    } else {
                        pool[b]
                    }
                }
            }
        };
        Ok(pick.clone())
    }

    /// Whether one more endpoint may be ejected without passing the cap.
    pub fn may_eject(&self, max_percent: u32) -> bool {
        let out = self.endpoints.iter().filter(|e| e.is_ejected()).count();
        (out + 1) * 100 <= max_percent as usize * self.endpoints.len()
    }
}

/// Where an outbound connection goes.
#[derive(Debug)]
pub enum Destination {
    /// A Service's virtual IP: balanced over its endpoints.
    Service(Arc<ServicePort>),
    /// A meshed pod's own IP: mTLS to it.
    Pod(SpiffeId),
    /// Anything else: plain TCP, as addressed.
    Passthrough,
}

#[derive(Debug, Default)]
pub struct MeshConfig {
    pub version: u64,
    services: HashMap<SocketAddr, Arc<ServicePort>>,
    /// DNS names (`name.ns.svc.cluster.local`, `name.ns.svc`) to virtual IPs.
    names: HashMap<String, IpAddr>,
    workloads: HashMap<IpAddr, SpiffeId>,
    pub mtls_mode: Option<MtlsMode>,
    inbound_ports: HashMap<u16, Protocol>,
    opaque_ports: HashSet<u16>,
    pub trust_anchors_der: Vec<Vec<u8>>,
}

/// The current mesh configuration, swapped whole when a snapshot arrives.
pub type Mesh = Arc<ArcSwap<MeshConfig>>;

impl MeshConfig {
    /// Builds from a snapshot, reusing `prev`'s endpoint load counters.
    pub fn from_snapshot(
        s: &v1::Snapshot,
        trust_domain: &str,
        prev: &MeshConfig,
    ) -> Result<MeshConfig, String> {
        type Loads = (
            Arc<AtomicUsize>,
            Arc<AtomicUsize>,
            Arc<Mutex<PeakEwma>>,
            Arc<Mutex<Outlier>>,
        );
        let mut loads: HashMap<SocketAddr, Loads> = HashMap::new();
        for sp in prev.services.values() {
            for e in &sp.endpoints {
                loads.entry(e.addr).or_insert_with(|| {
                    (
                        e.active.clone(),
                        e.picked.clone(),
                        e.latency.clone(),
                        e.outlier.clone(),
                    )
                });
            }
        }
        let ip = |s: &str, what: &str| {
            s.parse::<IpAddr>()
                .map_err(|_| format!("{what}: `{s}` is not an IP"))
        };
        let id = |s: &str| -> Result<Option<SpiffeId>, String> {
            if s.is_empty() {
                Ok(None)
            } else {
                s.parse().map(Some).map_err(|e| format!("{e}"))
            }
        };
        let mut cfg = MeshConfig {
            version: s.version,
            trust_anchors_der: s.trust_anchors_der.clone(),
            opaque_ports: s
                .opaque_ports
                .iter()
                .filter_map(|p| u16::try_from(*p).ok())
                .collect(),
            ..MeshConfig::default()
        };
        for svc in &s.services {
            let vip = ip(&svc.virtual_ip, "virtual_ip")?;
            for fqdn in [
                format!("{}.{}.svc.{trust_domain}", svc.name, svc.namespace),
                format!("{}.{}.svc", svc.name, svc.namespace),
            ] {
                cfg.names.insert(fqdn, vip);
            }
            for port in &svc.ports {
                let p = u16::try_from(port.port).map_err(|_| format!("port {}", port.port))?;
                let mut endpoints = Vec::new();
                for e in &port.endpoints {
                    let addr = SocketAddr::new(
                        ip(&e.ip, "endpoint")?,
                        u16::try_from(e.port).map_err(|_| format!("endpoint port {}", e.port))?,
                    );
                    let (active, picked, latency, outlier) =
                        loads.get(&addr).cloned().unwrap_or_default();
                    endpoints.push(Arc::new(Endpoint {
                        addr,
                        identity: id(&e.identity)?,
                        pod: e.pod.clone(),
                        active,
                        picked,
                        latency,
                        outlier,
                    }));
                }
                cfg.services.insert(
                    SocketAddr::new(vip, p),
                    Arc::new(ServicePort {
                        name: format!("{}.{}:{p}", svc.name, svc.namespace),
                        protocol: Protocol::try_from(port.protocol)
                            .unwrap_or(Protocol::Unspecified),
                        endpoints,
                        routes: crate::http::routes::Routes::new(&port.routes)
                            .map_err(|e| format!("{}.{}:{p}: {e}", svc.name, svc.namespace))?,
                        policy: {
                            let spec = port.policy.clone().unwrap_or_default();
                            let key = SocketAddr::new(vip, p);
                            match prev.services.get(&key) {
                                Some(old) if old.policy.spec == spec => old.policy.clone(),
                                _ => Arc::new(Policy::new(spec)),
                            }
                        },
                    }),
                );
            }
        }
        for w in &s.workloads {
            if let Some(identity) = id(&w.identity)? {
                cfg.workloads.insert(ip(&w.ip, "workload")?, identity);
            }
        }
        if let Some(inb) = &s.inbound {
            cfg.mtls_mode = match MtlsMode::try_from(inb.mtls_mode) {
                Ok(MtlsMode::Unspecified) | Err(_) => None,
                Ok(m) => Some(m),
            };
            for p in &inb.ports {
                if let Ok(port) = u16::try_from(p.port) {
                    cfg.inbound_ports.insert(
                        port,
                        Protocol::try_from(p.protocol).unwrap_or(Protocol::Unspecified),
                    );
                }
            }
        }
        Ok(cfg)
    }

    /// The Service port at a virtual address (a route's backend).
    pub fn service(&self, addr: SocketAddr) -> Option<Arc<ServicePort>> {
        self.services.get(&addr).cloned()
    }

    pub fn destination(&self, dst: SocketAddr) -> Destination {
        if let Some(sp) = self.services.get(&dst) {
            return Destination::Service(sp.clone());
        }
        match self.workloads.get(&dst.ip()) {
            Some(id) => Destination::Pod(id.clone()),
            None => Destination::Passthrough,
        }
    }

    /// Whether `ip` is a meshed pod (its proxy speaks mTLS to us).
    pub fn is_meshed(&self, ip: IpAddr) -> bool {
        self.workloads.contains_key(&ip)
    }

    /// Whether an inbound port must never be sniffed.
    pub fn is_opaque(&self, port: u16) -> bool {
        self.opaque_ports.contains(&port)
            || self.inbound_ports.get(&port) == Some(&Protocol::Opaque)
    }

    /// What the admin server's `/config` shows: the snapshot as applied.
    pub fn to_json(&self) -> serde_json::Value {
        let mut services: Vec<_> = self
            .services
            .iter()
            .map(|(vip, sp)| {
                serde_json::json!({
                    "name": sp.name,
                    "address": vip.to_string(),
                    "protocol": format!("{:?}", sp.protocol).to_lowercase(),
                    "endpoints": sp.endpoints.iter().map(|e| serde_json::json!({
                        "address": e.addr.to_string(),
                        "identity": e.identity.as_ref().map(ToString::to_string),
                        "pod": e.pod,
                        "open_connections": e.active(),
                        "ejected": e.is_ejected(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        services.sort_by_key(|s| s["name"].as_str().map(str::to_string));
        let mut workloads: Vec<_> = self
            .workloads
            .iter()
            .map(|(ip, id)| serde_json::json!({ "ip": ip.to_string(), "identity": id.to_string() }))
            .collect();
        workloads.sort_by_key(|w| w["ip"].as_str().map(str::to_string));
        serde_json::json!({
            "version": self.version,
            "mtls_mode": self.mtls_mode.map(|m| format!("{m:?}").to_lowercase()),
            "services": services,
            "workloads": workloads,
        })
    }

    /// The virtual IP for a DNS name, if it is a mesh Service.
    pub fn resolve(&self, name: &str) -> Option<IpAddr> {
        self.names.get(name.trim_end_matches('.')).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> v1::Snapshot {
        v1::Snapshot {
            version: 7,
            services: vec![v1::Service {
                name: "db".into(),
                namespace: "default".into(),
                virtual_ip: "198.19.0.1".into(),
                ports: vec![v1::ServicePort {
                    port: 6379,
                    name: "redis".into(),
                    protocol: Protocol::Opaque as i32,
                    endpoints: (0..3)
                        .map(|i| v1::Endpoint {
                            ip: format!("198.18.0.{}", 20 + i),
                            port: 6379,
                            identity: "spiffe://cluster.local/ns/default/sa/db".into(),
                            weight: 1,
                            pod: format!("db-{i}"),
                        })
                        .collect(),
                    routes: vec![],
                    policy: None,
                }],
            }],
            workloads: vec![v1::Workload {
                ip: "198.18.0.20".into(),
                identity: "spiffe://cluster.local/ns/default/sa/db".into(),
                pod: "db-0".into(),
                namespace: "default".into(),
            }],
            inbound: Some(v1::Inbound {
                mtls_mode: MtlsMode::Strict as i32,
                ports: vec![],
            }),
            trust_anchors_der: vec![],
            opaque_ports: vec![3306],
            ..Default::default()
        }
    }

    #[test]
    fn resolves_services_pods_and_names() {
        let c = MeshConfig::from_snapshot(&snapshot(), "cluster.local", &MeshConfig::default())
            .unwrap();
        assert!(matches!(
            c.destination("198.19.0.1:6379".parse().unwrap()),
            Destination::Service(_)
        ));
        assert!(matches!(
            c.destination("198.18.0.20:1".parse().unwrap()),
            Destination::Pod(_)
        ));
        assert!(matches!(
            c.destination("198.19.0.1:80".parse().unwrap()),
            Destination::Passthrough
        ));
        assert_eq!(
            c.resolve("db.default.svc.cluster.local."),
            Some("198.19.0.1".parse().unwrap())
        );
        assert_eq!(
            c.resolve("db.default.svc"),
            Some("198.19.0.1".parse().unwrap())
        );
        assert_eq!(c.mtls_mode, Some(MtlsMode::Strict));
        assert!(c.is_opaque(3306));
    }

    #[test]
    fn p2c_avoids_the_loaded_endpoint_and_loads_survive_a_push() {
        let c = MeshConfig::from_snapshot(&snapshot(), "cluster.local", &MeshConfig::default())
            .unwrap();
        let Destination::Service(sp) = c.destination("198.19.0.1:6379".parse().unwrap()) else {
            panic!()
        };
        let busy = sp.endpoints[0].clone();
        let _guards: Vec<_> = (0..5).map(|_| busy.track()).collect();
        for _ in 0..200 {
            assert_ne!(sp.pick().unwrap().addr, busy.addr);
        }
        let next = MeshConfig::from_snapshot(&snapshot(), "cluster.local", &c).unwrap();
        let Destination::Service(sp2) = next.destination("198.19.0.1:6379".parse().unwrap()) else {
            panic!()
        };
        assert_eq!(sp2.endpoints[0].active(), 5);
    }

    #[test]
    fn consecutive_failures_eject_with_growing_time_and_a_cap() {
        let c = MeshConfig::from_snapshot(&snapshot(), "cluster.local", &MeshConfig::default())
            .unwrap();
        let Destination::Service(sp) = c.destination("198.19.0.1:6379".parse().unwrap()) else {
            panic!()
        };
        let cfg = v1::OutlierDetection {
            consecutive_failures: 3,
            base_ejection_ms: 60_000,
            max_ejection_percent: 34,
        };
        let e = &sp.endpoints[0];
        assert!(!e.record(false, &cfg, sp.may_eject(34)));
        assert!(!e.record(false, &cfg, sp.may_eject(34)));
        assert!(
            e.record(false, &cfg, sp.may_eject(34)),
            "the third failure ejects"
        );
        assert!(e.is_ejected());
        for _ in 0..50 {
            assert_ne!(sp.pick_request(None).unwrap().addr, e.addr);
        }
        // One of three is 33%: a second ejection would pass the 34% cap.
        assert!(!sp.may_eject(34));
        let f = &sp.endpoints[1];
        for _ in 0..5 {
            assert!(!f.record(false, &cfg, sp.may_eject(34)));
        }
        assert!(!f.is_ejected());
        // A success resets the count.
        let g = &sp.endpoints[2];
        g.record(false, &cfg, true);
        g.record(false, &cfg, true);
        g.record(true, &cfg, true);
        assert!(!g.record(false, &cfg, true));
    }

    #[test]
    fn round_robin_takes_turns() {
        let mut snap = snapshot();
        snap.services[0].ports[0].policy = Some(v1::TrafficPolicy {
            load_balancer: v1::LoadBalancer::RoundRobin as i32,
            ..Default::default()
        });
        let c = MeshConfig::from_snapshot(&snap, "cluster.local", &MeshConfig::default()).unwrap();
        let Destination::Service(sp) = c.destination("198.19.0.1:6379".parse().unwrap()) else {
            panic!()
        };
        let picks: Vec<_> = (0..6)
            .map(|_| sp.pick_request(None).unwrap().addr)
            .collect();
        assert_eq!(picks[0..3], picks[3..6]);
        assert_ne!(picks[0], picks[1]);
        assert_ne!(picks[1], picks[2]);
    }

    #[test]
    fn light_load_spreads_evenly() {
        let c = MeshConfig::from_snapshot(&snapshot(), "cluster.local", &MeshConfig::default())
            .unwrap();
        let Destination::Service(sp) = c.destination("198.19.0.1:6379".parse().unwrap()) else {
            panic!()
        };
        let mut counts = HashMap::new();
        for _ in 0..300 {
            let e = sp.pick().unwrap();
            drop(e.track());
            *counts.entry(e.addr).or_insert(0) += 1;
        }
        for n in counts.values() {
            assert!((90..=110).contains(n), "{counts:?}");
        }
    }
}
