//! The admin server: liveness, readiness, metrics, the applied mesh config,
//! and shutdown, on a port that interception never redirects (4191 by default).
//!
//! `POST /shutdown` is accepted only from loopback, so only something inside
//! the pod (a preStop hook, a test) can stop the proxy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;

/// Whether the proxy should receive traffic: true once its listeners are bound,
/// false again when it starts draining.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone, Debug)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub ready: Readiness,
    pub shutdown: Shutdown,
    /// When the proxy has an identity it is ready only once it holds a
    /// certificate.
    pub cert: Option<weft_api::tls::CertSlot>,
    /// The mesh configuration from the control plane, for `/config`.
    pub mesh: Option<crate::discovery::Mesh>,
    /// The app's probes, forwarded from `/app-probe/...`.
    pub probes: Arc<crate::probes::AppProbes>,
}

type Body = Full<Bytes>;

impl Admin {
    /// Serves until the process exits; the admin port stays up while draining
    /// so probes keep answering.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let this = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let this = this.clone();
                    async move {
                        if req.method() == Method::GET
                            && let Some(res) = this.probes.forward(req.uri().path()).await
                        {
                            return Ok::<_, Infallible>(res);
                        }
                        Ok::<_, Infallible>(this.route(req, peer))
                    }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    debug!(error = %e, "admin connection");
                }
            });
        }
    }

    fn is_ready(&self) -> bool {
        self.ready.get() && self.cert.as_ref().is_none_or(|c| c.is_set())
    }

    fn route(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") if self.is_ready() => text(StatusCode::OK, "ready\n"),
            (&Method::GET, "/ready") => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            (&Method::GET, "/metrics") => {
                let mut r = Response::new(Body::from(self.metrics.render()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            (&Method::GET, "/config") => {
                let body = match &self.mesh {
                    Some(m) => {
                        let mut cfg = m.load().to_json();
                        cfg["discovery"] = if m.subscriptions.on_demand() {
                            "on-demand".into()
                        } else {
                            "all".into()
                        };
                        cfg["subscriptions"] = m.subscriptions.to_json();
                        cfg
                    }
                    None => serde_json::json!({ "discovery": "off" }),
                };
                let mut r = Response::new(Body::from(body.to_string() + "\n"));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                r
            }
            (&Method::POST, "/shutdown") if is_loopback(peer) => {
                info!(%peer, "shutdown requested through the admin server");
                self.shutdown.trigger();
                text(StatusCode::OK, "shutting down\n")
            }
            (&Method::POST, "/shutdown") => text(
                StatusCode::FORBIDDEN,
                "shutdown is accepted only from loopback\n",
            ),
            (_, "/live" | "/ready" | "/metrics" | "/config" | "/shutdown") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /live, /ready, /metrics, /config, POST /shutdown\n",
            ),
        }
    }
}

fn is_loopback(peer: SocketAddr) -> bool {
    match peer {
        SocketAddr::V4(a) => a.ip().is_loopback(),
        SocketAddr::V6(a) => {
            a.ip().is_loopback() || a.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    async fn start() -> (Admin, SocketAddr) {
        let admin = Admin {
            metrics: Arc::new(Metrics::default()),
            ready: Readiness::default(),
            shutdown: Shutdown::new(),
            cert: None,
            mesh: None,
            probes: Default::default(),
        };
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(admin.clone().serve(l));
        (admin, addr)
    }

    async fn call(method: Method, addr: SocketAddr, path: &str) -> (StatusCode, String) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .body(Full::default())
            .unwrap();
        let res = client.request(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn probes_follow_readiness() {
        let (admin, addr) = start().await;
        assert_eq!(call(Method::GET, addr, "/live").await.0, StatusCode::OK);
        assert_eq!(
            call(Method::GET, addr, "/ready").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        admin.ready.set(true);
        assert_eq!(call(Method::GET, addr, "/ready").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text() {
        let (admin, addr) = start().await;
        let mut c = admin
            .metrics
            .tcp
            .accept(crate::telemetry::Direction::Outbound);
        c.open(crate::telemetry::TlsStatus::Plain, None);
        let (status, body) = call(Method::GET, addr, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains(r#"tcp_open_total{direction="outbound",tls="false",peer_identity=""} 1"#),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn shutdown_wants_post_from_loopback() {
        let (admin, addr) = start().await;
        assert_eq!(
            call(Method::GET, addr, "/shutdown").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert!(!admin.shutdown.is_triggered());
        assert_eq!(
            call(Method::POST, addr, "/shutdown").await.0,
            StatusCode::OK
        );
        assert!(admin.shutdown.is_triggered());
        assert!(!is_loopback("10.1.2.3:5".parse().unwrap()));
        assert!(is_loopback("[::ffff:127.0.0.1]:5".parse().unwrap()));
    }

    #[tokio::test]
    async fn unknown_paths_are_404() {
        let (_admin, addr) = start().await;
        assert_eq!(
            call(Method::GET, addr, "/nope").await.0,
            StatusCode::NOT_FOUND
        );
    }
}
