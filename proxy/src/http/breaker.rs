//! Breaker layer: each attempt's outcome is recorded against its endpoint
//! (a 5xx, an error, or an attempt dropped by a timeout is a failure), and
//! after enough failures in a row the endpoint is ejected for a while (see
//! [`crate::breaker`]), within the Service's cap on ejected endpoints.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};
use tracing::info;

use super::{Body, BoxFuture, Failed};
use crate::balance::Endpoint;
use crate::discovery::ServicePort;
use crate::telemetry::RetryMetrics;

#[derive(Clone, Debug)]
pub struct BreakerLayer {
    service: Arc<ServicePort>,
    metrics: RetryMetrics,
}

impl BreakerLayer {
    pub fn new(service: Arc<ServicePort>, metrics: RetryMetrics) -> Self {
        BreakerLayer { service, metrics }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker {
            inner,
            service: self.service.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Breaker<S> {
    inner: S,
    service: Arc<ServicePort>,
    metrics: RetryMetrics,
}

/// Records an attempt as failed unless it completes.
struct Outcome {
    endpoint: Arc<Endpoint>,
    service: Arc<ServicePort>,
    metrics: RetryMetrics,
    done: bool,
}

impl Outcome {
    fn finish(mut self, success: bool) {
        self.done = true;
        self.record(success);
    }

    fn record(&self, success: bool) {
        let cfg = &self.service.policy.outlier;
        // Check the cap and eject as one step.
        let _decide = (!success).then(|| self.service.policy.eject_lock.lock());
        let may_eject = self.service.may_eject(cfg.max_ejection_percent);
        if self.endpoint.record(success, cfg, may_eject) {
            self.metrics.ejected();
            info!(endpoint = %self.endpoint.addr, service = %self.service.name, "endpoint ejected after consecutive failures");
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if !self.done {
            self.record(false);
        }
    }
}

impl<S> Service<Request<Body>> for Breaker<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Failed>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Failed;
    type Future = BoxFuture<Result<Response<Body>, Failed>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let endpoint = req.extensions().get::<Arc<Endpoint>>().cloned();
        // Boxed before the async block: works around rustc's "Send is not
        // general enough" with associated futures.
        let fut: BoxFuture<Result<Response<Body>, Failed>> = Box::pin(self.inner.call(req));
        let Some(endpoint) = endpoint else {
            return fut;
        };
        let outcome = Outcome {
            endpoint,
            service: self.service.clone(),
            metrics: self.metrics.clone(),
            done: false,
        };
        Box::pin(async move {
            let res = fut.await;
            outcome.finish(matches!(&res, Ok(r) if !r.status().is_server_error()));
            res
        })
    }
}
