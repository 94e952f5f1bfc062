//! The L7 data path: HTTP/1.1 and HTTP/2 (gRPC too) proxied request by
//! request, routed by HTTPRoute rules, balanced by latency, and carried
//! between sidecars over one multiplexed mTLS HTTP/2 connection per peer.

pub mod access_log;
pub mod authn;
pub mod authz;
pub mod balance;
pub mod breaker;
pub mod bulkhead;
pub mod cors;
pub mod detect;
pub mod fault;
pub mod frames;
pub mod headers;
pub mod inbound;
pub mod mirror;
pub mod observe;
pub mod outbound;
pub mod pool;
pub mod ratelimit;
pub mod replay;
pub mod retry;
pub mod send;
pub mod server;
pub mod stack;
pub mod timeout;
pub mod upgrade;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};

use weft_api::SpiffeId;

use crate::balance::PickError;
use crate::connect::ConnectError;
use crate::tls::TlsFailure;

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// Bodies stream through unbuffered, whatever their source.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn boxed<B>(b: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed()
}

/// Counts a body's data bytes into `counter` as they stream.
pub fn counted(body: Body, counter: prometheus_client::metrics::counter::Counter) -> Body {
    let late = LateCounter::default();
    late.bind(counter);
    late.wrap(body)
}

/// A body that reports its data bytes (and trailers) as they pass, and
/// keeps the inner body's size hint and end-of-stream, so lengths and
/// retry decisions are not lost by counting.
struct Observed<F> {
    inner: Body,
    on_frame: F,
}

impl<F> hyper::body::Body for Observed<F>
where
    F: FnMut(&hyper::body::Frame<Bytes>) + Send + Sync + Unpin + 'static,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let res = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &res {
            (this.on_frame)(frame);
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn observe(
    body: Body,
    on_frame: impl FnMut(&hyper::body::Frame<Bytes>) + Send + Sync + Unpin + 'static,
) -> Body {
    Observed {
        inner: body,
        on_frame,
    }
    .boxed()
}

/// A byte counter whose labels are known only later (a request body starts
/// streaming before routing has named its Service): bytes seen before
/// [`LateCounter::bind`] are kept and added then.
#[derive(Clone, Debug, Default)]
pub struct LateCounter(std::sync::Arc<LateInner>);

#[derive(Debug, Default)]
struct LateInner {
    target: std::sync::OnceLock<prometheus_client::metrics::counter::Counter>,
    pending: std::sync::atomic::AtomicU64,
}

impl LateCounter {
    fn add(&self, n: u64) {
        use std::sync::atomic::Ordering;
        match self.0.target.get() {
            Some(c) => {
                c.inc_by(n);
            }
            None => {
                self.0.pending.fetch_add(n, Ordering::Relaxed);
                // Bound meanwhile: hand over what is pending.
                if let Some(c) = self.0.target.get() {
                    c.inc_by(self.0.pending.swap(0, Ordering::Relaxed));
                }
            }
        }
    }

    pub fn bind(&self, counter: prometheus_client::metrics::counter::Counter) {
        if self.0.target.set(counter.clone()).is_ok() {
            counter.inc_by(self.0.pending.swap(0, std::sync::atomic::Ordering::Relaxed));
        }
    }

    /// Counts a body's data bytes as they stream.
    pub fn wrap(&self, body: Body) -> Body {
        let me = self.clone();
        observe(body, move |f| {
            if let Some(d) = f.data_ref() {
                me.add(d.len() as u64);
            }
        })
    }
}

/// A body that holds `held` until it is dropped (finished, or abandoned):
/// what a request keeps in use lives exactly as long as its response.
pub fn holding<T: Send + Sync + Unpin + 'static>(body: Body, held: T) -> Body {
    struct Holding<T> {
        inner: Body,
        _held: T,
    }
    impl<T: Send + Sync + Unpin + 'static> hyper::body::Body for Holding<T> {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
            std::pin::Pin::new(&mut self.inner).poll_frame(cx)
        }
        fn is_end_stream(&self) -> bool {
            self.inner.is_end_stream()
        }
        fn size_hint(&self) -> hyper::body::SizeHint {
            self.inner.size_hint()
        }
    }
    Holding {
        inner: body,
        _held: held,
    }
    .boxed()
}

/// Calls `on_trailers` with a body's trailers when they pass (gRPC puts its
/// status there).
pub fn watch_trailers(
    body: Body,
    on_trailers: impl Fn(&http::HeaderMap) + Send + Sync + 'static,
) -> Body {
    body.map_frame(move |f| {
        if let Some(t) = f.trailers_ref() {
            on_trailers(t);
        }
        f
    })
    .boxed()
}

