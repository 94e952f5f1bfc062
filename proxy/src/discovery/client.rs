//! The discovery client: streams this proxy's view from the control plane
//! (Discover; Watch, the whole mesh, with `--discovery all` or an old control
//! plane), applies each message atomically and acknowledges it. When the control plane goes away the last
//! snapshot keeps serving and the stream is retried with capped backoff and
//! jitter.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tracing::{debug, info, warn};
use weft_api::tls;
use weft_api::v1::discovery_client::DiscoveryClient;
use weft_api::v1::{self, AckRequest, DiscoverRequest, WatchRequest};

use super::config::{ConfigError, Mesh, MeshConfig};
use super::delta::DeltaError;
use super::subscriptions::SubscriptionMetrics;
use crate::balance;
use crate::identity::{ControlPlane, Identity};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Discovery metrics: the version applied and how updates went.
#[derive(Clone, Debug, Default)]
pub struct DiscoveryMetrics {
    version: Gauge,
    updates: Family<ResultLabels, Counter>,
    last_update: Gauge,
    pub subscriptions: SubscriptionMetrics,
}

impl DiscoveryMetrics {
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "discovery_snapshot_version",
            "Version of the mesh snapshot applied (0: none yet)",
            self.version.clone(),
        );
        reg.register(
            "discovery_updates",
            "Snapshots received, by result (applied, rejected)",
            self.updates.clone(),
        );
        reg.register(
            "discovery_last_update_timestamp_seconds",
            "When the last snapshot arrived (Unix seconds): time() minus this is its age",
            self.last_update.clone(),
        );
        self.subscriptions.register(reg);
    }
}

#[derive(Debug)]
pub struct Watcher {
    pub identity: Identity,
    pub control_plane: ControlPlane,
    pub pod: String,
    pub namespace: String,
    pub mesh: Mesh,
    pub metrics: DiscoveryMetrics,
    /// The endpoints' live state, carried from one snapshot to the next.
    pub endpoints: balance::Registry,
}

/// The largest snapshot accepted (about 400,000 pods).
const MAX_SNAPSHOT_BYTES: usize = 64 << 20;

const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

