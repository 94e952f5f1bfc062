//! Checker proxies: Discover streams that decode every message whole and
//! fold it as a proxy does (a complete message replaces what is held; a
//! change applies to the version it names as its base), so that the bench
//! can compare the endpoints they end up with against the manifests. The
//! simulated fleet decodes only versions; these few prove the content.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::bail;
use serde::Serialize;
use weft_api::v1;

use super::discover::{ack, open};
use super::proxy::backoff;

/// What a checker holds, folded from its messages.
#[derive(Debug, Default)]
pub struct Held {
    pub version: u64,
    /// Endpoint IPs of each Service held, by "namespace/name".
    pub services: BTreeMap<String, BTreeSet<String>>,
    pub messages: u64,
    /// Changes whose base was not the version held (then the stream is
    /// reopened, as a proxy does, for a complete message).
    pub base_mismatches: u64,
    pub failures: u64,
    pub first_error: Option<String>,
}

impl Held {
    /// Folds one message; an error when it cannot be placed.
    pub fn fold(&mut self, msg: v1::Snapshot) -> anyhow::Result<()> {
        self.messages += 1;
        if msg.base_version == 0 {
            self.services.clear();
        } else if msg.base_version != self.version {
            self.base_mismatches += 1;
            bail!(
                "version {} is based on {}, but this stream holds {}",
                msg.version,
                msg.base_version,
                self.version
            );
        }
        for gone in &msg.removed_services {
            self.services.remove(gone);
        }
        for s in msg.services {
            let ips = s
                .ports
                .iter()
                .flat_map(|p| &p.endpoints)
                .map(|e| e.ip.clone())
                .collect();
            self.services
                .insert(format!("{}/{}", s.namespace, s.name), ips);
        }
        self.version = msg.version;
        Ok(())
    }
}

/// Figures of one checker against what the manifests say.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Checked {
    /// Endpoints held that no manifest has (any more).
    pub stale: usize,
    /// Endpoints of the manifests not held.
    pub missing: usize,
    pub messages: u64,
    pub base_mismatches: u64,
    pub failures: u64,
}

/// Compares what each checker holds of the `expected` Services (endpoint
/// IPs by key) with them.
pub fn check(
    checkers: &[Arc<Mutex<Held>>],
    expected: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<Checked> {
    checkers
        .iter()
        .map(|c| {
            let held = c.lock().unwrap_or_else(|p| p.into_inner());
            let none = BTreeSet::new();
            let (mut stale, mut missing) = (0, 0);
            for (key, want) in expected {
                let have = held.services.get(key).unwrap_or(&none);
                stale += have.difference(want).count();
                missing += want.difference(have).count();
            }
            Checked {
                stale,
                missing,
                messages: held.messages,
                base_mismatches: held.base_mismatches,
                failures: held.failures,
            }
        })
        .collect()
}

/// One checker: Discover as `pod` (a name no Pod has, so that it stands
/// for no simulated proxy; any identity of the namespace may), subscribed
/// to `subscribe`, folding into `held` until aborted.
pub async fn run(
    pod: String,
    config: Arc<rustls::ClientConfig>,
    grpc: SocketAddr,
    subscribe: Vec<String>,
    held: Arc<Mutex<Held>>,
) {
    let channel = weft_api::grpc::connect_lazy(grpc.to_string(), config);
    let mut client = tonic::client::Grpc::new(channel);
    let mut failures = 0u32;
    loop {
        let res: anyhow::Result<()> = async {
            let applied = held.lock().unwrap_or_else(|p| p.into_inner()).version;
            let mut s = open::<v1::Snapshot>(&mut client, &pod, subscribe.clone(), applied).await?;
            while let Some(msg) = s.messages.message().await? {
                let version = msg.version;
                held.lock().unwrap_or_else(|p| p.into_inner()).fold(msg)?;
                s.requests.send(ack(version)).await?;
                failures = 0;
            }
            bail!("the control plane ended the Discover stream")
        }
        .await;
        if let Err(e) = res {
            let mut h = held.lock().unwrap_or_else(|p| p.into_inner());
            h.failures += 1;
            h.first_error.get_or_insert(format!("{e:#}"));
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(backoff(failures)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ips: &[&str]) -> v1::Service {
        v1::Service {
            name: name.into(),
            namespace: "fleet".into(),
            ports: vec![v1::ServicePort {
                endpoints: ips
                    .iter()
                    .map(|ip| v1::Endpoint {
                        ip: (*ip).into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn folds_complete_then_changes_and_refuses_another_base() {
        let mut h = Held::default();
        h.fold(v1::Snapshot {
            version: 5,
            services: vec![svc("a", &["1.1.1.1"]), svc("b", &["2.2.2.2"])],
            ..Default::default()
        })
        .unwrap();
        h.fold(v1::Snapshot {
            version: 6,
            base_version: 5,
            services: vec![svc("a", &["1.1.1.1", "1.1.1.2"])],
            removed_services: vec!["fleet/b".into()],
            ..Default::default()
        })
        .unwrap();
        // A subscription answered within one version: base = version.
        h.fold(v1::Snapshot {
            version: 6,
            base_version: 6,
            services: vec![svc("c", &[])],
            ..Default::default()
        })
        .unwrap();
        let keys: Vec<&str> = h.services.keys().map(String::as_str).collect();
        assert_eq!(keys, ["fleet/a", "fleet/c"]);
        assert!(
            h.fold(v1::Snapshot {
                version: 8,
                base_version: 7,
                ..Default::default()
            })
            .is_err()
        );
        assert_eq!((h.version, h.base_mismatches, h.messages), (6, 1, 4));

        let expected = BTreeMap::from([(
            "fleet/a".to_string(),
            BTreeSet::from(["1.1.1.2".to_string(), "1.1.1.3".to_string()]),
        )]);
        let c = check(&[Arc::new(Mutex::new(h))], &expected);
        assert_eq!((c[0].stale, c[0].missing), (1, 1));
    }
}
