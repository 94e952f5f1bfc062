//! Serving a client's HTTP connection: the one place hyper server
//! connections are built, so every connection of either listener gets the
//! same limits and deadlines ("Limits and defences" in the README).
//!
//! - [`Deadlines`] wraps the connection's IO: an HTTP/1 request head must
//!   arrive within the header-read timeout, and a connection with nothing in
//!   flight is closed (gracefully: HTTP/2 sends GOAWAY) after the idle
//!   timeout.
//! - [`Guard`] sits below the observe layer: it refuses a request whose URI
//!   or header list is over the limit before anything is forwarded (414,
//!   431, the same limits the peer's sidecar applies, so an over-limit
//!   request never reaches the shared peer connection), gives the request
//!   body an idle timeout, and counts what is in flight for [`Deadlines`].
//! - HTTP/2 connections get keep-alive PINGs, and the reset and control
//!   frame budgets of [`super::frames`]; connections from peer sidecars,
//!   which relay many callers' cancellations, get reset budgets sized for
//!   that ([`Client::Peer`]).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::{HeaderMap, Request, Response, StatusCode, header};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::frames::{FrameBudget, FrameGuard};
use super::observe::{Observe, Observer, Scope};
use super::{Body, BoxError, BoxFuture, ProxyError, headers};
use crate::telemetry::{DefenceMetrics, Direction};

/// The limits and deadlines of client connections; see the README's
/// "Limits and defences" for each default and why.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// An HTTP/1 request head must be complete this long after its first
    /// byte (or after the connection was accepted).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// A request body that sends no byte for this long is cut off (408).
    pub body_idle_timeout: Duration,
    /// The largest header list (HTTP/2's measure: names, values and 32
    /// bytes per field) a request may carry.
    pub max_header_bytes: usize,
    /// The longest request target (path and query).
    pub max_uri_bytes: usize,
    /// HTTP/2 keep-alive PINGs: how often, and how long to wait for the ack
    /// before the peer is taken for dead.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Concurrent streams an app's HTTP/2 connection may open.
    pub max_streams: u32,
    /// HTTP/2 frame budgets for connections from apps and non-meshed
    /// clients.
    pub frames: FrameBudget,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_uri_bytes: 16 * 1024,
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(20),
            max_streams: 200,
            frames: FrameBudget::default(),
        }
    }
}

/// Concurrent streams a peer sidecar may open on one connection; the client
/// side's pool opens another connection rather than queue past it.
pub const PEER_STREAMS: u32 = 128;

/// Room for the headers the client's sidecar adds (`weft-orig-proto`, trace
/// context) on top of a request it let through at the limit.
const PEER_HEADER_ALLOWANCE: usize = 16 * 1024;

/// Who is on the other end of a served connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// An app, or a client outside the mesh: every limit applies.
    App,
    /// A peer sidecar over mTLS: it multiplexes many callers, so resets it
    /// relays on their behalf are not an attack; other limits apply.
    Peer,
}

/// Which HTTP the connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// Serves connections with the limits; one per listener side.
#[derive(Debug)]
pub struct Server {
    limits: ServerLimits,
    metrics: DefenceMetrics,
    direction: Direction,
}

impl Server {
    pub fn new(limits: ServerLimits, metrics: DefenceMetrics, direction: Direction) -> Self {
        Server {
            limits,
            metrics,
            direction,
        }
    }

