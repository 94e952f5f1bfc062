//! Multiplexed mTLS HTTP/2 connections to peer sidecars, shared by every
//! request to them whatever protocol the apps speak: handshakes stay rare
//! and requests interleave on a connection.
//!
//! One caller cannot starve the others of a peer: a connection carries at
//! most [`PEER_STREAMS`] requests (the peer's own cap), more connections are
//! opened when those are taken (up to [`PoolLimits::conns_per_peer`]), and
//! past that a bounded number of requests wait a bounded time for a stream;
//! the rest are refused at once (503 `overloaded`). A request holds its
//! stream until its response body is done, so memory follows the load and
//! returns with it.
//!
//! A connection is keyed by the address *and* the identity verified on it:
//! when a pod IP is taken over by another workload, requests expecting the
//! new identity never ride the connection authenticated as the old one.
//! When a peer sends GOAWAY, a body-less request it never processed is sent
//! again on another connection, whatever its method (RFC 9113 section 6.8).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;
use weft_api::SpiffeId;

use super::server::PEER_STREAMS;
use super::{Body, ProxyError, boxed, holding};
use crate::connect::Connector;
use crate::tls::Alpn;

/// How many connections and waiting requests one peer may have.
#[derive(Clone, Debug)]
pub struct PoolLimits {
    /// Requests per connection: the peer's concurrent-stream cap.
    pub streams_per_conn: usize,
    pub conns_per_peer: usize,
    /// Requests that may wait for a stream when every one is taken.
    pub waiting_per_peer: usize,
    /// How long a request may wait for a stream.
    pub wait: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            streams_per_conn: PEER_STREAMS as usize,
            conns_per_peer: 8,
            waiting_per_peer: 1024,
            wait: Duration::from_secs(10),
        }
    }
}

/// One connection to a peer.
#[derive(Debug)]
struct Conn {
    sender: SendRequest<Body>,
    /// Requests on it now.
    streams: AtomicUsize,
    /// Set when it failed or the peer is closing it: no new requests.
    done: AtomicBool,
    last_used: Mutex<Instant>,
    /// Its idle timeout (its Service's, or the proxy's).
    idle: Duration,
}

impl Conn {
    fn usable(&self) -> bool {
        !self.done.load(Ordering::Acquire) && !self.sender.is_closed()
    }
}

/// The connections to one peer (address and identity).
#[derive(Debug, Default)]
struct Peer {
    state: Mutex<PeerState>,
    /// Told when a stream is freed or a connection opens.
    freed: Notify,
}

#[derive(Debug, Default)]
struct PeerState {
    conns: Vec<Arc<Conn>>,
    connecting: bool,
    waiting: usize,
}

/// A stream taken on a connection, given back when dropped.
struct Stream {
    conn: Arc<Conn>,
    peer: Arc<Peer>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.conn.streams.fetch_sub(1, Ordering::AcqRel);
        self.peer.freed.notify_one();
    }
}

/// What to do for a request, decided under the peer's lock.
enum Step {
    Send(Stream),
    Connect,
    Wait,
}

#[derive(Debug)]
pub struct PeerPool {
    connector: Connector,
    idle_timeout: Duration,
    limits: PoolLimits,
    /// Per address, the peers per identity verified there (almost always
    /// one): looked up without copying the identity.
    peers: Mutex<Peers>,
}

type Peers = HashMap<SocketAddr, Vec<(SpiffeId, Arc<Peer>)>>;

impl PeerPool {
    pub fn new(connector: Connector, idle_timeout: Duration) -> Self {
        Self::with_limits(connector, idle_timeout, PoolLimits::default())
    }

    pub fn with_limits(connector: Connector, idle_timeout: Duration, limits: PoolLimits) -> Self {
        PeerPool {
            connector,
            idle_timeout,
            limits,
            peers: Mutex::new(HashMap::new()),
        }
    }

    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Closes idle connections, forever; run it in the background.
    pub async fn reap_idle(self: Arc<Self>) {
        loop {
            tokio::time::sleep((self.idle_timeout / 2).min(Duration::from_secs(1))).await;
            if self.reap(Instant::now()).is_err() {
                return;
            }
        }
    }

