//! The one place that decides where an outbound connection goes: once per
//! connection, the original destination becomes a [`Plan`] — the protocol
//! to expect, and either a Service port (balanced over its endpoints) or one
//! address with the identity that must answer there. The TCP and HTTP paths
//! both follow the plan; neither looks the mesh up again.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use weft_api::SpiffeId;
use weft_api::v1;

use crate::discovery::subscriptions::Unavailable;
use crate::discovery::{Address, Key, Mesh, ServicePort, UseGuard};

/// The workload expected at a destination: `IP=ID` or `IP:PORT=ID`
/// (`--peer-identity`, for destinations discovery does not cover).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub ip: IpAddr,
    pub port: Option<u16>,
    pub id: SpiffeId,
}

/// Why a `--peer-identity` value was refused.
#[derive(Debug, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("`{0}` is not DESTINATION=SPIFFE_ID")]
    Shape(String),
    #[error("`{0}` is not an IP address or IP:PORT")]
    Address(String),
    #[error("{0}")]
    Id(String),
}

impl FromStr for PeerIdentity {
    type Err = PeerIdentityError;

    fn from_str(s: &str) -> Result<Self, PeerIdentityError> {
        let (dst, id) = s
            .split_once('=')
            .ok_or_else(|| PeerIdentityError::Shape(s.to_string()))?;
        let id: SpiffeId = id
            .parse()
            .map_err(|e| PeerIdentityError::Id(format!("{e}")))?;
        if let Ok(sa) = dst.parse::<SocketAddr>() {
            return Ok(PeerIdentity {
                ip: sa.ip(),
                port: Some(sa.port()),
                id,
            });
        }
        let ip = dst
            .parse::<IpAddr>()
            .map_err(|_| PeerIdentityError::Address(dst.to_string()))?;
        Ok(PeerIdentity { ip, port: None, id })
    }
}

/// What the client is expected to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Bytes carried as they are.
    Opaque,
    Http1,
    Http2,
    /// Not declared: read the client's first bytes to tell.
    Detect,
}

/// Where requests or bytes go.
#[derive(Clone, Debug)]
pub enum Target {
    /// A Service port: routes, splits, balancing, its policy.
    Service(Arc<ServicePort>),
    /// One address; mTLS when an identity is expected there.
    Direct(SocketAddr, Option<SpiffeId>),
}

/// The decision for one connection.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Where the client was going.
    pub dst: SocketAddr,
    pub protocol: Protocol,
    pub target: Target,
}

/// Everything the decision reads.
#[derive(Debug, Default)]
pub struct Destinations {
    mesh: Option<Mesh>,
    peers: Vec<PeerIdentity>,
    /// Explicit mode: every connection goes to this target, which must be
    /// this identity.
    fixed: Option<(SocketAddr, Option<SpiffeId>)>,
}

impl Destinations {
    pub fn new(
        mesh: Option<Mesh>,
        peers: Vec<PeerIdentity>,
        fixed: Option<(SocketAddr, Option<SpiffeId>)>,
    ) -> Self {
        Destinations { mesh, peers, fixed }
    }

    /// Makes sure this proxy holds what a connection to `dst` needs: on
    /// first use of a Service's virtual IP (or of an address in the
    /// networks of meshed pods) it subscribes and waits for the answer. The
    /// guard marks it used while the connection lives. Nothing to do for
    /// egress, or when the proxy receives the whole mesh.
    pub async fn discover(&self, dst: SocketAddr) -> Result<Option<UseGuard>, (Key, Unavailable)> {
        let Some(mesh) = self.mesh.as_ref().filter(|m| m.subscriptions.on_demand()) else {
            return Ok(None);
        };
        if self.fixed.is_some() {
            return Ok(None);
        }
        let (key, held) = {
            let cfg = mesh.load();
            let key = if let Some(k) = cfg.service_key(dst.ip()) {
                Key::Service(k)
            } else if cfg.is_meshed(dst.ip()) || cfg.in_mesh_networks(dst.ip()) {
                Key::Address(dst.ip())
            } else {
                return Ok(None);
            };
            let held = cfg.holds(&key);
            (key, held)
        };
        match mesh.subscriptions.want(key.clone(), held).await {
            Ok(guard) => Ok(Some(guard)),
            Err(e) => Err((key, e)),
        }
    }

