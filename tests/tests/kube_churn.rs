//! A measurement, not run by CI: Pods created and deleted at 100 a second
//! for a minute on the real API server keep the control plane's memory flat
//! and a real sidecar's endpoints exactly what the EndpointSlices say.
//!
//! The churn Pods (`app=churn`, behind the Service `churn`) are other pods
//! of the cluster, meshed by annotation but without a sidecar: created bound
//! to a Node of their own that no stand-in runs (`weft-churn-node`, Ready),
//! their status written by the test (an address from 10.210.0.0/16, never
//! reused; Running and Ready) so that the real EndpointSlice controller
//! publishes them, and deleted (grace 0) a lifetime later. A real meshed
//! client pod declares `churn` and two stable Services in
//! `weft.dev/dependencies`.
//!
//! When the minute is over, the churn Pods of the last lifetime are kept
//! while the sidecar's endpoints are compared with the slices, once these
//! hold every Ready Pod (`alive`); then they are deleted at the same pace,
//! and once all are gone the comparison is made again (`drained`). The control plane's RSS is read before, every second, after,
//! and 30 s later.
//!
//! It prints one line, `BENCH {json}`, also written to `WEFT_BENCH_OUT` when
//! set; then it fails if the sidecar ends holding a stale or missing
//! endpoint, or if the control plane's RSS did not come back near where it
//! started. Run it by hand, as root, with the Kubernetes tools:
//!
//! ```text
//! WEFT_KUBE_TOOLS=$(ls -d /var/cache/weft/kube-tools/*/bin | head -1) \
//!   cargo test -p weft-e2e --test kube_churn -- --ignored --nocapture
//! ```
//!
//! `WEFT_CHURN_RATE` (Pods a second, default 100), `WEFT_CHURN_SECONDS`
//! (default 60) and `WEFT_CHURN_LIFETIME` (seconds, default 10) change it.
//! The API server may not sustain the rate on a busy machine: the rates
//! reported are the ones achieved.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use ::kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use k8s_openapi::api::core::v1::{Node as ApiNode, Pod as ApiPod};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use weft_e2e::kube::Cluster;
use weft_e2e::kube::weft::{self, ControlReplica};
use weft_e2e::{Node, Pod, eventually, metrics, require_root};

const NS: &str = "shop";
/// The Node the churn Pods are bound to: nobody runs them.
const CHURN_NODE: &str = "weft-churn-node";
/// The Services the client declares, as its sidecar names them.
const CHURN: &str = "churn.shop:80";
const STABLE: [&str; 2] = ["stable-a.shop:80", "stable-b.shop:80"];
const WAIT: Duration = Duration::from_secs(30);
/// Creates (and, apart, deletes) in flight at once.
const IN_FLIGHT: usize = 64;
/// How much more the control plane may hold after the churn than before.
const RSS_SLACK_KIB: u64 = 100 * 1024;

const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {weft.dev/inject: enabled}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: stable, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: churn, namespace: shop}
automountServiceAccountToken: false
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: shop
  labels: {app: client}
  annotations:
    weft.dev/inject: enabled
    weft.dev/dependencies: "churn, stable-a, stable-b"
spec:
  serviceAccountName: client
  containers:
  - name: app
    image: weft-test-app
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: stable, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: stable}}
  template:
    metadata:
      labels: {app: stable}
      annotations: {weft.dev/inject: enabled}
    spec:
      serviceAccountName: stable
      containers:
      - name: app
        image: weft-test-app
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: churn, namespace: shop}
spec:
  selector: {app: churn}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: stable-a, namespace: shop}
spec:
  selector: {app: stable}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: stable-b, namespace: shop}
spec:
  selector: {app: stable}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
"#;

