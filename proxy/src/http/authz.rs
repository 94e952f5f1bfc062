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
use crate::authz::{Decision, Enforcer, Http, normalize};

/// Checks requests to `port` from `peer` (None: no mesh identity).
#[derive(Clone, Debug)]
pub struct Authorized<S> {
    pub inner: S,
    pub enforcer: Enforcer,
    pub port: u16,
    pub peer: Option<SpiffeId>,
}

/// The policy that decided a request, for the access log.
#[derive(Clone, Debug)]
pub struct PolicyMark(pub String);

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
        if self.enforcer.mesh.is_some() {
            let path = normalize(req.uri().path());
            let decision = self.enforcer.decide(
                self.port,
                self.peer.as_ref(),
                Some(&Http {
                    method: req.method(),
                    path: &path,
                    headers: req.headers(),
                    query: req.uri().query(),
                    jwt: req.extensions().get::<crate::authn::Verified>(),
                }),
            );
            match decision {
                Decision::Deny { policy, reason } => {
                    debug!(%policy, reason = reason.label(), port = self.port, "request denied");
                    let grpc = req
                        .headers()
                        .get(header::CONTENT_TYPE)
                        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                    let mut res = forbidden(&policy, grpc);
                    res.extensions_mut().insert(PolicyMark(policy));
                    return Box::pin(async move { Ok(res) });
                }
                Decision::Allow { policy, audit } => {
                    // The access log names the policy that decided (or audited).
                    if let Some(p) = audit.or(policy) {
                        // Boxed first: rustc cannot prove an associated
                        // future Send inside the async block.
                        let inner: BoxFuture<Result<Response<Body>, Infallible>> =
                            Box::pin(self.inner.call(req));
                        return Box::pin(async move {
                            let mut res = inner.await?;
                            res.extensions_mut().insert(PolicyMark(p));
                            Ok(res)
                        });
                    }
                }
            }
        }
        Box::pin(self.inner.call(req))
    }
}
