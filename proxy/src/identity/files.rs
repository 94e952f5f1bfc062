//! Identity from PEM files (certificate chain, key, trust anchors), reloaded
//! when they change: for running without a control plane, or with an external
//! issuer such as cert-manager or SPIRE writing the files.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use tracing::{info, warn};

use super::{Identity, not_after, read_pem_certs, unix_secs};

#[derive(Clone, Debug)]
pub struct FileIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub anchors: PathBuf,
}

const POLL: Duration = Duration::from_secs(1);

fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl FileIdentity {
    /// Loads the files into `identity`; on error nothing changes.
    pub fn load(&self, identity: &Identity) -> anyhow::Result<()> {
        let chain = read_pem_certs(&self.cert)?;
        let key_pem =
            std::fs::read(&self.key).with_context(|| format!("reading {}", self.key.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| anyhow::anyhow!("{}: not a PEM private key: {e}", self.key.display()))?;
        let anchors = read_pem_certs(&self.anchors)?;
        let ids = weft_api::SpiffeId::from_certificate(&chain[0]);
        anyhow::ensure!(
            ids.contains(&identity.id),
            "{} names {:?}, not this proxy's identity {}",
            self.cert.display(),
            ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
            identity.id
        );
        let expiry = not_after(&chain[0]);
        identity
            .anchors
            .replace(anchors)
            .with_context(|| format!("trust anchors in {}", self.anchors.display()))?;
        identity
            .cert
            .set(chain, key)
            .with_context(|| format!("{} with {}", self.cert.display(), self.key.display()))?;
        identity.metrics.renewed(expiry.map(unix_secs).unwrap_or(0));
        Ok(())
    }

    /// Reloads whenever one of the files changes; a broken update is logged
    /// and the identity in hand keeps serving.
    pub async fn watch(self, identity: Identity) {
        let stamps = |f: &FileIdentity| [stamp(&f.cert), stamp(&f.key), stamp(&f.anchors)];
        let mut seen = stamps(&self);
        loop {
            tokio::time::sleep(POLL).await;
            let now = stamps(&self);
            if now == seen {
                continue;
            }
            seen = now;
            match self.load(&identity) {
                Ok(()) => info!(cert = %self.cert.display(), "identity files reloaded"),
                Err(e) => {
                    identity.metrics.renewal_failed();
                    warn!(error = %format!("{e:#}"), "identity files changed but are not usable; keeping the current identity");
                }
            }
        }
    }
}
