//! The outbound forwarder: where the app's connection goes is decided once
//! ([`crate::destination`]); HTTP is then proxied request by request, and
//! anything else is carried as bytes — over mTLS to a meshed endpoint,
//! balanced over a Service's endpoints, or in plaintext as addressed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::{debug, info};

use super::{Carrier, ForwardError};
use crate::balance::{Endpoint, InFlight};
use crate::connect::{ConnectError, Connector};
use crate::destination::{Destinations, Plan, Protocol, Target};
use crate::discovery::ServicePort;
use crate::http::detect::{self, Detected};
use crate::http::outbound::HttpOutbound;
use crate::limits::Permit;
use crate::telemetry::metrics::Connection;
use crate::telemetry::{Direction, TlsMetrics, TlsStatus};
use crate::tls::Alpn;
use crate::transport::Counted;

/// Endpoints tried for one connection to a Service before giving up.
const CONNECT_ATTEMPTS: u32 = 3;

#[derive(Debug)]
pub struct Outbound {
    destinations: Destinations,
    connector: Connector,
    /// None: this proxy has no identity, so nothing is proxied at L7.
    http: Option<Arc<HttpOutbound>>,
    /// How long to wait for a client's first bytes to tell HTTP from opaque.
    detect_timeout: Duration,
    carrier: Carrier,
}

/// A connection to one of a Service's endpoints, counted against its load
/// and its connection cap while it lives.
struct Balanced {
    tcp: TcpStream,
    endpoint: Arc<Endpoint>,
    /// Held while the connection lives: its endpoint's load and its cap.
    held: (InFlight, Permit),
}

impl Outbound {
    pub fn new(
        destinations: Destinations,
        connector: Connector,
        http: Option<Arc<HttpOutbound>>,
        detect_timeout: Duration,
        carrier: Carrier,
    ) -> Self {
        Outbound {
            destinations,
            connector,
            http,
            detect_timeout,
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
        // Held while the connection lives: what it uses is not idle.
        let _used = self
            .destinations
            .discover(dst)
            .await
            .map_err(|(key, source)| ForwardError::Discovery {
                dst,
                key: key.to_string(),
                source,
            })?;
        let plan = self.destinations.plan(dst);
        if let Some(http) = &self.http
            && plan.protocol != Protocol::Opaque
        {
            let proto = match plan.protocol {
                Protocol::Http1 => Detected::Http1,
                Protocol::Http2 => Detected::Http2,
                _ => detect::detect(&stream, self.detect_timeout).await,
            };
            tls_metrics.detected(Direction::Outbound, proto.as_str());
            if proto != Detected::Opaque {
                let (read, written) = conn.open(TlsStatus::PerRequest, None);
                let io = Counted::new(stream, read, written);
                http.clone()
                    .serve(io, plan, proto)
                    .await
                    .map_err(|source| ForwardError::Http { dst, source })?;
                return Ok((0, 0));
            }
        }
        self.carry_tcp(stream, plan, conn).await
    }

    /// Carries the connection as bytes, following the plan.
    async fn carry_tcp(
        &self,
        stream: TcpStream,
        plan: Plan,
        conn: &mut Connection,
    ) -> Result<(u64, u64), ForwardError> {
        let (tcp, addr, identity, _held) = match &plan.target {
            Target::Service(sp) => {
                let b = self.connect_service(plan.dst, sp).await?;
                debug!(service = %sp.name, endpoint = %b.endpoint.addr, "balanced");
                let (addr, id) = (b.endpoint.addr, b.endpoint.identity.clone());
                (b.tcp, addr, id, Some(b.held))
            }
            Target::Direct(addr, id) => (self.connector.tcp(*addr).await?, *addr, id.clone(), None),
        };
        match identity {
            Some(id) => {
                let tls = self
                    .connector
                    .tls()
                    .ok_or(ConnectError::NoIdentity { addr })?;
                let server = self
                    .connector
                    .handshake(tls, tcp, addr, &id, Alpn::Tcp)
                    .await?;
                self.carrier
                    .carry(stream, server, addr, conn.open(TlsStatus::Mtls, Some(&id)))
                    .await
            }
            None => {
                self.carrier
                    .carry(stream, tcp, addr, conn.open(TlsStatus::Plain, None))
                    .await
            }
        }
    }

    /// Connects to one of the Service's endpoints, trying another when one
    /// cannot be reached.
    async fn connect_service(
        &self,
        dst: SocketAddr,
        sp: &ServicePort,
    ) -> Result<Balanced, ForwardError> {
        let mut attempt = 1;
        loop {
            let permit = sp
                .policy
                .limits
                .connection()
                .map_err(|which| ForwardError::AtLimit {
                    dst,
                    service: sp.name.clone(),
                    which,
                })?;
            let endpoint = sp
                .pick_connection()
                .map_err(|why| ForwardError::NoEndpoints {
                    dst,
                    service: sp.name.clone(),
                    why,
                })?;
            let load = endpoint.track();
            match self.connector.tcp(endpoint.addr).await {
                Ok(tcp) => {
                    return Ok(Balanced {
                        tcp,
                        endpoint,
                        held: (load, permit),
                    });
                }
                Err(e) if attempt < CONNECT_ATTEMPTS => {
                    info!(error = %e, attempt, "endpoint unreachable; trying another");
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
