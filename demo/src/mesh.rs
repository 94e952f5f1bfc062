//! The demo's mesh made real: a bridge, the control plane and pods in
//! network namespaces, with their processes. Dropping a [`Mesh`] removes all
//! of it.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_api::defaults;
use weft_netns::Netns;

use crate::Error;
use crate::spec::{self, CONTROL_IP, NAMESPACE, PodSpec, ServiceSpec, gateway, spiffe, token};

/// Every namespace the demo makes is named `wdemo-<role>`: one demo runs per
/// machine, so whatever has the prefix is a demo's, and a new run removes it.
pub const PREFIX: &str = "wdemo-";

/// A running pod.
#[derive(Debug)]
pub struct Pod {
    pub spec: PodSpec,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub app: Option<Child>,
    pub proxy: Option<Child>,
}

impl Pod {
    pub fn admin(&self) -> SocketAddr {
        (self.ip, defaults::ADMIN_PORT).into()
    }
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
    pub fn find(dir: Option<&Path>) -> Result<Bins, Error> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => std::env::current_exe()
                .map_err(Error::io("locating weftctl"))?
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        };
        let bin = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::MissingBinary(p))
            }
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
    /// What this machine reaches of the mesh, once exposed.
    pub host: Option<HostAccess>,
}

/// The mesh's admin servers as this machine reaches them (relayed from
/// 127.0.0.1), and what is served from them.
#[derive(Debug, Clone)]
pub struct HostAccess {
    pub control_admin: SocketAddr,
    /// In the order of [`Mesh::pods`].
    pub pod_admins: Vec<SocketAddr>,
    /// The scrape configuration for a Prometheus on this machine.
    pub prometheus_config: PathBuf,
    /// The dashboard's URL, when one is served.
    pub dashboard: Option<String>,
}

impl Mesh {
    /// Builds the bridge and the control plane's namespace; the control
    /// plane starts with [`Mesh::start_control`], pods come with
    /// [`Mesh::add_pod`]. Removes what an earlier run left first.
    pub fn create(
        dir: PathBuf,
        state_file: PathBuf,
        bins: Bins,
        otlp: Option<SocketAddr>,
    ) -> Result<Mesh, Error> {
        remove_leftovers(&dir, &state_file);
        let bridge = Netns::create(&format!("{PREFIX}br"))?;
        let gw = format!("{}/24", gateway());
        bridge.ip(&["link", "add", "br0", "type", "bridge"])?;
        bridge.ip(&["addr", "add", &gw, "dev", "br0"])?;
        bridge.ip(&["link", "set", "br0", "up"])?;
        let control = attach(&bridge, "control", CONTROL_IP, 0)?;
        let mesh = Mesh {
            dir,
            bins,
            bridge,
            control,
            control_proc: None,
            pods: Vec::new(),
            services: spec::services(),
            otlp,
            state_file,
            host: None,
        };
        // The manifests, the CA (whose anchors the proxies read) and the logs.
        for d in [mesh.manifests(), mesh.logs()] {
            std::fs::create_dir_all(&d).map_err(Error::io(format!("creating {}", d.display())))?;
        }
        Ok(mesh)
    }

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
    pub fn start_control(&mut self, pods: &[PodSpec], route_v1: u32) -> Result<(), Error> {
        self.write_manifests(pods, route_v1)?;
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
        let mut cmd = self.control.command(&self.bins.control);
        cmd.args(&args);
        self.control_proc = Some(spawn_logged(cmd, &log)?);
        let grpc = self.control_grpc();
        let up = self.control.run_in(|| {
            poll(Duration::from_secs(15), || {
                std::net::TcpStream::connect_timeout(&grpc, Duration::from_millis(200)).is_ok()
            })
        })?;
        if !up {
            return Err(not_ready(
                "the control plane",
                Duration::from_secs(15),
                &log,
            ));
        }
        Ok(())
    }

    fn write_manifests(&self, pods: &[PodSpec], route_v1: u32) -> Result<(), Error> {
        let tokens = self.dir.join("tokens.yaml");
        std::fs::write(&tokens, spec::tokens_yaml())
            .map_err(Error::io(format!("writing {}", tokens.display())))?;
        for s in &self.services {
            self.write_manifest(&format!("service-{}.yaml", s.name), &spec::service_yaml(s))?;
        }
        for (i, p) in pods.iter().enumerate() {
            let yaml = spec::pod_yaml(p, spec::pod_ip(i));
            self.write_manifest(&format!("pod-{}.yaml", p.name), &yaml)?;
        }
        self.write_manifest("route-backend.yaml", &spec::route_yaml(route_v1))?;
        self.write_manifest("policy-backend.yaml", &spec::policies_yaml())
    }

