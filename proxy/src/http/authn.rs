//! The authentication layer on the inbound path: a request's end-user token
//! is checked against the issuers of its port (current snapshot) before
//! authorization, which reads the verified claims from the request's
//! extensions. A refused token is answered here, 401.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use tracing::debug;

use super::authz::PolicyMark;
use super::{Body, BoxFuture, full, headers};
use crate::authn::Refused;
use crate::discovery::Mesh;
use crate::telemetry::AuthzMetrics;

/// Checks the tokens of requests to `port`.
#[derive(Clone, Debug)]
pub struct Authenticated<S> {
    pub inner: S,
    /// None: no discovery, no issuers.
    pub mesh: Option<Mesh>,
    pub metrics: AuthzMetrics,
    pub port: u16,
}

/// The answer to a refused token: 401, or UNAUTHENTICATED for gRPC.
pub fn unauthenticated(reason: Refused, grpc: bool) -> Response<Body> {
    let (status, body) = if grpc {
        (StatusCode::OK, full(Bytes::new()))
    } else {
        (
            StatusCode::UNAUTHORIZED,
            full(format!(
                "the request's token was refused: {}\n",
                reason.label()
            )),
        )
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("unauthenticated; reason={}", reason.label())) {
        h.insert(headers::ERROR, v);
    }
    h.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    if grpc {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(16u32));
        if let Ok(v) = HeaderValue::from_str(&format!("token refused: {}", reason.label())) {
            h.insert("grpc-message", v);
        }
    } else {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    r
}

impl<S> tower::Service<Request<Body>> for Authenticated<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(authn) = self.mesh.as_ref().and_then(|m| m.load().authn(self.port)) else {
            return Box::pin(self.inner.call(req));
        };
        let (mut parts, body) = req.into_parts();
        match authn.authenticate(&mut parts) {
            Ok(None) => {}
            Ok(Some(verified)) => {
                self.metrics.jwt("valid", "valid");
                debug!(issuer = %verified.issuer, port = self.port, "token accepted");
                parts.extensions.insert(verified);
            }
            Err(reason) => {
                self.metrics.jwt("invalid", reason.label());
                debug!(reason = reason.label(), port = self.port, "token refused");
                let grpc = parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                let mut res = unauthenticated(reason, grpc);
                res.extensions_mut()
                    .insert(PolicyMark(format!("unauthenticated:{}", reason.label())));
                return Box::pin(async move { Ok(res) });
            }
        }
        Box::pin(self.inner.call(Request::from_parts(parts, body)))
    }
}
