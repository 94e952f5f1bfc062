//! Sources of truth and how a change becomes a published version of the mesh.
//!
//! Two sources feed the same [`Publisher`]: the manifest directory here
//! (local mode, polled for changes) and the Kubernetes API
//! ([`crate::kubernetes::source`]). Each hands it the objects it holds; the
//! publisher builds the one [`Model`] and the shared snapshot part, and
//! publishes them to every Watch stream through a `watch` channel.
//!
//! In local mode `/errors` also lists what is wrong with each route (the
//! findings a cluster would see in the route's status, [`findings`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::info;

use super::findings;
use super::manifests::{ManifestError, Store};
use super::model::Model;
use super::snapshot::{self, MeshSettings, Shared};
use crate::metrics::Metrics;

/// One published version of the mesh.
#[derive(Debug)]
pub struct State {
    pub model: Model,
    pub shared: Arc<Shared>,
    pub errors: Vec<ManifestError>,
    /// When the change behind this version was first seen.
    pub changed_at: SystemTime,
}

/// Versions only grow, across restarts (and replicas) too: milliseconds since
/// the epoch, bumped when two builds fall in the same millisecond.
fn next_version(prev: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    now.max(prev + 1)
}

/// Builds versions of the mesh from a source's objects and publishes them.
#[derive(Debug)]
pub struct Publisher {
    settings: MeshSettings,
    trust_anchors_der: Vec<Vec<u8>>,
    metrics: Arc<Metrics>,
    version: u64,
    tx: watch::Sender<Arc<State>>,
}

impl Publisher {
    /// A publisher whose first version is built from `objects`.
    pub fn new(
        settings: MeshSettings,
        trust_anchors_der: Vec<Vec<u8>>,
        metrics: Arc<Metrics>,
        model: Model,
        errors: Vec<ManifestError>,
    ) -> (Publisher, watch::Receiver<Arc<State>>) {
        let version = next_version(0);
        let first = build(
            &settings,
            &trust_anchors_der,
            &metrics,
            version,
            model,
            errors,
            SystemTime::now(),
            None,
        );
        let (tx, rx) = watch::channel(first);
        (
            Publisher {
                settings,
                trust_anchors_der,
                metrics,
                version,
                tx,
            },
            rx,
        )
    }

    /// Publishes a new version, unless nothing the proxies or `/errors` see
    /// changed (a Pod's status heartbeat, a route's status written by the
    /// leader): a new version every proxy must acknowledge for nothing would
    /// make `weftctl status` show them behind. False once nobody listens.
    pub fn publish(
        &mut self,
        model: Model,
        errors: Vec<ManifestError>,
        changed_at: SystemTime,
    ) -> bool {
        {
            let current = self.tx.borrow();
            if current.model == model
                && current.errors == errors
                && current.shared.trust_anchors_der == self.trust_anchors_der
            {
                return !self.tx.is_closed();
            }
        }
        self.version = next_version(self.version);
        let prev = self.tx.borrow().shared.clone();
        let state = build(
            &self.settings,
            &self.trust_anchors_der,
            &self.metrics,
            self.version,
            model,
            errors,
            changed_at,
            Some(&prev),
        );
        self.tx.send(state).is_ok()
    }

    /// New trust anchors (a root rotation); they go out with the next version.
    pub fn set_trust_anchors(&mut self, anchors: Vec<Vec<u8>>) {
        self.trust_anchors_der = anchors;
    }
}

#[allow(clippy::too_many_arguments)]
fn build(
    settings: &MeshSettings,
    anchors: &[Vec<u8>],
    metrics: &Metrics,
    version: u64,
    model: Model,
    errors: Vec<ManifestError>,
    changed_at: SystemTime,
    prev: Option<&Shared>,
) -> Arc<State> {
    let shared = snapshot::shared(version, &model, settings, anchors, prev);
    metrics.set_manifest_errors(errors.len());
    info!(
        version,
        services = model.services.len(),
        pods = model.pods.len(),
        routes = model.routes.len(),
        errors = errors.len(),
        "mesh model built"
    );
    Arc::new(State {
        model,
        shared,
        errors,
        changed_at,
    })
}

/// The local source of truth: a directory of manifests, polled for changes.
/// A burst of edits becomes one new version (debounced).
#[derive(Clone, Debug)]
pub struct Source {
    pub dir: PathBuf,
    pub settings: MeshSettings,
    pub trust_anchors_der: Vec<Vec<u8>>,
    /// Quiet time that ends a burst of changes (and the polling interval).
    pub debounce: Duration,
    /// Key sets fetched from `jwksUri`s (Secrets are read from the directory).
    pub external: super::external::External,
}