/// The churn's shape, from the environment.
#[derive(Clone, Copy, Debug)]
struct Settings {
    rate: f64,
    seconds: u64,
    lifetime: Duration,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let rate = var("WEFT_CHURN_RATE").map_or(100.0, |v| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|r| *r > 0.0 && r.is_finite())
                .unwrap_or_else(|| panic!("WEFT_CHURN_RATE={v}: not a positive number"))
        });
        let seconds = var("WEFT_CHURN_SECONDS").map_or(60, |v| {
            v.trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s > 0)
                .unwrap_or_else(|| panic!("WEFT_CHURN_SECONDS={v}: not a positive whole number"))
        });
        let lifetime = var("WEFT_CHURN_LIFETIME").map_or(Duration::from_secs(10), |v| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|s| *s >= 0.0 && s.is_finite())
                .map(Duration::from_secs_f64)
                .or_else(|| humantime::parse_duration(v.trim()).ok())
                .unwrap_or_else(|| {
                    panic!("WEFT_CHURN_LIFETIME={v}: not seconds (10) or a duration (10s)")
                })
        });
        let s = Settings {
            rate,
            seconds,
            lifetime,
        };
        assert!(
            s.total() <= 250 * 256,
            "{rate} Pods a second for {seconds} s do not fit in 10.210.0.0/16"
        );
        s
    }

    /// How many Pods the churn means to create.
    fn total(&self) -> usize {
        (self.rate * self.seconds as f64).ceil() as usize
    }
}

/// The address of the `i`th churn Pod: 10.210.0.0/16, never reused, no .0
/// or .255.
fn churn_ip(i: usize) -> String {
    format!("10.210.{}.{}", i / 250, i % 250 + 1)
}

/// What the churn did, counted as it went.
#[derive(Default)]
struct Counts {
    created: AtomicUsize,
    create_failed: AtomicUsize,
    status_failed: AtomicUsize,
    deleted: AtomicUsize,
    delete_failed: AtomicUsize,
    /// Pods Running and Ready, not deleted yet: what the slices should hold.
    ready: AtomicUsize,
    first_error: Mutex<Option<String>>,
    /// When each delete was sent and when it was answered, and whether it
    /// came after the pause.
    deletes: Mutex<Vec<(Instant, Instant, bool)>>,
}

impl Counts {
    fn error(&self, what: String) {
        let mut first = self.first_error.lock().expect("first error");
        if first.is_none() {
            eprintln!("kube_churn: {what}");
            *first = Some(what);
        }
    }

    fn summary(&self) -> String {
        let n = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        format!(
            "{} created ({} failed, {} without status), {} deleted ({} failed); first error: {:?}",
            n(&self.created),
            n(&self.create_failed),
            n(&self.status_failed),
            n(&self.deleted),
            n(&self.delete_failed),
            self.first_error.lock().expect("first error")
        )
    }

    /// Deletes sent after the pause or not: how many, and their rate from
    /// the first sent to the last answered.
    fn delete_rate(&self, after_pause: bool) -> (usize, f64) {
        let deletes = self.deletes.lock().expect("deletes");
        let these: Vec<_> = deletes.iter().filter(|d| d.2 == after_pause).collect();
        let first = these.iter().map(|d| d.0).min();
        let last = these.iter().map(|d| d.1).max();
        let rate = match (first, last) {
            (Some(f), Some(l)) if l > f => these.len() as f64 / (l - f).as_secs_f64(),
            _ => 0.0,
        };
        (these.len(), rate)
    }
}

/// The creation phase, as the churn thread reports it at the pause.
#[derive(Clone, Copy, Debug)]
struct Created {
    /// From the first create sent until the last one (and its status)
    /// was answered.
    wall: Duration,
    /// Pods created and not deleted yet: the ones kept through the pause.
    alive: usize,
    /// Of those, the ones whose status says Ready.
    ready: usize,
}

/// The churn, on a thread of its own in the kube pod's namespace.
struct Churn {
    counts: Arc<Counts>,
    paused: mpsc::Receiver<Created>,
    release: watch::Sender<Option<Instant>>,
    thread: JoinHandle<Result<(), weft_netns::Error>>,
}

