//! Weft on the test cluster: its CRDs and RBAC applied with kubectl, control
//! plane replicas (`weft-control --source kubernetes`) in pods of their own
//! that talk to the API server with their own ServiceAccount's token, and
//! meshed pods whose sidecars prove who they are with projected tokens
//! (TokenRequest, bound to the pod, audience `weft.dev`) and trust the
//! anchors from the `weft-ca-bundle` ConfigMap, as an injected pod would.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Cluster, ISSUER};
use crate::node::{Node, Pod};
use crate::process::Process;
use crate::{bins, client};

/// Weft's namespace and the control plane's ServiceAccount.
pub const SYSTEM: &str = "weft-system";
pub const CONTROL_SA: &str = "weft-control";
pub const CONTROL_ID: &str = "spiffe://cluster.local/ns/weft-system/sa/weft-control";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// A file or folder of the repository (`k8s/crds`).
pub fn repo_path(rel: &str) -> String {
    repo().join(rel).to_string_lossy().into_owned()
}

/// Applies Weft's CRDs and the Gateway API CRDs (HTTPRoute, GRPCRoute,
/// ReferenceGrant) and waits until they are served; then the namespace and
/// RBAC of `k8s/base`.
pub fn install(cluster: &Cluster) {
    cluster.kubectl_ok(&["apply", "--server-side", "-k", &repo_path("k8s/crds")]);
    cluster.kubectl_ok(&[
        "apply",
        "--server-side",
        "-k",
        &repo_path("k8s/gateway-api"),
    ]);
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        "crd/trafficpolicies.weft.dev",
        "crd/authorizationpolicies.weft.dev",
        "crd/faultinjections.weft.dev",
        "crd/requestauthentications.weft.dev",
        "crd/httproutes.gateway.networking.k8s.io",
        "crd/grpcroutes.gateway.networking.k8s.io",
        "crd/referencegrants.gateway.networking.k8s.io",
    ]);
    cluster.kubectl_ok(&["apply", "-f", &repo_path("k8s/base/namespace.yaml")]);
    cluster.kubectl_ok(&["apply", "-f", &repo_path("k8s/base/rbac.yaml")]);
}

/// One `weft-control --source kubernetes` replica in a pod of its own,
/// authenticated as the `weft-control` ServiceAccount (not as an admin).
#[derive(Debug)]
pub struct ControlReplica {
    pub name: String,
    pub pod: Arc<Pod>,
    kubeconfig: PathBuf,
    extra: Vec<String>,
    process: Mutex<Option<Arc<Process>>>,
}

impl ControlReplica {
    pub fn start(cluster: &Cluster, node: &Node, name: &str, extra: &[&str]) -> ControlReplica {
        let token = cluster.token(SYSTEM, CONTROL_SA, ISSUER, None, "24h");
        let kubeconfig = cluster.kubeconfig_for_token(&token);
        let r = ControlReplica {
            name: name.to_string(),
            pod: node.pod(name),
            kubeconfig,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            process: Mutex::new(None),
        };
        r.restart();
        r
    }

