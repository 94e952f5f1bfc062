//! Opening connections to an endpoint, one way for both data paths: TCP
//! within the connect timeout, then, when an identity is expected there,
//! mTLS that checks the peer is that workload.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tracing::debug;
use weft_api::SpiffeId;

use crate::telemetry::{Direction, TlsMetrics};
use crate::tls::{Alpn, OutboundTls, TlsFailure};

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connecting to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("TLS with {addr} failed ({reason}): {detail}")]
    Tls {
        addr: SocketAddr,
        reason: TlsFailure,
        detail: String,
    },
    #[error("{addr} expects mTLS, but this proxy has no identity")]
    NoIdentity { addr: SocketAddr },
}

#[derive(Clone, Debug)]
pub struct Connector {
    timeout: Duration,
    /// None: this proxy has no identity, so it speaks plaintext only.
    tls: Option<Arc<OutboundTls>>,
    metrics: TlsMetrics,
}

impl Connector {
    pub fn new(timeout: Duration, tls: Option<Arc<OutboundTls>>, metrics: TlsMetrics) -> Self {
        Connector {
            timeout,
            tls,
            metrics,
        }
    }

    /// A TCP connection, Nagle off: latency matters more than packet count
    /// for proxied requests.
    pub async fn tcp(&self, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
        let tcp = match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
            Err(_) => {
                return Err(ConnectError::Timeout {
                    addr,
                    timeout: self.timeout,
                });
            }
        };
        let _ = tcp.set_nodelay(true);
        debug!(%addr, "connected");
        Ok(tcp)
    }

    /// An mTLS connection to the sidecar at `addr`, which must be `identity`.
    pub async fn mtls(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        alpn: Alpn,
    ) -> Result<TlsStream<TcpStream>, ConnectError> {
        let tls = self.tls.as_ref().ok_or(ConnectError::NoIdentity { addr })?;
        let tcp = self.tcp(addr).await?;
        self.handshake(tls, tcp, addr, identity, alpn).await
    }

    /// mTLS over a connection already open.
    pub async fn handshake(
        &self,
        tls: &OutboundTls,
        tcp: TcpStream,
        addr: SocketAddr,
        identity: &SpiffeId,
        alpn: Alpn,
    ) -> Result<TlsStream<TcpStream>, ConnectError> {
        match tls.connect(tcp, addr, identity, alpn).await {
            Ok(s) => {
                self.metrics.session(Direction::Outbound, identity);
                debug!(%addr, server_identity = %identity, "mTLS established");
                Ok(s)
            }
            Err(e) => {
                let reason = TlsFailure::of(&e);
                self.metrics.failure(Direction::Outbound, reason.as_str());
                Err(ConnectError::Tls {
                    addr,
                    reason,
                    detail: weft_api::tls::describe(&e),
                })
            }
        }
    }

    pub fn tls(&self) -> Option<&Arc<OutboundTls>> {
        self.tls.as_ref()
    }
}