    /// Serves one connection until it closes, its requests going to `inner`
    /// under the observe layer.
    pub async fn serve<I, S>(
        &self,
        io: I,
        proto: Proto,
        client: Client,
        inner: S,
        scope: Scope,
        observer: Arc<Observer>,
    ) -> Result<(), hyper::Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let activity = Arc::new(Activity::default());
        let guard = Guard {
            inner,
            shared: Arc::new(GuardShared {
                activity: activity.clone(),
                limits: self.limits.clone(),
                metrics: self.metrics.clone(),
                direction: self.direction,
            }),
        };
        let svc = TowerToHyperService::new(Observe::new(guard, scope, observer));
        let header = (proto == Proto::Http1).then_some(self.limits.header_read_timeout);
        let io = Deadlines::new(
            io,
            activity.clone(),
            header,
            self.limits.idle_timeout,
            (self.metrics.clone(), self.direction),
        );
        let served = match proto {
            Proto::Http1 => {
                let conn = hyper::server::conn::http1::Builder::new()
                    .max_buf_size(
                        (self.limits.max_header_bytes + self.limits.max_uri_bytes).max(8192),
                    )
                    .serve_connection(TokioIo::new(io), svc)
                    .with_upgrades();
                drive(conn, &activity, |c| c.graceful_shutdown()).await
            }
            Proto::Http2 => {
                let budget = match client {
                    Client::App => self.limits.frames.clone(),
                    Client::Peer => self.limits.frames.for_peers(),
                };
                let io = FrameGuard::new(io, budget, (self.metrics.clone(), self.direction));
                let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                b.timer(TokioTimer::new())
                    .keep_alive_interval(self.limits.keepalive_interval)
                    .keep_alive_timeout(self.limits.keepalive_timeout);
                match client {
                    Client::App => {
                        b.max_concurrent_streams(self.limits.max_streams)
                            .max_header_list_size(header_limit(self.limits.max_header_bytes));
                    }
                    Client::Peer => {
                        // Cancellations relayed for many callers arrive in
                        // bursts; the streams they reset are bounded by the
                        // concurrency cap, and the frame guard still caps
                        // control-frame floods.
                        b.max_concurrent_streams(PEER_STREAMS)
                            .max_pending_accept_reset_streams(PEER_STREAMS as usize * 8)
                            .max_local_error_reset_streams(None)
                            .max_header_list_size(header_limit(
                                self.limits.max_header_bytes + PEER_HEADER_ALLOWANCE,
                            ));
                    }
                }
                let conn = b.serve_connection(TokioIo::new(io), svc);
                drive(conn, &activity, |c| c.graceful_shutdown()).await
            }
        };
        if let Err(e) = &served
            && let Some(reason) = defence_of(e)
        {
            self.metrics.enforced(self.direction, reason);
        }
        served
    }
}

fn header_limit(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// Drives a connection; when it has been idle too long, asks it to close
/// gracefully and drives it to the end.
async fn drive<C>(
    conn: C,
    activity: &Activity,
    graceful: impl FnOnce(Pin<&mut C>),
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        _ = activity.idle.notified() => graceful(conn.as_mut()),
    }
    conn.await
}

/// The limit a connection error shows was enforced, for the metrics.
fn defence_of(e: &hyper::Error) -> Option<&'static str> {
    if e.is_parse_too_large() {
        return Some("headers_too_large");
    }
    if e.is_parse() {
        return Some("malformed_request");
    }
    if e.is_timeout() {
        // Our own deadlines are counted where they fire; this is a
        // keep-alive PING that went unanswered.
        return Some("keepalive_timeout");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>()
            && h2.is_go_away()
            && !h2.is_remote()
            && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
        {
            return Some("h2_flood");
        }
        source = s.source();
    }
    None
}

/// What a connection has in flight, shared by its [`Guard`] (which counts
/// requests) and its [`Deadlines`] (which times the gaps between them).
#[derive(Debug, Default)]
struct Activity {
    in_flight: AtomicUsize,
    /// Bumped each time the last request in flight finishes.
    idle_epoch: AtomicU64,
    /// Wakes the reader when the last request finishes, so the idle
    /// deadline starts even if the connection is waiting to read.
    reader: AtomicWaker,
    /// Told when the idle deadline passed: close gracefully.
    idle: Notify,
    /// The connection was upgraded (101): it is a tunnel now, with no
    /// HTTP deadlines.
    upgraded: AtomicBool,
}

/// One request in flight; dropped when its response body is done.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle_epoch.fetch_add(1, Ordering::AcqRel);
            self.0.reader.wake();
        }
    }
}

