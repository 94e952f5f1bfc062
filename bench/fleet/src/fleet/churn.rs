//! Churn: meshed Pods created and deleted at a steady rate, as a busy
//! cluster rolls its Deployments, to see whether the control plane's memory
//! follows what exists (not what ever existed) and whether proxies end up
//! with exactly the endpoints the manifests have.
//!
//! Every second a new manifest file `churn-<t>.yaml` brings `rate` Pods
//! (addresses from 10.200.0.0/16, never reused, behind a few of the used
//! Services), and the file written `lifetime` ago is deleted. A few checker
//! proxies decode and fold every message; at the end what they hold is
//! compared with the manifests. With `--churn-proxies`, each churn Pod also
//! gets a short-lived proxy (Certify, then Discover) that goes when its Pod
//! does, so the control plane's registry must forget it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::sync::mpsc;
use weft_api::tls::CertSlot;
use weft_api::v1::identity_client::IdentityClient;

use super::FleetArgs;
use super::certify::{self, Trust};
use super::checker::{self, Checked, Held};
use super::control::{Listed, Watchdog, listed};
use super::discover::{Command, DiscoverProxy};
use super::files::{meshed_pod, pod_ip, replace};
use super::procfs::{cpu_seconds, rss};
use super::proxy::{Event, Fleet};
use super::views::{Mesh, key};

/// How long the endpoints may take to settle after the last write.
const SETTLE: Duration = Duration::from_secs(20);

#[derive(Debug, Default, Serialize)]
pub struct ChurnResults {
    pub rate: usize,
    pub seconds: u64,
    pub lifetime_s: u64,
    /// The Services whose endpoints churn.
    pub services: Vec<String>,
    pub pods_created: usize,
    pub pods_deleted: usize,
    /// Wall time of the creation phase (longer than `seconds` when the
    /// bench fell behind).
    pub wall_seconds: f64,
    pub control_rss_kib_before: u64,
    pub control_rss_kib_peak: u64,
    /// Once every churn Pod is gone and the checkers agree.
    pub control_rss_kib_after_churn: u64,
    /// After waiting `waited_s` more (past the stale-proxy TTL when there
    /// were churn proxies).
    pub control_rss_kib_after_wait: u64,
    pub waited_s: f64,
    /// VmRSS each second of the creation phase.
    pub control_rss_kib_samples: Vec<u64>,
    pub control_cpu_s: f64,
    pub bench_cpu_s: f64,
    /// Messages the simulated fleet received (and acked) per second of the
    /// creation phase, all streams together, and per stream.
    pub fleet_messages_per_second: f64,
    pub fleet_messages_per_stream_per_second: f64,
    /// Simulated streams whose view holds none of the churned Services
    /// (none with Watch), and the messages they were sent meanwhile: not
    /// endpoints, then, but what every message carries (the mesh's
    /// networks, the proxy's own settings).
    pub unaffected_streams: usize,
    pub unaffected_messages: u64,
    pub fleet_stream_failures: usize,
    pub checkers: usize,
    /// With the churn Pods of the last `lifetime` alive.
    pub live: Settled,
    /// With every churn Pod deleted.
    pub drained: Settled,
    pub proxies: Option<ChurnProxies>,
    /// The registry (`/status`) once the churn ended, and after the wait.
    pub registry_at_end: Listed,
    pub registry_after_wait: Listed,
}

/// Checkers against the manifests, once they agree or time runs out.
#[derive(Debug, Default, Serialize)]
pub struct Settled {
    /// From the last manifest write until every checker held exactly the
    /// manifests' endpoints; None if that did not happen within 20 s.
    pub settled_ms: Option<f64>,
    pub stale: usize,
    pub missing: usize,
    pub base_mismatches: u64,
    pub per_checker: Vec<Checked>,
}

