//! Wires the control plane together: the source of truth (a manifest
//! directory, or the Kubernetes API), the CA, the Identity service, gRPC over
//! TLS with a serving certificate the CA issues to itself, and the admin
//! server. On Kubernetes also the leader election and what only the leader
//! writes (statuses, the CA Secret, trust bundles).

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

use crate::discovery::external::External;
use crate::discovery::grpc_routes::DiscoveryRoutes;
use crate::discovery::snapshot::MeshSettings;
use crate::discovery::source::{Source, State};
use crate::discovery::{DiscoveryService, Registry};
use crate::identity::ca::SharedCa;
use crate::identity::{BootstrapTokens, Ca, IdentityService, TokenVerifier};
use crate::kubernetes::{self, KubeSource, ca::CaSecret, leader::Elector, tokens::TokenReviewer};
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use tokio::sync::watch;

/// Where the model comes from.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// A directory of manifests (Services, Pods, HTTPRoutes, ...), watched.
    Manifests(PathBuf),
    /// The Kubernetes API (kubeconfig from `KUBECONFIG` or the pod's
    /// ServiceAccount).
    Kubernetes(Box<KubeConfig>),
}

#[derive(Clone, Debug)]
pub struct KubeConfig {
    /// Weft's own namespace: the Lease and the CA Secret live there.
    pub namespace: String,
    /// This replica's name in the Lease (the pod name).
    pub replica: String,
    /// The CA Secret's name (used unless the CA comes from files).
    pub ca_secret: String,
    /// How long an accepted ServiceAccount token is remembered.
    pub token_cache: Duration,
    /// Where the injector webhook listens; none: no webhook.
    pub webhook: Option<SocketAddr>,
    pub webhook_service: String,
    pub webhook_configuration: String,
    pub pod_ip: Option<std::net::IpAddr>,
    /// What the injector puts into pods.
    pub inject: crate::inject::Config,
}

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
    pub source: SourceConfig,
    pub mtls_mode: weft_api::v1::MtlsMode,
    /// What ports do when no AuthorizationPolicy decides (a Namespace's
    /// `weft.dev/default-authz` overrides it).
    pub default_authz: weft_api::v1::DefaultAuthz,
    pub opaque_ports: Vec<u16>,
    /// Extra roots for fetching `jwksUri`s.
    pub jwks_ca_file: Option<std::path::PathBuf>,
    /// How long a disconnected proxy stays listed (stale) before it is forgotten.
    pub stale_proxy_ttl: Duration,
    /// Quiet time that ends a burst of manifest changes.
    pub debounce: Duration,
    /// Where to export the control plane's own spans, if anywhere.
    pub otlp_endpoint: Option<String>,
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
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
        default_authz: cfg.default_authz,
        opaque_ports: cfg.opaque_ports.clone(),
    };
    let (ca, tokens, state, rotations) = match &cfg.source {
        SourceConfig::Manifests(dir) => {
            let ca = Arc::new(ArcSwap::from_pointee(load_ca_files(&cfg)?));
            let tokens: Arc<dyn TokenVerifier> =
                Arc::new(BootstrapTokens::load(&cfg.tokens, &cfg.trust_domain)?);
            let changed = Arc::new(tokio::sync::Notify::new());
            let external = External::new(cfg.jwks_ca_file.as_deref(), changed)?;
            external.spawn(None);
            let state = Source {
                dir: dir.clone(),
                settings: settings.clone(),
                trust_anchors_der: ca.load().roots().iter().map(|c| c.to_vec()).collect(),
                debounce: cfg.debounce,
                external,
            }
            .spawn(metrics.clone());
            (ca, tokens, state, None)
        }
        SourceConfig::Kubernetes(k) => start_kubernetes(&cfg, k, &settings, &metrics).await?,
    };
    metrics.set_ca_expiry(ca.load().not_after());
    let registry = Arc::new(Registry::new(cfg.stale_proxy_ttl));

    let admin = TcpListener::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("binding the admin server to {}", cfg.admin_listen))?;
    let admin_server = crate::admin::Admin::new(
        metrics.clone(),
        registry.clone(),
        state.clone(),
        &cfg.trust_domain,
    );
    tokio::spawn(admin_server.serve(admin));

    // The serving certificate: issued to ourselves, renewed well before expiry.
    let slot = CertSlot::default();
    let anchors = TrustAnchors::new(ca.load().roots().to_vec())?;
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
    // A rotated CA: trust its anchors and serve with a certificate it issued.
    if let Some(mut rotations) = rotations {
        let (ca, id, slot, lifetime, anchors) = (
            ca.clone(),
            cfg.identity.clone(),
            slot.clone(),
            cfg.cert_lifetime,
            anchors.clone(),
        );
        tokio::spawn(async move {
            while rotations.changed().await.is_ok() {
                let ders = ca.load().roots().to_vec();
                if let Err(e) = anchors.replace(ders) {
                    warn!(error = %e, "taking the rotated trust anchors");
                }
                if let Err(e) = renew_own_certificate(&ca, &id, lifetime, &slot) {
                    warn!(error = %e, "reissuing the control plane's certificate after a CA change");
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
        .add_service(DiscoveryRoutes::new(discovery))
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

/// The CA from `--ca-dir` or `--ca-cert`/`--ca-key`.
fn load_ca_files(cfg: &Config) -> anyhow::Result<Ca> {
    Ok(match &cfg.ca {
        CaSource::Dir(dir) => Ca::load_or_generate(dir, &cfg.trust_domain)?,
        CaSource::Files { cert, key, roots } => Ca::load(cert, key, roots.as_deref())?,
    })
}

/// On Kubernetes: the leader election, the CA (from files the user gave, or
/// the CA Secret), the reflectors, TokenReview, and the leader's writers.
async fn start_kubernetes(
    cfg: &Config,
    k: &KubeConfig,
    settings: &MeshSettings,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Started> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in a pod: its ServiceAccount; elsewhere: KUBECONFIG or ~/.kube/config)")?;
    info!(namespace = %k.namespace, replica = %k.replica, "on Kubernetes");
    let leader =
        Elector::new(client.clone(), &k.namespace, &k.replica).spawn(metrics.clone(), shutdown());
    let (anchors_tx, anchors_rx);
    let ca: SharedCa = match &cfg.ca {
        CaSource::Files { .. } => {
            let ca = Arc::new(ArcSwap::from_pointee(load_ca_files(cfg)?));
            let roots = ca.load().roots().iter().map(|c| c.to_vec()).collect();
            (anchors_tx, anchors_rx) = watch::channel(roots);
            drop(anchors_tx);
            ca
        }
        CaSource::Dir(_) => {
            let secret = CaSecret::new(
                client.clone(),
                &k.namespace,
                &k.ca_secret,
                &cfg.trust_domain,
            );
            let (first, version) = secret.load_or_create(&leader).await?;
            let roots = first.roots().iter().map(|c| c.to_vec()).collect();
            let ca = Arc::new(ArcSwap::from_pointee(first));
            (anchors_tx, anchors_rx) = watch::channel(roots);
            secret.spawn_reload(ca.clone(), version, anchors_tx, metrics.clone());
            ca
        }
    };
    let (state, stores) = KubeSource {
        client: client.clone(),
        settings: settings.clone(),
        anchors: anchors_rx.clone(),
        debounce: cfg.debounce,
        jwks_ca_file: cfg.jwks_ca_file.clone(),
    }
    .spawn(metrics.clone())
    .await?;
    let tokens: Arc<dyn TokenVerifier> = Arc::new(TokenReviewer::new(
        client.clone(),
        &cfg.trust_domain,
        Some(stores.pods.clone()),
        k.token_cache,
    ));
    kubernetes::status::spawn(
        client.clone(),
        stores.clone(),
        state.clone(),
        leader.clone(),
        metrics.clone(),
    );
    if let Some(addr) = k.webhook {
        let (dns, ips) =
            crate::inject::webhook::serving_names(&k.webhook_service, &k.namespace, k.pod_ip);
        let cert =
            crate::inject::webhook::spawn_certificate(ca.clone(), dns, ips, cfg.cert_lifetime)?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the injector webhook to {addr}"))?;
        let webhook = crate::inject::webhook::Webhook {
            cfg: Arc::new(k.inject.clone()),
            namespaces: stores.namespaces.clone(),
            metrics: metrics.clone(),
        };
        tokio::spawn(async move {
            if let Err(e) = webhook.serve(listener, cert).await {
                warn!(error = %e, "the injector webhook stopped");
            }
        });
        kubernetes::ca::spawn_webhook_bundle(
            client.clone(),
            k.webhook_configuration.clone(),
            ca.clone(),
            leader.clone(),
            metrics.clone(),
        );
    }
    kubernetes::ca::spawn_bundles(client, stores, ca.clone(), leader, metrics.clone());
    Ok((ca, tokens, state, Some(anchors_rx)))
}

/// The CA, the token verifier, the published model, and (on Kubernetes) the
/// trust anchors as they rotate.
type Started = (
    SharedCa,
    Arc<dyn TokenVerifier>,
    watch::Receiver<Arc<State>>,
    Option<watch::Receiver<Vec<Vec<u8>>>>,
);

fn renew_own_certificate(
    ca: &SharedCa,
    id: &SpiffeId,
    lifetime: Duration,
    slot: &CertSlot,
) -> anyhow::Result<()> {
    let (issued, key) = ca.load().issue(id, lifetime)?;
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
