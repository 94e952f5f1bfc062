//! Local rate limits at the server-side sidecar: the token buckets of a
//! TrafficPolicy's `rateLimit` (GCRA, from `governor`), one set per limit,
//! built once per snapshot and kept across snapshots that do not change the
//! limit, so a push never refills a bucket.
//!
//! What gets a bucket of its own is the limit's key: the whole port
//! (`Service`), each caller (`Client`: its SPIFFE ID, or `ip:<address>` for
//! a plaintext caller), or each route rule (`Route`). The server does not
//! know which route a client followed (a client can call the pod IP), so a
//! `Route` limit carries the Service's producer route rules and matches each
//! request against them again, as it arrives here; requests that match no
//! rule share one bucket of their own.
//!
//! Keys are bounded: past [`MAX_KEYS`] buckets, new callers share one
//! overflow bucket, and [`Limit::sweep`] (every [`SWEEP_EVERY`]) forgets
//! buckets that are full again.

use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::{Quota, RateLimiter};
use http::{HeaderMap, Method, Uri};
use prometheus_client::metrics::counter::Counter;
use weft_api::v1;

use crate::routes::{RouteError, Routes};
use crate::telemetry::RateLimitMetrics;

/// Buckets one limit keeps at most before new callers share one.
pub const MAX_KEYS: usize = 10_000;

/// How often buckets that are full again are forgotten.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Whose bucket a request takes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// The one bucket of a `Service` limit.
    Whole,
    /// A caller's: its SPIFFE ID, or `ip:<address>`.
    Client(Arc<str>),
    /// A route rule's (an index into the limit's distinct rules).
    Route(u16),
    /// Requests that match none of the rules.
    Unrouted,
    /// Callers beyond [`MAX_KEYS`].
    Overflow,
}

/// The buckets, shared with the limiter so that the number of keys and
/// whether one exists can be read (governor keeps its store to itself).
#[derive(Debug, Default, Clone)]
struct Store(Arc<DashMapStateStore<LimitKey>>);

impl StateStore for Store {
    type Key = LimitKey;

    fn measure_and_replace<T, F, E>(&self, key: &LimitKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        StateStore::measure_and_replace(&*self.0, key, f)
    }
}

impl ShrinkableKeyedStateStore<LimitKey> for Store {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&*self.0, drop_below);
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&*self.0);
    }

    fn len(&self) -> usize {
        ShrinkableKeyedStateStore::len(&*self.0)
    }

    fn is_empty(&self) -> bool {
        ShrinkableKeyedStateStore::is_empty(&*self.0)
    }
}

/// One TrafficPolicy's limit on one pod port.
pub struct Limit<C: Clock = DefaultClock> {
    /// As pushed: an equal one in the next snapshot keeps this `Limit`.
    pub spec: v1::RateLimit,
    key: v1::RateLimitKey,
    /// `Route` keys: the rules, and each one's distinct (route, rule).
    routes: Routes,
    rule_of: Vec<u16>,
    store: Store,
    limiter: RateLimiter<LimitKey, Store, C, NoOpMiddleware<C::Instant>>,
    /// (admitted, limited), bound at the first decision.
    counters: OnceLock<(Counter, Counter)>,
}

impl<C: Clock> std::fmt::Debug for Limit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limit")
            .field("spec", &self.spec)
            .field("keys", &self.store.0.len())
            .finish_non_exhaustive()
    }
}

impl Limit {
    pub fn new(spec: v1::RateLimit) -> Result<Self, RouteError> {
        Self::with_clock(spec, DefaultClock::default())
    }
}

impl<C: Clock> Limit<C> {
    /// A limit whose buckets refill by `clock` (tests use a fake one).
    pub fn with_clock(spec: v1::RateLimit, clock: C) -> Result<Self, RouteError> {
        // The control plane never sends 0; a bucket cannot be empty anyway.
        let rps = NonZeroU32::new(spec.rps).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(spec.burst).unwrap_or(rps);
        let quota = Quota::per_second(rps).allow_burst(burst);
        let key = v1::RateLimitKey::try_from(spec.key).unwrap_or(v1::RateLimitKey::Service);
        let (routes, rule_of) = if key == v1::RateLimitKey::Route {
            // Producer rules only: every caller matches the same ones.
            let routes = Routes::new(&spec.routes, "")?;
            let mut seen: Vec<(&str, u32)> = Vec::new();
            let rule_of = spec
                .routes
                .iter()
                .map(|r| {
                    let id = (r.route.as_str(), r.rule_index);
                    let i = seen.iter().position(|s| *s == id).unwrap_or_else(|| {
                        seen.push(id);
                        seen.len() - 1
                    });
                    u16::try_from(i).unwrap_or(u16::MAX)
                })
                .collect();
            (routes, rule_of)
        } else {
            (Routes::default(), Vec::new())
        };
        let store = Store::default();
        Ok(Limit {
            key,
            routes,
            rule_of,
            limiter: RateLimiter::new(quota, store.clone(), clock),
            store,
            spec,
            counters: OnceLock::new(),
        })
    }

