//! Turning the model into what each proxy is sent. The mesh-wide part
//! (Services, endpoints, workloads, trust anchors) is built once per model
//! change and shared; only a proxy's own inbound settings are per proxy.
//!
//! A stream that already holds the previous version gets only what changed
//! (the Services and Workloads whose content differs, and the keys removed):
//! a route change then costs each stream one Service, not the whole mesh,
//! which is what lets a change reach thousands of proxies quickly.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

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

/// One protobuf field, encoded once and shared by every stream that sends
/// it (tag, length and message: an element of a `repeated` field of
/// `Snapshot`, so a message is the concatenation of such pieces).
#[derive(Clone, Debug)]
pub struct Encoded {
    pub digest: u64,
    pub bytes: Bytes,
}

impl Encoded {
    fn new(bytes: Vec<u8>) -> Encoded {
        Encoded {
            digest: digest(&bytes),
            bytes: Bytes::from(bytes),
        }
    }

    /// `msg` as field `tag` of `Snapshot`.
    pub fn of<M: Message>(tag: u32, msg: &M) -> Encoded {
        Encoded::new(field(tag, msg))
    }
}

/// A Service, encoded, and the Services its routes send to (backends and
/// mirrors): a proxy that uses it needs those too.
#[derive(Debug)]
pub struct ServiceEntry {
    pub encoded: Encoded,
    pub deps: Vec<Arc<str>>,
}

/// The shared part of every snapshot at one model version, encoded. An
/// unchanged Service keeps the very bytes (and allocation) of the version
/// before, so two live versions cost one encoding of the mesh plus what
/// changed.
#[derive(Debug)]
pub struct Shared {
    pub version: u64,
    /// Services by "namespace/name" (field 2 of `Snapshot`).
    pub services: BTreeMap<Arc<str>, Arc<ServiceEntry>>,
    /// Workloads by IP (field 3).
    pub workloads: BTreeMap<IpAddr, Encoded>,
    /// Every Service's name, address and ports (fields 10 and 11: the
    /// complete table).
    pub names: Encoded,
    /// Trust anchors and opaque ports (fields 5, 6): in every message.
    pub common: Encoded,
    /// Networks holding meshed pods (field 13): in every Discover message.
    pub networks: Encoded,
    pub trust_anchors_der: Vec<Vec<u8>>,
    /// A digest of everything above, to tell whether anything changed.
    pub digest: u64,
    /// What changed since the version built before this one.
    pub delta: Option<Delta>,
    /// Watch streams' whole-mesh and delta bodies, built once, on first use.
    everything: OnceLock<Bytes>,
    changes: OnceLock<Bytes>,
}

/// The keys that differ between two consecutive versions of the shared part.
#[derive(Debug, Default)]
pub struct Delta {
    pub base: u64,
    pub services: Vec<Arc<str>>,
    pub removed_services: Vec<Arc<str>>,
    pub workloads: Vec<IpAddr>,
    pub removed_workloads: Vec<IpAddr>,
}

