//! The Kubernetes source of truth: one kube-rs reflector per kind the model
//! needs (Namespaces, Services, EndpointSlices, Pods, HTTPRoutes,
//! GRPCRoutes, ReferenceGrants, TrafficPolicies), whose stores feed the same [`Publisher`] the manifest
//! directory feeds.
//!
//! The watchers relist on `410 Gone` and reconnect with jittered backoff
//! (kube-runtime does both); a relist replaces a store only once it is
//! complete, so a restarting API server never publishes half a cluster.
//! While the API server is away the stores keep what they had, and so do the
//! proxies. Objects are stripped to what the model reads as they arrive, so a
//! big cluster's Pods cost little memory.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::experimental::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::discovery::Model;
use crate::discovery::annotations::validate_annotations;
use crate::discovery::crds::{
    AuthorizationPolicy, FaultInjection, RequestAuthentication, TrafficPolicy,
};
use crate::discovery::external::{self, External};
use crate::discovery::grpc;
use crate::discovery::manifests::{self, ManifestError};
use crate::discovery::objects::{Kind, Object, ObjectKey};
use crate::discovery::snapshot::MeshSettings;
use crate::discovery::source::{Publisher, State};
use crate::metrics::Metrics;

/// The reflectors' stores: what the cluster holds of each kind, as the model
/// reads it. The leader's status writers read them too.
#[derive(Clone, Debug)]
pub struct Stores {
    pub namespaces: Store<Namespace>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub pods: Store<Pod>,
    pub routes: Store<HttpRoute>,
    pub grpc_routes: Store<GrpcRoute>,
    /// ReferenceGrants (`gateway.networking.k8s.io/v1`, served by the
    /// v1.5 CRDs of both channels next to v1beta1).
    pub grants: Store<ReferenceGrant>,
    pub policies: Store<TrafficPolicy>,
    pub authz: Store<AuthorizationPolicy>,
    pub faults: Store<FaultInjection>,
    pub authns: Store<RequestAuthentication>,
}

/// Watches that are failing now, by kind: shown at `/errors` until they heal.
type Failing = Arc<Mutex<BTreeMap<&'static str, String>>>;

#[derive(Clone)]
pub struct KubeSource {
    pub client: Client,
    pub settings: MeshSettings,
    /// The trust anchors proxies are sent; a new value (a root rotation)
    /// goes out at once.
    pub anchors: watch::Receiver<Vec<Vec<u8>>>,
    /// Quiet time that ends a burst of changes before one push.
    pub debounce: Duration,
    /// Extra roots for fetching `jwksUri`s.
    pub jwks_ca_file: Option<std::path::PathBuf>,
}

/// Keeps only `weft.dev/*` annotations (the model reads no others).
fn weft_annotations(meta: &mut kube::api::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = &mut meta.annotations {
        a.retain(|k, _| k.starts_with("weft.dev/"));
    }
}

/// What the model reads of a Pod: identity, labels, address, readiness,
/// named ports and Weft's annotations.
fn strip_pod(p: &mut Pod) {
    weft_annotations(&mut p.metadata);
    p.metadata.owner_references = None;
    let spec = p.spec.take().unwrap_or_default();
    let keep = |c: &Container| Container {
        name: c.name.clone(),
        ports: c.ports.clone(),
        ..Default::default()
    };
    p.spec = Some(PodSpec {
        service_account_name: spec.service_account_name.clone(),
        containers: spec.containers.iter().map(keep).collect(),
        init_containers: spec
            .init_containers
            .as_ref()
            .map(|cs| cs.iter().map(keep).collect()),
        ..Default::default()
    });
    let status = p.status.take().unwrap_or_default();
    p.status = Some(PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        conditions: status
            .conditions
            .map(|cs| cs.into_iter().filter(|c| c.type_ == "Ready").collect()),
        ..Default::default()
    });
}

