//! A control plane in a pod of its own, and meshed pods that get their
//! identity from it: the real Certify path, tokens and all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::node::{Node, Pod};
use crate::process::Process;
use crate::{bins, client};

pub const TRUST_DOMAIN: &str = "cluster.local";
pub const NAMESPACE: &str = "default";

/// `spiffe://cluster.local/ns/default/sa/<sa>`
pub fn spiffe(sa: &str) -> String {
    spiffe_in(NAMESPACE, sa)
}

/// `spiffe://cluster.local/ns/<ns>/sa/<sa>`
pub fn spiffe_in(ns: &str, sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}")
}

#[derive(Debug)]
pub struct ControlPlane {
    pub pod: Arc<Pod>,
    pub dir: PathBuf,
    lifetime: String,
    extra: Vec<String>,
    /// (token, namespace, service account)
    tokens: Mutex<Vec<(String, String, String)>>,
    process: Mutex<Option<Arc<Process>>>,
}

impl ControlPlane {
    /// Starts `weft-control` in a new pod, issuing certificates that live
    /// `lifetime` (e.g. `10s`).
    pub fn start(node: &Node, lifetime: &str) -> ControlPlane {
        Self::start_with(node, lifetime, &[])
    }

    /// Like [`ControlPlane::start`], with more flags for `weft-control`.
    pub fn start_with(node: &Node, lifetime: &str, extra: &[&str]) -> ControlPlane {
        let pod = node.pod("control");
        let dir = node.logs().join("control-plane");
        std::fs::create_dir_all(dir.join("manifests")).expect("control plane directory");
        let cp = ControlPlane {
            pod,
            dir,
            lifetime: lifetime.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tokens: Mutex::new(Vec::new()),
            process: Mutex::new(None),
        };
        cp.write_tokens();
        cp.restart();
        cp
    }

