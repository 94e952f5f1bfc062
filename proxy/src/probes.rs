//! Kubelet probes of the app, through the admin port.
//!
//! The injector points each app container's HTTP probes at
//! `ADMIN/app-probe/<container>/<kind>` and hands the proxy the table of
//! where each really goes (`--app-probes`, JSON:
//! `{"/app-probe/app/liveness": {"port": 8080, "path": "/healthz",
//! "headers": [{"name": "X", "value": "y"}]}}`). The proxy sends the probe
//! to the app on the pod's loopback and answers with the app's status, so a
//! kubelet's plaintext probe never meets a strict-mTLS inbound port. Only
//! the paths in the table are forwarded: the admin port is no open proxy to
//! the pod's other ports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// How long one forwarded probe may take (the kubelet gives up by its own
/// `timeoutSeconds`, 1 s by default, anyway).
const TIMEOUT: Duration = Duration::from_secs(10);
/// What a probe answer's body may hold (the kubelet reads 10 KiB).
const MAX_BODY: usize = 10 * 1024;

#[derive(Debug, Deserialize)]
struct Header {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
struct Entry {
    port: u16,
    #[serde(default = "root")]
    path: String,
    #[serde(default)]
    headers: Vec<Header>,
}

fn root() -> String {
    "/".into()
}

#[derive(Debug, Clone)]
struct Target {
    port: u16,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// The probes the proxy forwards, by admin path.
#[derive(Debug, Clone, Default)]
pub struct AppProbes(HashMap<String, Target>);

#[derive(Debug, thiserror::Error)]
#[error("--app-probes is not a probe table: {0}")]
pub struct ProbesError(String);

impl AppProbes {
    pub fn parse(json: &str) -> Result<AppProbes, ProbesError> {
        let table: HashMap<String, Entry> =
            serde_json::from_str(json).map_err(|e| ProbesError(e.to_string()))?;
        let mut out = HashMap::new();
        for (admin_path, e) in table {
            if !admin_path.starts_with("/app-probe/") {
                return Err(ProbesError(format!(
                    "`{admin_path}` does not start with /app-probe/"
                )));
            }
            if e.port == 0 || !e.path.starts_with('/') {
                return Err(ProbesError(format!(
                    "`{admin_path}`: port {} path `{}`",
                    e.port, e.path
                )));
            }
            let headers = e
                .headers
                .iter()
                .map(|h| {
                    Ok((
                        HeaderName::try_from(h.name.as_str())
                            .map_err(|e| ProbesError(format!("header `{}`: {e}", h.name)))?,
                        HeaderValue::try_from(h.value.as_str())
                            .map_err(|e| ProbesError(format!("header `{}`: {e}", h.name)))?,
                    ))
                })
                .collect::<Result<_, ProbesError>>()?;
            out.insert(
                admin_path,
                Target {
                    port: e.port,
                    path: e.path,
                    headers,
                },
            );
        }
        Ok(AppProbes(out))
    }

    /// The app's answer to the probe at `admin_path`; `None` when no probe
    /// has that path.
    pub async fn forward(&self, admin_path: &str) -> Option<Response<Full<Bytes>>> {
        let t = self.0.get(admin_path)?.clone();
        let status = match tokio::time::timeout(TIMEOUT, probe(&t)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(path = admin_path, error = %e, "app probe failed");
                return Some(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("app probe failed: {e}\n"),
                ));
            }
            Err(_) => {
                return Some(text(
                    StatusCode::GATEWAY_TIMEOUT,
                    "app probe timed out\n".into(),
                ));
            }
        };
        Some(text(status, format!("app answered {}\n", status.as_u16())))
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// Why a probe of the app got no answer.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("connecting to port {port}: {source}")]
    Connect {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("the probe's request: {0}")]
    Request(#[from] http::Error),
}

/// One GET to the app on loopback (IPv4, then IPv6).
async fn probe(t: &Target) -> Result<StatusCode, ProbeError> {
    let stream =
        match tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], t.port))).await {
            Ok(s) => s,
            Err(v4) => tokio::net::TcpStream::connect(SocketAddr::from((
                std::net::Ipv6Addr::LOCALHOST,
                t.port,
            )))
            .await
            .map_err(|_| ProbeError::Connect {
                port: t.port,
                source: v4,
            })?,
        };
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::get(t.path.as_str());
    let has_host = t.headers.iter().any(|(n, _)| n == http::header::HOST);
    if !has_host {
        req = req.header(http::header::HOST, format!("127.0.0.1:{}", t.port));
    }
    req = req.header(http::header::USER_AGENT, "kube-probe (via weft-proxy)");
    for (n, v) in &t.headers {
        req = req.header(n, v);
    }
    let req = req.body(Empty::<Bytes>::new())?;
    let res = send.send_request(req).await?;
    let status = res.status();
    // Drain a little of the body, as the kubelet does; its content is not ours.
    let _ = Limited::new(res.into_body(), MAX_BODY).collect().await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forwards_only_known_paths_to_the_app() {
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = app.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (s, _) = app.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            let code = if req.uri().path() == "/healthz"
                                && req.headers().get("x-probe").is_some()
                            {
                                204
                            } else {
                                500
                            };
                            Ok::<_, std::convert::Infallible>(text(
                                StatusCode::from_u16(code).unwrap(),
                                String::new(),
                            ))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let table = format!(
            r#"{{"/app-probe/app/liveness": {{"port": {port}, "path": "/healthz", "headers": [{{"name": "x-probe", "value": "1"}}]}},
                "/app-probe/app/readiness": {{"port": {port}, "path": "/other"}},
                "/app-probe/app/startup": {{"port": 1}}}}"#
        );
        let probes = AppProbes::parse(&table).unwrap();
        assert_eq!(
            probes
                .forward("/app-probe/app/liveness")
                .await
                .unwrap()
                .status(),
            204
        );
        assert_eq!(
            probes
                .forward("/app-probe/app/readiness")
                .await
                .unwrap()
                .status(),
            500
        );
        assert_eq!(
            probes
                .forward("/app-probe/app/startup")
                .await
                .unwrap()
                .status(),
            503
        );
        assert!(probes.forward("/app-probe/other/x").await.is_none());
        assert!(AppProbes::parse(r#"{"/metrics": {"port": 1}}"#).is_err());
    }
}
