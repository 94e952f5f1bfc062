//! Sidecar injection: what a meshed pod gets, in one place that both the
//! admission webhook ([`webhook`]) and `weftctl inject` ([`workloads`]) use.
//!
//! A pod gets:
//! - the init container `weft-init` (`weft-proxy init`, NET_ADMIN and NET_RAW
//!   only), with skip ports from its annotations;
//! - the proxy, by default as a native sidecar (an init container with
//!   `restartPolicy: Always` and a startup probe on `/ready`, so the app
//!   starts once the proxy holds its certificate and first snapshot, and Jobs
//!   finish), or as the first container with `weft.dev/sidecar: classic`
//!   (clusters older than 1.29); as UID 2420, non-root, read-only root,
//!   every capability dropped, seccomp `RuntimeDefault`;
//! - one projected volume with its ServiceAccount token for audience
//!   `weft.dev` and the `weft-ca-bundle` ConfigMap's trust anchors;
//! - the app's HTTP probes pointed at the proxy's admin port, which forwards
//!   each to the app on the pod's loopback (so strict mTLS never fails a
//!   kubelet probe); the originals are kept in an annotation for `uninject`;
//! - `kubectl.kubernetes.io/default-container` and Prometheus scrape
//!   annotations, where the pod sets none.
//!
//! Injecting an injected pod changes nothing; a pod that cannot be injected
//! (`hostNetwork: true`) is left as it is, with an annotation saying why.
//! The pod is edited as JSON, so fields this code does not know (a newer
//! Kubernetes') pass through untouched.

pub mod pod;
pub mod webhook;
pub mod workloads;

pub use pod::{Outcome, inject, uninject};

/// Annotations and labels the injector reads and writes.
pub mod keys {
    /// `enabled` or `disabled`, on a pod (or `enabled` as a namespace label).
    pub const INJECT: &str = "weft.dev/inject";
    /// Set on an injected pod: the Weft version that injected it.
    pub const INJECTED: &str = "weft.dev/injected";
    /// Why a pod that asked for injection was left alone.
    pub const SKIPPED: &str = "weft.dev/inject-skipped";
    /// `native` (default) or `classic`.
    pub const SIDECAR: &str = "weft.dev/sidecar";
    pub const SKIP_INBOUND: &str = "weft.dev/skip-inbound-ports";
    pub const SKIP_OUTBOUND: &str = "weft.dev/skip-outbound-ports";
    pub const OPAQUE: &str = "weft.dev/opaque-ports";
    pub const CPU_REQUEST: &str = "weft.dev/proxy-cpu-request";
    pub const CPU_LIMIT: &str = "weft.dev/proxy-cpu-limit";
    pub const MEMORY_REQUEST: &str = "weft.dev/proxy-memory-request";
    pub const MEMORY_LIMIT: &str = "weft.dev/proxy-memory-limit";
    pub const LOG_LEVEL: &str = "weft.dev/proxy-log-level";
    /// The app probes before injection (JSON), for `uninject`.
    pub const ORIGINAL_PROBES: &str = "weft.dev/original-probes";
    /// Annotations the injector added (comma-separated), for `uninject`.
    pub const ADDED: &str = "weft.dev/injected-annotations";
    pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
}

/// What the injector puts into pods.
#[derive(Clone, Debug)]
pub struct Config {
    /// The proxy image (`weft-proxy`).
    pub proxy_image: String,
    /// The init image (`weft-init`: the proxy binary with iptables).
    pub init_image: String,
    pub image_pull_policy: Option<String>,
    /// Where proxies reach the control plane (host:port).
    pub control_plane: String,
    pub control_plane_identity: String,
    pub trust_domain: String,
    /// Where proxies send spans, if anywhere.
    pub otlp_endpoint: Option<String>,
    pub log_level: String,
    /// Weft's own namespace: never injected.
    pub weft_namespace: String,
    /// Written to `weft.dev/injected`.
    pub version: String,
}

/// The injector's settings as flags, shared by `weft-control` (the webhook)
/// and `weftctl inject`.
#[derive(Clone, Debug, clap::Args)]
pub struct Flags {
    /// The proxy image injected pods run.
    #[arg(long, env = "WEFT_PROXY_IMAGE", default_value = concat!("weft-proxy:", env!("CARGO_PKG_VERSION")))]
    pub proxy_image: String,
    /// The init image (the proxy binary with iptables) that sets up
    /// interception.
    #[arg(long, env = "WEFT_INIT_IMAGE", default_value = concat!("weft-init:", env!("CARGO_PKG_VERSION")))]
    pub init_image: String,
    /// imagePullPolicy for both (default: Kubernetes' own).
    #[arg(long, env = "WEFT_IMAGE_PULL_POLICY")]
    pub image_pull_policy: Option<String>,
    /// Where injected proxies reach the control plane's gRPC (host:port).
    #[arg(
        long,
        env = "WEFT_INJECT_CONTROL_PLANE",
        default_value = "weft-control.weft-system.svc.cluster.local:8090"
    )]
    pub control_plane_address: String,
    /// Where injected proxies export spans (OTLP/gRPC), e.g.
    /// `http://jaeger.weft-system.svc.cluster.local:4317`.
    #[arg(long, env = "WEFT_INJECT_OTLP_ENDPOINT")]
    pub proxy_otlp_endpoint: Option<String>,
    /// Injected proxies' log filter (a pod's `weft.dev/proxy-log-level`
    /// overrides it).
    #[arg(long, env = "WEFT_INJECT_LOG", default_value = "info")]
    pub proxy_log_level: String,
}

impl Flags {
    /// The injector's config for a mesh with `trust_domain`, whose control
    /// plane runs as `identity` in `namespace`.
    pub fn config(&self, trust_domain: &str, identity: &str, namespace: &str) -> Config {
        Config {
            proxy_image: self.proxy_image.clone(),
            init_image: self.init_image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            control_plane: self.control_plane_address.clone(),
            control_plane_identity: identity.into(),
            trust_domain: trust_domain.into(),
            otlp_endpoint: self.proxy_otlp_endpoint.clone(),
            log_level: self.proxy_log_level.clone(),
            weft_namespace: namespace.into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION").to_string();
        Config {
            proxy_image: format!("weft-proxy:{version}"),
            init_image: format!("weft-init:{version}"),
            image_pull_policy: None,
            control_plane: "weft-control.weft-system.svc.cluster.local:8090".into(),
            control_plane_identity: "spiffe://cluster.local/ns/weft-system/sa/weft-control".into(),
            trust_domain: weft_api::defaults::TRUST_DOMAIN.into(),
            otlp_endpoint: None,
            log_level: "info".into(),
            weft_namespace: "weft-system".into(),
            version,
        }
    }
}
