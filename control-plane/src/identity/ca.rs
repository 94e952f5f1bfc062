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
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
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

/// The CA every part of the control plane signs with, swapped in place when
/// it rotates.
pub type SharedCa = std::sync::Arc<arc_swap::ArcSwap<Ca>>;

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

fn certs_from_pem(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

fn pem_cert(der: &CertificateDer<'static>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
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
        let (cert_pem, key_pem) = Self::generate_pem(trust_domain)?;
        let key_path = dir.join("ca.key");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(write_err(&key_path))?;
        f.write_all(key_pem.as_bytes())
            .map_err(write_err(&key_path))?;
        let cert_path = dir.join("ca.crt");
        fs::write(&cert_path, cert_pem).map_err(write_err(&cert_path))?;
        Ok(())
    }

    /// A new self-signed root for `trust_domain`: its certificate and key, PEM.
    pub fn generate_pem(trust_domain: &str) -> Result<(String, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "weft");
        dn.push(
            DnType::CommonName,
            format!("weft root CA for {trust_domain}"),
        );
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
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Loads an issuer from PEM files: its certificate, its key, and optionally
    /// the trust anchors (when absent, the issuer is the trust anchor).
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        roots_path: Option<&Path>,
    ) -> Result<Ca, CaError> {
        let cert = read(cert_path)?;
        let key = read(key_path)?;
        let roots = roots_path.map(read).transpose()?;
        Self::from_pem(
            (&cert, cert_path),
            (&key, key_path),
            roots.as_deref().zip(roots_path),
        )
    }

    /// An issuer from PEM text; each part comes with the name errors give it
    /// (a file, or a Secret's key).
    pub fn from_pem(
        (cert_pem, cert_path): (&[u8], &Path),
        (key_pem, key_path): (&[u8], &Path),
        roots: Option<(&[u8], &Path)>,
    ) -> Result<Ca, CaError> {
        let chain = certs_from_pem(cert_pem, cert_path)?;
        let issuer_cert = chain[0].clone();
        let key_pem =
            std::str::from_utf8(key_pem).map_err(|_| invalid(key_path, "not PEM text"))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| invalid(key_path, e))?;

        let (_, x509) =
            x509_parser::parse_x509_certificate(&issuer_cert).map_err(|e| invalid(cert_path, e))?;
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
        let roots = match roots {
            Some((pem, p)) => certs_from_pem(pem, p)?,
            None => vec![issuer_cert.clone()],
        };
        let issuer =
            Issuer::from_ca_cert_der(&issuer_cert, key).map_err(|e| invalid(cert_path, e))?;
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

    /// The trust anchors as PEM, as proxies and bundle ConfigMaps carry them.
    pub fn roots_pem(&self) -> String {
        self.roots.iter().map(pem_cert).collect()
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
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| SignError::BadCsr(e.to_string()))?;
        let requested = match csr.params.subject_alt_names.as_slice() {
            [SanType::URI(uri)] => uri.as_str().to_string(),
            other => {
                return Err(SignError::BadSan(format!(
                    "{} SAN(s) of other kinds",
                    other.len()
                )));
            }
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
        let cert = self
            .leaf_params(id, lifetime)?
            .signed_by(&key, &self.issuer)?;
        Ok((self.issued(cert), key))
    }

    /// Issues an HTTPS serving certificate and key for DNS names and IP
    /// addresses (the injector webhook's: the API server checks names, not
    /// SPIFFE IDs).
    pub fn issue_server(
        &self,
        dns: &[String],
        ips: &[std::net::IpAddr],
        lifetime: Duration,
    ) -> Result<(Issued, KeyPair), SignError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(first) = dns.first() {
            dn.push(DnType::CommonName, first.clone());
        }
        params.distinguished_name = dn;
        params.subject_alt_names = dns
            .iter()
            .map(|d| Ok(SanType::DnsName(d.clone().try_into()?)))
            .chain(ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<_, rcgen::Error>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = now - BACKDATE;
        params.not_after = (now + lifetime).min(OffsetDateTime::from(self.not_after));
        let cert = params.signed_by(&key, &self.issuer)?;
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

    fn leaf_params(
        &self,
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<CertificateParams, SignError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "default", sa).unwrap()
    }

    fn csr(sans: Vec<SanType>) -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans;
        p.serialize_request(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn generates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let a = Ca::load_or_generate(dir.path(), "cluster.local").unwrap();
        let b = Ca::load_or_generate(dir.path(), "cluster.local").unwrap();
        assert_eq!(a.roots(), b.roots());
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn signs_a_csr_for_the_proven_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_generate(dir.path(), "cluster.local").unwrap();
        let web = id("web");
        let issued = ca
            .sign(
                &csr(vec![uri(&web.to_string())]),
                &web,
                Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!(SpiffeId::from_certificate(&issued.leaf), vec![web]);
        let left = issued.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(
            left <= Duration::from_secs(10) && left >= Duration::from_secs(8),
            "{left:?}"
        );
        let (_, c) = x509_parser::parse_x509_certificate(&issued.leaf).unwrap();
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!c.is_ca());
        assert!(issued.intermediates.is_empty());
    }

    #[test]
    fn refuses_bad_csrs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_generate(dir.path(), "cluster.local").unwrap();
        let web = id("web");
        let life = Duration::from_secs(60);
        assert!(matches!(
            ca.sign(b"garbage", &web, life),
            Err(SignError::BadCsr(_))
        ));
        assert!(matches!(
            ca.sign(&csr(vec![uri(&id("admin").to_string())]), &web, life),
            Err(SignError::IdentityMismatch { .. })
        ));
        assert!(matches!(
            ca.sign(
                &csr(vec![SanType::DnsName("web".try_into().unwrap())]),
                &web,
                life
            ),
            Err(SignError::BadSan(_))
        ));
        assert!(matches!(
            ca.sign(&csr(vec![uri("https://example.com/")]), &web, life),
            Err(SignError::BadSan(_))
        ));
        assert!(matches!(
            ca.sign(&csr(vec![]), &web, life),
            Err(SignError::BadSan(_))
        ));
    }

    fn write_ca(dir: &Path, params: CertificateParams) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (dir.join("ca.crt"), dir.join("ca.key"));
        fs::write(&c, cert.pem()).unwrap();
        fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn ca_params() -> CertificateParams {
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = write_ca(dir.path(), ca_params());
        fs::remove_file(dir.path().join("ca.key")).unwrap();
        let e = Ca::load_or_generate(dir.path(), "cluster.local").unwrap_err();
        assert!(
            matches!(e, CaError::Missing(ref p) if p.ends_with("ca.key")),
            "{e}"
        );

        let other = tempfile::tempdir().unwrap();
        let (_, other_key) = write_ca(other.path(), ca_params());
        let e = Ca::load(&cert, &other_key, None).unwrap_err();
        assert!(matches!(e, CaError::KeyMismatch { .. }), "{e}");

        let mut expired = ca_params();
        expired.not_before = OffsetDateTime::now_utc() - Duration::from_secs(7200);
        expired.not_after = OffsetDateTime::now_utc() - Duration::from_secs(3600);
        let d = tempfile::tempdir().unwrap();
        let (c, k) = write_ca(d.path(), expired);
        let e = Ca::load(&c, &k, None).unwrap_err();
        assert!(matches!(e, CaError::Expired { .. }), "{e}");
        assert!(e.to_string().contains("ca.crt"), "{e}");

        let d = tempfile::tempdir().unwrap();
        let (c, k) = write_ca(d.path(), CertificateParams::default());
        assert!(matches!(Ca::load(&c, &k, None), Err(CaError::NotCa { .. })));

        fs::write(&c, "not pem").unwrap();
        let e = Ca::load(&c, &k, None).unwrap_err();
        assert!(matches!(e, CaError::Invalid { .. }), "{e}");
    }

    #[test]
    fn an_intermediate_issuer_ships_in_the_chain() {
        let d = tempfile::tempdir().unwrap();
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let root = ca_params().self_signed(&root_key).unwrap();
        let root_issuer = Issuer::from_ca_cert_der(root.der(), root_key).unwrap();
        let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let int = ca_params().signed_by(&int_key, &root_issuer).unwrap();
        fs::write(d.path().join("ca.crt"), int.pem()).unwrap();
        fs::write(d.path().join("ca.key"), int_key.serialize_pem()).unwrap();
        fs::write(d.path().join("roots.crt"), root.pem()).unwrap();
        let ca = Ca::load_or_generate(d.path(), "cluster.local").unwrap();
        assert_eq!(ca.roots(), &[root.der().clone()]);
        let web = id("web");
        let issued = ca
            .sign(
                &csr(vec![uri(&web.to_string())]),
                &web,
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(issued.intermediates, vec![int.der().clone()]);
    }
}
