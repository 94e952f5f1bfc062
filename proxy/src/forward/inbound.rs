//! The inbound forwarder: a connection to this pod is mTLS from a peer
//! sidecar (its HTTP served request by request, anything else carried as
//! bytes) or, where the mTLS mode allows, plaintext carried as it is.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::debug;

use super::{ForwardError, carry};
use crate::connect::Connector;
use crate::discovery::Mesh;
use crate::http::inbound::HttpInbound;
use crate::telemetry::metrics::Connection;
use crate::telemetry::{Direction, TlsMetrics, TlsStatus};
use crate::tls::{Accepted, InboundTls, MtlsMode};
use crate::transport::Counted;

#[derive(Debug)]
pub struct Inbound {
    /// None: this proxy has no identity; everything is carried as bytes.
    tls: Option<(Arc<InboundTls>, Arc<HttpInbound>)>,
    mesh: Option<Mesh>,
    /// The local setting; the control plane can make it stricter, not looser.
    mode: MtlsMode,
    connector: Connector,
}

impl Inbound {
    pub fn new(
        tls: Option<(Arc<InboundTls>, Arc<HttpInbound>)>,
        mesh: Option<Mesh>,
        mode: MtlsMode,
        connector: Connector,
    ) -> Self {
        Inbound {
            tls,
            mesh,
            mode,
            connector,
        }
    }

    pub(super) async fn forward(
        &self,
        stream: TcpStream,
        dst: SocketAddr,
        conn: &mut Connection,
        tls_metrics: &TlsMetrics,
    ) -> Result<(u64, u64), ForwardError> {
        let Some((tls, http)) = &self.tls else {
            let upstream = self.connector.tcp(dst).await?;
            return carry(stream, upstream, dst, conn.open(TlsStatus::Plain, None)).await;
        };
        let (mode, skip_detection) = self.mode_for(&stream, dst);
        let accepted = tls
            .accept(stream, mode, skip_detection)
            .await
            .map_err(|(reason, e)| ForwardError::Tls {
                dst,
                reason,
                detail: weft_api::tls::describe(&e),
            })?;
        let (client, peer) = match accepted {
            // Clients outside the mesh are carried at L4.
            Accepted::Plain(client) => {
                tls_metrics.detected(Direction::Inbound, "plaintext");
                let upstream = self.connector.tcp(dst).await?;
                return carry(client, upstream, dst, conn.open(TlsStatus::Plain, None)).await;
            }
            Accepted::Tls(client, peer) => (client, peer),
        };
        let alpn = client.get_ref().1.alpn_protocol();
        let h2 = alpn == Some(weft_api::tls::ALPN_H2);
        let h1 = alpn == Some(weft_api::tls::ALPN_HTTP1);
        tls_metrics.detected(
            Direction::Inbound,
            match (h2, h1) {
                (true, _) => "http/2",
                (_, true) => "http/1",
                _ => "opaque",
            },
        );
        tls_metrics.session(Direction::Inbound, &peer);
        if h2 || h1 {
            // A peer's HTTP (ALPN h2, or http/1.1 for an upgrade).
            debug!(client_identity = %peer, h2, "mTLS HTTP from a peer");
            let (read, written) = conn.open(TlsStatus::Mtls, Some(&peer));
            let io = Counted::new(*client, read, written);
            let served = if h2 {
                http.clone().serve(io, dst, peer).await
            } else {
                http.clone().serve_h1(io, dst, peer).await
            };
            served.map_err(|source| ForwardError::Http { dst, source })?;
            return Ok((0, 0));
        }
        debug!(client_identity = %peer, "mTLS accepted");
        let upstream = self.connector.tcp(dst).await?;
        let counters = conn.open(TlsStatus::Mtls, Some(&peer));
        carry(*client, upstream, dst, counters).await
    }

    /// The stricter of the local mTLS mode and the control plane's (a proxy
    /// pinned to strict cannot be downgraded from afar), and whether to skip
    /// reading the first byte: on an opaque port, for a client that is not
    /// a meshed pod, so a server-speaks-first protocol never waits.
    fn mode_for(&self, stream: &TcpStream, dst: SocketAddr) -> (MtlsMode, bool) {
        let cfg = self.mesh.as_ref().map(|m| m.load());
        let mode = match (self.mode, cfg.as_ref().and_then(|c| c.mtls_mode)) {
            (MtlsMode::Strict, _) | (_, Some(weft_api::v1::MtlsMode::Strict)) => MtlsMode::Strict,
            _ => MtlsMode::Permissive,
        };
        let Some(cfg) = cfg else {
            return (mode, false);
        };
        let peer_meshed = stream.peer_addr().is_ok_and(|p| cfg.is_meshed(p.ip()));
        (mode, cfg.is_opaque(dst.port()) && !peer_meshed)
    }
}
