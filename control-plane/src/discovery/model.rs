//! The mesh as the control plane understands it: Services with their
//! endpoints, Pods with their identities, Namespaces with their defaults, and
//! the routes and policies attached to Services. Both sources (the manifest
//! directory and the Kubernetes API) hand [`Model::build`] the same objects.
//!
//! Endpoints come from EndpointSlices when a Service has any (in a cluster,
//! the EndpointSlice controller writes them); otherwise from the Service's
//! selector over ready Pods, as that controller would (local manifests).
//!
//! Per-workload settings resolve from the most specific place that sets them:
//! the Pod's annotation, then a Service that selects it, then its Namespace,
//! then the mesh-wide flag.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::experimental::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_api::SpiffeId;
use weft_api::v1::{MtlsMode, Protocol};

use super::annotations::{
    INJECT, MTLS_MODE_ANNOTATION, OPAQUE_PORTS_ANNOTATION, parse_mtls_mode, parse_ports,
};
use super::objects::{Object, ObjectKey};

/// The sidecar container the injector adds; its presence marks a Pod meshed.
pub const PROXY_CONTAINER: &str = "weft-proxy";
/// The label an EndpointSlice names its Service by.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodModel {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Option<IpAddr>,
    pub service_account: String,
    pub meshed: bool,
    pub ready: bool,
    /// Named container ports, for named targetPorts.
    pub named_ports: BTreeMap<String, u16>,
    /// The Pod's own `weft.dev/mtls-mode`, if any.
    pub mtls_mode: Option<MtlsMode>,
    /// The Pod's own `weft.dev/opaque-ports`.
    pub opaque_ports: Vec<u16>,
    /// Services its proxy receives from the start (`weft.dev/dependencies`),
    /// as "namespace/name".
    pub dependencies: Vec<std::sync::Arc<str>>,
}

impl PodModel {
    pub fn identity(&self, trust_domain: &str) -> Option<SpiffeId> {
        SpiffeId::new(trust_domain, &self.namespace, &self.service_account).ok()
    }

    /// The workload the pod belongs to, as dashboards group pods: a
    /// Deployment's pod by the Deployment (its name up to
    /// `-<pod-template-hash>-`); else by its `app.kubernetes.io/name` or
    /// `app` label, with its `app.kubernetes.io/version` or `version` label
    /// when it has one (`backend-v1`, as Kiali groups versions); else a
    /// StatefulSet's or DaemonSet's pod by its name up to the last `-`;
    /// else by its own name.
    pub fn workload(&self) -> String {
        let label = |keys: [&str; 2]| keys.iter().find_map(|k| self.labels.get(*k));
        if let Some(hash) = self.labels.get("pod-template-hash")
            && let Some((deployment, _)) = self.name.split_once(&format!("-{hash}-"))
            && !deployment.is_empty()
        {
            return deployment.to_string();
        }
        if let Some(app) = label(["app.kubernetes.io/name", "app"]) {
            return match label(["app.kubernetes.io/version", "version"]) {
                Some(v) => format!("{app}-{v}"),
                None => app.clone(),
            };
        }
        if self.labels.contains_key("controller-revision-hash")
            && let Some((owner, _)) = self.name.rsplit_once('-')
            && !owner.is_empty()
        {
            return owner.to_string();
        }
        self.name.clone()
    }

