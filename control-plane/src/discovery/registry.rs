//! What each proxy was sent and acknowledged, and when: the control plane's
//! record that config landed.
//!
//! A proxy that disconnects stays listed (as not connected: `weftctl status`
//! shows it stale) for a bounded time, then is forgotten, so that pods
//! coming and going do not grow the control plane.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// How long a disconnected proxy stays listed, unless configured.
pub const DEFAULT_STALE_TTL: Duration = Duration::from_secs(600);
/// Forgetting scans every entry: at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ProxyKey {
    pub namespace: String,
    pub pod: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProxyState {
    pub namespace: String,
    pub pod: String,
    pub identity: String,
    pub connected: bool,
    pub sent_version: u64,
    pub sent_at_unix_ms: u64,
    pub acked_version: u64,
    pub acked_at_unix_ms: u64,
    /// Why the proxy could not apply the version it acknowledged, if it could not.
    pub ack_error: String,
    /// When its last stream closed (0 while connected).
    pub disconnected_at_unix_ms: u64,
    /// The RPC it uses: `discover` (its view) or `watch` (everything).
    pub api: &'static str,
    /// Services it holds, and its explicit subscriptions (Discover only).
    pub services: usize,
    pub subscriptions: usize,
    /// The newest version this proxy's stream looked at.
    pub seen_version: u64,
    /// Whether the model at that version has its pod (a proxy that
    /// connects before its pod is known gets no inbound settings yet, and
    /// other proxies do not know it is meshed).
    pub pod_known: bool,
    /// Open Watch streams (more than one during a reconnect).
    #[serde(skip)]
    streams: usize,
}

