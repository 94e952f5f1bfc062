//! On-demand discovery: what this proxy asked the control plane for, and
//! waiting for it.
//!
//! A proxy starts with its own settings and the table of Service names; the
//! first connection to a Service's virtual IP (or a DNS answer for its name)
//! subscribes to it, and the connection waits, at most `--discovery-wait`,
//! for its endpoints and routes to arrive. A meshed pod's IP is asked about
//! the same way. Every use is counted: a subscription unused for
//! `--discovery-idle` (no open connection, nothing new) is dropped, so a
//! proxy holds what its app calls, not the mesh.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use weft_api::v1::DiscoverRequest;

/// What a proxy subscribes to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// A Service, "namespace/name".
    Service(Arc<str>),
    /// A pod IP (its Workload: whether it is meshed, and as whom).
    Address(IpAddr),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Service(k) => f.write_str(k),
            Key::Address(ip) => write!(f, "{ip}"),
        }
    }
}

/// Where a subscription stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Asked for; not answered yet.
    Pending,
    /// In the config.
    Ready,
    /// The control plane has no such Service or Workload (yet).
    NotFound,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Ready => "ready",
            State::NotFound => "not-found",
        }
    }
}

/// Why a connection could not wait for what it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("no answer from the control plane within the discovery wait")]
    Timeout,
    #[error("the control plane has been unreachable for longer than the discovery wait")]
    Disconnected,
}

/// Uses of one subscription: open connections, and when the last one
/// ended (seconds since the proxy started).
#[derive(Debug, Default)]
pub struct Usage {
    open: AtomicUsize,
    last_used: AtomicU64,
}

/// Held by a connection while it uses a subscription.
#[derive(Debug)]
pub struct UseGuard {
    usage: Arc<Usage>,
    epoch: Instant,
}

impl Drop for UseGuard {
    fn drop(&mut self) {
        self.usage
            .last_used
            .store(self.epoch.elapsed().as_secs(), Ordering::Relaxed);
        self.usage.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Entry {
    state: watch::Sender<State>,
    usage: Arc<Usage>,
    since: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// The live Discover stream's requests, if one is open.
    stream: Option<mpsc::UnboundedSender<DiscoverRequest>>,
    /// Since when no stream has been open (None: one is).
    detached_since: Option<Instant>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Subscription metrics.
#[derive(Clone, Debug)]
pub struct SubscriptionMetrics {
    wait: Histogram,
    held: Family<KindLabels, Gauge>,
    failures: Family<ReasonLabels, Counter>,
}

impl Default for SubscriptionMetrics {
    fn default() -> Self {
        SubscriptionMetrics {
            wait: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 3.0,
            ]),
            held: Family::default(),
            failures: Family::default(),
        }
    }
}

impl SubscriptionMetrics {
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "discovery_subscription_wait_seconds",
            "How long a connection waited for a Service or address it was the first to use",
            self.wait.clone(),
        );
        reg.register(
            "discovery_subscriptions",
            "Subscriptions held, by kind (service, address)",
            self.held.clone(),
        );
        reg.register(
            "discovery_subscribe_failures",
            "Connections that could not wait for a subscription, by reason",
            self.failures.clone(),
        );
    }
}

/// This proxy's subscriptions. With `on_demand` off (Watch: the control
/// plane sends everything), nothing is ever waited for.
#[derive(Debug)]
pub struct Subscriptions {
    inner: Mutex<Inner>,
    /// Off on a Watch stream (everything arrives without asking).
    on_demand: AtomicBool,
    wait: Duration,
    idle: Duration,
    epoch: Instant,
    metrics: SubscriptionMetrics,
}

impl Subscriptions {
    pub fn new(
        on_demand: bool,
        wait: Duration,
        idle: Duration,
        metrics: SubscriptionMetrics,
    ) -> Self {
        Subscriptions {
            // Starting up counts as disconnected since now.
            inner: Mutex::new(Inner {
                detached_since: Some(Instant::now()),
                ..Inner::default()
            }),
            on_demand: AtomicBool::new(on_demand),
            wait,
            idle,
            epoch: Instant::now(),
            metrics,
        }
    }

