//! Retry layer: a failed attempt is tried again — on the configured status
//! codes (and gRPC codes), on connect failures, and on a reset before any
//! response byte (idempotent methods only, unless the policy opts in) — with
//! exponential backoff and full jitter, on another endpoint when there is
//! one, and only while the Service's retry budget allows: retries may add a
//! share of recent requests plus a small floor per second, so a failing
//! Service never sees a retry storm. The first attempt streams its body
//! while a bounded copy is kept ([`ReplayBody`]); a request whose body
//! outgrew the copy is not tried again.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response};
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service, ServiceExt};

use super::balance::Avoid;
use super::replay::ReplayBody;
use super::{Attempts, Body, BoxFuture, Failed, ProxyError, Served};
use crate::policy::Retry as Conditions;

/// Bodies up to this size are kept for replay.
pub const DEFAULT_MAX_REPLAY: usize = 64 * 1024;

/// What is retried, how often, and within what budget.
#[derive(Debug)]
pub struct RetryPolicy {
    pub conditions: Conditions,
    pub budget: Arc<TpsBudget>,
    pub max_replay: usize,
    /// Counts retries, by whether the budget allowed them.
    pub on_retry: Option<OnRetry>,
}

/// Called for each retry wanted, with why and whether the budget allowed it.
#[derive(Clone)]
pub struct OnRetry(pub Arc<dyn Fn(&'static str, bool) + Send + Sync>);

impl std::fmt::Debug for OnRetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnRetry")
    }
}

#[derive(Clone, Debug)]
pub struct RetryLayer {
    policy: Option<Arc<RetryPolicy>>,
}