    /// `namespace/name` of the TrafficPolicy.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The bucket of a request from `client`.
    fn key(&self, client: &Arc<str>, req: &Call<'_>) -> LimitKey {
        match self.key {
            v1::RateLimitKey::Service => LimitKey::Whole,
            v1::RateLimitKey::Client => {
                let k = LimitKey::Client(client.clone());
                // A known caller is one shard lookup; counting is for new ones.
                if !self.store.0.contains_key(&k) && self.store.0.len() >= MAX_KEYS {
                    LimitKey::Overflow
                } else {
                    k
                }
            }
            v1::RateLimitKey::Route => self
                .routes
                .position(req.method, req.uri, req.headers)
                .and_then(|i| self.rule_of.get(i))
                .map_or(LimitKey::Unrouted, |&i| LimitKey::Route(i)),
        }
    }

    /// Takes a token from the request's bucket; when it is empty, how long
    /// until it has one.
    pub fn check(&self, client: &Arc<str>, req: &Call<'_>) -> Result<(), Duration> {
        let key = self.key(client, req);
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Forgets buckets that are full again (a new one would be the same).
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Buckets kept now.
    pub fn keys(&self) -> usize {
        self.store.0.len()
    }

    fn counters(&self, metrics: &RateLimitMetrics) -> &(Counter, Counter) {
        self.counters.get_or_init(|| {
            (
                metrics.counter(self.name(), "admitted"),
                metrics.counter(self.name(), "limited"),
            )
        })
    }
}

/// What a key may be taken from.
#[derive(Debug)]
pub struct Call<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
}

/// `Retry-After` in whole seconds: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// A request refused: by which limit, and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub limit: String,
    pub wait: Duration,
}

/// Applies the current snapshot's limits, and counts.
#[derive(Clone, Debug, Default)]
pub struct Limiter {
    /// None: no discovery, nothing to enforce.
    pub mesh: Option<crate::discovery::Mesh>,
    pub metrics: RateLimitMetrics,
}

