//! Identity metrics: certificate expiry and renewals.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct IdentityMetrics {
    expiry: Gauge,
    renewals: Family<ResultLabels, Counter>,
}

impl IdentityMetrics {
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "identity_cert_expiry_timestamp_seconds",
            "When the current workload certificate expires (Unix seconds)",
            self.expiry.clone(),
        );
        reg.register(
            "identity_cert_renewals",
            "Certificate renewals (from the control plane or from files), by result",
            self.renewals.clone(),
        );
    }

    pub fn renewed(&self, expiry_unix: i64) {
        self.expiry.set(expiry_unix);
        self.renewals
            .get_or_create(&ResultLabels { result: "ok" })
            .inc();
    }

    pub fn renewal_failed(&self) {
        self.renewals
            .get_or_create(&ResultLabels { result: "failed" })
            .inc();
    }
}