    /// A Service's virtual address is balanced over its endpoints; a meshed
    /// pod (or a `--peer-identity` address) gets mTLS; anything else
    /// passes through in plaintext. HTTP is proxied request by request only
    /// where there is an identity to speak mTLS to, or a Service to route.
    pub fn plan(&self, dst: SocketAddr) -> Plan {
        let direct = |dst: SocketAddr, id: Option<SpiffeId>| Plan {
            dst,
            // Nothing to add to plaintext HTTP outside the mesh.
            protocol: if id.is_some() {
                Protocol::Detect
            } else {
                Protocol::Opaque
            },
            target: Target::Direct(dst, id),
        };
        if let Some((addr, id)) = &self.fixed {
            return direct(*addr, id.clone());
        }
        let address = self
            .mesh
            .as_ref()
            .map_or(Address::Unknown, |m| m.load().lookup(dst));
        match address {
            Address::Service(sp) => Plan {
                dst,
                protocol: match sp.protocol {
                    v1::Protocol::Opaque => Protocol::Opaque,
                    v1::Protocol::Http1 => Protocol::Http1,
                    v1::Protocol::Http2 | v1::Protocol::Grpc => Protocol::Http2,
                    v1::Protocol::Unspecified => Protocol::Detect,
                },
                target: Target::Service(sp),
            },
            Address::Pod(id) => direct(dst, Some(id)),
            Address::Unknown => direct(dst, self.static_peer(dst)),
        }
    }

    /// The identity `--peer-identity` gives `dst`, if any: an exact
    /// `IP:PORT` wins over a bare IP.
    fn static_peer(&self, dst: SocketAddr) -> Option<SpiffeId> {
        let exact = self
            .peers
            .iter()
            .find(|p| p.ip == dst.ip() && p.port == Some(dst.port()));
        exact
            .or_else(|| {
                self.peers
                    .iter()
                    .find(|p| p.ip == dst.ip() && p.port.is_none())
            })
            .map(|p| p.id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_identities_parse_with_and_without_port() {
        let p: PeerIdentity = "10.0.0.1=spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        assert_eq!((p.port, p.id.service_account()), (None, "b"));
        let p: PeerIdentity = "10.0.0.1:80=spiffe://cluster.local/ns/a/sa/b"
            .parse()
            .unwrap();
        assert_eq!(p.port, Some(80));
        assert!("10.0.0.1".parse::<PeerIdentity>().is_err());
        assert!(
            "host=spiffe://cluster.local/ns/a/sa/b"
                .parse::<PeerIdentity>()
                .is_err()
        );
        assert!("10.0.0.1=spiffe://x/y".parse::<PeerIdentity>().is_err());
    }

    #[test]
    fn only_addresses_with_an_identity_or_a_service_are_proxied_as_http() {
        let a: SpiffeId = "spiffe://cluster.local/ns/a/sa/a".parse().unwrap();
        let b: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let d = Destinations::new(
            None,
            vec![
                "10.0.0.1=spiffe://cluster.local/ns/a/sa/a".parse().unwrap(),
                "10.0.0.1:80=spiffe://cluster.local/ns/a/sa/b"
                    .parse()
                    .unwrap(),
            ],
            None,
        );
        let plan = d.plan("10.0.0.1:80".parse().unwrap());
        assert!(matches!(plan.target, Target::Direct(_, Some(ref id)) if *id == b));
        assert_eq!(plan.protocol, Protocol::Detect);
        let plan = d.plan("10.0.0.1:81".parse().unwrap());
        assert!(matches!(plan.target, Target::Direct(_, Some(ref id)) if *id == a));
        let plan = d.plan("10.0.0.2:80".parse().unwrap());
        assert!(matches!(plan.target, Target::Direct(_, None)));
        assert_eq!(plan.protocol, Protocol::Opaque);
        let fixed: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let d = Destinations::new(None, vec![], Some((fixed, Some(a.clone()))));
        let plan = d.plan("10.0.0.2:80".parse().unwrap());
        assert!(matches!(plan.target, Target::Direct(addr, Some(_)) if addr == fixed));
    }
}
