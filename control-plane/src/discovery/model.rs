//! The mesh as the control plane understands it: Services with their
//! endpoints (derived from selectors over Pods, as Kubernetes does), Pods with
//! their identities, and the routes attached to Services.

use std::collections::BTreeMap;
use std::net::IpAddr;

use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_api::SpiffeId;
use weft_api::v1::{MtlsMode, Protocol};

use super::manifests::{Object, ObjectKey};

/// A Pod with this annotation (or label) set to `enabled` runs a sidecar.
pub const INJECT: &str = "weft.dev/inject";
/// Per-workload mTLS mode override: `strict` or `permissive`.
pub const MTLS_MODE_ANNOTATION: &str = "weft.dev/mtls-mode";

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
    pub mtls_mode: Option<MtlsMode>,
}

impl PodModel {
    pub fn identity(&self, trust_domain: &str) -> Option<SpiffeId> {
        SpiffeId::new(trust_domain, &self.namespace, &self.service_account).ok()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortModel {
    pub port: u16,
    pub name: String,
    pub target: IntOrString,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceModel {
    pub name: String,
    pub namespace: String,
    pub vip: Option<IpAddr>,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<PortModel>,
}

impl ServiceModel {
    /// The ready Pods this Service selects (an empty selector selects none).
    pub fn selects<'a>(&'a self, pods: &'a [PodModel]) -> impl Iterator<Item = &'a PodModel> + 'a {
        pods.iter().filter(move |p| {
            !self.selector.is_empty()
                && p.namespace == self.namespace
                && p.ready
                && p.ip.is_some()
                && self
                    .selector
                    .iter()
                    .all(|(k, v)| p.labels.get(k) == Some(v))
        })
    }
}

/// The port on `pod` that `target` names.
pub fn resolve_target(target: &IntOrString, port: u16, pod: &PodModel) -> Option<u16> {
    match target {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(s) if s.is_empty() => Some(port),
        IntOrString::String(s) => pod.named_ports.get(s).copied().or_else(|| s.parse().ok()),
    }
}

#[derive(Clone, Debug, Default)]
pub struct Model {
    pub services: Vec<ServiceModel>,
    pub pods: Vec<PodModel>,
    pub routes: Vec<HttpRoute>,
    pub policies: Vec<super::crds::TrafficPolicy>,
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
    pub fn build(objects: &BTreeMap<ObjectKey, Object>, opaque_ports: &[u16]) -> Model {
        let mut m = Model::default();
        for (key, obj) in objects {
            match obj {
                Object::Pod(p) => {
                    let meta = &p.metadata;
                    let meshed = flag(meta.annotations.as_ref(), INJECT)
                        .or_else(|| flag(meta.labels.as_ref(), INJECT))
                        .is_some_and(|v| v == "enabled");
                    let status = p.status.as_ref();
                    // Ready unless a Ready condition says otherwise (local
                    // manifests rarely carry conditions).
                    let ready = status
                        .and_then(|s| s.conditions.as_ref())
                        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                        .is_none_or(|c| c.status == "True");
                    let spec = p.spec.as_ref();
                    let named_ports = spec
                        .into_iter()
                        .flat_map(|s| s.containers.iter())
                        .flat_map(|c| c.ports.iter().flatten())
                        .filter_map(|cp| {
                            Some((cp.name.clone()?, u16::try_from(cp.container_port).ok()?))
                        })
                        .collect();
                    let mtls_mode =
                        match flag(meta.annotations.as_ref(), MTLS_MODE_ANNOTATION).as_deref() {
                            Some("strict") => Some(MtlsMode::Strict),
                            Some("permissive") => Some(MtlsMode::Permissive),
                            _ => None,
                        };
                    m.pods.push(PodModel {
                        name: key.name.clone(),
                        namespace: key.namespace.clone(),
                        labels: meta.labels.clone().unwrap_or_default(),
                        ip: status
                            .and_then(|s| s.pod_ip.as_ref())
                            .and_then(|ip| ip.parse().ok()),
                        service_account: spec
                            .and_then(|s| s.service_account_name.clone())
                            .unwrap_or_else(|| "default".into()),
                        meshed,
                        ready,
                        named_ports,
                        mtls_mode,
                    });
                }
                Object::Service(s) => {
                    let Some(spec) = &s.spec else { continue };
                    m.services.push(ServiceModel {
                        name: key.name.clone(),
                        namespace: key.namespace.clone(),
                        vip: spec.cluster_ip.as_ref().and_then(|ip| ip.parse().ok()),
                        selector: spec.selector.clone().unwrap_or_default(),
                        ports: spec
                            .ports
                            .iter()
                            .flatten()
                            .filter_map(|p| {
                                let port = u16::try_from(p.port).ok()?;
                                Some(PortModel {
                                    port,
                                    name: p.name.clone().unwrap_or_default(),
                                    target: p
                                        .target_port
                                        .clone()
                                        .unwrap_or(IntOrString::Int(p.port)),
                                    protocol: protocol(
                                        p.app_protocol.as_deref(),
                                        port,
                                        opaque_ports,
                                    ),
                                })
                            })
                            .collect(),
                    });
                }
                Object::HttpRoute(r) => m.routes.push((**r).clone()),
                Object::TrafficPolicy(p) => m.policies.push((**p).clone()),
            }
        }
        // Sorted, so that `pod` (once per proxy per change) is a binary search.
        m.pods
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        m
    }

    /// `pods` is sorted by namespace and name (see `build`).
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodModel> {
        self.pods
            .binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&(namespace, name)))
            .ok()
            .map(|i| &self.pods[i])
    }
}
