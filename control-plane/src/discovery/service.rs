//! `weft.v1.Discovery`: Discover streams each proxy its view of the mesh
//! (and takes its subscriptions and acknowledgements); Watch streams an old
//! proxy the whole mesh, and Ack records what it applied.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tonic::codec::Streaming;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};
use weft_api::SpiffeId;
use weft_api::v1::discovery_server::Discovery;
use weft_api::v1::{AckRequest, AckResponse, DiscoverRequest, Snapshot, WatchRequest};

use super::frames::{self, Message, SnapshotBody};
use super::registry::{ProxyKey, Registry};
use super::snapshot::{self, Encoded, MeshSettings};
use super::source::State;
use super::view::View;
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

/// Which RPC a stream serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    /// Everything, for proxies that predate Discover.
    Watch,
    /// The proxy's view.
    Discover,
}

impl DiscoveryService {
    /// Serves `Watch`: the whole mesh, then what changes.
    pub async fn watch_stream(
        &self,
        peer: Option<&PeerInfo>,
        mut requests: Streaming<WatchRequest>,
    ) -> Result<SnapshotBody, Status> {
        let id = caller(peer)?;
        let req = requests
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no WatchRequest"))?;
        self.authorize(&id, &req.namespace, &req.pod_name)?;
        Ok(self.start(
            id,
            req.namespace,
            req.pod_name,
            req.applied_version,
            Api::Watch,
            None,
        ))
    }

    /// Serves `Discover`: the proxy's view, changed by its requests.
    pub async fn discover_stream(
        &self,
        peer: Option<&PeerInfo>,
        mut requests: Streaming<DiscoverRequest>,
    ) -> Result<SnapshotBody, Status> {
        let id = caller(peer)?;
        let first = requests
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no DiscoverRequest"))?;
        self.authorize(&id, &first.namespace, &first.pod_name)?;
        let (ns, pod, applied) = (
            first.namespace.clone(),
            first.pod_name.clone(),
            first.applied_version,
        );
        Ok(self.start(id, ns, pod, applied, Api::Discover, Some((first, requests))))
    }

    fn start(
        &self,
        id: SpiffeId,
        namespace: String,
        pod: String,
        applied: u64,
        api: Api,
        discover: Option<(DiscoverRequest, Streaming<DiscoverRequest>)>,
    ) -> SnapshotBody {
        let key = ProxyKey { namespace, pod };
        let api_name = match api {
            Api::Watch => "watch",
            Api::Discover => "discover",
        };
        self.registry.connected(&key, &id.to_string(), api_name);
        self.metrics
            .set_connected_proxies(self.registry.connected_count());
        info!(pod = %key.pod, namespace = %key.namespace, identity = %id, applied, api = api_name, "proxy connected");
        let (tx, rx) = mpsc::channel(2);
        let this = self.clone();
        tokio::spawn(async move {
            this.serve(&key, &id, api, discover, tx).await;
            this.registry.disconnected(&key);
            this.metrics
                .set_connected_proxies(this.registry.connected_count());
            info!(pod = %key.pod, namespace = %key.namespace, "proxy disconnected");
        });
        SnapshotBody::new(rx)
    }