    /// Closes the connections idle (or closed) as of `now` and forgets the
    /// peers left with none; returns how many connections went. A
    /// connection still carrying a stream finishes it.
    fn reap(&self, now: Instant) -> Result<usize, ProxyError> {
        let mut peers = self
            .peers
            .lock()
            .map_err(|_| ProxyError::Internal("pool poisoned"))?;
        let mut closed = 0;
        peers.retain(|addr, list| {
            list.retain(|(_, peer)| {
                let Ok(mut st) = peer.state.lock() else {
                    return false;
                };
                st.conns.retain(|c| {
                    let busy = c.streams.load(Ordering::Acquire) > 0;
                    let idle_since = c.last_used.lock().map_or(now, |t| *t);
                    let keep =
                        c.usable() && (busy || now.saturating_duration_since(idle_since) < c.idle);
                    if !keep && !busy {
                        closed += 1;
                        debug!(%addr, "closed an idle peer connection");
                    }
                    keep || busy
                });
                !st.conns.is_empty() || st.connecting || st.waiting > 0
            });
            !list.is_empty()
        });
        Ok(closed)
    }

    fn peer(&self, addr: SocketAddr, identity: &SpiffeId) -> Result<Arc<Peer>, ProxyError> {
        let mut peers = self
            .peers
            .lock()
            .map_err(|_| ProxyError::Internal("pool poisoned"))?;
        let list = peers.entry(addr).or_default();
        Ok(match list.iter().find(|(id, _)| id == identity) {
            Some((_, p)) => p.clone(),
            None => {
                let p = Arc::new(Peer::default());
                list.push((identity.clone(), p.clone()));
                p
            }
        })
    }

    /// Takes a stream on a connection with room, or says what to do.
    fn step(&self, peer: &Arc<Peer>, st: &mut PeerState) -> Step {
        st.conns
            .retain(|c| c.usable() || c.streams.load(Ordering::Acquire) > 0);
        // The oldest connection with room: load stays on few connections,
        // and the rest go idle and are reaped.
        if let Some(c) = st.conns.iter().find(|c| {
            c.usable() && c.streams.load(Ordering::Acquire) < self.limits.streams_per_conn
        }) {
            c.streams.fetch_add(1, Ordering::AcqRel);
            if let Ok(mut t) = c.last_used.lock() {
                *t = Instant::now();
            }
            return Step::Send(Stream {
                conn: c.clone(),
                peer: peer.clone(),
            });
        }
        let open = st.conns.iter().filter(|c| c.usable()).count();
        if !st.connecting && open < self.limits.conns_per_peer {
            st.connecting = true;
            return Step::Connect;
        }
        Step::Wait
    }