    /// What the model keeps of a Pod (both sources go through this).
    pub fn from_pod(p: &Pod) -> PodModel {
        let meta = &p.metadata;
        let spec = p.spec.as_ref();
        let has_sidecar = spec.is_some_and(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .any(|c| c.name == PROXY_CONTAINER)
        });
        let meshed = has_sidecar
            || flag(meta.annotations.as_ref(), INJECT)
                .or_else(|| flag(meta.labels.as_ref(), INJECT))
                .is_some_and(|v| v == "enabled");
        let status = p.status.as_ref();
        // Ready unless a Ready condition says otherwise (local manifests
        // rarely carry conditions); a Pod that has finished is never ready.
        let finished = status
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
        let ready = !finished
            && meta.deletion_timestamp.is_none()
            && status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .is_none_or(|c| c.status == "True");
        let named_ports = spec
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|cp| Some((cp.name.clone()?, u16::try_from(cp.container_port).ok()?)))
            .collect();
        PodModel {
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            labels: meta.labels.clone().unwrap_or_default(),
            ip: status
                .and_then(|s| s.pod_ip.as_ref())
                .and_then(|ip| ip.parse().ok()),
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            meshed,
            ready,
            named_ports,
            mtls_mode: mtls_mode(meta.annotations.as_ref()),
            opaque_ports: annotated_ports(meta.annotations.as_ref()),
            dependencies: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(super::annotations::DEPENDENCIES_ANNOTATION))
                .and_then(|v| {
                    super::annotations::parse_dependencies(
                        v,
                        meta.namespace.as_deref().unwrap_or("default"),
                    )
                    .ok()
                })
                .unwrap_or_default()
                .into_iter()
                .map(std::sync::Arc::from)
                .collect(),
        }
    }
}

/// One address a Service port sends to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointModel {
    pub ip: IpAddr,
    pub port: u16,
    /// The Pod behind it (same namespace as the Service), when known.
    pub pod: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortModel {
    pub port: u16,
    pub name: String,
    pub target: IntOrString,
    pub protocol: Protocol,
    /// Ready endpoints, sorted by address.
    pub endpoints: Vec<EndpointModel>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceModel {
    pub name: String,
    pub namespace: String,
    pub vip: Option<IpAddr>,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<PortModel>,
    /// The Service's `weft.dev/mtls-mode`: the default for the pods it selects.
    pub mtls_mode: Option<MtlsMode>,
}

impl ServiceModel {
    /// The ready Pods this Service selects (an empty selector selects none).
    pub fn selects<'a>(&'a self, pods: &'a [PodModel]) -> impl Iterator<Item = &'a PodModel> + 'a {
        pods.iter().filter(move |p| self.selects_pod(p))
    }

    fn selects_pod(&self, p: &PodModel) -> bool {
        !self.selector.is_empty()
            && p.namespace == self.namespace
            && p.ready
            && p.ip.is_some()
            && self
                .selector
                .iter()
                .all(|(k, v)| p.labels.get(k) == Some(v))
    }
}

/// A Namespace's defaults for its workloads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceModel {
    pub mtls_mode: Option<MtlsMode>,
    pub opaque_ports: Vec<u16>,
    /// Labelled `weft.dev/inject=enabled`.
    pub inject: bool,
    /// `weft.dev/default-authz`.
    pub default_authz: Option<weft_api::v1::DefaultAuthz>,
}

/// The port on `pod` that `target` names.
pub fn resolve_target(target: &IntOrString, port: u16, pod: &PodModel) -> Option<u16> {
    match target {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(s) if s.is_empty() => Some(port),
        IntOrString::String(s) => pod.named_ports.get(s).copied().or_else(|| s.parse().ok()),
    }
}

fn mtls_mode(annotations: Option<&BTreeMap<String, String>>) -> Option<MtlsMode> {
    flag(annotations, MTLS_MODE_ANNOTATION).and_then(|v| parse_mtls_mode(&v))
}

fn annotated_ports(annotations: Option<&BTreeMap<String, String>>) -> Vec<u16> {
    flag(annotations, OPAQUE_PORTS_ANNOTATION)
        .and_then(|v| parse_ports(&v).ok())
        .unwrap_or_default()
}

/// The stricter of two modes.
pub fn stricter(a: MtlsMode, b: MtlsMode) -> MtlsMode {
    if a == MtlsMode::Strict || b == MtlsMode::Strict {
        MtlsMode::Strict
    } else {
        a
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    pub services: Vec<ServiceModel>,
    pub pods: Vec<PodModel>,
    pub namespaces: BTreeMap<String, NamespaceModel>,
    /// HTTPRoutes and GRPCRoutes (read as HTTPRoutes, [`super::grpc`]).
    pub routes: Vec<MeshRoute>,
    pub policies: Vec<super::crds::TrafficPolicy>,
    pub reference_grants: Vec<ReferenceGrant>,
    pub authz_policies: Vec<super::crds::AuthorizationPolicy>,
    /// FaultInjections, applied by the route rules that refer to them.
    pub faults: Vec<super::crds::FaultInjection>,
    pub request_authns: Vec<super::crds::RequestAuthentication>,
    /// Secrets' data by (namespace, name): only those policies name.
    pub secrets: BTreeMap<(String, String), Arc<super::objects::SecretData>>,
    /// Key sets fetched from `jwksUri`s, by URL.
    pub jwks: BTreeMap<String, Arc<super::objects::FetchedJwks>>,
    /// For each pod (same order as `pods`), the Services that select it (by
    /// index in `services`): built once, so that a pod's inbound settings
    /// do not scan every Service, per proxy, per version.
    selecting: Vec<Vec<usize>>,
}

/// Which Gateway API kind a route was written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

/// A route as the mesh reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshRoute {
    pub kind: RouteKind,
    pub route: HttpRoute,
}