impl Limiter {
    /// Takes a token from every limit of `port` in turn (a request refused
    /// by one has still used the tokens of those before it).
    pub fn check(&self, port: u16, client: &Arc<str>, req: &Call<'_>) -> Result<(), Refused> {
        let Some(mesh) = &self.mesh else {
            return Ok(());
        };
        let cfg = mesh.load();
        for limit in cfg.rate_limits(port) {
            let (admitted, limited) = limit.counters(&self.metrics);
            match limit.check(client, req) {
                Ok(()) => {
                    admitted.inc();
                }
                Err(wait) => {
                    limited.inc();
                    return Err(Refused {
                        limit: limit.name().to_string(),
                        wait,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The limits of a pod's ports, by port.
pub type PortLimits = std::collections::HashMap<u16, Vec<Arc<Limit>>>;

/// Builds the limits of a snapshot's ports, keeping each one equal to a
/// limit of `prev` on the same port (and so its buckets).
pub fn from_snapshot(
    pushed: &[v1::PortRateLimit],
    prev: impl Fn(u16) -> Vec<Arc<Limit>>,
) -> Result<PortLimits, (u16, String, RouteError)> {
    let mut out = PortLimits::default();
    for p in pushed {
        let (Ok(port), Some(spec)) = (u16::try_from(p.port), p.limit.as_ref()) else {
            continue;
        };
        let kept = prev(port).into_iter().find(|l| l.spec == *spec);
        let limit = match kept {
            Some(l) => l,
            None => Arc::new(Limit::new(spec.clone()).map_err(|e| (port, spec.name.clone(), e))?),
        };
        out.entry(port).or_default().push(limit);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn spec(rps: u32, burst: u32, key: v1::RateLimitKey) -> v1::RateLimit {
        v1::RateLimit {
            name: "shop/web".into(),
            rps,
            burst,
            key: key as i32,
            routes: vec![],
        }
    }

    fn get(path: &str) -> (Method, Uri, HeaderMap) {
        (Method::GET, path.parse().unwrap(), HeaderMap::new())
    }

    fn check<C: Clock>(l: &Limit<C>, client: &str, path: &str) -> Result<(), Duration> {
        let (m, u, h) = get(path);
        l.check(
            &Arc::from(client),
            &Call {
                method: &m,
                uri: &u,
                headers: &h,
            },
        )
    }

    /// 8 threads racing for one bucket admit exactly its burst, then
    /// exactly the refill: the limit holds under concurrency.
    #[test]
    fn bucket_maths_hold_under_8_threads() {
        let clock = FakeRelativeClock::default();
        let limit = Arc::new(
            Limit::with_clock(spec(200, 20, v1::RateLimitKey::Service), clock.clone()).unwrap(),
        );
        let race = |limit: &Arc<Limit<FakeRelativeClock>>| -> usize {
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    let limit = limit.clone();
                    std::thread::spawn(move || {
                        (0..125)
                            .filter(|_| check(&limit, &format!("c{t}"), "/").is_ok())
                            .count()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        };
        assert_eq!(race(&limit), 20, "a full bucket admits its burst");
        // 50ms at 200/s is 10 tokens.
        clock.advance(Duration::from_millis(50));
        assert_eq!(race(&limit), 10);
        // A long pause refills to the burst, never beyond.
        clock.advance(Duration::from_secs(60));
        assert_eq!(race(&limit), 20);
        // The refusal says when the next token comes: 1/200 s.
        let wait = check(&limit, "c0", "/").unwrap_err();
        assert_eq!(wait, Duration::from_millis(5));
    }

    #[test]
    fn client_keys_are_separate_and_bounded() {
        let clock = FakeRelativeClock::default();
        let limit = Limit::with_clock(spec(1, 2, v1::RateLimitKey::Client), clock.clone()).unwrap();
        for _ in 0..2 {
            assert!(check(&limit, "spiffe://cluster.local/ns/a/sa/x", "/").is_ok());
        }
        assert!(check(&limit, "spiffe://cluster.local/ns/a/sa/x", "/").is_err());
        // Another caller has a bucket of its own.
        assert!(check(&limit, "ip:198.18.0.9", "/").is_ok());
        // Past MAX_KEYS, new callers share one bucket; known ones keep theirs.
        for i in 0..MAX_KEYS - 2 {
            let _ = check(&limit, &format!("ip:10.0.{}.{}", i / 256, i % 256), "/");
        }
        assert_eq!(limit.keys(), MAX_KEYS);
        assert!(check(&limit, "ip:192.0.2.1", "/").is_ok());
        assert!(check(&limit, "ip:192.0.2.2", "/").is_ok());
        assert!(
            check(&limit, "ip:192.0.2.3", "/").is_err(),
            "the overflow bucket (burst 2) is shared"
        );
        assert_eq!(limit.keys(), MAX_KEYS + 1);
        assert!(check(&limit, "ip:198.18.0.9", "/").is_ok());
        // Buckets full again are forgotten by a sweep.
        clock.advance(Duration::from_secs(10));
        limit.sweep();
        assert_eq!(limit.keys(), 0);
    }

    #[test]
    fn route_keys_follow_the_rules_matched_at_the_server() {
        let rule = |route: &str, index: u32, path: &str| v1::RouteRule {
            route: route.into(),
            rule_index: index,
            matches: vec![v1::RouteMatch {
                path_kind: v1::route_match::PathKind::Prefix as i32,
                path: path.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut s = spec(1, 1, v1::RateLimitKey::Route);
        // Two matches of one rule share its bucket.
        s.routes = vec![
            rule("shop/web", 0, "/api"),
            rule("shop/web", 0, "/v2"),
            rule("shop/web", 1, "/static"),
        ];
        let limit = Limit::with_clock(s, FakeRelativeClock::default()).unwrap();
        assert!(check(&limit, "a", "/api/x").is_ok());
        assert!(
            check(&limit, "b", "/v2").is_err(),
            "rule 0's bucket is empty"
        );
        assert!(check(&limit, "a", "/static/y").is_ok());
        assert!(
            check(&limit, "a", "/other").is_ok(),
            "unrouted: a bucket of its own"
        );
        assert!(check(&limit, "a", "/else").is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        for (wait, secs) in [
            (Duration::ZERO, 1),
            (Duration::from_millis(5), 1),
            (Duration::from_millis(1000), 1),
            (Duration::from_millis(1001), 2),
            (Duration::from_secs(3), 3),
            (Duration::from_nanos(2_000_000_001), 3),
        ] {
            assert_eq!(retry_after_secs(wait), secs, "{wait:?}");
        }
    }

    #[test]
    fn limiter_state_survives_an_unchanged_snapshot() {
        let pushed = vec![v1::PortRateLimit {
            port: 8080,
            limit: Some(spec(1, 3, v1::RateLimitKey::Service)),
        }];
        let first = from_snapshot(&pushed, |_| Vec::new()).unwrap();
        let l = &first[&8080][0];
        let (m, u, h) = get("/");
        let call = Call {
            method: &m,
            uri: &u,
            headers: &h,
        };
        let me: Arc<str> = Arc::from("c");
        while l.check(&me, &call).is_ok() {}
        let second =
            from_snapshot(&pushed, |p| first.get(&p).cloned().unwrap_or_default()).unwrap();
        assert!(Arc::ptr_eq(l, &second[&8080][0]));
        assert!(second[&8080][0].check(&me, &call).is_err(), "still empty");
        // A changed limit starts afresh.
        let mut changed = pushed.clone();
        changed[0].limit = Some(spec(1, 4, v1::RateLimitKey::Service));
        let third =
            from_snapshot(&changed, |p| second.get(&p).cloned().unwrap_or_default()).unwrap();
        assert!(!Arc::ptr_eq(l, &third[&8080][0]));
        assert!(third[&8080][0].check(&me, &call).is_ok());
    }
}