    /// A stream to the peer: on a connection with room, a new connection,
    /// or after waiting for one; refused when too many already wait.
    async fn stream(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        idle: Option<Duration>,
    ) -> Result<Stream, ProxyError> {
        let peer = self.peer(addr, identity)?;
        let deadline = Instant::now() + self.limits.wait;
        let mut waited = false;
        loop {
            let notified = peer.freed.notified();
            tokio::pin!(notified);
            let step = {
                let mut st = peer
                    .state
                    .lock()
                    .map_err(|_| ProxyError::Internal("pool poisoned"))?;
                if waited {
                    st.waiting -= 1;
                    waited = false;
                }
                let step = self.step(&peer, &mut st);
                if let Step::Wait = step {
                    if st.waiting >= self.limits.waiting_per_peer {
                        return Err(ProxyError::Overloaded);
                    }
                    st.waiting += 1;
                    waited = true;
                    // Registered before the lock goes: no wake-up is lost.
                    notified.as_mut().enable();
                }
                step
            };
            match step {
                Step::Send(s) => return Ok(s),
                Step::Connect => {
                    let conn = self.connect(addr, identity, idle).await;
                    let mut st = peer
                        .state
                        .lock()
                        .map_err(|_| ProxyError::Internal("pool poisoned"))?;
                    st.connecting = false;
                    peer.freed.notify_waiters();
                    let conn = Arc::new(conn?);
                    conn.streams.fetch_add(1, Ordering::AcqRel);
                    st.conns.push(conn.clone());
                    return Ok(Stream {
                        conn,
                        peer: peer.clone(),
                    });
                }
                Step::Wait => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        if let Ok(mut st) = peer.state.lock() {
                            st.waiting -= 1;
                        }
                        return Err(ProxyError::Overloaded);
                    }
                }
            }
        }
    }

    /// Sends `req` to the sidecar at `addr`, which must be `identity`. A new
    /// connection closes after `idle` unused (default: the proxy's).
    pub async fn send(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        req: Request<Body>,
        idle: Option<Duration>,
    ) -> Result<Response<Body>, ProxyError> {
        // A request without a body can be sent again as it was.
        let again = hyper::body::Body::is_end_stream(req.body()).then(|| {
            let mut r = Request::new(super::full(bytes::Bytes::new()));
            *r.method_mut() = req.method().clone();
            *r.uri_mut() = req.uri().clone();
            *r.version_mut() = req.version();
            *r.headers_mut() = req.headers().clone();
            r
        });
        match self.send_once(addr, identity, req, idle).await {
            Err(e) if again.is_some() && unprocessed(&e) => {
                debug!(%addr, error = %e, "the peer did not process the request; sending it again");
                let Some(req) = again else {
                    return Err(e);
                };
                self.send_once(addr, identity, req, idle).await
            }
            res => res,
        }
    }

    async fn send_once(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        req: Request<Body>,
        idle: Option<Duration>,
    ) -> Result<Response<Body>, ProxyError> {
        let stream = self.stream(addr, identity, idle).await?;
        let mut sender = stream.conn.sender.clone();
        let sent = async {
            sender.ready().await?;
            sender.send_request(req).await
        }
        .await;
        match sent {
            Ok(res) => Ok(res.map(|b| holding(boxed(b), stream))),
            Err(e) => {
                let e = ProxyError::Upstream(e);
                if unprocessed(&e) || !stream.conn.usable() {
                    // The peer is closing it: nothing new goes there.
                    stream.conn.done.store(true, Ordering::Release);
                }
                Err(e)
            }
        }
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        idle: Option<Duration>,
    ) -> Result<Conn, ProxyError> {
        let tls = self.connector.mtls(addr, identity, Alpn::H2).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(ProxyError::Upstream)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %e, "peer connection ended");
            }
        });
        debug!(%addr, %identity, "new mTLS HTTP/2 connection to a peer");
        Ok(Conn {
            sender,
            streams: AtomicUsize::new(0),
            done: AtomicBool::new(false),
            last_used: Mutex::new(Instant::now()),
            idle: idle.unwrap_or(self.idle_timeout),
        })
    }
}

