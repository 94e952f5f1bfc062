//! The control plane's `/status`, as far as the dashboard reads it.

use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub proxies: Vec<Proxy>,
    /// Every meshed pod the control plane knows, whichever replica its
    /// proxy streams from.
    #[serde(default)]
    pub pods: Vec<Pod>,
    /// Manifest errors outstanding, passed on as the control plane wrote them.
    #[serde(default)]
    pub errors: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Pod {
    pub namespace: String,
    pub pod: String,
    pub workload: String,
    pub identity: String,
    pub ip: String,
}

impl Status {
    /// Lists every meshed pod as a proxy: a pod whose proxy has no stream
    /// to the replica read (another replica serves it, or it is not
    /// connected yet) is listed [`Proxy::elsewhere`], so that the graph and
    /// the metrics cover the whole mesh behind any one replica.
    pub fn with_every_pod(mut self) -> Status {
        let known: std::collections::HashSet<(String, String)> = self
            .proxies
            .iter()
            .map(|p| (p.namespace.clone(), p.pod.clone()))
            .collect();
        let missing: Vec<Proxy> = self
            .pods
            .iter()
            .filter(|p| !known.contains(&(p.namespace.clone(), p.pod.clone())))
            .map(|p| Proxy {
                namespace: p.namespace.clone(),
                pod: p.pod.clone(),
                identity: p.identity.clone(),
                workload: p.workload.clone(),
                ip: p.ip.clone(),
                elsewhere: true,
                ..Proxy::default()
            })
            .collect();
        self.proxies.extend(missing);
        self.proxies
            .sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
        self
    }
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
    /// A meshed pod with no stream to the replica read (see
    /// [`Status::with_every_pod`]).
    #[serde(skip)]
    pub elsewhere: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_another_replica_serves_are_listed_too() {
        let s: Status = serde_json::from_str(
            r#"{"version": 7,
                "proxies": [{"namespace": "shop", "pod": "web-0", "workload": "web", "connected": true, "current": true}],
                "pods": [{"namespace": "shop", "pod": "web-0", "workload": "web"},
                         {"namespace": "shop", "pod": "api-0", "workload": "api", "identity": "spiffe://cluster.local/ns/shop/sa/api"}]}"#,
        )
        .unwrap();
        let s = s.with_every_pod();
        let listed: Vec<(&str, bool, bool)> = s
            .proxies
            .iter()
            .map(|p| (p.pod.as_str(), p.connected, p.elsewhere))
            .collect();
        assert_eq!(listed, [("api-0", false, true), ("web-0", true, false)]);
        assert_eq!(
            s.proxies[0].identity,
            "spiffe://cluster.local/ns/shop/sa/api"
        );
    }
}