    /// Atomically, so the control plane never reads half a file.
    pub fn write_manifest(&self, file: &str, yaml: &str) -> Result<(), Error> {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).map_err(Error::io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, self.manifests().join(file)).map_err(Error::io(format!(
            "moving {file} into the manifest directory"
        )))
    }

    /// Starts a pod: its app, `weft-proxy init --dns`, and the sidecar.
    pub fn add_pod(&mut self, spec: PodSpec) -> Result<(), Error> {
        let index = self.pods.len();
        let ip = spec::pod_ip(index);
        let ns = attach(&self.bridge, &spec.name, ip, index + 1)?;
        // Names resolve through the sidecar's DNS; the rest goes nowhere.
        ns.set_resolv_conf(&format!(
            "nameserver {}\nsearch {NAMESPACE}.svc.cluster.local svc.cluster.local cluster.local\n",
            gateway()
        ))?;
        let app = self.start_app(&ns, &spec)?;
        ns.exec(&self.bins.proxy, &["init", "--dns"])?;
        let proxy = self.start_sidecar(&ns, &spec)?;
        self.pods.push(Pod {
            spec,
            ns,
            ip,
            app,
            proxy: Some(proxy),
        });
        Ok(())
    }

    fn start_app(&self, ns: &Netns, spec: &PodSpec) -> Result<Option<Child>, Error> {
        let args = spec.app_args();
        if args.is_empty() {
            return Ok(None);
        }
        let mut cmd = ns.command(&self.bins.app);
        cmd.args(&args);
        let log = self.logs().join(format!("{}-app.log", spec.name));
        spawn_logged(cmd, &log).map(Some)
    }

    fn start_sidecar(&self, ns: &Netns, spec: &PodSpec) -> Result<Child, Error> {
        let mut cmd = ns.command_as(defaults::PROXY_UID, &self.bins.proxy);
        cmd.args([
            "run",
            "--dns",
            "--pod-name",
            &spec.name,
            "--pod-namespace",
            NAMESPACE,
            "--identity",
            &spiffe(spec.sa),
            "--control-plane",
            &self.control_grpc().to_string(),
            "--identity-token",
            &token(spec.sa),
            "--trust-anchors",
            &self.dir.join("ca/ca.crt").to_string_lossy(),
        ])
        .args(self.otlp_flag());
        let log = self.logs().join(format!("{}-proxy.log", spec.name));
        spawn_logged(cmd, &log)
    }

    /// Waits until every sidecar says it is ready.
    pub fn wait_ready(&self) -> Result<(), Error> {
        const LIMIT: Duration = Duration::from_secs(30);
        let deadline = Instant::now() + LIMIT;
        for p in &self.pods {
            let admin = p.admin();
            let ready = self.bridge.block_on(async move {
                while Instant::now() < deadline {
                    if crate::scrape::get(admin, "/ready")
                        .await
                        .is_some_and(|(s, _)| s == 200)
                    {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                false
            })?;
            if !ready {
                let log = self.logs().join(format!("{}-proxy.log", p.spec.name));
                return Err(not_ready(
                    &format!("the sidecar of {}", p.spec.name),
                    LIMIT,
                    &log,
                ));
            }
        }
        Ok(())
    }

    /// Kills a pod's application (as a crash would); its sidecar stays.
    pub fn kill_app(&mut self, pod: &str) -> bool {
        let Some(p) = self.pods.iter_mut().find(|p| p.spec.name == pod) else {
            return false;
        };
        match p.app.take() {
            Some(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
                true
            }
            None => false,
        }
    }

    /// The state file's content.
    pub fn state(&self, scenario: &str) -> serde_json::Value {
        let host = self.host.as_ref();
        let pods: Vec<_> = self
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                serde_json::json!({
                    "name": p.spec.name,
                    "namespace": NAMESPACE,
                    "netns": p.ns.name(),
                    "ip": p.ip.to_string(),
                    "service": p.spec.service,
                    "version": p.spec.version,
                    "identity": spiffe(p.spec.sa),
                    "admin": p.admin().to_string(),
                    "admin_on_host": host.and_then(|h| h.pod_admins.get(i)).map(|a| a.to_string()),
                })
            })
            .collect();
        serde_json::json!({
            "dashboard": host.and_then(|h| h.dashboard.clone()),
            "prometheus_config": host.map(|h| h.prometheus_config.clone()),
            "scenario": scenario,
            "pid": std::process::id(),
            "manifests": self.manifests(),
            "logs": self.logs(),
            "bridge": { "netns": self.bridge.name(), "ip": gateway().to_string() },
            "control_plane": {
                "netns": self.control.name(),
                "ip": CONTROL_IP.to_string(),
                "grpc": self.control_grpc().to_string(),
                "admin": self.control_admin().to_string(),
                "admin_on_host": host.map(|h| h.control_admin.to_string()),
            },
            "pods": pods,
            "services": self.services,
        })
    }

    /// A Prometheus scrape configuration for every sidecar (and the control
    /// plane) as this machine reaches them, with the `namespace` and `pod`
    /// target labels the dashboard and k8s/addons/grafana read.
    pub fn prometheus_yaml(&self, host: &HostAccess) -> String {
        let mut y = String::from(
            "# Written by `weftctl demo`: every sidecar's admin server (and the control\n\
             # plane's) as this machine reaches it, relayed from 127.0.0.1 for as long as\n\
             # the demo runs. `prometheus --config.file=THIS_FILE` scrapes the demo.\n\
             global:\n  scrape_interval: 2s\n  evaluation_interval: 2s\n\
             scrape_configs:\n- job_name: weft-proxies\n  static_configs:\n",
        );
        for (p, a) in self.pods.iter().zip(&host.pod_admins) {
            y.push_str(&format!(
                "  - targets: ['{a}']\n    labels: {{namespace: {NAMESPACE}, pod: {}, workload: {}}}\n",
                p.spec.name, p.spec.service
            ));
        }
        y.push_str(&format!(
            // Not `namespace`/`pod`: the control plane's own series carry
            // those (of the proxy they describe), as in k8s/addons.
            "- job_name: weft-control\n  static_configs:\n  - targets: ['{}']\n    labels: {{control_pod: weft-control}}\n",
            host.control_admin
        ));
        y
    }

    /// Writes the state file atomically, for tools that poll for it.
    pub fn write_state(&self, scenario: &str) -> Result<(), Error> {
        if let Some(dir) = self.state_file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        let tmp = self.state_file.with_extension("json.tmp");
        std::fs::write(&tmp, format!("{:#}\n", self.state(scenario)))
            .map_err(Error::io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &self.state_file)
            .map_err(Error::io(format!("writing {}", self.state_file.display())))
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let pods = self.pods.iter_mut();
        let children = pods.flat_map(|p| [p.app.as_mut(), p.proxy.as_mut()]);
        for child in children.chain([self.control_proc.as_mut()]).flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_leftovers(&self.dir, &self.state_file);
    }
}

