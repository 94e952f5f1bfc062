//! `weft-control`: the control plane's server binary.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use weft_api::{SpiffeId, defaults, log};
use weft_control::server::{self, CaSource, Config, KubeConfig, SourceConfig};

/// jemalloc, with its background thread returning freed pages: after a
/// burst (a thousand proxies reconnecting, pods churning) the control
/// plane's memory comes back down instead of staying at its peak.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// This machine's name, or a random one: a replica's name in the Lease.
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| format!("weft-control-{:08x}", rand::random::<u32>()))
}

#[derive(Debug, Parser)]
#[command(
    name = "weft-control",
    version,
    about = "The Weft control plane: mesh CA, identity, discovery and status"
)]
struct Cli {
    /// The mesh's trust domain.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = defaults::TRUST_DOMAIN)]
    trust_domain: String,

    /// Directory of the mesh CA (ca.crt, ca.key, optional roots.crt); a new CA
    /// is generated there when it holds neither file.
    #[arg(long, env = "WEFT_CA_DIR", default_value = "/var/lib/weft/ca", conflicts_with_all = ["ca_cert", "ca_key"])]
    ca_dir: PathBuf,

    /// Bring your own CA: the issuer certificate (PEM). Needs --ca-key.
    #[arg(long, env = "WEFT_CA_CERT", requires = "ca_key")]
    ca_cert: Option<PathBuf>,

    /// Bring your own CA: the issuer's private key (PEM).
    #[arg(long, env = "WEFT_CA_KEY", requires = "ca_cert")]
    ca_key: Option<PathBuf>,

    /// Trust anchors to hand to proxies (PEM, several during a root rotation);
    /// default: the issuer certificate.
    #[arg(long, env = "WEFT_CA_ROOTS", requires = "ca_cert")]
    ca_roots: Option<PathBuf>,

    /// Bootstrap tokens (local mode): which token proves which namespace and
    /// service account.
    #[arg(long, env = "WEFT_TOKENS", default_value = "/etc/weft/tokens.yaml")]
    tokens: PathBuf,

    /// Lifetime of issued workload certificates.
    #[arg(long, env = "WEFT_CERT_LIFETIME", default_value = "24h", value_parser = weft_api::duration::parse)]
    cert_lifetime: Duration,

    /// gRPC (Certify) over TLS.
    #[arg(long, env = "WEFT_GRPC_LISTEN", default_value_t = SocketAddr::from(([0, 0, 0, 0], defaults::CONTROL_GRPC_PORT)))]
    grpc_listen: SocketAddr,

    /// Admin server (/live, /ready, /metrics).
    #[arg(long, env = "WEFT_ADMIN_LISTEN", default_value_t = SocketAddr::from(([0, 0, 0, 0], defaults::CONTROL_ADMIN_PORT)))]
    admin_listen: SocketAddr,

