//! The mesh CA on Kubernetes: a Secret in Weft's namespace, and a ConfigMap
//! `weft-ca-bundle` with the trust anchors in every meshed namespace.
//!
//! The Secret has the layout cert-manager writes for a CA (`tls.crt`: the
//! issuer, then any intermediates; `tls.key`; `ca.crt`: the trust anchors,
//! default the issuer), so a user can bring their own, from cert-manager or
//! by hand. When it is missing, the leader generates a root and creates it.
//! Every replica rereads it periodically and swaps the CA in place when it
//! changes; a root rotation is done by listing the old and the new root in
//! `ca.crt` for the overlap, then the new one alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use super::Stores;
use crate::identity::Ca;
use crate::identity::ca::{CaError, SharedCa};
use crate::metrics::Metrics;

/// The ConfigMap (and its key) that carries the trust anchors to pods.
pub const BUNDLE: &str = "weft-ca-bundle";
pub const BUNDLE_KEY: &str = "ca.crt";
/// How often every replica rereads the CA Secret.
const RELOAD: Duration = Duration::from_secs(10);
/// How often the leader checks every meshed namespace's bundle.
const BUNDLES: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    #[error(
        "the CA Secret {namespace}/{name} lacks `{key}` (it needs tls.crt and tls.key; ca.crt is optional)"
    )]
    MissingKey {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("the Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

#[derive(Clone)]
pub struct CaSecret {
    api: Api<Secret>,
    namespace: String,
    name: String,
    trust_domain: String,
}

impl std::fmt::Debug for CaSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaSecret({}/{})", self.namespace, self.name)
    }
}

impl CaSecret {
    pub fn new(client: Client, namespace: &str, name: &str, trust_domain: &str) -> CaSecret {
        CaSecret {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
            name: name.into(),
            trust_domain: trust_domain.into(),
        }
    }

    /// A name for errors: `secret weft-system/weft-ca: tls.key`.
    fn part(&self, key: &str) -> PathBuf {
        PathBuf::from(format!("secret {}/{}: {key}", self.namespace, self.name))
    }

    fn parse(&self, secret: &Secret) -> Result<Ca, CaSecretError> {
        let data = secret.data.clone().unwrap_or_default();
        let get = |key: &'static str| {
            data.get(key)
                .map(|b| b.0.clone())
                .ok_or(CaSecretError::MissingKey {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    key,
                })
        };
        let cert = get("tls.crt")?;
        let key = get("tls.key")?;
        let roots = data
            .get("ca.crt")
            .map(|b| b.0.clone())
            .filter(|b| !b.is_empty());
        let roots_name = self.part("ca.crt");
        Ok(Ca::from_pem(
            (&cert, &self.part("tls.crt")),
            (&key, &self.part("tls.key")),
            roots.as_deref().map(|r| (r, roots_name.as_path())),
        )?)
    }

    /// The CA from the Secret. When it is missing, the leader creates it and
    /// the others wait for it to appear.
    pub async fn load_or_create(
        &self,
        leader: &watch::Receiver<bool>,
    ) -> Result<(Ca, String), CaSecretError> {
        let mut waited = 0u32;
        loop {
            if let Some(secret) = self.api.get_opt(&self.name).await? {
                let ca = self.parse(&secret)?;
                return Ok((ca, secret.metadata.resource_version.unwrap_or_default()));
            }
            if *leader.borrow() {
                let (cert, key) = Ca::generate_pem(&self.trust_domain)?;
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        labels: Some(managed_by()),
                        ..Default::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(BTreeMap::from([
                        ("tls.crt".to_string(), ByteString(cert.clone().into_bytes())),
                        ("tls.key".to_string(), ByteString(key.into_bytes())),
                        ("ca.crt".to_string(), ByteString(cert.into_bytes())),
                    ])),
                    ..Default::default()
                };
                match self.api.create(&PostParams::default(), &secret).await {
                    Ok(_) => info!(secret = %self.name, "generated the mesh CA into a new Secret"),
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
                continue;
            }
            if waited.is_multiple_of(10) {
                info!(secret = %self.name, namespace = %self.namespace, "waiting for the leader to create the CA Secret");
            }
            waited += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Rereads the Secret every few seconds; a change that parses replaces
    /// the CA and announces the new trust anchors; one that does not is
    /// logged and the current CA keeps signing.
    pub fn spawn_reload(
        self,
        ca: SharedCa,
        mut version: String,
        anchors: watch::Sender<Vec<Vec<u8>>>,
        metrics: Arc<Metrics>,
    ) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD).await;
                let secret = match self.api.get_opt(&self.name).await {
                    Ok(Some(s)) => s,
                    Ok(None) => {
                        warn!(secret = %self.name, "the CA Secret is gone; the CA in memory keeps signing");
                        continue;
                    }
                    Err(e) => {
                        warn!(error = %e, "reading the CA Secret");
                        continue;
                    }
                };
                let rv = secret.metadata.resource_version.clone().unwrap_or_default();
                if rv == version {
                    continue;
                }
                match self.parse(&secret) {
                    Ok(new) => {
                        info!(
                            roots = new.roots().len(),
                            "the CA Secret changed; signing with the new CA"
                        );
                        metrics.set_ca_expiry(new.not_after());
                        let roots = new.roots().iter().map(|c| c.to_vec()).collect();
                        ca.store(Arc::new(new));
                        let _ = anchors.send(roots);
                        version = rv;
                    }
                    Err(e) => {
                        warn!(error = %e, "the CA Secret changed but is not usable; keeping the current CA");
                        version = rv;
                    }
                }
            }
        });
    }
}