    /// Everything arrives without asking (a Watch stream, or no control plane).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn everything() -> Self {
        Subscriptions::new(
            false,
            Duration::ZERO,
            Duration::MAX,
            SubscriptionMetrics::default(),
        )
    }

    pub fn on_demand(&self) -> bool {
        self.on_demand.load(Ordering::Relaxed)
    }

    /// The control plane predates Discover: everything arrives on Watch,
    /// and nothing is waited for any more.
    pub fn fall_back(&self) {
        self.on_demand.store(false, Ordering::Relaxed);
        let inner = self.lock();
        for e in inner.entries.values() {
            e.state.send_if_modified(|s| {
                let pending = *s == State::Pending;
                if pending {
                    *s = State::NotFound;
                }
                pending
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_s(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// Marks `key` used by a connection until the guard drops, subscribing
    /// to it first if new; unless the config `held` it already, waits (at
    /// most the discovery wait) until the control plane answered.
    pub async fn want(&self, key: Key, held: bool) -> Result<UseGuard, Unavailable> {
        let (guard, mut state) = {
            let mut inner = self.lock();
            let detached_since = inner.detached_since;
            let entry = self.entry(&mut inner, key.clone());
            if held {
                entry.state.send_if_modified(|s| {
                    let pending = *s == State::Pending;
                    *s = State::Ready;
                    pending
                });
            }
            entry.usage.open.fetch_add(1, Ordering::Relaxed);
            let guard = UseGuard {
                usage: entry.usage.clone(),
                epoch: self.epoch,
            };
            if *entry.state.borrow() != State::Pending {
                return Ok(guard);
            }
            // In an outage, do not make every new connection wait it out.
            if detached_since.is_some_and(|t| t.elapsed() >= self.wait) {
                self.metrics
                    .failures
                    .get_or_create(&ReasonLabels {
                        reason: "disconnected",
                    })
                    .inc();
                return Err(Unavailable::Disconnected);
            }
            (guard, entry.state.subscribe())
        };
        let started = Instant::now();
        let answered =
            tokio::time::timeout(self.wait, state.wait_for(|s| *s != State::Pending)).await;
        self.metrics.wait.observe(started.elapsed().as_secs_f64());
        match answered {
            Ok(Ok(_)) => Ok(guard),
            _ => {
                self.metrics
                    .failures
                    .get_or_create(&ReasonLabels { reason: "timeout" })
                    .inc();
                Err(Unavailable::Timeout)
            }
        }
    }

    /// Subscribes to `key` without waiting (a DNS answer: the connection
    /// that usually follows finds it there).
    pub fn prefetch(&self, key: Key) {
        let mut inner = self.lock();
        let entry = self.entry(&mut inner, key);
        entry.usage.last_used.store(self.now_s(), Ordering::Relaxed);
    }

    /// The entry for `key`, created (and asked for) if new.
    fn entry<'a>(&self, inner: &'a mut Inner, key: Key) -> &'a mut Entry {
        let now = self.now_s();
        let stream = inner.stream.clone();
        let on_demand = self.on_demand();
        let created = !inner.entries.contains_key(&key);
        let entry = inner.entries.entry(key.clone()).or_insert_with(|| {
            let usage = Arc::new(Usage::default());
            usage.last_used.store(now, Ordering::Relaxed);
            Entry {
                // Without on-demand, whatever is not in the config does not exist.
                state: watch::Sender::new(if on_demand {
                    State::Pending
                } else {
                    State::NotFound
                }),
                usage,
                since: Instant::now(),
            }
        });
        if created
            && on_demand
            && let Some(tx) = stream
        {
            let _ = tx.send(request(&[key], &[]));
        }
        entry
    }

    /// A new Discover stream opens: `first` (who is asking) goes out with
    /// every subscription again, and later requests follow it on `tx`. The
    /// control plane counts as reachable once the stream delivers
    /// ([`Subscriptions::live`]).
    pub fn attach(&self, tx: mpsc::UnboundedSender<DiscoverRequest>, first: DiscoverRequest) {
        let mut inner = self.lock();
        let keys: Vec<Key> = inner.entries.keys().cloned().collect();
        let subs = request(&keys, &[]);
        let _ = tx.send(DiscoverRequest {
            subscribe: subs.subscribe,
            subscribe_addresses: subs.subscribe_addresses,
            ..first
        });
        inner.stream = Some(tx);
    }

    /// The stream delivered: the control plane is reachable.
    pub fn live(&self) {
        self.lock().detached_since = None;
    }

    /// The stream closed: new subscriptions wait for the next one.
    pub fn detach(&self) {
        let mut inner = self.lock();
        inner.stream = None;
        inner.detached_since.get_or_insert_with(Instant::now);
    }

    /// A message was applied: `present` tells whether the config holds a
    /// key now, `not_found` lists what the control plane has not.
    pub fn arrived(&self, present: impl Fn(&Key) -> bool, not_found: &[String]) {
        let inner = self.lock();
        for (key, entry) in &inner.entries {
            let state = if present(key) {
                State::Ready
            } else if !self.on_demand() || not_found.iter().any(|k| *k == key.to_string()) {
                State::NotFound
            } else {
                continue;
            };
            entry.state.send_if_modified(|s| {
                let changed = *s != state;
                *s = state;
                changed
            });
        }
        self.count(&inner);
    }

    fn count(&self, inner: &Inner) {
        let services = inner
            .entries
            .keys()
            .filter(|k| matches!(k, Key::Service(_)))
            .count();
        let kinds = [
            ("service", services),
            ("address", inner.entries.len() - services),
        ];
        for (kind, n) in kinds {
            self.metrics
                .held
                .get_or_create(&KindLabels { kind })
                .set(n as i64);
        }
    }

    /// Drops the subscriptions unused for the idle period; returns how many.
    pub fn sweep(&self) -> usize {
        let now = self.now_s();
        let idle = self.idle.as_secs();
        let mut inner = self.lock();
        let gone: Vec<Key> = inner
            .entries
            .iter()
            .filter(|(_, e)| {
                e.usage.open.load(Ordering::Relaxed) == 0
                    && now.saturating_sub(e.usage.last_used.load(Ordering::Relaxed)) >= idle
                    && e.since.elapsed() >= self.idle
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            inner.entries.remove(k);
        }
        if !gone.is_empty()
            && let Some(tx) = &inner.stream
        {
            let _ = tx.send(request(&[], &gone));
        }
        self.count(&inner);
        gone.len()
    }

    /// How often to sweep.
    pub fn sweep_every(&self) -> Duration {
        (self.idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// What `/config` shows.
    pub fn to_json(&self) -> serde_json::Value {
        let now = self.now_s();
        let inner = self.lock();
        let mut subs: Vec<serde_json::Value> = inner
            .entries
            .iter()
            .map(|(k, e)| {
                let open = e.usage.open.load(Ordering::Relaxed);
                serde_json::json!({
                    "key": k.to_string(),
                    "state": e.state.borrow().as_str(),
                    "open": open,
                    "idle_seconds": if open > 0 { 0 } else { now.saturating_sub(e.usage.last_used.load(Ordering::Relaxed)) },
                })
            })
            .collect();
        subs.sort_by_key(|s| s["key"].as_str().map(str::to_string));
        serde_json::Value::Array(subs)
    }
}

/// A request that subscribes to `add` and unsubscribes from `drop`.
fn request(add: &[Key], drop: &[Key]) -> DiscoverRequest {
    let mut req = DiscoverRequest::default();
    for k in add {
        match k {
            Key::Service(s) => req.subscribe.push(s.to_string()),
            Key::Address(ip) => req.subscribe_addresses.push(ip.to_string()),
        }
    }
    for k in drop {
        match k {
            Key::Service(s) => req.unsubscribe.push(s.to_string()),
            Key::Address(ip) => req.unsubscribe_addresses.push(ip.to_string()),
        }
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(idle: Duration) -> Subscriptions {
        Subscriptions::new(
            true,
            Duration::from_millis(200),
            idle,
            SubscriptionMetrics::default(),
        )
    }

    #[tokio::test]
    async fn a_first_use_asks_once_and_waits_for_the_answer() {
        let s = Arc::new(subs(Duration::from_secs(60)));
        let (tx, mut rx) = mpsc::unbounded_channel();
        s.attach(tx, DiscoverRequest::default());
        assert!(rx.recv().await.unwrap().subscribe.is_empty());
        let key = Key::Service(Arc::from("shop/db"));
        let waiter = {
            let s = s.clone();
            let key = key.clone();
            tokio::spawn(async move { s.want(key, false).await.map(|_| ()) })
        };
        let req = rx.recv().await.unwrap();
        assert_eq!(req.subscribe, ["shop/db"]);
        // A second user does not ask again.
        let s2 = s.clone();
        let second = tokio::spawn(async move {
            s2.want(Key::Service(Arc::from("shop/db")), false)
                .await
                .map(|_| ())
        });
        s.arrived(|k| *k == key, &[]);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(second.await.unwrap(), Ok(()));
        assert!(rx.try_recv().is_err());
        // Unknown to the control plane: answered, not waited out.
        let ip = Key::Address("10.0.0.9".parse().unwrap());
        let s3 = s.clone();
        let ip2 = ip.clone();
        let third = tokio::spawn(async move { s3.want(ip2, false).await.map(|_| ()) });
        assert_eq!(rx.recv().await.unwrap().subscribe_addresses, ["10.0.0.9"]);
        s.arrived(|_| false, &["10.0.0.9".to_string()]);
        assert_eq!(third.await.unwrap(), Ok(()));
        // A reconnect asks for everything again.
        let (tx, mut rx) = mpsc::unbounded_channel();
        s.attach(tx, DiscoverRequest::default());
        let again = rx.recv().await.unwrap();
        assert_eq!(
            (again.subscribe.len(), again.subscribe_addresses.len()),
            (1, 1)
        );
    }

    #[tokio::test]
    async fn no_answer_within_the_wait_is_unavailable() {
        let s = subs(Duration::from_secs(60));
        let (tx, _rx) = mpsc::unbounded_channel();
        s.attach(tx, DiscoverRequest::default());
        s.live();
        assert_eq!(
            s.want(Key::Service(Arc::from("shop/db")), false)
                .await
                .err(),
            Some(Unavailable::Timeout)
        );
        // Once the control plane has been gone longer than the wait, new
        // keys fail at once.
        s.detach();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let started = Instant::now();
        assert_eq!(
            s.want(Key::Service(Arc::from("shop/web")), false)
                .await
                .err(),
            Some(Unavailable::Disconnected)
        );
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn only_unused_subscriptions_are_swept() {
        let s = subs(Duration::ZERO);
        let (tx, mut rx) = mpsc::unbounded_channel();
        s.attach(tx, DiscoverRequest::default());
        let used = Key::Service(Arc::from("shop/db"));
        let unused = Key::Service(Arc::from("shop/web"));
        s.prefetch(unused.clone());
        s.prefetch(used.clone());
        s.arrived(|_| true, &[]);
        let guard = s.want(used, true).await.unwrap();
        assert_eq!(s.sweep(), 1);
        let reqs: Vec<DiscoverRequest> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(reqs.last().unwrap().unsubscribe, ["shop/web"]);
        drop(guard);
        assert_eq!(s.sweep(), 1);
    }
}