    /// The control plane's own identity (proxies check it).
    #[arg(
        long,
        env = "WEFT_IDENTITY",
        default_value = "spiffe://cluster.local/ns/weft-system/sa/weft-control"
    )]
    identity: SpiffeId,

    /// Where the mesh's Services, Pods, routes and policies come from: the
    /// Kubernetes API, or a directory of manifests. Default: `kubernetes` in
    /// a pod (KUBERNETES_SERVICE_HOST is set), `manifests` elsewhere.
    #[arg(long, env = "WEFT_SOURCE", value_enum)]
    source: Option<SourceKind>,

    /// The directory of manifests (Services, Pods, HTTPRoutes; *.yaml, read
    /// recursively and watched for changes), with `--source manifests`.
    #[arg(long, env = "WEFT_MANIFESTS", default_value = "/etc/weft/manifests")]
    manifests: PathBuf,

    /// Weft's own namespace (the leader Lease and the CA Secret live there),
    /// with `--source kubernetes`.
    #[arg(long, env = "WEFT_NAMESPACE", default_value = "weft-system")]
    namespace: String,

    /// This replica's name in the leader Lease; default: the pod's name
    /// (POD_NAME) or the host name.
    #[arg(long, env = "POD_NAME")]
    replica: Option<String>,

    /// The Secret holding the mesh CA (tls.crt, tls.key, ca.crt), created by
    /// the leader when missing; unless --ca-cert/--ca-key give the CA.
    #[arg(long, env = "WEFT_CA_SECRET", default_value = "weft-ca")]
    ca_secret: String,

    /// How long an accepted ServiceAccount token is remembered (TokenReview
    /// results).
    #[arg(long, env = "WEFT_TOKEN_CACHE", default_value = "30s", value_parser = weft_api::duration::parse)]
    token_cache: Duration,

    /// The injector webhook (HTTPS), with `--source kubernetes`; `off` turns
    /// it off.
    #[arg(long, env = "WEFT_WEBHOOK_LISTEN", default_value = "0.0.0.0:9443")]
    webhook_listen: String,

    /// The Service the API server reaches the webhook through: its DNS names
    /// go into the webhook's certificate (with POD_IP, when set).
    #[arg(long, env = "WEFT_WEBHOOK_SERVICE", default_value = "weft-control")]
    webhook_service: String,

    /// The MutatingWebhookConfiguration whose caBundle the leader keeps equal
    /// to the mesh's trust anchors.
    #[arg(
        long,
        env = "WEFT_WEBHOOK_CONFIGURATION",
        default_value = "weft-injector"
    )]
    webhook_configuration: String,

    /// This pod's IP (downward API), added to the webhook's certificate.
    #[arg(long, env = "POD_IP")]
    pod_ip: Option<std::net::IpAddr>,

    #[command(flatten)]
    inject: weft_control::inject::Flags,

    /// The mesh-wide inbound mTLS mode; a Pod's `weft.dev/mtls-mode`
    /// annotation overrides it.
    #[arg(long, env = "WEFT_MTLS_MODE", value_enum, default_value_t = Mode::Permissive)]
    mtls_mode: Mode,

    /// What a pod's ports do when no AuthorizationPolicy decides: `allow`,
    /// `all-authenticated` or `deny`; a Namespace's
    /// `weft.dev/default-authz` annotation overrides it.
    #[arg(long, env = "WEFT_DEFAULT_AUTHZ", value_enum, default_value_t = DefaultAuthz::Allow)]
    default_authz: DefaultAuthz,

    /// Extra CA certificates (PEM) trusted when fetching RequestAuthentication
    /// `jwksUri`s, next to the system's roots.
    #[arg(long, env = "WEFT_JWKS_CA_FILE")]
    jwks_ca_file: Option<PathBuf>,

    /// How long a proxy that disconnected stays listed (as stale, in
    /// `weftctl status` and `/proxies`) before it is forgotten.
    #[arg(long, env = "WEFT_STALE_PROXY_TTL", default_value = "10m", value_parser = weft_api::duration::parse)]
    stale_proxy_ttl: Duration,

    /// Ports never sniffed (server-speaks-first protocols), mesh-wide.
    #[arg(long, env = "WEFT_OPAQUE_PORTS", value_delimiter = ',', default_values_t = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211])]
    opaque_ports: Vec<u16>,

    /// Quiet time that ends a burst of manifest changes before one push.
    #[arg(long, env = "WEFT_DEBOUNCE", default_value = "100ms", value_parser = weft_api::duration::parse)]
    debounce: Duration,

    /// Export the control plane's own spans (Certify, pushes) over OTLP/gRPC
    /// to this collector, e.g. `http://jaeger:4317`.
    #[arg(long, env = "WEFT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,

    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    log_level: String,

    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value_t)]
    log_format: log::LogFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum SourceKind {
    Kubernetes,
    Manifests,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Mode {
    Permissive,
    Strict,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum DefaultAuthz {
    Allow,
    AllAuthenticated,
    Deny,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = log::init(cli.log_format, &cli.log_level) {
        eprintln!("weft-control: {e:#}");
        return ExitCode::from(2);
    }
    weft_api::tls::install_default_provider();
    let ca = match (cli.ca_cert, cli.ca_key) {
        (Some(cert), Some(key)) => CaSource::Files {
            cert,
            key,
            roots: cli.ca_roots,
        },
        _ => CaSource::Dir(cli.ca_dir),
    };
    let inject_cfg =
        cli.inject
            .config(&cli.trust_domain, &cli.identity.to_string(), &cli.namespace);
    let cfg = Config {
        trust_domain: cli.trust_domain,
        ca,
        tokens: cli.tokens,
        cert_lifetime: cli.cert_lifetime,
        grpc_listen: cli.grpc_listen,
        admin_listen: cli.admin_listen,
        identity: cli.identity,
        source: match cli.source.unwrap_or(
            if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
                SourceKind::Kubernetes
            } else {
                SourceKind::Manifests
            },
        ) {
            SourceKind::Manifests => SourceConfig::Manifests(cli.manifests),
            SourceKind::Kubernetes => SourceConfig::Kubernetes(Box::new(KubeConfig {
                namespace: cli.namespace,
                replica: cli.replica.unwrap_or_else(hostname),
                ca_secret: cli.ca_secret,
                token_cache: cli.token_cache,
                webhook: (cli.webhook_listen != "off")
                    .then(|| cli.webhook_listen.parse())
                    .transpose()
                    .unwrap_or_else(|e| {
                        eprintln!(
                            "weft-control: --webhook-listen `{}` is not an address (or `off`): {e}",
                            cli.webhook_listen
                        );
                        std::process::exit(2)
                    }),
                webhook_service: cli.webhook_service,
                webhook_configuration: cli.webhook_configuration,
                pod_ip: cli.pod_ip,
                inject: inject_cfg,
            })),
        },
        mtls_mode: match cli.mtls_mode {
            Mode::Permissive => weft_api::v1::MtlsMode::Permissive,
            Mode::Strict => weft_api::v1::MtlsMode::Strict,
        },
        default_authz: match cli.default_authz {
            DefaultAuthz::Allow => weft_api::v1::DefaultAuthz::Allow,
            DefaultAuthz::AllAuthenticated => weft_api::v1::DefaultAuthz::AllAuthenticated,
            DefaultAuthz::Deny => weft_api::v1::DefaultAuthz::Deny,
        },
        opaque_ports: cli.opaque_ports,
        jwks_ca_file: cli.jwks_ca_file,
        stale_proxy_ttl: cli.stale_proxy_ttl,
        debounce: cli.debounce,
        otlp_endpoint: cli.otlp_endpoint,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-control: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(server::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}
