//! [`NodeStandIn`]: a test fixture that stands in for a kubelet. It is not a
//! kubelet. It registers one Node and gives every API pod scheduled to it
//! (or left unscheduled: there is no scheduler either) a harness network
//! namespace on the test bridge, binds it to the Node, and writes its
//! status, so that the real controllers (ReplicaSet, EndpointSlice, ...) see
//! what they would see on a real node. It comes in two kinds:
//!
//! - [`Cluster::stand_in`] runs nothing: it reports each pod Running and
//!   Ready with its namespace's IP, and what runs in a pod is up to the
//!   test, which starts processes in the harness pod itself.
//! - [`Cluster::stand_in_running`] runs the pods for real, as a kubelet
//!   would, in the smallest honest way (see `runner.rs` and the files beside
//!   it): images map to binaries of this machine by a fixed table
//!   (`weft-proxy`, `weft-init`, `weft-control`, `weft-test-app`, `jaeger`);
//!   `command`/`args` with `$(VAR)` expansion; the environment (`value`,
//!   `fieldRef`, `resourceFieldRef`, ConfigMap and Secret keys, `envFrom`,
//!   Service links); volumes (`emptyDir`, `configMap`, `secret`,
//!   `downwardAPI`, `projected` with pod-bound TokenRequest tokens, which
//!   includes the automatic ServiceAccount token) bind-mounted at their
//!   `mountPath` in a private mount namespace per container; the user and
//!   groups (`runAsUser`, `runAsGroup`, `fsGroup`, `supplementalGroups`);
//!   init containers in order, native sidecars and their startup probes,
//!   readiness probes from the node, restarts, the pod's status, and
//!   SIGTERM, grace and SIGKILL on deletion. The node plays its part too: a
//!   kube-proxy stand-in (iptables DNAT of ClusterIPs to ready endpoints in
//!   the bridge's namespace) and Service names in every container's
//!   `/etc/hosts`.
//!
//!   Not done: images (the host's filesystem is every container's root),
//!   cgroups and resource limits, PID, UTS and user namespaces (the
//!   hostname is only `$HOSTNAME`), `hostNetwork` (every pod gets its own
//!   network namespace), capabilities, seccomp and `readOnlyRootFilesystem`
//!   (not enforced), liveness probes (not run), exec and gRPC probes
//!   (counted as passing, with an error), lifecycle hooks and termination
//!   messages, volume refreshes (ConfigMaps, Secrets and tokens are written
//!   once), hostPath and persistent volumes (they leave the pod Pending with
//!   an error), a DNS server (names come from the hosts file), NodePorts,
//!   image pull back-off (an unknown image is `ErrImagePull` at once, with
//!   an error), exponential restart back-off (a fixed second), and events.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use ::kube::runtime::utils::{Backoff, StreamBackoff};
use ::kube::runtime::watcher::{self, Event};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node as ApiNode, Pod as ApiPod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use super::Cluster;
use super::runner::{Runner, Stop};
use super::services::{self, Network};
use super::status::{ContainerRun, PodRun};
use crate::node::{Node, Pod, SUBNET_PREFIX};
use crate::process::Process;

/// The Node object the stand-in registers and binds pods to.
pub const NODE_NAME: &str = "weft-e2e-node";

/// A stand-in for a kubelet (see the module docs): a thread in the kube
/// pod's namespace with a runtime and a client of its own, watching pods in
/// every namespace. Stops on drop; the harness pods it made live as long as
/// the [`Node`].
#[derive(Debug)]
pub struct NodeStandIn {
    shared: Arc<Shared>,
    kube: Arc<Pod>,
    kubeconfig: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// (namespace, name) of an API pod.
type Key = (String, String);

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) node: Arc<Node>,
    /// API pods running in a harness pod, with the API pod's UID.
    running: Mutex<HashMap<Key, (String, Arc<Pod>)>>,
    next: AtomicU32,
    /// What went wrong, for the messages of failing waits.
    errors: Mutex<Vec<String>>,
    /// Whether it runs the pods' containers ([`Cluster::stand_in_running`]).
    runs_containers: bool,
    /// The pods it runs: UID, how to stop the runner, the runner's state.
    workers: Mutex<HashMap<Key, Worker>>,
    /// Services and EndpointSlices, and what the node makes of them.
    pub(super) network: Mutex<Network>,
    /// True once Services and EndpointSlices were listed.
    pub(super) synced: tokio::sync::watch::Sender<bool>,
}

