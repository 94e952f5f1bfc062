//! The snapshot in the form the data path reads, built once per snapshot:
//! Services by virtual address with their endpoints, compiled routes and
//! policies; meshed pods by IP; DNS names; this pod's inbound settings.
//! Plain data: the live state of endpoints is in [`crate::balance`].

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use weft_api::SpiffeId;
use weft_api::v1::{self, MtlsMode, Protocol};

use crate::authn::{Issuer, PortAuthn};
use crate::authz::{DefaultAuthz, KeySet, PortAuthz};
use crate::balance::{self, Endpoint, PickError, Registry};
use crate::breaker;
use crate::policy::ServicePolicy;
use crate::ratelimit::Limit;
use crate::routes::{RouteError, Routes};

use super::subscriptions::{Key, Subscriptions};

/// What in a snapshot could not be applied (the previous one stays).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{what}: `{value}` is not an IP address")]
    Ip { what: &'static str, value: String },
    #[error("{what} {value} is not a port")]
    Port { what: &'static str, value: u32 },
    #[error("identity `{value}`: {reason}")]
    Identity { value: String, reason: String },
    #[error("rate limit {limit} on port {port}: {source}")]
    RateLimit {
        port: u16,
        limit: String,
        #[source]
        source: RouteError,
    },
    #[error("{service}: {source}")]
    Route {
        service: String,
        #[source]
        source: RouteError,
    },
}

#[derive(Debug)]
pub struct ServicePort {
    /// `name.namespace:port`, for logs.
    pub name: String,
    pub protocol: Protocol,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// HTTP routes for requests to this port (empty: to its own endpoints).
    pub routes: Routes,
    pub policy: Arc<ServicePolicy>,
}

impl ServicePort {
    /// The endpoint for a new connection.
    pub fn pick_connection(&self) -> Result<Arc<Endpoint>, PickError> {
        balance::pick_connection(&self.endpoints)
    }

    /// The endpoint for one request attempt, avoiding `avoid` when it can.
    pub fn pick_request(&self, avoid: Option<SocketAddr>) -> Result<Arc<Endpoint>, PickError> {
        balance::pick_request(
            &self.endpoints,
            self.policy.algorithm,
            &self.policy.cursor,
            avoid,
        )
    }

    /// Whether one more endpoint may be ejected without passing the cap.
    pub fn may_eject(&self, max_percent: u32) -> bool {
        let out = self.endpoints.iter().filter(|e| e.is_ejected()).count();
        breaker::may_eject(out, self.endpoints.len(), max_percent)
    }
}

/// What the mesh knows of an address.
#[derive(Debug)]
pub enum Address {
    /// A Service's virtual IP and port.
    Service(Arc<ServicePort>),
    /// A meshed pod's own IP, and the identity of its workload.
    Pod(SpiffeId),
    /// Nothing: outside the mesh.
    Unknown,
}

#[derive(Debug, Default)]
pub struct MeshConfig {
    pub version: u64,
    services: HashMap<SocketAddr, Arc<ServicePort>>,
    /// Every Service's name and address (DNS, and what a connection to a
    /// VIP subscribes to), shared with the configs before and after while
    /// it does not change.
    names: Arc<NameTable>,
    workloads: HashMap<IpAddr, SpiffeId>,
    pub mtls_mode: Option<MtlsMode>,
    inbound_ports: HashMap<u16, Protocol>,
    opaque_ports: HashSet<u16>,
    pub trust_anchors_der: Vec<Vec<u8>>,
    /// This pod's authorization: per port, and for ports without policies.
    authz: HashMap<u16, Arc<PortAuthz>>,
    default_authz: Arc<PortAuthz>,
    /// This pod's rate limits, per port (kept, with their buckets, while
    /// a snapshot does not change them).
    rate_limits: crate::ratelimit::PortLimits,
    /// The JWT issuers each port trusts.
    authn: HashMap<u16, Arc<PortAuthn>>,
    /// Every issuer, by id (parsed keys kept while unchanged).
    issuers: HashMap<String, Arc<Issuer>>,
    /// The Services whose content this config holds, by key.
    held: HashSet<Arc<str>>,
    /// Networks holding meshed pods: an unknown IP in one is worth asking about.
    networks: Vec<(IpAddr, u8)>,
}

/// Every Service's name, virtual IP and ports: about a hundred bytes a
/// Service, whatever the number of pods.
#[derive(Debug, Default)]
pub struct NameTable {
    /// "name.namespace" to the virtual IP.
    by_name: HashMap<Box<str>, IpAddr>,
    by_vip: HashMap<IpAddr, NameEntry>,
    /// `.svc.<trust domain>`, the suffix of fully qualified names.
    suffix: Box<str>,
    /// From a Discover names table (kept until the next one), or from the
    /// Services of a Watch snapshot (rebuilt with them).
    from_table: bool,
}

/// A Service as the names table knows it.
#[derive(Debug)]
pub struct NameEntry {
    /// "namespace/name"
    pub key: Arc<str>,
    pub ports: Box<[u32]>,
}

impl NameTable {
    fn new<'a>(
        entries: impl Iterator<Item = (&'a String, &'a String, &'a String, &'a Vec<v1::PortName>)>,
        trust_domain: &str,
        from_table: bool,
    ) -> NameTable {
        let mut t = NameTable {
            suffix: format!(".svc.{trust_domain}").into(),
            from_table,
            ..NameTable::default()
        };
        for (name, namespace, vip, ports) in entries {
            let Ok(vip) = vip.parse::<IpAddr>() else {
                continue;
            };
            t.by_name.insert(format!("{name}.{namespace}").into(), vip);
            t.by_vip.entry(vip).or_insert_with(|| NameEntry {
                key: Arc::from(format!("{namespace}/{name}")),
                ports: ports.iter().map(|p| p.port).collect(),
            });
        }
        t
    }

    /// `name.ns.svc.<trust domain>` or `name.ns.svc` (a trailing dot allowed).
    fn resolve(&self, fqdn: &str) -> Option<IpAddr> {
        let n = fqdn.trim_end_matches('.');
        let base = n
            .strip_suffix(&*self.suffix)
            .or_else(|| n.strip_suffix(".svc"))?;
        self.by_name.get(base).copied()
    }
}

