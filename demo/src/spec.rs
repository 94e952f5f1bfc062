//! What the demo's mesh is made of, as data: pods, Services, their manifests
//! and addresses. Nothing here touches the machine.

use std::net::Ipv4Addr;

use serde::Serialize;
use weft_api::defaults;

pub const NAMESPACE: &str = "demo";
pub const SUBNET: [u8; 3] = [198, 19, 0];
pub const CONTROL_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
/// The service accounts, each with a bootstrap token.
pub const SERVICE_ACCOUNTS: [&str; 4] = ["loadgen", "frontend", "backend", "db"];

/// The bridge's address: the pods' default route and their DNS server
/// (which the sidecar's DNS answers in its stead).
pub fn gateway() -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 1)
}

pub fn pod_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 10 + index as u8)
}

pub fn spiffe(sa: &str) -> String {
    format!("spiffe://{}/ns/{NAMESPACE}/sa/{sa}", defaults::TRUST_DOMAIN)
}

/// The bootstrap token of a service account (the demo is its own CA's only
/// user, so a fixed, readable token is fine).
pub fn token(sa: &str) -> String {
    format!("weft-demo-{sa}")
}

/// What runs in a pod besides the sidecar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum App {
    /// Nothing: the demo's load generator enters the namespace itself.
    Client,
    Frontend,
    Backend {
        fail_rate: f64,
    },
    Db,
}

#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub service: &'static str,
    pub version: &'static str,
    pub sa: &'static str,
    pub app: App,
}

impl PodSpec {
    /// `weft-test-app`'s arguments for this pod; none for the client.
    pub fn app_args(&self) -> Vec<String> {
        let args: Vec<&str> = match self.app {
            App::Client => return Vec::new(),
            App::Frontend => vec![
                "http",
                "--listen",
                "0.0.0.0:8080",
                "--service",
                "frontend",
                "--backend",
                "http://backend/",
                "--db",
                "db:6379",
                // A pool, as a real service keeps: the table then shows
                // what the mesh costs, not a handshake per request.
                "--db-keep-alive",
            ],
            App::Backend { .. } => vec![
                "http",
                "--listen",
                "0.0.0.0:8080",
                "--service",
                "backend",
                "--version",
                self.version,
            ],
            App::Db => vec!["tcp", "--listen", "0.0.0.0:6379", "--mode", "echo"],
        };
        let mut args: Vec<String> = args.into_iter().map(String::from).collect();
        if let App::Backend { fail_rate } = self.app {
            args.extend(["--fail-rate".into(), fail_rate.to_string()]);
        }
        args.extend(["--pod".into(), self.name.clone()]);
        args
    }