pub fn service_key(s: &v1::Service) -> String {
    format!("{}/{}", s.namespace, s.name)
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// `msg` as field `tag` of `Snapshot`.
pub(crate) fn field<M: Message>(tag: u32, msg: &M) -> Vec<u8> {
    let mut buf = Vec::with_capacity(msg.encoded_len() + 8);
    prost::encoding::message::encode(tag, msg, &mut buf);
    buf
}

/// The Services a Service's routes send to (backends and mirrors), by key.
fn route_deps(s: &v1::Service, by_vip: &HashMap<IpAddr, Arc<str>>) -> Vec<Arc<str>> {
    let mut addrs: Vec<&str> = Vec::new();
    for rule in s.ports.iter().flat_map(|p| &p.routes) {
        addrs.extend(rule.mirrors.iter().map(|m| m.address.as_str()));
        for b in &rule.backends {
            addrs.push(&b.address);
            addrs.extend(b.mirrors.iter().map(|m| m.address.as_str()));
        }
    }
    let own = format!("{}/{}", s.namespace, s.name);
    let mut deps: Vec<Arc<str>> = addrs
        .into_iter()
        .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
        .filter_map(|a| by_vip.get(&a.ip()).cloned())
        .filter(|k| **k != *own)
        .collect();
    deps.sort();
    deps.dedup();
    deps
}

/// The networks holding meshed pods: the /16 (IPv4) or /48 (IPv6) of each.
/// Wide on purpose: a cluster's pod range, not a node's, so that nodes and
/// pods coming and going do not change it (every proxy is sent it); an
/// unmeshed address inside costs one question, answered once.
fn mesh_networks(workloads: &BTreeMap<IpAddr, Encoded>) -> Vec<String> {
    let mut nets: Vec<String> = workloads
        .keys()
        .map(|ip| match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                format!("{}.{}.0.0/16", o[0], o[1])
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0);
                format!("{net}/48")
            }
        })
        .collect();
    nets.sort();
    nets.dedup();
    nets
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
    let built: Vec<v1::Service> = model
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
    let mut by_vip: HashMap<IpAddr, Arc<str>> = HashMap::new();
    let mut names: Vec<u8> = Vec::new();
    let mut keyed: Vec<(Arc<str>, &v1::Service)> = Vec::with_capacity(built.len());
    for s in &built {
        let key: Arc<str> = Arc::from(service_key(s));
        if let Ok(ip) = s.virtual_ip.parse() {
            by_vip.entry(ip).or_insert_with(|| key.clone());
        }
        keyed.push((key, s));
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut services: BTreeMap<Arc<str>, Arc<ServiceEntry>> = BTreeMap::new();
    for (key, s) in keyed {
        let name = v1::ServiceName {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            virtual_ip: s.virtual_ip.clone(),
            ports: s
                .ports
                .iter()
                .map(|p| v1::PortName {
                    port: p.port,
                    protocol: p.protocol,
                })
                .collect(),
        };
        prost::encoding::message::encode(10, &name, &mut names);
        let mut encoded = Encoded::new(field(2, s));
        // Unchanged: keep the previous version's bytes.
        if let Some(old) = prev.and_then(|p| p.services.get(&key))
            && old.encoded.digest == encoded.digest
        {
            encoded = old.encoded.clone();
        }
        let deps = route_deps(s, &by_vip);
        services.insert(key, Arc::new(ServiceEntry { encoded, deps }));
    }
    prost::encoding::bool::encode(11, &true, &mut names);
    // One workload per IP: proxies and deltas key workloads by it. Two Pods
    // claim one IP when a finished Pod keeps the address a new one now has:
    // a ready Pod with an identity is the one there.
    let mut by_ip: HashMap<IpAddr, &PodModel> = HashMap::new();
    let rank = |p: &PodModel| (p.ready, !identity(p).is_empty());
    for p in model.pods.iter().filter(|p| p.meshed) {
        let Some(ip) = p.ip else { continue };
        let held = by_ip.entry(ip).or_insert(p);
        if rank(p) > rank(held) {
            *held = p;
        }
    }
    let workloads: BTreeMap<IpAddr, Encoded> = by_ip
        .into_iter()
        .map(|(ip, p)| {
            let w = v1::Workload {
                ip: ip.to_string(),
                identity: identity(p),
                pod: p.name.clone(),
                namespace: p.namespace.clone(),
            };
            let encoded = Encoded::new(field(3, &w));
            match prev.and_then(|prev| prev.workloads.get(&ip)) {
                Some(old) if old.digest == encoded.digest => (ip, old.clone()),
                _ => (ip, encoded),
            }
        })
        .collect();
    let mut common = Vec::new();
    for a in anchors {
        prost::encoding::bytes::encode(5, a, &mut common);
    }
    let opaque_ports: Vec<u32> = settings
        .opaque_ports
        .iter()
        .map(|p| u32::from(*p))
        .collect();
    prost::encoding::uint32::encode_packed(6, &opaque_ports, &mut common);
    let mut networks = Vec::new();
    for n in mesh_networks(&workloads) {
        prost::encoding::string::encode(13, &n, &mut networks);
    }
    let names = Encoded::new(names);
    let common = Encoded::new(common);
    let networks = Encoded::new(networks);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (k, s) in &services {
        (k, s.encoded.digest).hash(&mut h);
    }
    for (ip, w) in &workloads {
        (ip, w.digest).hash(&mut h);
    }
    (names.digest, common.digest, networks.digest).hash(&mut h);
    let delta = prev.map(|p| Delta {
        base: p.version,
        services: services
            .iter()
            .filter(|(k, s)| p.services.get(*k).map(|o| o.encoded.digest) != Some(s.encoded.digest))
            .map(|(k, _)| k.clone())
            .collect(),
        removed_services: p
            .services
            .keys()
            .filter(|k| !services.contains_key(*k))
            .cloned()
            .collect(),
        workloads: workloads
            .iter()
            .filter(|(ip, w)| p.workloads.get(*ip).map(|o| o.digest) != Some(w.digest))
            .map(|(ip, _)| *ip)
            .collect(),
        removed_workloads: p
            .workloads
            .keys()
            .filter(|ip| !workloads.contains_key(*ip))
            .copied()
            .collect(),
    });
    Arc::new(Shared {
        version,
        services,
        workloads,
        names,
        common,
        networks,
        trust_anchors_der: anchors.to_vec(),
        digest: h.finish(),
        delta,
        everything: OnceLock::new(),
        changes: OnceLock::new(),
    })
}

