//! Bulkhead layer: at most N requests to a Service at once; the next fails
//! fast with 503 (`weft-error: overloaded`) instead of queueing without end,
//! so a slow Service cannot take the caller's memory with it.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::{Body, BoxFuture, ProxyError};
use crate::policy::ServicePolicy;

#[derive(Clone, Debug)]
pub struct BulkheadLayer {
    /// Its caps count every request to the Service, whatever the route.
    policy: Arc<ServicePolicy>,
}

impl BulkheadLayer {
    pub fn new(policy: Arc<ServicePolicy>) -> Self {
        BulkheadLayer { policy }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Bulkhead<S> {
        Bulkhead {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Bulkhead<S> {
    inner: S,
    policy: Arc<ServicePolicy>,
}

impl<S, E> Service<Request<Body>> for Bulkhead<S>
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
        let Ok(permit) = self.policy.limits.request() else {
            return Box::pin(async { Err(ProxyError::Overloaded.into()) });
        };
        // Boxed before the async block: works around rustc's "Send is not
        // general enough" with associated futures.
        let fut: BoxFuture<Result<Response<Body>, E>> = Box::pin(self.inner.call(req));
        Box::pin(async move {
            // Held until the response headers are in.
            let _permit = permit;
            fut.await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tower::ServiceExt;
    use weft_api::v1;

    #[tokio::test(start_paused = true)]
    async fn the_request_beyond_the_cap_fails_fast() {
        let inner = tower::service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, ProxyError>(Response::new(super::super::full("ok")))
        });
        let policy = ServicePolicy::new(v1::TrafficPolicy {
            limits: Some(v1::Limits {
                max_concurrent_requests: 2,
                ..Default::default()
            }),
            ..Default::default()
        });
        let svc = BulkheadLayer::new(Arc::new(policy)).layer(inner);
        let calls: Vec<_> = (0..3)
            .map(|_| svc.clone().oneshot(Request::new(super::super::full(""))))
            .collect();
        let mut calls = calls.into_iter();
        let (a, b) = (
            tokio::spawn(calls.next().unwrap()),
            tokio::spawn(calls.next().unwrap()),
        );
        tokio::task::yield_now().await;
        let third = calls.next().unwrap().await;
        assert!(matches!(third, Err(ProxyError::Overloaded)));
        assert!(a.await.unwrap().is_ok() && b.await.unwrap().is_ok());
        assert!(
            svc.oneshot(Request::new(super::super::full("")))
                .await
                .is_ok()
        );
    }
}
