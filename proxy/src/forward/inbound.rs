//! The inbound forwarder: a connection to this pod is mTLS from a peer
//! sidecar (its HTTP served request by request, anything else carried as
//! bytes) or, where the mTLS mode allows, plaintext: HTTP served request by
//! request without the mesh's reserved headers, anything else carried as
//! it is. Sources outside the mesh are held to a connection cap.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::debug;

use super::sources::SourceCap;
use super::{Carrier, ForwardError};
use crate::connect::Connector;
use crate::discovery::{Key, Mesh, UseGuard};
use crate::http::detect::{self, Detected};
use crate::http::inbound::HttpInbound;
use crate::http::server::Proto;
use crate::telemetry::metrics::Connection;
use crate::telemetry::{DefenceMetrics, Direction, TlsMetrics, TlsStatus};
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
    /// Connections a source outside the mesh may hold open at once.
    sources: Arc<SourceCap>,
    /// How long to wait for a plaintext client's first bytes.
    detect_timeout: Duration,
    defences: DefenceMetrics,
    carrier: Carrier,
    authz_metrics: crate::telemetry::AuthzMetrics,
}

impl Inbound {
    pub fn new(
        tls: Option<(Arc<InboundTls>, Arc<HttpInbound>)>,
        mesh: Option<Mesh>,
        mode: MtlsMode,
        connector: Connector,
        (max_per_source, detect_timeout): (u32, Duration),
        carrier: Carrier,
        authz_metrics: crate::telemetry::AuthzMetrics,
    ) -> Self {
        Inbound {
            authz_metrics,
            tls,
            mesh,
            mode,
            connector,
            sources: SourceCap::new(max_per_source),
            detect_timeout,
            defences: carrier.defences.clone(),
            carrier,
        }
    }