/// A pod's runner, as the stand-in sees it.
#[derive(Debug)]
struct Worker {
    uid: String,
    stop: tokio::sync::watch::Sender<Option<Stop>>,
    state: Arc<Mutex<PodRun>>,
}

impl Cluster {
    /// Registers the Node [`NODE_NAME`] and starts a [`NodeStandIn`] that
    /// gives this cluster's pods harness pods of `node` and reports them
    /// running, without running anything in them (the test does).
    pub fn stand_in(&self, node: Arc<Node>) -> NodeStandIn {
        self.start_stand_in(node, false)
    }

    /// Like [`Cluster::stand_in`], but the stand-in runs the pods'
    /// containers for real (see the module docs), probes them, and plays
    /// kube-proxy and cluster DNS for them on the node.
    pub fn stand_in_running(&self, node: Arc<Node>) -> NodeStandIn {
        self.start_stand_in(node, true)
    }

    fn start_stand_in(&self, node: Arc<Node>, runs_containers: bool) -> NodeStandIn {
        if runs_containers {
            // The node forwards (for the ClusterIP DNAT) and starts with
            // an empty nat table.
            super::kube_proxy::enable_forwarding(node.bridge())
                .unwrap_or_else(|e| panic!("the kubelet stand-in's node: {e}"));
        }
        let shared = Arc::new(Shared {
            node,
            running: Mutex::new(HashMap::new()),
            next: AtomicU32::new(0),
            errors: Mutex::new(Vec::new()),
            runs_containers,
            workers: Mutex::new(HashMap::new()),
            network: Mutex::new(Network::default()),
            synced: tokio::sync::watch::channel(false).0,
        });
        let kube = self.pod().clone();
        let kubeconfig = self.kubeconfig();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (ready_tx, ready) = mpsc::channel();
        let thread = {
            let shared = shared.clone();
            let netns = format!("/run/netns/{}", kube.ns.name());
            let kubeconfig = kubeconfig.clone();
            std::thread::Builder::new()
                .name("kubelet-stand-in".into())
                .spawn(move || {
                    let file =
                        File::open(&netns).unwrap_or_else(|e| panic!("opening {netns}: {e}"));
                    nix::sched::setns(file, CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|e| panic!("entering {netns}: {e}"));
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a tokio runtime")
                        .block_on(async move {
                            let client = super::client(&kubeconfig).await;
                            let registered = register_node(&client).await;
                            let ok = registered.is_ok();
                            let _ = ready_tx.send(registered);
                            if ok {
                                let network = shared.watch_network(client.clone());
                                tokio::select! {
                                    _ = stopped => {}
                                    () = shared.clone().run(client) => {}
                                    () = network => {}
                                }
                            }
                        });
                })
                .expect("starting the kubelet stand-in thread")
        };
        match ready.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the kubelet stand-in could not register Node {NODE_NAME}: {e}"),
            Err(e) => panic!("the kubelet stand-in did not register Node {NODE_NAME}: {e}"),
        }
        NodeStandIn {
            shared,
            kube,
            kubeconfig,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl NodeStandIn {
    /// The running pods (phase Running, not being deleted) in `namespace`
    /// that match `label_selector` (Kubernetes syntax, e.g. `app=web`; empty
    /// for all), as the API server lists them, by name, with the harness pod
    /// each runs in.
    pub fn pods(&self, namespace: &str, label_selector: &str) -> Vec<(String, Arc<Pod>)> {
        let listed = self.with_client(|client| async move {
            let lp = ListParams::default().labels(label_selector);
            Api::<ApiPod>::namespaced(client, namespace).list(&lp).await
        });
        let listed = listed.unwrap_or_else(|e| panic!("listing pods in {namespace}: {e}"));
        let running = self.shared.running.lock().expect("running lock");
        let mut pods: Vec<(String, Arc<Pod>)> = listed
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| phase(p) == Some("Running"))
            .filter_map(|p| {
                let name = p.metadata.name.clone()?;
                let (uid, pod) = running.get(&(namespace.to_string(), name.clone()))?;
                (p.metadata.uid.as_ref() == Some(uid)).then(|| (name, pod.clone()))
            })
            .collect();
        pods.sort_by(|a, b| a.0.cmp(&b.0));
        pods
    }

    /// Waits until exactly `n` pods match (see [`NodeStandIn::pods`]) and
    /// returns them.
    pub fn wait_pods(
        &self,
        namespace: &str,
        label_selector: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<(String, Arc<Pod>)> {
        let deadline = Instant::now() + timeout;
        loop {
            let pods = self.pods(namespace, label_selector);
            if pods.len() == n {
                return pods;
            }
            if Instant::now() > deadline {
                let names: Vec<&str> = pods.iter().map(|(n, _)| n.as_str()).collect();
                let errors = self.shared.errors.lock().expect("errors lock").clone();
                panic!(
                    "timed out after {timeout:?} waiting for {n} running pods `{label_selector}` \
                     in {namespace}; running: {names:?}; stand-in errors: {errors:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sets the pod's Ready and ContainersReady conditions (and its
    /// containers' `ready`), as a kubelet would after a readiness probe
    /// failed (`false`) or passed again (`true`). For [`Cluster::stand_in`]:
    /// a stand-in that runs containers writes what its probes find instead.
    pub fn set_ready(&self, namespace: &str, name: &str, ready: bool) {
        let ip = {
            let running = self.shared.running.lock().expect("running lock");
            let (_, pod) = running
                .get(&(namespace.to_string(), name.to_string()))
                .unwrap_or_else(|| panic!("pod {namespace}/{name} is not running on the stand-in"));
            pod.ip
        };
        self.with_client(|client| async move {
            let api = Api::<ApiPod>::namespaced(client, namespace);
            let pod = api
                .get(name)
                .await
                .unwrap_or_else(|e| panic!("getting pod {namespace}/{name}: {e}"));
            let patch = running_status(&pod, ip, ready);
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap_or_else(|e| panic!("patching the status of pod {namespace}/{name}: {e}"));
        });
    }

    /// What went wrong in the stand-in so far (it logs and carries on).
    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().expect("errors lock").clone()
    }

    /// The current (or last) process of container `container` of pod
    /// `namespace/name`, init containers included, when the stand-in runs
    /// containers ([`Cluster::stand_in_running`]): its PID, its log. Note
    /// that `/proc/<pid>/root/…` shows the container's view of files, but
    /// an absolute symlink on the way (`/var/run`) resolves in the
    /// reader's view: name the target (`/run/…`).
    pub fn process(&self, namespace: &str, name: &str, container: &str) -> Option<Arc<Process>> {
        let workers = self.shared.workers.lock().expect("workers lock");
        let w = workers.get(&(namespace.to_string(), name.to_string()))?;
        let st = w.state.lock().expect("pod state");
        st.containers
            .iter()
            .find(|c| c.spec.name == container)
            .and_then(|c| c.process.clone())
    }

    /// The log of container `container` of pod `namespace/name` (its
    /// current process's), or an empty string.
    pub fn logs(&self, namespace: &str, name: &str, container: &str) -> String {
        self.process(namespace, name, container)
            .map(|p| p.log())
            .unwrap_or_default()
    }

    fn with_client<F, Fut, R>(&self, f: F) -> R
    where
        F: FnOnce(::kube::Client) -> Fut + Send,
        Fut: std::future::Future<Output = R> + Send,
        R: Send,
    {
        let kubeconfig = self.kubeconfig.clone();
        self.kube.ns.block_on(async move {
            let client = super::client(&kubeconfig).await;
            f(client).await
        })
    }
}

impl Drop for NodeStandIn {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("weft-e2e: the kubelet stand-in's thread panicked (the message is above)");
        }
    }
}

/// Creates (or finds) the Node object and reports it Ready.
async fn register_node(client: &::kube::Client) -> Result<(), ::kube::Error> {
    let api = Api::<ApiNode>::all(client.clone());
    let node: ApiNode = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH,
            },
        },
    }))
    .expect("a Node object");
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(::kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e),
    }
    let now = now();
    let status = json!({
        "status": {
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "the weft e2e kubelet stand-in reports this node ready",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }],
            "addresses": [
                {"type": "InternalIP", "address": host_ip().to_string()},
                {"type": "Hostname", "address": NODE_NAME},
            ],
            "capacity": {"cpu": "8", "memory": "16Gi", "pods": "250"},
            "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "250"},
        }
    });
    api.patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