impl KubeSource {
    /// Starts the reflectors, waits until every kind has been listed once
    /// (a kind whose CRD is missing counts as empty, with an error), then
    /// publishes the first version and keeps publishing as the cluster
    /// changes.
    pub async fn spawn(
        self,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(watch::Receiver<Arc<State>>, Stores)> {
        let changed = Arc::new(Notify::new());
        let failing: Failing = Arc::default();
        let c = &self.client;
        let reflect = |k| (changed.clone(), failing.clone(), metrics.clone(), k);
        let stores = Stores {
            namespaces: start(
                Api::all(c.clone()),
                weft_annotations_ns,
                reflect("Namespace"),
            ),
            services: start(
                Api::all(c.clone()),
                |s: &mut Service| {
                    weft_annotations(&mut s.metadata);
                    s.status = None;
                },
                reflect("Service"),
            ),
            slices: start(
                Api::all(c.clone()),
                |s: &mut EndpointSlice| {
                    s.metadata.managed_fields = None;
                    s.metadata.annotations = None;
                },
                reflect("EndpointSlice"),
            ),
            pods: start(Api::all(c.clone()), strip_pod, reflect("Pod")),
            routes: start(
                Api::all(c.clone()),
                |r: &mut HttpRoute| {
                    r.metadata.managed_fields = None;
                },
                reflect("HTTPRoute"),
            ),
            grpc_routes: start(
                Api::all(c.clone()),
                |r: &mut GrpcRoute| {
                    r.metadata.managed_fields = None;
                },
                reflect("GRPCRoute"),
            ),
            grants: start(
                Api::all(c.clone()),
                |g: &mut ReferenceGrant| {
                    g.metadata.managed_fields = None;
                    g.metadata.annotations = None;
                },
                reflect("ReferenceGrant"),
            ),
            policies: start(
                Api::all(c.clone()),
                |p: &mut TrafficPolicy| {
                    p.metadata.managed_fields = None;
                },
                reflect("TrafficPolicy"),
            ),
            authz: start(
                Api::all(c.clone()),
                |p: &mut AuthorizationPolicy| {
                    p.metadata.managed_fields = None;
                },
                reflect("AuthorizationPolicy"),
            ),
            faults: start(
                Api::all(c.clone()),
                |f: &mut FaultInjection| {
                    f.metadata.managed_fields = None;
                },
                reflect("FaultInjection"),
            ),
            authns: start(
                Api::all(c.clone()),
                |p: &mut RequestAuthentication| {
                    p.metadata.managed_fields = None;
                },
                reflect("RequestAuthentication"),
            ),
        };

        info!(
            "listing the cluster's Namespaces, Services, EndpointSlices, Pods, HTTPRoutes, GRPCRoutes, ReferenceGrants, TrafficPolicies, AuthorizationPolicies, RequestAuthentications and FaultInjections"
        );
        let mut last_report = tokio::time::Instant::now();
        while !stores.settled(&failing) {
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                last_report = tokio::time::Instant::now();
                let f = failing.lock().map(|f| f.clone()).unwrap_or_default();
                warn!(failing = ?f, "still waiting for the first list of every kind");
            }
        }
        // Fetched key sets and named Secrets wake the same loop.
        let external = External::new(self.jwks_ca_file.as_deref(), changed.clone())?;
        external.spawn(Some(self.client.clone()));
        let mut builder = Builder {
            external: Some(external),
            ..Builder::default()
        };
        let (objects, errors) = builder.objects(&stores, &failing);
        let mut anchors = self.anchors.clone();
        let first_anchors = anchors.borrow_and_update().clone();
        let (mut publisher, rx) = Publisher::new(
            self.settings.clone(),
            first_anchors,
            metrics,
            Model::build(&objects, &self.settings.opaque_ports),
            errors,
        );
        let debounce = self.debounce;
        let opaque_ports = self.settings.opaque_ports.clone();
        let s = stores.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = changed.notified() => {}
                    res = anchors.changed() => {
                        if res.is_err() {
                            return;
                        }
                        let new = anchors.borrow_and_update().clone();
                        publisher.set_trust_anchors(new);
                    }
                }
                let first_seen = SystemTime::now();
                // Absorb the rest of a burst: publish after a quiet period,
                // or ten periods after the first change at the latest (a
                // steady stream of events, pods churning, is published about
                // once a second, not once per few events).
                let latest = tokio::time::Instant::now() + debounce * 10;
                loop {
                    let quiet = tokio::time::Instant::now() + debounce;
                    tokio::select! {
                        _ = changed.notified() => {}
                        _ = tokio::time::sleep_until(quiet.min(latest)) => break,
                    }
                    if tokio::time::Instant::now() >= latest {
                        break;
                    }
                }
                let (objects, errors) = builder.objects(&s, &failing);
                let model = Model::build(&objects, &opaque_ports);
                if !publisher.publish(model, errors, first_seen) {
                    return;
                }
            }
        });
        Ok((rx, stores))
    }
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("settings", &self.settings)
            .field("debounce", &self.debounce)
            .finish_non_exhaustive()
    }
}

fn weft_annotations_ns(n: &mut Namespace) {
    weft_annotations(&mut n.metadata);
    n.spec = None;
    n.status = None;
}