    pub(super) async fn forward(
        &self,
        stream: TcpStream,
        dst: SocketAddr,
        conn: &mut Connection,
        tls_metrics: &TlsMetrics,
    ) -> Result<(u64, u64), ForwardError> {
        let client_addr = stream
            .peer_addr()
            .map_err(|source| ForwardError::Io { dst, source })?;
        // A client in the networks of meshed pods that this proxy does not
        // know yet: ask whether it is meshed before deciding how to treat it.
        let learned = self.learn(client_addr.ip()).await;
        let (mode, mut skip_detection, meshed) = self.mode_for(client_addr, dst);
        // No answer: it may be a meshed pod, whose TLS must not be passed to
        // the app as bytes, so read its first bytes after all.
        if matches!(learned, Learned::Unanswered) {
            skip_detection = false;
        }
        // Peer sidecars multiplex; anyone else is held to a share.
        let _slot = if meshed {
            None
        } else {
            match self.sources.admit(client_addr.ip()) {
                Some(slot) => Some(slot),
                None => {
                    self.defences
                        .enforced(Direction::Inbound, "source_connection_cap");
                    return Err(ForwardError::SourceCap {
                        client: client_addr,
                        dst,
                    });
                }
            }
        };
        let Some((tls, http)) = &self.tls else {
            self.authorize(client_addr, dst, None)?;
            let upstream = self.connector.tcp(dst).await?;
            return self
                .carrier
                .carry(stream, upstream, dst, conn.open(TlsStatus::Plain, None))
                .await;
        };
        let accepted = tls
            .accept(stream, mode, skip_detection)
            .await
            .map_err(|(reason, e)| ForwardError::InboundTls {
                client: client_addr,
                dst,
                reason,
                detail: weft_api::tls::describe(&e),
            })?;
        let (client, peer) = match accepted {
            Accepted::Plain(client, spoke) => {
                // HTTP from outside the mesh is served request by request,
                // so that no `weft-*` header it carries reaches the app;
                // anything else is carried as it is.
                let proto = if spoke && !skip_detection {
                    detect::detect(&client, self.detect_timeout).await
                } else {
                    Detected::Opaque
                };
                tls_metrics.detected(
                    Direction::Inbound,
                    match proto {
                        Detected::Opaque => "plaintext",
                        other => other.as_str(),
                    },
                );
                let (read, written) = conn.open(TlsStatus::Plain, None);
                let proto = match proto {
                    Detected::Http1 => Proto::Http1,
                    Detected::Http2 => Proto::Http2,
                    Detected::Opaque => {
                        self.authorize(client_addr, dst, None)?;
                        let upstream = self.connector.tcp(dst).await?;
                        return self
                            .carrier
                            .carry(client, upstream, dst, (read, written))
                            .await;
                    }
                };
                debug!(h2 = proto == Proto::Http2, "plaintext HTTP");
                let io = Counted::new(client, read, written);
                http.clone()
                    .serve(io, client_addr, dst, None, proto)
                    .await
                    .map_err(|source| ForwardError::Http { dst, source })?;
                return Ok((0, 0));
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
            let proto = if h2 { Proto::Http2 } else { Proto::Http1 };
            http.clone()
                .serve(io, client_addr, dst, Some(peer), proto)
                .await
                .map_err(|source| ForwardError::Http { dst, source })?;
            return Ok((0, 0));
        }
        debug!(client_identity = %peer, "mTLS accepted");
        // After the handshake: the peer knows it was heard, and refused.
        self.authorize(client_addr, dst, Some(&peer))?;
        let upstream = self.connector.tcp(dst).await?;
        let counters = conn.open(TlsStatus::Mtls, Some(&peer));
        self.carrier.carry(*client, upstream, dst, counters).await
    }

    /// Whether the port's policies let `peer` open a connection the app will
    /// see as bytes (no HTTP to check).
    fn authorize(
        &self,
        client: SocketAddr,
        dst: SocketAddr,
        peer: Option<&weft_api::SpiffeId>,
    ) -> Result<(), ForwardError> {
        let enforcer = crate::authz::Enforcer {
            mesh: self.mesh.clone(),
            metrics: self.authz_metrics.clone(),
        };
        match enforcer.decide(dst.port(), peer, None) {
            crate::authz::Decision::Deny { policy, .. } => Err(ForwardError::Forbidden {
                client,
                dst,
                policy,
            }),
            crate::authz::Decision::Allow { .. } => Ok(()),
        }
    }

    /// Subscribes to a client's address when it may be a meshed pod this
    /// proxy has not heard of; the guard keeps it while the connection
    /// lives. Without an answer in time the client is treated as unmeshed.
    async fn learn(&self, client: IpAddr) -> Learned {
        let Some(mesh) = self.mesh.as_ref().filter(|m| m.subscriptions.on_demand()) else {
            return Learned::NotAsked;
        };
        let held = {
            let cfg = mesh.load();
            if !cfg.is_meshed(client) && !cfg.in_mesh_networks(client) {
                return Learned::NotAsked;
            }
            cfg.is_meshed(client)
        };
        match mesh.subscriptions.want(Key::Address(client), held).await {
            Ok(guard) => Learned::Answered { _held: guard },
            Err(_) => Learned::Unanswered,
        }
    }

    /// The stricter of the local mTLS mode and the control plane's (a proxy
    /// pinned to strict cannot be downgraded from afar), whether to skip
    /// reading the first byte (on an opaque port, for a client that is not
    /// a meshed pod, so a server-speaks-first protocol never waits), and
    /// whether the client is a meshed pod.
    fn mode_for(&self, client: SocketAddr, dst: SocketAddr) -> (MtlsMode, bool, bool) {
        let cfg = self.mesh.as_ref().map(|m| m.load());
        let mode = match (self.mode, cfg.as_ref().and_then(|c| c.mtls_mode)) {
            (MtlsMode::Strict, _) | (_, Some(weft_api::v1::MtlsMode::Strict)) => MtlsMode::Strict,
            _ => MtlsMode::Permissive,
        };
        let Some(cfg) = cfg else {
            return (mode, false, false);
        };
        let meshed = cfg.is_meshed(client.ip());
        (mode, cfg.is_opaque(dst.port()) && !meshed, meshed)
    }
}

/// What this proxy learned about a client's address before serving it.
#[derive(Debug)]
enum Learned {
    /// Nothing to ask (outside the networks of meshed pods, or not on demand).
    NotAsked,
    /// Known now; the guard keeps the answer while the connection lives.
    Answered { _held: UseGuard },
    /// The control plane did not answer in time.
    Unanswered,
}
