//! The demo's mesh: which pods and Services exist, their manifests, and the
//! namespaces and processes that make them real.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use weft_api::defaults;

use super::netns::{self, Netns};

pub const NAMESPACE: &str = "demo";
pub const SUBNET: [u8; 3] = [198, 19, 0];
const CONTROL_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);

pub fn gateway() -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 1)
}

pub fn spiffe(sa: &str) -> String {
    format!("spiffe://{}/ns/{NAMESPACE}/sa/{sa}", defaults::TRUST_DOMAIN)
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
    let pod = |name: &str, service, version, sa, app| PodSpec {
        name: name.to_string(),
        service,
        version,
        sa,
        app,
    };
    vec![
        pod("loadgen-0", "loadgen", "v1", "loadgen", App::Client),
        pod("frontend-0", "frontend", "v1", "frontend", App::Frontend),
        pod(
            "backend-v1-0",
            "backend",
            "v1",
            "backend",
            App::Backend { fail_rate: 0.0 },
        ),
        pod(
            "backend-v1-1",
            "backend",
            "v1",
            "backend",
            App::Backend { fail_rate },
        ),
        pod(
            "backend-v1-2",
            "backend",
            "v1",
            "backend",
            App::Backend { fail_rate: 0.0 },
        ),
        pod(
            "backend-v2-0",
            "backend",
            "v2",
            "backend",
            App::Backend { fail_rate: 0.0 },
        ),
        pod(
            "backend-v2-1",
            "backend",
            "v2",
            "backend",
            App::Backend { fail_rate: 0.0 },
        ),
        pod("db-0", "db", "v1", "db", App::Db),
    ]
}

/// Services, GAMMA style: `backend` selects every version, `backend-v1` and
/// `backend-v2` one each.
pub fn services() -> Vec<ServiceSpec> {
    let http = || {
        vec![ServicePort {
            port: 80,
            target_port: 8080,
            app_protocol: "http",
        }]
    };
    vec![
        ServiceSpec {
            name: "frontend",
            namespace: NAMESPACE,
            vip: Ipv4Addr::new(10, 96, 0, 10),
            ports: http(),
            selector: vec![("app", "frontend")],
        },
        ServiceSpec {
            name: "backend",
            namespace: NAMESPACE,
            vip: Ipv4Addr::new(10, 96, 0, 11),
            ports: http(),
            selector: vec![("app", "backend")],
        },
        ServiceSpec {
            name: "backend-v1",
            namespace: NAMESPACE,
            vip: Ipv4Addr::new(10, 96, 0, 12),
            ports: http(),
            selector: vec![("app", "backend"), ("version", "v1")],
        },
        ServiceSpec {
            name: "backend-v2",
            namespace: NAMESPACE,
            vip: Ipv4Addr::new(10, 96, 0, 13),
            ports: http(),
            selector: vec![("app", "backend"), ("version", "v2")],
        },
        ServiceSpec {
            name: "db",
            namespace: NAMESPACE,
            vip: Ipv4Addr::new(10, 96, 0, 14),
            ports: vec![ServicePort {
                port: 6379,
                target_port: 6379,
                app_protocol: "tcp",
            }],
            selector: vec![("app", "db")],
        },
    ]
}

fn service_yaml(s: &ServiceSpec) -> String {
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

fn pod_yaml(p: &PodSpec, ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {NAMESPACE}\n  annotations:\n    weft.dev/inject: enabled\n  labels:\n    app: {}\n    version: {}\nspec:\n  serviceAccountName: {}\n  containers:\n  - name: app\n    image: weft-test-app\nstatus:\n  podIP: {ip}\n",
        p.name, p.service, p.version, p.sa
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
    retry: {{attempts: 3, backoff: 10ms, codes: [502, 503, 504]}}
",
        v2 = 100 - v1
    )
}

/// Outlier detection and a retry budget for every backend Service.
fn policies_yaml() -> String {
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

/// A running pod.
#[derive(Debug)]
pub struct Pod {
    pub spec: PodSpec,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub app: Option<Child>,
    pub proxy: Option<Child>,
}

/// Paths of the binaries the demo runs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub control: PathBuf,
    pub proxy: PathBuf,
    pub app: PathBuf,
}

