//! The inbound HTTP service: requests from peer sidecars (HTTP/2 over mTLS)
//! are handed to the app in the protocol its client spoke, with the caller's
//! workload identity in `weft-client-id`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;
use weft_api::SpiffeId;

use super::access_log::{AccessLog, Entry};
use super::headers::{self, CLIENT_ID, ORIG_PROTO};
use super::pool::dial_tcp;
use super::upgrade;
use super::{Body, ProxyError, boxed};
use crate::telemetry::{Direction, HttpMetrics, RequestLabels};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use std::time::Duration;
use weft_api::trace::{HopSpan, Tracing};

#[derive(Debug)]
pub struct HttpInbound {
    h1: Client<HttpConnector, Body>,
    h2: Client<HttpConnector, Body>,
    metrics: HttpMetrics,
    access_log: Option<AccessLog>,
    tracing: Option<Arc<Tracing>>,
}

impl HttpInbound {
    /// Pooled connections to the app close after `idle_timeout` unused.
    pub fn new(
        idle_timeout: Duration,
        metrics: HttpMetrics,
        access_log: Option<AccessLog>,
        tracing: Option<Arc<Tracing>>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let builder = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(idle_timeout);
            b
        };
        HttpInbound {
            h1: builder().build(connector.clone()),
            h2: builder().http2_only(true).build(connector),
            metrics,
            access_log,
            tracing,
        }
    }

    /// The service for one peer's connection: every request goes to `dst`.
    fn for_peer(
        self: Arc<Self>,
        dst: SocketAddr,
        peer: SpiffeId,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
    > + Clone {
        let peer = HeaderValue::from_str(&peer.to_string()).ok();
        service_fn(move |req| {
            let (this, peer) = (self.clone(), peer.clone());
            async move { Ok::<_, Infallible>(this.handle(req, dst, peer).await) }
        })
    }

    /// Serves one peer's HTTP/2 connection; every request goes to the app at
    /// `dst` (the connection's original destination).
    pub async fn serve<I>(
        self: Arc<Self>,
        io: I,
        dst: SocketAddr,
        peer: SpiffeId,
    ) -> Result<(), hyper::Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(io), self.for_peer(dst, peer))
            .await
    }

    /// Serves a peer's HTTP/1.1 connection (ALPN `http/1.1`): a request
    /// that upgrades the connection, such as a WebSocket handshake.
    pub async fn serve_h1<I>(
        self: Arc<Self>,
        io: I,
        dst: SocketAddr,
        peer: SpiffeId,
    ) -> Result<(), hyper::Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), self.for_peer(dst, peer))
            .with_upgrades()
            .await
    }

    async fn handle(
        &self,
        mut req: Request<Incoming>,
        dst: SocketAddr,
        peer: Option<HeaderValue>,
    ) -> Response<Body> {
        let started = std::time::Instant::now();
        let peer_identity = peer
            .as_ref()
            .and_then(|p| p.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let labels = RequestLabels {
            direction: Direction::Inbound,
            service: dst.port().to_string(),
            route: String::new(),
            tls: "true",
            peer_identity,
        };
        self.metrics.request(&labels);
        let span = self.tracing.as_ref().map(|t| {
            let name = format!("{} :{}", req.method(), dst.port());
            let attrs = vec![
                KeyValue::new("http.request.method", req.method().to_string()),
                KeyValue::new("url.path", req.uri().path().to_string()),
                KeyValue::new("server.port", i64::from(dst.port())),
                KeyValue::new("weft.peer_identity", labels.peer_identity.clone()),
            ];
            t.start_hop(req.headers_mut(), name, SpanKind::Server, attrs)
        });
        let logged = self.access_log.as_ref().map(|_| {
            let authority = req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default();
            (
                req.method().to_string(),
                authority,
                req.uri().path().to_string(),
            )
        });
        let request_bytes = super::LateCounter::default();
        request_bytes.bind(self.metrics.request_bytes_counter(&labels));
        let req = req.map(|b| request_bytes.wrap(boxed(b)));
        let res = match self.proxy(req, dst, peer).await {
            Ok(mut res) => {
                if res.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                    headers::strip_hop_by_hop(res.headers_mut());
                }
                // The app cannot speak for the mesh (no forged weft-error).
                headers::strip_reserved(res.headers_mut());
                res
            }
            Err(e) => {
                debug!(error = %e, "app request failed");
                e.response("", &dst.to_string())
            }
        };
        let grpc = res
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok());
        let bytes = self
            .metrics
            .response(&labels, res.status(), grpc, started.elapsed());
        if let Some(s) = &span {
            let e = headers::error_of(res.headers());
            s.finish(res.status().as_u16(), e);
        }
        let trace_id = span.as_ref().map(HopSpan::trace_id).unwrap_or_default();
        if let (Some(log), Some((method, authority, path))) = (&self.access_log, &logged) {
            log.log(Entry {
                direction: "inbound",
                trace_id: &trace_id,
                method,
                authority,
                path,
                status: res.status().as_u16(),
                duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                peer_identity: &labels.peer_identity,
                upstream: Some(dst),
                retries: 0,
                weft_error: headers::error_of(res.headers()).unwrap_or_default(),
            });
        }
        super::outbound::count_response(&self.metrics, res, &labels, bytes)
    }

    async fn proxy(
        &self,
        mut req: Request<Body>,
        dst: SocketAddr,
        peer: Option<HeaderValue>,
    ) -> Result<Response<Body>, ProxyError> {
        let client_upgrade =
            upgrade::is_upgrade(req.method(), req.headers()).then(|| hyper::upgrade::on(&mut req));
        let upgrade_headers = upgrade::keep_headers(req.headers());
        let (mut parts, body) = req.into_parts();
        let h2_app = parts
            .headers
            .get(ORIG_PROTO)
            .is_some_and(|v| v.as_bytes() == b"HTTP/2");
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::strip_reserved(&mut parts.headers);
        if let Some(p) = peer {
            parts.headers.insert(CLIENT_ID, p);
        }
        if h2_app {
            // An HTTP/2 app reads the authority from `:authority`; a Host
            // that differs from it makes the request malformed (RFC 9113
            // 8.3.1), and `:authority` becomes the app's own address below.
            parts.headers.remove(header::HOST);
        } else if !parts.headers.contains_key(header::HOST)
            && let Some(a) = parts.uri.authority()
            && let Ok(v) = HeaderValue::from_str(a.as_str())
        {
            // HTTP/1.1 apps need a Host: the request's authority.
            parts.headers.insert(header::HOST, v);
        }
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        if let Some(on_upgrade) = client_upgrade {
            for (n, v) in upgrade_headers {
                parts.headers.insert(n, v);
            }
            if parts.method != http::Method::CONNECT {
                parts.uri = Uri::from(pq);
            }
            parts.version = Version::HTTP_11;
            let tcp = dial_tcp(dst, Duration::from_secs(3)).await?;
            let res =
                upgrade::send(tcp, Request::from_parts(parts, boxed(body)), on_upgrade).await?;
            return Ok(res.map(boxed));
        }
        parts.uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(dst.to_string())
            .path_and_query(pq)
            .build()
            .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        let (client, version) = if h2_app {
            (&self.h2, Version::HTTP_2)
        } else {
            (&self.h1, Version::HTTP_11)
        };
        parts.version = version;
        let res = client
            .request(Request::from_parts(parts, boxed(body)))
            .await
            .map_err(ProxyError::Client)?;
        Ok(res.map(boxed))
    }
}
