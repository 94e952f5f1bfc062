//! One multiplexed mTLS HTTP/2 connection per peer endpoint, shared by every
//! request to it, whatever protocol the apps speak: handshakes stay rare and
//! requests interleave on one connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::debug;
use weft_api::SpiffeId;

use super::{Body, ProxyError};
use crate::telemetry::{Direction, TlsMetrics};
use crate::tls::{Alpn, OutboundTls, TlsFailure};

/// A peer connection and when it last carried a request.
#[derive(Debug)]
struct Conn {
    sender: SendRequest<Body>,
    last_used: Instant,
    /// This connection's idle timeout (its Service's, or the proxy's).
    idle: Duration,
}

type Slot = Arc<tokio::sync::Mutex<Option<Conn>>>;

#[derive(Debug)]
pub struct PeerPool {
    tls: Arc<OutboundTls>,
    metrics: TlsMetrics,
    connect_timeout: Duration,
    idle_timeout: Duration,
    conns: Mutex<HashMap<SocketAddr, Slot>>,
}

impl PeerPool {
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub fn new(
        tls: Arc<OutboundTls>,
        metrics: TlsMetrics,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        PeerPool {
            tls,
            metrics,
            connect_timeout,
            idle_timeout,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// Closes connections idle for longer than the idle timeout; run it in
    /// the background. A connection still carrying a stream finishes it.
    pub async fn reap_idle(self: Arc<Self>) {
        loop {
            tokio::time::sleep((self.idle_timeout / 2).min(Duration::from_secs(1))).await;
            let slots: Vec<(SocketAddr, Slot)> = match self.conns.lock() {
                Ok(c) => c.iter().map(|(a, s)| (*a, s.clone())).collect(),
                Err(_) => return,
            };
            for (addr, slot) in slots {
                if let Ok(mut guard) = slot.try_lock()
                    && guard
                        .as_ref()
                        .is_some_and(|c| c.last_used.elapsed() >= c.idle || c.sender.is_closed())
                {
                    *guard = None;
                    debug!(%addr, "closed an idle peer connection");
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
    ) -> Result<Response<Incoming>, ProxyError> {
        let slot = {
            let mut conns = self
                .conns
                .lock()
                .map_err(|_| ProxyError::Internal("pool poisoned"))?;
            conns.entry(addr).or_default().clone()
        };
        let mut sender = {
            // One connection attempt at a time per peer: a burst of requests
            // waits for the first handshake instead of making its own.
            let mut guard = slot.lock().await;
            match guard.as_mut() {
                Some(c) if !c.sender.is_closed() => {
                    c.last_used = Instant::now();
                    c.sender.clone()
                }
                _ => {
                    let sender = self.connect(addr, identity).await?;
                    *guard = Some(Conn {
                        sender: sender.clone(),
                        last_used: Instant::now(),
                        idle: idle.unwrap_or(self.idle_timeout),
                    });
                    sender
                }
            }
        };
        sender.ready().await.map_err(ProxyError::Upstream)?;
        sender.send_request(req).await.map_err(ProxyError::Upstream)
    }

    /// A new mTLS connection to the sidecar at `addr` speaking `alpn`.
    pub async fn dial(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        alpn: Alpn,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProxyError> {
        let tcp = dial_tcp(addr, self.connect_timeout).await?;
        let tls = self
            .tls
            .connect(tcp, addr, identity, alpn)
            .await
            .map_err(|e| {
                let reason = TlsFailure::of(&e);
                self.metrics.failure(Direction::Outbound, reason.as_str());
                ProxyError::Tls(addr, reason, weft_api::tls::describe(&e))
            })?;
        self.metrics.session(Direction::Outbound, identity);
        Ok(tls)
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
    ) -> Result<SendRequest<Body>, ProxyError> {
        let tls = self.dial(addr, identity, Alpn::H2).await?;
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
        Ok(sender)
    }
}

/// A TCP connection with the proxy's connect timeout.
pub async fn dial_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ProxyError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ProxyError::ConnectTimeout(addr))?
        .map_err(|e| ProxyError::Connect(addr, e))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}