/// Where a connection is, as far as its deadlines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// An HTTP/1 request head has begun: the header-read deadline runs.
    Head,
    /// Nothing in flight: the idle deadline runs.
    Idle,
    /// Idle too long and asked to close; closed hard if it does not.
    Closing,
    /// Requests in flight: their bodies and routes have their own deadlines.
    Busy,
}

/// The IO of a served connection, with its connection deadlines.
pub struct Deadlines<I> {
    io: I,
    activity: Arc<Activity>,
    /// HTTP/1 only: HTTP/2 has no request head to wait for.
    header: Option<Duration>,
    idle: Duration,
    phase: Phase,
    /// The idle epoch last seen: when it moves, a request finished.
    epoch: u64,
    sleep: Pin<Box<Sleep>>,
    metrics: (DefenceMetrics, Direction),
}

impl<I> Deadlines<I> {
    fn new(
        io: I,
        activity: Arc<Activity>,
        header: Option<Duration>,
        idle: Duration,
        metrics: (DefenceMetrics, Direction),
    ) -> Self {
        // A connection is accepted once its first bytes are in (protocol
        // detection saw them): an HTTP/1 head is already on its way.
        let (phase, first) = match header {
            Some(h) => (Phase::Head, h),
            None => (Phase::Idle, idle),
        };
        Deadlines {
            io,
            activity,
            header,
            idle,
            phase,
            epoch: 0,
            sleep: Box::pin(tokio::time::sleep(first)),
            metrics,
        }
    }

    /// Moves to the phase the connection is in now; `got` is whether bytes
    /// just arrived.
    fn advance(&mut self, got: bool) {
        if self.activity.in_flight.load(Ordering::Acquire) > 0 {
            self.phase = Phase::Busy;
            return;
        }
        let epoch = self.activity.idle_epoch.load(Ordering::Acquire);
        if self.phase == Phase::Busy || epoch != self.epoch {
            self.epoch = epoch;
            self.enter(Phase::Idle, self.idle);
        }
        if got
            && self.phase == Phase::Idle
            && let Some(h) = self.header
        {
            self.enter(Phase::Head, h);
        }
    }

