//! What policies name outside the watched objects: the key sets of
//! `jwksUri`s, fetched over HTTPS by the control plane and pushed (the
//! sidecars never reach out), and, on Kubernetes, the Secrets that
//! RequestAuthentications and API-key rules name, read one by one with a
//! `get` (no list or watch of Secrets).
//!
//! A fetch that fails keeps the last good key set, so a flaky identity
//! provider never leaves a Service without keys; the failure is reported.
//! Rotation by `kid` has no gap as long as the provider publishes a new key
//! one refresh interval before it signs with it, and a key it removes is
//! gone from the sidecars after the next refresh.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use rustls_pki_types::pem::PemObject;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::objects::{FetchedJwks, Kind, Object, ObjectKey, SecretData};

/// The longest key set read.
const MAX_JWKS: usize = 256 * 1024;
/// How long one fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The default `refreshInterval`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// How often named Secrets are read again.
const SECRET_REFRESH: Duration = Duration::from_secs(10);

struct Entry {
    interval: Duration,
    next: Instant,
    failures: u32,
    fetched: FetchedJwks,
}

#[derive(Default)]
struct State {
    jwks: BTreeMap<String, Entry>,
    /// Named Secrets, and what was read of them (None: not found).
    secrets: BTreeMap<(String, String), Option<Arc<SecretData>>>,
    secrets_due: bool,
}

