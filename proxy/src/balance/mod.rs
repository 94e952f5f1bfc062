//! Choosing an endpoint of a Service, and the live state that choice reads:
//! per endpoint, the requests or connections in flight, a peak-EWMA of its
//! latency, and its ejection (see [`crate::breaker`]). That state lives in a
//! [`Registry`] keyed by address, so it survives snapshot swaps by itself:
//! a push from the control plane never resets the balancer.

mod ewma;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;
use weft_api::SpiffeId;
use weft_api::v1::OutlierDetection;

use crate::breaker::Ejection;
use ewma::{DEFAULT_RTT, PeakEwma};

/// Why no endpoint could be picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error("no endpoints")]
    NoEndpoints,
    #[error("every endpoint is ejected after failures")]
    AllEjected,
}

/// How requests are spread over a Service's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// Power of two choices over peak-EWMA × in flight (the default).
    #[default]
    PeakEwma,
    RoundRobin,
    Random,
}

impl From<i32> for Algorithm {
    fn from(v: i32) -> Self {
        use weft_api::v1::LoadBalancer;
        match LoadBalancer::try_from(v) {
            Ok(LoadBalancer::RoundRobin) => Algorithm::RoundRobin,
            Ok(LoadBalancer::Random) => Algorithm::Random,
            _ => Algorithm::PeakEwma,
        }
    }
}

/// One endpoint as the snapshot names it, with its live state.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// None when the pod is not meshed (then plaintext).
    pub identity: Option<SpiffeId>,
    pub pod: String,
    live: Arc<Live>,
}

/// What the balancer and the breaker know of one endpoint address.
#[derive(Debug, Default)]
struct Live {
    /// Requests (or connections) in flight.
    active: AtomicUsize,
    /// Connections ever sent here: breaks ties so that, under light load,
    /// traffic still spreads evenly instead of by coin flips.
    picked: AtomicUsize,
    latency: Mutex<PeakEwma>,
    ejection: Mutex<Ejection>,
}

/// The live state of every endpoint address some snapshot still names.
#[derive(Debug, Default)]
pub struct Registry(Mutex<HashMap<SocketAddr, Weak<Live>>>);

impl Registry {
    /// The endpoint, with the state its address already has (if any).
    pub fn endpoint(&self, addr: SocketAddr, identity: Option<SpiffeId>, pod: String) -> Endpoint {
        let live = match self.0.lock() {
            Ok(mut map) => match map.get(&addr).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(Live::default());
                    map.insert(addr, Arc::downgrade(&l));
                    l
                }
            },
            Err(_) => Arc::default(),
        };
        Endpoint {
            addr,
            identity,
            pod,
            live,
        }
    }

    /// Forgets addresses no snapshot names any more.
    pub fn prune(&self) {
        if let Ok(mut map) = self.0.lock() {
            map.retain(|_, l| l.strong_count() > 0);
        }
    }
}

impl Endpoint {
    /// Requests or connections in flight here.
    pub fn active(&self) -> usize {
        self.live.active.load(Ordering::Relaxed)
    }

    /// The request balancer's load: latency estimate × (in flight + 1).
    fn load(&self, now: Instant) -> f64 {
        let cost = self
            .live
            .latency
            .lock()
            .map(|e| e.cost(now))
            .unwrap_or(DEFAULT_RTT.as_nanos() as f64);
        cost * (self.active() as f64 + 1.0)
    }

    pub fn is_ejected(&self) -> bool {
        self.live
            .ejection
            .lock()
            .map(|e| e.is_ejected(Instant::now()))
            .unwrap_or(false)
    }

    /// Records a request's outcome for outlier detection; true when this
    /// failure ejected the endpoint.
    pub fn record(&self, success: bool, cfg: &OutlierDetection, may_eject: bool) -> bool {
        self.live
            .ejection
            .lock()
            .map(|mut e| e.record(success, cfg, may_eject, Instant::now()))
            .unwrap_or(false)
    }

    /// Records how long a request took to answer.
    pub fn observe(&self, rtt: Duration) {
        if let Ok(mut e) = self.live.latency.lock() {
            e.observe(rtt, Instant::now());
        }
    }

    /// Counts a connection (or request) to this endpoint while the guard lives.
    pub fn track(&self) -> InFlight {
        self.live.picked.fetch_add(1, Ordering::Relaxed);
        self.live.active.fetch_add(1, Ordering::Relaxed);
        InFlight(self.live.clone())
    }
}

