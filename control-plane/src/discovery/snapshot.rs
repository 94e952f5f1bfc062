//! Turning the model into what each proxy is sent. The mesh-wide part
//! (Services, endpoints, workloads, trust anchors) is built once per model
//! change and shared; only a proxy's own inbound settings are per proxy.
//!
//! A stream that already holds the previous version gets only what changed
//! (the Services and Workloads whose content differs, and the keys removed):
//! a route change then costs each stream one Service, not the whole mesh,
//! which is what lets a change reach thousands of proxies quickly.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use prost::Message;
use weft_api::v1::{self, MtlsMode, Protocol};

use super::model::{Model, PodModel, resolve_target};

/// Mesh-wide settings that do not come from manifests.
#[derive(Clone, Debug)]
pub struct MeshSettings {
    pub trust_domain: String,
    /// The default for pods without a `weft.dev/mtls-mode` annotation.
    pub mtls_mode: MtlsMode,
    /// What ports do when no AuthorizationPolicy decides, for pods whose
    /// Namespace says nothing.
    pub default_authz: v1::DefaultAuthz,
    pub opaque_ports: Vec<u16>,
}

/// The shared part of every snapshot at one model version.
#[derive(Debug)]
pub struct Shared {
    pub version: u64,
    pub services: Vec<v1::Service>,
    pub workloads: Vec<v1::Workload>,
    pub trust_anchors_der: Vec<Vec<u8>>,
    pub opaque_ports: Vec<u32>,
    /// A digest of the above, to tell whether anything changed.
    pub digest: u64,
    /// Per Service ("namespace/name") and Workload (IP): a digest of its
    /// content, to find what the next version changes.
    service_digests: HashMap<String, u64>,
    workload_digests: HashMap<String, u64>,
    /// What changed since the version built before this one.
    pub delta: Option<Delta>,
}

/// The difference between two consecutive versions of the shared part.
#[derive(Debug, Default)]
pub struct Delta {
    pub base: u64,
    pub services: Vec<v1::Service>,
    pub removed_services: Vec<String>,
    pub workloads: Vec<v1::Workload>,
    pub removed_workloads: Vec<String>,
}

