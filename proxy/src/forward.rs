//! The L4 forwarder both listeners share: accept, decide where the connection
//! was going, terminate or originate mTLS where the mesh says so, connect, and
//! carry bytes both ways.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::discovery::Destination;
use crate::http::detect::{self, Detected};
use crate::http::inbound::HttpInbound;
use crate::http::outbound::{HttpOutbound, Target as HttpTarget};
use crate::shutdown::Shutdown;
use crate::telemetry::metrics::Connection;
use crate::telemetry::{Direction, TcpMetrics, TlsMetrics, TlsStatus};
use crate::tls::{Accepted, Alpn, InboundTls, OutboundTls, TlsFailure};
use crate::transport::{self, Counted, orig_dst::OrigDstError};

/// Endpoints tried for one connection to a Service before giving up.
const CONNECT_ATTEMPTS: u32 = 3;

/// Where an accepted connection should go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Where it was going before iptables redirected it (transparent mode).
    OriginalDst,
    /// A fixed address (explicit mode, for hosts without iptables).
    Fixed(SocketAddr),
}

/// The TLS role of a listener; `None` when the proxy has no identity.
#[derive(Clone, Debug)]
pub enum TlsSide {
    None,
    /// Terminate mTLS from peers (and plaintext, when permissive).
    Inbound(Arc<InboundTls>),
    /// Originate mTLS to meshed destinations.
    Outbound(Arc<OutboundTls>),
}

/// What a listener needs to serve connections.
#[derive(Clone, Debug)]
pub struct Forwarder {
    pub direction: Direction,
    pub target: Target,
    pub connect_timeout: Duration,
    pub tls: TlsSide,
    /// HTTP proxying, when the proxy has an identity (L4 otherwise).
    pub http: HttpSide,
    /// How long to wait for a client's first bytes to tell HTTP from opaque.
    pub detect_timeout: Duration,
    pub metrics: TcpMetrics,
    pub tls_metrics: TlsMetrics,
    pub shutdown: Shutdown,
}

/// The L7 role of a listener.
#[derive(Clone, Debug)]
pub enum HttpSide {
    None,
    Inbound(Arc<HttpInbound>),
    Outbound(Arc<HttpOutbound>),
}

/// Why a connection could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    OrigDst(#[from] OrigDstError),
    #[error("refusing {dst}: it is this proxy's own listener (the connection would loop)")]
    Loop { dst: SocketAddr },
    #[error("{why} (connection to {dst})")]
    NoEndpoints { dst: SocketAddr, why: String },
    #[error("connecting to {dst} timed out after {timeout:?}")]
    ConnectTimeout { dst: SocketAddr, timeout: Duration },
    #[error("connecting to {dst}: {source}")]
    Connect {
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("TLS with {dst} failed ({reason}): {detail}")]
    Tls {
        dst: SocketAddr,
        reason: TlsFailure,
        detail: String,
    },
    #[error("HTTP on the connection to {dst}: {source}")]
    Http {
        dst: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("after connecting to {dst}: {source}")]
    Io {
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },
}

impl Forwarder {
    /// Accepts until shutdown; each connection runs as its own tracked task.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let local = listener.local_addr().ok();
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.triggered() => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let this = self.clone();
                    let span = info_span!("conn", dir = self.direction.as_str(), %peer);
                    self.shutdown.spawn_connection(
                        async move { this.handle(stream).await }.instrument(span),
                    );
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    warn!(?local, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        debug!(?local, "listener closed");
    }

    async fn handle(&self, stream: TcpStream) {
        let mut conn = self.metrics.accept(self.direction);
        match self.forward(stream, &mut conn).await {
            Ok((up, down)) => debug!(up, down, "closed"),
            Err(e) => {
                self.metrics.error(self.direction);
                match &e {
                    ForwardError::Io { .. } | ForwardError::Http { .. } => {
                        debug!(error = %e, "ended")
                    }
                    ForwardError::Tls { reason, .. } => {
                        self.tls_metrics.failure(self.direction, reason.as_str());
                        warn!(error = %e, reason = reason.as_str(), "TLS refused");
                    }
                    _ => info!(error = %e, "not forwarded"),
                }
            }
        }
    }