impl ProxyState {
    /// The newest version this proxy runs everything it needs from: the
    /// version it looked at last, once it acknowledged all it was sent
    /// (without error); what it acknowledged otherwise.
    pub fn synced_version(&self) -> u64 {
        if self.acked_version >= self.sent_version && self.ack_error.is_empty() {
            self.seen_version.max(self.acked_version)
        } else {
            self.acked_version
        }
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The proxies, and counts kept as they change so that no ack or
/// connection scans them all (10,000 acks of one push would scan 10,000
/// entries each).
#[derive(Debug, Default)]
struct Table {
    map: BTreeMap<ProxyKey, ProxyState>,
    connected: usize,
    /// The newest version a stream looked at, and how many connected
    /// proxies are synced to it.
    newest: u64,
    synced: usize,
}

impl Table {
    /// Changes one proxy, keeping the counts.
    fn update<R>(&mut self, key: &ProxyKey, f: impl FnOnce(&mut ProxyState) -> R) -> Option<R> {
        let s = self.map.get_mut(key)?;
        let counted = |s: &ProxyState, newest: u64| s.connected && s.synced_version() >= newest;
        let before = (s.connected, counted(s, self.newest));
        let r = f(s);
        if s.seen_version > self.newest {
            // A new version: nobody is counted as synced to it yet.
            self.newest = s.seen_version;
            self.synced = 0;
            self.synced += usize::from(counted(s, self.newest));
        } else {
            let after = counted(s, self.newest);
            self.synced = (self.synced + usize::from(after)).saturating_sub(usize::from(before.1));
        }
        self.connected =
            (self.connected + usize::from(s.connected)).saturating_sub(usize::from(before.0));
        Some(r)
    }
}

#[derive(Debug)]
pub struct Registry {
    proxies: Mutex<Table>,
    /// The newest version that landed everywhere.
    landed: Mutex<u64>,
    /// How long a disconnected proxy stays listed.
    stale_ttl: Duration,
    /// When the last sweep ran (Unix ms).
    swept_at: Mutex<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(DEFAULT_STALE_TTL)
    }
}

impl Registry {
    /// Disconnected proxies are forgotten `stale_ttl` after their last
    /// stream closed.
    pub fn new(stale_ttl: Duration) -> Self {
        Registry {
            proxies: Mutex::default(),
            landed: Mutex::default(),
            stale_ttl,
            swept_at: Mutex::default(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        let mut g = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Drops the proxies disconnected for longer than the TTL (at most once
    /// a second; every connect and listing calls it).
    fn sweep(&self, now: SystemTime) {
        let now_ms = ms(now);
        {
            let mut at = self.swept_at.lock().unwrap_or_else(|p| p.into_inner());
            if now_ms.saturating_sub(*at) < SWEEP_EVERY.as_millis() as u64 && *at != 0 {
                return;
            }
            *at = now_ms;
        }
        let ttl = self.stale_ttl.as_millis() as u64;
        self.with(|t| {
            t.map.retain(|_, s| {
                s.connected || now_ms.saturating_sub(s.disconnected_at_unix_ms) < ttl
            })
        });
    }

    pub fn connected(&self, key: &ProxyKey, identity: &str, api: &'static str) {
        self.sweep(SystemTime::now());
        self.with(|t| {
            t.map.entry(key.clone()).or_insert_with(|| ProxyState {
                namespace: key.namespace.clone(),
                pod: key.pod.clone(),
                identity: identity.to_string(),
                connected: false,
                sent_version: 0,
                sent_at_unix_ms: 0,
                acked_version: 0,
                acked_at_unix_ms: 0,
                ack_error: String::new(),
                disconnected_at_unix_ms: 0,
                api,
                services: 0,
                subscriptions: 0,
                seen_version: 0,
                pod_known: false,
                streams: 0,
            });
            t.update(key, |s| {
                s.streams += 1;
                s.connected = true;
                s.disconnected_at_unix_ms = 0;
                s.identity = identity.to_string();
                s.api = api;
            });
        })
    }

    pub fn disconnected(&self, key: &ProxyKey) {
        self.with(|t| {
            t.update(key, |s| {
                s.streams = s.streams.saturating_sub(1);
                s.connected = s.streams > 0;
                if !s.connected {
                    s.disconnected_at_unix_ms = ms(SystemTime::now());
                }
            });
        })
    }

    pub fn sent(&self, key: &ProxyKey, version: u64) {
        self.with(|t| {
            t.update(key, |s| {
                s.sent_version = version;
                s.sent_at_unix_ms = ms(SystemTime::now());
            });
        })
    }

    /// The proxy's stream looked at `version`, whether or not it sent
    /// anything: a version that changes nothing a proxy sees is current for
    /// it once it acknowledged what it was sent.
    pub fn seen(
        &self,
        key: &ProxyKey,
        version: u64,
        known: bool,
        services: usize,
        subscriptions: usize,
    ) {
        self.with(|t| {
            t.update(key, |s| {
                s.seen_version = s.seen_version.max(version);
                s.pod_known = known;
                s.services = services;
                s.subscriptions = subscriptions;
            });
        })
    }

    /// Records an acknowledgement; false when the proxy is unknown.
    pub fn acked(&self, key: &ProxyKey, version: u64, error: &str) -> bool {
        self.with(|t| {
            t.update(key, |s| {
                s.acked_version = version;
                s.acked_at_unix_ms = ms(SystemTime::now());
                s.ack_error = error.to_string();
            })
            .is_some()
        })
    }

    pub fn identity_of(&self, key: &ProxyKey) -> Option<String> {
        self.with(|t| t.map.get(key).map(|s| s.identity.clone()))
    }

    pub fn list(&self) -> Vec<ProxyState> {
        self.sweep(SystemTime::now());
        self.with(|t| t.map.values().cloned().collect())
    }

    /// True once per version: when every connected proxy is synced to
    /// `version` (the moment a push has landed everywhere).
    pub fn landed_everywhere(&self, version: u64) -> bool {
        // Landed already: the acks that follow need no scan.
        if *self.landed.lock().unwrap_or_else(|p| p.into_inner()) >= version {
            return false;
        }
        let all = self.with(|t| t.newest == version && t.synced >= t.connected);
        let mut last = self.landed.lock().unwrap_or_else(|p| p.into_inner());
        if all && *last < version {
            *last = version;
            true
        } else {
            false
        }
    }

    pub fn connected_count(&self) -> usize {
        self.with(|t| t.connected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pod: &str) -> ProxyKey {
        ProxyKey {
            namespace: "shop".into(),
            pod: pod.into(),
        }
    }

    #[test]
    fn a_departed_proxy_is_stale_then_forgotten() {
        let r = Registry::new(Duration::from_millis(50));
        r.connected(&key("a"), "id-a", "watch");
        r.connected(&key("b"), "id-b", "watch");
        // b reconnects before its old stream closes: still connected.
        r.connected(&key("b"), "id-b", "watch");
        r.disconnected(&key("b"));
        r.disconnected(&key("a"));
        let listed = r.list();
        let a = listed.iter().find(|p| p.pod == "a").unwrap();
        assert!(
            !a.connected && a.disconnected_at_unix_ms > 0,
            "stale: {a:?}"
        );
        assert!(listed.iter().find(|p| p.pod == "b").unwrap().connected);
        std::thread::sleep(Duration::from_millis(1100));
        let pods: Vec<String> = r.list().into_iter().map(|p| p.pod).collect();
        assert_eq!(pods, ["b"], "a is forgotten, b stays");
        // Landing is counted, not scanned for.
        r.seen(&key("b"), 5, true, 0, 0);
        assert!(
            r.landed_everywhere(5),
            "b, the one connected, looked at 5 and owes no ack"
        );
        r.connected(&key("c"), "id-c", "discover");
        r.sent(&key("c"), 6);
        r.seen(&key("c"), 6, true, 1, 1);
        assert!(!r.landed_everywhere(6));
        r.seen(&key("b"), 6, true, 0, 0);
        assert!(!r.landed_everywhere(6), "c has not acknowledged 6");
        r.acked(&key("c"), 6, "");
        assert!(r.landed_everywhere(6));
        assert!(!r.landed_everywhere(6), "once");
        assert_eq!(r.connected_count(), 2);
        r.disconnected(&key("c"));
        // A proxy that comes back is listed afresh.
        r.connected(&key("a"), "id-a", "watch");
        assert_eq!(r.list().len(), 3);
        assert_eq!(r.connected_count(), 2);
    }
}
