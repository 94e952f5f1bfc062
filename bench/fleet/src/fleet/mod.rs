//! The control-plane fleet benchmark.
//!
//! Writes a manifest directory (Services, Pods with IPs and service accounts,
//! a hot and a cold HTTPRoute) and a bootstrap-tokens file, starts a real
//! `weft-control`, and from this one process:
//!
//! 1. certifies N identities (one key and CSR each; signatures per second),
//! 2. opens N streams, each on its own mTLS connection with its own
//!    certificate — Discover (subscribing to the Services the proxy uses,
//!    acking in-band) or Watch (everything, unary Acks) —, and acknowledges
//!    every message as a proxy does,
//! 3. reads the control plane's VmRSS before and after (memory per proxy),
//! 4. rewrites the hot route (every view holds it) and the cold one (only
//!    its Service's subscribers do) in turn, and measures, per affected
//!    stream, the time from the file write to the new version acknowledged,
//!    and how many unaffected streams were sent a message anyway,
//! 5. (Discover) has sampled proxies subscribe to a Service they do not
//!    hold: the wait of an app's first call to it,
//! 6. (with `--churn-rate`) creates and deletes Pods at that rate, and
//!    checks memory and what a few fully decoding proxies hold.

mod certify;
mod changes;
mod checker;
mod churn;
mod control;
mod discover;
mod files;
mod first_use;
mod procfs;
mod proxy;
mod views;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

use crate::stats::Summary;
use certify::Trust;
use changes::Target;
use control::{Control, Listed, Watchdog};
use discover::{Command, DiscoverProxy};
use procfs::rss;
use proxy::{Event, Fleet, SnapshotSize};
use views::Mesh;

const NAMESPACE: &str = "fleet";
const TRUST_DOMAIN: &str = "cluster.local";

/// The discovery RPC the simulated proxies use.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// Discover: the proxy's view (what it subscribed to and what that
    /// routes to), acks in-band.
    #[default]
    Discover,
    /// Watch: the whole mesh and every change, unary Acks.
    Watch,
}