    /// The running control plane's process id (0 when stopped).
    pub fn pid(&self) -> u32 {
        self.process
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |p| p.pid())
    }

    /// The manifest directory the control plane watches.
    pub fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    /// Writes (or replaces) one manifest file, atomically (as editors and
    /// config tools do), so the control plane never reads half a file.
    pub fn write_manifest(&self, file: &str, yaml: &str) {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).expect("writing a manifest");
        std::fs::rename(&tmp, self.manifests().join(file)).expect("moving a manifest in place");
    }

    pub fn remove_manifest(&self, file: &str) {
        std::fs::remove_file(self.manifests().join(file)).expect("removing a manifest");
    }

    /// GET a JSON view of the admin server (`/proxies`, `/errors`).
    pub fn admin_json(&self, path: &str) -> serde_json::Value {
        let addr = self.pod.addr(weft_api::defaults::CONTROL_ADMIN_PORT);
        self.pod
            .ns
            .block_on(client::get(addr, path))
            .expect("control plane admin")
            .json()
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    /// The trust anchors proxies start with.
    pub fn ca_cert(&self) -> PathBuf {
        self.ca_dir().join("ca.crt")
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.pod.addr(weft_api::defaults::CONTROL_GRPC_PORT)
    }

    fn tokens_file(&self) -> PathBuf {
        self.dir.join("tokens.yaml")
    }

    fn write_tokens(&self) {
        let mut yaml = String::from("tokens:\n");
        for (token, ns, sa) in self.tokens.lock().expect("tokens").iter() {
            yaml.push_str(&format!(
                "  - token: {token}\n    namespace: {ns}\n    serviceAccount: {sa}\n"
            ));
        }
        std::fs::write(self.tokens_file(), yaml).expect("writing tokens.yaml");
    }

    /// Registers a bootstrap token for service account `sa` (in `default`)
    /// and returns it.
    pub fn token_for(&self, sa: &str) -> String {
        self.token_for_in(NAMESPACE, sa)
    }

    /// Registers a bootstrap token for service account `sa` in namespace
    /// `ns` and returns it.
    pub fn token_for_in(&self, ns: &str, sa: &str) -> String {
        let token = format!("token-{ns}-{sa}-{}", rand::random::<u64>());
        self.tokens
            .lock()
            .expect("tokens")
            .push((token.clone(), ns.to_string(), sa.to_string()));
        self.write_tokens();
        token
    }

    /// Starts (again) with the same CA directory and tokens.
    pub fn restart(&self) {
        let (ca, tokens, manifests) = (self.ca_dir(), self.tokens_file(), self.manifests());
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let p = self.pod.spawn(
            "weft-control",
            bins::control(),
            &[
                &extra[..],
                &[
                    "--ca-dir",
                    ca.to_str().expect("utf-8 path"),
                    "--tokens",
                    tokens.to_str().expect("utf-8 path"),
                    "--cert-lifetime",
                    &self.lifetime,
                    "--manifests",
                    manifests.to_str().expect("utf-8 path"),
                    "--log-level",
                    "weft_control=debug,info",
                ],
            ]
            .concat(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ca_cert().exists()
            || !self.pod.is_listening(weft_api::defaults::CONTROL_GRPC_PORT)
        {
            assert!(p.is_running(), "weft-control exited: {}", p.log());
            assert!(
                Instant::now() < deadline,
                "weft-control never listened: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        *self.process.lock().expect("process") = Some(p);
    }

    /// Kills the control plane (as a crash would).
    pub fn stop(&self) {
        if let Some(p) = self.process.lock().expect("process").take() {
            p.signal(nix::sys::signal::Signal::SIGKILL);
            p.wait_timeout(Duration::from_secs(5));
        }
    }

    /// The control plane's `/metrics`.
    pub fn metrics(&self) -> String {
        let addr = self.pod.addr(weft_api::defaults::CONTROL_ADMIN_PORT);
        self.pod
            .ns
            .block_on(client::get(addr, "/metrics"))
            .expect("control plane /metrics")
            .text()
    }
}

impl Pod {
    /// Interception plus a sidecar whose identity (`sa`) comes from `cp`.
    /// `extra` goes to `weft-proxy run` (e.g. `--peer-identity`).
    pub fn mesh_with(&self, cp: &ControlPlane, sa: &str, extra: &[&str]) -> Arc<Process> {
        self.mesh_with_in(cp, NAMESPACE, sa, extra)
    }

    /// Like [`Pod::mesh_with`], for a pod in namespace `ns`: its identity is
    /// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
    pub fn mesh_with_in(
        &self,
        cp: &ControlPlane,
        ns: &str,
        sa: &str,
        extra: &[&str],
    ) -> Arc<Process> {
        self.init(&[]);
        self.start_identified_proxy_in(cp, ns, sa, extra)
    }

    /// Like [`Pod::mesh_with`], with the sidecar's DNS: port 53 is redirected
    /// to it, and names it does not know go to `upstream` (this pod's
    /// resolv.conf nameserver).
    pub fn mesh_with_dns(
        &self,
        cp: &ControlPlane,
        sa: &str,
        upstream: std::net::Ipv4Addr,
        extra: &[&str],
    ) -> Arc<Process> {
        self.mesh_with_dns_in(cp, NAMESPACE, sa, upstream, extra)
    }

    /// Like [`Pod::mesh_with_dns`], for a pod in namespace `ns` (whose short
    /// names the sidecar's DNS resolves in `ns`).
    pub fn mesh_with_dns_in(
        &self,
        cp: &ControlPlane,
        ns: &str,
        sa: &str,
        upstream: std::net::Ipv4Addr,
        extra: &[&str],
    ) -> Arc<Process> {
        self.ns.set_resolv_conf(&format!("nameserver {upstream}\n"));
        self.init(&["--dns"]);
        let mut args = vec!["--dns"];
        args.extend_from_slice(extra);
        self.start_identified_proxy_in(cp, ns, sa, &args)
    }

    /// Starts a proxy with an identity from `cp` (without running `init`).
    pub fn start_identified_proxy(
        &self,
        cp: &ControlPlane,
        sa: &str,
        extra: &[&str],
    ) -> Arc<Process> {
        self.start_identified_proxy_in(cp, NAMESPACE, sa, extra)
    }

    /// Like [`Pod::start_identified_proxy`], for a pod in namespace `ns`. The
    /// proxy takes its namespace (for discovery and DNS) from its identity's,
    /// unless `extra` says otherwise (`--pod-namespace`).
    pub fn start_identified_proxy_in(
        &self,
        cp: &ControlPlane,
        ns: &str,
        sa: &str,
        extra: &[&str],
    ) -> Arc<Process> {
        let token = cp.token_for_in(ns, sa);
        let id = spiffe_in(ns, sa);
        let addr = cp.grpc_addr().to_string();
        let anchors = cp.ca_cert();
        let mut args = vec![
            "--pod-name",
            &self.name,
            "--identity",
            &id,
            "--control-plane",
            &addr,
            "--identity-token",
            &token,
            "--trust-anchors",
            anchors.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        self.start_proxy(&args)
    }
}

/// A v1 Namespace manifest.
pub fn namespace_yaml(ns: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n")
}

/// A Pod manifest for a harness pod: its name, IP, labels and service
/// account, marked as meshed (`weft.dev/inject: enabled`) when `meshed`.
pub fn pod_yaml(pod: &Pod, sa: &str, labels: &[(&str, &str)], meshed: bool) -> String {
    pod_yaml_in(NAMESPACE, pod, sa, labels, meshed)
}

/// Like [`pod_yaml`], for a pod in namespace `ns`.
pub fn pod_yaml_in(ns: &str, pod: &Pod, sa: &str, labels: &[(&str, &str)], meshed: bool) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {ns}\n",
        pod.name
    );
    if meshed {
        y.push_str("  annotations:\n    weft.dev/inject: enabled\n");
    }
    y.push_str("  labels:\n");
    for (k, v) in labels {
        y.push_str(&format!("    {k}: {v}\n"));
    }
    y.push_str(&format!(
        "spec:\n  serviceAccountName: {sa}\n  containers:\n  - name: app\n    image: weft-test-app\nstatus:\n  podIP: {}\n",
        pod.ip
    ));
    y
}

/// A Service manifest: `ports` are (port, targetPort, appProtocol).
pub fn service_yaml(name: &str, vip: &str, app: &str, ports: &[(u16, u16, &str)]) -> String {
    service_yaml_in(NAMESPACE, name, vip, app, ports)
}

/// Like [`service_yaml`], for a Service in namespace `ns`.
pub fn service_yaml_in(
    ns: &str,
    name: &str,
    vip: &str,
    app: &str,
    ports: &[(u16, u16, &str)],
) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  clusterIP: {vip}\n  selector:\n    app: {app}\n  ports:\n"
    );
    for (port, target, proto) in ports {
        y.push_str(&format!(
            "  - name: p{port}\n    port: {port}\n    targetPort: {target}\n"
        ));
        if !proto.is_empty() {
            y.push_str(&format!("    appProtocol: {proto}\n"));
        }
    }
    y
}

/// Starts `weft-test-app http` in a new pod (`name`), lists it in the
/// manifests with `labels` and service account `sa`, and meshes it. `extra`
/// goes to the app (e.g. `--fail-rate`). With `run` false the pod is listed
/// but nothing runs in it: a dead endpoint (connections are refused).
pub fn http_pod(
    node: &crate::Node,
    cp: &ControlPlane,
    name: &str,
    sa: &str,
    labels: &[(&str, &str)],
    extra: &[&str],
    run: bool,
) -> Arc<Pod> {
    http_pod_in(node, cp, NAMESPACE, name, sa, labels, extra, run)
}

/// Like [`http_pod`], for a pod in namespace `ns` (the app is told so with
/// `--namespace`, the manifest and the sidecar's identity are in `ns`).
#[allow(clippy::too_many_arguments)]
pub fn http_pod_in(
    node: &crate::Node,
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    sa: &str,
    labels: &[(&str, &str)],
    extra: &[&str],
    run: bool,
) -> Arc<Pod> {
    let pod = node.pod(name);
    if run {
        let mut args = vec![
            "http",
            "--listen",
            "0.0.0.0:8080",
            "--service",
            sa,
            "--pod",
            name,
            "--namespace",
            ns,
        ];
        args.extend_from_slice(extra);
        pod.spawn("http", crate::bins::test_app(), &args);
        pod.wait_listening(8080);
    }
    cp.write_manifest(
        &format!("pod-{name}.yaml"),
        &pod_yaml_in(ns, &pod, sa, labels, true),
    );
    if run {
        pod.mesh_with_in(cp, ns, sa, &[]);
    }
    pod
}

impl Pod {
    /// Requests the test app in this pod has served (its `/_stats`).
    pub fn served(&self) -> u64 {
        let addr = SocketAddr::from(([127, 0, 0, 1], 8080));
        self.ns
            .block_on(client::get(addr, "/_stats"))
            .ok()
            .and_then(|r| r.json()["requests"].as_u64())
            .unwrap_or(0)
    }

    /// The last requests the test app in this pod has served (its `/_seen`,
    /// oldest first): `{"path", "query", "method", "headers"}` each.
    pub fn seen(&self) -> Vec<serde_json::Value> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 8080));
        self.ns
            .block_on(client::get(addr, "/_seen"))
            .ok()
            .and_then(|r| r.json()["requests"].as_array().cloned())
            .unwrap_or_default()
    }
}
