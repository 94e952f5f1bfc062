//! What each proxy was sent and acknowledged, and when: the control plane's
//! record that config landed.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

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
    /// Open Watch streams (more than one during a reconnect).
    #[serde(skip)]
    streams: usize,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[derive(Debug, Default)]
pub struct Registry(Mutex<BTreeMap<ProxyKey, ProxyState>>, Mutex<u64>);

impl Registry {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<ProxyKey, ProxyState>) -> R) -> R {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub fn connected(&self, key: &ProxyKey, identity: &str) {
        self.with(|m| {
            let s = m.entry(key.clone()).or_insert_with(|| ProxyState {
                namespace: key.namespace.clone(),
                pod: key.pod.clone(),
                identity: identity.to_string(),
                connected: true,
                sent_version: 0,
                sent_at_unix_ms: 0,
                acked_version: 0,
                acked_at_unix_ms: 0,
                ack_error: String::new(),
                streams: 0,
            });
            s.streams += 1;
            s.connected = true;
            s.identity = identity.to_string();
        })
    }

    pub fn disconnected(&self, key: &ProxyKey) {
        self.with(|m| {
            if let Some(s) = m.get_mut(key) {
                s.streams = s.streams.saturating_sub(1);
                s.connected = s.streams > 0;
            }
        })
    }

    pub fn sent(&self, key: &ProxyKey, version: u64) {
        self.with(|m| {
            if let Some(s) = m.get_mut(key) {
                s.sent_version = version;
                s.sent_at_unix_ms = ms(SystemTime::now());
            }
        })
    }

    /// Records an acknowledgement; false when the proxy is unknown.
    pub fn acked(&self, key: &ProxyKey, version: u64, error: &str) -> bool {
        self.with(|m| match m.get_mut(key) {
            Some(s) => {
                s.acked_version = version;
                s.acked_at_unix_ms = ms(SystemTime::now());
                s.ack_error = error.to_string();
                true
            }
            None => false,
        })
    }

    pub fn identity_of(&self, key: &ProxyKey) -> Option<String> {
        self.with(|m| m.get(key).map(|s| s.identity.clone()))
    }

    pub fn list(&self) -> Vec<ProxyState> {
        self.with(|m| m.values().cloned().collect())
    }

    /// True once per version: when every connected proxy has acknowledged
    /// `version` (the moment a push has landed everywhere).
    pub fn landed_everywhere(&self, version: u64) -> bool {
        // Landed already: the acks that follow need no scan.
        if *self.1.lock().unwrap_or_else(|p| p.into_inner()) >= version {
            return false;
        }
        let all = self.with(|m| {
            m.values()
                .filter(|s| s.connected)
                .all(|s| s.acked_version >= version)
        });
        let mut last = self.1.lock().unwrap_or_else(|p| p.into_inner());
        if all && *last < version {
            *last = version;
            true
        } else {
            false
        }
    }

    pub fn connected_count(&self) -> usize {
        self.with(|m| m.values().filter(|s| s.connected).count())
    }
}
