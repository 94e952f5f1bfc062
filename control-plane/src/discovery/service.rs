//! `weft.v1.Discovery`: Watch streams each proxy its snapshot; Ack records
//! what it applied.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, info};
use weft_api::SpiffeId;
use weft_api::v1::discovery_server::Discovery;
use weft_api::v1::{AckRequest, AckResponse, Snapshot, WatchRequest};

use super::registry::{ProxyKey, Registry};
use super::snapshot::{self, MeshSettings};
use super::source::State;
use crate::grpc::PeerInfo;
use crate::metrics::Metrics;

#[derive(Clone, Debug)]
pub struct DiscoveryService {
    pub state: watch::Receiver<Arc<State>>,
    pub settings: MeshSettings,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub tracing: Option<Arc<weft_api::trace::Tracing>>,
}

impl DiscoveryService {
    /// The caller's identity, from its client certificate.
    fn caller<T>(req: &Request<T>) -> Result<SpiffeId, Status> {
        req.extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.identity.clone())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "present a workload certificate (get one from Certify first)",
                )
            })
    }

    /// The caller may speak for `namespace/pod` only as that pod's identity.
    fn authorize(&self, id: &SpiffeId, namespace: &str, pod: &str) -> Result<(), Status> {
        if pod.is_empty() || namespace.is_empty() {
            return Err(Status::invalid_argument(
                "pod_name and namespace are required",
            ));
        }
        if id.namespace() != namespace {
            return Err(Status::permission_denied(format!(
                "{id} cannot watch for a pod in namespace {namespace}"
            )));
        }
        let state = self.state.borrow().clone();
        if let Some(p) = state.model.pod(namespace, pod)
            && p.service_account != id.service_account()
        {
            return Err(Status::permission_denied(format!(
                "pod {namespace}/{pod} runs as service account {}, not {id}",
                p.service_account
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type WatchStream = ReceiverStream<Result<Snapshot, Status>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let id = Self::caller(&request)?;
        let req = request.into_inner();
        self.authorize(&id, &req.namespace, &req.pod_name)?;
        let key = ProxyKey {
            namespace: req.namespace.clone(),
            pod: req.pod_name.clone(),
        };
        self.registry.connected(&key, &id.to_string());
        self.metrics
            .set_connected_proxies(self.registry.connected_count());
        info!(pod = %req.pod_name, namespace = %req.namespace, identity = %id, applied = req.applied_version, "proxy watching");

        let (tx, rx) = mpsc::channel(2);
        let this = self.clone();
        tokio::spawn(async move {
            let mut state_rx = this.state.clone();
            let mut last_sent = None;
            // The version this stream last sent: the base for sending only changes.
            let mut sent_version = None;
            loop {
                let state = state_rx.borrow_and_update().clone();
                let inbound =
                    snapshot::inbound(&state.model, &this.settings, &key.namespace, &key.pod);
                let (snap, digest) = snapshot::for_proxy(&state.shared, inbound, sent_version);
                if last_sent != Some(digest) {
                    let version = snap.version;
                    let span = this.tracing.as_ref().map(|t| {
                        t.start_span(
                            "weft.v1.Discovery/push".into(),
                            opentelemetry::trace::SpanKind::Producer,
                            vec![
                                opentelemetry::KeyValue::new(
                                    "weft.pod",
                                    format!("{}/{}", key.namespace, key.pod),
                                ),
                                opentelemetry::KeyValue::new("weft.config_version", version as i64),
                            ],
                        )
                    });
                    let sent = tx.send(Ok(snap)).await;
                    drop(span);
                    if sent.is_err() {
                        break;
                    }
                    last_sent = Some(digest);
                    sent_version = Some(version);
                    this.registry.sent(&key, version);
                    this.metrics.snapshot_pushed();
                    debug!(pod = %key.pod, version, "snapshot sent");
                }
                tokio::select! {
                    changed = state_rx.changed() => if changed.is_err() { break },
                    _ = tx.closed() => break,
                }
            }
            this.registry.disconnected(&key);
            this.metrics
                .set_connected_proxies(this.registry.connected_count());
            info!(pod = %key.pod, namespace = %key.namespace, "proxy stopped watching");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let id = Self::caller(&request)?;
        let req = request.into_inner();
        let key = ProxyKey {
            namespace: req.namespace,
            pod: req.pod_name,
        };
        match self.registry.identity_of(&key) {
            Some(known) if known == id.to_string() => {}
            Some(_) => {
                return Err(Status::permission_denied(format!(
                    "{id} cannot acknowledge for {}/{}",
                    key.namespace, key.pod
                )));
            }
            None => {
                return Err(Status::not_found(
                    "no Watch from this pod; acknowledge after watching",
                ));
            }
        }
        self.registry.acked(&key, req.version, &req.error);
        let state = self.state.borrow().clone();
        if req.version == state.shared.version && self.registry.landed_everywhere(req.version) {
            let took = std::time::SystemTime::now()
                .duration_since(state.changed_at)
                .unwrap_or_default();
            self.metrics.push_landed(took);
            debug!(
                version = req.version,
                ?took,
                "every proxy runs the new version"
            );
        }
        if req.error.is_empty() {
            debug!(pod = %key.pod, version = req.version, "acknowledged");
        } else {
            info!(pod = %key.pod, version = req.version, error = %req.error, "proxy could not apply a snapshot");
        }
        Ok(Response::new(AckResponse {}))
    }
}