impl Stores {
    /// Every kind listed once, or failing because its CRD is not installed.
    fn settled(&self, failing: &Failing) -> bool {
        let f = failing.lock().map(|f| f.clone()).unwrap_or_default();
        let ok = |kind: &str, ready: bool| ready || f.get(kind).is_some_and(|e| is_not_found(e));
        ok("Namespace", is_ready(&self.namespaces))
            && ok("Service", is_ready(&self.services))
            && ok("EndpointSlice", is_ready(&self.slices))
            && ok("Pod", is_ready(&self.pods))
            && ok("HTTPRoute", is_ready(&self.routes))
            && ok("GRPCRoute", is_ready(&self.grpc_routes))
            && ok("ReferenceGrant", is_ready(&self.grants))
            && ok("TrafficPolicy", is_ready(&self.policies))
            && ok("AuthorizationPolicy", is_ready(&self.authz))
            && ok("FaultInjection", is_ready(&self.faults))
            && ok("RequestAuthentication", is_ready(&self.authns))
    }
}

fn is_not_found(message: &str) -> bool {
    message.contains("404") || message.contains("NotFound") || message.contains("not found")
}

fn is_ready<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    // A store is ready once its first list is complete.
    futures_util::FutureExt::now_or_never(store.wait_until_ready()).is_some_and(|r| r.is_ok())
}

/// Starts one reflector: its store, fed by a watcher whose events are
/// stripped by `strip`, counted, and announced on `changed`.
fn start<K, F>(
    api: Api<K>,
    strip: F,
    (changed, failing, metrics, kind): (Arc<Notify>, Failing, Arc<Metrics>, &'static str),
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    F: FnMut(&mut K) + Send + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(strip)
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    if let Ok(mut f) = failing.lock()
                        && f.remove(kind).is_some()
                    {
                        info!(kind, "the watch recovered");
                    }
                    match event {
                        watcher::Event::Init => metrics.watch_restarted(kind),
                        watcher::Event::InitApply(_) => {}
                        _ => {
                            metrics.watch_event(kind);
                            changed.notify_one();
                        }
                    }
                }
                Err(e) => {
                    metrics.watch_failed(kind);
                    let message = e.to_string();
                    warn!(kind, error = %message, "watch failed; retrying with backoff");
                    if let Ok(mut f) = failing.lock() {
                        f.insert(kind, message);
                    }
                    changed.notify_one();
                }
            }
        }
    });
    reader
}

/// Turns the stores into the model's objects, checking each as the manifest
/// source does. An object that fails a check keeps its last good version (the
/// API server holds only the new one); one deleted from the API goes.
#[derive(Debug, Default)]
struct Builder {
    last_good: HashMap<ObjectKey, Object>,
    external: Option<External>,
}

