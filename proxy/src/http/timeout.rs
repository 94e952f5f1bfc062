//! Timeout layer: a request (or one attempt) that takes longer than its
//! deadline is answered with 504 (`weft-error: timeout`) right then.

use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::{Layer, Service};

use super::{Body, BoxFuture, ProxyError};

#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    /// None: no deadline (Gateway API's default for an absent field).
    timeout: Option<Duration>,
}

impl TimeoutLayer {
    pub fn new(timeout: Option<Duration>) -> Self {
        TimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S, E> Service<Request<Body>> for Timeout<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = E>,
    S::Future: Send + 'static,
    E: From<ProxyError> + Send + 'static,
{
    type Response = Response<Body>;
    type Error = E;
    type Future = BoxFuture<Result<Response<Body>, E>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // Boxed before the async block: works around rustc's "Send is not
        // general enough" with associated futures.
        let fut: BoxFuture<Result<Response<Body>, E>> = Box::pin(self.inner.call(req));
        let Some(t) = self.timeout else {
            return fut;
        };
        Box::pin(async move {
            tokio::time::timeout(t, fut)
                .await
                .unwrap_or_else(|_| Err(ProxyError::Timeout(t).into()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn slow(
        delay: Duration,
    ) -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = ProxyError,
        Future = BoxFuture<Result<Response<Body>, ProxyError>>,
    > + Clone {
        tower::service_fn(
            move |_req: Request<Body>| -> BoxFuture<Result<Response<Body>, ProxyError>> {
                Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    Ok(Response::new(super::super::full("done")))
                })
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn answers_at_the_deadline() {
        let svc =
            TimeoutLayer::new(Some(Duration::from_millis(300))).layer(slow(Duration::from_secs(2)));
        let start = tokio::time::Instant::now();
        let err = svc
            .oneshot(Request::new(super::super::full("")))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Timeout(_)));
        assert_eq!(err.reason(), "timeout");
        assert_eq!(err.status(), http::StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn no_deadline_means_none() {
        let svc = TimeoutLayer::new(None).layer(slow(Duration::from_secs(60)));
        assert!(
            svc.oneshot(Request::new(super::super::full("")))
                .await
                .is_ok()
        );
    }
}