    fn enter(&mut self, phase: Phase, after: Duration) {
        self.phase = phase;
        self.sleep.as_mut().reset(Instant::now() + after);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (metrics, direction) = &self.metrics;
        match self.phase {
            Phase::Head => {
                metrics.enforced(*direction, "header_read_timeout");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request head did not arrive in time",
                )))
            }
            Phase::Idle => {
                metrics.enforced(*direction, "idle_timeout");
                self.activity.idle.notify_one();
                // Time to finish what the close races with; then it goes.
                self.enter(Phase::Closing, self.header.unwrap_or(self.idle));
                let _ = self.sleep.as_mut().poll(cx);
                Poll::Pending
            }
            Phase::Closing => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "an idle connection did not close",
            ))),
            Phase::Busy => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Deadlines<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.activity.upgraded.load(Ordering::Relaxed) {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        this.advance(buf.filled().len() > before);
        if res.is_ready() {
            return res;
        }
        if this.phase == Phase::Busy {
            this.activity.reader.register(cx.waker());
            // The last request may have finished meanwhile.
            this.advance(false);
            if this.phase == Phase::Busy {
                return Poll::Pending;
            }
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => this.expired(cx),
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Deadlines<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Per-request limits, and the in-flight count for the connection's
/// deadlines.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    shared: Arc<GuardShared>,
}

struct GuardShared {
    activity: Arc<Activity>,
    limits: ServerLimits,
    metrics: DefenceMetrics,
    direction: Direction,
}

/// The size of a header list as HTTP/2 counts it (RFC 9113 section 6.5.2).
pub fn header_list_size(h: &HeaderMap) -> usize {
    h.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum()
}

impl<S> Guard<S> {
    /// The limit the request is over, if any.
    fn check(&self, req: &Request<Body>) -> Option<ProxyError> {
        let limits = &self.shared.limits;
        let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if target > limits.max_uri_bytes {
            return Some(ProxyError::UriTooLong(limits.max_uri_bytes));
        }
        if header_list_size(req.headers()) > limits.max_header_bytes {
            return Some(ProxyError::HeadersTooLarge(limits.max_header_bytes));
        }
        None
    }
}

/// A HEAD answer: the headers, and no body even where the answer was made
/// with one (the proxy's own, or an HTTP/2 app's that sent one anyway:
/// HTTP/2 forbids it, RFC 9113 section 8.1.1). The length stays what a GET
/// would have had.
fn without_body(res: Response<Body>) -> Response<Body> {
    if hyper::body::Body::is_end_stream(res.body()) {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    if let Some(n) = hyper::body::Body::size_hint(&body).exact()
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, http::HeaderValue::from(n));
    }
    Response::from_parts(parts, super::full(Bytes::new()))
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl<S> Service<Request<Body>> for Guard<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        let grpc = is_grpc(req.headers());
        let head = req.method() == http::Method::HEAD;
        if let Some(e) = self.check(&req) {
            shared.metrics.enforced(shared.direction, e.reason_label());
            let res = if grpc {
                e.grpc_response("", "")
            } else {
                e.response("", "")
            };
            let res = if head { without_body(res) } else { res };
            return Box::pin(std::future::ready(Ok(res)));
        }
        let in_flight = InFlight::start(&shared.activity);
        let fault = Arc::new(OnceLock::new());
        let req = if hyper::body::Body::is_end_stream(req.body()) {
            req
        } else {
            let (timeout, f) = (shared.limits.body_idle_timeout, fault.clone());
            req.map(|b| {
                http_body_util::BodyExt::boxed(IdleBody {
                    inner: b,
                    timeout,
                    last: Instant::now(),
                    sleep: None,
                    fault: f,
                })
            })
        };
        // Boxed before the async block, as in the observe layer (rustc's
        // "Send is not general enough").
        let call: BoxFuture<Result<Response<Body>, Infallible>> = Box::pin(self.inner.call(req));
        Box::pin(async move {
            let Ok(mut res) = call.await;
            if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                shared.activity.upgraded.store(true, Ordering::Relaxed);
            }
            // The request failed because its client's body did: say so,
            // rather than blame the upstream.
            if let Some(f) = fault.get()
                && headers::error_of(res.headers()).is_some()
            {
                let e = match f {
                    BodyFault::Idle(d) => ProxyError::BodyTimeout(*d),
                    BodyFault::Malformed(why) => ProxyError::BadRequest(why.clone()),
                };
                shared.metrics.enforced(shared.direction, e.reason_label());
                res = if grpc {
                    e.grpc_response("", "")
                } else {
                    e.response("", "")
                };
            }
            if head {
                res = without_body(res);
            }
            Ok(res.map(|b| super::holding(b, in_flight)))
        })
    }
}

/// Why a client's request body failed.
#[derive(Debug)]
enum BodyFault {
    Idle(Duration),
    Malformed(String),
}

/// A request body that fails when its client sends nothing for `timeout`,
/// and records why it failed either way.
struct IdleBody {
    inner: Body,
    timeout: Duration,
    last: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    fault: Arc<OnceLock<BodyFault>>,
}

/// The error a request body ends with when its client went quiet.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body data for {0:?}")]
pub struct BodyIdle(Duration);