impl Bins {
    /// Next to `weftctl` unless `dir` says otherwise.
    pub fn find(dir: Option<&Path>) -> anyhow::Result<Bins> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => std::env::current_exe()
                .context("locating weftctl")?
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        };
        let bin = |name: &str| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            if !p.is_file() {
                bail!(
                    "{} not found; build every binary first (`cargo build --release --workspace --bins`) or pass --bin-dir",
                    p.display()
                );
            }
            Ok(p)
        };
        Ok(Bins {
            control: bin("weft-control")?,
            proxy: bin("weft-proxy")?,
            app: bin("weft-test-app")?,
        })
    }
}

/// Everything the demo created; dropping it removes all of it.
#[derive(Debug)]
pub struct Mesh {
    pub dir: PathBuf,
    pub bins: Bins,
    pub bridge: Netns,
    pub control: Netns,
    pub control_proc: Option<Child>,
    pub pods: Vec<Pod>,
    pub services: Vec<ServiceSpec>,
    pub otlp: Option<SocketAddr>,
    pub state_file: PathBuf,
}

impl Mesh {
    pub fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    pub fn control_grpc(&self) -> SocketAddr {
        (CONTROL_IP, defaults::CONTROL_GRPC_PORT).into()
    }

    pub fn control_admin(&self) -> SocketAddr {
        (CONTROL_IP, defaults::CONTROL_ADMIN_PORT).into()
    }

    /// Builds the bridge and the control plane; pods come with [`Mesh::add_pod`].
    pub fn create(
        dir: PathBuf,
        state_file: PathBuf,
        bins: Bins,
        otlp: Option<SocketAddr>,
    ) -> anyhow::Result<Mesh> {
        remove_leftovers(&dir, &state_file);
        std::fs::create_dir_all(dir.join("manifests"))
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::create_dir_all(dir.join("logs"))?;
        // The proxies (UID 2420) read the trust anchors under here.
        let bridge = Netns::create("br")?;
        let mut mesh = Mesh {
            dir,
            bins,
            control: Netns {
                name: format!("{}control", netns::PREFIX),
            },
            bridge,
            control_proc: None,
            pods: Vec::new(),
            services: services(),
            otlp,
            state_file,
        };
        let gw = format!("{}/24", gateway());
        mesh.bridge.ip(&["link", "add", "br0", "type", "bridge"])?;
        mesh.bridge.ip(&["addr", "add", &gw, "dev", "br0"])?;
        mesh.bridge.ip(&["link", "set", "br0", "up"])?;
        mesh.control = mesh.attach("control", CONTROL_IP, 0)?;
        Ok(mesh)
    }