/// One request or connection counted against its endpoint's load.
#[derive(Debug)]
pub struct InFlight(Arc<Live>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A round-robin position, kept with the policy that asks for it.
#[derive(Debug, Default)]
pub struct Cursor(AtomicUsize);

/// The endpoint for a new connection: power of two choices over open
/// connections (ties to the one picked less often). Cheap, and it keeps
/// away from a slow endpoint whose connections pile up.
pub fn pick_connection(endpoints: &[Arc<Endpoint>]) -> Result<Arc<Endpoint>, PickError> {
    let n = endpoints.len();
    let pick = match n {
        0 => return Err(PickError::NoEndpoints),
        1 => &endpoints[0],
        n => {
            let (a, b) = two(n);
            let load = |e: &Endpoint| (e.active(), e.live.picked.load(Ordering::Relaxed));
            let (ea, eb) = (&endpoints[a], &endpoints[b]);
            if load(ea) <= load(eb) { ea } else { eb }
        }
    };
    Ok(pick.clone())
}

/// The endpoint for one request attempt, among those not ejected, avoiding
/// `avoid` (the previous attempt's) when there is another.
pub fn pick_request(
    endpoints: &[Arc<Endpoint>],
    algorithm: Algorithm,
    cursor: &Cursor,
    avoid: Option<SocketAddr>,
) -> Result<Arc<Endpoint>, PickError> {
    if endpoints.is_empty() {
        return Err(PickError::NoEndpoints);
    }
    let live: Vec<&Arc<Endpoint>> = endpoints.iter().filter(|e| !e.is_ejected()).collect();
    if live.is_empty() {
        return Err(PickError::AllEjected);
    }
    let fresh: Vec<&Arc<Endpoint>> = live
        .iter()
        .copied()
        .filter(|e| Some(e.addr) != avoid)
        .collect();
    let pool = if fresh.is_empty() { live } else { fresh };
    let n = pool.len();
    let pick = match algorithm {
        Algorithm::RoundRobin => pool[cursor.0.fetch_add(1, Ordering::Relaxed) % n],
        Algorithm::Random => pool[rand::random_range(0..n)],
        Algorithm::PeakEwma if n == 1 => pool[0],
        Algorithm::PeakEwma => {
            let (a, b) = two(n);
            let now = Instant::now();
            if pool[a].load(now) <= pool[b].load(now) {
                pool[a]
            } else {
                pool[b]
            }
        }
    };
    Ok(pick.clone())
}

/// Two different indexes below `n` (n ≥ 2), at random.
fn two(n: usize) -> (usize, usize) {
    let a = rand::random_range(0..n);
    (a, (a + rand::random_range(1..n)) % n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(registry: &Registry, n: u8) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([198, 18, 0, 20 + i], 80));
                Arc::new(registry.endpoint(addr, None, format!("p{i}")))
            })
            .collect()
    }

    #[test]
    fn p2c_avoids_the_loaded_endpoint_and_loads_survive_a_new_snapshot() {
        let registry = Registry::default();
        let eps = endpoints(&registry, 3);
        let _guards: Vec<_> = (0..5).map(|_| eps[0].track()).collect();
        for _ in 0..200 {
            assert_ne!(pick_connection(&eps).unwrap().addr, eps[0].addr);
        }
        let next = endpoints(&registry, 3);
        assert_eq!(
            next[0].active(),
            5,
            "the next snapshot's endpoint shares the load"
        );
        drop(eps);
        drop(_guards);
        drop(next);
        registry.prune();
        assert!(registry.0.lock().unwrap().is_empty());
    }

    #[test]
    fn light_load_spreads_evenly() {
        let eps = endpoints(&Registry::default(), 3);
        let mut counts = HashMap::new();
        for _ in 0..300 {
            let e = pick_connection(&eps).unwrap();
            drop(e.track());
            *counts.entry(e.addr).or_insert(0) += 1;
        }
        for n in counts.values() {
            assert!((90..=110).contains(n), "{counts:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_go_to_the_faster_endpoint_until_its_estimate_decays() {
        let eps = endpoints(&Registry::default(), 2);
        eps[0].observe(Duration::from_millis(200));
        eps[1].observe(Duration::from_millis(2));
        let pick = || {
            pick_request(&eps, Algorithm::PeakEwma, &Cursor::default(), None)
                .unwrap()
                .addr
        };
        for _ in 0..50 {
            assert_eq!(pick(), eps[1].addr);
        }
        // A minute later the slow one's peak has decayed below the other's
        // load with a few requests in flight: it is tried again.
        tokio::time::advance(Duration::from_secs(60)).await;
        let _busy: Vec<_> = (0..100).map(|_| eps[1].track()).collect();
        assert_eq!(pick(), eps[0].addr);
    }

    #[test]
    fn round_robin_takes_turns_and_the_previous_endpoint_is_avoided() {
        let eps = endpoints(&Registry::default(), 3);
        let cursor = Cursor::default();
        let picks: Vec<_> = (0..6)
            .map(|_| {
                pick_request(&eps, Algorithm::RoundRobin, &cursor, None)
                    .unwrap()
                    .addr
            })
            .collect();
        assert_eq!(picks[0..3], picks[3..6]);
        assert_ne!(picks[0], picks[1]);
        assert_ne!(picks[1], picks[2]);
        for _ in 0..50 {
            let p = pick_request(&eps, Algorithm::Random, &cursor, Some(eps[0].addr)).unwrap();
            assert_ne!(p.addr, eps[0].addr);
        }
        assert_eq!(
            pick_request(&[], Algorithm::Random, &cursor, None).unwrap_err(),
            PickError::NoEndpoints
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_endpoints_are_skipped_until_their_time_is_up() {
        let eps = endpoints(&Registry::default(), 2);
        let cfg = OutlierDetection {
            consecutive_failures: 1,
            base_ejection_ms: 10_000,
            max_ejection_percent: 100,
        };
        assert!(eps[0].record(false, &cfg, true));
        for _ in 0..20 {
            let p = pick_request(&eps, Algorithm::Random, &Cursor::default(), None).unwrap();
            assert_eq!(p.addr, eps[1].addr);
        }
        assert!(eps[1].record(false, &cfg, true));
        assert_eq!(
            pick_request(&eps, Algorithm::Random, &Cursor::default(), None).unwrap_err(),
            PickError::AllEjected
        );
        tokio::time::advance(Duration::from_millis(12_501)).await;
        assert!(pick_request(&eps, Algorithm::Random, &Cursor::default(), None).is_ok());
    }
}