/// The short-lived proxies of the churn Pods.
#[derive(Debug, Default, Serialize)]
pub struct ChurnProxies {
    pub started: usize,
    pub certified: usize,
    pub certify_failed: usize,
    /// Those that received their first message.
    pub connected: usize,
    pub stream_failures: usize,
    pub first_error: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    started: AtomicUsize,
    certified: AtomicUsize,
    certify_failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

/// The Services whose endpoints churn: a few used ones that are neither
/// the hot pair (in every view) nor the cold route's.
pub fn churned(mesh: &Mesh) -> Vec<usize> {
    let picked: Vec<usize> = (2..mesh.services)
        .filter(|k| Some(*k) != mesh.cold)
        .take(3)
        .collect();
    if picked.is_empty() {
        vec![mesh.services - 1]
    } else {
        picked
    }
}

/// What the run needs from the rest of the bench.
pub struct Setup<'a> {
    pub args: &'a FleetArgs,
    pub manifests: &'a Path,
    pub pid: u32,
    pub mesh: Mesh,
    /// Each simulated Discover proxy's subscriptions (empty with Watch).
    pub subs: &'a [BTreeSet<usize>],
    pub mesh_pods: usize,
    pub per: usize,
    pub trust: &'a Trust,
    /// A client config of the namespace (the checkers' identity).
    pub checker_config: Arc<rustls::ClientConfig>,
    pub fleet: &'a mut Fleet,
    pub rx: &'a mut mpsc::UnboundedReceiver<Event>,
    pub watchdog: &'a Watchdog,
}

/// One live churn file: its Pods' (Service, IP), and the churn proxies'
/// command senders (dropped: the proxies go).
struct LiveFile {
    pods: Vec<(usize, String)>,
    _proxies: Vec<mpsc::UnboundedSender<Command>>,
}

/// The live churn files, by second.
#[derive(Default)]
struct Live {
    files: BTreeMap<u64, LiveFile>,
}

impl Live {
    fn endpoints(&self) -> impl Iterator<Item = &(usize, String)> {
        self.files.values().flat_map(|f| &f.pods)
    }
}

/// A churn file's name.
fn file(manifests: &Path, t: u64) -> PathBuf {
    manifests.join(format!("churn-{t}.yaml"))
}

/// The address of the `c`th churn Pod: 10.200.0.0/16, never reused.
fn churn_ip(c: usize) -> String {
    format!("10.200.{}.{}", c / 256, c % 256)
}

