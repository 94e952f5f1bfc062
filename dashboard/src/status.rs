//! The control plane's `/status`, as far as the dashboard reads it.

use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub proxies: Vec<Proxy>,
    /// Manifest errors outstanding, passed on as the control plane wrote them.
    #[serde(default)]
    pub errors: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Proxy {
    pub namespace: String,
    pub pod: String,
    pub identity: String,
    pub workload: String,
    pub ip: String,
    pub connected: bool,
    pub current: bool,
    pub sent_version: u64,
    pub acked_version: u64,
    pub acked_at_unix_ms: u64,
    pub synced_version: u64,
    pub ack_error: String,
}

impl Proxy {
    /// Its workload, or its pod's name while the control plane does not
    /// know the pod yet.
    pub fn workload(&self) -> &str {
        if self.workload.is_empty() {
            &self.pod
        } else {
            &self.workload
        }
    }

    pub fn key(&self) -> crate::counters::PodKey {
        crate::counters::PodKey {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
        }
    }
}