/// Whether the peer certainly did not process the request: it refused the
/// stream, or said in GOAWAY it would not process it (a graceful GOAWAY:
/// NO_ERROR; after an error GOAWAY a request may have run).
pub fn unprocessed(e: &ProxyError) -> bool {
    let ProxyError::Upstream(e) = e else {
        return false;
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                    || (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR)));
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::TlsMetrics;
    use crate::test_pki::Pki;
    use crate::tls::{OutboundTls, TlsFailure};
    use http_body_util::BodyExt;
    use hyper::body::Incoming;

    /// An h2 server over mTLS as `id` at `addr` (port 0: any) answering with
    /// its own identity; returns its address and the task serving it.
    async fn peer(
        pki: &Pki,
        id: &str,
        addr: SocketAddr,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let identity = pki.identity(id);
        let cfg = weft_api::tls::server_config(
            identity.cert.clone(),
            identity.anchors.clone(),
            "cluster.local",
            true,
            &[weft_api::tls::ALPN_H2],
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener = socket.listen(16).unwrap();
        let local = listener.local_addr().unwrap();
        let name = id.to_string();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, name) = (acceptor.clone(), name.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let name = name.clone();
                        async move {
                            if req.uri().path() == "/hold" {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                            Ok::<_, std::convert::Infallible>(Response::new(super::super::full(
                                name,
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(4)
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        (local, task)
    }

    /// A client sidecar's connector, as `client`.
    fn connector(pki: &Pki) -> Connector {
        let tls = Arc::new(OutboundTls::new(
            pki.identity("spiffe://cluster.local/ns/a/sa/client"),
        ));
        Connector::new(Duration::from_secs(2), Some(tls), TlsMetrics::default())
    }

    fn pool(pki: &Pki) -> PeerPool {
        PeerPool::new(connector(pki), Duration::from_secs(60))
    }

    fn get() -> Request<Body> {
        Request::get("http://peer/")
            .body(super::super::full(""))
            .unwrap()
    }

    #[tokio::test]
    async fn a_reused_pod_ip_never_gets_a_request_over_the_old_identitys_connection() {
        let pki = Pki::new();
        let (old_id, new_id): (SpiffeId, SpiffeId) = (
            "spiffe://cluster.local/ns/a/sa/old".parse().unwrap(),
            "spiffe://cluster.local/ns/a/sa/new".parse().unwrap(),
        );
        let (addr, old) = peer(&pki, &old_id.to_string(), "127.0.0.1:0".parse().unwrap()).await;
        let pool = pool(&pki);
        let res = pool.send(addr, &old_id, get(), None).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, old_id.to_string());

        // The old workload still holds the address (its pooled connection is
        // open): a request expecting the new one must not go over it.
        let err = pool.send(addr, &new_id, get(), None).await.unwrap_err();
        assert!(
            matches!(err, ProxyError::Tls(_, TlsFailure::IdentityMismatch, _)),
            "{err}"
        );

        // The new workload takes the address over.
        old.abort();
        let _ = old.await;
        let (_, _new) = peer(&pki, &new_id.to_string(), addr).await;
        let res = pool.send(addr, &new_id, get(), None).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, new_id.to_string());
    }

    fn small_pool(pki: &Pki) -> PeerPool {
        PeerPool::with_limits(
            connector(pki),
            Duration::from_secs(60),
            PoolLimits {
                streams_per_conn: 4,
                conns_per_peer: 2,
                waiting_per_peer: 2,
                wait: Duration::from_millis(300),
            },
        )
    }

    fn hold() -> Request<Body> {
        Request::get("http://peer/hold")
            .body(super::super::full(""))
            .unwrap()
    }

    #[tokio::test]
    async fn held_streams_open_more_connections_then_waiting_is_bounded() {
        let pki = Pki::new();
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/server".parse().unwrap();
        let (addr, _server) = peer(&pki, &id.to_string(), "127.0.0.1:0".parse().unwrap()).await;
        let pool = Arc::new(small_pool(&pki));
        // One caller holds 7 of the 8 streams two connections give.
        let mut held = Vec::new();
        for _ in 0..7 {
            let (pool, id) = (pool.clone(), id.clone());
            held.push(tokio::spawn(async move {
                pool.send(addr, &id, hold(), None).await
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Another caller still gets through, on the second connection.
        let res = pool.send(addr, &id, get(), None).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, id.to_string());
        let peer = pool.peer(addr, &id).unwrap();
        assert_eq!(peer.state.lock().unwrap().conns.len(), 2);
        // Every stream taken: two may wait (and give up), the rest are
        // refused at once.
        let _eighth = tokio::spawn({
            let (pool, id) = (pool.clone(), id.clone());
            async move { pool.send(addr, &id, hold(), None).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let (pool, id) = (pool.clone(), id.clone());
                tokio::spawn(async move { pool.send(addr, &id, get(), None).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = pool.send(addr, &id, get(), None).await.unwrap_err();
        assert!(matches!(refused, ProxyError::Overloaded), "{refused}");
        for w in waiting {
            let e = w.await.unwrap().unwrap_err();
            assert!(matches!(e, ProxyError::Overloaded), "{e}");
        }
        // A stream given back is taken by the next request.
        held.pop().unwrap().abort();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let res = pool.send(addr, &id, get(), None).await.unwrap();
        assert_eq!(res.status(), 200);
    }

    #[tokio::test]
    async fn idle_connections_are_reaped() {
        let pki = Pki::new();
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/server".parse().unwrap();
        let (addr, _server) = peer(&pki, &id.to_string(), "127.0.0.1:0".parse().unwrap()).await;
        let pool = pool(&pki);
        let idle = Duration::from_secs(5);
        pool.send(addr, &id, get(), Some(idle)).await.unwrap();
        let now = Instant::now();
        assert_eq!(pool.reap(now).unwrap(), 0, "a connection just used stays");
        assert_eq!(pool.reap(now + idle).unwrap(), 1, "an idle one goes");
        assert!(pool.peers.lock().unwrap().is_empty());
    }
}
