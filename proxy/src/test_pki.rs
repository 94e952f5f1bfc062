//! A throwaway CA for unit tests that need real mTLS.

use rcgen::{CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use weft_api::tls::TrustAnchors;

use crate::identity::Identity;

pub(crate) struct Pki {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).unwrap().der().clone();
        Pki {
            issuer: Issuer::new(params, key),
            root,
        }
    }

    /// An identity holding a fresh certificate for `id`.
    pub(crate) fn identity(&self, id: &str) -> Identity {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        let leaf = params.signed_by(&key, &self.issuer).unwrap();
        let identity = Identity::new(
            id.parse().unwrap(),
            TrustAnchors::new(vec![self.root.clone()]).unwrap(),
        );
        identity
            .cert
            .set(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        identity
    }
}