impl hyper::body::Body for IdleBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                this.last = Instant::now();
                return Poll::Ready(Some(Ok(f)));
            }
            Poll::Ready(Some(Err(e))) => {
                let _ = this.fault.set(BodyFault::Malformed(e.to_string()));
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        let deadline = this.last + this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        match sleep.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                let _ = this.fault.set(BodyFault::Idle(this.timeout));
                Poll::Ready(Some(Err(Box::new(BodyIdle(this.timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn observer() -> Arc<Observer> {
        Arc::new(Observer {
            metrics: crate::telemetry::HttpMetrics::default(),
            access_log: None,
            tracing: None,
        })
    }

    /// Answers with the request body it read.
    #[derive(Clone)]
    struct Echo;

    impl Service<Request<Body>> for Echo {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture<Result<Response<Body>, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: Request<Body>) -> Self::Future {
            Box::pin(async move {
                match req.into_body().collect().await {
                    Ok(b) => Ok(Response::new(super::super::full(b.to_bytes()))),
                    // As the send layer would: the upstream attempt failed.
                    Err(_) => Ok(ProxyError::Internal("upstream").response("", "")),
                }
            })
        }
    }

    fn limits() -> ServerLimits {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(30),
            max_header_bytes: 4096,
            max_uri_bytes: 1024,
            ..ServerLimits::default()
        }
    }

    /// Serves one HTTP/1 connection over an in-memory pipe; returns the
    /// client's end and the metrics.
    fn serve_h1() -> (
        tokio::io::DuplexStream,
        DefenceMetrics,
        tokio::task::JoinHandle<Result<(), hyper::Error>>,
    ) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let metrics = DefenceMetrics::default();
        let s = Server::new(limits(), metrics.clone(), Direction::Outbound);
        let task = tokio::spawn(async move {
            s.serve(
                server,
                Proto::Http1,
                Client::App,
                Echo,
                Scope::Outbound {
                    server: "test".into(),
                },
                observer(),
            )
            .await
        });
        (client, metrics, task)
    }

    async fn read_some(c: &mut tokio::io::DuplexStream) -> String {
        let mut buf = vec![0u8; 8192];
        let n = c.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_trickled_too_slowly_is_cut_off() {
        let (mut c, metrics, task) = serve_h1();
        c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            c.write_all(b"x-a: b\r\n").await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest).await;
        assert!(task.await.unwrap().is_err());
        assert_eq!(metrics.count(Direction::Outbound, "header_read_timeout"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
        let (mut c, metrics, task) = serve_h1();
        c.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(read_some(&mut c).await.starts_with("HTTP/1.1 200"));
        // Well past the header-read timeout, inside the idle one: still open.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!task.is_finished());
        c.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(read_some(&mut c).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_secs(61)).await;
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        task.await.unwrap().unwrap();
        assert_eq!(metrics.count(Direction::Outbound, "idle_timeout"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_request_body_gets_408() {
        let (mut c, metrics, _task) = serve_h1();
        c.write_all(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nabc")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(31)).await;
        let got = read_some(&mut c).await;
        assert!(got.starts_with("HTTP/1.1 408"), "{got}");
        assert!(got.contains("weft-error: request-body-timeout"), "{got}");
        assert_eq!(metrics.count(Direction::Outbound, "body_idle_timeout"), 1);
    }

    #[tokio::test]
    async fn over_limit_requests_are_refused_before_forwarding() {
        let (mut c, metrics, _task) = serve_h1();
        let big = "a".repeat(5000);
        c.write_all(format!("GET / HTTP/1.1\r\nhost: a\r\nx-big: {big}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let got = read_some(&mut c).await;
        assert!(got.starts_with("HTTP/1.1 431"), "{got}");
        assert!(got.contains("weft-error: headers-too-large"), "{got}");
        let long = "/".repeat(2000);
        c.write_all(format!("GET {long} HTTP/1.1\r\nhost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let got = read_some(&mut c).await;
        assert!(got.starts_with("HTTP/1.1 414"), "{got}");
        // The connection still serves good requests.
        c.write_all(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        let got = read_some(&mut c).await;
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("ok"),
            "{got}"
        );
        assert_eq!(metrics.count(Direction::Outbound, "headers_too_large"), 1);
        assert_eq!(metrics.count(Direction::Outbound, "uri_too_long"), 1);
    }

    #[tokio::test]
    async fn a_malformed_chunked_body_is_a_client_error() {
        let (mut c, _metrics, _task) = serve_h1();
        c.write_all(
            b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
        )
        .await
        .unwrap();
        let got = read_some(&mut c).await;
        assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    }
}
