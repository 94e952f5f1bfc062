//! The cluster's keys and certificates (made with rcgen) and kubeconfigs.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The files [`write`] makes, all PEM.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_pem: String,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    /// ServiceAccount token signing key: ECDSA P-256, PKCS#8.
    pub sa_key: PathBuf,
    /// Its public half (what verifies tokens).
    pub sa_pub: PathBuf,
    pub admin_kubeconfig: PathBuf,
    pub controller_manager_kubeconfig: PathBuf,
}

/// The admin client certificate's user and group.
pub const ADMIN_USER: &str = "weft-e2e-admin";
pub const ADMIN_GROUP: &str = "system:masters";
/// The user the kube-controller-manager authenticates as.
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
/// The first address of the service range, the `kubernetes` Service's.
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

/// Generates a CA, the API server's serving certificate for `ip`, client
/// certificates for the admin and the controller manager, and the
/// ServiceAccount signing key, into `dir`; writes the two kubeconfigs that
/// point at `server`.
pub fn write(dir: &Path, ip: Ipv4Addr, server: &str) -> Pki {
    std::fs::create_dir_all(dir).expect("creating the kube directory");
    let ca_key = key();
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name("weft-e2e-kubernetes-ca", None);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca
        .self_signed(&ca_key)
        .expect("self-signing the cluster CA");
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca, ca_key);

    let sans: Vec<String> = [
        &ip.to_string(),
        "127.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        KUBERNETES_SERVICE_IP,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (serving_pem, serving_key_pem) = leaf(
        &issuer,
        sans,
        name("kube-apiserver", None),
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (admin_pem, admin_key) = leaf(
        &issuer,
        vec![],
        name(ADMIN_USER, Some(ADMIN_GROUP)),
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let (kcm_pem, kcm_key) = leaf(
        &issuer,
        vec![],
        name(CONTROLLER_MANAGER_USER, None),
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let sa = key();

    let file = |n: &str, text: &str| {
        let p = dir.join(n);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
        p
    };
    let pki = Pki {
        ca_cert: file("ca.crt", &ca_pem),
        serving_cert: file("apiserver.crt", &serving_pem),
        serving_key: file("apiserver.key", &serving_key_pem),
        sa_key: file("sa.key", &sa.serialize_pem()),
        sa_pub: file("sa.pub", &sa.public_key_pem()),
        admin_kubeconfig: file(
            "admin.kubeconfig",
            &kubeconfig(server, &ca_pem, User::Cert(&admin_pem, &admin_key)),
        ),
        controller_manager_kubeconfig: file(
            "controller-manager.kubeconfig",
            &kubeconfig(server, &ca_pem, User::Cert(&kcm_pem, &kcm_key)),
        ),
        ca_pem,
    };
    file("admin.crt", &admin_pem);
    file("admin.key", &admin_key);
    pki
}

fn key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generating a P-256 key")
}

fn name(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

/// A certificate and its key (PEM), signed by `issuer`.
fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    sans: Vec<String>,
    dn: DistinguishedName,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = key();
    let mut p = CertificateParams::new(sans).expect("certificate names");
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![usage];
    let cert = p.signed_by(&key, issuer).expect("signing a certificate");
    (cert.pem(), key.serialize_pem())
}

/// How a kubeconfig's user authenticates.
#[derive(Debug, Clone, Copy)]
pub enum User<'a> {
    /// Client certificate and key, PEM.
    Cert(&'a str, &'a str),
    /// A bearer token.
    Token(&'a str),
}

/// A kubeconfig for `server` trusting `ca_pem`, everything embedded.
pub fn kubeconfig(server: &str, ca_pem: &str, user: User<'_>) -> String {
    let user = match user {
        User::Cert(cert, key) => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            base64(cert.as_bytes()),
            base64(key.as_bytes())
        ),
        User::Token(token) => format!("    token: {token}\n"),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: weft-e2e\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: user\n  user:\n{user}contexts:\n- name: weft-e2e\n  context:\n    cluster: weft-e2e\n    user: user\ncurrent-context: weft-e2e\n",
        base64(ca_pem.as_bytes())
    )
}

/// Standard base64 with padding (what kubeconfig `*-data` fields hold).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(input.as_bytes()), want);
        }
    }
}