pub async fn run(cx: Setup<'_>, rate: usize) -> anyhow::Result<ChurnResults> {
    let args = cx.args;
    let seconds = args.churn_seconds;
    let lifetime = args.churn_lifetime.as_secs().max(1);
    let total = rate.saturating_mul(seconds as usize);
    if total > 65536 {
        bail!("{rate} Pods a second for {seconds} s do not fit in 10.200.0.0/16");
    }
    let ks = churned(&cx.mesh);
    let mut r = ChurnResults {
        rate,
        seconds,
        lifetime_s: lifetime,
        services: ks.iter().map(|k| key(*k)).collect(),
        checkers: args.checkers,
        ..Default::default()
    };
    let static_eps: BTreeMap<usize, BTreeSet<String>> = ks
        .iter()
        .map(|&k| {
            let ips = (k * cx.per..((k + 1) * cx.per).min(cx.mesh_pods))
                .map(pod_ip)
                .collect();
            (k, ips)
        })
        .collect();
    let expected = |live: &Live| {
        let mut e: BTreeMap<String, BTreeSet<String>> = static_eps
            .iter()
            .map(|(k, ips)| (key(*k), ips.clone()))
            .collect();
        for (k, ip) in live.endpoints() {
            e.entry(key(*k)).or_default().insert(ip.clone());
        }
        e
    };

    // The checkers, subscribed to the churned Services.
    let helds: Vec<Arc<Mutex<Held>>> = (0..args.checkers)
        .map(|_| Arc::new(Mutex::new(Held::default())))
        .collect();
    let subscribe: Vec<String> = ks.iter().map(|k| key(*k)).collect();
    let tasks: Vec<_> = helds
        .iter()
        .enumerate()
        .map(|(j, held)| {
            tokio::spawn(checker::run(
                format!("checker-{j}"),
                cx.checker_config.clone(),
                args.grpc,
                subscribe.clone(),
                held.clone(),
            ))
        })
        .collect();
    let (ctx, mut crx) = mpsc::unbounded_channel();
    let mut churn_fleet = Fleet::new(total);
    let unaffected: Vec<bool> = cx
        .subs
        .iter()
        .map(|s| !ks.iter().any(|k| cx.mesh.view(s).contains(k)))
        .collect();
    r.unaffected_streams = unaffected.iter().filter(|u| **u).count();
    let mut inbox = Inbox {
        rx: cx.rx,
        fleet: cx.fleet,
        unaffected: &unaffected,
        unaffected_messages: 0,
        crx: &mut crx,
        churn: &mut churn_fleet,
    };
    let first = settle(&helds, &expected(&Live::default()), &mut inbox).await;
    if first.settled_ms.is_none() {
        eprintln!(
            "fleet: churn: the checkers do not agree with the manifests before the churn \
             ({} stale, {} missing endpoints)",
            first.stale, first.missing
        );
    }

    let counters = Arc::new(Counters::default());
    let identity: Vec<IdentityClient<tonic::transport::Channel>> = if args.churn_proxies {
        let config = cx.trust.client_config(CertSlot::default())?;
        (0..4)
            .map(|_| {
                IdentityClient::new(weft_api::grpc::connect_lazy(
                    args.grpc.to_string(),
                    config.clone(),
                ))
            })
            .collect()
    } else {
        Vec::new()
    };

    eprintln!(
        "fleet: churn: {rate} Pods a second for {seconds} s, each living {lifetime} s, behind {}{}",
        r.services.join(", "),
        if args.churn_proxies {
            ", each with a proxy"
        } else {
            ""
        }
    );
    let (before, _) = rss(cx.pid).context("reading the control plane's memory")?;
    r.control_rss_kib_before = before;
    let (cp_cpu, bench_cpu) = (cpu_seconds(cx.pid), cpu_seconds(std::process::id()));
    let (messages0, failures0) = (inbox.fleet.messages, inbox.fleet.failures);
    inbox.unaffected_messages = 0;
    let mut live = Live::default();
    let mut created = 0usize;
    let start = Instant::now();
    let mut tick = tokio::time::Instant::now();
    for t in 0..seconds {
        inbox.drain_until(tick).await;
        tick += Duration::from_secs(1);
        if cx.watchdog.stopped() {
            break;
        }
        let mut yaml = String::with_capacity(rate * 400);
        let mut pods = Vec::with_capacity(rate);
        let mut stops = Vec::new();
        for j in 0..rate {
            let c = created + j;
            let k = ks[c % ks.len()];
            let (name, ip, sa) = (format!("churn-{t}-{j}"), churn_ip(c), format!("sa-{k}"));
            meshed_pod(&mut yaml, &name, k, &sa, &ip);
            if args.churn_proxies {
                let (tx, cmds) = mpsc::unbounded_channel();
                stops.push(tx);
                let proxy = DiscoverProxy {
                    index: c,
                    pod: name,
                    config: cx.checker_config.clone(),
                    grpc: args.grpc,
                    subscribe: cx
                        .mesh
                        .subscriptions(args.proxies + c, args.uses)
                        .into_iter()
                        .map(key)
                        .collect(),
                };
                tokio::spawn(churn_proxy(
                    proxy,
                    identity[c % identity.len()].clone(),
                    cx.trust.clone(),
                    format!("tok-{k}"),
                    sa,
                    ctx.clone(),
                    cmds,
                    counters.clone(),
                ));
            }
            pods.push((k, ip));
        }
        created += rate;
        let name = format!("churn-{t}.yaml");
        replace(cx.manifests, &name, &yaml)?;
        live.files.insert(
            t,
            LiveFile {
                pods,
                _proxies: stops,
            },
        );
        if t >= lifetime {
            remove(cx.manifests, &mut live, t - lifetime, &mut r.pods_deleted)?;
        }
        if let Some((now, _)) = rss(cx.pid) {
            r.control_rss_kib_samples.push(now);
        }
    }
    r.wall_seconds = start.elapsed().as_secs_f64();
    r.pods_created = created;
    let messages = inbox.fleet.messages - messages0;
    r.unaffected_messages = inbox.unaffected_messages;
    r.fleet_messages_per_second = messages as f64 / r.wall_seconds.max(1e-9);
    r.fleet_messages_per_stream_per_second =
        r.fleet_messages_per_second / inbox.fleet.acked.len().max(1) as f64;
    r.control_cpu_s = cpu_seconds(cx.pid) - cp_cpu;
    r.bench_cpu_s = cpu_seconds(std::process::id()) - bench_cpu;
    r.control_rss_kib_peak = r.control_rss_kib_samples.iter().copied().max().unwrap_or(0);
    eprintln!(
        "fleet: churn: {created} Pods created, {} deleted in {:.1} s; {:.0} messages/s to the fleet \
         ({:.3} per stream; {} messages to the {} streams that hold no churned Service); \
         control plane RSS {} -> peak {} KiB, CPU {:.1} s",
        r.pods_deleted,
        r.wall_seconds,
        r.fleet_messages_per_second,
        r.fleet_messages_per_stream_per_second,
        r.unaffected_messages,
        r.unaffected_streams,
        before,
        r.control_rss_kib_peak,
        r.control_cpu_s
    );

    // The last `lifetime` of Pods alive: do the checkers hold them all?
    r.live = settle(&helds, &expected(&live), &mut inbox).await;
    log("alive", &r.live);
    // Every churn Pod gone (and its proxy).
    let left: Vec<u64> = live.files.keys().copied().collect();
    for t in left {
        remove(cx.manifests, &mut live, t, &mut r.pods_deleted)?;
    }
    r.drained = settle(&helds, &expected(&live), &mut inbox).await;
    log("deleted", &r.drained);
    r.fleet_stream_failures = inbox.fleet.failures - failures0;
    r.control_rss_kib_after_churn = rss(cx.pid).map_or(0, |m| m.0);
    r.registry_at_end = listed(args.admin).await.unwrap_or_default();

    // Wait: past the TTL, a departed proxy must be forgotten.
    let wait = match args.stale_ttl() {
        Some(ttl) if args.churn_proxies => ttl + Duration::from_secs(3),
        _ => Duration::from_secs(10),
    };
    inbox.drain_until(tokio::time::Instant::now() + wait).await;
    r.waited_s = wait.as_secs_f64();
    r.control_rss_kib_after_wait = rss(cx.pid).map_or(0, |m| m.0);
    r.registry_after_wait = listed(args.admin).await.unwrap_or_default();
    eprintln!(
        "fleet: churn: control plane RSS {} KiB after the churn, {} KiB {:.0} s later; \
         registry {} listed ({} connected) at the end, {} ({}) after the wait",
        r.control_rss_kib_after_churn,
        r.control_rss_kib_after_wait,
        r.waited_s,
        r.registry_at_end.listed,
        r.registry_at_end.connected,
        r.registry_after_wait.listed,
        r.registry_after_wait.connected,
    );
    if args.churn_proxies {
        let connected = inbox.churn.acked.iter().filter(|v| **v > 0).count();
        let p = ChurnProxies {
            started: counters.started.load(Ordering::SeqCst),
            certified: counters.certified.load(Ordering::SeqCst),
            certify_failed: counters.certify_failed.load(Ordering::SeqCst),
            connected,
            stream_failures: inbox.churn.failures,
            first_error: counters
                .first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .or_else(|| inbox.churn.first_error.clone()),
        };
        eprintln!(
            "fleet: churn proxies: {} started, {} certified ({} failed), {} connected, {} stream failures",
            p.started, p.certified, p.certify_failed, p.connected, p.stream_failures
        );
        r.proxies = Some(p);
    }
    for t in tasks {
        t.abort();
    }
    Ok(r)
}