impl RetryLayer {
    /// None: requests go through once.
    pub fn new(policy: Option<Arc<RetryPolicy>>) -> Self {
        RetryLayer { policy }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;

    fn layer(&self, inner: S) -> RetryService<S> {
        RetryService {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RetryService<S> {
    inner: S,
    policy: Option<Arc<RetryPolicy>>,
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl RetryPolicy {
    /// Whether this outcome of an attempt should be tried again, and why:
    /// `status`, `grpc-status`, `connect`, `refused-stream`, `reset` or
    /// `timeout` (a metric label).
    fn wants_retry(
        &self,
        method: &Method,
        res: &Result<Response<Body>, Failed>,
    ) -> Option<&'static str> {
        let c = &self.conditions;
        let may_rerun = idempotent(method) || c.non_idempotent;
        let (why, yes) = match res {
            Ok(r) => {
                // The peer sidecar's own answer when it could not reach its
                // app: a reset or a refused connection over there.
                let peer = super::headers::error_of(r.headers()).and_then(|v| v.split(';').next());
                match peer {
                    Some("connect-refused" | "connect-failed" | "connect-timeout") => {
                        ("connect", c.connect_failure)
                    }
                    Some("upstream-reset") => ("reset", c.reset && may_rerun),
                    _ if c.codes.contains(&r.status().as_u16()) => ("status", true),
                    _ => (
                        "grpc-status",
                        grpc_status(r.headers()).is_some_and(|g| c.grpc_codes.contains(&g)),
                    ),
                }
            }
            Err(f) => match &f.error {
                e if e.never_sent() => ("connect", c.connect_failure),
                e @ (ProxyError::Upstream(_) | ProxyError::Client(_)) if refused(e) => {
                    ("refused-stream", c.refused_stream)
                }
                ProxyError::Upstream(_) | ProxyError::Client(_) => ("reset", c.reset && may_rerun),
                // A per-try timeout: the request may have run; retry what may run twice.
                ProxyError::Timeout(_) => ("timeout", may_rerun),
                _ => ("", false),
            },
        };
        yes.then_some(why)
    }

    /// Full jitter over an exponential backoff.
    fn backoff(&self, retry: u32) -> Duration {
        let cap = self.conditions.backoff.saturating_mul(1 << retry.min(10));
        cap.mul_f64(rand::random::<f64>())
    }
}

/// Whether the error is an HTTP/2 REFUSED_STREAM: the server did not start
/// on the request, so any method may be retried.
fn refused(e: &ProxyError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.to_string().contains("refused stream") {
            return true;
        }
        source = s.source();
    }
    false
}

/// A trailers-only gRPC answer carries its status in the headers.
fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The endpoint an attempt went to, from its answer or its failure.
fn served(res: &Result<Response<Body>, Failed>) -> Option<std::net::SocketAddr> {
    match res {
        Ok(r) => r.extensions().get::<Served>().map(|s| s.endpoint),
        Err(f) => f.served.as_ref().map(|s| s.endpoint),
    }
}

/// Marks the final outcome with the number of attempts.
fn counted(res: Result<Response<Body>, Failed>, attempts: u32) -> Result<Response<Body>, Failed> {
    match res {
        Ok(mut r) => {
            r.extensions_mut().insert(Attempts(attempts));
            Ok(r)
        }
        Err(mut f) => {
            f.attempts = attempts;
            Err(f)
        }
    }
}

impl<S> Service<Request<Body>> for RetryService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Failed> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Failed;
    type Future = BoxFuture<Result<Response<Body>, Failed>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(policy) = self.policy.clone() else {
            return Box::pin(self.inner.call(req));
        };
        let inner = self.inner.clone();
        // Each attempt's future is boxed outside the async block below: works
        // around rustc's "Send is not general enough" with associated futures.
        let send = move |req: Request<Body>| -> BoxFuture<Result<Response<Body>, Failed>> {
            Box::pin(inner.clone().oneshot(req))
        };
        Box::pin(async move {
            policy.budget.deposit();
            let (parts, body) = req.into_parts();
            // Never sent itself: each attempt's body is a replay of it.
            let root = ReplayBody::new(body, policy.max_replay);
            let mut attempt = 1;
            let mut avoid = None;
            loop {
                let Some(body) = root.try_replay() else {
                    return Err(ProxyError::Internal("request body lost").into());
                };
                let mut req = Request::new(super::boxed(body));
                *req.method_mut() = parts.method.clone();
                *req.uri_mut() = parts.uri.clone();
                *req.version_mut() = parts.version;
                *req.headers_mut() = parts.headers.clone();
                *req.extensions_mut() = parts.extensions.clone();
                if let Some(addr) = avoid {
                    req.extensions_mut().insert(Avoid(addr));
                }
                let res = send(req).await;
                let why = match policy.wants_retry(&parts.method, &res) {
                    // Too large a body to have kept: the answer stands.
                    Some(why) if attempt < policy.conditions.attempts && root.can_replay() => why,
                    _ => return counted(res, attempt),
                };
                let allowed = policy.budget.withdraw();
                if let Some(count) = &policy.on_retry {
                    (count.0)(why, allowed);
                }
                if !allowed {
                    // A failed attempt's own answer goes back as it is.
                    let res = res.map_err(|mut f| {
                        f.error = ProxyError::BudgetExhausted(Box::new(f.error));
                        f
                    });
                    return counted(res, attempt);
                }
                avoid = served(&res).or(avoid);
                drop(res);
                tokio::time::sleep(policy.backoff(attempt - 1)).await;
                attempt += 1;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::full;
    use http::StatusCode;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy(attempts: u32, budget: TpsBudget) -> Arc<RetryPolicy> {
        Arc::new(RetryPolicy {
            conditions: Conditions {
                attempts,
                backoff: Duration::from_millis(25),
                codes: vec![503],
                grpc_codes: vec![14],
                connect_failure: true,
                refused_stream: true,
                reset: true,
                non_idempotent: false,
            },
            budget: Arc::new(budget),
            max_replay: DEFAULT_MAX_REPLAY,
            on_retry: None,
        })
    }

    fn generous() -> TpsBudget {
        TpsBudget::new(Duration::from_secs(10), 1000, 10.0)
    }

    #[allow(clippy::type_complexity)]
    /// Fails with `fail` for the first `n` calls, then answers 200 with the
    /// request body.
    fn flaky(
        n: u32,
        fail: fn() -> Result<Response<Body>, ProxyError>,
    ) -> (
        Arc<AtomicU32>,
        impl Service<
            Request<Body>,
            Response = Response<Body>,
            Error = Failed,
            Future = BoxFuture<Result<Response<Body>, Failed>>,
        > + Clone
        + Send
        + 'static,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let svc = tower::service_fn(
            move |req: Request<Body>| -> BoxFuture<Result<Response<Body>, Failed>> {
                let k = c.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    if k < n {
                        return fail().map_err(Failed::from);
                    }
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    Ok(Response::new(full(body)))
                })
            },
        );
        (calls, svc)
    }

    fn unavailable() -> Result<Response<Body>, ProxyError> {
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        Ok(r)
    }

    fn refused() -> Result<Response<Body>, ProxyError> {
        Err(ProxyError::Connect(
            "127.0.0.1:1".parse().unwrap(),
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ))
    }

    fn req(method: Method, body: &'static str) -> Request<Body> {
        let mut r = Request::new(full(body));
        *r.method_mut() = method;
        r
    }

    #[tokio::test(start_paused = true)]
    async fn retries_configured_codes_and_replays_the_body() {
        let (calls, svc) = flaky(2, unavailable);
        let res = RetryLayer::new(Some(policy(3, generous())))
            .layer(svc)
            .oneshot(req(Method::POST, "payload"))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.into_body().collect().await.unwrap().to_bytes(),
            "payload"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_last_attempt_with_its_answer() {
        let (calls, svc) = flaky(10, unavailable);
        let res = RetryLayer::new(Some(policy(3, generous())))
            .layer(svc)
            .oneshot(req(Method::GET, ""))
            .await
            .unwrap();
        assert_eq!(
            (res.status().as_u16(), calls.load(Ordering::SeqCst)),
            (503, 3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn resets_of_posts_are_not_retried_but_refused_connects_are() {
        fn reset() -> Result<Response<Body>, ProxyError> {
            Err(ProxyError::Client(hyper_util_error()))
        }
        let (calls, svc) = flaky(1, reset);
        let res = RetryLayer::new(Some(policy(3, generous())))
            .layer(svc)
            .oneshot(req(Method::POST, "x"))
            .await;
        assert!(res.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a POST was retried after a reset"
        );

        let (calls, svc) = flaky(1, reset);
        let res = RetryLayer::new(Some(policy(3, generous())))
            .layer(svc)
            .oneshot(req(Method::GET, ""))
            .await;
        assert!(res.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        let (calls, svc) = flaky(1, refused);
        let res = RetryLayer::new(Some(policy(3, generous())))
            .layer(svc)
            .oneshot(req(Method::POST, "x"))
            .await;
        assert!(res.is_ok(), "a POST that never connected should be retried");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// A legacy-client error for tests: a request to a closed port.
    fn hyper_util_error() -> hyper_util::client::legacy::Error {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        std::thread::spawn(move || {
            rt.block_on(async {
                let c = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build_http::<Body>();
                c.request(Request::get("http://127.0.0.1:1/").body(full("")).unwrap())
                    .await
                    .unwrap_err()
            })
        })
        .join()
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_retries() {
        // No floor, 20% of requests: after the first few, retries stop.
        let p = policy(5, TpsBudget::new(Duration::from_secs(10), 0, 0.2));
        let (calls, svc) = flaky(u32::MAX, unavailable);
        let layer = RetryLayer::new(Some(p));
        for _ in 0..100 {
            let r = layer.layer(svc.clone()).oneshot(req(Method::GET, "")).await;
            assert!(r.is_ok());
        }
        let total = calls.load(Ordering::SeqCst);
        assert!(total <= 100 + 20 + 2, "{total} attempts for 100 requests");
        assert!(total > 100, "no retry at all");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budgets_floor_comes_back_each_window() {
        // Only the floor: 5 retries per second, over a 1 s window.
        let p = policy(2, TpsBudget::new(Duration::from_secs(1), 5, 0.0));
        let (calls, svc) = flaky(u32::MAX, unavailable);
        let layer = RetryLayer::new(Some(p));
        let burst = || {
            let (layer, svc) = (layer.clone(), svc.clone());
            async move {
                for _ in 0..20 {
                    let _ = layer.layer(svc.clone()).oneshot(req(Method::GET, "")).await;
                }
            }
        };
        burst().await;
        let first = calls.load(Ordering::SeqCst);
        assert!(
            (21..=26).contains(&first),
            "{first} attempts for 20 requests"
        );
        // A window later the floor is there again.
        tokio::time::advance(Duration::from_secs(2)).await;
        burst().await;
        let second = calls.load(Ordering::SeqCst) - first;
        assert!(
            (21..=26).contains(&second),
            "{second} attempts for 20 requests"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_statuses_in_the_headers_are_retried() {
        fn grpc_unavailable() -> Result<Response<Body>, ProxyError> {
            let mut r = Response::new(full(""));
            r.headers_mut()
                .insert("grpc-status", http::HeaderValue::from_static("14"));
            Ok(r)
        }
        let (calls, svc) = flaky(1, grpc_unavailable);
        let res = RetryLayer::new(Some(policy(3, generous())))
            .layer(svc)
            .oneshot(req(Method::POST, "rpc"))
            .await
            .unwrap();
        assert!(res.headers().get("grpc-status").is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peers_reset_answer_counts_as_a_reset() {
        fn peer_reset() -> Result<Response<Body>, ProxyError> {
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r.headers_mut().insert(
                "weft-error",
                http::HeaderValue::from_static("upstream-reset; service=x"),
            );
            Ok(r)
        }
        let (calls, svc) = flaky(1, peer_reset);
        let res = RetryLayer::new(Some(policy(3, generous())))
            .layer(svc.clone())
            .oneshot(req(Method::GET, ""))
            .await
            .unwrap();
        assert_eq!(
            (res.status().as_u16(), calls.load(Ordering::SeqCst)),
            (200, 2)
        );
        let (calls, svc) = flaky(1, peer_reset);
        let res = RetryLayer::new(Some(policy(3, generous())))
            .layer(svc)
            .oneshot(req(Method::POST, ""))
            .await
            .unwrap();
        assert_eq!(
            (res.status().as_u16(), calls.load(Ordering::SeqCst)),
            (502, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn large_bodies_read_by_an_attempt_are_sent_once() {
        // Reads the whole body, then fails.
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                let _ = req.into_body().collect().await;
                unavailable().map_err(Failed::from)
            }
        });
        let big: &'static str = Box::leak("x".repeat(DEFAULT_MAX_REPLAY + 1).into_boxed_str());
        let res = RetryLayer::new(Some(policy(3, generous())))
            .layer(svc)
            .oneshot(req(Method::PUT, big))
            .await
            .unwrap();
        assert_eq!(
            (res.status().as_u16(), calls.load(Ordering::SeqCst)),
            (503, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_body_not_yet_read_is_still_retried() {
        // A refused connection reads nothing: the body can go again.
        let (calls, svc) = flaky(1, refused);
        let big: &'static str = Box::leak("x".repeat(DEFAULT_MAX_REPLAY + 1).into_boxed_str());
        let res = RetryLayer::new(Some(policy(3, generous())))
            .layer(svc)
            .oneshot(req(Method::PUT, big))
            .await
            .unwrap();
        assert_eq!(
            res.into_body().collect().await.unwrap().to_bytes().len(),
            big.len()
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}

#[cfg(test)]
mod streaming {
    use super::*;
    use crate::http::full;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn chunked_bodies_are_streamed_then_replayed() {
        // A body of unknown length, in three chunks.
        let chunks = futures_util::stream::iter(
            ["one ", "two ", "three"]
                .map(|c| Ok::<_, crate::http::BoxError>(hyper::body::Frame::data(Bytes::from(c)))),
        );
        let body = crate::http::boxed(StreamBody::new(chunks));
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let k = c.fetch_add(1, Ordering::SeqCst);
            async move {
                let got = req
                    .into_body()
                    .collect()
                    .await
                    .map_err(|_| Failed::from(ProxyError::Internal("body")))?;
                let got = got.to_bytes();
                assert_eq!(got, "one two three", "attempt {k} got every byte");
                let mut r = Response::new(full(got));
                if k == 0 {
                    *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                }
                Ok::<_, Failed>(r)
            }
        });
        let policy = Arc::new(RetryPolicy {
            conditions: Conditions {
                attempts: 2,
                backoff: Duration::from_millis(1),
                codes: vec![503],
                grpc_codes: vec![],
                connect_failure: true,
                refused_stream: true,
                reset: true,
                non_idempotent: false,
            },
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 1.0)),
            max_replay: DEFAULT_MAX_REPLAY,
            on_retry: None,
        });
        let mut req = Request::new(body);
        *req.method_mut() = Method::POST;
        let res = RetryLayer::new(Some(policy))
            .layer(svc)
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.extensions().get::<Attempts>().map(|a| a.0), Some(2));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