    async fn forward(
        &self,
        stream: TcpStream,
        conn: &mut Connection,
    ) -> Result<(u64, u64), ForwardError> {
        let dst = self.destination(&stream)?;
        match &self.tls {
            TlsSide::None => {
                let upstream = self.connect(dst).await?;
                let counters = conn.open(TlsStatus::Plain, None);
                self.carry(stream, upstream, dst, counters).await
            }
            TlsSide::Inbound(tls) => {
                let accepted =
                    tls.accept(stream, dst)
                        .await
                        .map_err(|(reason, e)| ForwardError::Tls {
                            dst,
                            reason,
                            detail: weft_api::tls::describe(&e),
                        })?;
                let found = match &accepted {
                    Accepted::Tls(client, _) => match client.get_ref().1.alpn_protocol() {
                        Some(weft_api::tls::ALPN_H2) => "http/2",
                        Some(weft_api::tls::ALPN_HTTP1) => "http/1",
                        _ => "opaque",
                    },
                    // Clients outside the mesh are carried at L4.
                    Accepted::Plain(_) => "plaintext",
                };
                self.tls_metrics.detected(self.direction, found);
                // A peer's HTTP (ALPN h2, or http/1.1 for an upgrade).
                if let (Accepted::Tls(client, peer), HttpSide::Inbound(http)) =
                    (&accepted, &self.http)
                {
                    let alpn = client.get_ref().1.alpn_protocol();
                    let h2 = alpn == Some(weft_api::tls::ALPN_H2);
                    if h2 || alpn == Some(weft_api::tls::ALPN_HTTP1) {
                        self.tls_metrics.session(self.direction, peer);
                        debug!(client_identity = %peer, h2, "mTLS HTTP from a peer");
                        let (http, peer) = (http.clone(), peer.clone());
                        let Accepted::Tls(client, _) = accepted else {
                            return Ok((0, 0));
                        };
                        let (read, written) = conn.open(TlsStatus::Mtls, Some(&peer));
                        let io = Counted::new(*client, read, written);
                        let served = if h2 {
                            http.serve(io, dst, peer).await
                        } else {
                            http.serve_h1(io, dst, peer).await
                        };
                        served.map_err(|source| ForwardError::Http { dst, source })?;
                        return Ok((0, 0));
                    }
                }
                let upstream = self.connect(dst).await?;
                match accepted {
                    Accepted::Tls(client, peer) => {
                        self.tls_metrics.session(self.direction, &peer);
                        debug!(client_identity = %peer, "mTLS accepted");
                        let counters = conn.open(TlsStatus::Mtls, Some(&peer));
                        self.carry(*client, upstream, dst, counters).await
                    }
                    Accepted::Plain(client) => {
                        let counters = conn.open(TlsStatus::Plain, None);
                        self.carry(client, upstream, dst, counters).await
                    }
                }
            }
            TlsSide::Outbound(tls) => {
                let fixed = matches!(self.target, Target::Fixed(_));
                if let HttpSide::Outbound(http) = &self.http
                    && let Some((target, declared)) = http_target(tls, dst, fixed)
                {
                    let proto = match declared {
                        Some(p) => p,
                        None => detect::detect(&stream, self.detect_timeout).await,
                    };
                    self.tls_metrics.detected(self.direction, proto.as_str());
                    if proto != Detected::Opaque {
                        let (read, written) = conn.open(TlsStatus::PerRequest, None);
                        let io = Counted::new(stream, read, written);
                        http.clone()
                            .serve(io, target, proto)
                            .await
                            .map_err(|source| ForwardError::Http { dst, source })?;
                        return Ok((0, 0));
                    }
                }
                let mut attempt = 1;
                let (plan, upstream) = loop {
                    let plan = tls
                        .plan(dst, fixed)
                        .map_err(|why| ForwardError::NoEndpoints { dst, why })?;
                    match self.connect(plan.addr).await {
                        Ok(upstream) => break (plan, upstream),
                        // A Service has other endpoints: try another.
                        Err(e) if plan.service.is_some() && attempt < CONNECT_ATTEMPTS => {
                            info!(error = %e, attempt, "endpoint unreachable; trying another");
                            attempt += 1;
                        }
                        Err(e) => return Err(e),
                    }
                };
                if let Some(sp) = &plan.service {
                    debug!(service = %sp.name, endpoint = %plan.addr, "balanced");
                }
                match &plan.identity {
                    Some(id) => {
                        let server = tls
                            .connect(upstream, plan.addr, id, Alpn::Tcp)
                            .await
                            .map_err(|e| ForwardError::Tls {
                                dst: plan.addr,
                                reason: TlsFailure::of(&e),
                                detail: weft_api::tls::describe(&e),
                            })?;
                        self.tls_metrics.session(self.direction, id);
                        debug!(server_identity = %id, "mTLS established");
                        let counters = conn.open(TlsStatus::Mtls, Some(id));
                        self.carry(stream, server, plan.addr, counters).await
                    }
                    None => {
                        let counters = conn.open(TlsStatus::Plain, None);
                        self.carry(stream, upstream, plan.addr, counters).await
                    }
                }
            }
        }
    }