/// A boxed, sendable future: what the layers here return.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The endpoint an attempt went to, reported back up in the response's
/// extensions (or in [`Failed`]): the retry layer avoids it next time, and
/// metrics, spans and the access log name it.
#[derive(Clone, Debug)]
pub struct Served {
    pub endpoint: SocketAddr,
    pub identity: Option<SpiffeId>,
}

/// How many attempts a request took, in the response's extensions.
#[derive(Clone, Copy, Debug)]
pub struct Attempts(pub u32);

/// A request the stack could not complete: why, and where its last attempt
/// went, if it got that far.
#[derive(Debug)]
pub struct Failed {
    pub error: ProxyError,
    /// Boxed: failures are rare, and a small error keeps results cheap.
    pub served: Option<Box<Served>>,
    pub attempts: u32,
}

impl From<ProxyError> for Failed {
    fn from(error: ProxyError) -> Self {
        Failed {
            error,
            served: None,
            attempts: 0,
        }
    }
}

impl From<ConnectError> for ProxyError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Timeout { addr, .. } => ProxyError::ConnectTimeout(addr),
            ConnectError::Io { addr, source } => ProxyError::Connect(addr, source),
            ConnectError::Tls {
                addr,
                reason,
                detail,
            } => ProxyError::Tls(addr, reason, detail),
            ConnectError::NoIdentity { .. } => ProxyError::Internal("mTLS without an identity"),
        }
    }
}

impl ProxyError {
    /// Why no endpoint of `service` could take the request.
    pub fn unpicked(service: &str, why: PickError) -> Self {
        match why {
            PickError::NoEndpoints => ProxyError::NoEndpoints(service.to_string()),
            PickError::AllEjected => ProxyError::CircuitOpen,
        }
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    boxed(Full::new(bytes.into()))
}

/// Why the proxy answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("too many requests in flight to this service")]
    Overloaded,
    #[error("every endpoint is ejected after failures")]
    CircuitOpen,
    #[error("retry budget exhausted after: {0}")]
    BudgetExhausted(Box<ProxyError>),
    #[error("no route matches the request")]
    NoRoute,
    #[error("the route has no usable backend")]
    NoBackend,
    #[error("invalid backend: {0}")]
    InvalidBackend(String),
    #[error("invalid route rule: {0}")]
    InvalidRule(String),
    #[error("{0} has no endpoints")]
    NoEndpoints(String),
    #[error("connecting to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("TLS with {0} failed ({1}): {2}")]
    Tls(SocketAddr, TlsFailure, String),
    #[error("upstream: {0}")]
    Upstream(hyper::Error),
    #[error("upstream: {0}")]
    Client(hyper_util::client::legacy::Error),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("the request's header list is over {0} bytes")]
    HeadersTooLarge(usize),
    #[error("the request target is over {0} bytes")]
    UriTooLong(usize),
    #[error("the client sent no request body data for {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("internal: {0}")]
    Internal(&'static str),
    #[error("fault injected by FaultInjection {fault} (not a real failure)")]
    FaultInjected { fault: String, abort: fault::Abort },
}