    /// One stream: a message whenever what the proxy sees changes, until it
    /// goes away.
    async fn serve(
        &self,
        key: &ProxyKey,
        id: &SpiffeId,
        api: Api,
        discover: Option<(DiscoverRequest, Streaming<DiscoverRequest>)>,
        tx: mpsc::Sender<Result<Message, Status>>,
    ) {
        let mut state_rx = self.state.clone();
        let mut view = View::default();
        let mut requests = None;
        if let Some((first, rest)) = discover {
            self.requested(key, id, &mut view, first);
            requests = Some(rest);
        }
        // Watch: the digest and version this stream last sent.
        let mut last_sent: Option<u64> = None;
        let mut sent_version = None;
        // This pod's inbound settings, computed once per version.
        let mut inbound: Option<(u64, Encoded)> = None;
        // A request subscribed: answer it even if nothing changed.
        let mut answer = false;
        loop {
            let state = state_rx.borrow_and_update().clone();
            let version = state.shared.version;
            // A pod unknown when the stream opened may turn out to run as
            // another service account: then this caller never spoke for it.
            if let Some(p) = state.model.pod(&key.namespace, &key.pod)
                && p.service_account != id.service_account()
            {
                let _ = tx
                    .send(Err(Status::permission_denied(format!(
                        "pod {}/{} runs as service account {}, not {id}",
                        key.namespace, key.pod, p.service_account
                    ))))
                    .await;
                return;
            }
            if inbound.as_ref().is_none_or(|(v, _)| *v != version) {
                let settings =
                    snapshot::inbound(&state.model, &self.settings, &key.namespace, &key.pod);
                inbound = Some((version, Encoded::of(4, &settings)));
            }
            let Some((_, own)) = &inbound else { break };
            let msg = match api {
                Api::Watch => {
                    let (msg, digest) = frames::watch(&state.shared, own, sent_version);
                    (last_sent != Some(digest)).then(|| {
                        last_sent = Some(digest);
                        msg
                    })
                }
                Api::Discover => {
                    let declared = state
                        .model
                        .pod(&key.namespace, &key.pod)
                        .map(|p| p.dependencies.as_slice())
                        .unwrap_or_default();
                    view.emit(&state.shared, declared, own, std::mem::take(&mut answer))
                }
            };
            if let Some(msg) = msg {
                let span = self.tracing.as_ref().map(|t| {
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
                let sent = tx.send(Ok(msg)).await;
                drop(span);
                if sent.is_err() {
                    break;
                }
                sent_version = Some(version);
                self.registry.sent(key, version);
                self.metrics.snapshot_pushed();
                debug!(pod = %key.pod, version, "snapshot sent");
            }
            let known = state.model.pod(&key.namespace, &key.pod).is_some();
            self.registry
                .seen(key, version, known, view.services(), view.subscriptions());
            self.check_landed(version);
            // Wait for a new version, or a request that changes the view.
            loop {
                tokio::select! {
                    changed = state_rx.changed() => {
                        if changed.is_err() { return }
                        break;
                    }
                    req = next(&mut requests) => match req {
                        Ok(Some(req)) => {
                            if self.requested(key, id, &mut view, req) {
                                answer = true;
                                break;
                            }
                        }
                        Ok(None) => return,
                        Err(status) => {
                            debug!(pod = %key.pod, %status, "request stream failed");
                            return;
                        }
                    },
                    _ = tx.closed() => return,
                }
            }
        }
    }

    /// Applies one Discover request; true when the view changed.
    fn requested(
        &self,
        key: &ProxyKey,
        id: &SpiffeId,
        view: &mut View,
        req: DiscoverRequest,
    ) -> bool {
        if req.acked_version != 0 {
            self.record_ack(key, req.acked_version, &req.ack_error);
        }
        let before = view.subscriptions();
        let mut refused = view.subscribe(&req.subscribe);
        refused.extend(view.subscribe_addresses(&req.subscribe_addresses));
        view.unsubscribe(&req.unsubscribe);
        view.unsubscribe_addresses(&req.unsubscribe_addresses);
        for r in &refused {
            warn!(pod = %key.pod, namespace = %key.namespace, identity = %id, refused = ?r, "subscription refused");
        }
        !(req.subscribe.is_empty()
            && req.unsubscribe.is_empty()
            && req.subscribe_addresses.is_empty()
            && req.unsubscribe_addresses.is_empty())
            || before != view.subscriptions()
    }

    /// Records an acknowledgement, and whether the version has now landed.
    fn record_ack(&self, key: &ProxyKey, version: u64, error: &str) {
        self.registry.acked(key, version, error);
        if error.is_empty() {
            debug!(pod = %key.pod, version, "acknowledged");
        } else {
            info!(pod = %key.pod, version, error = %error, "proxy could not apply a snapshot");
        }
        self.check_landed(version);
    }

    fn check_landed(&self, version: u64) {
        let state = self.state.borrow().clone();
        if version == state.shared.version && self.registry.landed_everywhere(version) {
            let took = std::time::SystemTime::now()
                .duration_since(state.changed_at)
                .unwrap_or_default();
            self.metrics.push_landed(took);
            debug!(version, ?took, "every proxy runs the new version");
        }
    }
}

/// The next request of a Discover stream; never, for a Watch stream.
async fn next(
    requests: &mut Option<Streaming<DiscoverRequest>>,
) -> Result<Option<DiscoverRequest>, Status> {
    match requests {
        Some(r) => r.message().await,
        None => std::future::pending().await,
    }
}

/// The caller's identity, from its client certificate.
fn caller(peer: Option<&PeerInfo>) -> Result<SpiffeId, Status> {
    peer.and_then(|p| p.identity.clone()).ok_or_else(|| {
        Status::unauthenticated("present a workload certificate (get one from Certify first)")
    })
}

/// The generated server handles Ack; Watch and Discover are served by
/// [`super::grpc_routes::DiscoveryRoutes`] from shared bytes, and never reach it.
#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type WatchStream = tokio_stream::Empty<Result<Snapshot, Status>>;
    type DiscoverStream = tokio_stream::Empty<Result<Snapshot, Status>>;

    async fn watch(
        &self,
        _request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::internal("Watch is served by DiscoveryRoutes"))
    }

    async fn discover(
        &self,
        _request: Request<Streaming<DiscoverRequest>>,
    ) -> Result<Response<Self::DiscoverStream>, Status> {
        Err(Status::internal("Discover is served by DiscoveryRoutes"))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let id = caller(request.extensions().get::<PeerInfo>())?;
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
        self.record_ack(&key, req.version, &req.error);
        Ok(Response::new(AckResponse {}))
    }
}