impl Shared {
    /// Watches Services and EndpointSlices for the node's kube-proxy and
    /// hosts files (only when it runs containers; else never returns).
    async fn watch_network(&self, client: ::kube::Client) {
        if !self.runs_containers {
            return std::future::pending().await;
        }
        services::watch(
            client,
            &self.network,
            self.node.bridge(),
            &self.synced,
            |e| self.error(e),
        )
        .await;
    }

    /// Watches every pod until the stand-in stops.
    async fn run(self: Arc<Self>, client: ::kube::Client) {
        let pods = Api::<ApiPod>::all(client.clone());
        let events = watcher::watcher(pods, watcher::Config::default());
        let mut events = std::pin::pin!(StreamBackoff::new(events, Steady));
        // Pods listed since the watch (re)started: the others went while it
        // was down.
        let mut listed = HashSet::new();
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Init) => listed.clear(),
                Ok(Event::InitApply(pod)) => {
                    listed.insert(key(&pod));
                    self.apply(&client, pod).await;
                }
                Ok(Event::InitDone) => {
                    let gone: Vec<Key> = self
                        .running
                        .lock()
                        .expect("running lock")
                        .keys()
                        .filter(|k| !listed.contains(*k))
                        .cloned()
                        .collect();
                    for k in gone {
                        self.stop(&k, None);
                    }
                }
                Ok(Event::Apply(pod)) => self.apply(&client, pod).await,
                Ok(Event::Delete(pod)) => {
                    self.stop(&key(&pod), pod.metadata.uid.as_deref());
                }
                Err(e) => self.error(format!("watching pods (retrying in 250 ms): {e}")),
            }
        }
    }

    /// What a kubelet does when a pod changes: start it, or finish deleting it.
    async fn apply(self: &Arc<Self>, client: &::kube::Client, pod: ApiPod) {
        let k = key(&pod);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let api = Api::<ApiPod>::namespaced(client.clone(), &k.0);
        if pod.metadata.deletion_timestamp.is_some() {
            // A pod this stand-in runs: its runner terminates it and
            // finishes the deletion.
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .unwrap_or(30)
                .max(0) as u64;
            if self.tell(&k, &uid, Stop::Delete(Duration::from_secs(grace))) {
                return;
            }
            self.stop(&k, Some(&uid));
            // This pod and no later one of the same name.
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&k.1, &dp).await {
                Ok(_) => {}
                // Gone already, or a new pod took the name.
                Err(::kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => self.error(format!("deleting pod {}/{}: {e}", k.0, k.1)),
            }
            return;
        }
        if matches!(phase(&pod), Some("Succeeded" | "Failed")) {
            return;
        }
        let spec = pod.spec.as_ref();
        let assigned = spec.and_then(|s| s.node_name.as_deref());
        if assigned.is_some_and(|n| n != NODE_NAME) {
            return;
        }
        let known = self
            .running
            .lock()
            .expect("running lock")
            .get(&k)
            .map(|(u, _)| u == &uid);
        match known {
            Some(true) => return,
            // Same name, new pod: the old one is gone.
            Some(false) => self.stop(&k, None),
            None => {}
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.node.pod(&format!("k{n}"))
        }));
        let Ok(harness) = made else {
            self.error(format!(
                "making a harness pod for {}/{} failed (the panic is above)",
                k.0, k.1
            ));
            return;
        };
        let ip = harness.ip;
        self.running
            .lock()
            .expect("running lock")
            .insert(k.clone(), (uid.clone(), harness.clone()));
        if self.runs_containers {
            let bind = assigned.is_none();
            self.spawn_runner(client, pod, harness, bind);
            return;
        }
        if let Err(e) = self.start(&api, &pod, assigned.is_none(), ip).await {
            self.error(format!("starting pod {}/{}: {e}", k.0, k.1));
            self.stop(&k, Some(&uid));
        }
    }

    /// Starts a [`Runner`] for the pod, which runs it in `harness`.
    fn spawn_runner(
        self: &Arc<Self>,
        client: &::kube::Client,
        pod: ApiPod,
        harness: Arc<Pod>,
        bind: bool,
    ) {
        let k = key(&pod);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut containers: Vec<ContainerRun> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| ContainerRun::new(c.clone(), true))
            .collect();
        containers.extend(
            spec.containers
                .iter()
                .map(|c| ContainerRun::new(c.clone(), false)),
        );
        let state = Arc::new(Mutex::new(PodRun {
            namespace: k.0.clone(),
            name: k.1.clone(),
            ip: harness.ip,
            host_ip: host_ip(),
            phase: "Pending",
            reason: None,
            message: None,
            start_time: now(),
            initialized: false,
            containers,
            transitions: Default::default(),
        }));
        let (stop, stopped) = tokio::sync::watch::channel(None);
        self.workers.lock().expect("workers lock").insert(
            k.clone(),
            Worker {
                uid: uid.clone(),
                stop,
                state: state.clone(),
            },
        );
        let dir = self.node.logs().join("pods").join(format!(
            "{}_{}_{}",
            k.0,
            k.1,
            uid.chars().take(8).collect::<String>()
        ));
        let runner = Runner {
            shared: self.clone(),
            client: client.clone(),
            pod,
            harness,
            state,
            stop: stopped,
            bind,
            dir,
            volumes: Default::default(),
            last: Value::Null,
            reported: Default::default(),
        };
        tokio::spawn(runner.run());
    }

    /// Tells the runner of pod `k` (if it is the pod `uid`) to stop; false
    /// when there is none.
    fn tell(&self, k: &Key, uid: &str, stop: Stop) -> bool {
        let workers = self.workers.lock().expect("workers lock");
        match workers.get(k) {
            Some(w) if w.uid == uid => {
                w.stop.send_if_modified(|s| {
                    // A kill overrides a graceful stop; nothing undoes one.
                    let new = match (*s, stop) {
                        (None, s) | (Some(Stop::Delete(_)), s @ Stop::Kill) => Some(s),
                        (old, _) => old,
                    };
                    let changed = new != *s;
                    *s = new;
                    changed
                });
                true
            }
            _ => false,
        }
    }

    /// Binds the pod to the node (unless it named it already) and reports
    /// it running at `ip`.
    async fn start(
        &self,
        api: &Api<ApiPod>,
        pod: &ApiPod,
        bind: bool,
        ip: Ipv4Addr,
    ) -> Result<(), ::kube::Error> {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        if bind {
            let binding = json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name, "namespace": pod.metadata.namespace},
                "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
            });
            let _: Value = api
                .create_subresource("binding", name, &PostParams::default(), &binding)
                .await?;
        }
        let status = running_status(pod, ip, true);
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok(())
    }

    /// Kills what runs in the API pod's harness pod and takes it off the
    /// bridge (the [`Node`] keeps the namespace until it is dropped, and
    /// never hands its address out again). With `uid`, only if the entry is
    /// that pod.
    pub(super) fn stop(&self, k: &Key, uid: Option<&str>) {
        {
            // A runner still going is told to kill what it runs (it calls
            // this again when done).
            let workers = self.workers.lock().expect("workers lock");
            if let Some(w) = workers.get(k)
                && uid.is_none_or(|u| u == w.uid)
            {
                let u = w.uid.clone();
                drop(workers);
                self.tell(k, &u, Stop::Kill);
            }
        }
        let mut running = self.running.lock().expect("running lock");
        if uid.is_some_and(|u| running.get(k).is_some_and(|(have, _)| have != u)) {
            return;
        }
        let Some((_, pod)) = running.remove(k) else {
            return;
        };
        drop(running);
        for pid in pod.ns.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = std::process::Command::new("ip")
            .args(["-n", pod.ns.name(), "link", "set", "eth0", "down"])
            .output();
    }

    pub(super) fn error(&self, e: String) {
        eprintln!("weft-e2e kubelet stand-in: {e}");
        self.errors.lock().expect("errors lock").push(e);
    }
}

