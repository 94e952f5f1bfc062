//! The mesh CA: an ECDSA P-256 issuer that signs short-lived workload
//! certificates, either generated on first start or loaded from PEM files the
//! user provides.
//!
//! Files in a CA directory: `ca.crt` (the issuer's certificate), `ca.key` (its
//! private key, mode 0600) and, when the issuer is an intermediate or a root is
//! being rotated, `roots.crt` (every trust anchor proxies should accept). Without
//! `roots.crt` the issuer itself is the only trust anchor.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;
use weft_api::SpiffeId;

/// How far back a leaf's validity starts, for clocks that run a little behind.
const BACKDATE: Duration = Duration::from_secs(60);
/// Lifetime of a CA generated in local mode.
const GENERATED_CA_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why the CA could not be loaded or made. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA file {0} is missing (a CA directory holds ca.crt and ca.key together)")]
    Missing(PathBuf),
    #[error("cannot read CA file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {path} is not usable: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("the CA certificate {path} expired at {not_after}")]
    Expired { path: PathBuf, not_after: String },
    #[error("the CA certificate {path} is not valid before {not_before}")]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("the CA key {key} does not belong to the certificate {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{path} is not a CA certificate (basicConstraints CA:TRUE is missing)")]
    NotCa { path: PathBuf },
    #[error("cannot write the generated CA to {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating the CA: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Why a signing request was refused. The gRPC layer maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the CSR is not a valid PKCS#10 request: {0}")]
    BadCsr(String),
    #[error("the CSR must carry exactly one URI SAN, a SPIFFE ID; it has {0}")]
    BadSan(String),
    #[error("the CSR asks for {requested} but the token proves {proven}")]
    IdentityMismatch { requested: String, proven: String },
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A certificate the CA issued.
#[derive(Clone, Debug)]
pub struct Issued {
    pub leaf: CertificateDer<'static>,
    /// From the issuer up to (not including) a trust anchor.
    pub intermediates: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    intermediates: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    not_after: SystemTime,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("not_after", &self.not_after)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CaError> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CaError::Missing(path.into())),
        Err(source) => Err(CaError::Unreadable {
            path: path.into(),
            source,
        }),
    }
}

fn invalid(path: &Path, reason: impl std::fmt::Display) -> CaError {
    CaError::Invalid {
        path: path.into(),
        reason: reason.to_string(),
    }
}

fn certs_from_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

fn system_time(t: OffsetDateTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(t.unix_timestamp().max(0) as u64)
}

impl Ca {
    /// Loads the CA in `dir`, or generates one there when the directory holds
    /// neither `ca.crt` nor `ca.key`.
    pub fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<Ca, CaError> {
        let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        if !cert.exists() && !key.exists() {
            Self::generate(dir, trust_domain)?;
            tracing::info!(dir = %dir.display(), "generated a new mesh CA");
        }
        let roots = dir.join("roots.crt");
        Self::load(&cert, &key, roots.exists().then_some(roots.as_path()))
    }

