//! The control plane's admin server: `/live`, `/ready`, `/metrics`, and the
//! JSON views `/proxies` (what each proxy was sent and acknowledged),
//! `/errors` (manifest problems outstanding) and `/status` (both, with
//! whether each proxy runs the current version, its workload and pod IP,
//! and every meshed pod of the model: what `weftctl status` and `weftctl
//! dashboard` show); and
//! `/proxies/NAMESPACE/POD/metrics`, that pod's proxy's own `/metrics`
//! (read by [`ProxyMetrics`] for `weftctl dashboard`).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::discovery::Registry;
use crate::discovery::source::State;
use crate::metrics::Metrics;
use crate::proxy_metrics::{ProxyMetrics, ScrapeError};

#[derive(Clone, Debug)]
pub struct Admin {
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    state: watch::Receiver<Arc<State>>,
    proxies: ProxyMetrics,
    /// For the identities of pods in `/status`.
    trust_domain: String,
}

type Answer = Response<Full<Bytes>>;

impl Admin {
    pub fn new(
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
        state: watch::Receiver<Arc<State>>,
        trust_domain: &str,
    ) -> Self {
        Admin {
            metrics,
            registry,
            state,
            proxies: ProxyMetrics::default(),
            trust_domain: trust_domain.to_string(),
        }
    }

    pub async fn serve(self, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.answer(&req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    async fn answer(&self, req: &Request<Incoming>) -> Answer {
        match proxy_metrics_path(req.uri().path()) {
            Some((namespace, pod)) if req.method() == Method::GET => {
                self.proxy_metrics(namespace, pod).await
            }
            _ => self.route(req),
        }
    }

    /// A meshed pod's proxy's `/metrics`, as it answered.
    async fn proxy_metrics(&self, namespace: &str, pod: &str) -> Answer {
        let ip = {
            let state = self.state.borrow();
            state
                .model
                .pod(namespace, pod)
                .filter(|p| p.meshed)
                .map(|p| p.ip)
        };
        let ip = match ip {
            Some(Some(ip)) => ip,
            Some(None) => {
                let msg = format!("pod {namespace}/{pod} has no IP yet\n");
                return text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", msg.into());
            }
            None => {
                let msg = format!("no meshed pod {namespace}/{pod}\n");
                return text(StatusCode::NOT_FOUND, "text/plain", msg.into());
            }
        };
        match self.proxies.read(ip).await {
            Ok((ctype, body)) => text(StatusCode::OK, &ctype, body),
            Err(e) => {
                let status = match e {
                    ScrapeError::Busy => StatusCode::SERVICE_UNAVAILABLE,
                    ScrapeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                    ScrapeError::Failed { .. } => StatusCode::BAD_GATEWAY,
                };
                let msg = format!("the proxy of {namespace}/{pod}: {e}\n");
                text(status, "text/plain", msg.into())
            }
        }
    }

    fn route(&self, req: &Request<Incoming>) -> Answer {
        let json =
            |v: serde_json::Value| (StatusCode::OK, "application/json", v.to_string() + "\n");
        let (status, ctype, body) = match (req.method(), req.uri().path()) {
            (&Method::GET, "/live") => (StatusCode::OK, "text/plain", "live\n".to_string()),
            (&Method::GET, "/ready") => (StatusCode::OK, "text/plain", "ready\n".to_string()),
            (&Method::GET, "/metrics") => {
                let version = self.state.borrow().shared.version;
                self.metrics
                    .set_proxy_sync(self.registry.list().into_iter().map(|p| {
                        let current =
                            p.connected && p.synced_version() >= version && p.ack_error.is_empty();
                        (p.namespace, p.pod, current)
                    }));
                (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.metrics.render(),
                )
            }
            (&Method::GET, "/proxies") => {
                let state = self.state.borrow().clone();
                json(serde_json::json!({
                    "version": state.shared.version,
                    "proxies": self.registry.list(),
                }))
            }
            (&Method::GET, "/errors") => {
                let state = self.state.borrow().clone();
                json(serde_json::json!({ "errors": state.errors }))
            }
            (&Method::GET, "/status") => {
                let state = self.state.borrow().clone();
                let version = state.shared.version;
                let proxies: Vec<serde_json::Value> = self
                    .registry
                    .list()
                    .into_iter()
                    .map(|p| {
                        let current =
                            p.connected && p.synced_version() >= version && p.ack_error.is_empty();
                        let pod = state.model.pod(&p.namespace, &p.pod);
                        let mut v = serde_json::to_value(&p).unwrap_or_default();
                        v["current"] = serde_json::Value::Bool(current);
                        v["synced_version"] = p.synced_version().into();
                        // The pod's, when the model has it (a proxy can
                        // connect before its pod is known).
                        v["workload"] = pod.map(|p| p.workload()).unwrap_or_default().into();
                        v["ip"] = pod
                            .and_then(|p| p.ip)
                            .map(|ip| ip.to_string())
                            .unwrap_or_default()
                            .into();
                        v
                    })
                    .collect();
                // Every meshed pod, whichever replica its proxy streams
                // from: what a dashboard reads the metrics of.
                let pods: Vec<serde_json::Value> = state
                    .model
                    .pods
                    .iter()
                    .filter(|p| p.meshed)
                    .map(|p| {
                        serde_json::json!({
                            "namespace": p.namespace,
                            "pod": p.name,
                            "workload": p.workload(),
                            "identity": p.identity(&self.trust_domain).map(|i| i.to_string()).unwrap_or_default(),
                            "ip": p.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                        })
                    })
                    .collect();
                json(serde_json::json!({
                    "version": version,
                    "proxies": proxies,
                    "pods": pods,
                    "errors": state.errors,
                }))
            }
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found; try /live, /ready, /metrics, /proxies, /errors, /status, \
                 /proxies/NAMESPACE/POD/metrics\n"
                    .to_string(),
            ),
        };
        text(status, ctype, Bytes::from(body))
    }
}

fn text(status: StatusCode, ctype: &str, body: Bytes) -> Answer {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    let ctype = header::HeaderValue::from_str(ctype)
        .unwrap_or(header::HeaderValue::from_static("text/plain"));
    res.headers_mut().insert(header::CONTENT_TYPE, ctype);
    res
}

/// `/proxies/NAMESPACE/POD/metrics` → (namespace, pod).
fn proxy_metrics_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/proxies/")?.strip_suffix("/metrics")?;
    let (namespace, pod) = rest.split_once('/')?;
    let ok = |s: &str| !s.is_empty() && !s.contains('/');
    (ok(namespace) && ok(pod)).then_some((namespace, pod))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_pods_metrics_path_is_read_as_one() {
        use super::proxy_metrics_path as p;
        assert_eq!(p("/proxies/shop/web-0/metrics"), Some(("shop", "web-0")));
        assert_eq!(p("/proxies/shop/metrics"), None);
        assert_eq!(p("/proxies//web-0/metrics"), None);
        assert_eq!(p("/proxies/a/b/c/metrics"), None);
        assert_eq!(p("/proxies"), None);
    }
}