impl Source {
    /// Loads the directory now and keeps watching it in the background.
    pub fn spawn(self, metrics: Arc<Metrics>) -> watch::Receiver<Arc<State>> {
        let mut store = Store::new(&self.dir);
        store.refresh();
        let (model, errors) = model_and_findings(&store, &self.settings, &self.external);
        let (mut publisher, rx) = Publisher::new(
            self.settings.clone(),
            self.trust_anchors_der.clone(),
            metrics,
            model,
            errors,
        );
        tokio::spawn(async move {
            let fetched = self.external.changed();
            loop {
                // A file edited, or a key set fetched.
                let mut dirty = tokio::select! {
                    _ = tokio::time::sleep(self.debounce) => false,
                    _ = fetched.notified() => true,
                };
                dirty |= store.refresh();
                if !dirty {
                    continue;
                }
                let first_seen = SystemTime::now();
                // Absorb the rest of the burst, but publish within 10 quiet periods.
                for _ in 0..10 {
                    tokio::time::sleep(self.debounce).await;
                    if !store.refresh() {
                        break;
                    }
                }
                let (model, errors) = model_and_findings(&store, &self.settings, &self.external);
                if !publisher.publish(model, errors, first_seen) {
                    return;
                }
            }
        });
        rx
    }
}

/// The directory's model and errors, with what is wrong with its routes
/// (what status would say on Kubernetes: a missing backend or parent, a
/// cross-namespace backend no ReferenceGrant allows, a conflict). Such
/// routes stay applied: an unresolved backend's share gets 500.
fn model_and_findings(
    store: &Store,
    settings: &MeshSettings,
    external: &super::external::External,
) -> (Model, Vec<ManifestError>) {
    let (mut objects, mut errors) = store.objects();
    let (uris, _) = super::external::wanted(&objects);
    external.want(&uris, &Default::default());
    external.extend(&mut objects);
    let model = Model::build(&objects, &settings.opaque_ports);
    errors.extend(findings::route_errors(&model, |key| store.file_of(key)));
    errors.extend(super::authz::policy_errors(&model, |key| {
        store.file_of(key)
    }));
    (model, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::v1::MtlsMode;

    /// A route whose backend is missing is applied (its share gets 500) and
    /// listed at `/errors` with its file; fixing the directory clears it.
    #[tokio::test]
    async fn route_findings_are_errors_and_the_route_stays() {
        let dir = tempfile::tempdir().unwrap();
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 198.19.0.1\n  ports: [{port: 80}]\n";
        let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{kind: Service, name: web, port: 80}]\n  rules:\n  - backendRefs: [{name: web, port: 80}, {name: web-v2, port: 80}]\n";
        std::fs::write(dir.path().join("svc.yaml"), svc).unwrap();
        std::fs::write(dir.path().join("route.yaml"), route).unwrap();
        let source = Source {
            dir: dir.path().to_path_buf(),
            settings: MeshSettings {
                trust_domain: "cluster.local".into(),
                mtls_mode: MtlsMode::Permissive,
                default_authz: weft_api::v1::DefaultAuthz::Allow,
                opaque_ports: vec![],
            },
            trust_anchors_der: vec![],
            debounce: Duration::from_millis(10),
            external: crate::discovery::external::External::new(None, Arc::default()).unwrap(),
        };
        let mut rx = source.spawn(Arc::new(Metrics::default()));
        let state = rx.borrow_and_update().clone();
        assert_eq!(state.model.routes.len(), 1, "the route was dropped");
        assert_eq!(state.errors.len(), 1, "{:?}", state.errors);
        let e = &state.errors[0];
        assert_eq!(
            e.file.as_deref(),
            Some(dir.path().join("route.yaml").as_path())
        );
        assert_eq!(
            (e.object.as_str(), e.field.as_str()),
            ("HTTPRoute default/r", "spec.rules[0].backendRefs[1]")
        );
        assert!(e.message.contains("BackendNotFound"), "{e:?}");

        let v2 = svc
            .replace("name: web}", "name: web-v2}")
            .replace("198.19.0.1", "198.19.0.2");
        std::fs::write(dir.path().join("svc-v2.yaml"), v2).unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                rx.changed().await.unwrap();
                if rx.borrow_and_update().errors.is_empty() {
                    break;
                }
            }
        })
        .await
        .expect("the error clears once the backend exists");
    }
}
