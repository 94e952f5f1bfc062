//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing` only, not
//! an API): what the control plane does with a manifest file's text, from
//! reading it to the snapshots it sends, without a disk or a stream.

use std::path::Path;

use weft_api::v1::{self, MtlsMode};

use crate::discovery::ManifestError;
use crate::discovery::manifests::Store;
use crate::discovery::model::Model;
use crate::discovery::snapshot::{self, MeshSettings};

/// The trust domain of the snapshots built here.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// What one proxy is sent across an edit of the manifest file.
#[derive(Debug)]
pub struct Sent {
    /// The complete snapshot of the version before the edit.
    pub before: v1::Snapshot,
    /// The changes from `before` to the version after the edit.
    pub delta: v1::Snapshot,
    /// The complete snapshot of the version after the edit.
    pub after: v1::Snapshot,
}

/// Reads `before` as the one file of a local-mode manifest directory, then
/// `after` as an edit of it (a hot reload), and builds what proxies are sent
/// at each version: for a proxy the model does not know, and per Pod.
/// Returns the manifest errors after the edit, and what each proxy got.
pub fn manifest_edit(before: &str, after: &str) -> (Vec<ManifestError>, Vec<Sent>) {
    let settings = MeshSettings {
        trust_domain: TRUST_DOMAIN.into(),
        mtls_mode: MtlsMode::Permissive,
        default_authz: weft_api::v1::DefaultAuthz::Allow,
        opaque_ports: vec![6379],
    };
    let path = Path::new("/fuzz/manifests/objects.yaml");
    let mut store = Store::new(Path::new("/fuzz/manifests"));
    store.load_text(path, before);
    let model1 = Model::build(&store.objects().0, &settings.opaque_ports);
    let shared1 = snapshot::shared(1, &model1, &settings, &[], None);
    store.load_text(path, after);
    let (objects, errors) = store.objects();
    let model2 = Model::build(&objects, &settings.opaque_ports);
    let shared2 = snapshot::shared(2, &model2, &settings, &[], Some(&shared1));
    let pods = model2
        .pods
        .iter()
        .map(|p| (p.namespace.as_str(), p.name.as_str()))
        .chain([("default", "not-a-pod")]);
    let sent = pods
        .map(|(ns, pod)| {
            let inbound1 = snapshot::inbound(&model1, &settings, ns, pod);
            let inbound2 = snapshot::inbound(&model2, &settings, ns, pod);
            Sent {
                before: snapshot::for_proxy(&shared1, inbound1, None).0,
                delta: snapshot::for_proxy(&shared2, inbound2.clone(), Some(1)).0,
                after: snapshot::for_proxy(&shared2, inbound2, None).0,
            }
        })
        .collect();
    (errors, sent)
}

/// A fresh mesh CA for [`TRUST_DOMAIN`], as local mode generates one (in
/// memory: nothing is written).
pub fn throwaway_ca() -> Result<crate::identity::Ca, crate::identity::CaError> {
    let (cert, key) = crate::identity::Ca::generate_pem(TRUST_DOMAIN)?;
    let name = Path::new("generated");
    crate::identity::Ca::from_pem((cert.as_bytes(), name), (key.as_bytes(), name), None)
}