impl Churn {
    fn start(cluster: &Cluster, s: Settings) -> Churn {
        let kubeconfig = cluster.kubeconfig();
        let counts = Arc::new(Counts::default());
        let (paused_tx, paused) = mpsc::channel();
        let (release, released) = watch::channel(None);
        let c = counts.clone();
        let thread = cluster
            .pod()
            .ns
            .thread("churn", move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the churn")
                    .block_on(churn(kubeconfig, s, c, paused_tx, released));
            })
            .expect("starting the churn thread");
        Churn {
            counts,
            paused,
            release,
            thread,
        }
    }

    /// Waits until the minute is over and only the last lifetime's Pods
    /// are left.
    fn wait_paused(&self, s: Settings) -> Created {
        let limit = std::time::Instant::now()
            + Duration::from_secs(s.seconds * 3)
            + s.lifetime * 2
            + Duration::from_secs(60);
        loop {
            match self.paused.recv_timeout(Duration::from_secs(1)) {
                Ok(c) => return c,
                Err(mpsc::RecvTimeoutError::Timeout) => assert!(
                    std::time::Instant::now() < limit,
                    "the churn never finished its creation phase: {}",
                    self.counts.summary()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the churn thread ended early (its panic is above)")
                }
            }
        }
    }

    /// Lets the kept Pods go, at the pace they came, and waits for the end.
    fn finish(self) -> Arc<Counts> {
        self.release.send_replace(Some(Instant::now()));
        match self.thread.join() {
            Ok(Ok(())) => self.counts,
            Ok(Err(e)) => panic!("the churn thread could not enter the kube pod: {e}"),
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

/// Creates a Pod every `1/rate` s for `seconds`, each deleted `lifetime`
/// after it was created; those that would outlive the minute are kept until
/// `released`, then deleted as far apart as they were due.
async fn churn(
    kubeconfig: std::path::PathBuf,
    s: Settings,
    counts: Arc<Counts>,
    paused: mpsc::Sender<Created>,
    released: watch::Receiver<Option<Instant>>,
) {
    let client = weft_e2e::kube::client(&kubeconfig).await;
    let pods: Api<ApiPod> = Api::namespaced(client.clone(), NS);
    let creates = Arc::new(Semaphore::new(IN_FLIGHT));
    let deletes = Arc::new(Semaphore::new(IN_FLIGHT));
    // Each Pod holds a sender until it is deleted or kept: the channel
    // closes when the minute's deletes are done.
    let (pending, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let period = Duration::from_secs_f64(1.0 / s.rate);
    let start = Instant::now();
    let end = start + Duration::from_secs(s.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..s.total() {
        let due = start + period.mul_f64(i as f64);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        let permit = creates
            .clone()
            .acquire_owned()
            .await
            .expect("the create semaphore");
        // Fallen behind: the minute is the minute.
        if Instant::now() >= end {
            break;
        }
        let one = OnePod {
            i,
            pods: pods.clone(),
            counts: counts.clone(),
            deletes: deletes.clone(),
            lifetime: s.lifetime,
            end,
            pending: Some(pending.clone()),
            released: released.clone(),
        };
        tasks.spawn(one.run(permit));
    }
    drop(pending);
    let _all = creates
        .acquire_many(IN_FLIGHT as u32)
        .await
        .expect("the create semaphore");
    let wall = start.elapsed();
    all_done.recv().await;
    let alive = counts
        .created
        .load(Ordering::Relaxed)
        .saturating_sub(counts.deleted.load(Ordering::Relaxed));
    let ready = counts.ready.load(Ordering::Relaxed);
    if paused.send(Created { wall, alive, ready }).is_err() {
        // The test failed and went: the cluster goes with it.
        return;
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            counts.error(format!("a churn Pod's task failed: {e}"));
        }
    }
}

/// One churn Pod's life.
struct OnePod {
    i: usize,
    pods: Api<ApiPod>,
    counts: Arc<Counts>,
    deletes: Arc<Semaphore>,
    lifetime: Duration,
    /// When the minute is over.
    end: Instant,
    /// Dropped once the Pod is deleted or kept.
    pending: Option<tokio::sync::mpsc::Sender<()>>,
    released: watch::Receiver<Option<Instant>>,
}

impl OnePod {
    async fn run(mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        let name = format!("churn-{}", self.i);
        let ready = self.create(&name).await;
        drop(permit);
        let due = Instant::now() + self.lifetime;
        if due < self.end {
            tokio::time::sleep_until(due).await;
            self.delete(&name, false, ready).await;
            return;
        }
        // Kept through the pause; then deleted as far after the release as
        // it was due after the minute.
        self.pending = None;
        let released = match self.released.wait_for(Option::is_some).await {
            Ok(r) => *r,
            Err(_) => None,
        };
        if let Some(at) = released {
            tokio::time::sleep_until(at + (due - self.end)).await;
        }
        self.delete(&name, true, ready).await;
    }

    /// Creates the Pod bound to [`CHURN_NODE`], then reports it Running
    /// and Ready at its address, as its kubelet would; true if both worked.
    async fn create(&self, name: &str) -> bool {
        let ip = churn_ip(self.i);
        let pod: ApiPod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": {"app": "churn"},
                "annotations": {"weft.dev/inject": "enabled"},
            },
            "spec": {
                "nodeName": CHURN_NODE,
                "serviceAccountName": "churn",
                "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": 0,
                "containers": [{
                    "name": "app",
                    "image": "weft-test-app",
                    "ports": [{"name": "http", "containerPort": 8080}],
                }],
            },
        }))
        .expect("a churn Pod");
        if let Err(e) = self.pods.create(&PostParams::default(), &pod).await {
            self.counts.create_failed.fetch_add(1, Ordering::Relaxed);
            self.counts.error(format!("creating pod {name}: {e}"));
            return false;
        }
        self.counts.created.fetch_add(1, Ordering::Relaxed);
        let now = json!(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now()
        ));
        let condition = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
        let status = json!({
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "startTime": now,
                "conditions": [
                    condition("PodScheduled"),
                    condition("Initialized"),
                    condition("ContainersReady"),
                    condition("Ready"),
                ],
            }
        });
        match self
            .pods
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
        {
            Ok(_) => {
                self.counts.ready.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.counts.status_failed.fetch_add(1, Ordering::Relaxed);
                self.counts
                    .error(format!("writing the status of pod {name}: {e}"));
                false
            }
        }
    }

    /// Deletes the Pod at once (grace 0: no kubelet will confirm it),
    /// retrying a few times; a Pod that was never created is left alone.
    async fn delete(&self, name: &str, after_pause: bool, ready: bool) {
        let _permit = self.deletes.acquire().await.expect("the delete semaphore");
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        let sent = Instant::now();
        for attempt in 1..=5 {
            match self.pods.delete(name, &dp).await {
                Ok(_) => {
                    self.counts.deleted.fetch_add(1, Ordering::Relaxed);
                    if ready {
                        self.counts.ready.fetch_sub(1, Ordering::Relaxed);
                    }
                    self.counts.deletes.lock().expect("deletes").push((
                        sent,
                        Instant::now(),
                        after_pause,
                    ));
                    return;
                }
                Err(::kube::Error::Api(e)) if e.code == 404 => return,
                Err(e) if attempt < 5 => {
                    self.counts
                        .error(format!("deleting pod {name} (attempt {attempt}): {e}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    self.counts.delete_failed.fetch_add(1, Ordering::Relaxed);
                    self.counts.error(format!("deleting pod {name}: {e}"));
                }
            }
        }
    }
}

/// Registers [`CHURN_NODE`], Ready, so that the EndpointSlice controller
/// publishes the Pods bound to it (it skips Pods of unknown Nodes).
fn register_churn_node(cluster: &Cluster) {
    cluster.block_on(|client| async move {
        let api = Api::<ApiNode>::all(client);
        let node: ApiNode = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": CHURN_NODE,
                "labels": {"kubernetes.io/hostname": CHURN_NODE, "kubernetes.io/os": "linux"},
            },
        }))
        .expect("a Node object");
        api.create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("creating Node {CHURN_NODE}: {e}"));
        let now = json!(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now()
        ));
        let status = json!({
            "status": {
                "conditions": [{
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "the churn test says so; nothing runs here",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }],
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": "100000"},
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "100000"},
            }
        });
        api.patch_status(CHURN_NODE, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("reporting Node {CHURN_NODE} ready: {e}"));
    });
}