/// Fetches and keeps what the current objects name; `changed` is notified
/// when something fetched is new.
#[derive(Clone)]
pub struct External {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for External {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("External").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    #[error("reading the JWKS CA file {path}: {source}")]
    Ca {
        path: String,
        source: std::io::Error,
    },
    #[error("the JWKS CA file {0} holds no certificate")]
    NoCa(String),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// What the objects name: `jwksUri`s with their refresh intervals, and
/// Secrets by (namespace, name).
pub fn wanted(
    objects: &BTreeMap<ObjectKey, Object>,
) -> (BTreeMap<String, Duration>, BTreeSet<(String, String)>) {
    let mut uris = BTreeMap::new();
    let mut secrets = BTreeSet::new();
    for (key, obj) in objects {
        match obj {
            Object::RequestAuthentication(a) => {
                for r in &a.spec.jwt_rules {
                    if let Some(uri) = &r.jwks_uri {
                        let every = r
                            .refresh_interval
                            .as_deref()
                            .and_then(|d| super::crds::duration_ms(d).ok())
                            .map_or(DEFAULT_REFRESH, |ms| {
                                Duration::from_millis(u64::from(ms.max(1000)))
                            });
                        let e = uris.entry(uri.clone()).or_insert(every);
                        *e = (*e).min(every);
                    }
                    if let Some(s) = &r.jwks_secret_ref {
                        secrets.insert((key.namespace.clone(), s.name.clone()));
                    }
                }
            }
            Object::AuthorizationPolicy(p) => {
                for r in &p.spec.rules {
                    if let Some(k) = r.when.as_ref().and_then(|w| w.api_key.as_ref()) {
                        secrets.insert((key.namespace.clone(), k.secret_ref.name.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    (uris, secrets)
}

impl External {
    /// Trusts the system's roots, and those of `ca_file` (PEM) if given.
    pub fn new(
        ca_file: Option<&std::path::Path>,
        changed: Arc<Notify>,
    ) -> Result<Self, ExternalError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        debug!(added, "system roots for JWKS fetches");
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|source| ExternalError::Ca {
                path: path.display().to_string(),
                source,
            })?;
            let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect();
            if certs.is_empty() {
                return Err(ExternalError::NoCa(path.display().to_string()));
            }
            roots.add_parsable_certificates(certs);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(External {
            state: Arc::default(),
            changed,
            tls: Arc::new(tls),
        })
    }

    /// Notified when something fetched is new.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// Sets what is wanted: new URIs and Secrets are fetched at once, those
    /// no longer named are forgotten.
    pub fn want(&self, uris: &BTreeMap<String, Duration>, secrets: &BTreeSet<(String, String)>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        st.jwks.retain(|u, _| uris.contains_key(u));
        for (uri, every) in uris {
            let e = st.jwks.entry(uri.clone()).or_insert_with(|| Entry {
                interval: *every,
                next: now,
                failures: 0,
                fetched: FetchedJwks::default(),
            });
            e.interval = *every;
        }
        let before = st.secrets.len();
        st.secrets.retain(|k, _| secrets.contains(k));
        for s in secrets {
            if !st.secrets.contains_key(s) {
                st.secrets.insert(s.clone(), None);
                st.secrets_due = true;
            }
        }
        if st.secrets.len() != before {
            st.secrets_due = true;
        }
        drop(st);
        self.changed.notify_one();
    }

    /// The objects to add to the model: fetched key sets and read Secrets.
    pub fn extend(&self, objects: &mut BTreeMap<ObjectKey, Object>) {
        let Ok(st) = self.state.lock() else {
            return;
        };
        for (uri, e) in &st.jwks {
            objects.insert(
                ObjectKey {
                    kind: Kind::Jwks,
                    namespace: String::new(),
                    name: uri.clone(),
                },
                Object::Jwks(Arc::new(e.fetched.clone())),
            );
        }
        for ((ns, name), data) in &st.secrets {
            if let Some(d) = data {
                objects.insert(
                    ObjectKey {
                        kind: Kind::Secret,
                        namespace: ns.clone(),
                        name: name.clone(),
                    },
                    Object::Secret(d.clone()),
                );
            }
        }
    }

    /// Fetches what is due, for as long as the process runs. `kube` reads
    /// Secrets (None: the manifest directory has them).
    pub fn spawn(&self, kube: Option<kube::Client>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut secrets_at = Instant::now();
            loop {
                this.fetch_due().await;
                if let Some(client) = &kube {
                    let due = this.state.lock().is_ok_and(|s| s.secrets_due);
                    if due || secrets_at.elapsed() >= SECRET_REFRESH {
                        secrets_at = Instant::now();
                        this.read_secrets(client).await;
                    }
                }
                let next = this
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| s.jwks.values().map(|e| e.next).min());
                let wake = next
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(1))
                    .min(Instant::now() + Duration::from_secs(1));
                tokio::time::sleep_until(wake).await;
            }
        });
    }

    async fn fetch_due(&self) {
        let now = Instant::now();
        let due: Vec<String> = match self.state.lock() {
            Ok(s) => s
                .jwks
                .iter()
                .filter(|(_, e)| e.next <= now)
                .map(|(u, _)| u.clone())
                .collect(),
            Err(_) => return,
        };
        for uri in due {
            let got = fetch(&self.tls, &uri).await;
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            let Some(e) = st.jwks.get_mut(&uri) else {
                continue;
            };
            let before = e.fetched.clone();
            match got {
                Ok(jwks) => {
                    e.failures = 0;
                    e.next = Instant::now() + e.interval;
                    e.fetched.error = None;
                    if e.fetched.jwks.as_deref() != Some(jwks.as_str()) {
                        info!(%uri, "a new key set");
                        e.fetched.jwks = Some(jwks.into());
                    }
                }
                Err(err) => {
                    e.failures = e.failures.saturating_add(1);
                    let backoff = Duration::from_secs(1 << e.failures.min(8));
                    e.next = Instant::now() + backoff.min(e.interval);
                    warn!(%uri, error = %err, "fetching the key set failed; the last good one stays");
                    e.fetched.error = Some(err);
                }
            }
            if e.fetched != before {
                self.changed.notify_one();
            }
        }
    }

    async fn read_secrets(&self, client: &kube::Client) {
        let names: Vec<(String, String)> = match self.state.lock() {
            Ok(mut s) => {
                s.secrets_due = false;
                s.secrets.keys().cloned().collect()
            }
            Err(_) => return,
        };
        for (ns, name) in names {
            let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
                kube::Api::namespaced(client.clone(), &ns);
            let got = match api.get_opt(&name).await {
                Ok(s) => s.map(|s| Arc::new(super::manifests::secret_data(s))),
                Err(e) => {
                    warn!(namespace = %ns, %name, error = %e, "reading a Secret a policy names failed");
                    continue;
                }
            };
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            if let Some(slot) = st.secrets.get_mut(&(ns, name))
                && *slot != got
            {
                *slot = got;
                self.changed.notify_one();
            }
        }
    }
}

/// One GET of a key set: HTTPS only, no redirects, bounded in time and
/// size, and it must parse as a JWKS with a usable public key.
async fn fetch(tls: &Arc<rustls::ClientConfig>, uri: &str) -> Result<String, String> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(tls, uri))
        .await
        .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
}

async fn fetch_inner(tls: &Arc<rustls::ClientConfig>, uri: &str) -> Result<String, String> {
    let u: http::Uri = uri.parse().map_err(|e| format!("not a URL: {e}"))?;
    if u.scheme_str() != Some("https") {
        return Err("not an https:// URL".into());
    }
    let host = u.host().ok_or("no host")?.to_string();
    let port = u.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
        .map_err(|e| format!("server name: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(conn);
    let path = u.path_and_query().map_or("/", |p| p.as_str());
    let authority = u.authority().map_or(host.clone(), |a| a.to_string());
    let req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "weft-control")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let res = send
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    if res.status() != http::StatusCode::OK {
        return Err(format!("answered {}", res.status()));
    }
    let body = Limited::new(res.into_body(), MAX_JWKS)
        .collect()
        .await
        .map_err(|e| format!("reading the body (at most {MAX_JWKS} bytes): {e}"))?
        .to_bytes();
    let text = std::str::from_utf8(&body).map_err(|_| "the body is not UTF-8".to_string())?;
    super::authz::normalize_jwks(text)
}