/// The `status` (as a merge patch) of a pod running at `ip` on the node:
/// phase Running, scheduled and initialized, its containers running (init
/// containers completed, native sidecars running), ready or not.
fn running_status(pod: &ApiPod, ip: Ipv4Addr, ready: bool) -> Value {
    let now = now();
    let status = pod.status.as_ref();
    let started = status
        .and_then(|s| s.start_time.as_ref())
        .map(|t| json!(t))
        .unwrap_or_else(|| now.clone());
    let spec = pod.spec.as_ref();
    let container_id = |c: &str| {
        format!(
            "weft-e2e://{}/{}/{c}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        )
    };
    let containers: Vec<Value> = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "containerID": container_id(&c.name),
                "ready": ready,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": started}},
            })
        })
        .collect();
    let init: Vec<Value> = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let sidecar = c.restart_policy.as_deref() == Some("Always");
            let state = if sidecar {
                json!({"running": {"startedAt": started}})
            } else {
                json!({"terminated": {
                    "exitCode": 0,
                    "reason": "Completed",
                    "startedAt": started,
                    "finishedAt": started,
                }})
            };
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "containerID": container_id(&c.name),
                "ready": if sidecar { ready } else { true },
                "started": sidecar,
                "restartCount": 0,
                "state": state,
            })
        })
        .collect();
    let ready = if ready { "True" } else { "False" };
    let condition = |t: &str, s: &str| json!({"type": t, "status": s, "lastProbeTime": null, "lastTransitionTime": now});
    let host = host_ip().to_string();
    json!({
        "status": {
            "phase": "Running",
            "hostIP": host,
            "hostIPs": [{"ip": host}],
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "startTime": started,
            "conditions": [
                condition("PodReadyToStartContainers", "True"),
                condition("PodScheduled", "True"),
                condition("Initialized", "True"),
                condition("ContainersReady", ready),
                condition("Ready", ready),
            ],
            "containerStatuses": containers,
            "initContainerStatuses": init,
        }
    })
}

/// The node's address: the bridge, which every harness pod routes through.
fn host_ip() -> Ipv4Addr {
    Ipv4Addr::new(SUBNET_PREFIX[0], SUBNET_PREFIX[1], SUBNET_PREFIX[2], 1)
}

pub(super) fn now() -> Value {
    json!(Time(Timestamp::now()))
}

fn key(pod: &ApiPod) -> Key {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

fn phase(pod: &ApiPod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// Retries a broken watch every quarter second (an API server restart
/// should not leave pods unstarted for the default backoff's 30 s).
pub(super) struct Steady;

impl Iterator for Steady {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(250))
    }
}

impl Backoff for Steady {
    fn reset(&mut self) {}
}