    /// A namespace with `eth0` on the bridge at `ip`.
    fn attach(&self, role: &str, ip: Ipv4Addr, index: usize) -> anyhow::Result<Netns> {
        let ns = Netns::create(role)?;
        let host_end = format!("veth{index}");
        self.bridge.ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ])?;
        self.bridge
            .ip(&["link", "set", &host_end, "master", "br0", "up"])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &gateway().to_string()])?;
        Ok(ns)
    }

    fn otlp_flag(&self) -> Vec<String> {
        match self.otlp {
            // The relay on the bridge forwards to the collector on the host.
            Some(a) => vec![
                "--otlp-endpoint".into(),
                format!("http://{}:{}", gateway(), a.port()),
            ],
            None => Vec::new(),
        }
    }

    /// Writes the tokens and manifests, then starts the control plane
    /// (strict mTLS mesh-wide) and waits for it to listen.
    pub fn start_control(&mut self, pods: &[PodSpec], route_v1: u32) -> anyhow::Result<()> {
        let mut tokens = String::from("tokens:\n");
        for sa in ["loadgen", "frontend", "backend", "db"] {
            tokens.push_str(&format!(
                "  - token: {}\n    namespace: {NAMESPACE}\n    serviceAccount: {sa}\n",
                token(sa)
            ));
        }
        std::fs::write(self.dir.join("tokens.yaml"), tokens)?;
        for s in &self.services {
            self.write_manifest(&format!("service-{}.yaml", s.name), &service_yaml(s))?;
        }
        for (i, p) in pods.iter().enumerate() {
            self.write_manifest(&format!("pod-{}.yaml", p.name), &pod_yaml(p, pod_ip(i)))?;
        }
        self.write_manifest("route-backend.yaml", &route_yaml(route_v1))?;
        self.write_manifest("policy-backend.yaml", &policies_yaml())?;

        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        let mut args = vec![
            "--ca-dir".into(),
            path(self.dir.join("ca")),
            "--tokens".into(),
            path(self.dir.join("tokens.yaml")),
            "--manifests".into(),
            path(self.manifests()),
            "--mtls-mode".into(),
            "strict".into(),
        ];
        args.extend(self.otlp_flag());
        let log = self.logs().join("control-plane.log");
        let child = self.control.spawn(None, &self.bins.control, &args, &log)?;
        self.control_proc = Some(child);
        let grpc = self.control_grpc();
        wait_for(
            &self.control,
            "the control plane",
            Duration::from_secs(15),
            move || std::net::TcpStream::connect_timeout(&grpc, Duration::from_millis(200)).is_ok(),
        )
        .map_err(|e| e.context(tail(&log)))?;
        Ok(())
    }

    /// Atomically, so the control plane never reads half a file.
    pub fn write_manifest(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.manifests().join(file))
            .with_context(|| format!("moving {file} into the manifest directory"))
    }

    /// Starts a pod: its app, `weft-proxy init --dns`, and the sidecar.
    pub fn add_pod(&mut self, spec: PodSpec) -> anyhow::Result<()> {
        let index = self.pods.len();
        let ip = pod_ip(index);
        let ns = self.attach(&spec.name, ip, index + 1)?;
        // Names resolve through the sidecar's DNS; the rest goes nowhere.
        ns.set_resolv_conf(&format!(
            "nameserver {}\nsearch {NAMESPACE}.svc.cluster.local svc.cluster.local cluster.local\n",
            gateway()
        ))?;
        let app_args: Vec<String> = match spec.app {
            App::Client => Vec::new(),
            App::Frontend => vec![
                "http".into(),
                "--listen".into(),
                "0.0.0.0:8080".into(),
                "--service".into(),
                "frontend".into(),
                "--backend".into(),
                "http://backend/".into(),
                "--db".into(),
                "db:6379".into(),
            ],
            App::Backend { fail_rate } => vec![
                "http".into(),
                "--listen".into(),
                "0.0.0.0:8080".into(),
                "--service".into(),
                "backend".into(),
                "--version".into(),
                spec.version.into(),
                "--fail-rate".into(),
                fail_rate.to_string(),
            ],
            App::Db => vec![
                "tcp".into(),
                "--listen".into(),
                "0.0.0.0:6379".into(),
                "--mode".into(),
                "echo".into(),
            ],
        };
        let mut app = None;
        if !app_args.is_empty() {
            let mut args = app_args;
            args.extend(["--pod".into(), spec.name.clone()]);
            let log = self.logs().join(format!("{}-app.log", spec.name));
            app = Some(ns.spawn(None, &self.bins.app, &args, &log)?);
        }
        ns.exec(&self.bins.proxy, &["init", "--dns"])?;
        let mut args: Vec<String> = vec![
            "run".into(),
            "--dns".into(),
            "--pod-name".into(),
            spec.name.clone(),
            "--pod-namespace".into(),
            NAMESPACE.into(),
            "--identity".into(),
            spiffe(spec.sa),
            "--control-plane".into(),
            self.control_grpc().to_string(),
            "--identity-token".into(),
            token(spec.sa),
            "--trust-anchors".into(),
            self.dir.join("ca/ca.crt").to_string_lossy().into_owned(),
        ];
        args.extend(self.otlp_flag());
        let log = self.logs().join(format!("{}-proxy.log", spec.name));
        let proxy = ns.spawn(Some(defaults::PROXY_UID), &self.bins.proxy, &args, &log)?;
        self.pods.push(Pod {
            spec,
            ns,
            ip,
            app,
            proxy: Some(proxy),
        });
        Ok(())
    }

    /// Waits until every sidecar says it is ready.
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        let admins: Vec<(String, SocketAddr)> = self
            .pods
            .iter()
            .map(|p| (p.spec.name.clone(), (p.ip, defaults::ADMIN_PORT).into()))
            .collect();
        let logs = self.logs();
        let deadline = Instant::now() + Duration::from_secs(30);
        for (name, admin) in admins {
            let ready = self.bridge.block_on(async move {
                while Instant::now() < deadline {
                    if super::get(admin, "/ready")
                        .await
                        .is_ok_and(|(s, _)| s == 200)
                    {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                false
            })?;
            if !ready {
                let log = logs.join(format!("{name}-proxy.log"));
                bail!("the sidecar of {name} never became ready\n{}", tail(&log));
            }
        }
        Ok(())
    }

    /// Kills a pod's application (as a crash would); its sidecar stays.
    pub fn kill_app(&mut self, pod: &str) -> bool {
        let Some(p) = self.pods.iter_mut().find(|p| p.spec.name == pod) else {
            return false;
        };
        match p.app.as_mut() {
            Some(child) => {
                let _ = child.kill();
                let _ = child.wait();
                p.app = None;
                true
            }
            None => false,
        }
    }

    /// The state file's content.
    pub fn state(&self, scenario: &str) -> serde_json::Value {
        let pods: Vec<_> = self
            .pods
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.spec.name,
                    "namespace": NAMESPACE,
                    "netns": p.ns.name,
                    "ip": p.ip.to_string(),
                    "service": p.spec.service,
                    "version": p.spec.version,
                    "identity": spiffe(p.spec.sa),
                    "admin": SocketAddr::from((p.ip, defaults::ADMIN_PORT)).to_string(),
                })
            })
            .collect();
        serde_json::json!({
            "scenario": scenario,
            "pid": std::process::id(),
            "manifests": self.manifests(),
            "logs": self.logs(),
            "bridge": { "netns": self.bridge.name, "ip": gateway().to_string() },
            "control_plane": {
                "netns": self.control.name,
                "ip": CONTROL_IP.to_string(),
                "grpc": self.control_grpc().to_string(),
                "admin": self.control_admin().to_string(),
            },
            "pods": pods,
            "services": self.services,
        })
    }

    pub fn write_state(&self, scenario: &str) -> anyhow::Result<()> {
        if let Some(dir) = self.state_file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = self.state_file.with_extension("json.tmp");
        std::fs::write(&tmp, format!("{:#}\n", self.state(scenario)))
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.state_file)
            .with_context(|| format!("writing {}", self.state_file.display()))
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for p in &mut self.pods {
            for child in [p.app.as_mut(), p.proxy.as_mut()].into_iter().flatten() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(c) = self.control_proc.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        remove_leftovers(&self.dir, &self.state_file);
    }
}

/// Removes every demo namespace (with what runs in it), the work directory
/// and the state file: this run's, or what a killed run left behind.
pub fn remove_leftovers(dir: &Path, state_file: &Path) {
    for name in netns::existing(netns::PREFIX) {
        netns::destroy(&name);
    }
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(state_file);
    // The parents only when empty (/run/weft-demo by default): they may be
    // the user's.
    for parent in [dir.parent(), state_file.parent()].into_iter().flatten() {
        let _ = std::fs::remove_dir(parent);
    }
}

pub fn pod_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 10 + index as u8)
}

/// The bootstrap token of a service account (the demo is its own CA's only
/// user, so a fixed, readable token is fine).
fn token(sa: &str) -> String {
    format!("weft-demo-{sa}")
}

/// The last lines of a log, for error messages.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    format!("--- {} ---\n{}", log.display(), lines[start..].join("\n"))
}

fn wait_for(
    ns: &Netns,
    what: &str,
    limit: Duration,
    ok: impl Fn() -> bool + Send + 'static,
) -> anyhow::Result<()> {
    let ready = ns
        .thread("weftctl-wait", move || {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("waiting for {what} panicked"))??;
    if !ready {
        bail!("{what} did not come up within {limit:?}");
    }
    Ok(())
}