impl Watcher {
    pub async fn run(self) {
        // Discovery authenticates with the workload certificate: wait for it.
        self.identity.cert.ready().await;
        let config = match tls::client_config(
            self.identity.cert.clone(),
            self.identity.anchors.clone(),
            self.control_plane.identity.clone(),
            &[tls::ALPN_H2],
        ) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                warn!(error = %e, "cannot build the TLS config for discovery; discovery is off");
                return;
            }
        };
        // A complete snapshot is about 150 bytes per meshed pod: past tonic's
        // 4 MiB default at ~28,000 pods.
        let mut client = DiscoveryClient::new(weft_api::grpc::connect_lazy(
            self.control_plane.addr.clone(),
            config,
        ))
        .max_decoding_message_size(MAX_SNAPSHOT_BYTES);
        let subs = self.mesh.subscriptions.clone();
        if subs.on_demand() {
            let subs = subs.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(subs.sweep_every());
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    let gone = subs.sweep();
                    if gone > 0 {
                        debug!(gone, "unused subscriptions dropped");
                    }
                }
            });
        }
        let mut failures = 0u32;
        loop {
            let on_demand = subs.on_demand();
            let res = if on_demand {
                self.discover(&mut client).await
            } else {
                self.watch(&mut client).await
            };
            match res {
                Ok(received) => {
                    info!("the control plane closed the discovery stream");
                    if received {
                        failures = 0;
                    }
                }
                Err(e) if on_demand && e.code() == tonic::Code::Unimplemented => {
                    warn!("the control plane predates Discover: watching the whole mesh");
                    subs.fall_back();
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "discovery failed; serving the last snapshot");
                }
            }
            failures = failures.saturating_add(1);
            let exp = BACKOFF_BASE.saturating_mul(1 << failures.min(8));
            let wait = exp
                .min(BACKOFF_CAP)
                .mul_f64(0.5 + rand::random::<f64>() * 0.5);
            tokio::time::sleep(wait).await;
        }
    }

    /// One Discover stream until it ends; true if it delivered anything.
    /// Subscriptions go out on it as connections ask for them, and each
    /// message is acknowledged on it.
    async fn discover(&self, client: &mut DiscoveryClient<Channel>) -> Result<bool, tonic::Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let subs = &self.mesh.subscriptions;
        subs.attach(
            tx.clone(),
            DiscoverRequest {
                pod_name: self.pod.clone(),
                namespace: self.namespace.clone(),
                applied_version: self.mesh.load().version,
                ..Default::default()
            },
        );
        let result = async {
            let mut stream = client
                .discover(UnboundedReceiverStream::new(rx))
                .await?
                .into_inner();
            let mut received = false;
            let mut current: Option<v1::Snapshot> = None;
            while let Some(snap) = stream.message().await? {
                if !received {
                    subs.live();
                }
                received = true;
                let (version, error) = self.apply(&mut current, snap)?;
                let _ = tx.send(DiscoverRequest {
                    acked_version: version,
                    ack_error: error,
                    ..Default::default()
                });
            }
            Ok(received)
        }
        .await;
        subs.detach();
        result
    }

    /// One Watch stream (everything) until it ends; true if it delivered
    /// anything.
    async fn watch(&self, client: &mut DiscoveryClient<Channel>) -> Result<bool, tonic::Status> {
        let applied = self.mesh.load().version;
        let mut stream = client
            .watch(WatchRequest {
                pod_name: self.pod.clone(),
                namespace: self.namespace.clone(),
                applied_version: applied,
            })
            .await?
            .into_inner();
        let mut received = false;
        // The complete snapshot this stream has described so far.
        let mut current: Option<v1::Snapshot> = None;
        while let Some(snap) = stream.message().await? {
            received = true;
            let (version, error) = self.apply(&mut current, snap)?;
            let mut ack = tonic::Request::new(AckRequest {
                pod_name: self.pod.clone(),
                namespace: self.namespace.clone(),
                version,
                error,
            });
            ack.set_timeout(Duration::from_secs(5));
            if let Err(e) = client.ack(ack).await {
                debug!(error = %e, "ack failed");
            }
        }
        Ok(received)
    }

    /// Applies one message on what the stream holds: the version, and why it
    /// was rejected (empty: applied). Err: the stream must start over.
    fn apply(
        &self,
        current: &mut Option<v1::Snapshot>,
        mut snap: v1::Snapshot,
    ) -> Result<(u64, String), tonic::Status> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        self.metrics.last_update.set(now);
        let not_found = std::mem::take(&mut snap.not_found);
        let prev = self.mesh.load_full();
        let (snap, built) = fold(
            current.as_ref(),
            snap,
            self.identity.trust_domain(),
            &self.namespace,
            &prev,
            &self.endpoints,
        )
        .map_err(|e| {
            warn!(error = %e, "cannot place a change; reconnecting for a complete snapshot");
            tonic::Status::data_loss(e.to_string())
        })?;
        drop(prev);
        let version = snap.version;
        let error = match built {
            Ok(cfg) => {
                let anchors: Vec<CertificateDer<'static>> = cfg
                    .trust_anchors_der
                    .iter()
                    .map(|d| CertificateDer::from(d.clone()))
                    .collect();
                if !anchors.is_empty()
                    && let Err(e) = self.identity.anchors.replace(anchors)
                {
                    warn!(error = %e, "trust anchors in the snapshot are not usable; keeping ours");
                }
                let cfg = Arc::new(cfg);
                self.mesh.store(cfg.clone());
                self.mesh
                    .subscriptions
                    .arrived(|k| cfg.holds(k), &not_found);
                self.endpoints.prune();
                self.metrics.version.set(version as i64);
                self.metrics
                    .updates
                    .get_or_create(&ResultLabels { result: "applied" })
                    .inc();
                debug!(version, "snapshot applied");
                String::new()
            }
            Err(e) => {
                self.metrics
                    .updates
                    .get_or_create(&ResultLabels { result: "rejected" })
                    .inc();
                warn!(version, error = %e, "snapshot rejected; keeping the previous one");
                e.to_string()
            }
        };
        // The names table lives in the config, not twice.
        let mut snap = snap;
        snap.names = Vec::new();
        snap.names_complete = false;
        *current = Some(snap);
        Ok((version, error))
    }
}

/// What one message of a Watch stream makes of it: the complete snapshot it
/// describes (`current` with its changes folded in) and the config built
/// from that, or why the config was rejected. Err: the change cannot be
/// placed on `current`, and the stream must start over.
pub(crate) fn fold(
    current: Option<&v1::Snapshot>,
    msg: v1::Snapshot,
    trust_domain: &str,
    namespace: &str,
    prev: &MeshConfig,
    endpoints: &balance::Registry,
) -> Result<(v1::Snapshot, Result<MeshConfig, ConfigError>), DeltaError> {
    let snap = super::delta::merge(current, msg)?;
    let built = MeshConfig::from_snapshot(&snap, trust_domain, namespace, prev, endpoints);
    Ok((snap, built))
}