impl Shared {
    /// Every Service and Workload (fields 2 and 3), as one piece: the body
    /// of a complete Watch snapshot, built once per version.
    pub fn everything(&self) -> Bytes {
        self.everything
            .get_or_init(|| {
                let mut b = Vec::new();
                for s in self.services.values() {
                    b.extend_from_slice(&s.encoded.bytes);
                }
                for w in self.workloads.values() {
                    b.extend_from_slice(&w.bytes);
                }
                Bytes::from(b)
            })
            .clone()
    }

    /// What changed since the version before (fields 2, 3, 7, 8, 9), as one
    /// piece: the body of a Watch delta, built once per version. None for
    /// the first version.
    pub fn changes(&self) -> Option<(u64, Bytes)> {
        let delta = self.delta.as_ref()?;
        let bytes = self.changes.get_or_init(|| {
            let mut b = Vec::new();
            for k in &delta.services {
                if let Some(s) = self.services.get(k) {
                    b.extend_from_slice(&s.encoded.bytes);
                }
            }
            for ip in &delta.workloads {
                if let Some(w) = self.workloads.get(ip) {
                    b.extend_from_slice(&w.bytes);
                }
            }
            prost::encoding::uint64::encode(7, &delta.base, &mut b);
            for k in &delta.removed_services {
                prost::encoding::string::encode(8, &k.to_string(), &mut b);
            }
            for ip in &delta.removed_workloads {
                prost::encoding::string::encode(9, &ip.to_string(), &mut b);
            }
            Bytes::from(b)
        });
        Some((delta.base, bytes.clone()))
    }

    /// One Service, decoded (for tests and tools).
    pub fn service(&self, namespace: &str, name: &str) -> Option<v1::Service> {
        let s = self.services.get(format!("{namespace}/{name}").as_str())?;
        let snap = v1::Snapshot::decode(s.encoded.bytes.clone()).ok()?;
        snap.services.into_iter().next()
    }

    /// Every Workload, decoded (for tests and tools).
    pub fn decoded_workloads(&self) -> Vec<v1::Workload> {
        self.workloads
            .values()
            .filter_map(|w| v1::Snapshot::decode(w.bytes.clone()).ok())
            .flat_map(|s| s.workloads)
            .collect()
    }
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
        .services_selecting(p)
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

/// The Watch snapshot for one proxy, decoded (for tests and fuzzing: the
/// stream sends [`super::frames::watch`]'s bytes), and a digest of its
/// content (version aside).
pub fn for_proxy(shared: &Shared, inbound: v1::Inbound, sent: Option<u64>) -> (v1::Snapshot, u64) {
    let inbound = Encoded::of(4, &inbound);
    let (msg, d) = super::frames::watch(shared, &inbound, sent);
    let snap = v1::Snapshot::decode(msg.concat().as_slice()).unwrap_or_default();
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
        let web = shared.service("default", "web").expect("web");
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
        let redis = shared.service("default", "redis").expect("redis");
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
            let workloads = shared.decoded_workloads();
            let ids: Vec<&str> = workloads.iter().map(|w| w.identity.as_str()).collect();
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
        let changed: Vec<&str> = delta.services.iter().map(|s| &**s).collect();
        assert_eq!(changed, ["default/web"]);
        let removed: Vec<&str> = delta.removed_services.iter().map(|s| &**s).collect();
        assert_eq!(removed, ["default/redis"]);
        // An unchanged Service keeps the very bytes of the version before.
        let v3 = super::shared(3, &next, &settings, &[], Some(&v2));
        let (a, b) = (&v2.services["default/web"], &v3.services["default/web"]);
        assert_eq!(a.encoded.bytes.as_ptr(), b.encoded.bytes.as_ptr());
        assert!(v3.delta.as_ref().is_some_and(|d| d.services.is_empty()));
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
        assert_eq!(full.workloads.len(), v2.workloads.len());
        let (first, _) = for_proxy(&v2, inbound, None);
        assert_eq!(first.base_version, 0);
    }
}