impl MeshRoute {
    pub fn namespace(&self) -> &str {
        self.route
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default")
    }

    pub fn name(&self) -> &str {
        self.route.metadata.name.as_deref().unwrap_or_default()
    }
}

/// `appProtocol` (and the opaque-ports list) to a protocol.
fn protocol(app_protocol: Option<&str>, port: u16, opaque: &[u16]) -> Protocol {
    if opaque.contains(&port) {
        return Protocol::Opaque;
    }
    match app_protocol {
        Some("tcp") => Protocol::Opaque,
        Some("http") => Protocol::Http1,
        Some("http2" | "kubernetes.io/h2c") => Protocol::Http2,
        Some("grpc") => Protocol::Grpc,
        _ => Protocol::Unspecified,
    }
}

fn flag(map: Option<&BTreeMap<String, String>>, key: &str) -> Option<String> {
    map.and_then(|m| m.get(key)).cloned()
}

impl Model {
    /// The model of `objects`; `opaque_ports` is the mesh-wide list.
    pub fn build(objects: &BTreeMap<ObjectKey, Object>, opaque_ports: &[u16]) -> Model {
        let mut m = Model::default();
        let mut slices: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
        for (key, obj) in objects {
            match obj {
                Object::Namespace(ns) => {
                    let meta = &ns.metadata;
                    m.namespaces.insert(
                        key.name.clone(),
                        NamespaceModel {
                            mtls_mode: mtls_mode(meta.annotations.as_ref()),
                            opaque_ports: annotated_ports(meta.annotations.as_ref()),
                            inject: flag(meta.labels.as_ref(), INJECT)
                                .is_some_and(|v| v == "enabled"),
                            default_authz: flag(
                                meta.annotations.as_ref(),
                                super::annotations::DEFAULT_AUTHZ_ANNOTATION,
                            )
                            .and_then(|v| super::annotations::parse_default_authz(&v)),
                        },
                    );
                }
                Object::Pod(p) => {
                    let mut pod = PodModel::from_pod(p);
                    pod.name.clone_from(&key.name);
                    pod.namespace.clone_from(&key.namespace);
                    m.pods.push(pod);
                }
                Object::EndpointSlice(es) => {
                    if let Some(svc) = es
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    {
                        slices
                            .entry((key.namespace.as_str(), svc.as_str()))
                            .or_default()
                            .push(es);
                    }
                }
                Object::Service(_)
                | Object::HttpRoute(_)
                | Object::GrpcRoute(_)
                | Object::ReferenceGrant(_)
                | Object::AuthorizationPolicy(_)
                | Object::FaultInjection(_)
                | Object::RequestAuthentication(_)
                | Object::Secret(_)
                | Object::Jwks(_)
                | Object::TrafficPolicy(_) => {}
            }
        }
        // Sorted, so that `pod` (once per proxy per change) is a binary search.
        m.pods
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        // Pods by one label, so that a Service's selector looks at the pods
        // carrying its first label, not at every pod of the mesh.
        let mut by_label: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
        for (i, p) in m.pods.iter().enumerate() {
            for (k, v) in &p.labels {
                by_label
                    .entry((p.namespace.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(i);
            }
        }
        let mut selecting: Vec<Vec<usize>> = vec![Vec::new(); m.pods.len()];
        for (key, obj) in objects {
            match obj {
                Object::Service(s) => {
                    let Some(spec) = &s.spec else { continue };
                    let annotations = s.metadata.annotations.as_ref();
                    let ns = m.namespaces.get(&key.namespace);
                    let mut opaque: Vec<u16> = opaque_ports.to_vec();
                    opaque.extend(ns.map(|n| n.opaque_ports.iter()).into_iter().flatten());
                    opaque.extend(annotated_ports(annotations));
                    let mut svc = ServiceModel {
                        name: key.name.clone(),
                        namespace: key.namespace.clone(),
                        vip: spec.cluster_ip.as_ref().and_then(|ip| ip.parse().ok()),
                        selector: spec.selector.clone().unwrap_or_default(),
                        ports: Vec::new(),
                        mtls_mode: mtls_mode(annotations),
                    };
                    let own_slices = slices
                        .get(&(key.namespace.as_str(), key.name.as_str()))
                        .map(Vec::as_slice);
                    let selected: Vec<usize> = match svc.selector.iter().next() {
                        Some((k, v)) => by_label
                            .get(&(key.namespace.as_str(), k.as_str(), v.as_str()))
                            .into_iter()
                            .flatten()
                            .copied()
                            .filter(|&i| svc.selects_pod(&m.pods[i]))
                            .collect(),
                        None => Vec::new(),
                    };
                    for &i in &selected {
                        selecting[i].push(m.services.len());
                    }
                    svc.ports = spec
                        .ports
                        .iter()
                        .flatten()
                        // Only TCP is proxied (kube-dns's UDP port, say, is not).
                        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
                        .filter_map(|p| {
                            let port = u16::try_from(p.port).ok()?;
                            let mut pm = PortModel {
                                port,
                                name: p.name.clone().unwrap_or_default(),
                                target: p.target_port.clone().unwrap_or(IntOrString::Int(p.port)),
                                protocol: protocol(p.app_protocol.as_deref(), port, &opaque),
                                endpoints: Vec::new(),
                            };
                            pm.endpoints = match own_slices {
                                Some(slices) => from_slices(slices, &pm.name),
                                None => selected
                                    .iter()
                                    .map(|&i| &m.pods[i])
                                    .filter_map(|pod| {
                                        Some(EndpointModel {
                                            ip: pod.ip?,
                                            port: resolve_target(&pm.target, port, pod)?,
                                            pod: Some(pod.name.clone()),
                                        })
                                    })
                                    .collect(),
                            };
                            pm.endpoints.sort_by_key(|a| (a.ip, a.port));
                            pm.endpoints
                                .dedup_by(|a, b| (a.ip, a.port) == (b.ip, b.port));
                            Some(pm)
                        })
                        .collect();
                    m.services.push(svc);
                }
                Object::HttpRoute(r) => m.routes.push(MeshRoute {
                    kind: RouteKind::Http,
                    route: (**r).clone(),
                }),
                Object::GrpcRoute(r) => m.routes.push(MeshRoute {
                    kind: RouteKind::Grpc,
                    route: super::grpc::to_http(r),
                }),
                Object::ReferenceGrant(g) => m.reference_grants.push((**g).clone()),
                Object::TrafficPolicy(p) => m.policies.push((**p).clone()),
                Object::AuthorizationPolicy(p) => m.authz_policies.push((**p).clone()),
                Object::FaultInjection(f) => m.faults.push((**f).clone()),
                Object::RequestAuthentication(p) => m.request_authns.push((**p).clone()),
                Object::Secret(d) => {
                    m.secrets
                        .insert((key.namespace.clone(), key.name.clone()), d.clone());
                }
                Object::Jwks(j) => {
                    m.jwks.insert(key.name.clone(), j.clone());
                }
                Object::Namespace(_) | Object::Pod(_) | Object::EndpointSlice(_) => {}
            }
        }
        m.selecting = selecting;
        m
    }

    /// The Services that select `pod` (ready, with an IP).
    pub fn services_selecting<'a>(
        &'a self,
        pod: &PodModel,
    ) -> impl Iterator<Item = &'a ServiceModel> + 'a {
        let i = self
            .pods
            .binary_search_by(|p| {
                (p.namespace.as_str(), p.name.as_str())
                    .cmp(&(pod.namespace.as_str(), pod.name.as_str()))
            })
            .ok();
        i.and_then(|i| self.selecting.get(i))
            .into_iter()
            .flatten()
            .filter_map(|&s| self.services.get(s))
    }

    /// Whether a ReferenceGrant in `to_ns` lets a route of `from_kind` in
    /// `from_ns` refer to Service `to_name` there.
    pub fn grants(&self, from_ns: &str, from_kind: &str, to_ns: &str, to_name: &str) -> bool {
        self.reference_grants.iter().any(|g| {
            g.metadata.namespace.as_deref().unwrap_or("default") == to_ns
                && g.spec.from.iter().any(|f| {
                    f.group == "gateway.networking.k8s.io"
                        && f.kind == from_kind
                        && f.namespace == from_ns
                })
                && g.spec.to.iter().any(|t| {
                    (t.group.is_empty() || t.group == "core")
                        && t.kind == "Service"
                        && t.name.as_deref().is_none_or(|n| n == to_name)
                })
        })
    }

    /// `pods` is sorted by namespace and name (see `build`).
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodModel> {
        self.pods
            .binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&(namespace, name)))
            .ok()
            .map(|i| &self.pods[i])
    }

    /// The inbound mTLS mode of `pod`: its own annotation, else the strictest
    /// of the Services that select it, else its Namespace's, else `default`.
    pub fn mtls_mode(&self, pod: &PodModel, default: MtlsMode) -> MtlsMode {
        if let Some(m) = pod.mtls_mode {
            return m;
        }
        let by_service = self
            .services_selecting(pod)
            .filter_map(|s| s.mtls_mode)
            .reduce(stricter);
        by_service
            .or_else(|| {
                self.namespaces
                    .get(&pod.namespace)
                    .and_then(|n| n.mtls_mode)
            })
            .unwrap_or(default)
    }

    /// Ports of `pod` never sniffed inbound: its own annotation and its
    /// Namespace's.
    pub fn pod_opaque_ports(&self, pod: &PodModel) -> BTreeSet<u16> {
        let mut out: BTreeSet<u16> = pod.opaque_ports.iter().copied().collect();
        if let Some(ns) = self.namespaces.get(&pod.namespace) {
            out.extend(ns.opaque_ports.iter().copied());
        }
        out
    }
}

