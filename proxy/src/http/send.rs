//! The last step of a request: to a peer sidecar over the shared mTLS HTTP/2
//! connection when an identity is expected at the endpoint, else plain
//! HTTP/1.1 to the address itself. [`Send`] is that step as the stack's
//! innermost service; the endpoint comes from the balancer above it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use weft_api::SpiffeId;

use super::headers::{self, ORIG_PROTO};
use super::pool::PeerPool;
use super::{Body, BoxFuture, Failed, ProxyError, boxed};
use crate::balance::Endpoint;

#[derive(Debug)]
pub struct Sender {
    pool: Arc<PeerPool>,
    plain: Client<HttpConnector, Body>,
}

impl Sender {
    pub fn new(pool: Arc<PeerPool>, idle_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Sender {
            pool,
            plain: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(idle_timeout)
                .build(connector),
        }
    }

    pub fn pool(&self) -> &PeerPool {
        &self.pool
    }

    /// `idle`: the idle timeout for a new peer connection (its Service's).
    pub async fn send(
        &self,
        addr: SocketAddr,
        identity: Option<&SpiffeId>,
        req: Request<Body>,
        idle: Option<Duration>,
    ) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let authority = authority_of(&parts, addr);
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        match identity {
            Some(id) => {
                // To the peer sidecar: HTTP/2, whatever the app spoke.
                parts.headers.insert(ORIG_PROTO, proto_value(parts.version));
                parts.uri = uri(&authority, pq)?;
                parts.version = Version::HTTP_2;
                parts.headers.remove(header::HOST);
                self.pool
                    .send(addr, id, Request::from_parts(parts, body), idle)
                    .await
            }
            None => {
                // Outside the mesh: plain HTTP/1.1 to the address itself.
                parts.uri = uri(&addr.to_string(), pq)?;
                parts.version = Version::HTTP_11;
                if !parts.headers.contains_key(header::HOST)
                    && let Ok(v) = HeaderValue::from_str(&authority)
                {
                    parts.headers.insert(header::HOST, v);
                }
                let mut res = self
                    .plain
                    .request(Request::from_parts(parts, body))
                    .await
                    .map_err(ProxyError::Client)?;
                // Nothing outside the mesh speaks for the mesh.
                headers::strip_reserved(res.headers_mut());
                Ok(res.map(boxed))
            }
        }
    }
}

/// The stack's innermost service: sends to the endpoint the balancer put in
/// the request's extensions.
#[derive(Clone, Debug)]
pub struct Send {
    sender: Arc<Sender>,
    /// The Service's idle timeout for new peer connections.
    idle: Option<Duration>,
}

impl Send {
    pub fn new(sender: Arc<Sender>, idle: Option<Duration>) -> Self {
        Send { sender, idle }
    }
}

impl tower::Service<Request<Body>> for Send {
    type Response = Response<Body>;
    type Error = Failed;
    type Future = BoxFuture<Result<Response<Body>, Failed>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (sender, idle) = (self.sender.clone(), self.idle);
        Box::pin(async move {
            let Some(ep) = req.extensions().get::<Arc<Endpoint>>().cloned() else {
                return Err(ProxyError::Internal("no endpoint picked").into());
            };
            Ok(sender
                .send(ep.addr, ep.identity.as_ref(), req, idle)
                .await?)
        })
    }
}

/// The request's authority: its Host header, else its URI's, else `addr`.
pub fn authority_of(parts: &http::request::Parts, addr: SocketAddr) -> String {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<Authority>().ok())
        .or_else(|| parts.uri.authority().cloned())
        .map_or_else(|| addr.to_string(), |a| a.to_string())
}

fn uri(authority: &str, pq: PathAndQuery) -> Result<Uri, ProxyError> {
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(pq)
        .build()
        .map_err(|e| ProxyError::BadRequest(e.to_string()))
}

fn proto_value(v: Version) -> HeaderValue {
    HeaderValue::from_static(if v == Version::HTTP_2 {
        "HTTP/2"
    } else {
        "HTTP/1.1"
    })
}
