//! The L4 front of both listeners: accept, find where the connection was
//! going, hand it to the inbound or outbound forwarder, and count it. Each
//! side decides the rest for itself ([`inbound`], [`outbound`]).

mod inbound;
mod outbound;
mod sources;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info, info_span, warn};

pub use inbound::Inbound;
pub use outbound::Outbound;

use crate::balance::PickError;
use crate::connect::ConnectError;
use crate::limits::AtLimit;
use crate::shutdown::Shutdown;
use crate::telemetry::{DefenceMetrics, Direction, TcpMetrics, TlsMetrics};
use crate::tls::TlsFailure;
use crate::transport::{self, Counted, orig_dst::OrigDstError};

/// Where an accepted connection should go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Where it was going before iptables redirected it (transparent mode).
    OriginalDst,
    /// A fixed address (explicit mode, for hosts without iptables).
    Fixed(SocketAddr),
}

/// Which listener this is, with what that side needs.
#[derive(Debug)]
pub enum Side {
    Inbound(Inbound),
    Outbound(Outbound),
}

/// What a listener needs to serve connections.
#[derive(Debug)]
pub struct Forwarder {
    pub target: Target,
    pub side: Side,
    pub metrics: TcpMetrics,
    pub tls_metrics: TlsMetrics,
    pub shutdown: Shutdown,
}

/// Why a connection could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    OrigDst(#[from] OrigDstError),
    #[error("refusing {dst}: it is this proxy's own listener (the connection would loop)")]
    Loop { dst: SocketAddr },
    #[error("{service} has {why} (connection to {dst})")]
    NoEndpoints {
        dst: SocketAddr,
        service: String,
        why: PickError,
    },
    #[error("{service} is {which} (connection to {dst})")]
    AtLimit {
        dst: SocketAddr,
        service: String,
        which: AtLimit,
    },
    #[error("{key} (connection to {dst}) is not known to this proxy yet: {source}")]
    Discovery {
        dst: SocketAddr,
        key: String,
        #[source]
        source: crate::discovery::subscriptions::Unavailable,
    },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("TLS from {client} (to {dst}) refused ({reason}): {detail}")]
    InboundTls {
        client: SocketAddr,
        dst: SocketAddr,
        reason: TlsFailure,
        detail: String,
    },
    #[error("refusing {client}: it already holds as many connections as one source may (to {dst})")]
    SourceCap { client: SocketAddr, dst: SocketAddr },
    #[error("connection from {client} to {dst} forbidden by authorization policy {policy}")]
    Forbidden {
        client: SocketAddr,
        dst: SocketAddr,
        policy: String,
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
    pub fn direction(&self) -> Direction {
        match self.side {
            Side::Inbound(_) => Direction::Inbound,
            Side::Outbound(_) => Direction::Outbound,
        }
    }

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
                    let span = info_span!("conn", dir = self.direction().as_str(), %peer);
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
        let direction = self.direction();
        let mut conn = self.metrics.accept(direction);
        let forwarded = match self.destination(&stream) {
            Ok(dst) => match &self.side {
                Side::Inbound(side) => {
                    side.forward(stream, dst, &mut conn, &self.tls_metrics)
                        .await
                }
                Side::Outbound(side) => {
                    side.forward(stream, dst, &mut conn, &self.tls_metrics)
                        .await
                }
            },
            Err(e) => Err(e),
        };
        match forwarded {
            Ok((up, down)) => debug!(up, down, "closed"),
            Err(e) => {
                self.metrics.error(direction);
                match &e {
                    ForwardError::Io { .. }
                    | ForwardError::Http { .. }
                    | ForwardError::SourceCap { .. } => {
                        debug!(error = %e, "ended")
                    }
                    ForwardError::InboundTls { reason, .. } => {
                        self.tls_metrics.failure(direction, reason.as_str());
                        warn!(error = %e, reason = reason.as_str(), "TLS refused");
                    }
                    // The connector counted it.
                    ForwardError::Connect(ConnectError::Tls { reason, .. }) => {
                        warn!(error = %e, reason = reason.as_str(), "TLS refused");
                    }
                    _ => info!(error = %e, "not forwarded"),
                }
            }
        }
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

/// How opaque bytes are carried: with an idle deadline, counted when it
/// passes.
#[derive(Clone, Debug)]
pub struct Carrier {
    pub idle: Duration,
    pub defences: DefenceMetrics,
    pub direction: Direction,
}

impl Carrier {
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
        transport::forward(&mut client, &mut upstream, self.idle)
            .await
            .map_err(|source| {
                if source.kind() == io::ErrorKind::TimedOut {
                    self.defences.enforced(self.direction, "tcp_idle_timeout");
                }
                ForwardError::Io { dst, source }
            })
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
    use crate::connect::Connector;
    use crate::destination::Destinations;
    use crate::telemetry::TlsStatus;
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
        let connector = Connector::new(Duration::from_secs(1), None, TlsMetrics::default());
        Arc::new(Forwarder {
            target,
            side: Side::Outbound(Outbound::new(
                Destinations::default(),
                connector,
                None,
                Duration::from_secs(1),
                Carrier {
                    idle: Duration::from_secs(60),
                    defences: DefenceMetrics::default(),
                    direction: Direction::Outbound,
                },
            )),
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
