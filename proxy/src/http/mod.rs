//! The L7 data path: HTTP/1.1 and HTTP/2 (gRPC too) proxied request by
//! request, routed by HTTPRoute rules, balanced by latency, and carried
//! between sidecars over one multiplexed mTLS HTTP/2 connection per peer.

pub mod detect;
pub mod headers;
pub mod inbound;
pub mod outbound;
pub mod pool;
pub mod routes;
pub mod upgrade;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};

use crate::tls::TlsFailure;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Bodies stream through unbuffered, whatever their source.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn boxed<B>(b: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    boxed(Full::new(bytes.into()))
}

/// Why the proxy answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches the request")]
    NoRoute,
    #[error("the route has no usable backend")]
    NoBackend,
    #[error("{0} has no endpoints")]
    NoEndpoints(String),
    #[error("connecting to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("TLS with {0} failed ({1}): {2}")]
    Tls(SocketAddr, TlsFailure, String),
    #[error("upstream: {0}")]
    Upstream(hyper::Error),
    #[error("upstream: {0}")]
    Client(hyper_util::client::legacy::Error),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("internal: {0}")]
    Internal(&'static str),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoBackend | ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::NoEndpoints(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Connect(..)
            | ProxyError::Tls(..)
            | ProxyError::Upstream(_)
            | ProxyError::Client(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The response the proxy sends in place of the upstream's.
    pub fn response(&self) -> Response<Body> {
        let mut r = Response::new(full(format!("{self}\n")));
        *r.status_mut() = self.status();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    }
}