impl ProxyError {
    /// The `weft-error` reason: one of a documented, closed list.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Timeout(_) => "timeout",
            ProxyError::Overloaded => "overloaded",
            ProxyError::CircuitOpen => "circuit-open",
            ProxyError::BudgetExhausted(_) => "retry-budget-exhausted",
            ProxyError::NoRoute => "no-route",
            ProxyError::NoBackend => "no-backend",
            ProxyError::InvalidBackend(_) => "invalid-backend",
            ProxyError::InvalidRule(_) => "invalid-route",
            ProxyError::NoEndpoints(_) => "no-endpoints",
            ProxyError::ConnectTimeout(_) => "connect-timeout",
            ProxyError::Connect(_, e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                "connect-refused"
            }
            ProxyError::Connect(..) => "connect-failed",
            ProxyError::Tls(_, TlsFailure::IdentityMismatch, _) => "tls-identity-mismatch",
            ProxyError::Tls(..) => "tls-failed",
            ProxyError::Upstream(_) | ProxyError::Client(_) => "upstream-reset",
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::HeadersTooLarge(_) => "headers-too-large",
            ProxyError::UriTooLong(_) => "uri-too-long",
            ProxyError::BodyTimeout(_) => "request-body-timeout",
            ProxyError::Internal(_) => "internal",
            ProxyError::FaultInjected { .. } => "fault-injected",
        }
    }

    /// The `weft_defences_total` reason of a request refused for its own
    /// fault.
    pub fn reason_label(&self) -> &'static str {
        match self {
            ProxyError::HeadersTooLarge(_) => "headers_too_large",
            ProxyError::UriTooLong(_) => "uri_too_long",
            ProxyError::BodyTimeout(_) => "body_idle_timeout",
            ProxyError::BadRequest(_) => "malformed_request",
            ProxyError::Overloaded => "overloaded",
            _ => "other",
        }
    }

    /// Whether the request certainly never reached an app (safe to retry
    /// whatever its method).
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect(..) | ProxyError::ConnectTimeout(_) | ProxyError::Tls(..)
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Overloaded | ProxyError::CircuitOpen | ProxyError::BudgetExhausted(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoBackend
            | ProxyError::InvalidBackend(_)
            | ProxyError::InvalidRule(_)
            | ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::NoEndpoints(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ProxyError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Connect(..)
            | ProxyError::Tls(..)
            | ProxyError::Upstream(_)
            | ProxyError::Client(_) => StatusCode::BAD_GATEWAY,
            ProxyError::FaultInjected { abort, .. } => abort.http,
        }
    }

    /// The gRPC status for this error, for callers speaking gRPC.
    fn grpc_code(&self) -> u32 {
        match self {
            ProxyError::Timeout(_) | ProxyError::ConnectTimeout(_) => 4, // DEADLINE_EXCEEDED
            ProxyError::NoRoute => 12,                                   // UNIMPLEMENTED
            ProxyError::Overloaded => 8,                                 // RESOURCE_EXHAUSTED
            ProxyError::BadRequest(_) | ProxyError::UriTooLong(_) => 3,  // INVALID_ARGUMENT
            ProxyError::HeadersTooLarge(_) => 8,                         // RESOURCE_EXHAUSTED
            ProxyError::BodyTimeout(_) => 4,                             // DEADLINE_EXCEEDED
            ProxyError::Internal(_) | ProxyError::InvalidRule(_) => 13,  // INTERNAL
            ProxyError::FaultInjected { abort, .. } => abort.grpc,
            // GRPCRoute: a backend that cannot be used is UNAVAILABLE.
            _ => 14, // UNAVAILABLE
        }
    }

    /// The answer for a gRPC caller: HTTP 200 with the status in the headers
    /// (a trailers-only response), as gRPC clients expect.
    pub fn grpc_response(&self, route: &str, service: &str) -> Response<Body> {
        let mut r = self.response(route, service);
        *r.status_mut() = StatusCode::OK;
        *r.body_mut() = full(Bytes::new());
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", header::HeaderValue::from(self.grpc_code()));
        if let Ok(v) = header::HeaderValue::from_str(&self.to_string().replace(['\r', '\n'], " ")) {
            h.insert("grpc-message", v);
        }
        r
    }

    /// The response the proxy sends in place of the upstream's, saying why
    /// in `weft-error: <reason>; route=<route>; service=<service>`.
    pub fn response(&self, route: &str, service: &str) -> Response<Body> {
        let mut r = Response::new(full(format!("{self}\n")));
        *r.status_mut() = self.status();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let mut why = self.reason().to_string();
        if !route.is_empty() {
            why.push_str(&format!("; route={route}"));
        }
        if !service.is_empty() {
            why.push_str(&format!("; service={service}"));
        }
        if let Ok(v) = header::HeaderValue::from_str(&why) {
            h.insert(headers::ERROR, v);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counting_keeps_the_size_hint_and_counts_every_byte() {
        use hyper::body::Body as _;
        let c = prometheus_client::metrics::counter::Counter::default();
        let b = counted(full("hello"), c.clone());
        // Lost size hints would turn lengths into chunking and stop retries.
        assert_eq!(b.size_hint().exact(), Some(5));
        let late = LateCounter::default();
        let b2 = late.wrap(b);
        assert_eq!(b2.size_hint().exact(), Some(5));
        let got = b2.collect().await.unwrap().to_bytes();
        assert_eq!(got, "hello");
        let bound = prometheus_client::metrics::counter::Counter::default();
        late.bind(bound.clone());
        assert_eq!((c.get(), bound.get()), (5, 5));
    }

    #[test]
    fn proxy_answers_say_why_and_grpc_callers_get_grpc_statuses() {
        let e = ProxyError::Timeout(std::time::Duration::from_millis(300));
        let r = e.response("default/r", "app.default:80");
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            r.headers()["weft-error"],
            "timeout; route=default/r; service=app.default:80"
        );
        let g = e.grpc_response("", "app.default:80");
        assert_eq!(g.status(), StatusCode::OK);
        assert_eq!(g.headers()["grpc-status"], "4");
        assert_eq!(g.headers()["content-type"], "application/grpc");
        assert_eq!(
            ProxyError::Overloaded.grpc_response("", "").headers()["grpc-status"],
            "8"
        );
        assert_eq!(
            ProxyError::CircuitOpen.grpc_response("", "").headers()["grpc-status"],
            "14"
        );
    }
}
