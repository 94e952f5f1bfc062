//! [`Cluster`]: etcd, kube-apiserver and kube-controller-manager in the
//! harness pod `kube`.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use nix::sys::signal::Signal;

use super::pki::{self, Pki};
use super::tools;
use crate::node::{Node, Pod};
use crate::process::Process;

/// The API server's port in the kube pod.
pub const API_PORT: u16 = 6443;
/// The ServiceAccount token issuer, and the audience API-server tokens carry.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const ETCD: &str = "http://127.0.0.1:2379";
/// How long the control plane may take to come up (a 2-core machine busy
/// compiling is slow).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// The controllers kube-controller-manager runs (1.34's names): what
/// Deployments, Services, ServiceAccounts and namespaces need, plus
/// ClusterRole aggregation (the built-in `view`, `edit` and `admin` roles are
/// empty without it); nothing that expects kubelets or a cloud.
const CONTROLLERS: &str = "endpointslice-controller,serviceaccount-controller,\
serviceaccount-token-controller,namespace-controller,garbage-collector-controller,\
deployment-controller,replicaset-controller,root-ca-certificate-publisher-controller,\
clusterrole-aggregation-controller";

/// A real Kubernetes control plane in the harness pod `kube`. Its processes
/// run as root and die with the pod (the [`Node`] owns it); their logs, the
/// certificates and the kubeconfigs live in `node.logs()/kube/`.
#[derive(Debug)]
pub struct Cluster {
    pod: Arc<Pod>,
    dir: PathBuf,
    pki: Pki,
    server: String,
    etcd: Arc<Process>,
    apiserver: Mutex<Option<Arc<Process>>>,
    kcm: OnceLock<Arc<Process>>,
    starts: AtomicU32,
    kubeconfigs: AtomicU32,
}

impl Cluster {
    /// Makes the PKI, starts etcd, kube-apiserver and
    /// kube-controller-manager, and waits until the API server is ready and
    /// the `default` ServiceAccount exists (pods cannot be created before).
    pub fn start(node: &Node) -> Cluster {
        let bins = tools::bin_dir();
        let started = Instant::now();
        let pod = node.pod("kube");
        let dir = node.logs().join("kube");
        let server = format!("https://{}:{API_PORT}", pod.ip);
        let pki = pki::write(&dir, pod.ip, &server);

        let data = dir.join("etcd-data");
        let etcd = pod.spawn(
            "etcd",
            bins.join("etcd"),
            &[
                "--name=weft-e2e",
                &format!("--data-dir={}", path(&data)),
                &format!("--listen-client-urls={ETCD}"),
                &format!("--advertise-client-urls={ETCD}"),
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=weft-e2e=http://127.0.0.1:2380",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        );
        wait_etcd(&pod, &etcd);
        let cluster = Cluster {
            pod,
            dir,
            pki,
            server,
            etcd,
            apiserver: Mutex::new(None),
            kcm: OnceLock::new(),
            starts: AtomicU32::new(0),
            kubeconfigs: AtomicU32::new(0),
        };
        cluster.start_apiserver();
        let kcm = cluster.spawn_controller_manager();
        cluster.kcm.set(kcm).expect("one controller manager");
        cluster.wait(
            "the default ServiceAccount in namespace default",
            |client| async move {
                ::kube::Api::<ServiceAccount>::namespaced(client, "default")
                    .get_opt("default")
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|_| ())
                    .ok_or_else(|| "not created yet".to_string())
            },
        );
        eprintln!(
            "weft-e2e: Kubernetes API server ready at {} in {:.1}s (files in {})",
            cluster.server,
            started.elapsed().as_secs_f64(),
            cluster.dir.display()
        );
        cluster
    }

    fn spawn_controller_manager(&self) -> Arc<Process> {
        let kubeconfig = path(&self.pki.controller_manager_kubeconfig);
        self.pod.spawn(
            "kube-controller-manager",
            tools::bin("kube-controller-manager"),
            &[
                &format!("--kubeconfig={kubeconfig}"),
                "--leader-elect=false",
                &format!("--controllers={CONTROLLERS}"),
                &format!(
                    "--service-account-private-key-file={}",
                    path(&self.pki.sa_key)
                ),
                &format!("--root-ca-file={}", path(&self.pki.ca_cert)),
                // Each controller acts as its own ServiceAccount with the
                // bootstrap RBAC roles made for it: the controller manager's
                // own user may only create ServiceAccounts and tokens, not
                // ReplicaSets or Pods.
                "--use-service-account-credentials=true",
                "--secure-port=0",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
            ],
        )
    }

    fn apiserver_args(&self) -> Vec<String> {
        let p = &self.pki;
        [
            "--bind-address=0.0.0.0".to_string(),
            format!("--secure-port={API_PORT}"),
            format!("--advertise-address={}", self.pod.ip),
            format!("--etcd-servers={ETCD}"),
            format!("--tls-cert-file={}", path(&p.serving_cert)),
            format!("--tls-private-key-file={}", path(&p.serving_key)),
            format!("--client-ca-file={}", path(&p.ca_cert)),
            format!("--cert-dir={}", path(&self.dir.join("apiserver-certs"))),
            "--service-cluster-ip-range=10.96.0.0/16".to_string(),
            "--authorization-mode=RBAC".to_string(),
            format!("--service-account-issuer={ISSUER}"),
            format!("--service-account-key-file={}", path(&p.sa_pub)),
            format!("--service-account-signing-key-file={}", path(&p.sa_key)),
            format!("--api-audiences={ISSUER}"),
            "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,\
             DefaultStorageClass,DefaultTolerationSeconds,ResourceQuota,\
             MutatingAdmissionWebhook,ValidatingAdmissionWebhook"
                .to_string(),
            // Webhook and aggregated-API Services resolve to endpoint IPs:
            // there is no kube-proxy to make ClusterIPs work.
            "--enable-aggregator-routing=true".to_string(),
            "--allow-privileged=true".to_string(),
            "--profiling=false".to_string(),
        ]
        .to_vec()
    }

    /// Starts kube-apiserver (again, after [`Cluster::stop_apiserver`]) with
    /// the same flags, and waits for `/readyz`.
    pub fn start_apiserver(&self) {
        let n = self.starts.fetch_add(1, Ordering::Relaxed);
        let name = match n {
            0 => "kube-apiserver".to_string(),
            n => format!("kube-apiserver.{n}"),
        };
        let args = self.apiserver_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = self.pod.spawn(&name, tools::bin("kube-apiserver"), &args);
        *self.apiserver.lock().expect("apiserver lock") = Some(p);
        self.wait("kube-apiserver /readyz", |client| async move {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("a /readyz request");
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => Ok(()),
                Ok(body) => Err(body),
                Err(e) => Err(e.to_string()),
            }
        });
    }

