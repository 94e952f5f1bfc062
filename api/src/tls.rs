//! mTLS between workloads, shared by the proxy and the control plane: TLS 1.3
//! only, ring only, workload certificates swapped in place, and peers verified
//! by the SPIFFE ID in their certificate rather than by DNS name.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};

use crate::SpiffeId;

/// ALPN for opaque TCP carried between two sidecars.
pub const ALPN_TCP: &[u8] = b"weft-tcp/1";
/// ALPN for HTTP/2 (sidecar to sidecar, and gRPC to the control plane).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for an HTTP/1.1 request that upgrades the connection (WebSocket,
/// CONNECT): it gets an mTLS connection of its own.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The one crypto provider Weft uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process default, so that a dependency that enables another
/// provider cannot make rustls panic at run time. Call once at start.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no usable trust anchor")]
    NoAnchors,
    #[error("trust anchors: {0}")]
    Anchors(String),
    #[error("the private key is not usable: {0}")]
    Key(rustls::Error),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A peer presented a valid certificate for the wrong workload.
#[derive(Debug, thiserror::Error)]
#[error("peer identity mismatch: expected {expected}, certificate names {found}")]
pub struct IdentityMismatch {
    pub expected: String,
    pub found: String,
}

/// A client certificate names no SPIFFE ID of this trust domain.
#[derive(Debug, thiserror::Error)]
#[error("client certificate names no SPIFFE ID in trust domain {trust_domain} (found {found})")]
pub struct ForeignIdentity {
    pub trust_domain: String,
    pub found: String,
}

#[derive(Debug)]
struct Anchors {
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    ders: Vec<CertificateDer<'static>>,
}

/// The trust anchors in force; replaced whole when the bundle changes, so a
/// root rotation with overlap is just a bundle holding both roots.
#[derive(Clone, Debug)]
pub struct TrustAnchors(Arc<ArcSwap<Anchors>>);

fn anchors(ders: Vec<CertificateDer<'static>>) -> Result<Anchors, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(ders.iter().cloned());
    if added == 0 {
        return Err(TlsError::NoAnchors);
    }
    let roots = Arc::new(roots);
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| TlsError::Anchors(e.to_string()))?;
    Ok(Anchors {
        roots,
        client_verifier,
        ders,
    })
}

impl TrustAnchors {
    pub fn new(ders: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        Ok(TrustAnchors(Arc::new(ArcSwap::from_pointee(anchors(
            ders,
        )?))))
    }

    /// Replaces the anchors; a bad bundle is refused and the old one stays.
    pub fn replace(&self, ders: Vec<CertificateDer<'static>>) -> Result<(), TlsError> {
        if self.0.load().ders == ders {
            return Ok(());
        }
        self.0.store(Arc::new(anchors(ders)?));
        Ok(())
    }

    pub fn ders(&self) -> Vec<CertificateDer<'static>> {
        self.0.load().ders.clone()
    }

    fn roots(&self) -> Arc<RootCertStore> {
        self.0.load().roots.clone()
    }

    fn client_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.load().client_verifier.clone()
    }
}

/// This workload's certificate and key, swapped in place on renewal: new
/// handshakes use the new one at once, open connections are untouched.
#[derive(Clone, Debug)]
pub struct CertSlot {
    key: Arc<ArcSwapOption<CertifiedKey>>,
    /// True once a certificate is in: waiters are woken, not polling.
    ready: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for CertSlot {
    fn default() -> Self {
        CertSlot {
            key: Arc::default(),
            ready: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }
}

impl CertSlot {
    pub fn set(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), TlsError> {
        let signer = provider()
            .key_provider
            .load_private_key(key)
            .map_err(TlsError::Key)?;
        let ck = CertifiedKey::new(chain, signer);
        ck.keys_match().map_err(TlsError::Key)?;
        self.key.store(Some(Arc::new(ck)));
        self.ready.send_replace(true);
        Ok(())
    }

    pub fn is_set(&self) -> bool {
        self.key.load().is_some()
    }

    /// Returns once a certificate is in.
    pub async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        // The sender lives as long as `self`: this cannot fail while we wait.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// The current leaf, DER.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.key
            .load()
            .as_ref()
            .and_then(|ck| ck.cert.first().cloned())
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key.load_full()
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.key.load_full()
    }

    fn has_certs(&self) -> bool {
        self.is_set()
    }
}

fn tls12(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(
        message,
        cert,
        dss,
        &provider().signature_verification_algorithms,
    )
}

fn tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider().signature_verification_algorithms,
    )
}

