//! The injector as a mutating admission webhook: `POST /inject` over HTTPS
//! (9443), answering AdmissionReviews for Pods with a JSONPatch made by
//! [`super::inject`]. It injects pods of namespaces labelled
//! `weft.dev/inject=enabled` and pods annotated (or labelled)
//! `weft.dev/inject: enabled`; `disabled` opts a pod out. It never refuses a
//! pod: anything it cannot read or inject is admitted as it came.
//!
//! The serving certificate comes from the mesh CA, for the webhook
//! Service's DNS names (and the pod's IP when `POD_IP` is set); the leader
//! keeps the MutatingWebhookConfiguration's `caBundle` equal to the mesh's
//! trust anchors ([`crate::kubernetes::ca`]).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{ObjectRef, Store};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};
use weft_api::tls::CertSlot;

use super::{Config, Outcome, keys};
use crate::identity::ca::SharedCa;
use crate::metrics::Metrics;

/// The largest AdmissionReview read (a pod with huge annotations is still
/// far below).
const MAX_BODY: usize = 8 << 20;

#[derive(Clone)]
pub struct Webhook {
    pub cfg: Arc<Config>,
    /// The cluster's namespaces (for the injection label).
    pub namespaces: Store<Namespace>,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// The names the webhook's certificate carries: its Service's DNS names and,
/// when given, the pod's address.
pub fn serving_names(
    service: &str,
    namespace: &str,
    pod_ip: Option<IpAddr>,
) -> (Vec<String>, Vec<IpAddr>) {
    let dns = vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
    ];
    (dns, pod_ip.into_iter().collect())
}

/// Issues (and keeps renewing) the webhook's serving certificate.
pub fn spawn_certificate(
    ca: SharedCa,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    lifetime: Duration,
) -> anyhow::Result<CertSlot> {
    let slot = CertSlot::default();
    let issue = {
        let slot = slot.clone();
        move |ca: &SharedCa| -> anyhow::Result<()> {
            let (issued, key) = ca.load().issue_server(&dns, &ips, lifetime)?;
            let mut chain = vec![issued.leaf];
            chain.extend(issued.intermediates);
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            slot.set(
                chain.into_iter().map(CertificateDer::into_owned).collect(),
                key,
            )?;
            Ok(())
        }
    };
    issue(&ca)?;
    tokio::spawn(async move {
        loop {
            // Often enough to follow a CA rotation within minutes.
            tokio::time::sleep(lifetime.mul_f64(0.5).min(Duration::from_secs(300))).await;
            if let Err(e) = issue(&ca) {
                warn!(error = %e, "renewing the webhook's serving certificate");
            }
        }
    });
    Ok(slot)
}

