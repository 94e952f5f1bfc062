//! The control-plane fleet benchmark.
//!
//! Writes a manifest directory (Services, Pods with IPs and service accounts,
//! one HTTPRoute) and a bootstrap-tokens file, starts a real `weft-control`,
//! and from this one process:
//!
//! 1. certifies N identities (one key and CSR each; signatures per second),
//! 2. opens N Watch streams, each on its own mTLS connection with its own
//!    certificate, and acknowledges every snapshot as a proxy does,
//! 3. reads the control plane's VmRSS before and after (memory per proxy),
//! 4. rewrites the HTTPRoute file several times and measures, per stream, the
//!    time from the file write to that stream having received the new version
//!    and acknowledged it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use prost::Message;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use weft_api::SpiffeId;
use weft_api::tls::{self, CertSlot, TrustAnchors};
use weft_api::v1::discovery_client::DiscoveryClient;
use weft_api::v1::identity_client::IdentityClient;
use weft_api::v1::{AckRequest, CertifyRequest, WatchRequest};

use crate::stats::{Summary, summarize};

const NAMESPACE: &str = "fleet";
const TRUST_DOMAIN: &str = "cluster.local";

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}"))
}

#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// Simulated proxies: each gets its own certificate, mTLS connection and
    /// Watch stream.
    #[arg(long, default_value_t = 1000)]
    proxies: usize,

    /// Pods of the mesh proper (meshed, selected by Services), the first
    /// `mesh_pods` of the proxies' pods. Snapshots grow with it. Default: all
    /// of them (every simulated proxy is a meshed pod, as in a real mesh).
    #[arg(long)]
    mesh_pods: Option<usize>,

    /// Pods per Service (and per service account).
    #[arg(long, default_value_t = 10)]
    pods_per_service: usize,

    /// The weft-control binary.
    #[arg(long, default_value = "target/release/weft-control")]
    control_bin: PathBuf,

    /// A command to run weft-control under, split on spaces (e.g.
    /// `taskset -c 1`).
    #[arg(long)]
    control_wrap: Option<String>,

    /// The control plane's gRPC address.
    #[arg(long, default_value = "127.0.0.1:18090")]
    grpc: SocketAddr,

    /// The control plane's admin address.
    #[arg(long, default_value = "127.0.0.1:18990")]
    admin: SocketAddr,

    /// The control plane's --debounce (its manifest poll interval too).
    #[arg(long, default_value = "100ms")]
    debounce: String,

    /// Working directory (manifests, CA, tokens, control-plane log); must be
    /// empty or absent.
    #[arg(long)]
    workdir: PathBuf,

    /// Route changes to measure.
    #[arg(long, default_value_t = 3)]
    changes: usize,

    /// Certify calls, and connection set-ups, in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,

    /// Give up on a phase after this long.
    #[arg(long, default_value = "180s", value_parser = duration)]
    timeout: Duration,

    /// Kill the control plane if its RSS goes beyond this (GiB): the machine
    /// is shared.
    #[arg(long, default_value_t = 10.0)]
    max_control_rss_gib: f64,

    /// Write the results (JSON) here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Default, Serialize)]
struct Results {
    proxies: usize,
    mesh_pods: usize,
    services: usize,
    service_accounts: usize,
    /// One proxy's first snapshot: encoded size, Services, workloads.
    snapshot_bytes: usize,
    snapshot_services: usize,
    snapshot_workloads: usize,
    certify_calls: usize,
    certify_seconds: f64,
    certify_per_second: f64,
    certify_failed: usize,
    connect_seconds: f64,
    connected: usize,
    /// Watch streams that failed (and were reconnected, as a proxy does).
    stream_failures: usize,
    first_stream_error: Option<String>,
    control_rss_kib_before: u64,
    control_rss_kib_after: u64,
    control_rss_kib_per_proxy: f64,
    control_hwm_kib: u64,
    bench_rss_kib: u64,
    changes: Vec<Change>,
    /// All changes together: per-stream time from file write to ack.
    change_all: Summary,
    /// Median over the changes of the time until the last proxy acked.
    change_all_landed_ms_median: f64,
    aborted: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct Change {
    version: u64,
    /// From the file write to the control plane's new version (poll and
    /// debounce; the version is the build time in ms).
    write_to_version_ms: f64,
    /// Per stream: from the file write to the snapshot acknowledged.
    ack: Summary,
    landed: usize,
    missing: usize,
    /// Streams that failed during this change (then reconnected).
    stream_failures: usize,
    /// CPU seconds used until the last ack (or the timeout).
    control_cpu_s: f64,
    bench_cpu_s: f64,
    seconds: f64,
}

#[derive(Debug)]
enum Event {
    Acked {
        proxy: usize,
        version: u64,
        at: Instant,
    },
    Failed {
        error: String,
    },
}

fn service_account(i: usize, per: usize) -> String {
    format!("sa-{}", i / per)
}

fn pod_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256)
}