/// Removes every demo namespace (with what runs in it), the work directory
/// and the state file: this run's, or what a killed run left behind.
pub fn remove_leftovers(dir: &Path, state_file: &Path) {
    weft_netns::remove_all(PREFIX);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(state_file);
    // The parents only when empty (/run/weft-demo by default): they may be
    // the user's.
    for parent in [dir.parent(), state_file.parent()].into_iter().flatten() {
        let _ = std::fs::remove_dir(parent);
    }
}

/// A namespace `wdemo-<role>` with `eth0` on the bridge at `ip`.
fn attach(bridge: &Netns, role: &str, ip: Ipv4Addr, index: usize) -> Result<Netns, Error> {
    let ns = Netns::create(&format!("{PREFIX}{role}"))?;
    let host_end = format!("veth{index}");
    bridge.ip(&[
        "link",
        "add",
        &host_end,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])?;
    bridge.ip(&["link", "set", &host_end, "master", "br0", "up"])?;
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["route", "add", "default", "via", &gateway().to_string()])?;
    Ok(ns)
}

/// Starts `cmd` with its output in `log`.
fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Child, Error> {
    let out = File::create(log).map_err(Error::io(format!("creating {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(Error::io(format!("opening {}", log.display())))?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(Error::io(format!("starting {cmd:?}")))
}

/// Polls `ok` every 50 ms for up to `limit`.
fn poll(limit: Duration, ok: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn not_ready(what: &str, limit: Duration, log: &Path) -> Error {
    Error::NotReady {
        what: what.to_string(),
        limit,
        log: tail(log),
    }
}

/// The last lines of a log, for error messages.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    format!("--- {} ---\n{}", log.display(), lines[start..].join("\n"))
}
