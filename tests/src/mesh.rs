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
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{sa}")
}

#[derive(Debug)]
pub struct ControlPlane {
    pub pod: Arc<Pod>,
    pub dir: PathBuf,
    lifetime: String,
    tokens: Mutex<Vec<(String, String)>>,
    process: Mutex<Option<Arc<Process>>>,
}

impl ControlPlane {
    /// Starts `weft-control` in a new pod, issuing certificates that live
    /// `lifetime` (e.g. `10s`).
    pub fn start(node: &Node, lifetime: &str) -> ControlPlane {
        let pod = node.pod("control");
        let dir = node.logs().join("control-plane");
        std::fs::create_dir_all(&dir).expect("control plane directory");
        let cp = ControlPlane {
            pod,
            dir,
            lifetime: lifetime.to_string(),
            tokens: Mutex::new(Vec::new()),
            process: Mutex::new(None),
        };
        cp.write_tokens();
        cp.restart();
        cp
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
        for (token, sa) in self.tokens.lock().expect("tokens").iter() {
            yaml.push_str(&format!(
                "  - token: {token}\n    namespace: {NAMESPACE}\n    serviceAccount: {sa}\n"
            ));
        }
        std::fs::write(self.tokens_file(), yaml).expect("writing tokens.yaml");
    }

    /// Registers a bootstrap token for service account `sa` and returns it.
    pub fn token_for(&self, sa: &str) -> String {
        let token = format!("token-{sa}-{}", rand::random::<u64>());
        self.tokens
            .lock()
            .expect("tokens")
            .push((token.clone(), sa.to_string()));
        self.write_tokens();
        token
    }

    /// Starts (again) with the same CA directory and tokens.
    pub fn restart(&self) {
        let (ca, tokens) = (self.ca_dir(), self.tokens_file());
        let p = self.pod.spawn(
            "weft-control",
            bins::control(),
            &[
                "--ca-dir",
                ca.to_str().expect("utf-8 path"),
                "--tokens",
                tokens.to_str().expect("utf-8 path"),
                "--cert-lifetime",
                &self.lifetime,
                "--log-level",
                "weft_control=debug,info",
            ],
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
        self.init(&[]);
        self.start_identified_proxy(cp, sa, extra)
    }

    /// Starts a proxy with an identity from `cp` (without running `init`).
    pub fn start_identified_proxy(
        &self,
        cp: &ControlPlane,
        sa: &str,
        extra: &[&str],
    ) -> Arc<Process> {
        let token = cp.token_for(sa);
        let id = spiffe(sa);
        let addr = cp.grpc_addr().to_string();
        let anchors = cp.ca_cert();
        let mut args = vec![
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
