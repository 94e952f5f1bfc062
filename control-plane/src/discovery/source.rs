//! The local source of truth: a directory of manifests, polled for changes.
//! A burst of edits becomes one new model (debounced), published to every
//! Watch stream through a `watch` channel.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::info;

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
    /// When the change behind this version was first seen on disk.
    pub changed_at: SystemTime,
}

#[derive(Clone, Debug)]
pub struct Source {
    pub dir: PathBuf,
    pub settings: MeshSettings,
    pub trust_anchors_der: Vec<Vec<u8>>,
    /// Quiet time that ends a burst of changes (and the polling interval).
    pub debounce: Duration,
}

/// Versions only grow, across restarts too: milliseconds since the epoch,
/// bumped when two builds fall in the same millisecond.
fn next_version(prev: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    now.max(prev + 1)
}

impl Source {
    fn build(
        &self,
        store: &Store,
        version: u64,
        changed_at: SystemTime,
        metrics: &Metrics,
        prev: Option<&Shared>,
    ) -> Arc<State> {
        let (objects, errors) = store.objects();
        let model = Model::build(&objects, &self.settings.opaque_ports);
        let shared = snapshot::shared(
            version,
            &model,
            &self.settings,
            &self.trust_anchors_der,
            prev,
        );
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

    /// Loads the directory now and keeps watching it in the background.
    pub fn spawn(self, metrics: Arc<Metrics>) -> watch::Receiver<Arc<State>> {
        let mut store = Store::new(&self.dir);
        store.refresh();
        let mut version = next_version(0);
        let (tx, rx) =
            watch::channel(self.build(&store, version, SystemTime::now(), &metrics, None));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(self.debounce).await;
                if !store.refresh() {
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
                version = next_version(version);
                let prev = tx.borrow().shared.clone();
                let state = self.build(&store, version, first_seen, &metrics, Some(&prev));
                if tx.send(state).is_err() {
                    return;
                }
            }
        });
        rx
    }
}
