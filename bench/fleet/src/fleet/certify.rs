//! Identities for the fleet: a key and CSR per proxy, certified by the
//! control plane (the timed part), then a TLS client config each.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use futures_util::StreamExt;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use weft_api::SpiffeId;
use weft_api::tls::{self, CertSlot, TrustAnchors};
use weft_api::v1::CertifyRequest;
use weft_api::v1::identity_client::IdentityClient;

use super::files::service_account;
use super::{FleetArgs, NAMESPACE, Results, TRUST_DOMAIN};

/// What a proxy trusts: the mesh CA, and the control plane's identity.
#[derive(Debug, Clone)]
pub struct Trust {
    anchors: TrustAnchors,
    control_plane: SpiffeId,
}

impl Trust {
    /// The CA the control plane made in the work directory.
    pub fn read(work: &Path) -> anyhow::Result<Trust> {
        let pem = std::fs::read(work.join("ca").join("ca.crt"))?;
        let der: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("the CA certificate: {e}"))?;
        Ok(Trust {
            anchors: TrustAnchors::new(der)?,
            control_plane: "spiffe://cluster.local/ns/weft-system/sa/weft-control"
                .parse()
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        })
    }

    pub fn client_config(&self, slot: CertSlot) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        Ok(Arc::new(tls::client_config(
            slot,
            self.anchors.clone(),
            self.control_plane.clone(),
            &[tls::ALPN_H2],
        )?))
    }
}

/// Per proxy, in order: its private key (PKCS#8 DER) and the CSR made with it.
#[derive(Debug)]
pub struct Requests {
    pub keys: Vec<Vec<u8>>,
    pub csrs: Vec<Vec<u8>>,
}

/// Keys and CSRs for `n` proxies, `per` to a service account; not timed.
pub fn keys_and_csrs(n: usize, per: usize) -> anyhow::Result<Requests> {
    let t = Instant::now();
    let mut keys = Vec::with_capacity(n);
    let mut csrs = Vec::with_capacity(n);
    for i in 0..n {
        let (key, csr) = key_and_csr(&service_account(i, per))?;
        keys.push(key);
        csrs.push(csr);
    }
    eprintln!("fleet: {n} keys and CSRs made in {:?}", t.elapsed());
    Ok(Requests { keys, csrs })
}

/// A private key (PKCS#8 DER) and a CSR for service account `sa`, as a
/// proxy makes them at start.
pub fn key_and_csr(sa: &str) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let id = SpiffeId::new(TRUST_DOMAIN, NAMESPACE, sa).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
    let csr = params.serialize_request(&key)?.der().to_vec();
    Ok((key.serialize_der(), csr))
}

/// A certificate chain per CSR, through Certify on a few connections (as a
/// few nodes' worth of proxies starting at once); the rate goes in `results`.
pub async fn certify(
    args: &FleetArgs,
    trust: &Trust,
    csrs: Vec<Vec<u8>>,
    per: usize,
    results: &mut Results,
) -> anyhow::Result<Vec<Vec<CertificateDer<'static>>>> {
    let n = csrs.len();
    let config = trust.client_config(CertSlot::default())?;
    let clients: Vec<IdentityClient<tonic::transport::Channel>> = (0..8)
        .map(|_| {
            IdentityClient::new(weft_api::grpc::connect_lazy(
                args.grpc.to_string(),
                config.clone(),
            ))
        })
        .collect();
    let t = Instant::now();
    let issued: Vec<anyhow::Result<Vec<CertificateDer<'static>>>> =
        futures_util::stream::iter(csrs.into_iter().enumerate())
            .map(|(i, csr)| {
                let client = clients[i % clients.len()].clone();
                certify_one(client, format!("tok-{}", i / per), csr)
            })
            .buffered(args.concurrency.max(1))
            .collect()
            .await;
    let secs = t.elapsed().as_secs_f64();
    results.certify_calls = n;
    results.certify_seconds = secs;
    results.certify_per_second = n as f64 / secs;
    results.certify_failed = issued.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = issued.iter().find(|r| r.is_err()) {
        bail!(
            "{} Certify calls failed, e.g. {e:#}",
            results.certify_failed
        );
    }
    eprintln!(
        "fleet: {n} certificates in {secs:.2}s: {:.0} signatures/s",
        results.certify_per_second
    );
    issued.into_iter().collect()
}

pub async fn certify_one(
    mut client: IdentityClient<tonic::transport::Channel>,
    token: String,
    csr: Vec<u8>,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let res = client
        .certify(CertifyRequest {
            token,
            csr_der: csr,
        })
        .await
        .map_err(|s| anyhow::anyhow!("Certify: {}: {}", s.code(), s.message()))?
        .into_inner();
    let mut chain = vec![CertificateDer::from(res.leaf_der)];
    chain.extend(res.intermediates_der.into_iter().map(CertificateDer::from));
    Ok(chain)
}

/// A TLS client config with this certificate chain and key.
pub fn client_config(
    trust: &Trust,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let slot = CertSlot::default();
    slot.set(chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))?;
    trust.client_config(slot)
}

/// A TLS client config per proxy, with its own certificate.
pub fn client_configs(
    trust: &Trust,
    chains: Vec<Vec<CertificateDer<'static>>>,
    keys: Vec<Vec<u8>>,
) -> anyhow::Result<Vec<Arc<rustls::ClientConfig>>> {
    chains
        .into_iter()
        .zip(keys)
        .map(|(chain, key)| client_config(trust, chain, key))
        .collect()
}