/// The ready endpoints of one Service port (by port name, as the
/// EndpointSlice controller names them) from the Service's slices.
fn from_slices(slices: &[&EndpointSlice], port_name: &str) -> Vec<EndpointModel> {
    let mut out = Vec::new();
    for es in slices {
        if es.address_type != "IPv4" && es.address_type != "IPv6" {
            continue;
        }
        let Some(port) = es
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in &es.endpoints {
            // Ready unless said otherwise (the API's own reading of nil).
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            let pod = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            for addr in &ep.addresses {
                if let Ok(ip) = addr.parse() {
                    out.push(EndpointModel {
                        ip,
                        port,
                        pod: pod.clone(),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::objects::Kind;

    #[test]
    fn pods_group_into_workloads() {
        let pod = |name: &str, labels: &[(&str, &str)]| PodModel {
            name: name.into(),
            namespace: "shop".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ip: None,
            service_account: "default".into(),
            meshed: true,
            ready: true,
            named_ports: BTreeMap::new(),
            mtls_mode: None,
            opaque_ports: Vec::new(),
            dependencies: Vec::new(),
        };
        let hash = ("pod-template-hash", "5d9f7c6b8");
        // A Deployment's pod, whatever its labels say.
        assert_eq!(
            pod("web-api-5d9f7c6b8-x2x7q", &[hash, ("app", "web")]).workload(),
            "web-api"
        );
        assert_eq!(
            pod("backend-v1-1", &[("app", "backend"), ("version", "v1")]).workload(),
            "backend-v1"
        );
        assert_eq!(
            pod("x", &[("app.kubernetes.io/name", "db"), ("app", "other")]).workload(),
            "db"
        );
        assert_eq!(
            pod("redis-2", &[("controller-revision-hash", "redis-7c9")]).workload(),
            "redis"
        );
        assert_eq!(pod("lonely", &[]).workload(), "lonely");
        // A hash that is not in the name: not a Deployment's name to cut.
        assert_eq!(pod("odd", &[hash]).workload(), "odd");
    }

    fn objects(yaml: &str) -> BTreeMap<ObjectKey, Object> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
        let mut store = crate::discovery::Store::new(dir.path());
        store.refresh();
        let (objects, errors) = store.objects();
        assert!(errors.is_empty(), "{errors:?}");
        objects
    }

    const MESH: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  annotations: {weft.dev/mtls-mode: strict, weft.dev/opaque-ports: \"9000\"}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, annotations: {weft.dev/opaque-ports: \"81\"}}
spec:
  clusterIP: 10.96.0.5
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: raw, port: 81}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec:
  serviceAccountName: web
  containers: [{name: app, image: x, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 198.18.0.20}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels: {app: web}
  annotations: {weft.dev/mtls-mode: permissive}
spec:
  serviceAccountName: web
  containers: [{name: app, image: x, ports: [{name: http, containerPort: 8080}]}]
  initContainers: [{name: weft-proxy, image: weft}]
status: {podIP: 198.18.0.21}
";

    #[test]
    fn settings_come_from_the_most_specific_place() {
        let m = Model::build(&objects(MESH), &[6379]);
        let web0 = m.pod("shop", "web-0").unwrap();
        let web1 = m.pod("shop", "web-1").unwrap();
        // The Namespace's mode, unless the Pod says otherwise.
        assert_eq!(m.mtls_mode(web0, MtlsMode::Permissive), MtlsMode::Strict);
        assert_eq!(m.mtls_mode(web1, MtlsMode::Strict), MtlsMode::Permissive);
        // A sidecar container marks a Pod meshed, as the annotation does.
        assert!(!web0.meshed && web1.meshed);
        // Opaque: the Service's own port, and the Namespace's list inbound.
        let svc = &m.services[0];
        let proto = |name: &str| svc.ports.iter().find(|p| p.name == name).unwrap().protocol;
        assert_eq!(proto("raw"), Protocol::Opaque);
        assert_eq!(proto("http"), Protocol::Unspecified);
        assert!(m.pod_opaque_ports(web0).contains(&9000));
        // UDP is not proxied.
        assert!(svc.ports.iter().all(|p| p.name != "dns"));
        // Without EndpointSlices, the selector picks the endpoints.
        let http = svc.ports.iter().find(|p| p.name == "http").unwrap();
        assert_eq!(http.endpoints.len(), 2);
        assert!(http.endpoints.iter().all(|e| e.port == 8080));
    }

    #[test]
    fn a_services_mode_applies_to_the_pods_it_selects() {
        let yaml = MESH.replace(
            "annotations: {weft.dev/opaque-ports: \"81\"}",
            "annotations: {weft.dev/mtls-mode: permissive}",
        );
        let m = Model::build(&objects(&yaml), &[]);
        let web0 = m.pod("shop", "web-0").unwrap();
        assert_eq!(m.mtls_mode(web0, MtlsMode::Strict), MtlsMode::Permissive);
    }

    #[test]
    fn endpoint_slices_win_over_selectors() {
        let slice = "
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: raw, port: 81}]
endpoints:
- addresses: [198.18.0.21]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: web-1, namespace: shop}
- addresses: [198.18.0.20]
  conditions: {ready: false}
  targetRef: {kind: Pod, name: web-0, namespace: shop}
- addresses: [198.18.0.99]
";
        let objs = objects(&format!("{MESH}{slice}"));
        assert!(objs.keys().any(|k| k.kind == Kind::EndpointSlice));
        let m = Model::build(&objs, &[]);
        let http = m.services[0]
            .ports
            .iter()
            .find(|p| p.name == "http")
            .unwrap();
        let got: Vec<(String, u16, Option<&str>)> = http
            .endpoints
            .iter()
            .map(|e| (e.ip.to_string(), e.port, e.pod.as_deref()))
            .collect();
        // Not-ready endpoints are left out; one without a pod is kept.
        assert_eq!(
            got,
            [
                ("198.18.0.21".to_string(), 8080, Some("web-1")),
                ("198.18.0.99".to_string(), 8080, None)
            ]
        );
    }
}