impl Webhook {
    /// Serves HTTPS on `listener` until the process ends.
    pub async fn serve(self, listener: TcpListener, cert: CertSlot) -> anyhow::Result<()> {
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(cert));
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        info!(addr = %listener.local_addr()?, "injector webhook serving");
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (this, acceptor) = (self.clone(), acceptor.clone());
            tokio::spawn(async move {
                let tls =
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(t)) => t,
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "webhook TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                let svc = service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(tls), svc)
                    .await
                {
                    debug!(%peer, error = %e, "webhook connection");
                }
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/live") => reply(StatusCode::OK, "text/plain", "live\n".into()),
            (&Method::POST, "/inject") => {
                let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        return reply(
                            StatusCode::BAD_REQUEST,
                            "text/plain",
                            format!("reading the request: {e}\n").into(),
                        );
                    }
                };
                match serde_json::from_slice::<Value>(&body) {
                    Ok(review) => {
                        let answer = self.review(&review);
                        reply(
                            StatusCode::OK,
                            "application/json",
                            answer.to_string().into(),
                        )
                    }
                    Err(e) => reply(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!("not an AdmissionReview: {e}\n").into(),
                    ),
                }
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found; try POST /inject\n".into(),
            ),
        }
    }

    /// Whether this pod wants a sidecar: its own say first, then its
    /// namespace's label.
    fn wanted(&self, pod: &Value, namespace: &str) -> bool {
        let own = |field: &str| pod.get("metadata")?.get(field)?.get(keys::INJECT)?.as_str();
        match own("annotations").or_else(|| own("labels")) {
            Some("enabled") => true,
            Some(_) => false,
            None => self
                .namespaces
                .get(&ObjectRef::new(namespace))
                .and_then(|ns| ns.metadata.labels.as_ref()?.get(keys::INJECT).cloned())
                .is_some_and(|v| v == "enabled"),
        }
    }

    /// The answer to one AdmissionReview: always allowed, with a patch when
    /// the pod is injected (or annotated as skipped).
    pub fn review(&self, review: &Value) -> Value {
        let request = &review["request"];
        let uid = request["uid"].clone();
        let namespace = request["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut response = json!({"uid": uid, "allowed": true});
        let outcome = self.patch(request, &namespace);
        let label = match &outcome {
            Ok((o, patch)) => {
                if let Some(p) = patch {
                    response["patchType"] = json!("JSONPatch");
                    response["patch"] = p.clone();
                }
                match o {
                    Some(Outcome::Injected) => "injected",
                    Some(Outcome::AlreadyInjected) => "already_injected",
                    Some(Outcome::OptedOut) => "opted_out",
                    Some(Outcome::Skipped(_)) => "skipped",
                    None => "not_wanted",
                }
            }
            Err(e) => {
                warn!(namespace, error = %e, "could not inject; admitting the pod as it is");
                "error"
            }
        };
        self.metrics.injection(label);
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
    }

    #[allow(clippy::type_complexity)]
    fn patch(
        &self,
        request: &Value,
        namespace: &str,
    ) -> Result<(Option<Outcome>, Option<Value>), String> {
        if request["kind"]["kind"] != "Pod" || request["operation"] != "CREATE" {
            return Ok((None, None));
        }
        let before = request
            .get("object")
            .cloned()
            .ok_or("the request has no object")?;
        if before["metadata"]["annotations"][keys::INJECT] == "disabled" {
            return Ok((Some(Outcome::OptedOut), None));
        }
        if !self.wanted(&before, namespace) {
            return Ok((None, None));
        }
        let mut after = before.clone();
        let Some(o) = after.as_object_mut() else {
            return Err("the object is not a JSON object".into());
        };
        if !o.contains_key("metadata") {
            o.insert("metadata".into(), json!({}));
        }
        let (mut meta, mut spec) = (
            o.remove("metadata").unwrap_or_default(),
            o.remove("spec").unwrap_or_default(),
        );
        let outcome = super::inject(&mut meta, &mut spec, Some(namespace), &self.cfg);
        o.insert("metadata".into(), meta);
        o.insert("spec".into(), spec);
        let name = before["metadata"]["generateName"]
            .as_str()
            .or(before["metadata"]["name"].as_str())
            .unwrap_or("?")
            .to_string();
        match &outcome {
            Outcome::Injected => info!(namespace, pod = %name, "injected"),
            Outcome::Skipped(why) => info!(namespace, pod = %name, why, "not injected"),
            _ => debug!(namespace, pod = %name, ?outcome, "unchanged"),
        }
        if !matches!(outcome, Outcome::Injected | Outcome::Skipped(_)) {
            return Ok((Some(outcome), None));
        }
        let patch = json_patch::diff(&before, &after);
        let bytes = serde_json::to_vec(&patch).map_err(|e| e.to_string())?;
        let b64 =
            serde_json::to_value(k8s_openapi::ByteString(bytes)).map_err(|e| e.to_string())?;
        Ok((Some(outcome), Some(b64)))
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}

/// Where the webhook listens by default.
pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], weft_api::defaults::CONTROL_WEBHOOK_PORT))
}