fn managed_by() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_string(),
        "weft".to_string(),
    )])
}

/// Namespaces that need the trust bundle: labelled for injection, or with a
/// meshed pod in them.
fn meshed_namespaces(stores: &Stores) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for ns in stores.namespaces.state() {
        let labelled = ns
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::discovery::annotations::INJECT))
            .is_some_and(|v| v == "enabled");
        if labelled && ns.metadata.deletion_timestamp.is_none() {
            out.extend(ns.metadata.name.clone());
        }
    }
    for p in stores.pods.state() {
        if crate::discovery::model::PodModel::from_pod(&p).meshed {
            out.extend(p.metadata.namespace.clone());
        }
    }
    out
}

/// While this replica leads: keeps `weft-ca-bundle` current in every meshed
/// namespace (created when missing, replaced when the anchors change).
pub fn spawn_bundles(
    client: Client,
    stores: Stores,
    ca: SharedCa,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(BUNDLES).await;
            if !*leader.borrow() {
                continue;
            }
            let pem = ca.load().roots_pem();
            for ns in meshed_namespaces(&stores) {
                if let Err(e) = ensure_bundle(&client, &ns, &pem, &metrics).await {
                    warn!(namespace = %ns, error = %e, "writing the trust bundle ConfigMap");
                }
            }
        }
    });
}

async fn ensure_bundle(
    client: &Client,
    ns: &str,
    pem: &str,
    metrics: &Metrics,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let data = BTreeMap::from([(BUNDLE_KEY.to_string(), pem.to_string())]);
    match api.get_opt(BUNDLE).await? {
        Some(cm) if cm.data.as_ref() == Some(&data) => Ok(()),
        Some(mut cm) => {
            cm.data = Some(data);
            api.replace(BUNDLE, &PostParams::default(), &cm).await?;
            metrics.status_written("ConfigMap");
            info!(namespace = %ns, "trust bundle updated");
            Ok(())
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(BUNDLE.into()),
                    labels: Some(managed_by()),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => {
                    metrics.status_written("ConfigMap");
                    info!(namespace = %ns, "trust bundle created");
                    Ok(())
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

/// While this replica leads: keeps every webhook's `caBundle` in the
/// MutatingWebhookConfiguration `name` equal to the mesh's trust anchors, so
/// the API server trusts the webhook's certificate across CA rotations.
pub fn spawn_webhook_bundle(
    client: Client,
    name: String,
    ca: SharedCa,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    tokio::spawn(async move {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client);
        let mut missing_said = false;
        loop {
            tokio::time::sleep(BUNDLES).await;
            if !*leader.borrow() {
                continue;
            }
            let pem = ByteString(ca.load().roots_pem().into_bytes());
            let mut mwc = match api.get_opt(&name).await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    if !missing_said {
                        info!(name = %name, "no MutatingWebhookConfiguration yet; the injector is not called");
                        missing_said = true;
                    }
                    continue;
                }
                Err(e) => {
                    warn!(name = %name, error = %e, "reading the MutatingWebhookConfiguration");
                    continue;
                }
            };
            missing_said = false;
            let mut changed = false;
            for w in mwc.webhooks.iter_mut().flatten() {
                if w.client_config.ca_bundle.as_ref() != Some(&pem) {
                    w.client_config.ca_bundle = Some(pem.clone());
                    changed = true;
                }
            }
            if !changed {
                continue;
            }
            match api.replace(&name, &PostParams::default(), &mwc).await {
                Ok(_) => {
                    metrics.status_written("MutatingWebhookConfiguration");
                    info!(name = %name, "webhook caBundle set to the mesh's trust anchors");
                }
                Err(e) => warn!(name = %name, error = %e, "updating the webhook's caBundle"),
            }
        }
    });
}
