//! Turning the model into what each proxy is sent. The mesh-wide part
//! (Services, endpoints, workloads, trust anchors) is built once per model
//! change and shared; only a proxy's own inbound settings are per proxy.

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
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

pub fn shared(
    version: u64,
    model: &Model,
    settings: &MeshSettings,
    anchors: &[Vec<u8>],
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
                        let mut endpoints: Vec<v1::Endpoint> = s
                            .selects(&model.pods)
                            .filter_map(|pod| {
                                Some(v1::Endpoint {
                                    ip: pod.ip?.to_string(),
                                    port: u32::from(resolve_target(&p.target, p.port, pod)?),
                                    identity: identity(pod),
                                    weight: 1,
                                    pod: pod.name.clone(),
                                })
                            })
                            .collect();
                        endpoints.sort_by(|a, b| (&a.ip, a.port).cmp(&(&b.ip, b.port)));
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
    let mut workloads: Vec<v1::Workload> = model
        .pods
        .iter()
        .filter(|p| p.meshed)
        .filter_map(|p| {
            Some(v1::Workload {
                ip: p.ip?.to_string(),
                identity: identity(p),
                pod: p.name.clone(),
                namespace: p.namespace.clone(),
            })
        })
        .collect();
    workloads.sort_by(|a, b| a.ip.cmp(&b.ip));
    let opaque_ports: Vec<u32> = settings
        .opaque_ports
        .iter()
        .map(|p| u32::from(*p))
        .collect();
    let content = v1::Snapshot {
        version: 0,
        services: services.clone(),
        workloads: workloads.clone(),
        inbound: None,
        trust_anchors_der: anchors.to_vec(),
        opaque_ports: opaque_ports.clone(),
    }
    .encode_to_vec();
    Arc::new(Shared {
        version,
        services,
        workloads,
        trust_anchors_der: anchors.to_vec(),
        opaque_ports,
        digest: digest(&content),
    })
}

/// One proxy's inbound settings: its mTLS mode and the ports Services send
/// it, with their protocols.
pub fn inbound(model: &Model, settings: &MeshSettings, namespace: &str, pod: &str) -> v1::Inbound {
    let Some(p) = model.pod(namespace, pod) else {
        return v1::Inbound {
            mtls_mode: settings.mtls_mode as i32,
            ports: Vec::new(),
        };
    };
    let mut ports: Vec<v1::InboundPort> = model
        .services
        .iter()
        .filter(|s| s.selects(std::slice::from_ref(p)).next().is_some())
        .flat_map(|s| s.ports.iter())
        .filter_map(|sp| {
            Some(v1::InboundPort {
                port: u32::from(resolve_target(&sp.target, sp.port, p)?),
                protocol: sp.protocol as i32,
            })
        })
        .collect();
    ports.sort_by_key(|p| p.port);
    ports.dedup_by_key(|p| p.port);
    v1::Inbound {
        mtls_mode: p.mtls_mode.unwrap_or(settings.mtls_mode) as i32,
        ports,
    }
}

/// The full snapshot for one proxy, and a digest of its content (version aside).
pub fn for_proxy(shared: &Shared, inbound: v1::Inbound) -> (v1::Snapshot, u64) {
    let d = digest(&inbound.encode_to_vec()) ^ shared.digest.rotate_left(1);
    (
        v1::Snapshot {
            version: shared.version,
            services: shared.services.clone(),
            workloads: shared.workloads.clone(),
            inbound: Some(inbound),
            trust_anchors_der: shared.trust_anchors_der.clone(),
            opaque_ports: shared.opaque_ports.clone(),
        },
        d,
    )
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
            opaque_ports: vec![6379],
        };
        let model = Model::build(&objects, &settings.opaque_ports);
        assert_eq!(
            (
                model.services.len(),
                model.pods.len(),
                model.routes.len(),
                model.policies.len()
            ),
            (2, 3, 1, 1)
        );
        let shared = shared(1, &model, &settings, &[]);
        let web = shared
            .services
            .iter()
            .find(|s| s.name == "web")
            .expect("web");
        let eps = &web.ports[0].endpoints;
        assert_eq!(eps.len(), 2);
        assert!(eps.iter().all(|e| e.port == 8080 && e.identity == "spiffe://cluster.local/ns/default/sa/web"));
        assert_eq!(web.ports[0].protocol, Protocol::Http1 as i32);
        let redis = shared
            .services
            .iter()
            .find(|s| s.name == "redis")
            .expect("redis");
        assert_eq!(redis.ports[0].protocol, Protocol::Opaque as i32);
        let strict = inbound(&model, &settings, "default", "web-1");
        assert_eq!(strict.mtls_mode, MtlsMode::Strict as i32);
        assert_eq!(strict.ports[0].port, 8080);
        let relaxed = inbound(&model, &settings, "default", "web-0");
        assert_eq!(relaxed.mtls_mode, MtlsMode::Permissive as i32);
    }
}
