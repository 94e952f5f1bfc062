//! The control plane's Prometheus metrics.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Why a Certify call was refused.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reject {
    /// Missing, unknown or invalid token.
    Token,
    /// A token that has expired.
    TokenExpired,
    /// A token for another audience than Weft's.
    TokenAudience,
    /// A token not bound to a pod, or bound to one that is gone.
    TokenPod,
    /// A token whose pod runs as another service account.
    TokenServiceAccount,
    /// The CSR does not parse, is not signed by its key, or has the wrong SANs.
    BadCsr,
    /// The CSR asks for an identity the token does not prove.
    IdentityMismatch,
    Internal,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Token => "token",
            Reject::TokenExpired => "token_expired",
            Reject::TokenAudience => "token_audience",
            Reject::TokenPod => "token_pod",
            Reject::TokenServiceAccount => "token_service_account",
            Reject::BadCsr => "bad_csr",
            Reject::IdentityMismatch => "identity_mismatch",
            Reject::Internal => "internal",
        }
    }
}

impl EncodeLabelValue for Reject {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: Reject,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    issued: Counter,
    rejected: Family<ReasonLabels, Counter>,
    ca_expiry: Gauge,
    manifest_errors: Gauge,
    pushes: Counter,
    connected: Gauge,
    push_latency: Histogram,
    proxy_current: Family<ProxyLabels, Gauge>,
    watch_events: Family<KindLabels, Counter>,
    watch_restarts: Family<KindLabels, Counter>,
    watch_failures: Family<KindLabels, Counter>,
    watch_last_event: Family<KindLabels, Gauge>,
    leader: Gauge,
    status_writes: Family<KindLabels, Counter>,
    injections: Family<OutcomeLabels, Counter>,
    /// The control plane's own spans: exported and dropped.
    pub spans: weft_api::trace::ExportMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyLabels {
    namespace: String,
    pod: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let issued = Counter::default();
        let rejected = Family::<ReasonLabels, Counter>::default();
        let ca_expiry = Gauge::default();
        registry.register(
            "identity_certificates_issued",
            "Workload certificates issued by Certify",
            issued.clone(),
        );
        registry.register(
            "identity_certify_rejected",
            "Certify calls refused, by reason",
            rejected.clone(),
        );
        registry.register(
            "identity_ca_expiry_timestamp_seconds",
            "When the issuing CA certificate expires (Unix seconds)",
            ca_expiry.clone(),
        );
        let manifest_errors = Gauge::default();
        let pushes = Counter::default();
        let connected = Gauge::default();
        registry.register(
            "manifest_errors",
            "Manifest problems outstanding (see /errors on the admin server)",
            manifest_errors.clone(),
        );
        registry.register(
            "snapshot_pushes",
            "Snapshots sent to proxies",
            pushes.clone(),
        );
        registry.register(
            "connected_proxies",
            "Proxies with an open Watch stream",
            connected.clone(),
        );
        let push_latency = Histogram::new([
            5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 2000.0, 5000.0,
            10000.0,
        ]);
        registry.register(
            "push_latency_ms",
            "From a manifest change seen to every connected proxy acknowledging it, in milliseconds",
            push_latency.clone(),
        );
        let proxy_current = Family::<ProxyLabels, Gauge>::default();
        registry.register(
            "proxy_config_current",
            "1 when the proxy is connected and runs the current config version, else 0",
            proxy_current.clone(),
        );
        let watch_events = Family::<KindLabels, Counter>::default();
        let watch_restarts = Family::<KindLabels, Counter>::default();
        let watch_failures = Family::<KindLabels, Counter>::default();
        let watch_last_event = Family::<KindLabels, Gauge>::default();
        registry.register(
            "kube_watch_events",
            "Events received from the Kubernetes API, by kind",
            watch_events.clone(),
        );
        registry.register(
            "kube_watch_restarts",
            "Full lists of a kind (the first, and each relist after an expired watch or a reconnect)",
            watch_restarts.clone(),
        );
        registry.register(
            "kube_watch_failures",
            "Failed list or watch requests, by kind (retried with backoff)",
            watch_failures.clone(),
        );
        registry.register(
            "kube_watch_last_event_timestamp_seconds",
            "When the last event of a kind arrived (Unix seconds)",
            watch_last_event.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease (it writes statuses, the CA Secret and bundles)",
            leader.clone(),
        );
        let status_writes = Family::<KindLabels, Counter>::default();
        registry.register(
            "kube_status_writes",
            "Status updates written to the Kubernetes API, by kind",
            status_writes.clone(),
        );
        let injections = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "injector_reviews",
            "Pod admission reviews the injector answered, by outcome (injected, already_injected, opted_out, skipped, not_wanted, error)",
            injections.clone(),
        );
        let spans = weft_api::trace::ExportMetrics::default();
        spans.register(&mut registry);
        Metrics {
            injections,
            watch_events,
            watch_restarts,
            watch_failures,
            watch_last_event,
            leader,
            status_writes,
            registry,
            spans,
            issued,
            rejected,
            ca_expiry,
            manifest_errors,
            pushes,
            connected,
            push_latency,
            proxy_current,
        }
    }
}

impl Metrics {
    pub fn certify_issued(&self) {
        self.issued.inc();
    }

    pub fn certify_rejected(&self, reason: Reject) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn set_ca_expiry(&self, at: SystemTime) {
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.ca_expiry.set(secs as i64);
    }

    pub fn set_manifest_errors(&self, n: usize) {
        self.manifest_errors.set(n as i64);
    }

    pub fn snapshot_pushed(&self) {
        self.pushes.inc();
    }

    pub fn set_connected_proxies(&self, n: usize) {
        self.connected.set(n as i64);
    }

    pub fn push_landed(&self, took: std::time::Duration) {
        self.push_latency.observe(took.as_secs_f64() * 1000.0);
    }

    /// Refreshes the per-proxy sync gauges (at scrape time).
    pub fn set_proxy_sync(&self, proxies: impl IntoIterator<Item = (String, String, bool)>) {
        self.proxy_current.clear();
        for (namespace, pod, current) in proxies {
            self.proxy_current
                .get_or_create(&ProxyLabels { namespace, pod })
                .set(i64::from(current));
        }
    }

    pub fn watch_event(&self, kind: &'static str) {
        self.watch_events.get_or_create(&KindLabels { kind }).inc();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.watch_last_event
            .get_or_create(&KindLabels { kind })
            .set(now as i64);
    }

    pub fn watch_restarted(&self, kind: &'static str) {
        self.watch_restarts
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    pub fn watch_failed(&self, kind: &'static str) {
        self.watch_failures
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn status_written(&self, kind: &'static str) {
        self.status_writes.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn injection(&self, outcome: &'static str) {
        self.injections
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
