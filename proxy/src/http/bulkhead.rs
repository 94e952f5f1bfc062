//! Bulkhead layer: at most N requests to a Service at once; the next fails
//! fast with 503 (`weft-error: overloaded`) instead of queueing without end,
//! so a slow Service cannot take the caller's memory with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use super::{Body, ProxyError};

#[derive(Clone, Debug)]
pub struct BulkheadLayer {
    /// None: unlimited.
    permits: Option<Arc<Semaphore>>,
}

impl BulkheadLayer {
    pub fn new(permits: Option<Arc<Semaphore>>) -> Self {
        BulkheadLayer { permits }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Bulkhead<S> {
        Bulkhead {
            inner,
            permits: self.permits.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Bulkhead<S> {
    inner: S,
    permits: Option<Arc<Semaphore>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for Bulkhead<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response<Body>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let permit = match &self.permits {
            None => None,
            Some(s) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return Box::pin(async { Err(ProxyError::Overloaded) }),
            },
        };
        let fut: BoxFuture<Result<Response<Body>, ProxyError>> = Box::pin(self.inner.call(req));
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

    #[tokio::test(start_paused = true)]
    async fn the_request_beyond_the_cap_fails_fast() {
        let inner = tower::service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, ProxyError>(Response::new(super::super::full("ok")))
        });
        let svc = BulkheadLayer::new(Some(Arc::new(Semaphore::new(2)))).layer(inner);
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
        // Capacity comes back once they are done.
        assert!(
            svc.oneshot(Request::new(super::super::full("")))
                .await
                .is_ok()
        );
    }
}
