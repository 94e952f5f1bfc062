//! The names an installed Weft has (what `k8s/base` and `weftctl install`
//! create), in one place: `weftctl check` looks for exactly these.

/// Weft's namespace (`--namespace` overrides it).
pub const NAMESPACE: &str = "weft-system";
/// The control plane's Deployment, Service, ServiceAccount, Lease and
/// PodDisruptionBudget all carry this name.
pub const CONTROL: &str = "weft-control";
/// The label the control plane's pods carry (`app.kubernetes.io/name`).
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// The Service's ports, by name.
pub const PORT_GRPC: &str = "grpc";
pub const PORT_WEBHOOK: &str = "webhook";
pub const PORT_ADMIN: &str = "admin";
/// The Service port the API server calls the injector on, and the path.
pub const WEBHOOK_SERVICE_PORT: i32 = 443;
pub const WEBHOOK_PATH: &str = "/inject";
/// The MutatingWebhookConfiguration and its one webhook.
pub const WEBHOOK_CONFIGURATION: &str = "weft-injector";
pub const WEBHOOK: &str = "inject.weft.dev";
/// The mesh CA's Secret (cert-manager's layout) and its keys.
pub const CA_SECRET: &str = "weft-ca";
pub const CA_ISSUER_KEY: &str = "tls.crt";
pub const CA_ANCHORS_KEY: &str = "ca.crt";
/// The leader's Lease.
pub const LEASE: &str = crate::kubernetes::leader::LEASE;
/// The CRDs the control plane watches.
pub const CRDS: [&str; 7] = [
    "trafficpolicies.weft.dev",
    "authorizationpolicies.weft.dev",
    "faultinjections.weft.dev",
    "requestauthentications.weft.dev",
    "httproutes.gateway.networking.k8s.io",
    "grpcroutes.gateway.networking.k8s.io",
    "referencegrants.gateway.networking.k8s.io",
];
/// The control plane's admin `/status` through the API server's service
/// proxy (`{ns}` is Weft's namespace).
pub fn status_via_service(namespace: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/services/http:{CONTROL}:{PORT_ADMIN}/proxy/status")
}
/// The same from one control-plane pod through the pod proxy: each replica
/// knows only the proxies connected to it.
pub fn status_via_pod(namespace: &str, pod: &str) -> String {
    format!(
        "/api/v1/namespaces/{namespace}/pods/http:{pod}:{}/proxy/status",
        weft_api::defaults::CONTROL_ADMIN_PORT
    )
}
/// Where a server-side dry run of an injectable pod is made, to see the
/// API server call the injector.
pub const DRY_RUN_NAMESPACE: &str = "default";

/// What `weftctl check --pre` asks a SelfSubjectAccessReview about: the
/// objects an install creates, as (API group, resource, namespaced).
pub const INSTALL_PERMISSIONS: [(&str, &str, bool); 11] = [
    ("", "namespaces", false),
    ("apiextensions.k8s.io", "customresourcedefinitions", false),
    ("rbac.authorization.k8s.io", "clusterroles", false),
    ("rbac.authorization.k8s.io", "clusterrolebindings", false),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        false,
    ),
    ("", "serviceaccounts", true),
    ("rbac.authorization.k8s.io", "roles", true),
    ("rbac.authorization.k8s.io", "rolebindings", true),
    ("apps", "deployments", true),
    ("", "services", true),
    ("policy", "poddisruptionbudgets", true),
];

/// The oldest Kubernetes with native sidecars on by default
/// (`SidecarContainers`, beta in 1.29).
pub const NATIVE_SIDECARS: (u32, u32) = (1, 29);
/// A CA closer than this to its end fails the check.
pub const CA_MARGIN_DAYS: i64 = 30;
