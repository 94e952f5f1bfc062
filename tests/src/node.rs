//! A virtual node: a bridge namespace and pods joined to it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::netns::{self, Netns, PREFIX};
use crate::process::Process;
use crate::{bins, client};

static NEXT_NODE: AtomicU32 = AtomicU32::new(0);

/// The pods' subnet; the bridge holds `.1`.
pub const SUBNET_PREFIX: [u8; 3] = [198, 18, 0];

#[derive(Debug)]
pub struct Node {
    id: String,
    bridge: Netns,
    pods: Mutex<Vec<Arc<Pod>>>,
    logs: PathBuf,
}

impl Node {
    /// A new, empty node. Removes what killed runs left behind first.
    pub fn new(test: &str) -> Node {
        crate::require_root();
        netns::remove_stale();
        let id = format!(
            "{PREFIX}{}n{}",
            std::process::id(),
            NEXT_NODE.fetch_add(1, Ordering::Relaxed)
        );
        let logs = std::env::temp_dir().join(format!("weft-e2e-{test}-{id}"));
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs).expect("creating the log directory");
        let bridge = Netns::create(&format!("{id}-br"));
        let gw = format!("{}/24", gateway());
        bridge.ip(&["link", "add", "br0", "type", "bridge"]);
        bridge.ip(&["addr", "add", &gw, "dev", "br0"]);
        bridge.ip(&["link", "set", "br0", "up"]);
        Node {
            id,
            bridge,
            pods: Mutex::new(Vec::new()),
            logs,
        }
    }

    /// Adds a pod: a namespace with `eth0` on the bridge and a default route
    /// through the bridge (which forwards nothing onward).
    pub fn pod(&self, name: &str) -> Arc<Pod> {
        let mut pods = self.pods.lock().expect("pods lock");
        let index = pods.len() as u8;
        let ip = Ipv4Addr::new(
            SUBNET_PREFIX[0],
            SUBNET_PREFIX[1],
            SUBNET_PREFIX[2],
            10 + index,
        );
        let ns = Netns::create(&format!("{}-{name}", self.id));
        let host_end = format!("veth{index}");
        self.bridge.ip(&[
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
        ]);
        self.bridge
            .ip(&["link", "set", &host_end, "master", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", &gateway().to_string()]);
        let pod = Arc::new(Pod {
            name: name.to_string(),
            ns,
            ip,
            procs: Mutex::new(Vec::new()),
            logs: self.logs.clone(),
        });
        pods.push(pod.clone());
        pod
    }

    pub fn bridge(&self) -> &Netns {
        &self.bridge
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where this node's logs and files live.
    pub fn logs(&self) -> &std::path::Path {
        &self.logs
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let pods = std::mem::take(&mut *self.pods.lock().unwrap_or_else(|p| p.into_inner()));
        let failed = std::thread::panicking();
        if failed {
            for pod in &pods {
                pod.dump_logs();
            }
        }
        drop(pods);
        // Keep a failed test's files for a post-mortem; a passing test's go.
        if !failed {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}

fn gateway() -> Ipv4Addr {
    Ipv4Addr::new(SUBNET_PREFIX[0], SUBNET_PREFIX[1], SUBNET_PREFIX[2], 1)
}

#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    procs: Mutex<Vec<Arc<Process>>>,
    logs: PathBuf,
}

impl Pod {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    /// Starts a process in this pod as root.
    pub fn spawn(
        &self,
        name: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
    ) -> Arc<Process> {
        let mut cmd = self.ns.command(program);
        cmd.args(args);
        self.track(name, cmd)
    }

    /// Starts a process in this pod as `uid` (the proxy runs as 2420).
    pub fn spawn_as(
        &self,
        uid: u32,
        name: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
    ) -> Arc<Process> {
        let mut cmd = self.ns.command_as(uid, program);
        cmd.args(args);
        self.track(name, cmd)
    }

    /// Starts a command built with `self.ns.command(...)` (e.g. with an
    /// environment of its own), tracked and logged like [`Pod::spawn`].
    pub fn spawn_command(&self, name: &str, cmd: Command) -> Arc<Process> {
        self.track(name, cmd)
    }

    fn track(&self, name: &str, cmd: Command) -> Arc<Process> {
        let log = self.logs.join(format!("{}-{name}.log", self.name));
        let p = Arc::new(Process::spawn(&format!("{}/{name}", self.name), cmd, log));
        self.procs.lock().expect("procs lock").push(p.clone());
        p
    }

    /// Runs a command in this pod to completion.
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
        let mut cmd = self.ns.command(program);
        cmd.args(args);
        cmd.output().expect("running a command in a pod")
    }

    /// `weft-proxy init` with `args`; panics with its output if it fails.
    pub fn init(&self, args: &[&str]) -> Output {
        let mut all = vec!["init"];
        all.extend_from_slice(args);
        let out = self.exec(bins::proxy(), &all);
        assert!(
            out.status.success(),
            "weft-proxy {all:?} failed in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts `weft-proxy run` as the proxy UID and waits until it is ready.
    pub fn start_proxy(&self, args: &[&str]) -> Arc<Process> {
        let mut all = vec!["run", "--log-level", "weft_proxy=debug,info"];
        all.extend_from_slice(args);
        let p = self.spawn_as(weft_api::defaults::PROXY_UID, "proxy", bins::proxy(), &all);
        self.wait_ready(&p);
        p
    }

    /// Interception plus a running sidecar: the usual meshed pod.
    pub fn mesh(&self) -> Arc<Process> {
        self.init(&[]);
        self.start_proxy(&[])
    }

    /// Waits for the proxy's `/ready`, failing fast if it exits.
    pub fn wait_ready(&self, proxy: &Process) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if !proxy.is_running() {
                proxy.dump_log();
                panic!("the proxy in {} exited before it was ready", self.name);
            }
            if self.admin("/ready").is_ok_and(|r| r.status.is_success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy in {} never became ready",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether something listens on `port` on this pod's address.
    pub fn is_listening(&self, port: u16) -> bool {
        let addr = self.addr(port);
        self.ns
            .run_in(|| std::net::TcpStream::connect(addr))
            .is_ok()
    }

    /// Waits until something listens on `port` in this pod.
    pub fn wait_listening(&self, port: u16) {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .ns
            .run_in(|| std::net::TcpStream::connect(addr))
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "nothing listens on {port} in {}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET on this pod's proxy admin server, from inside the pod.
    pub fn admin(&self, path: &str) -> Result<client::Reply, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], weft_api::defaults::ADMIN_PORT));
        self.ns.block_on(client::get(addr, path))
    }

    /// Waits until the proxy has applied a snapshot newer than `after`, and
    /// returns its version.
    pub fn wait_config(&self, after: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric("discovery_snapshot_version");
            if v > after {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{} never got a snapshot newer than {after}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The PID of this pod's proxy.
    pub fn proxy_pid(&self) -> u32 {
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|p| p.name.ends_with("/proxy"))
            .map(|p| p.pid())
            .unwrap_or(0)
    }

    /// The mesh config the proxy applied (its admin `/config`).
    pub fn config(&self) -> serde_json::Value {
        self.admin("/config").expect("the proxy's /config").json()
    }

    /// Waits until the proxy's config has `service` (`name.ns:port`) with
    /// exactly `endpoints` endpoints.
    ///
    /// A proxy that discovers on demand holds a Service only once its app
    /// used it: if it does not, this connects once from the pod to the
    /// Service's address, as the app's first call would, and waits for what
    /// that brings. It connects to a port the Service does not serve, so that
    /// no endpoint sees the connection (and no count a test reads moves).
    pub fn wait_endpoints(&self, service: &str, endpoints: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut used = false;
        loop {
            let cfg = self.config();
            if !used {
                used = self.use_service(service);
            }
            let n = cfg["services"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"] == service)
                .and_then(|s| s["endpoints"].as_array().map(Vec::len));
            if n == Some(endpoints) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {service} never had {endpoints} endpoints; config: {cfg}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Connects once, from this pod, to the address of `service`
    /// ("name.namespace:port") unless the proxy holds it or receives
    /// everything anyway (see [`Pod::wait_endpoints`]); false while its names
    /// table lacks it.
    pub fn use_service(&self, service: &str) -> bool {
        let cfg = self.config();
        if cfg["discovery"] != "on-demand" {
            return true;
        }
        let held = cfg["services"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == service);
        if held {
            return true;
        }
        let Some((name, _port)) = service.rsplit_once(':') else {
            return true;
        };
        let Some((name, ns)) = name.split_once('.') else {
            return true;
        };
        let key = format!("{ns}/{name}");
        let Some(entry) = cfg["names"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["service"] == key.as_str())
        else {
            return false;
        };
        let Some(vip) = entry["address"].as_str() else {
            return false;
        };
        let served: Vec<u64> = entry["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_u64)
            .collect();
        let Some(unserved) = (1..100u64).find(|p| !served.contains(p)) else {
            return false;
        };
        let addr = if vip.contains(':') {
            format!("[{vip}]")
        } else {
            vip.to_string()
        };
        // Opened and closed: the proxy subscribes on accepting it.
        self.exec(
            "timeout",
            &[
                "5",
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{addr}/{unserved}"),
            ],
        );
        true
    }

    /// The proxy's `/metrics` text.
    pub fn metrics(&self) -> String {
        self.admin("/metrics")
            .expect("scraping the proxy's /metrics")
            .text()
    }

    /// One metric sample (0 when absent, as Prometheus would read a counter
    /// that has not moved).
    pub fn metric(&self, series: &str) -> f64 {
        crate::metrics::value(&self.metrics(), series).unwrap_or(0.0)
    }

    /// Fails (printing every log of the pod) unless the proxy's log contains
    /// `needle`.
    pub fn assert_proxy_log_contains(&self, needle: &str) {
        let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        if !procs
            .iter()
            .any(|p| p.name.ends_with("/proxy") && p.log().contains(needle))
        {
            for p in procs.iter() {
                p.dump_log();
            }
            panic!("the proxy log of {} lacks {needle:?}", self.name);
        }
    }

    pub fn dump_logs(&self) {
        for p in self.procs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            p.dump_log();
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Processes first, then the namespace (Netns's own drop).
        self.procs.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
