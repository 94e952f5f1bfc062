//! Wires the control plane together: CA, Identity service, gRPC over TLS with
//! a serving certificate the CA issues to itself, and the admin server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tracing::{info, warn};
use weft_api::SpiffeId;
use weft_api::tls::{self, CertSlot, TrustAnchors};
use weft_api::v1::identity_server::IdentityServer;

use weft_api::v1::discovery_server::DiscoveryServer;

use crate::discovery::snapshot::MeshSettings;
use crate::discovery::source::Source;
use crate::discovery::{DiscoveryService, Registry};
use crate::identity::{BootstrapTokens, Ca, IdentityService, TokenVerifier};
use crate::metrics::Metrics;

/// Where the CA comes from.
#[derive(Clone, Debug)]
pub enum CaSource {
    /// A directory holding ca.crt/ca.key (and maybe roots.crt), generated there
    /// on first start when empty.
    Dir(PathBuf),
    /// PEM files the user provides; never generated.
    Files {
        cert: PathBuf,
        key: PathBuf,
        roots: Option<PathBuf>,
    },
}

#[derive(Clone, Debug)]
pub struct Config {
    pub trust_domain: String,
    pub ca: CaSource,
    pub tokens: PathBuf,
    pub cert_lifetime: Duration,
    pub grpc_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The control plane's own identity; proxies verify it.
    pub identity: SpiffeId,
    /// The directory of manifests (Services, Pods, HTTPRoutes).
    pub manifests: PathBuf,
    pub mtls_mode: weft_api::v1::MtlsMode,
    pub opaque_ports: Vec<u16>,
    /// Quiet time that ends a burst of manifest changes.
    pub debounce: Duration,
    /// Where to export the control plane's own spans, if anywhere.
    pub otlp_endpoint: Option<String>,
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let ca = Arc::new(match &cfg.ca {
        CaSource::Dir(dir) => Ca::load_or_generate(dir, &cfg.trust_domain)?,
        CaSource::Files { cert, key, roots } => Ca::load(cert, key, roots.as_deref())?,
    });
    let tokens: Arc<dyn TokenVerifier> =
        Arc::new(BootstrapTokens::load(&cfg.tokens, &cfg.trust_domain)?);
    let metrics = Arc::new(Metrics::default());
    metrics.set_ca_expiry(ca.not_after());
    let tracing_export = match &cfg.otlp_endpoint {
        Some(e) => Some(Arc::new(weft_api::trace::Tracing::start(
            e,
            1.0,
            cfg.identity.to_string(),
            metrics.spans.clone(),
        )?)),
        None => None,
    };

    let settings = MeshSettings {
        trust_domain: cfg.trust_domain.clone(),
        mtls_mode: cfg.mtls_mode,
        opaque_ports: cfg.opaque_ports.clone(),
    };
    let state = Source {
        dir: cfg.manifests.clone(),
        settings: settings.clone(),
        trust_anchors_der: ca.roots().iter().map(|c| c.to_vec()).collect(),
        debounce: cfg.debounce,
    }
    .spawn(metrics.clone());
    let registry = Arc::new(Registry::default());

    let admin = TcpListener::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("binding the admin server to {}", cfg.admin_listen))?;
    let admin_server = crate::admin::Admin {
        metrics: metrics.clone(),
        registry: registry.clone(),
        state: state.clone(),
    };
    tokio::spawn(admin_server.serve(admin));

    // The serving certificate: issued to ourselves, renewed well before expiry.
    let slot = CertSlot::default();
    let anchors = TrustAnchors::new(ca.roots().to_vec())?;
    renew_own_certificate(&ca, &cfg.identity, cfg.cert_lifetime, &slot)?;
    {
        let (ca, id, slot, lifetime) = (
            ca.clone(),
            cfg.identity.clone(),
            slot.clone(),
            cfg.cert_lifetime,
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lifetime.mul_f64(0.5)).await;
                if let Err(e) = renew_own_certificate(&ca, &id, lifetime, &slot) {
                    warn!(error = %e, "renewing the control plane's own certificate");
                }
            }
        });
    }
    let tls_config = tls::server_config(slot, anchors, &cfg.trust_domain, false, &[tls::ALPN_H2])?;

    let discovery = DiscoveryService {
        state,
        settings,
        registry,
        metrics: metrics.clone(),
        tracing: tracing_export.clone(),
    };
    let identity = IdentityService {
        ca: ca.clone(),
        tokens,
        lifetime: cfg.cert_lifetime,
        metrics,
        tracing: tracing_export.clone(),
    };
    let grpc = TcpListener::bind(cfg.grpc_listen)
        .await
        .with_context(|| format!("binding the gRPC server to {}", cfg.grpc_listen))?;
    info!(grpc = %cfg.grpc_listen, admin = %cfg.admin_listen, identity = %cfg.identity, "control plane serving");
    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity))
        .add_service(DiscoveryServer::new(discovery))
        .serve_with_incoming_shutdown(
            crate::grpc::incoming(grpc, Arc::new(tls_config)),
            shutdown(),
        )
        .await
        .context("the gRPC server failed")?;
    if let Some(t) = tracing_export {
        let _ = tokio::task::spawn_blocking(move || t.flush()).await;
    }
    info!("control plane stopped");
    Ok(())
}

fn renew_own_certificate(
    ca: &Ca,
    id: &SpiffeId,
    lifetime: Duration,
    slot: &CertSlot,
) -> anyhow::Result<()> {
    let (issued, key) = ca.issue(id, lifetime)?;
    let mut chain = vec![issued.leaf];
    chain.extend(issued.intermediates);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    slot.set(
        chain.into_iter().map(CertificateDer::into_owned).collect(),
        key,
    )?;
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
