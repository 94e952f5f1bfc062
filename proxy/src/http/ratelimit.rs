//! The rate-limit layer on the inbound path, inside authorization (a
//! request denied there takes no token): each request takes a token from
//! every limit of its port, or is answered 429 at once, before the app
//! sees it.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use tracing::debug;

use super::{Body, BoxFuture, full, headers};
use crate::ratelimit::{Call, Limiter, Refused, retry_after_secs};

/// Limits requests to `port` from `client` (its SPIFFE ID, or
/// `ip:<address>` for a plaintext caller).
#[derive(Clone, Debug)]
pub struct RateLimited<S> {
    pub inner: S,
    pub limiter: Limiter,
    pub port: u16,
    pub client: Arc<str>,
}

/// The limit that refused a request, for the access log.
#[derive(Clone, Debug)]
pub struct LimitMark(pub String);

/// The answer to a refused request: 429 with `Retry-After` (whole seconds,
/// at least 1) and `weft-error: rate-limited; limit=<ns>/<name>`; gRPC
/// callers get RESOURCE_EXHAUSTED (trailers-only) with the same headers.
pub fn limited(refused: &Refused, grpc: bool) -> Response<Body> {
    let limit = &refused.limit;
    let (status, body) = if grpc {
        (StatusCode::OK, full(Bytes::new()))
    } else {
        (
            StatusCode::TOO_MANY_REQUESTS,
            full(format!("rate limited by {limit}\n")),
        )
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("rate-limited; limit={limit}")) {
        h.insert(headers::ERROR, v);
    }
    h.insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs(refused.wait)),
    );
    if grpc {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(8u32));
        if let Ok(v) = HeaderValue::from_str(&format!("rate limited by {limit}")) {
            h.insert("grpc-message", v);
        }
    } else {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    r.extensions_mut().insert(LimitMark(limit.clone()));
    r
}

impl<S> tower::Service<Request<Body>> for RateLimited<S>
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
        let call = Call {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
        };
        if let Err(refused) = self.limiter.check(self.port, &self.client, &call) {
            debug!(limit = %refused.limit, client = %self.client, port = self.port, "rate limited");
            let grpc = req
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            let res = limited(&refused, grpc);
            return Box::pin(async move { Ok(res) });
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refusals_are_429_with_retry_after_or_resource_exhausted_for_grpc() {
        let refused = Refused {
            limit: "shop/web".into(),
            wait: Duration::from_millis(1500),
        };
        let r = limited(&refused, false);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(r.headers()["weft-error"], "rate-limited; limit=shop/web");
        assert_eq!(r.extensions().get::<LimitMark>().unwrap().0, "shop/web");
        let g = limited(&refused, true);
        assert_eq!(g.status(), StatusCode::OK);
        assert_eq!(g.headers()["grpc-status"], "8");
        assert_eq!(g.headers()["content-type"], "application/grpc");
        assert_eq!(g.headers()["weft-error"], "rate-limited; limit=shop/web");
    }
}
