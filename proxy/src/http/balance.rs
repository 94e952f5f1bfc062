//! Balance layer: one request attempt goes to one of the Service's
//! endpoints, chosen by [`crate::balance`] among those not ejected (and not
//! the previous attempt's, named by [`Avoid`]). The endpoint travels down in
//! the request's extensions and comes back up as [`Served`], on a failure
//! too (a per-try timeout, below this layer, included), so that a retry
//! goes elsewhere; its latency feeds the peak-EWMA, an attempt cut short
//! counting as slow as it was.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::{Body, BoxFuture, Failed, ProxyError, Served};
use crate::balance::Endpoint;
use crate::discovery::ServicePort;

/// The endpoint the previous attempt went to, put in the next attempt's
/// request by the retry layer.
#[derive(Clone, Copy, Debug)]
pub struct Avoid(pub SocketAddr);

/// How often a request waiting for an endpoint looks again.
const WAIT_STEP: std::time::Duration = std::time::Duration::from_millis(10);

#[derive(Clone, Debug)]
pub struct BalanceLayer {
    service: Arc<ServicePort>,
}

impl BalanceLayer {
    pub fn new(service: Arc<ServicePort>) -> Self {
        BalanceLayer { service }
    }
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, inner: S) -> Balance<S> {
        Balance {
            inner,
            service: self.service.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Balance<S> {
    inner: S,
    service: Arc<ServicePort>,
}

/// Feeds an attempt's latency to its endpoint when it ends, however it ends.
struct Latency {
    endpoint: Arc<Endpoint>,
    started: Instant,
}

impl Drop for Latency {
    fn drop(&mut self) {
        self.endpoint.observe(self.started.elapsed());
    }
}

impl<S> Service<Request<Body>> for Balance<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Failed> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Failed;
    type Future = BoxFuture<Result<Response<Body>, Failed>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let (service, inner) = (self.service.clone(), self.inner.clone());
        // Boxed outside the async block: works around rustc's "Send is not
        // general enough" with associated futures.
        let send = move |req: Request<Body>| -> BoxFuture<Result<Response<Body>, Failed>> {
            Box::pin(inner.oneshot(req))
        };
        Box::pin(async move {
            let avoid = req.extensions().get::<Avoid>().map(|a| a.0);
            let endpoint = pick(&service, avoid).await?;
            let served = Served {
                endpoint: endpoint.addr,
                identity: endpoint.identity.clone(),
            };
            let _in_flight = endpoint.track();
            let _latency = Latency {
                endpoint: endpoint.clone(),
                started: Instant::now(),
            };
            req.extensions_mut().insert(endpoint);
            match send(req).await {
                Ok(mut res) => {
                    res.extensions_mut().insert(served);
                    Ok(res)
                }
                Err(mut failed) => {
                    failed.served = Some(Box::new(served));
                    Err(failed)
                }
            }
        })
    }
}

/// An endpoint now; or, with a queue timeout, a request that finds none
/// ready waits (at most that long, and only while the pending cap allows)
/// for an ejection to end.
async fn pick(service: &ServicePort, avoid: Option<SocketAddr>) -> Result<Arc<Endpoint>, Failed> {
    let why = match service.pick_request(avoid) {
        Ok(e) => return Ok(e),
        Err(why) => why,
    };
    let wait = service.policy.queue_timeout;
    if wait.is_zero() {
        return Err(ProxyError::unpicked(&service.name, why).into());
    }
    let _pending = service
        .policy
        .limits
        .pending()
        .map_err(|_| Failed::from(ProxyError::Overloaded))?;
    let deadline = Instant::now() + wait;
    loop {
        tokio::time::sleep(WAIT_STEP).await;
        match service.pick_request(avoid) {
            Ok(e) => return Ok(e),
            Err(why) if Instant::now() >= deadline => {
                return Err(ProxyError::unpicked(&service.name, why).into());
            }
            Err(_) => {}
        }
    }
}