    /// Whether its sidecar's inbound rows are shown as `(served)`.
    pub fn serves_http(&self) -> bool {
        matches!(self.app, App::Frontend | App::Backend { .. })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServicePort {
    pub port: u16,
    #[serde(rename = "targetPort")]
    pub target_port: u16,
    #[serde(rename = "appProtocol")]
    pub app_protocol: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceSpec {
    pub name: &'static str,
    pub namespace: &'static str,
    pub vip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    #[serde(skip)]
    pub selector: Vec<(&'static str, &'static str)>,
}

/// The demo's pods: a client, a frontend, backend v1 ×3 and v2 ×2, a db.
/// `backend-v1-1` fails `fail_rate` of its requests.
pub fn pods(fail_rate: f64) -> Vec<PodSpec> {
    let pod = |name: &str, service, sa, app| PodSpec {
        name: name.to_string(),
        service,
        version: "v1",
        sa,
        app,
    };
    let backend = |name: &str, version, fail_rate| PodSpec {
        version,
        ..pod(name, "backend", "backend", App::Backend { fail_rate })
    };
    vec![
        pod("loadgen-0", "loadgen", "loadgen", App::Client),
        pod("frontend-0", "frontend", "frontend", App::Frontend),
        backend("backend-v1-0", "v1", 0.0),
        backend("backend-v1-1", "v1", fail_rate),
        backend("backend-v1-2", "v1", 0.0),
        backend("backend-v2-0", "v2", 0.0),
        backend("backend-v2-1", "v2", 0.0),
        pod("db-0", "db", "db", App::Db),
    ]
}

/// Services, GAMMA style: `backend` selects every version, `backend-v1` and
/// `backend-v2` one each.
pub fn services() -> Vec<ServiceSpec> {
    let service = |name, last_octet, port: ServicePort, selector| ServiceSpec {
        name,
        namespace: NAMESPACE,
        vip: Ipv4Addr::new(10, 96, 0, last_octet),
        ports: vec![port],
        selector,
    };
    let http = || ServicePort {
        port: 80,
        target_port: 8080,
        app_protocol: "http",
    };
    let tcp = ServicePort {
        port: 6379,
        target_port: 6379,
        app_protocol: "tcp",
    };
    vec![
        service("frontend", 10, http(), vec![("app", "frontend")]),
        service("backend", 11, http(), vec![("app", "backend")]),
        service(
            "backend-v1",
            12,
            http(),
            vec![("app", "backend"), ("version", "v1")],
        ),
        service(
            "backend-v2",
            13,
            http(),
            vec![("app", "backend"), ("version", "v2")],
        ),
        service("db", 14, tcp, vec![("app", "db")]),
    ]
}

pub fn service_yaml(s: &ServiceSpec) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  clusterIP: {}\n  selector:\n",
        s.name, s.namespace, s.vip
    );
    for (k, v) in &s.selector {
        y.push_str(&format!("    {k}: {v}\n"));
    }
    y.push_str("  ports:\n");
    for p in &s.ports {
        y.push_str(&format!(
            "  - name: p{}\n    port: {}\n    targetPort: {}\n    appProtocol: {}\n",
            p.port, p.port, p.target_port, p.app_protocol
        ));
    }
    y
}

/// A pod's manifest; only the backends, which run in two versions, carry a
/// `version` label (so the dashboard shows `backend-v1`, `backend-v2` and
/// plain `frontend`).
pub fn pod_yaml(p: &PodSpec, ip: Ipv4Addr) -> String {
    let version = match p.app {
        App::Backend { .. } => format!("\n    version: {}", p.version),
        _ => String::new(),
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {NAMESPACE}\n  annotations:\n    weft.dev/inject: enabled\n  labels:\n    app: {}{version}\nspec:\n  serviceAccountName: {}\n  containers:\n  - name: app\n    image: weft-test-app\nstatus:\n  podIP: {ip}\n",
        p.name, p.service, p.sa
    )
}

/// The HTTPRoute on `backend`: `v1`% to backend-v1, the rest to backend-v2,
/// with retries and timeouts.
pub fn route_yaml(v1: u32) -> String {
    format!(
        "# The canary split: edit the weights and the live mesh follows.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: backend
  namespace: {NAMESPACE}
spec:
  parentRefs:
  - {{group: \"\", kind: Service, name: backend, port: 80}}
  rules:
  - backendRefs:
    - {{name: backend-v1, port: 80, weight: {v1}}}
    - {{name: backend-v2, port: 80, weight: {v2}}}
    timeouts: {{request: 3s, backendRequest: 1s}}
    retry: {{attempts: 2, backoff: 10ms, codes: [502, 503, 504]}}
",
        v2 = 100 - v1
    )
}

/// Outlier detection and a retry budget for every backend Service.
pub fn policies_yaml() -> String {
    ["backend", "backend-v1", "backend-v2"]
        .iter()
        .map(|svc| {
            format!(
                "apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata:
  name: {svc}
  namespace: {NAMESPACE}
spec:
  targetRef: {{group: \"\", kind: Service, name: {svc}}}
  retryBudget: {{ratio: 0.5, minPerSecond: 10, window: 10s}}
  retryOn: {{connectFailure: true, reset: true}}
  outlierDetection: {{consecutiveFailures: 3, baseEjectionTime: 5s, maxEjectionPercent: 50}}
"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The control plane's bootstrap tokens file.
pub fn tokens_yaml() -> String {
    let mut tokens = String::from("tokens:\n");
    for sa in SERVICE_ACCOUNTS {
        tokens.push_str(&format!(
            "  - token: {}\n    namespace: {NAMESPACE}\n    serviceAccount: {sa}\n",
            token(sa)
        ));
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pod_has_a_token_and_apps_know_who_they_are() {
        for p in pods(0.3) {
            assert!(SERVICE_ACCOUNTS.contains(&p.sa), "{}", p.name);
            let args = p.app_args();
            if p.app != App::Client {
                assert_eq!(
                    args[args.len() - 2..],
                    ["--pod".to_string(), p.name.clone()]
                );
            }
        }
        let v1_1 = pods(0.3).remove(3);
        assert!(v1_1.app_args().contains(&"0.3".to_string()));
        assert_eq!(services().len(), 5);
    }
}