/// The current mesh configuration, swapped whole when a snapshot arrives,
/// and what this proxy subscribed to.
#[derive(Debug)]
pub struct MeshState {
    config: ArcSwap<MeshConfig>,
    pub subscriptions: Arc<Subscriptions>,
}

impl std::ops::Deref for MeshState {
    type Target = ArcSwap<MeshConfig>;

    fn deref(&self) -> &ArcSwap<MeshConfig> {
        &self.config
    }
}

impl MeshState {
    pub fn new(cfg: MeshConfig, subscriptions: Arc<Subscriptions>) -> Mesh {
        Arc::new(MeshState {
            config: ArcSwap::from_pointee(cfg),
            subscriptions,
        })
    }

    /// A config that holds everything there is (tests, fuzzing).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn fixed(cfg: MeshConfig) -> Mesh {
        MeshState::new(cfg, Arc::new(Subscriptions::everything()))
    }
}

pub type Mesh = Arc<MeshState>;

impl MeshConfig {
    /// Builds from a snapshot: endpoints get their live state from
    /// `endpoints`, and a policy unchanged since `prev` is kept with its state.
    /// Routes are those a client in `namespace` follows.
    pub fn from_snapshot(
        s: &v1::Snapshot,
        trust_domain: &str,
        namespace: &str,
        prev: &MeshConfig,
        endpoints: &Registry,
    ) -> Result<MeshConfig, ConfigError> {
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
        // The names table: a complete one in this message, else the one this
        // proxy holds (Discover sends it only when it changes); a Watch
        // stream has none, and its Services are every Service.
        cfg.names = if s.names_complete {
            Arc::new(NameTable::new(
                s.names
                    .iter()
                    .map(|n| (&n.name, &n.namespace, &n.virtual_ip, &n.ports)),
                trust_domain,
                true,
            ))
        } else if prev.names.from_table {
            prev.names.clone()
        } else {
            let ports: Vec<Vec<v1::PortName>> = s
                .services
                .iter()
                .map(|svc| {
                    svc.ports
                        .iter()
                        .map(|p| v1::PortName {
                            port: p.port,
                            protocol: p.protocol,
                        })
                        .collect()
                })
                .collect();
            Arc::new(NameTable::new(
                s.services
                    .iter()
                    .zip(&ports)
                    .map(|(n, p)| (&n.name, &n.namespace, &n.virtual_ip, p)),
                trust_domain,
                false,
            ))
        };
        cfg.networks = s.mesh_networks.iter().filter_map(|n| network(n)).collect();
        for svc in &s.services {
            let vip = ip(&svc.virtual_ip, "virtual_ip")?;
            cfg.held
                .insert(Arc::from(format!("{}/{}", svc.namespace, svc.name)));
            for port in &svc.ports {
                let p = self::port(port.port, "port")?;
                let name = format!("{}.{}:{p}", svc.name, svc.namespace);
                let mut eps = Vec::with_capacity(port.endpoints.len());
                for e in &port.endpoints {
                    let addr = SocketAddr::new(
                        ip(&e.ip, "endpoint")?,
                        self::port(e.port, "endpoint port")?,
                    );
                    eps.push(Arc::new(endpoints.endpoint(
                        addr,
                        id(&e.identity)?,
                        e.pod.clone(),
                    )));
                }
                let key = SocketAddr::new(vip, p);
                let spec = port.policy.clone().unwrap_or_default();
                let policy = match prev.services.get(&key) {
                    Some(old) if old.policy.spec == spec => old.policy.clone(),
                    _ => Arc::new(ServicePolicy::new(spec)),
                };
                let routes =
                    Routes::new(&port.routes, namespace).map_err(|source| ConfigError::Route {
                        service: name.clone(),
                        source,
                    })?;
                cfg.services.insert(
                    key,
                    Arc::new(ServicePort {
                        name,
                        protocol: Protocol::try_from(port.protocol)
                            .unwrap_or(Protocol::Unspecified),
                        endpoints: eps,
                        routes,
                        policy,
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
            let default = match v1::DefaultAuthz::try_from(inb.default_authz) {
                Ok(v1::DefaultAuthz::AllAuthenticated) => DefaultAuthz::AllAuthenticated,
                Ok(v1::DefaultAuthz::Deny) => DefaultAuthz::Deny,
                _ => DefaultAuthz::Allow,
            };
            let key_sets: HashMap<String, KeySet> = inb
                .api_key_sets
                .iter()
                .map(|k| {
                    let digests = k
                        .sha256
                        .iter()
                        .filter_map(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
                        .collect();
                    (k.id.clone(), Arc::new(digests))
                })
                .collect();
            for p in &inb.jwt_providers {
                let issuer = match prev.issuers.get(&p.id) {
                    Some(old) if old.source == *p => old.clone(),
                    _ => Arc::new(Issuer::new(p)),
                };
                cfg.issuers.insert(p.id.clone(), issuer);
            }
            cfg.default_authz = Arc::new(PortAuthz::from_snapshot(
                default,
                None,
                trust_domain,
                &key_sets,
            ));
            for pa in &inb.authz {
                let port = self::port(pa.port, "authorization port")?;
                if !pa.jwt_providers.is_empty() {
                    let authn = crate::authn::port_authn(&pa.jwt_providers, &cfg.issuers);
                    cfg.authn.insert(port, Arc::new(authn));
                }
                let built = PortAuthz::from_snapshot(default, Some(pa), trust_domain, &key_sets);
                // Unchanged: the same Arc (nothing to rebuild per request).
                let built = match prev.authz.get(&port) {
                    Some(old) if **old == built => old.clone(),
                    _ => Arc::new(built),
                };
                cfg.authz.insert(port, built);
            }
            cfg.rate_limits = crate::ratelimit::from_snapshot(&inb.rate_limits, |port| {
                prev.rate_limits.get(&port).cloned().unwrap_or_default()
            })
            .map_err(|(port, limit, source)| ConfigError::RateLimit {
                port,
                limit,
                source,
            })?;
        }
        Ok(cfg)
    }

    /// The Service port at a virtual address (a route's backend).
    pub fn service(&self, addr: SocketAddr) -> Option<Arc<ServicePort>> {
        self.services.get(&addr).cloned()
    }

    pub fn lookup(&self, dst: SocketAddr) -> Address {
        if let Some(sp) = self.services.get(&dst) {
            return Address::Service(sp.clone());
        }
        match self.workloads.get(&dst.ip()) {
            Some(id) => Address::Pod(id.clone()),
            None => Address::Unknown,
        }
    }

    /// Whether `ip` is a meshed pod (its proxy speaks mTLS to us).
    pub fn is_meshed(&self, ip: IpAddr) -> bool {
        self.workloads.contains_key(&ip)
    }

    /// The Service at a virtual IP, by key, if there is one (held or not).
    pub fn service_key(&self, vip: IpAddr) -> Option<Arc<str>> {
        self.names.by_vip.get(&vip).map(|n| n.key.clone())
    }

    /// Whether this config holds what `key` names.
    pub fn holds(&self, key: &Key) -> bool {
        match key {
            Key::Service(k) => self.held.contains(k),
            Key::Address(ip) => self.workloads.contains_key(ip),
        }
    }

    /// Whether `ip` is in a network that holds meshed pods.
    pub fn in_mesh_networks(&self, ip: IpAddr) -> bool {
        self.networks
            .iter()
            .any(|(net, bits)| contains(*net, *bits, ip))
    }

    /// The authorization of one of this pod's ports.
    pub fn authz(&self, port: u16) -> Arc<PortAuthz> {
        self.authz
            .get(&port)
            .cloned()
            .unwrap_or_else(|| self.default_authz.clone())
    }

    /// The rate limits of one of this pod's ports (none: not limited).
    pub fn rate_limits(&self, port: u16) -> &[Arc<Limit>] {
        self.rate_limits.get(&port).map_or(&[], Vec::as_slice)
    }

    /// Forgets the buckets that are full again, in every limit.
    pub fn sweep_rate_limits(&self) {
        self.rate_limits.values().flatten().for_each(|l| l.sweep());
    }

    /// The JWT issuers one of this pod's ports trusts (none: no tokens
    /// are checked there).
    pub fn authn(&self, port: u16) -> Option<Arc<PortAuthn>> {
        self.authn.get(&port).cloned()
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
        let mut rate_limits: Vec<_> = self
            .rate_limits
            .iter()
            .flat_map(|(port, limits)| {
                limits.iter().map(move |l| {
                    serde_json::json!({
                        "port": port,
                        "name": l.name(),
                        "rps": l.spec.rps,
                        "burst": l.spec.burst,
                        "key": v1::RateLimitKey::try_from(l.spec.key)
                            .map(|k| k.as_str_name())
                            .unwrap_or_default(),
                        "buckets": l.keys(),
                    })
                })
            })
            .collect();
        rate_limits.sort_by_key(|l| (l["port"].as_u64(), l["name"].as_str().map(str::to_string)));
        let mut issuers: Vec<_> = self
            .issuers
            .values()
            .map(|i| {
                serde_json::json!({
                    "id": i.source.id,
                    "issuer": i.source.issuer,
                    "kids": i.kids(),
                })
            })
            .collect();
        issuers.sort_by_key(|i| i["id"].as_str().map(str::to_string));
        let mut names: Vec<_> = self
            .names
            .by_vip
            .iter()
            .map(|(vip, n)| serde_json::json!({ "service": &*n.key, "address": vip.to_string(), "ports": n.ports }))
            .collect();
        names.sort_by_key(|n| n["service"].as_str().map(str::to_string));
        serde_json::json!({
            "version": self.version,
            "mtls_mode": self.mtls_mode.map(|m| format!("{m:?}").to_lowercase()),
            "services": services,
            "workloads": workloads,
            "rate_limits": rate_limits,
            "jwt_issuers": issuers,
            "names": names,
        })
    }

    /// The virtual IP for a DNS name, if it is a mesh Service.
    pub fn resolve(&self, name: &str) -> Option<IpAddr> {
        self.names.resolve(name)
    }
}

/// A CIDR ("10.1.2.0/24"), or None.
fn network(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((ip, bits))
}

fn contains(net: IpAddr, bits: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

fn ip(s: &str, what: &'static str) -> Result<IpAddr, ConfigError> {
    s.parse().map_err(|_| ConfigError::Ip {
        what,
        value: s.to_string(),
    })
}

fn port(p: u32, what: &'static str) -> Result<u16, ConfigError> {
    u16::try_from(p).map_err(|_| ConfigError::Port { what, value: p })
}

/// An endpoint's or workload's identity; empty means not meshed.
fn id(s: &str) -> Result<Option<SpiffeId>, ConfigError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|e| ConfigError::Identity {
        value: s.to_string(),
        reason: format!("{e}"),
    })
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
                ..Default::default()
            }),
            trust_anchors_der: vec![],
            opaque_ports: vec![3306],
            ..Default::default()
        }
    }