#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// Simulated proxies: each gets its own certificate, mTLS connection and
    /// stream.
    #[arg(long, default_value_t = 1000)]
    proxies: usize,

    /// The RPC the proxies use.
    #[arg(long, value_enum, default_value_t = Api::Discover)]
    api: Api,

    /// Services each Discover proxy uses: svc-0 (the hot one) and uses - 1
    /// spread over the mesh.
    #[arg(long, default_value_t = 5)]
    uses: usize,

    /// Discover proxies that subscribe to one more Service after the
    /// changes (the first use of a Service), spread over the fleet.
    #[arg(long, default_value_t = 1000)]
    first_uses: usize,

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

    /// Route changes to measure, hot (svc-0's canary: every view) and cold
    /// (a route on one Service only its subscribers hold) in turn.
    #[arg(long, default_value_t = 4)]
    changes: usize,

    /// Churn: meshed Pods created (and deleted `--churn-lifetime` later)
    /// per second; off unless given.
    #[arg(long)]
    churn_rate: Option<usize>,

    /// How long Pods are created for.
    #[arg(long, default_value_t = 60)]
    churn_seconds: u64,

    /// How long each churn Pod lives.
    #[arg(long, default_value = "10s", value_parser = weft_api::duration::parse)]
    churn_lifetime: Duration,

    /// Give each churn Pod a short-lived proxy (Certify, Discover) that goes
    /// when its Pod does.
    #[arg(long)]
    churn_proxies: bool,

    /// Proxies that decode and fold every message during the churn, to
    /// check the endpoints they hold.
    #[arg(long, default_value_t = 20)]
    checkers: usize,

    /// The control plane's --stale-proxy-ttl (default: its own; 30s with
    /// --churn-proxies, so that the run sees departed proxies forgotten).
    #[arg(long, value_parser = weft_api::duration::parse)]
    stale_proxy_ttl: Option<Duration>,

    /// Certify calls, and connection set-ups, in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,

    /// Give up on a phase after this long.
    #[arg(long, default_value = "180s", value_parser = weft_api::duration::parse)]
    timeout: Duration,

    /// Kill the control plane if its RSS goes beyond this (GiB): the machine
    /// is shared.
    #[arg(long, default_value_t = 10.0)]
    max_control_rss_gib: f64,

    /// Write the results (JSON) here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl FleetArgs {
    /// The --stale-proxy-ttl to give the control plane, if any.
    pub fn stale_ttl(&self) -> Option<Duration> {
        self.stale_proxy_ttl
            .or(self.churn_proxies.then_some(Duration::from_secs(30)))
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Results {
    api: Api,
    /// Services each Discover proxy subscribed to.
    uses: usize,
    proxies: usize,
    mesh_pods: usize,
    services: usize,
    service_accounts: usize,
    /// The Service of the cold route, if the mesh has one.
    cold_service: Option<String>,
    /// One proxy's first message (on the RPC used): encoded size, Services,
    /// workloads, entries of the names table.
    snapshot_bytes: usize,
    snapshot_services: usize,
    snapshot_workloads: usize,
    snapshot_names: usize,
    /// A first Watch snapshot's size, for comparison.
    watch_snapshot_bytes: usize,
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
    /// The control plane's registry after the changes: every proxy should
    /// be connected and current.
    registry_after_changes: Option<Listed>,
    first_use: Option<first_use::FirstUse>,
    churn: Option<churn::ChurnResults>,
    aborted: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Change {
    /// "hot" (svc-0's canary route) or "cold".
    kind: &'static str,
    /// The Service whose route changed.
    service: String,
    version: u64,
    /// From the file write to the control plane's new version (poll and
    /// debounce; the version is the build time in ms).
    write_to_version_ms: f64,
    /// Streams whose view holds the Service (every Watch stream).
    affected: usize,
    /// Per affected stream: from the file write to the snapshot
    /// acknowledged.
    ack: Summary,
    /// Affected streams that acked the new version, and those that did not.
    landed: usize,
    missing: usize,
    /// Unaffected streams that were sent a message anyway (should be 0).
    unaffected_received: usize,
    /// Streams that failed during this change (then reconnected).
    stream_failures: usize,
    /// CPU seconds used until the last ack (or the timeout).
    control_cpu_s: f64,
    bench_cpu_s: f64,
    seconds: f64,
}

pub async fn run(args: FleetArgs) -> anyhow::Result<()> {
    let n = args.proxies;
    let per = args.pods_per_service.max(1);
    let mesh_pods = args.mesh_pods.unwrap_or(n).min(n);
    let mesh = Mesh::new(files::service_count(mesh_pods, per));
    let manifests = args.workdir.join("manifests");
    let mut results = prepare(&args, &manifests, per, mesh_pods, &mesh)?;
    let control = Control::start(&args, &manifests).await?;
    let pid = control.pid;
    eprintln!(
        "fleet: {n} proxies ({:?}, {} uses), {mesh_pods} meshed pods, {} services",
        args.api, args.uses, results.services
    );
    let watchdog = Watchdog::start(pid, args.max_control_rss_gib);
    let trust = Trust::read(&args.workdir)?;

    // 1. Keys and CSRs (not timed), then Certify.
    let certify::Requests { keys, csrs } = certify::keys_and_csrs(n, per)?;
    let chains = certify::certify(&args, &trust, csrs, per, &mut results).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (before, _) = rss(pid).context("reading the control plane's memory")?;
    results.control_rss_kib_before = before;

    // 2. N streams, each on its own connection with its own certificate.
    let configs = certify::client_configs(&trust, chains, keys)?;
    let mut subs: Vec<BTreeSet<usize>> = match args.api {
        Api::Discover => (0..n).map(|i| mesh.subscriptions(i, args.uses)).collect(),
        Api::Watch => Vec::new(),
    };
    first_snapshot(&args, &configs, subs.first(), &mut results).await?;
    let checker_config = configs.first().context("no proxies")?.clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut fleet = Fleet::new(n);
    let (connected, commands) =
        connect(&args, configs, &subs, tx, &mut rx, &mut fleet, &watchdog).await?;
    (results.connected, results.connect_seconds) = connected;
    let connected = results.connected;
    if connected < n || watchdog.stopped() {
        // Memory per proxy from what was connected when it stopped.
        let at = watchdog.last_rss();
        results.control_rss_kib_after = at;
        results.control_rss_kib_per_proxy =
            at.saturating_sub(before) as f64 / connected.max(1) as f64;
        return report(&args, &finish(results, &fleet, &watchdog, pid));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, _) = rss(pid).context("reading the control plane's memory")?;
    results.control_rss_kib_after = after;
    results.control_rss_kib_per_proxy = after.saturating_sub(before) as f64 / n as f64;
    eprintln!(
        "fleet: control plane RSS {before} KiB before, {after} KiB with {n} streams: {:.1} KiB per proxy",
        results.control_rss_kib_per_proxy
    );

    // 3. Route changes, hot and cold.
    let (hot, cold) = targets(&args, &mesh, &subs);
    changes::measure_all(
        &args,
        &manifests,
        pid,
        &mut fleet,
        &mut rx,
        &watchdog,
        &mut results,
        &hot,
        cold.as_ref(),
    )
    .await?;
    match control::listed(args.admin).await {
        Ok(l) => {
            eprintln!(
                "fleet: the control plane lists {} proxies, {} connected, {} current",
                l.listed, l.connected, l.current
            );
            results.registry_after_changes = Some(l);
        }
        Err(e) => eprintln!("fleet: reading /status: {e:#}"),
    }

    // 4. First uses (Discover).
    if args.api == Api::Discover && args.first_uses > 0 && !watchdog.stopped() {
        results.first_use = Some(
            first_use::measure(
                args.first_uses,
                &mesh,
                &mut subs,
                &commands,
                &mut fleet,
                &mut rx,
                Duration::from_secs(30),
            )
            .await,
        );
    }

    // 5. Churn.
    if let Some(rate) = args.churn_rate
        && !watchdog.stopped()
    {
        let cx = churn::Setup {
            args: &args,
            manifests: &manifests,
            pid,
            mesh,
            subs: &subs,
            mesh_pods,
            per,
            trust: &trust,
            checker_config,
            fleet: &mut fleet,
            rx: &mut rx,
            watchdog: &watchdog,
        };
        results.churn = Some(churn::run(cx, rate).await?);
    }
    let results = finish(results, &fleet, &watchdog, pid);
    drop(commands);
    control.stop().await;
    report(&args, &results)
}

/// The hot route's Service (svc-0) and the cold one's, each with the
/// streams whose view holds it: every Watch stream holds everything.
fn targets(args: &FleetArgs, mesh: &Mesh, subs: &[BTreeSet<usize>]) -> (Target, Option<Target>) {
    let holds = |k: usize| -> Vec<bool> {
        match args.api {
            Api::Watch => vec![true; args.proxies],
            Api::Discover => subs.iter().map(|s| mesh.view(s).contains(&k)).collect(),
        }
    };
    let hot = Target {
        service: 0,
        affected: holds(0),
    };
    let cold = mesh.cold.map(|k| Target {
        service: k,
        affected: holds(k),
    });
    (hot, cold)
}

/// Checks the machine can hold the fleet, and writes its manifests and
/// tokens into the (empty) work directory.
fn prepare(
    args: &FleetArgs,
    manifests: &std::path::Path,
    per: usize,
    mesh_pods: usize,
    mesh: &Mesh,
) -> anyhow::Result<Results> {
    let n = args.proxies;
    let extra =
        args.checkers + args.churn_rate.unwrap_or(0) * args.churn_lifetime.as_secs() as usize;
    if let Some(limit) = procfs::nofile_limit()
        && limit < (n + extra) as u64 + 1024
    {
        bail!(
            "the open-files limit is {limit}; raise it (ulimit -n) above {} for {n} proxies",
            n + extra + 1024
        );
    }
    let work = &args.workdir;
    if work.exists() && std::fs::read_dir(work)?.next().is_some() {
        bail!("{} is not empty", work.display());
    }
    let services = files::write_manifests(manifests, n, mesh_pods, per, mesh.cold)?;
    let accounts = n.div_ceil(per);
    files::write_tokens(&work.join("tokens.yaml"), accounts)?;
    Ok(Results {
        api: args.api,
        uses: args.uses,
        proxies: n,
        mesh_pods,
        services,
        service_accounts: accounts,
        cold_service: mesh.cold.map(views::key),
        ..Default::default()
    })
}

/// One proxy's first message, decoded whole: its size and content (and a
/// Watch snapshot's size, for comparison).
async fn first_snapshot(
    args: &FleetArgs,
    configs: &[Arc<rustls::ClientConfig>],
    subs: Option<&BTreeSet<usize>>,
    results: &mut Results,
) -> anyhow::Result<()> {
    let config = configs.first().context("no proxies")?;
    let watch = proxy::probe(config.clone(), args.grpc)
        .await
        .context("a first Watch")?;
    results.watch_snapshot_bytes = watch.bytes;
    let first = match subs {
        Some(subs) => {
            let keys = subs.iter().map(|k| views::key(*k)).collect();
            discover::probe(config.clone(), args.grpc, keys)
                .await
                .context("a first Discover")?
        }
        None => watch,
    };
    let SnapshotSize {
        bytes,
        services,
        workloads,
        names,
    } = first;
    (
        results.snapshot_bytes,
        results.snapshot_services,
        results.snapshot_workloads,
        results.snapshot_names,
    ) = (bytes, services, workloads, names);
    eprintln!(
        "fleet: a first {:?} message is {bytes} bytes ({services} services, {workloads} workloads, \
         {names} names); a Watch snapshot {} bytes",
        args.api, watch.bytes
    );
    Ok(())
}

/// Starts a simulated proxy per config, at most `--concurrency` connecting
/// at once, and waits until each has acked its first snapshot (or the
/// timeout, or the watchdog); returns how many did, and in how long
/// (seconds), and (Discover) the senders of each proxy's commands: the
/// proxies stop when they are dropped.
#[allow(clippy::too_many_arguments)]
async fn connect(
    args: &FleetArgs,
    configs: Vec<Arc<rustls::ClientConfig>>,
    subs: &[BTreeSet<usize>],
    tx: mpsc::UnboundedSender<Event>,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    fleet: &mut Fleet,
    watchdog: &Watchdog,
) -> anyhow::Result<((usize, f64), Vec<mpsc::UnboundedSender<Command>>)> {
    let n = configs.len();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let t = Instant::now();
    let mut commands = Vec::new();
    for (i, config) in configs.into_iter().enumerate() {
        if watchdog.stopped() {
            break;
        }
        let permit = gate.clone().acquire_owned().await?;
        match args.api {
            Api::Watch => {
                tokio::spawn(proxy::simulated_proxy(
                    i,
                    config,
                    args.grpc,
                    tx.clone(),
                    permit,
                ));
            }
            Api::Discover => {
                let (ctx, crx) = mpsc::unbounded_channel();
                commands.push(ctx);
                let proxy = DiscoverProxy {
                    index: i,
                    pod: format!("p-{i}"),
                    config,
                    grpc: args.grpc,
                    subscribe: subs
                        .get(i)
                        .into_iter()
                        .flatten()
                        .map(|k| views::key(*k))
                        .collect(),
                };
                tokio::spawn(proxy.run(tx.clone(), crx, Some(permit)));
            }
        }
    }
    drop(tx);
    let mut connected = 0usize;
    let deadline = Instant::now() + args.timeout;
    while connected < n && !watchdog.stopped() {
        let Ok(Some(e)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await else {
            break;
        };
        fleet.apply(e, |_, _, _| connected += 1);
    }
    // Stopped early: count what had connected by then.
    while let Ok(e) = rx.try_recv() {
        fleet.apply(e, |_, _, _| connected += 1);
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "fleet: {connected}/{n} streams acked their first snapshot in {secs:.2}s{}",
        fleet
            .first_error
            .as_ref()
            .map(|e| format!("; {} stream failures, e.g. {e}", fleet.failures))
            .unwrap_or_default()
    );
    Ok(((connected, secs), commands))
}

/// The last figures: why it stopped (if it did), peak memory, failures.
fn finish(mut results: Results, fleet: &Fleet, watchdog: &Watchdog, pid: u32) -> Results {
    results.aborted = watchdog.reason();
    if let Some((_, hwm)) = rss(pid) {
        results.control_hwm_kib = hwm;
    }
    results.bench_rss_kib = rss(std::process::id()).map(|r| r.0).unwrap_or(0);
    results.stream_failures = fleet.failures;
    results.first_stream_error = fleet.first_error.clone();
    results
}

fn report(args: &FleetArgs, results: &Results) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(results)?;
    println!("{json}");
    if let Some(path) = &args.json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
