//! The control plane's Prometheus metrics.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why a Certify call was refused.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reject {
    /// Missing or unknown token.
    Token,
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
        Metrics {
            registry,
            issued,
            rejected,
            ca_expiry,
            manifest_errors,
            pushes,
            connected,
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

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