/// Manifests: Pods (the first `mesh` meshed and behind Services), the
/// Services, and an HTTPRoute splitting svc-0 between svc-0 and svc-1.
fn write_manifests(dir: &Path, n: usize, mesh: usize, per: usize) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut pods = String::with_capacity(n * 400);
    for i in 0..n {
        let sa = service_account(i, per);
        let ip = pod_ip(i);
        if i < mesh {
            let app = format!("svc-{}", i / per);
            let _ = write!(
                pods,
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p-{i}\n  namespace: {NAMESPACE}\n  \
                 labels: {{app: {app}}}\n  annotations: {{weft.dev/inject: enabled}}\n\
                 spec:\n  serviceAccountName: {sa}\n  containers:\n  - name: app\n    image: app:1\n    \
                 ports: [{{name: http, containerPort: 8080}}]\nstatus:\n  podIP: {ip}\n---\n"
            );
        } else {
            let _ = write!(
                pods,
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p-{i}\n  namespace: {NAMESPACE}\n  \
                 labels: {{role: client}}\nspec:\n  serviceAccountName: {sa}\n  containers:\n  \
                 - name: app\n    image: app:1\nstatus:\n  podIP: {ip}\n---\n"
            );
        }
    }
    std::fs::write(dir.join("pods.yaml"), pods)?;
    let services = mesh.div_ceil(per).max(2);
    let mut svcs = String::new();
    for k in 0..services {
        let _ = write!(
            svcs,
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{k}\n  namespace: {NAMESPACE}\n\
             spec:\n  clusterIP: 10.96.{}.{}\n  selector: {{app: svc-{k}}}\n  ports:\n  \
             - {{name: http, port: 80, targetPort: http, appProtocol: http}}\n---\n",
            k / 256,
            k % 256
        );
    }
    std::fs::write(dir.join("services.yaml"), svcs)?;
    write_route(dir, 90)?;
    Ok(services)
}

/// Rewrites the route atomically (write, then rename); returns when the
/// rename happened.
fn write_route(dir: &Path, weight: u32) -> anyhow::Result<(Instant, SystemTime)> {
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: canary\n  \
         namespace: {NAMESPACE}\nspec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: svc-0, port: 80}}\n  \
         rules:\n  - backendRefs:\n    - {{name: svc-0, port: 80, weight: {weight}}}\n    \
         - {{name: svc-1, port: 80, weight: {}}}\n",
        100 - weight
    );
    let tmp = dir.join("routes.yaml.tmp");
    std::fs::write(&tmp, route)?;
    let (at, wall) = (Instant::now(), SystemTime::now());
    std::fs::rename(&tmp, dir.join("routes.yaml"))?;
    Ok((at, wall))
}

fn write_tokens(path: &Path, accounts: usize) -> anyhow::Result<()> {
    let mut s = String::from("tokens:\n");
    for k in 0..accounts {
        let _ = writeln!(
            s,
            "  - {{token: tok-{k}, namespace: {NAMESPACE}, serviceAccount: sa-{k}}}"
        );
    }
    std::fs::write(path, s)?;
    Ok(())
}

/// VmRSS and VmHWM of a process, KiB.
fn rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, text))
}

