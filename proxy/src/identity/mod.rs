//! This proxy's workload identity: its certificate (swapped in place on
//! renewal), the trust anchors it verifies peers with, and where both come
//! from — the control plane's Certify API, or PEM files on disk.

mod certify;
mod files;
mod metrics;

use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use weft_api::SpiffeId;
use weft_api::tls::{CertSlot, TrustAnchors};

pub use certify::{Certifier, ControlPlane, TokenSource};
pub use files::FileIdentity;
pub use metrics::IdentityMetrics;

/// What the data path needs of the identity: shared, cheap to clone.
#[derive(Clone, Debug)]
pub struct Identity {
    pub id: SpiffeId,
    pub cert: CertSlot,
    pub anchors: TrustAnchors,
    pub metrics: IdentityMetrics,
}

impl Identity {
    pub fn new(id: SpiffeId, anchors: TrustAnchors) -> Self {
        Identity {
            id,
            cert: CertSlot::default(),
            anchors,
            metrics: IdentityMetrics::default(),
        }
    }

    pub fn trust_domain(&self) -> &str {
        self.id.trust_domain()
    }
}

/// Reads PEM certificates from a file, naming the file when it fails.
pub fn read_pem_certs(path: &std::path::Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: not PEM certificates: {e}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no PEM CERTIFICATE block",
        path.display()
    );
    Ok(certs)
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// When a certificate stops being valid, from its DER.
fn not_after(leaf: &[u8]) -> Option<SystemTime> {
    let (_, c) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let secs = c.validity().not_after.timestamp();
    Some(UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64))
}