    /// Kills kube-apiserver (SIGKILL, as a crash would) and waits for it to
    /// exit. etcd and the controller manager keep running.
    pub fn stop_apiserver(&self) {
        if let Some(p) = self.apiserver.lock().expect("apiserver lock").take() {
            p.signal(Signal::SIGKILL);
            assert!(
                p.wait_timeout(Duration::from_secs(10)).is_some(),
                "kube-apiserver did not exit after SIGKILL"
            );
        }
    }

    /// [`Cluster::stop_apiserver`] then [`Cluster::start_apiserver`].
    pub fn restart_apiserver(&self) {
        self.stop_apiserver();
        self.start_apiserver();
    }

    /// Polls `check` (each try bounded by a few seconds) until it returns
    /// `Ok`, failing with the last error and the control plane's logs after
    /// [`START_TIMEOUT`], or as soon as one of its processes exits.
    fn wait<Fut>(&self, what: &str, check: impl Fn(::kube::Client) -> Fut + Sync)
    where
        Fut: Future<Output = Result<(), String>> + Send,
    {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let last = self.block_on(|client| async {
                tokio::time::timeout(Duration::from_secs(5), check(client))
                    .await
                    .unwrap_or_else(|_| Err("no answer within 5s".to_string()))
            });
            let last = match last {
                Ok(()) => return,
                Err(e) => e,
            };
            let dead = self.processes().into_iter().find(|p| !p.is_running());
            if let Some(p) = dead {
                panic!(
                    "{} exited while waiting for {what} (last answer: {last}); the logs follow, \
                     files in {}",
                    p.name,
                    self.dir.display()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {START_TIMEOUT:?} waiting for {what} (last answer: {last}); \
                     the logs follow, files in {}",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn processes(&self) -> Vec<Arc<Process>> {
        let mut all = vec![self.etcd.clone()];
        all.extend(self.kcm.get().cloned());
        all.extend(self.apiserver.lock().expect("apiserver lock").clone());
        all
    }

    /// Prints the end of the etcd, kube-apiserver and
    /// kube-controller-manager logs.
    pub fn dump_logs(&self) {
        for p in self.processes() {
            p.dump_log();
        }
    }

    /// The harness pod the control plane runs in.
    pub fn pod(&self) -> &Arc<Pod> {
        &self.pod
    }

    /// Where the certificates, kubeconfigs and etcd's data live.
    /// The ServiceAccount token signing key (ECDSA P-256, PKCS#8 PEM): what
    /// the API server signs tokens with.
    pub fn sa_key(&self) -> &Path {
        &self.pki.sa_key
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin kubeconfig (user `weft-e2e-admin`, group `system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.pki.admin_kubeconfig.clone()
    }

    /// `https://<kube pod ip>:6443`
    pub fn server(&self) -> String {
        self.server.clone()
    }

    /// The cluster CA certificate (PEM): it signed the API server's serving
    /// certificate and the client certificates, and ServiceAccounts' pods get
    /// it as `kube-root-ca.crt`.
    pub fn ca_pem(&self) -> String {
        self.pki.ca_pem.clone()
    }

    /// The cluster CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.pki.ca_cert.clone()
    }

    /// Runs `kubectl` with the admin kubeconfig inside the kube pod.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(&self.pki.admin_kubeconfig, args, None)
    }

    /// Like [`Cluster::kubectl`], panicking with stderr unless it succeeds;
    /// returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        ok(&format!("kubectl {}", args.join(" ")), self.kubectl(args))
    }

    /// Runs `kubectl` inside the kube pod as whoever `kubeconfig` says (see
    /// [`Cluster::kubeconfig_for_token`]), with `stdin` as its input.
    pub fn kubectl_with(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.pod.ns.command(tools::bin("kubectl"));
        cmd.arg(format!("--kubeconfig={}", path(kubeconfig)))
            .arg(format!(
                "--cache-dir={}",
                path(&self.dir.join("kubectl-cache"))
            ))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting kubectl {args:?}: {e}"));
        let mut input = child.stdin.take().expect("kubectl's stdin");
        if let Some(text) = stdin {
            input
                .write_all(text.as_bytes())
                .expect("writing kubectl's stdin");
        }
        drop(input);
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("running kubectl {args:?}: {e}"))
    }