/// Deletes churn file `t` and stops its Pods' proxies.
fn remove(manifests: &Path, live: &mut Live, t: u64, deleted: &mut usize) -> anyhow::Result<()> {
    if let Some(f) = live.files.remove(&t) {
        *deleted += f.pods.len();
    }
    let path = file(manifests, t);
    std::fs::remove_file(&path).with_context(|| format!("deleting {}", path.display()))
}

/// Where events go meanwhile: the simulated fleet's and the churn proxies'.
struct Inbox<'a> {
    rx: &'a mut mpsc::UnboundedReceiver<Event>,
    fleet: &'a mut Fleet,
    /// Per simulated stream: its view holds no churned Service.
    unaffected: &'a [bool],
    /// New versions acked by those streams.
    unaffected_messages: u64,
    crx: &'a mut mpsc::UnboundedReceiver<Event>,
    churn: &'a mut Fleet,
}

impl Inbox<'_> {
    /// Takes in events until `deadline`.
    async fn drain_until(&mut self, deadline: tokio::time::Instant) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                Some(e) = self.rx.recv() => {
                    let (unaffected, count) = (self.unaffected, &mut self.unaffected_messages);
                    self.fleet.apply(e, |proxy, _, _| {
                        if unaffected.get(proxy).copied().unwrap_or(false) {
                            *count += 1;
                        }
                    })
                }
                Some(e) = self.crx.recv() => self.churn.apply(e, |_, _, _| {}),
            }
        }
    }
}