impl Builder {
    fn objects(
        &mut self,
        stores: &Stores,
        failing: &Failing,
    ) -> (BTreeMap<ObjectKey, Object>, Vec<ManifestError>) {
        let mut objects = BTreeMap::new();
        let mut errors = Vec::new();
        let mut add = |key: ObjectKey, obj: Object, check: Result<(), (String, String)>| match check
        {
            Ok(()) => {
                self.last_good.insert(key.clone(), obj.clone());
                objects.insert(key, obj);
            }
            Err((field, message)) => {
                let kept = self.last_good.get(&key).cloned();
                let message = if kept.is_some() {
                    format!("{message} (the last good version keeps serving)")
                } else {
                    message
                };
                errors.push(ManifestError {
                    file: None,
                    object: key.to_string(),
                    field,
                    message,
                });
                if let Some(old) = kept {
                    objects.insert(key, old);
                }
            }
        };
        for n in stores.namespaces.state() {
            let check = validate_annotations(n.metadata.annotations.as_ref());
            add(key(Kind::Namespace, &*n, true), Object::Namespace(n), check);
        }
        for s in stores.services.state() {
            let check = validate_annotations(s.metadata.annotations.as_ref());
            add(key(Kind::Service, &*s, false), Object::Service(s), check);
        }
        for es in stores.slices.state() {
            add(
                key(Kind::EndpointSlice, &*es, false),
                Object::EndpointSlice(es),
                Ok(()),
            );
        }
        for p in stores.pods.state() {
            let check = validate_annotations(p.metadata.annotations.as_ref());
            add(key(Kind::Pod, &*p, false), Object::Pod(p), check);
        }
        for r in stores.routes.state() {
            // Routes of Gateways are not the mesh's business.
            let Some(mut mesh) = mesh_route(&r) else {
                continue;
            };
            // The model reads the spec: a status write is no change.
            volatile(&mut mesh.metadata);
            mesh.status = None;
            let check = manifests::validate_route(&mesh);
            add(
                key(Kind::HttpRoute, &*r, false),
                Object::HttpRoute(Arc::new(mesh)),
                check,
            );
        }
        for r in stores.grpc_routes.state() {
            let Some(mut mesh) = mesh_grpc_route(&r) else {
                continue;
            };
            volatile(&mut mesh.metadata);
            mesh.status = None;
            let check = manifests::validate_route(&grpc::to_http(&mesh));
            add(
                key(Kind::GrpcRoute, &*r, false),
                Object::GrpcRoute(Arc::new(mesh)),
                check,
            );
        }
        for g in stores.grants.state() {
            let mut spec_only = (*g).clone();
            volatile(&mut spec_only.metadata);
            add(
                key(Kind::ReferenceGrant, &*g, false),
                Object::ReferenceGrant(Arc::new(spec_only)),
                Ok(()),
            );
        }
        for p in stores.policies.state() {
            let check = manifests::validate_policy(&p);
            let mut spec_only = (*p).clone();
            volatile(&mut spec_only.metadata);
            spec_only.status = None;
            add(
                key(Kind::TrafficPolicy, &*p, false),
                Object::TrafficPolicy(Arc::new(spec_only)),
                check,
            );
        }
        for p in stores.authz.state() {
            let check = manifests::validate_authz(&p);
            let mut spec_only = (*p).clone();
            volatile(&mut spec_only.metadata);
            spec_only.status = None;
            add(
                key(Kind::AuthorizationPolicy, &*p, false),
                Object::AuthorizationPolicy(Arc::new(spec_only)),
                check,
            );
        }
        for f in stores.faults.state() {
            let check = f.spec.validate();
            let mut spec_only = (*f).clone();
            volatile(&mut spec_only.metadata);
            add(
                key(Kind::FaultInjection, &*f, false),
                Object::FaultInjection(Arc::new(spec_only)),
                check,
            );
        }
        for p in stores.authns.state() {
            let check = p.spec.validate();
            let mut spec_only = (*p).clone();
            volatile(&mut spec_only.metadata);
            spec_only.status = None;
            add(
                key(Kind::RequestAuthentication, &*p, false),
                Object::RequestAuthentication(Arc::new(spec_only)),
                check,
            );
        }
        // What the API deleted is gone, not kept.
        self.last_good.retain(|k, _| objects.contains_key(k));
        if let Some(ext) = &self.external {
            let (uris, secrets) = external::wanted(&objects);
            ext.want(&uris, &secrets);
            ext.extend(&mut objects);
        }
        if let Ok(f) = failing.lock() {
            for (kind, message) in f.iter() {
                let hint = if is_not_found(message) {
                    " (is its CRD installed? see k8s/crds and k8s/gateway-api)"
                } else {
                    " (retrying; the last state keeps serving)"
                };
                errors.push(ManifestError {
                    file: None,
                    object: format!("watch {kind}"),
                    field: String::new(),
                    message: format!("{message}{hint}"),
                });
            }
        }
        (objects, errors)
    }
}

/// Clears what changes with every write but means nothing to the model.
fn volatile(meta: &mut kube::api::ObjectMeta) {
    meta.resource_version = None;
    meta.managed_fields = None;
    meta.generation = None;
}

fn key<K: Resource>(kind: Kind, obj: &K, cluster_scoped: bool) -> ObjectKey {
    let meta = obj.meta();
    ObjectKey {
        kind,
        namespace: if cluster_scoped {
            String::new()
        } else {
            meta.namespace.clone().unwrap_or_default()
        },
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// A route with only its Service parents (the GAMMA part), or none when it
/// has no Service parent.
pub fn mesh_route(r: &HttpRoute) -> Option<HttpRoute> {
    let parents = r.spec.parent_refs.as_deref().unwrap_or_default();
    let mesh: Vec<_> = parents
        .iter()
        .filter(|p| is_service_ref(p.group.as_deref(), p.kind.as_deref()))
        .cloned()
        .collect();
    if mesh.is_empty() {
        return None;
    }
    let mut out = r.clone();
    out.spec.parent_refs = Some(mesh);
    Some(out)
}

/// [`mesh_route`] for a GRPCRoute.
pub fn mesh_grpc_route(r: &GrpcRoute) -> Option<GrpcRoute> {
    let parents = r.spec.parent_refs.as_deref().unwrap_or_default();
    let mesh: Vec<_> = parents
        .iter()
        .filter(|p| is_service_ref(p.group.as_deref(), p.kind.as_deref()))
        .cloned()
        .collect();
    if mesh.is_empty() {
        return None;
    }
    let mut out = r.clone();
    out.spec.parent_refs = Some(mesh);
    Some(out)
}

pub use crate::discovery::routes::is_service_ref;