/// The soft limit on open files: every stream is a socket here and in the
/// control plane (which inherits this process's limit).
fn nofile_limit() -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// What a simulated proxy decodes of a snapshot: the version only (prost
/// skips the rest). A real proxy decodes and applies all of it, but on its
/// own CPU; decoding N whole snapshots here, on one core, would measure this
/// process rather than the control plane.
#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotVersion {
    #[prost(uint64, tag = "1")]
    version: u64,
}

/// The proxy's Watch backoff (proxy/src/discovery/client.rs): 200ms doubling
/// up to 10s, with jitter.
fn backoff(failures: u32) -> Duration {
    let exp = Duration::from_millis(200).saturating_mul(1 << failures.min(8));
    exp.min(Duration::from_secs(10))
        .mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

/// One simulated proxy: Watch on its own mTLS connection, ack every
/// snapshot, and reconnect with the proxy's backoff when the stream fails.
async fn simulated_proxy(
    i: usize,
    config: Arc<rustls::ClientConfig>,
    grpc: SocketAddr,
    events: mpsc::UnboundedSender<Event>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let channel = weft_api::grpc::connect_lazy(grpc.to_string(), config);
    let mut acks = DiscoveryClient::new(channel.clone());
    let mut watch = tonic::client::Grpc::new(channel);
    let pod = format!("p-{i}");
    let mut permit = Some(permit);
    let mut applied = 0u64;
    let mut failures = 0u32;
    loop {
        let res: anyhow::Result<()> = async {
            watch.ready().await?;
            let codec = tonic_prost::ProstCodec::<WatchRequest, SnapshotVersion>::default();
            let mut stream = watch
                .server_streaming(
                    tonic::Request::new(WatchRequest {
                        pod_name: pod.clone(),
                        namespace: NAMESPACE.into(),
                        applied_version: applied,
                    }),
                    http::uri::PathAndQuery::from_static("/weft.v1.Discovery/Watch"),
                    codec,
                )
                .await?
                .into_inner();
            while let Some(snap) = stream.message().await? {
                let version = snap.version;
                acks.ack(AckRequest {
                    pod_name: pod.clone(),
                    namespace: NAMESPACE.into(),
                    version,
                    error: String::new(),
                })
                .await?;
                applied = version;
                failures = 0;
                permit.take();
                let _ = events.send(Event::Acked {
                    proxy: i,
                    version,
                    at: Instant::now(),
                });
            }
            bail!("the control plane ended the Watch stream")
        }
        .await;
        // A proxy that cannot connect does not hold up the others' start.
        permit.take();
        if let Err(e) = res
            && events
                .send(Event::Failed {
                    error: format!("{e:#}"),
                })
                .is_err()
        {
            return;
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(backoff(failures)).await;
    }
}

struct Fleet {
    acked: Vec<u64>,
    failures: usize,
    first_error: Option<String>,
}

impl Fleet {
    /// Applies one event; `on_ack` hears of each proxy's newer version.
    fn apply(&mut self, e: Event, mut on_ack: impl FnMut(usize, u64, Instant)) {
        match e {
            Event::Acked { proxy, version, at } => {
                if version > self.acked[proxy] {
                    self.acked[proxy] = version;
                    on_ack(proxy, version, at);
                }
            }
            Event::Failed { error } => {
                self.failures += 1;
                self.first_error.get_or_insert(error);
            }
        }
    }
}

/// utime + stime of a process, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// One full Watch, decoding the whole first snapshot: its size and content.
async fn probe(
    config: Arc<rustls::ClientConfig>,
    grpc: SocketAddr,
) -> anyhow::Result<(usize, usize, usize)> {
    let mut client = DiscoveryClient::new(weft_api::grpc::connect_lazy(grpc.to_string(), config));
    let mut stream = client
        .watch(WatchRequest {
            pod_name: "p-0".into(),
            namespace: NAMESPACE.into(),
            applied_version: 0,
        })
        .await?
        .into_inner();
    let snap = stream
        .message()
        .await?
        .context("the Watch stream ended at once")?;
    Ok((
        snap.encoded_len(),
        snap.services.len(),
        snap.workloads.len(),
    ))
}

pub async fn run(args: FleetArgs) -> anyhow::Result<()> {
    let n = args.proxies;
    if let Some(limit) = nofile_limit()
        && limit < n as u64 + 1024
    {
        bail!(
            "the open-files limit is {limit}; raise it (ulimit -n) above {} for {n} proxies",
            n + 1024
        );
    }
    let per = args.pods_per_service.max(1);
    let mesh = args.mesh_pods.unwrap_or(n).min(n);
    let work = &args.workdir;
    if work.exists() && std::fs::read_dir(work)?.next().is_some() {
        bail!("{} is not empty", work.display());
    }
    let manifests = work.join("manifests");
    let services = write_manifests(&manifests, n, mesh, per)?;
    let accounts = n.div_ceil(per);
    write_tokens(&work.join("tokens.yaml"), accounts)?;
    let mut results = Results {
        proxies: n,
        mesh_pods: mesh,
        services,
        service_accounts: accounts,
        ..Default::default()
    };

    // The control plane.
    let log = std::fs::File::create(work.join("control.log"))?;
    let wrap: Vec<String> = args
        .control_wrap
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut cmd = match wrap.split_first() {
        Some((prog, rest)) => {
            let mut c = tokio::process::Command::new(prog);
            c.args(rest).arg(&args.control_bin);
            c
        }
        None => tokio::process::Command::new(&args.control_bin),
    };
    cmd.arg("--ca-dir")
        .arg(work.join("ca"))
        .arg("--tokens")
        .arg(work.join("tokens.yaml"))
        .arg("--manifests")
        .arg(&manifests)
        .arg("--grpc-listen")
        .arg(args.grpc.to_string())
        .arg("--admin-listen")
        .arg(args.admin.to_string())
        .arg("--debounce")
        .arg(&args.debounce)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("starting weft-control")?;
    let pid = child.id().context("weft-control has no pid")?;
    let started = Instant::now();
    loop {
        if let Ok((200, _)) = http_get(args.admin, "/ready").await {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "weft-control exited ({status}); see {}",
                work.join("control.log").display()
            );
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("weft-control not ready after 60s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "fleet: control plane ready (pid {pid}) in {:?}; {n} proxies, {mesh} meshed pods, {services} services",
        started.elapsed()
    );

    // The watchdog: the machine is shared, so when the control plane (or
    // this process, which holds as many snapshots in flight) grows beyond the
    // limit, the control plane is stopped and the run reported as aborted.
    // 0: running, 1: the control plane was too big, 2: this process was.
    let aborted = Arc::new(AtomicU8::new(0));
    let last_rss = Arc::new(AtomicU64::new(0));
    {
        let (aborted, last_rss) = (aborted.clone(), last_rss.clone());
        let limit = (args.max_control_rss_gib * 1024.0 * 1024.0) as u64;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some((cp, _)) = rss(pid) else { return };
                last_rss.store(cp, Ordering::SeqCst);
                let own = rss(std::process::id()).map_or(0, |r| r.0);
                let why = if cp > limit {
                    1
                } else if own > limit {
                    2
                } else {
                    continue;
                };
                aborted.store(why, Ordering::SeqCst);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return;
            }
        });
    }
    let stopped = || aborted.load(Ordering::SeqCst) != 0;

    let anchors_pem = std::fs::read(work.join("ca").join("ca.crt"))?;
    let anchors_der: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&anchors_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("the CA certificate: {e}"))?;
    let anchors = TrustAnchors::new(anchors_der)?;
    let cp_id: SpiffeId = "spiffe://cluster.local/ns/weft-system/sa/weft-control"
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // 1. Keys and CSRs (not timed), then Certify.
    let t = Instant::now();
    let mut keys = Vec::with_capacity(n);
    let mut csrs = Vec::with_capacity(n);
    for i in 0..n {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let id = SpiffeId::new(TRUST_DOMAIN, NAMESPACE, &service_account(i, per))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        csrs.push(params.serialize_request(&key)?.der().to_vec());
        keys.push(key.serialize_der());
    }
    eprintln!("fleet: {n} keys and CSRs made in {:?}", t.elapsed());

    let certify_cfg = Arc::new(tls::client_config(
        CertSlot::default(),
        anchors.clone(),
        cp_id.clone(),
        &[tls::ALPN_H2],
    )?);
    // A few connections, as a few nodes' worth of proxies starting at once.
    let clients: Vec<IdentityClient<tonic::transport::Channel>> = (0..8)
        .map(|_| {
            IdentityClient::new(weft_api::grpc::connect_lazy(
                args.grpc.to_string(),
                certify_cfg.clone(),
            ))
        })
        .collect();
    let t = Instant::now();
    let issued: Vec<anyhow::Result<Vec<CertificateDer<'static>>>> =
        futures_util::stream::iter(csrs.into_iter().enumerate())
            .map(|(i, csr)| {
                let mut client = clients[i % clients.len()].clone();
                async move {
                    let res = client
                        .certify(CertifyRequest {
                            token: format!("tok-{}", i / per),
                            csr_der: csr,
                        })
                        .await
                        .map_err(|s| anyhow::anyhow!("Certify: {}: {}", s.code(), s.message()))?
                        .into_inner();
                    let mut chain = vec![CertificateDer::from(res.leaf_der)];
                    chain.extend(res.intermediates_der.into_iter().map(CertificateDer::from));
                    Ok(chain)
                }
            })
            .buffered(args.concurrency.max(1))
            .collect()
            .await;
    let secs = t.elapsed().as_secs_f64();
    results.certify_calls = n;
    results.certify_seconds = secs;
    results.certify_per_second = n as f64 / secs;
    results.certify_failed = issued.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = issued.iter().find(|r| r.is_err()) {
        bail!(
            "{} Certify calls failed, e.g. {e:#}",
            results.certify_failed
        );
    }
    drop(clients);
    eprintln!(
        "fleet: {n} certificates in {secs:.2}s: {:.0} signatures/s",
        results.certify_per_second
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let (before, _) = rss(pid).context("reading the control plane's memory")?;
    results.control_rss_kib_before = before;

    // 2. N Watch streams, each on its own connection with its own certificate.
    let mut configs = Vec::with_capacity(n);
    for (chain, key) in issued.into_iter().zip(keys) {
        let slot = CertSlot::default();
        slot.set(chain?, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))?;
        configs.push(Arc::new(tls::client_config(
            slot,
            anchors.clone(),
            cp_id.clone(),
            &[tls::ALPN_H2],
        )?));
    }
    let (bytes, svcs, workloads) = probe(configs[0].clone(), args.grpc)
        .await
        .context("a first Watch")?;
    (
        results.snapshot_bytes,
        results.snapshot_services,
        results.snapshot_workloads,
    ) = (bytes, svcs, workloads);
    eprintln!("fleet: a snapshot is {bytes} bytes ({svcs} services, {workloads} workloads)");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let t = Instant::now();
    for (i, config) in configs.into_iter().enumerate() {
        if stopped() {
            break;
        }
        let permit = gate.clone().acquire_owned().await?;
        tokio::spawn(simulated_proxy(i, config, args.grpc, tx.clone(), permit));
    }
    drop(tx);
    let mut fleet = Fleet {
        acked: vec![0; n],
        failures: 0,
        first_error: None,
    };
    let mut connected = 0usize;
    let deadline = Instant::now() + args.timeout;
    while connected < n && !stopped() {
        let Ok(Some(e)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await else {
            break;
        };
        fleet.apply(e, |_, _, _| connected += 1);
    }
    // Stopped early: count what had connected by then.
    while let Ok(e) = rx.try_recv() {
        fleet.apply(e, |_, _, _| connected += 1);
    }
    results.connect_seconds = t.elapsed().as_secs_f64();
    results.connected = connected;
    eprintln!(
        "fleet: {connected}/{n} streams acked their first snapshot in {:.2}s{}",
        results.connect_seconds,
        fleet
            .first_error
            .as_ref()
            .map(|e| format!("; {} stream failures, e.g. {e}", fleet.failures))
            .unwrap_or_default()
    );

    let finish = |mut results: Results, fleet: &Fleet| {
        results.aborted = match aborted.load(Ordering::SeqCst) {
            0 => None,
            1 => Some(format!(
                "the control plane went beyond {} GiB of RSS and was stopped",
                args.max_control_rss_gib
            )),
            _ => Some(format!(
                "the simulated proxies went beyond {} GiB of RSS and the run was stopped",
                args.max_control_rss_gib
            )),
        };
        if let Some((_, hwm)) = rss(pid) {
            results.control_hwm_kib = hwm;
        }
        results.bench_rss_kib = rss(std::process::id()).map(|r| r.0).unwrap_or(0);
        results.stream_failures = fleet.failures;
        results.first_stream_error = fleet.first_error.clone();
        results
    };

    if connected < n || stopped() {
        // Memory per proxy from what was connected when it stopped.
        let at = last_rss.load(Ordering::SeqCst);
        results.control_rss_kib_after = at;
        results.control_rss_kib_per_proxy =
            at.saturating_sub(before) as f64 / connected.max(1) as f64;
        let results = finish(results, &fleet);
        return report(&args, &results);
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, _) = rss(pid).context("reading the control plane's memory")?;
    results.control_rss_kib_after = after;
    results.control_rss_kib_per_proxy = after.saturating_sub(before) as f64 / n as f64;
    eprintln!(
        "fleet: control plane RSS {before} KiB before, {after} KiB with {n} streams: {:.1} KiB per proxy",
        results.control_rss_kib_per_proxy
    );

    // 3. Route changes.
    let mut all = Vec::new();
    let mut landed_ms = Vec::new();
    for c in 0..args.changes {
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Take in anything late (a reconnect, say).
        while let Ok(e) = rx.try_recv() {
            fleet.apply(e, |_, _, _| {});
        }
        let prev = fleet.acked.iter().copied().max().unwrap_or(0);
        let failures_before = fleet.failures;
        let (cp_cpu, bench_cpu) = (cpu_seconds(pid), cpu_seconds(std::process::id()));
        let weight = if c % 2 == 0 { 50 } else { 90 };
        let (t0, wall0) = write_route(&manifests, weight)?;
        let mut times = vec![None::<Duration>; n];
        let mut landed = 0usize;
        let mut version = 0u64;
        let deadline = Instant::now() + args.timeout;
        while landed < n && !stopped() {
            let Ok(Some(e)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await else {
                break;
            };
            fleet.apply(e, |proxy, v, at| {
                if v > prev && times[proxy].is_none() {
                    times[proxy] = Some(at.saturating_duration_since(t0));
                    landed += 1;
                    version = version.max(v);
                }
            });
        }
        let seconds = t0.elapsed().as_secs_f64();
        let sample: Vec<Duration> = times.iter().flatten().copied().collect();
        let wall0_ms = wall0
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or_default();
        let change = Change {
            version,
            write_to_version_ms: if version > 0 {
                version as f64 - wall0_ms
            } else {
                0.0
            },
            ack: summarize(sample.clone()),
            landed,
            missing: n - landed,
            stream_failures: fleet.failures - failures_before,
            control_cpu_s: cpu_seconds(pid) - cp_cpu,
            bench_cpu_s: cpu_seconds(std::process::id()) - bench_cpu,
            seconds,
        };
        eprintln!(
            "fleet: change {}: {landed}/{n} acked; from the write: version built after {:.0} ms, \
             acks p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} stream failures; CPU s: control {:.2}, bench {:.2}",
            c + 1,
            change.write_to_version_ms,
            change.ack.p50_ms,
            change.ack.p99_ms,
            change.ack.max_ms,
            change.stream_failures,
            change.control_cpu_s,
            change.bench_cpu_s,
        );
        if landed == n {
            landed_ms.push(change.ack.max_ms);
        }
        all.extend(sample);
        results.changes.push(change);
        if stopped() {
            break;
        }
    }
    results.change_all = summarize(all);
    landed_ms.sort_by(f64::total_cmp);
    results.change_all_landed_ms_median =
        landed_ms.get(landed_ms.len() / 2).copied().unwrap_or(0.0);
    let results = finish(results, &fleet);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    report(&args, &results)
}

fn report(args: &FleetArgs, results: &Results) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(results)?;
    println!("{json}");
    if let Some(path) = &args.json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