    fn generate(dir: &Path, trust_domain: &str) -> Result<(), CaError> {
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Write { path, source }
        };
        fs::create_dir_all(dir).map_err(write_err(dir))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "weft");
        dn.push(DnType::CommonName, format!("weft root CA for {trust_domain}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + GENERATED_CA_LIFETIME;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;

        let key_path = dir.join("ca.key");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(write_err(&key_path))?;
        f.write_all(key.serialize_pem().as_bytes())
            .map_err(write_err(&key_path))?;
        let cert_path = dir.join("ca.crt");
        fs::write(&cert_path, cert.pem()).map_err(write_err(&cert_path))?;
        Ok(())
    }

    /// Loads an issuer from PEM files: its certificate, its key, and optionally
    /// the trust anchors (when absent, the issuer is the trust anchor).
    pub fn load(cert_path: &Path, key_path: &Path, roots_path: Option<&Path>) -> Result<Ca, CaError> {
        let chain = certs_from_pem(cert_path)?;
        let issuer_cert = chain[0].clone();
        let key_pem = String::from_utf8(read(key_path)?)
            .map_err(|_| invalid(key_path, "not PEM text"))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(key_path, e))?;

        let (_, x509) = x509_parser::parse_x509_certificate(&issuer_cert)
            .map_err(|e| invalid(cert_path, e))?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::KeyMismatch {
                cert: cert_path.into(),
                key: key_path.into(),
            });
        }
        if !x509.is_ca() {
            return Err(CaError::NotCa {
                path: cert_path.into(),
            });
        }
        let validity = x509.validity();
        let now = OffsetDateTime::now_utc();
        if validity.not_after.to_datetime() < now {
            return Err(CaError::Expired {
                path: cert_path.into(),
                not_after: validity.not_after.to_string(),
            });
        }
        if validity.not_before.to_datetime() > now {
            return Err(CaError::NotYetValid {
                path: cert_path.into(),
                not_before: validity.not_before.to_string(),
            });
        }
        let not_after = system_time(validity.not_after.to_datetime());
        let roots = match roots_path {
            Some(p) => certs_from_pem(p)?,
            None => vec![issuer_cert.clone()],
        };
        let issuer = Issuer::from_ca_cert_der(&issuer_cert, key).map_err(|e| invalid(cert_path, e))?;
        // What ca.crt holds beyond the trust anchors travels with every leaf:
        // the issuer itself when it is an intermediate, and its parents.
        let intermediates = chain.into_iter().filter(|c| !roots.contains(c)).collect();
        Ok(Ca {
            issuer,
            intermediates,
            roots,
            not_after,
        })
    }

    /// The trust anchors proxies verify peers against.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Signs a CSR for `proven` (the identity the caller's token proves),
    /// valid for `lifetime` (never beyond the CA's own expiry).
    pub fn sign(
        &self,
        csr_der: &[u8],
        proven: &SpiffeId,
        lifetime: Duration,
    ) -> Result<Issued, SignError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|e| SignError::BadCsr(e.to_string()))?;
        let requested = match csr.params.subject_alt_names.as_slice() {
            [SanType::URI(uri)] => uri.as_str().to_string(),
            other => return Err(SignError::BadSan(format!("{} SAN(s) of other kinds", other.len()))),
        };
        let requested_id: SpiffeId = requested
            .parse()
            .map_err(|e: weft_api::identity::SpiffeIdError| SignError::BadSan(e.to_string()))?;
        if &requested_id != proven {
            return Err(SignError::IdentityMismatch {
                requested,
                proven: proven.to_string(),
            });
        }

        let leaf = CertificateSigningRequestParams {
            params: self.leaf_params(&requested_id, lifetime)?,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?;
        Ok(self.issued(leaf))
    }

    /// Issues a certificate and a fresh key for `id` without a CSR: the
    /// control plane's own serving certificate.
    pub fn issue(&self, id: &SpiffeId, lifetime: Duration) -> Result<(Issued, KeyPair), SignError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = self.leaf_params(id, lifetime)?.signed_by(&key, &self.issuer)?;
        Ok((self.issued(cert), key))
    }

    fn issued(&self, leaf: rcgen::Certificate) -> Issued {
        let not_after = x509_parser::parse_x509_certificate(leaf.der())
            .map(|(_, c)| system_time(c.validity().not_after.to_datetime()))
            .unwrap_or(self.not_after);
        Issued {
            leaf: leaf.der().clone(),
            intermediates: self.intermediates.clone(),
            not_after,
        }
    }

    fn leaf_params(&self, id: &SpiffeId, lifetime: Duration) -> Result<CertificateParams, SignError> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        // SPIFFE X.509-SVIDs identify by the URI SAN alone (marked critical by
        // rcgen because the subject is empty).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = now - BACKDATE;
        params.not_after = (now + lifetime).min(OffsetDateTime::from(self.not_after));
        Ok(params)
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}