    /// `kubectl apply -f -` of `yaml`; panics with kubectl's stderr unless
    /// the API server took every object.
    pub fn apply(&self, yaml: &str) {
        ok("kubectl apply", self.apply_result(yaml));
    }

    /// `kubectl apply -f -` of `yaml`, for tests that expect a refusal.
    pub fn apply_result(&self, yaml: &str) -> Output {
        self.kubectl_with(
            &self.pki.admin_kubeconfig,
            &["apply", "-f", "-"],
            Some(yaml),
        )
    }

    /// A ServiceAccount token from the TokenRequest API (`kubectl create
    /// token`), for `audience`, valid for `duration` (e.g. `10m`; the API
    /// server's minimum is 10m), bound to pod `bound_pod` when given, as a
    /// kubelet's projected token volume would hold. The API server itself
    /// accepts only tokens for [`ISSUER`] (its `--api-audiences`); others,
    /// such as `weft.dev`, are for TokenReview.
    pub fn token(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        bound_pod: Option<&str>,
        duration: &str,
    ) -> String {
        let mut args = vec![
            "create",
            "token",
            service_account,
            "--namespace",
            namespace,
            "--audience",
            audience,
            "--duration",
            duration,
        ];
        if let Some(pod) = bound_pod {
            args.extend(["--bound-object-kind", "Pod", "--bound-object-name", pod]);
        }
        self.kubectl_ok(&args).trim().to_string()
    }

    /// A kubeconfig for this cluster that authenticates with a bearer
    /// `token` instead of the admin certificate (for RBAC tests).
    pub fn kubeconfig_for_token(&self, token: &str) -> PathBuf {
        let n = self.kubeconfigs.fetch_add(1, Ordering::Relaxed);
        let file = self.dir.join(format!("token-{n}.kubeconfig"));
        let text = pki::kubeconfig(&self.server, &self.pki.ca_pem, pki::User::Token(token));
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
        file
    }

    /// Runs `f` with an admin [`kube::Client`] on a thread inside the kube
    /// pod's namespace (the API server is reachable only from the bridge),
    /// on a runtime of its own; fails after [`crate::netns::BLOCK_ON_LIMIT`].
    pub fn block_on<F, Fut, R>(&self, f: F) -> R
    where
        F: FnOnce(::kube::Client) -> Fut + Send,
        Fut: Future<Output = R> + Send,
        R: Send,
    {
        let kubeconfig = self.pki.admin_kubeconfig.clone();
        self.pod.ns.block_on(async move {
            let client = super::client(&kubeconfig).await;
            f(client).await
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The Node owns the pod: it kills these processes when it is
        // dropped and, when the test failed, prints the end of every pod's
        // logs, etcd's, kube-apiserver's and kube-controller-manager's
        // included. Say where the rest is.
        if std::thread::panicking() {
            eprintln!(
                "weft-e2e: the Kubernetes control plane's kubeconfigs, certificates and full logs \
                 are in {} and {} (kept because the test failed)",
                self.dir.display(),
                self.dir
                    .parent()
                    .map(Path::display)
                    .map(|d| d.to_string())
                    .unwrap_or_default()
            );
        }
    }
}

/// Waits until etcd takes connections, so that kube-apiserver does not
/// start by logging failed dials.
fn wait_etcd(pod: &Pod, etcd: &Process) {
    let deadline = Instant::now() + START_TIMEOUT;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 2379));
    while pod
        .ns
        .run_in(|| std::net::TcpStream::connect(addr))
        .is_err()
    {
        assert!(
            etcd.is_running(),
            "etcd exited before it listened; its log follows"
        );
        assert!(
            Instant::now() < deadline,
            "etcd did not listen on {addr} within {START_TIMEOUT:?}; its log follows"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// stdout of a successful command, or a panic with its stderr.
fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