    fn build(snap: &v1::Snapshot, prev: &MeshConfig, reg: &Registry) -> MeshConfig {
        MeshConfig::from_snapshot(snap, "cluster.local", "default", prev, reg).unwrap()
    }

    fn db(c: &MeshConfig) -> Arc<ServicePort> {
        c.service("198.19.0.1:6379".parse().unwrap()).unwrap()
    }

    #[test]
    fn resolves_services_pods_and_names() {
        let c = build(&snapshot(), &MeshConfig::default(), &Registry::default());
        assert!(matches!(
            c.lookup("198.19.0.1:6379".parse().unwrap()),
            Address::Service(_)
        ));
        assert!(matches!(
            c.lookup("198.18.0.20:1".parse().unwrap()),
            Address::Pod(_)
        ));
        assert!(matches!(
            c.lookup("198.19.0.1:80".parse().unwrap()),
            Address::Unknown
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
    fn loads_and_unchanged_policies_survive_a_push() {
        let reg = Registry::default();
        let c = build(&snapshot(), &MeshConfig::default(), &reg);
        let _guards: Vec<_> = (0..5).map(|_| db(&c).endpoints[0].track()).collect();
        let next = build(&snapshot(), &c, &reg);
        assert_eq!(db(&next).endpoints[0].active(), 5);
        assert!(Arc::ptr_eq(&db(&c).policy, &db(&next).policy));
        let mut changed = snapshot();
        changed.services[0].ports[0].policy = Some(v1::TrafficPolicy {
            load_balancer: v1::LoadBalancer::RoundRobin as i32,
            ..Default::default()
        });
        let third = build(&changed, &next, &reg);
        assert!(!Arc::ptr_eq(&db(&next).policy, &db(&third).policy));
    }

    #[test]
    fn ejections_are_capped_per_service() {
        let c = build(&snapshot(), &MeshConfig::default(), &Registry::default());
        let sp = db(&c);
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
    }

    #[test]
    fn a_bad_route_names_its_service_and_keeps_nothing() {
        let mut snap = snapshot();
        snap.services[0].ports[0].routes = vec![v1::RouteRule {
            matches: vec![v1::RouteMatch {
                path_kind: v1::route_match::PathKind::Regex as i32,
                path: "(".into(),
                ..Default::default()
            }],
            ..Default::default()
        }];
        let e = MeshConfig::from_snapshot(
            &snap,
            "cluster.local",
            "default",
            &MeshConfig::default(),
            &Registry::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("db.default:6379: regex `(`"),
            "{e}"
        );
    }
}
