//! The innermost layer: one request attempt to one of a Service's endpoints,
//! chosen by latency among those not ejected (and not the previous
//! attempt's), with the outcome fed back to the latency estimate and to
//! outlier detection (circuit breaking).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use tower::Service;
use tracing::info;

use super::outbound::Sender;
use super::retry::LastEndpoint;
use super::{Body, ProxyError, boxed};
use crate::discovery::{Endpoint, ServicePort};
use crate::telemetry::RetryMetrics;

#[derive(Clone, Debug)]
pub struct Endpoints {
    service: Arc<ServicePort>,
    sender: Arc<Sender>,
    metrics: RetryMetrics,
}

impl Endpoints {
    pub fn new(service: Arc<ServicePort>, sender: Arc<Sender>, metrics: RetryMetrics) -> Self {
        Endpoints {
            service,
            sender,
            metrics,
        }
    }
}

/// Records an attempt as failed unless it completes: an attempt dropped by
/// a timeout counts against its endpoint.
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
        let cfg = self.service.policy.outlier();
        // Check the cap and eject as one step.
        let _decide = (!success).then(|| self.service.policy.eject_lock.lock());
        let may_eject = self.service.may_eject(cfg.max_ejection_percent);
        if self.endpoint.record(success, &cfg, may_eject) {
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

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<Request<Body>> for Endpoints {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response<Body>, ProxyError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (service, sender, metrics) = (
            self.service.clone(),
            self.sender.clone(),
            self.metrics.clone(),
        );
        Box::pin(async move {
            let last = req.extensions().get::<LastEndpoint>().cloned();
            let avoid = last.as_ref().and_then(LastEndpoint::get);
            let endpoint = match service.pick_request(avoid) {
                Ok(e) => e,
                Err(e @ (ProxyError::NoEndpoints(_) | ProxyError::CircuitOpen)) => {
                    wait_for_endpoint(&service, avoid, e).await?
                }
                Err(e) => return Err(e),
            };
            if let Some(l) = &last {
                l.set(endpoint.addr);
            }
            if let Some(p) = req.extensions().get::<super::PeerSlot>() {
                p.attempt(endpoint.addr, endpoint.identity.as_ref());
            }
            let _in_flight = endpoint.track();
            let outcome = Outcome {
                endpoint: endpoint.clone(),
                service,
                metrics,
                done: false,
            };
            let started = Instant::now();
            let res = sender
                .send(
                    endpoint.addr,
                    endpoint.identity.as_ref(),
                    req,
                    outcome.service.policy.idle_timeout(),
                )
                .await;
            endpoint.observe(started.elapsed());
            outcome.finish(matches!(&res, Ok(r) if !r.status().is_server_error()));
            res.map(|r| r.map(boxed))
        })
    }
}

/// With a queue timeout, a request that finds no endpoint ready waits (at
/// most that long, and only while the pending cap allows) for an ejection to
/// end; otherwise it fails fast with `err`.
async fn wait_for_endpoint(
    service: &ServicePort,
    avoid: Option<std::net::SocketAddr>,
    err: ProxyError,
) -> Result<Arc<Endpoint>, ProxyError> {
    let wait = service.policy.queue_timeout();
    if wait.is_zero() {
        return Err(err);
    }
    let _pending = match &service.policy.pending {
        Some(s) => Some(
            s.clone()
                .try_acquire_owned()
                .map_err(|_| ProxyError::Overloaded)?,
        ),
        None => None,
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        match service.pick_request(avoid) {
            Ok(e) => return Ok(e),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => {}
        }
    }
}