/// Checks the checkers every 100 ms until they agree with `expected` or
/// [`SETTLE`] passed.
async fn settle(
    helds: &[Arc<Mutex<Held>>],
    expected: &BTreeMap<String, BTreeSet<String>>,
    inbox: &mut Inbox<'_>,
) -> Settled {
    let t0 = Instant::now();
    loop {
        let per = checker::check(helds, expected);
        let stale = per.iter().map(|c| c.stale).sum();
        let missing = per.iter().map(|c| c.missing).sum();
        let agreed = stale == 0 && missing == 0 && per.iter().all(|c| c.messages > 0);
        if agreed || t0.elapsed() > SETTLE {
            return Settled {
                settled_ms: agreed.then(|| t0.elapsed().as_secs_f64() * 1000.0),
                stale,
                missing,
                base_mismatches: per.iter().map(|c| c.base_mismatches).sum(),
                per_checker: per,
            };
        }
        inbox
            .drain_until(tokio::time::Instant::now() + Duration::from_millis(100))
            .await;
    }
}

fn log(when: &str, s: &Settled) {
    match s.settled_ms {
        Some(ms) => eprintln!(
            "fleet: churn: Pods {when}: every checker holds exactly the manifests' endpoints \
             {ms:.0} ms after the last write ({} base mismatches)",
            s.base_mismatches
        ),
        None => eprintln!(
            "fleet: churn: Pods {when}: after {} s the checkers still hold {} stale and miss {} endpoints",
            SETTLE.as_secs(),
            s.stale,
            s.missing
        ),
    }
}

/// A churn Pod's proxy: a key and Certify as the Pod's service account,
/// then Discover until the Pod goes (`commands` closes).
#[allow(clippy::too_many_arguments)]
async fn churn_proxy(
    mut proxy: DiscoverProxy,
    identity: IdentityClient<tonic::transport::Channel>,
    trust: Trust,
    token: String,
    sa: String,
    events: mpsc::UnboundedSender<Event>,
    commands: mpsc::UnboundedReceiver<Command>,
    counters: Arc<Counters>,
) {
    counters.started.fetch_add(1, Ordering::SeqCst);
    let certified = async {
        let (key, csr) = certify::key_and_csr(&sa)?;
        let chain = certify::certify_one(identity, token, csr).await?;
        certify::client_config(&trust, chain, key)
    }
    .await;
    match certified {
        Ok(config) => {
            counters.certified.fetch_add(1, Ordering::SeqCst);
            proxy.config = config;
            proxy.run(events, commands, None).await;
        }
        Err(e) => {
            counters.certify_failed.fetch_add(1, Ordering::SeqCst);
            counters
                .first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(format!("{e:#}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churned_services_are_cold_and_exist() {
        assert_eq!(churned(&Mesh::new(100)), [2, 3, 4]);
        assert_eq!(churned(&Mesh::new(4)), [2]);
        assert_eq!(churned(&Mesh::new(2)), [1]);
        assert_eq!(churn_ip(257), "10.200.1.1");
    }
}
