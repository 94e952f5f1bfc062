//! The inbound HTTP service: requests from peer sidecars (HTTP/2 over mTLS)
//! are handed to the app in the protocol its client spoke, with the caller's
//! workload identity in `weft-client-id`; plaintext HTTP (permissive mode)
//! is served too, so that no `weft-*` header a client outside the mesh
//! sends ever reaches the app.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;
use weft_api::SpiffeId;

use super::access_log::AccessLog;
use super::headers::{self, CLIENT_ID, ORIG_PROTO};
use super::observe::{Observer, Scope};
use super::server::{Client as ClientKind, Proto, Server};
use super::upgrade;
use super::{Body, BoxFuture, ProxyError, boxed};
use crate::connect::Connector;
use crate::telemetry::{HttpMetrics, TlsMetrics};
use std::task::{Context, Poll};
use std::time::Duration;
use weft_api::trace::Tracing;

#[derive(Debug)]
pub struct HttpInbound {
    server: Arc<Server>,
    /// Authorization with the snapshot's policies.
    enforcer: crate::authz::Enforcer,
    /// Rate limits with the snapshot's TrafficPolicies.
    limiter: crate::ratelimit::Limiter,
    h1: Client<HttpConnector, Body>,
    h2: Client<HttpConnector, Body>,
    /// For upgrades, which take a connection of their own to the app.
    connector: Connector,
    observer: Arc<Observer>,
}

/// How long an upgrade may take to connect to the app.
const UPGRADE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl HttpInbound {
    /// Pooled connections to the app close after `idle_timeout` unused.
    pub fn new(
        idle_timeout: Duration,
        metrics: HttpMetrics,
        access_log: Option<AccessLog>,
        tracing: Option<Arc<Tracing>>,
        server: Arc<Server>,
        enforcer: crate::authz::Enforcer,
        limiter: crate::ratelimit::Limiter,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let builder = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(idle_timeout);
            b
        };
        HttpInbound {
            server,
            enforcer,
            limiter,
            h1: builder().build(connector.clone()),
            h2: builder().http2_only(true).build(connector),
            connector: Connector::new(UPGRADE_CONNECT_TIMEOUT, None, TlsMetrics::default()),
            observer: Arc::new(Observer {
                metrics,
                access_log,
                tracing,
            }),
        }
    }

    /// Serves one client's HTTP connection; every request goes to the app at
    /// `dst` (the connection's original destination). `peer` is the peer
    /// sidecar's verified identity, or None for a plaintext client (permissive
    /// mode), whose requests reach the app with no `weft-client-id` and none
    /// of the `weft-*` headers it may have sent. `from` is the client's
    /// address (a plaintext client's rate-limit key).
    pub async fn serve<I>(
        self: Arc<Self>,
        io: I,
        from: SocketAddr,
        dst: SocketAddr,
        peer: Option<SpiffeId>,
        proto: Proto,
    ) -> Result<(), hyper::Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let identity = peer.clone();
        let peer = peer.map(|p| p.to_string());
        let client = if peer.is_some() {
            ClientKind::Peer
        } else {
            ClientKind::App
        };
        let scope = Scope::Inbound {
            dst,
            peer: peer.clone(),
        };
        let (observer, server) = (self.observer.clone(), self.server.clone());
        let (enforcer, limiter) = (self.enforcer.clone(), self.limiter.clone());
        let client_key: Arc<str> = match &peer {
            Some(p) => Arc::from(p.as_str()),
            None => Arc::from(format!("ip:{}", from.ip())),
        };
        // Authentication, then authorization (which reads the verified
        // token), then the rate limit (a refused request takes no token),
        // then the app.
        let app = super::authn::Authenticated {
            mesh: enforcer.mesh.clone(),
            metrics: enforcer.metrics.clone(),
            port: dst.port(),
            inner: super::authz::Authorized {
                inner: super::ratelimit::RateLimited {
                    inner: AppService {
                        inbound: self,
                        dst,
                        peer: peer.and_then(|p| HeaderValue::from_str(&p).ok()),
                    },
                    limiter,
                    port: dst.port(),
                    client: client_key,
                },
                enforcer,
                port: dst.port(),
                peer: identity,
            },
        };
        server.serve(io, proto, client, app, scope, observer).await
    }

    async fn handle(
        &self,
        req: Request<Body>,
        dst: SocketAddr,
        peer: Option<HeaderValue>,
    ) -> Response<Body> {
        match self.proxy(req, dst, peer).await {
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
        }
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
        // A peer's sidecar names the protocol its app spoke; a plaintext
        // client speaks its own.
        let h2_app = match &peer {
            Some(_) => parts
                .headers
                .get(ORIG_PROTO)
                .is_some_and(|v| v.as_bytes() == b"HTTP/2"),
            None => parts.version == Version::HTTP_2,
        };
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
            let tcp = self.connector.tcp(dst).await?;
            let res = upgrade::send(tcp, Request::from_parts(parts, body), on_upgrade).await?;
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
            .request(Request::from_parts(parts, body))
            .await
            .map_err(ProxyError::Client)?;
        Ok(res.map(boxed))
    }
}

/// Hands one peer connection's requests to the app.
#[derive(Clone, Debug)]
struct AppService {
    inbound: Arc<HttpInbound>,
    dst: SocketAddr,
    peer: Option<HeaderValue>,
}

impl tower::Service<Request<Body>> for AppService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (inbound, dst, peer) = (self.inbound.clone(), self.dst, self.peer.clone());
        Box::pin(async move { Ok(inbound.handle(req, dst, peer).await) })
    }
}
