//! The authorization layer on the inbound path: each request is checked
//! against the current snapshot's policies for its port before the app sees
//! it, so a policy change applies to the next request of a connection
//! already open.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use tracing::debug;
use weft_api::SpiffeId;

use super::{Body, BoxFuture, full, headers};
use crate::authz::{Decision, Http, normalize};
use crate::discovery::Mesh;

/// Checks requests to `port` from `peer` (None: no mesh identity).
#[derive(Clone, Debug)]
pub struct Authorized<S> {
    pub inner: S,
    pub mesh: Option<Mesh>,
    pub port: u16,
    pub peer: Option<SpiffeId>,
}

/// The answer to a denied request: 403, or PERMISSION_DENIED for gRPC.
pub fn forbidden(policy: &str, grpc: bool) -> Response<Body> {
    let (status, body) = if grpc {
        (StatusCode::OK, full(Bytes::new()))
    } else {
        (
            StatusCode::FORBIDDEN,
            full(format!("forbidden by authorization policy {policy}\n")),
        )
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("forbidden; policy={policy}")) {
        h.insert(headers::ERROR, v);
    }
    if grpc {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(7u32));
        if let Ok(v) = HeaderValue::from_str(&format!("forbidden by {policy}")) {
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

impl<S> tower::Service<Request<Body>> for Authorized<S>
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
        if let Some(mesh) = &self.mesh {
            let authz = mesh.load().authz(self.port);
            let path = normalize(req.uri().path());
            let decision = authz.decide(
                self.peer.as_ref(),
                Some(&Http {
                    method: req.method(),
                    path: &path,
                    headers: req.headers(),
                }),
            );
            if let Decision::Deny { policy, reason } = decision {
                debug!(%policy, reason = reason.label(), port = self.port, "request denied");
                let grpc = req
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                let res = forbidden(&policy, grpc);
                return Box::pin(async move { Ok(res) });
            }
        }
        Box::pin(self.inner.call(req))
    }
}