fn schemes() -> Vec<SignatureScheme> {
    provider()
        .signature_verification_algorithms
        .supported_schemes()
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn ids(cert: &CertificateDer<'_>) -> String {
    let ids = SpiffeId::from_certificate(cert);
    if ids.is_empty() {
        "no SPIFFE ID".into()
    } else {
        ids.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Verifies a server's chain against the trust anchors, and that its
/// certificate names exactly the identity this connection expects.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    anchors: TrustAnchors,
    expected: SpiffeId,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.anchors.roots(),
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        match SpiffeId::from_svid(end_entity) {
            Ok(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            Ok(id) => Err(other(IdentityMismatch {
                expected: self.expected.to_string(),
                found: id.to_string(),
            })),
            Err(e) => Err(other(IdentityMismatch {
                expected: self.expected.to_string(),
                found: format!("{} ({e})", ids(end_entity)),
            })),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

/// Verifies a client's chain against the trust anchors and that it names a
/// SPIFFE ID of our trust domain. Which identities may do what is
/// authorization's business, not this verifier's.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    anchors: TrustAnchors,
    trust_domain: String,
    mandatory: bool,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.anchors
            .client_verifier()
            .verify_client_cert(end_entity, intermediates, now)?;
        match SpiffeId::from_svid(end_entity) {
            Ok(id) if id.trust_domain() == self.trust_domain => Ok(ClientCertVerified::assertion()),
            Ok(id) => Err(other(ForeignIdentity {
                trust_domain: self.trust_domain.clone(),
                found: id.to_string(),
            })),
            Err(e) => Err(other(ForeignIdentity {
                trust_domain: self.trust_domain.clone(),
                found: format!("{} ({e})", ids(end_entity)),
            })),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

/// A server config presenting `cert` and verifying clients against `anchors`.
/// `require_client_cert` false lets clients without a certificate in (the
/// control plane's Certify, which is how a proxy gets its first certificate).
pub fn server_config(
    cert: CertSlot,
    anchors: TrustAnchors,
    trust_domain: &str,
    require_client_cert: bool,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let verifier = Arc::new(SpiffeClientVerifier {
        anchors,
        trust_domain: trust_domain.to_string(),
        mandatory: require_client_cert,
    });
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(cert));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // No resumption: a session must not outlive the certificate it was made with.
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(cfg)
}

/// A client config presenting `cert` (when set) and accepting only a server
/// whose certificate names `expected`.
pub fn client_config(
    cert: CertSlot,
    anchors: TrustAnchors,
    expected: SpiffeId,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let verifier = Arc::new(SpiffeServerVerifier { anchors, expected });
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(cert));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg.resumption = Resumption::disabled();
    Ok(cfg)
}

/// The rustls error inside an IO error from a TLS handshake, if any.
pub fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// Whether a handshake failed because the peer is the wrong workload.
pub fn is_identity_mismatch(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner)))
            if inner.downcast_ref::<IdentityMismatch>().is_some()
    )
}

/// A handshake error in words: our own verifiers' reasons as they say them,
/// rustls's otherwise.
pub fn describe(e: &std::io::Error) -> String {
    match rustls_error(e) {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner)))) => {
            inner.to_string()
        }
        Some(err) => err.to_string(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SvidError;
    use rcgen::{CertificateParams, IsCa, Issuer, KeyPair, SanType};

    /// A CA, and a leaf it signs naming `uris`.
    fn chain(uris: &[&str]) -> (CertificateDer<'static>, CertificateDer<'static>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = ca.self_signed(&ca_key).unwrap().der().clone();
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::default();
        leaf.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        let key = KeyPair::generate().unwrap();
        let leaf = leaf.signed_by(&key, &issuer).unwrap().der().clone();
        (root, leaf)
    }

    const A: &str = "spiffe://cluster.local/ns/a/sa/a";
    const ADMIN: &str = "spiffe://cluster.local/ns/a/sa/admin";

    #[test]
    fn an_svid_names_exactly_one_identity() {
        let (_, one) = chain(&[A]);
        assert_eq!(SpiffeId::from_svid(&one).unwrap().to_string(), A);
        let (_, two) = chain(&[A, ADMIN]);
        assert_eq!(SpiffeId::from_svid(&two), Err(SvidError::UriCount(2)));
        let (_, none) = chain(&[]);
        assert_eq!(SpiffeId::from_svid(&none), Err(SvidError::UriCount(0)));
        let (_, web) = chain(&["https://example.com/"]);
        assert!(matches!(
            SpiffeId::from_svid(&web),
            Err(SvidError::NotSpiffe { .. })
        ));
    }

    #[test]
    fn both_verifiers_refuse_a_certificate_with_two_uri_sans() {
        let (root, two) = chain(&[A, ADMIN]);
        let anchors = TrustAnchors::new(vec![root.clone()]).unwrap();
        let now = UnixTime::now();
        let server = SpiffeServerVerifier {
            anchors: anchors.clone(),
            expected: A.parse().unwrap(),
        };
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let err = server
            .verify_server_cert(&two, &[], &name, &[], now)
            .unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
        let client = SpiffeClientVerifier {
            anchors: anchors.clone(),
            trust_domain: "cluster.local".into(),
            mandatory: true,
        };
        assert!(client.verify_client_cert(&two, &[], now).is_err());
        // The same chain with one URI SAN passes both.
        let (root, one) = chain(&[A]);
        let anchors = TrustAnchors::new(vec![root]).unwrap();
        let server = SpiffeServerVerifier {
            anchors: anchors.clone(),
            expected: A.parse().unwrap(),
        };
        assert!(
            server
                .verify_server_cert(&one, &[], &name, &[], now)
                .is_ok()
        );
        let client = SpiffeClientVerifier {
            anchors,
            trust_domain: "cluster.local".into(),
            mandatory: true,
        };
        assert!(client.verify_client_cert(&one, &[], now).is_ok());
    }
}