    /// The kubeconfig this replica uses (the ServiceAccount's token).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Starts (again) and waits until it serves gRPC.
    pub fn restart(&self) {
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        let mut cmd = self.pod.ns.command("env");
        cmd.arg(format!("KUBECONFIG={kubeconfig}"))
            .arg(format!("POD_IP={}", self.pod.ip))
            .arg(bins::control())
            .args([
                "--source",
                "kubernetes",
                "--namespace",
                SYSTEM,
                "--replica",
                &self.name,
                "--identity",
                CONTROL_ID,
                "--log-level",
                "weft_control=debug,info",
            ])
            .args(&self.extra);
        let p = self.pod.spawn_command("weft-control", cmd);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.pod.is_listening(weft_api::defaults::CONTROL_GRPC_PORT) {
            assert!(
                p.is_running(),
                "weft-control {} exited: {}",
                self.name,
                p.log()
            );
            assert!(
                Instant::now() < deadline,
                "weft-control {} never served gRPC: {}",
                self.name,
                p.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        *self.process.lock().expect("process") = Some(p);
    }

    /// Kills it, as a crash would.
    pub fn kill(&self) {
        if let Some(p) = self.process.lock().expect("process").take() {
            p.signal(nix::sys::signal::Signal::SIGKILL);
            p.wait_timeout(Duration::from_secs(5));
        }
    }

    /// The PID of its current process (its memory is in
    /// `/proc/<pid>/status`), while one runs.
    pub fn pid(&self) -> Option<u32> {
        self.process
            .lock()
            .expect("process")
            .as_ref()
            .filter(|p| p.is_running())
            .map(|p| p.pid())
    }

    pub fn grpc_addr(&self) -> String {
        self.pod
            .addr(weft_api::defaults::CONTROL_GRPC_PORT)
            .to_string()
    }

    pub fn log(&self) -> String {
        self.process
            .lock()
            .expect("process")
            .as_ref()
            .map(|p| p.log())
            .unwrap_or_default()
    }

    /// A JSON view of its admin server (`/proxies`, `/errors`, `/status`).
    pub fn admin_json(&self, path: &str) -> serde_json::Value {
        self.admin(path).json()
    }

    /// Its `/metrics`.
    pub fn metrics(&self) -> String {
        self.admin("/metrics").text()
    }

    fn admin(&self, path: &str) -> client::Reply {
        let addr = self.pod.addr(weft_api::defaults::CONTROL_ADMIN_PORT);
        self.pod
            .ns
            .block_on(client::get(addr, path))
            .unwrap_or_else(|e| panic!("{}'s admin {path}: {e}", self.name))
    }
}

/// The trust anchors of namespace `ns`'s `weft-ca-bundle`, once the leader
/// has written it.
pub fn bundle(cluster: &Cluster, ns: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cluster.kubectl(&[
            "get",
            "configmap",
            "weft-ca-bundle",
            "-n",
            ns,
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ]);
        let pem = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && pem.contains("BEGIN CERTIFICATE") {
            return pem;
        }
        assert!(
            Instant::now() < deadline,
            "no weft-ca-bundle ConfigMap in {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Meshes a pod the stand-in runs, as the injector will: the test app on
/// 8080 (`weft-test-app http`), `weft-proxy init`, and the sidecar with a
/// projected token bound to the pod and the namespace's trust bundle.
pub fn mesh_pod(
    cluster: &Cluster,
    pod: &Pod,
    api_name: &str,
    ns: &str,
    sa: &str,
    control_plane: &str,
) -> Arc<Process> {
    pod.spawn(
        "http",
        bins::test_app(),
        &[
            "http",
            "--listen",
            "0.0.0.0:8080",
            "--service",
            sa,
            "--pod",
            api_name,
        ],
    );
    pod.wait_listening(8080);
    pod.init(&[]);
    start_sidecar(cluster, pod, api_name, ns, sa, control_plane)
}

/// Starts only the sidecar (after `init`), with a fresh projected token.
pub fn start_sidecar(
    cluster: &Cluster,
    pod: &Pod,
    api_name: &str,
    ns: &str,
    sa: &str,
    control_plane: &str,
) -> Arc<Process> {
    let dir = cluster.dir().join("pods").join(format!("{ns}-{api_name}"));
    std::fs::create_dir_all(&dir).expect("a pod's directory");
    let token = cluster.token(ns, sa, "weft.dev", Some(api_name), "1h");
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).expect("writing the projected token");
    let anchors = dir.join("ca.crt");
    std::fs::write(&anchors, bundle(cluster, ns)).expect("writing the trust bundle");
    // The proxy runs as its own UID: it must be able to read both.
    for f in [&dir, &token_file, &anchors] {
        let _ = nix::unistd::chown(
            f.as_path(),
            Some(nix::unistd::Uid::from_raw(weft_api::defaults::PROXY_UID)),
            None,
        );
    }
    let id = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
    pod.start_proxy(&[
        "--pod-name",
        api_name,
        "--pod-namespace",
        ns,
        "--identity",
        &id,
        "--control-plane",
        control_plane,
        "--identity-token-file",
        &token_file.to_string_lossy(),
        "--trust-anchors",
        &anchors.to_string_lossy(),
    ])
}