    async fn connect(&self, dst: SocketAddr) -> Result<TcpStream, ForwardError> {
        let s = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(dst)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(ForwardError::Connect { dst, source }),
            Err(_) => {
                return Err(ForwardError::ConnectTimeout {
                    dst,
                    timeout: self.connect_timeout,
                });
            }
        };
        // Latency matters more than packet count for proxied request/response.
        let _ = s.set_nodelay(true);
        debug!(%dst, "connected");
        Ok(s)
    }

    /// Copies both ways, counting the accepted side's bytes.
    async fn carry<C, U>(
        &self,
        client: C,
        mut upstream: U,
        dst: SocketAddr,
        (read, written): (Counter, Counter),
    ) -> Result<(u64, u64), ForwardError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let mut client = Counted::new(client, read, written);
        transport::forward(&mut client, &mut upstream)
            .await
            .map_err(|source| ForwardError::Io { dst, source })
    }

    fn destination(&self, stream: &TcpStream) -> Result<SocketAddr, ForwardError> {
        let _ = stream.set_nodelay(true);
        let dst = match self.target {
            Target::Fixed(a) => return Ok(a),
            Target::OriginalDst => transport::original_dst(stream)?,
        };
        let local = stream
            .local_addr()
            .map_err(|e| ForwardError::OrigDst(e.into()))?;
        if canonical(dst) == canonical(local) {
            return Err(ForwardError::Loop { dst });
        }
        Ok(dst)
    }
}

/// Whether an outbound connection is a candidate for HTTP proxying, where
/// its requests go, and the protocol its Service declares (None: detect).
fn http_target(
    tls: &OutboundTls,
    dst: SocketAddr,
    fixed: bool,
) -> Option<(HttpTarget, Option<Detected>)> {
    use weft_api::v1::Protocol;
    if fixed {
        let id = tls.direct_identity(dst, true)?;
        return Some((HttpTarget::Direct(dst, Some(id)), None));
    }
    match tls.mesh_destination(dst) {
        Destination::Service(sp) => {
            let declared = match sp.protocol {
                Protocol::Opaque => return None,
                Protocol::Http1 => Some(Detected::Http1),
                Protocol::Http2 | Protocol::Grpc => Some(Detected::Http2),
                Protocol::Unspecified => None,
            };
            Some((HttpTarget::Service(sp), declared))
        }
        Destination::Pod(id) => Some((HttpTarget::Direct(dst, Some(id)), None)),
        Destination::Passthrough => {
            let id = tls.direct_identity(dst, false)?;
            Some((HttpTarget::Direct(dst, Some(id)), None))
        }
    }
}

/// IPv4-mapped IPv6 addresses compare equal to their IPv4 form.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    fn forwarder(target: Target) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            direction: Direction::Outbound,
            target,
            connect_timeout: Duration::from_secs(1),
            tls: TlsSide::None,
            http: HttpSide::None,
            detect_timeout: Duration::from_secs(1),
            metrics: TcpMetrics::default(),
            tls_metrics: TlsMetrics::default(),
            shutdown: Shutdown::new(),
        })
    }

    #[tokio::test]
    async fn fixed_target_carries_bytes_and_counts_them() {
        let echo = echo_server().await;
        let fwd = forwarder(Target::Fixed(echo));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(fwd.clone().serve(l));

        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");

        fwd.shutdown.trigger();
        assert!(fwd.shutdown.drain(Duration::from_secs(2)).await);
        // Same labels, so the same counters.
        let (r, w) = fwd
            .metrics
            .accept(Direction::Outbound)
            .open(TlsStatus::Plain, None);
        assert_eq!((r.get(), w.get()), (4, 4));
    }

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_is_refused() {
        let fwd = forwarder(Target::OriginalDst);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(fwd.clone().serve(l));

        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut got = Vec::new();
        // The proxy closes without forwarding anything.
        let _ = c.read_to_end(&mut got).await;
        assert!(got.is_empty());
        fwd.shutdown.trigger();
        fwd.shutdown.drain(Duration::from_secs(2)).await;
    }

    #[test]
    fn mapped_addresses_compare_as_ipv4() {
        let a: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert_eq!(canonical(a), b);
    }
}