pub fn service_key(s: &v1::Service) -> String {
    format!("{}/{}", s.namespace, s.name)
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The shared part at `version`; with `prev`, also what changed since it.
pub fn shared(
    version: u64,
    model: &Model,
    settings: &MeshSettings,
    anchors: &[Vec<u8>],
    prev: Option<&Shared>,
) -> Arc<Shared> {
    let identity = |p: &PodModel| {
        if p.meshed {
            p.identity(&settings.trust_domain)
                .map(|i| i.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        }
    };
    let mut services: Vec<v1::Service> = model
        .services
        .iter()
        .filter_map(|s| {
            let vip = s.vip?;
            Some(v1::Service {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                virtual_ip: vip.to_string(),
                ports: s
                    .ports
                    .iter()
                    .map(|p| {
                        let endpoints: Vec<v1::Endpoint> = p
                            .endpoints
                            .iter()
                            .map(|e| {
                                let pod = e.pod.as_deref().and_then(|n| model.pod(&s.namespace, n));
                                v1::Endpoint {
                                    ip: e.ip.to_string(),
                                    port: u32::from(e.port),
                                    identity: pod.map(identity).unwrap_or_default(),
                                    weight: 1,
                                    pod: e.pod.clone().unwrap_or_default(),
                                }
                            })
                            .collect();
                        v1::ServicePort {
                            port: u32::from(p.port),
                            name: p.name.clone(),
                            protocol: p.protocol as i32,
                            endpoints,
                            routes: super::routes::for_port(model, s, p.port),
                            policy: Some(super::routes::policy(model, s, p.port)),
                        }
                    })
                    .collect(),
            })
        })
        .collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    // One workload per IP: proxies and deltas key workloads by it. Two Pods
    // claim one IP when a finished Pod keeps the address a new one now has:
    // a ready Pod with an identity is the one there.
    let mut by_ip: HashMap<std::net::IpAddr, &PodModel> = HashMap::new();
    let rank = |p: &PodModel| (p.ready, !identity(p).is_empty());
    for p in model.pods.iter().filter(|p| p.meshed) {
        let Some(ip) = p.ip else { continue };
        let held = by_ip.entry(ip).or_insert(p);
        if rank(p) > rank(held) {
            *held = p;
        }
    }
    let mut workloads: Vec<v1::Workload> = by_ip
        .into_iter()
        .map(|(ip, p)| v1::Workload {
            ip: ip.to_string(),
            identity: identity(p),
            pod: p.name.clone(),
            namespace: p.namespace.clone(),
        })
        .collect();
    workloads.sort_by(|a, b| a.ip.cmp(&b.ip));
    let opaque_ports: Vec<u32> = settings
        .opaque_ports
        .iter()
        .map(|p| u32::from(*p))
        .collect();
    let content = v1::Snapshot {
        services: services.clone(),
        workloads: workloads.clone(),
        trust_anchors_der: anchors.to_vec(),
        opaque_ports: opaque_ports.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    let service_digests: HashMap<String, u64> = services
        .iter()
        .map(|s| (service_key(s), digest(&s.encode_to_vec())))
        .collect();
    let workload_digests: HashMap<String, u64> = workloads
        .iter()
        .map(|w| (w.ip.clone(), digest(&w.encode_to_vec())))
        .collect();
    let delta = prev.map(|p| Delta {
        base: p.version,
        services: services
            .iter()
            .filter(|s| {
                p.service_digests.get(&service_key(s)) != service_digests.get(&service_key(s))
            })
            .cloned()
            .collect(),
        removed_services: gone(&p.service_digests, &service_digests),
        workloads: workloads
            .iter()
            .filter(|w| p.workload_digests.get(&w.ip) != workload_digests.get(&w.ip))
            .cloned()
            .collect(),
        removed_workloads: gone(&p.workload_digests, &workload_digests),
    });
    Arc::new(Shared {
        version,
        services,
        workloads,
        trust_anchors_der: anchors.to_vec(),
        opaque_ports,
        digest: digest(&content),
        service_digests,
        workload_digests,
        delta,
    })
}

/// Keys in `before` and not in `after`, sorted.
fn gone(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> Vec<String> {
    let mut keys: Vec<String> = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .cloned()
        .collect();
    keys.sort();
    keys
}

/// One proxy's inbound settings: its mTLS mode and the ports Services send
/// it, with their protocols.
pub fn inbound(model: &Model, settings: &MeshSettings, namespace: &str, pod: &str) -> v1::Inbound {
    let Some(p) = model.pod(namespace, pod) else {
        return v1::Inbound {
            mtls_mode: settings.mtls_mode as i32,
            default_authz: settings.default_authz as i32,
            ..Default::default()
        };
    };
    let opaque = model.pod_opaque_ports(p);
    let mut ports: Vec<v1::InboundPort> = model
        .services
        .iter()
        .filter(|s| s.selects(std::slice::from_ref(p)).next().is_some())
        .flat_map(|s| s.ports.iter())
        .filter_map(|sp| {
            let port = resolve_target(&sp.target, sp.port, p)?;
            let protocol = if opaque.contains(&port) {
                Protocol::Opaque
            } else {
                sp.protocol
            };
            Some(v1::InboundPort {
                port: u32::from(port),
                protocol: protocol as i32,
            })
        })
        .collect();
    // The pod's own opaque ports, whether or not a Service names them.
    ports.extend(opaque.iter().map(|&port| v1::InboundPort {
        port: u32::from(port),
        protocol: Protocol::Opaque as i32,
    }));
    // Sorted by port, opaque first, so that dedup keeps the opaque entry.
    ports.sort_by_key(|p| (p.port, p.protocol != Protocol::Opaque as i32));
    ports.dedup_by_key(|p| p.port);
    let policies = super::authz::for_pod(model, p);
    v1::Inbound {
        mtls_mode: model.mtls_mode(p, settings.mtls_mode) as i32,
        ports,
        default_authz: super::authz::default_for(model, p, settings.default_authz) as i32,
        authz: policies.ports,
        rate_limits: super::ratelimit::for_pod(model, p),
        jwt_providers: policies.jwt_providers,
        api_key_sets: policies.api_key_sets,
    }
}

/// The snapshot for one proxy, and a digest of its content (version aside):
/// only the changes when the stream last sent the version this one follows
/// (`sent`), complete otherwise.
pub fn for_proxy(shared: &Shared, inbound: v1::Inbound, sent: Option<u64>) -> (v1::Snapshot, u64) {
    let d = digest(&inbound.encode_to_vec()) ^ shared.digest.rotate_left(1);
    let snap = match &shared.delta {
        Some(delta) if sent == Some(delta.base) => v1::Snapshot {
            version: shared.version,
            services: delta.services.clone(),
            workloads: delta.workloads.clone(),
            inbound: Some(inbound),
            trust_anchors_der: shared.trust_anchors_der.clone(),
            opaque_ports: shared.opaque_ports.clone(),
            base_version: delta.base,
            removed_services: delta.removed_services.clone(),
            removed_workloads: delta.removed_workloads.clone(),
        },
        _ => v1::Snapshot {
            version: shared.version,
            services: shared.services.clone(),
            workloads: shared.workloads.clone(),
            inbound: Some(inbound),
            trust_anchors_der: shared.trust_anchors_der.clone(),
            opaque_ports: shared.opaque_ports.clone(),
            ..Default::default()
        },
    };
    (snap, d)
}

/// Protocol names for the admin API and logs.
pub fn protocol_name(p: i32) -> &'static str {
    match Protocol::try_from(p).unwrap_or(Protocol::Unspecified) {
        Protocol::Unspecified => "detect",
        Protocol::Opaque => "opaque",
        Protocol::Http1 => "http/1",
        Protocol::Http2 => "http/2",
        Protocol::Grpc => "grpc",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Store;

    /// The README's example directory parses cleanly and means what the
    /// README says it means.
    #[test]
    fn the_example_manifests_build_the_documented_mesh() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manifests");
        let mut store = Store::new(&dir);
        store.refresh();
        let (objects, errors) = store.objects();
        assert!(errors.is_empty(), "{errors:?}");
        let settings = MeshSettings {
            trust_domain: "cluster.local".into(),
            mtls_mode: MtlsMode::Permissive,
            default_authz: weft_api::v1::DefaultAuthz::Allow,
            opaque_ports: vec![6379],
        };
        let model = Model::build(&objects, &settings.opaque_ports);
        assert_eq!(
            (
                model.services.len(),
                model.pods.len(),
                model.routes.len(),
                model.policies.len(),
                model.authz_policies.len()
            ),
            (2, 3, 1, 1, 2)
        );
        let shared = super::shared(1, &model, &settings, &[], None);
        let web = shared
            .services
            .iter()
            .find(|s| s.name == "web")
            .expect("web");
        let eps = &web.ports[0].endpoints;
        assert_eq!(eps.len(), 2);
        assert!(eps.iter().all(|e| e.port == 8080 && e.identity == "spiffe://cluster.local/ns/default/sa/web"));
        assert_eq!(web.ports[0].protocol, Protocol::Http1 as i32);
        // The route's fault, for testers' requests only.
        assert_eq!(model.faults.len(), 1);
        let fault = web.ports[0].routes[0].fault.as_ref().expect("a fault");
        assert_eq!(
            (
                fault.name.as_str(),
                fault.delay_ms,
                fault.delay_ppm,
                fault.abort_http_status,
                fault.abort_ppm,
                fault.headers[0].name.as_str()
            ),
            (
                "default/web-chaos",
                200,
                500_000,
                503,
                100_000,
                "x-weft-fault"
            )
        );
        let redis = shared
            .services
            .iter()
            .find(|s| s.name == "redis")
            .expect("redis");
        assert_eq!(redis.ports[0].protocol, Protocol::Opaque as i32);
        let strict = inbound(&model, &settings, "default", "web-1");
        assert_eq!(strict.mtls_mode, MtlsMode::Strict as i32);
        assert_eq!(strict.ports[0].port, 8080);
        // Both policies reach web's pods at their container port.
        let names: Vec<&str> = strict.authz[0]
            .policies
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            (strict.authz[0].port, names),
            (8080, vec!["default/web-callers", "default/web-no-admin"])
        );
        // The TrafficPolicy's rate limit too, per caller.
        let limit = strict.rate_limits[0].limit.as_ref().expect("a limit");
        assert_eq!(
            (
                strict.rate_limits[0].port,
                limit.name.as_str(),
                limit.rps,
                limit.burst,
                limit.key
            ),
            (
                8080,
                "default/web",
                100,
                200,
                weft_api::v1::RateLimitKey::Client as i32
            )
        );
        let relaxed = inbound(&model, &settings, "default", "web-0");
        assert_eq!(relaxed.mtls_mode, MtlsMode::Permissive as i32);
    }

    /// Found by the `manifest` fuzz target: with two Pods on one IP, the
    /// snapshot listed both, and a proxy that folded a delta kept the one
    /// its map saw last while one sent the complete snapshot kept the other.
    #[test]
    fn one_workload_per_ip_the_ready_pod_with_an_identity() {
        let pod = |name: &str, sa: &str, phase: &str| {
            let yaml = format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, annotations: {{weft.dev/inject: enabled}}}}\n\
                 spec: {{serviceAccountName: {sa}, containers: [{{name: app, image: x}}]}}\n\
                 status: {{podIP: 198.18.0.30, phase: {phase}}}\n"
            );
            let p: k8s_openapi::api::core::v1::Pod = serde_norway::from_str(&yaml).expect("a Pod");
            let key = crate::discovery::objects::ObjectKey {
                kind: crate::discovery::objects::Kind::Pod,
                namespace: "default".into(),
                name: name.into(),
            };
            (key, crate::discovery::objects::Object::Pod(Arc::new(p)))
        };
        let settings = MeshSettings {
            trust_domain: "cluster.local".into(),
            mtls_mode: MtlsMode::Permissive,
            default_authz: weft_api::v1::DefaultAuthz::Allow,
            opaque_ports: vec![],
        };
        for pods in [
            [
                pod("a-job", "batch", "Succeeded"),
                pod("b-web", "web", "Running"),
            ],
            [
                pod("a-web", "web", "Running"),
                pod("b-job", "batch", "Failed"),
            ],
            [
                pod("a-web", "web", "Running"),
                pod("b-bad", "Not_A_Name", "Running"),
            ],
        ] {
            let model = Model::build(&pods.into_iter().collect(), &[]);
            let shared = super::shared(1, &model, &settings, &[], None);
            let ids: Vec<&str> = shared
                .workloads
                .iter()
                .map(|w| w.identity.as_str())
                .collect();
            assert_eq!(ids, ["spiffe://cluster.local/ns/default/sa/web"]);
        }
    }

    /// A stream that holds the previous version is sent only what changed.
    #[test]
    fn the_next_version_carries_only_the_changes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manifests");
        let mut store = Store::new(&dir);
        store.refresh();
        let (objects, _) = store.objects();
        let settings = MeshSettings {
            trust_domain: "cluster.local".into(),
            mtls_mode: MtlsMode::Permissive,
            default_authz: weft_api::v1::DefaultAuthz::Allow,
            opaque_ports: vec![6379],
        };
        let model = Model::build(&objects, &settings.opaque_ports);
        let v1 = super::shared(1, &model, &settings, &[], None);
        assert!(v1.delta.is_none());

        // web-1 goes (web's endpoints change, its workload goes); redis goes.
        let mut fewer = objects.clone();
        fewer.retain(|k, _| k.name != "web-1" && k.name != "redis");
        let next = Model::build(&fewer, &settings.opaque_ports);
        let v2 = super::shared(2, &next, &settings, &[], Some(&v1));
        let delta = v2.delta.as_ref().expect("a delta");
        assert_eq!(delta.base, 1);
        let changed: Vec<&str> = delta.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(changed, ["web"]);
        assert_eq!(delta.removed_services, ["default/redis"]);
        assert!(delta.workloads.is_empty());
        assert_eq!(delta.removed_workloads.len(), 1);

        let inbound = v1::Inbound::default();
        let (snap, _) = for_proxy(&v2, inbound.clone(), Some(1));
        assert_eq!(
            (snap.version, snap.base_version, snap.services.len()),
            (2, 1, 1)
        );
        // A stream that sent something else gets it all.
        let (full, _) = for_proxy(&v2, inbound.clone(), Some(7));
        assert_eq!(full.base_version, 0);
        assert_eq!(full.services.len(), v2.services.len());
        let (first, _) = for_proxy(&v2, inbound, None);
        assert_eq!(first.base_version, 0);
    }
}
