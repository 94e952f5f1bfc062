//! [`NodeStandIn`]: a test fixture that stands in for a kubelet. It is not a
//! kubelet: it runs no containers, pulls no images and probes nothing. It
//! registers one Node, gives every API pod scheduled to it (or left
//! unscheduled: there is no scheduler either) a harness network namespace on
//! the test bridge, and reports that pod Running and Ready with the
//! namespace's IP, so that the real controllers (ReplicaSet, EndpointSlice,
//! ...) see what they would see on a real node. What runs in a pod is up to
//! the test: it starts processes in the harness pod itself.

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
use crate::node::{Node, Pod, SUBNET_PREFIX};

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
struct Shared {
    node: Arc<Node>,
    /// API pods running in a harness pod, with the API pod's UID.
    running: Mutex<HashMap<Key, (String, Arc<Pod>)>>,
    next: AtomicU32,
    /// What went wrong, for the messages of failing waits.
    errors: Mutex<Vec<String>>,
}

impl Cluster {
    /// Registers the Node [`NODE_NAME`] and starts a [`NodeStandIn`] that
    /// runs this cluster's pods in harness pods of `node`.
    pub fn stand_in(&self, node: Arc<Node>) -> NodeStandIn {
        let shared = Arc::new(Shared {
            node,
            running: Mutex::new(HashMap::new()),
            next: AtomicU32::new(0),
            errors: Mutex::new(Vec::new()),
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
                                tokio::select! {
                                    _ = stopped => {}
                                    () = shared.run(client) => {}
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
    /// failed (`false`) or passed again (`true`).
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
    /// Watches every pod until the stand-in stops.
    async fn run(&self, client: ::kube::Client) {
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
    async fn apply(&self, client: &::kube::Client, pod: ApiPod) {
        let k = key(&pod);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let api = Api::<ApiPod>::namespaced(client.clone(), &k.0);
        if pod.metadata.deletion_timestamp.is_some() {
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
            .insert(k.clone(), (uid.clone(), harness));
        if let Err(e) = self.start(&api, &pod, assigned.is_none(), ip).await {
            self.error(format!("starting pod {}/{}: {e}", k.0, k.1));
            self.stop(&k, Some(&uid));
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
    fn stop(&self, k: &Key, uid: Option<&str>) {
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

    fn error(&self, e: String) {
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

fn now() -> Value {
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
struct Steady;

impl Iterator for Steady {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(250))
    }
}

impl Backoff for Steady {
    fn reset(&mut self) {}
}
