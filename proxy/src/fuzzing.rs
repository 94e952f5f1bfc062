//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing` only, not
//! an API): crate-private code re-exported, or wrapped where it needs a
//! socket or a stream around it. The wrappers return errors rather than
//! panic, so every panic a fuzzer reports is the project's own.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use rcgen::{CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use weft_api::tls::{self as wtls, TrustAnchors};
use weft_api::v1;

use crate::balance::Registry;
use crate::http::observe::{Observer, Scope};
use crate::http::server::{Client, Proto, Server, ServerLimits};
use crate::telemetry::{DefenceMetrics, Direction, HttpMetrics};

pub use crate::discovery::MeshConfig;
pub use crate::dns::DnsServer;
pub use crate::http::detect::{Detected, classify};
pub use crate::http::headers::{strip_hop_by_hop, strip_reserved};
pub use crate::http::upgrade::{is_upgrade, keep_headers};
pub use crate::http::{Body, full};
pub use crate::identity::Identity;

/// The trust domain the wrappers build configs for.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// A throwaway identity for `id`: a fresh CA and a leaf it signs.
pub fn throwaway_identity(id: &str) -> anyhow::Result<Identity> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root = ca.self_signed(&ca_key)?.der().clone();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![SanType::URI(id.try_into()?)];
    let leaf = leaf.signed_by(&key, &issuer)?;
    let identity = Identity::new(id.parse()?, TrustAnchors::new(vec![root])?);
    identity.cert.set(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )?;
    Ok(identity)
}

/// The inbound side's TLS server config: the call `InboundTls::new` makes,
/// with the same arguments (its acceptor sits behind a `TcpStream` peek).
pub fn inbound_tls_config(identity: &Identity) -> Result<rustls::ServerConfig, wtls::TlsError> {
    wtls::server_config(
        identity.cert.clone(),
        identity.anchors.clone(),
        identity.trust_domain(),
        true,
        &[wtls::ALPN_TCP, wtls::ALPN_H2, wtls::ALPN_HTTP1],
    )
}

/// One Watch stream as `Watcher::stream` runs it, without the network:
/// each message is folded into the stream's snapshot and applied.
#[derive(Debug)]
pub struct WatchStream {
    current: Option<v1::Snapshot>,
    mesh: Arc<MeshConfig>,
    endpoints: Registry,
    anchors: TrustAnchors,
}

impl WatchStream {
    pub fn new(anchors: TrustAnchors) -> Self {
        WatchStream {
            current: None,
            mesh: Arc::default(),
            endpoints: Registry::default(),
            anchors,
        }
    }

    /// Receives one message. Err: it could not be placed, so the stream
    /// starts over (the next one begins with no snapshot, the mesh stays);
    /// Ok(Err): the snapshot was rejected and the previous config stays.
    pub fn receive(&mut self, msg: v1::Snapshot) -> anyhow::Result<anyhow::Result<()>> {
        let folded = crate::discovery::fold(
            self.current.as_ref(),
            msg,
            TRUST_DOMAIN,
            "default",
            &self.mesh,
            &self.endpoints,
        );
        let (snap, built) = match folded {
            Ok(f) => f,
            Err(e) => {
                self.current = None;
                return Err(e.into());
            }
        };
        self.current = Some(snap);
        let cfg = match built {
            Ok(cfg) => cfg,
            Err(e) => return Ok(Err(e.into())),
        };
        let anchors: Vec<_> = cfg
            .trust_anchors_der
            .iter()
            .map(|d| d.clone().into())
            .collect();
        // Refused anchors are logged and ours kept, as in the Watcher.
        if !anchors.is_empty() {
            let _ = self.anchors.replace(anchors);
        }
        self.mesh = Arc::new(cfg);
        self.endpoints.prune();
        Ok(Ok(()))
    }

    /// The config in force.
    pub fn mesh(&self) -> &MeshConfig {
        &self.mesh
    }

    /// The complete snapshot this stream holds.
    pub fn current(&self) -> Option<&v1::Snapshot> {
        self.current.as_ref()
    }
}

/// The mesh DNS server of a pod in `namespace`, answering from `snapshot`
/// (no upstream: what it does not answer would be relayed as is).
pub fn dns_server(snapshot: &v1::Snapshot, namespace: &str) -> anyhow::Result<DnsServer> {
    let cfg = MeshConfig::from_snapshot(
        snapshot,
        TRUST_DOMAIN,
        namespace,
        &MeshConfig::default(),
        &Registry::default(),
    )?;
    let mesh = crate::discovery::MeshState::fixed(cfg);
    Ok(DnsServer::new(Some(mesh), None, namespace.to_string()))
}

/// What the UDP and TCP servers send back for `query`; None: relayed upstream.
pub fn dns_answer(server: &DnsServer, query: &[u8]) -> Option<Vec<u8>> {
    server.answer(query)
}

/// Serves one plaintext HTTP/1 client connection on `io` as the inbound
/// listener does (`http::server::Server`, the one place client connections
/// get their limits, deadlines and observe layer), with `handle` in place of
/// the app-facing service.
pub async fn serve_http1<I, F, Fut>(io: I, handle: F) -> Result<(), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Body>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let server = Server::new(
        ServerLimits::default(),
        DefenceMetrics::default(),
        Direction::Inbound,
    );
    let observer = Arc::new(Observer {
        metrics: HttpMetrics::default(),
        access_log: None,
        tracing: None,
    });
    let scope = Scope::Inbound {
        dst: SocketAddr::from(([127, 0, 0, 1], 8080)),
        peer: None,
    };
    let svc = tower::service_fn(move |req| {
        let response = handle(req);
        async move { Ok::<_, Infallible>(response.await) }
    });
    server
        .serve(io, Proto::Http1, Client::App, svc, scope, observer)
        .await
}
