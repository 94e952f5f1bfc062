//! The control plane's admin server: `/live`, `/ready`, `/metrics`, and the
//! JSON views `/proxies` (what each proxy was sent and acknowledged),
//! `/errors` (manifest problems outstanding) and `/status` (both, with
//! whether each proxy runs the current version: what `weftctl status` shows).

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

#[derive(Clone, Debug)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    pub state: watch::Receiver<Arc<State>>,
}

impl Admin {
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
                    async move { Ok::<_, Infallible>(this.route(&req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    fn route(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
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
                        let mut v = serde_json::to_value(&p).unwrap_or_default();
                        v["current"] = serde_json::Value::Bool(current);
                        v["synced_version"] = p.synced_version().into();
                        v
                    })
                    .collect();
                json(serde_json::json!({
                    "version": version,
                    "proxies": proxies,
                    "errors": state.errors,
                }))
            }
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found; try /live, /ready, /metrics, /proxies, /errors, /status\n".to_string(),
            ),
        };
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(ctype),
        );
        res
    }
}