/// The ready endpoints (`ip:port`) of Service `name` (in [`NS`]) in its
/// EndpointSlices, as the control plane reads them: ready unless a
/// condition says otherwise, on the slice port named `http`.
fn slice_endpoints(cluster: &Cluster, name: &str) -> BTreeSet<String> {
    let out = cluster.kubectl_ok(&[
        "get",
        "endpointslices",
        "-n",
        NS,
        "-l",
        &format!("kubernetes.io/service-name={name}"),
        "-o",
        "json",
    ]);
    let list: Value = serde_json::from_str(&out).expect("kubectl's JSON");
    let mut eps = BTreeSet::new();
    for es in list["items"].as_array().into_iter().flatten() {
        let ports: Vec<u64> = es["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"] == "http")
            .filter_map(|p| p["port"].as_u64())
            .collect();
        for ep in es["endpoints"].as_array().into_iter().flatten() {
            if ep["conditions"]["ready"] == false {
                continue;
            }
            for addr in ep["addresses"].as_array().into_iter().flatten() {
                for port in &ports {
                    eps.insert(format!("{}:{port}", addr.as_str().unwrap_or_default()));
                }
            }
        }
    }
    eps
}

/// The endpoints the sidecar holds for `service` (`name.ns:port`), or None
/// when it does not hold the Service.
fn held_endpoints(pod: &Pod, service: &str) -> Option<BTreeSet<String>> {
    let cfg = pod.config();
    let svc = cfg["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == service)?
        .clone();
    Some(
        svc["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["address"].as_str().map(str::to_string))
            .collect(),
    )
}

/// The sidecar's endpoints of a Service against its slices.
#[derive(Debug, Default)]
struct Compared {
    in_slices: usize,
    held: usize,
    /// Held by the sidecar, not in the slices.
    stale: usize,
    /// In the slices, not held by the sidecar.
    missing: usize,
    /// Whether the sidecar holds the Service at all.
    present: bool,
}

impl Compared {
    fn exact(&self) -> bool {
        self.present && self.stale == 0 && self.missing == 0
    }
}

fn compare(cluster: &Cluster, pod: &Pod, service: &str) -> Compared {
    let name = service.split('.').next().expect("a Service name");
    let slices = slice_endpoints(cluster, name);
    let held = held_endpoints(pod, service);
    let present = held.is_some();
    let held = held.unwrap_or_default();
    Compared {
        in_slices: slices.len(),
        held: held.len(),
        stale: held.difference(&slices).count(),
        missing: slices.difference(&held).count(),
        present,
    }
}

/// Compares until the slices of [`CHURN`] hold `churn_ready` endpoints
/// (the EndpointSlice controller has caught up with the API) and the
/// sidecar holds exactly what the slices say of every Service (`settled_ms`,
/// from the call), or [`WAIT`] has passed; the last comparison of each.
fn settle(cluster: &Cluster, pod: &Pod, services: &[&str], churn_ready: usize) -> Value {
    let t0 = std::time::Instant::now();
    loop {
        let all: Vec<(&str, Compared)> = services
            .iter()
            .map(|s| (*s, compare(cluster, pod, s)))
            .collect();
        let caught_up = all
            .iter()
            .all(|(s, c)| *s != CHURN || c.in_slices == churn_ready);
        let exact = all.iter().all(|(_, c)| c.exact());
        if (exact && caught_up) || t0.elapsed() > WAIT {
            let settled_ms = (exact && caught_up).then(|| t0.elapsed().as_secs_f64() * 1000.0);
            let mut out = serde_json::Map::new();
            out.insert("settled_ms".into(), json!(settled_ms));
            out.insert("churn_ready_pods".into(), json!(churn_ready));
            for (s, c) in all {
                out.insert(
                    s.to_string(),
                    json!({
                        "in_slices": c.in_slices,
                        "held": c.held,
                        "stale": c.stale,
                        "missing": c.missing,
                        "present": c.present,
                    }),
                );
            }
            return Value::Object(out);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// VmRSS of a process, KiB (0 once it is gone).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of a process, in seconds (Linux's clock ticks
/// are 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are
    // the 14th and 15th of the line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

/// Reads a process's RSS every second on a thread of its own.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<u64>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut next = std::time::Instant::now();
            while !s.load(Ordering::Relaxed) {
                samples.push(rss_kib(pid));
                next += Duration::from_secs(1);
                while !s.load(Ordering::Relaxed) && std::time::Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            samples
        });
        Sampler { stop, thread }
    }

    fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the RSS sampler")
    }
}

#[test]
#[ignore = "a measurement: 100 Pods a second for a minute, about four minutes"]
fn pod_churn_keeps_the_control_plane_flat_and_endpoints_exact() {
    require_root();
    let s = Settings::from_env();
    // Dropped in reverse: the stand-in before the cluster, the node last.
    let node = Arc::new(Node::new("kube_churn"));
    let cluster = Cluster::start(&node);
    let kubelet = cluster.stand_in(node.clone());
    weft::install(&cluster);
    let cp = ControlReplica::start(&cluster, &node, "control-0", &[]);
    register_churn_node(&cluster);
    cluster.apply(APP);
    let (_, client) = kubelet
        .wait_pods(NS, "app=client", 1, WAIT)
        .pop()
        .expect("the client pod");
    kubelet.wait_pods(NS, "app=stable", 2, WAIT);
    weft::mesh_pod(&cluster, &client, "client", NS, "client", &cp.grpc_addr());
    // Declared: in the first snapshot, never dropped.
    let mut services = vec![CHURN];
    services.extend(STABLE);
    eventually("the sidecar holds what the slices say", WAIT, || {
        services
            .iter()
            .all(|svc| compare(&cluster, &client, svc).exact())
            && STABLE
                .iter()
                .all(|svc| held_endpoints(&client, svc).is_some_and(|e| e.len() == 2))
    });

    let pid = cp.pid().expect("the control plane runs");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(
        comm.trim(),
        "weft-control",
        "PID {pid} is not the control plane"
    );
    let proxy_pid = client.proxy_pid();
    let cp_metrics = |series: &str| metrics::value(&cp.metrics(), series).unwrap_or(0.0);
    let pod_events0 = cp_metrics(r#"kube_watch_events_total{kind="Pod"}"#);
    let slice_events0 = cp_metrics(r#"kube_watch_events_total{kind="EndpointSlice"}"#);
    let pushes0 = cp_metrics("snapshot_pushes_total");
    let applied = r#"discovery_updates_total{result="applied"}"#;
    let updates0 = client.metric(applied);
    let before = rss_kib(pid);
    let proxy_before = rss_kib(proxy_pid);
    let cpu0 = cpu_seconds(pid);
    // What else worked: etcd, kube-apiserver, kube-controller-manager, and
    // this test (its churn client and the kubelet stand-in).
    let mut others: Vec<(String, u32)> = cluster
        .pod()
        .ns
        .pids()
        .into_iter()
        .filter_map(|p| {
            let p = u32::try_from(p).ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).ok()?;
            Some((comm.trim().to_string(), p))
        })
        .collect();
    others.push(("test".to_string(), std::process::id()));
    let others_cpu0: Vec<f64> = others.iter().map(|(_, p)| cpu_seconds(*p)).collect();
    let sampler = Sampler::start(pid);
    eprintln!(
        "kube_churn: {} Pods a second for {} s, each living {:?}; control plane RSS {before} KiB",
        s.rate, s.seconds, s.lifetime
    );

    let churn = Churn::start(&cluster, s);
    let created = churn.wait_paused(s);
    let counts = &churn.counts;
    eprintln!(
        "kube_churn: {} Pods created in {:.1} s ({} kept alive); comparing",
        counts.created.load(Ordering::Relaxed),
        created.wall.as_secs_f64(),
        created.alive
    );
    let alive = settle(&cluster, &client, &[CHURN], created.ready);
    let counts = churn.finish();
    eprintln!("kube_churn: every churn Pod deleted; comparing");
    let drained = settle(&cluster, &client, &services, 0);
    let after_churn = rss_kib(pid);
    let cpu = cpu_seconds(pid) - cpu0;
    let others_cpu: serde_json::Map<String, Value> = others
        .iter()
        .zip(others_cpu0)
        .map(|((name, p), c0)| (name.clone(), json!(cpu_seconds(*p) - c0)))
        .collect();
    let pod_events = cp_metrics(r#"kube_watch_events_total{kind="Pod"}"#) - pod_events0;
    let slice_events =
        cp_metrics(r#"kube_watch_events_total{kind="EndpointSlice"}"#) - slice_events0;
    let pushes = cp_metrics("snapshot_pushes_total") - pushes0;
    let updates = client.metric(applied) - updates0;
    let wait = Duration::from_secs(30);
    std::thread::sleep(wait);
    let after_wait = rss_kib(pid);
    let samples = sampler.stop();
    let proxy_after = rss_kib(proxy_pid);
    let left = cluster.kubectl_ok(&["get", "pods", "-n", NS, "-l", "app=churn", "-o", "name"]);

    let n = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    let created_n = n(&counts.created);
    let (window_deletes, delete_rate) = counts.delete_rate(false);
    let (kept_deletes, kept_delete_rate) = counts.delete_rate(true);
    let out = json!({
        "target_rate": s.rate,
        "seconds": s.seconds,
        "lifetime_s": s.lifetime.as_secs_f64(),
        "pods_created": created_n,
        "create_failures": n(&counts.create_failed),
        "status_failures": n(&counts.status_failed),
        "create_wall_s": created.wall.as_secs_f64(),
        "create_rate": created_n as f64 / created.wall.as_secs_f64().max(1e-9),
        "pods_deleted": n(&counts.deleted),
        "delete_failures": n(&counts.delete_failed),
        "delete_rate": delete_rate,
        "deletes_during_churn": window_deletes,
        "kept_through_pause": created.alive,
        "kept_delete_rate": kept_delete_rate,
        "kept_deleted": kept_deletes,
        "first_error": counts.first_error.lock().expect("first error").clone(),
        "alive": alive,
        "drained": drained,
        "control_rss_kib_before": before,
        "control_rss_kib_peak": samples.iter().copied().max().unwrap_or(0),
        "control_rss_kib_after_churn": after_churn,
        "control_rss_kib_after_wait": after_wait,
        "waited_s": wait.as_secs_f64(),
        "control_rss_kib_samples": samples,
        "control_cpu_s": cpu,
        "others_cpu_s": others_cpu,
        "control_pod_events": pod_events,
        "control_slice_events": slice_events,
        "control_snapshot_pushes": pushes,
        "client_updates_applied": updates,
        "client_proxy_rss_kib_before": proxy_before,
        "client_proxy_rss_kib_after": proxy_after,
    });
    println!("BENCH {out}");
    if let Ok(path) = std::env::var("WEFT_BENCH_OUT") {
        std::fs::write(&path, out.to_string() + "\n")
            .unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }

    // Tidy up what this test added (the cluster goes with the node).
    cluster.kubectl_ok(&["delete", "node", CHURN_NODE, "--wait=false"]);

    assert!(created_n > 0, "no churn Pod was created: {out}");
    assert_eq!(left.trim(), "", "churn Pods left behind: {out}");
    let exact = |v: &Value, svc: &str| {
        v[svc]["stale"] == 0 && v[svc]["missing"] == 0 && v[svc]["present"] == true
    };
    assert!(
        exact(&alive, CHURN),
        "with the last lifetime's Pods alive, the sidecar's endpoints of {CHURN} never matched the slices: {out}"
    );
    for svc in &services {
        assert!(
            exact(&drained, svc),
            "with every churn Pod deleted, the sidecar's endpoints of {svc} never matched the slices: {out}"
        );
    }
    assert!(
        after_wait < before + RSS_SLACK_KIB,
        "the control plane's RSS went from {before} KiB to {after_wait} KiB {wait:?} after the churn: {out}"
    );
}
