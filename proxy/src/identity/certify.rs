//! Getting and renewing the workload certificate from the control plane.
//!
//! A fresh ECDSA P-256 key is made in memory for every certificate (never
//! written anywhere); the CSR carries the workload's SPIFFE ID; renewal runs at
//! about 70% of the lifetime with jitter. When the control plane cannot be
//! reached, retries back off exponentially (capped, and never longer than a
//! quarter of what is left of the current certificate) while the certificate
//! in hand keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tonic::transport::Channel;
use tracing::{info, warn};
use weft_api::SpiffeId;
use weft_api::tls;
use weft_api::v1::CertifyRequest;
use weft_api::v1::identity_client::IdentityClient;

use super::{Identity, unix_secs};

/// Where the control plane is and who it must prove to be.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// `host:port`; resolved at every connection attempt.
    pub addr: String,
    pub identity: SpiffeId,
}

/// The proof of identity presented to Certify.
#[derive(Clone, Debug)]
pub enum TokenSource {
    Value(String),
    /// Reread at every call: Kubernetes rotates projected tokens.
    File(PathBuf),
}

impl TokenSource {
    fn read(&self) -> anyhow::Result<String> {
        match self {
            TokenSource::Value(v) => Ok(v.clone()),
            TokenSource::File(p) => Ok(std::fs::read_to_string(p)
                .with_context(|| format!("reading the identity token {}", p.display()))?
                .trim()
                .to_string()),
        }
    }
}

#[derive(Debug)]
pub struct Certifier {
    identity: Identity,
    token: TokenSource,
    client: IdentityClient<Channel>,
}

const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

impl Certifier {
    pub fn new(identity: Identity, cp: ControlPlane, token: TokenSource) -> anyhow::Result<Self> {
        let config = Arc::new(tls::client_config(
            identity.cert.clone(),
            identity.anchors.clone(),
            cp.identity.clone(),
            &[tls::ALPN_H2],
        )?);
        let channel = weft_api::grpc::connect_lazy(cp.addr.clone(), config);
        Ok(Certifier {
            identity,
            token,
            client: IdentityClient::new(channel),
        })
    }

    /// One Certify call: new key, new CSR, new certificate in place.
    /// Returns when the new certificate expires.
    pub async fn certify(&mut self) -> anyhow::Result<SystemTime> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(self.identity.id.to_string().try_into()?)];
        let csr = params.serialize_request(&key)?;
        let req = CertifyRequest {
            token: self.token.read()?,
            csr_der: csr.der().to_vec(),
        };
        let mut req = tonic::Request::new(req);
        req.set_timeout(Duration::from_secs(10));
        let res = self
            .client
            .certify(req)
            .await
            .map_err(|s| anyhow::anyhow!("Certify: {}: {}", s.code(), s.message()))?
            .into_inner();

        let anchors: Vec<CertificateDer<'static>> = res
            .trust_anchors_der
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        if !anchors.is_empty() {
            self.identity
                .anchors
                .replace(anchors)
                .context("the trust bundle from the control plane")?;
        }
        let mut chain = vec![CertificateDer::from(res.leaf_der)];
        chain.extend(res.intermediates_der.into_iter().map(CertificateDer::from));
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        self.identity.cert.set(chain, key)?;
        let until = UNIX_EPOCH + Duration::from_millis(res.valid_until_unix_ms.max(0) as u64);
        self.identity.metrics.renewed(unix_secs(until));
        Ok(until)
    }

    /// Certifies, then renews forever.
    pub async fn run(mut self) {
        let mut failures = 0u32;
        let mut valid_until: Option<SystemTime> = None;
        loop {
            let wait = match self.certify().await {
                Ok(until) => {
                    failures = 0;
                    valid_until = Some(until);
                    let lifetime = until.duration_since(SystemTime::now()).unwrap_or_default();
                    info!(identity = %self.identity.id, ?lifetime, "certificate renewed");
                    renew_delay(lifetime)
                }
                Err(e) => {
                    self.identity.metrics.renewal_failed();
                    failures = failures.saturating_add(1);
                    let left = valid_until
                        .and_then(|u| u.duration_since(SystemTime::now()).ok())
                        .unwrap_or(BACKOFF_CAP);
                    let wait = retry_delay(failures, left);
                    warn!(error = %format!("{e:#}"), retry_in = ?wait, "certificate renewal failed; keeping the current one");
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// About 70% of the lifetime, ±5% jitter so a fleet does not renew in step.
fn renew_delay(lifetime: Duration) -> Duration {
    let share = 0.65 + rand::random::<f64>() * 0.10;
    lifetime.mul_f64(share)
}

/// Exponential with full jitter, capped, and never beyond a quarter of what
/// is left of the current certificate.
fn retry_delay(failures: u32, left: Duration) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << failures.min(8).saturating_sub(1));
    let cap = exp
        .min(BACKOFF_CAP)
        .min((left / 4).max(Duration::from_millis(100)));
    cap.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_about_seventy_percent() {
        for _ in 0..100 {
            let d = renew_delay(Duration::from_secs(100));
            assert!(
                d >= Duration::from_secs(65) && d <= Duration::from_secs(75),
                "{d:?}"
            );
        }
    }

    #[test]
    fn retries_back_off_but_stay_inside_the_certificate() {
        let long = Duration::from_secs(3600);
        assert!(retry_delay(1, long) <= BACKOFF_BASE);
        assert!(retry_delay(20, long) <= BACKOFF_CAP);
        assert!(retry_delay(20, long) >= BACKOFF_CAP / 2);
        assert!(retry_delay(20, Duration::from_secs(4)) <= Duration::from_secs(1));
    }
}
