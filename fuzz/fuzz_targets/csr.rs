//! Certify's signing step (`Ca::sign`) on what a caller sends as its CSR,
//! for a caller whose token proves `web`'s identity: raw DER, PEM, or a
//! validly signed CSR asking for names the input picks. Anything but a CSR
//! asking for exactly the proven SPIFFE ID is an error, never a panic; a
//! certificate, when issued, names that one identity and nothing else.
//!
//! Input: a mode byte, then the DER (0), the PEM (1), or the names to ask
//! for (2), one per line, each a kind byte (`u` URI, `d` DNS, `i` IP, `e`
//! email) and the name.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use weft_api::SpiffeId;
use weft_control::fuzzing::throwaway_ca;
use weft_control::identity::Ca;
use x509_parser::extensions::GeneralName;

const PROVEN: &str = "spiffe://cluster.local/ns/default/sa/web";

static CA: LazyLock<Ca> = LazyLock::new(|| throwaway_ca().expect("a CA"));
/// The caller's key: generating one per input would only be slower.
static KEY: LazyLock<KeyPair> =
    LazyLock::new(|| KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key"));

/// A CSR signed with [`KEY`] asking for the names in `lines`.
fn csr_for(lines: &[u8]) -> Option<Vec<u8>> {
    let mut params = CertificateParams::default();
    for line in lines.split(|&b| b == b'\n') {
        let Some((&kind, name)) = line.split_first() else {
            continue;
        };
        let name = std::str::from_utf8(name).ok()?.to_string();
        params.subject_alt_names.push(match kind {
            b'u' => SanType::URI(name.try_into().ok()?),
            b'd' => SanType::DnsName(name.try_into().ok()?),
            b'e' => SanType::Rfc822Name(name.try_into().ok()?),
            b'i' => SanType::IpAddress(name.parse().ok()?),
            _ => return None,
        });
    }
    Some(params.serialize_request(&*KEY).ok()?.der().to_vec())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let der = match mode % 3 {
        0 => rest.to_vec(),
        1 => match CertificateSigningRequestDer::from_pem_slice(rest) {
            Ok(der) => der.as_ref().to_vec(),
            Err(_) => return,
        },
        _ => match csr_for(rest) {
            Some(der) => der,
            None => return,
        },
    };
    let proven: SpiffeId = PROVEN.parse().expect("a SPIFFE ID");
    let Ok(issued) = CA.sign(&der, &proven, Duration::from_secs(3600)) else {
        return;
    };
    // Issued: the CSR asked for exactly the proven identity...
    let asked = rcgen::CertificateSigningRequestParams::from_der(&der.as_slice().into())
        .expect("a CSR that was signed parses");
    assert!(
        matches!(asked.params.subject_alt_names.as_slice(), [SanType::URI(u)] if u.as_str() == PROVEN),
        "issued for a CSR asking {:?}",
        asked.params.subject_alt_names
    );
    // ... and the certificate names it alone, and is no CA.
    assert_eq!(SpiffeId::from_svid(&issued.leaf), Ok(proven));
    let (_, cert) = x509_parser::parse_x509_certificate(&issued.leaf).expect("the leaf parses");
    assert!(!cert.is_ca());
    let names: Vec<_> = cert
        .subject_alternative_name()
        .expect("one SAN extension")
        .map(|san| san.value.general_names.clone())
        .unwrap_or_default();
    assert!(
        matches!(names.as_slice(), [GeneralName::URI(u)] if *u == PROVEN),
        "{names:?}"
    );
    assert!(
        cert.subject().iter_attributes().next().is_none(),
        "{}",
        cert.subject()
    );
});
