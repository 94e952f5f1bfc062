//! `weftctl demo`: a whole mesh on one Linux machine, no Kubernetes. The
//! control plane and every pod get a network namespace of their own, joined
//! by a bridge; each pod runs a test application and a real sidecar installed
//! through `weft-proxy init`, with strict mTLS mesh-wide and the sidecars'
//! DNS answering Service names. The demo drives load through it and shows the
//! sidecars' golden metrics live. Whatever ends it (Ctrl-C, SIGTERM,
//! `--duration`, an error), everything it made is removed; a run also removes
//! what a killed run left behind.

mod load;
mod mesh;
pub mod netns;
mod stats;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use mesh::{App, Mesh};
use stats::{Row, fmt_opt};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Steady traffic: 90% of backend requests to v1, 10% to v2.
    Basic,
    /// The route moves backend traffic from v1 to v2 in steps of 20%.
    Canary,
    /// backend-v1-1 fails 30% of its requests and backend-v1-2 dies midway;
    /// retries, timeouts and outlier detection keep the frontend healthy.
    Faults,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value_t = Scenario::Basic)]
    scenario: Scenario,
    /// How long to run (e.g. `30s`); until Ctrl-C when not given.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Print a final summary as JSON instead of the live table.
    #[arg(long)]
    json: bool,
    /// Export every sidecar's and the control plane's spans to this OTLP/gRPC
    /// collector on the host (e.g. Jaeger on 127.0.0.1:4317).
    #[arg(long, value_parser = parse_otlp)]
    otlp_endpoint: Option<SocketAddr>,
    /// Where the running mesh is described (pods, Services, control plane).
    #[arg(long, default_value = "/run/weft-demo/state.json")]
    state_file: PathBuf,
    /// Where manifests, the CA and logs live while the demo runs.
    #[arg(long, default_value = "/run/weft-demo/mesh")]
    dir: PathBuf,
    /// Requests per second the client sends to the frontend.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=5000))]
    rate: u32,
    /// Where weft-control, weft-proxy and weft-test-app are (default: next
    /// to weftctl).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// `127.0.0.1:4317` or `http://127.0.0.1:4317`.
fn parse_otlp(s: &str) -> Result<SocketAddr, String> {
    let bare = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
    bare.parse()
        .map_err(|_| format!("`{s}` is not an address like 127.0.0.1:4317"))
}

/// Runs the demo to its end; `Ok(true)` when the client saw no failure worth
/// reporting (success rate at least 99%).
pub fn run(args: Args) -> anyhow::Result<bool> {
    prerequisites()?;
    let bins = mesh::Bins::find(args.bin_dir.as_deref())?;
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Signals first, so a Ctrl-C while the mesh is being built still cleans up.
    let signalled = Arc::new(AtomicBool::new(false));
    {
        let _guard = rt.enter();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("installing the SIGINT handler")?;
        let signalled = signalled.clone();
        rt.spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            signalled.store(true, Ordering::SeqCst);
        });
    }

    let fail_rate = if args.scenario == Scenario::Faults {
        0.3
    } else {
        0.0
    };
    let specs = mesh::pods(fail_rate);
    let initial_v1 = match args.scenario {
        Scenario::Basic => 90,
        Scenario::Canary => 100,
        Scenario::Faults => 80,
    };
    let say = |msg: &str| {
        if !args.json {
            eprintln!("weftctl demo: {msg}");
        }
    };
    say("building the mesh (control plane, 8 pods)…");
    let mut mesh = Mesh::create(
        args.dir.clone(),
        args.state_file.clone(),
        bins,
        args.otlp_endpoint,
    )?;
    if let Some(collector) = args.otlp_endpoint {
        relay_otlp(&rt, &mesh, collector)?;
    }
    let started = (|| -> anyhow::Result<()> {
        mesh.start_control(&specs, initial_v1)?;
        for spec in specs {
            if signalled.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            mesh.add_pod(spec)?;
        }
        mesh.wait_ready()?;
        mesh.write_state(scenario_name(args.scenario))
    })();
    started?;
    say(&format!(
        "mesh ready; state in {}, manifests in {}",
        args.state_file.display(),
        mesh.manifests().display()
    ));

    // The client, inside the loadgen pod.
    let outcomes = Arc::new(Mutex::new(load::Outcomes::default()));
    let frontend = mesh
        .services
        .iter()
        .find(|s| s.name == "frontend")
        .map(|s| SocketAddr::from((s.vip, 80)))
        .context("no frontend Service")?;
    let client_ns = mesh
        .pods
        .iter()
        .find(|p| p.spec.app == App::Client)
        .map(|p| p.ns.clone())
        .context("no client pod")?;
    let loader = {
        let (outcomes, stop, rate) = (outcomes.clone(), stop.clone(), args.rate);
        client_ns.thread("weftctl-load", move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| {
                    rt.block_on(load::drive(
                        frontend,
                        format!("frontend.{}", mesh::NAMESPACE),
                        rate,
                        outcomes,
                        stop,
                    ))
                })
        })?
    };

    // The scraper, on the bridge (it reaches every pod's admin port).
    let (tx, rx) = mpsc::channel::<Scrape>();
    let scraper = {
        let admins: Vec<(Option<String>, SocketAddr)> = mesh
            .pods
            .iter()
            .map(|p| {
                let workload = matches!(p.spec.app, App::Frontend | App::Backend { .. })
                    .then(|| format!("{} {}", p.spec.service, p.spec.version));
                (workload, (p.ip, weft_api::defaults::ADMIN_PORT).into())
            })
            .collect();
        let control = mesh.control_admin();
        let stop = stop.clone();
        mesh.bridge.thread("weftctl-scrape", move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(scrape_loop(admins, control, tx, stop)))
        })?
    };

    let tcp_services: BTreeMap<String, String> =
        BTreeMap::from([(mesh::spiffe("db"), format!("db.{}:6379", mesh::NAMESPACE))]);
    let start = Instant::now();
    let mut timeline = Timeline::new(args.scenario, args.duration);
    let mut events: Vec<Event> = Vec::new();
    let mut first: Option<BTreeMap<(String, String), Row>> = None;
    let mut prev: Option<BTreeMap<(String, String), Row>> = None;
    let mut last_scrape: Option<Scrape> = None;
    let end_reason = loop {
        // Drive the signal task too.
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
        if signalled.load(Ordering::SeqCst) {
            break "signal";
        }
        let elapsed = start.elapsed();
        if args.duration.is_some_and(|d| elapsed >= d) {
            break "duration";
        }
        for action in timeline.due(elapsed) {
            let what = match action {
                Action::Weights(v1) => {
                    mesh.write_manifest("route-backend.yaml", &mesh::route_yaml(v1))?;
                    format!("route backend: v1 {v1}%, v2 {}%", 100 - v1)
                }
                Action::Kill(pod) => {
                    mesh.kill_app(pod);
                    format!("killed the application of {pod}")
                }
            };
            events.push(Event {
                at_s: elapsed.as_secs_f64(),
                what,
            });
        }
        let Ok(scrape) = rx.try_recv() else {
            continue;
        };
        let rows = stats::rows(&scrape.proxies, &tcp_services);
        if first.is_none() {
            first = Some(rows.clone());
        }
        if !args.json {
            let client = outcomes.lock().map(|o| o.summary()).ok();
            print_table(
                &rows,
                prev.as_ref(),
                &scrape,
                client.as_ref(),
                elapsed,
                &events,
                &args,
            );
        }
        prev = Some(rows);
        last_scrape = Some(scrape);
    };
    stop.store(true, Ordering::SeqCst);
    let _ = loader.join();
    let _ = scraper.join();

    let client = outcomes.lock().map(|o| o.summary()).ok();
    let totals: Vec<RowSummary> = match (&prev, &first) {
        (Some(last), first) => last
            .values()
            .map(|r| {
                RowSummary::of(
                    &r.since(
                        first
                            .as_ref()
                            .and_then(|f| f.get(&(r.service.clone(), r.route.clone()))),
                    ),
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    let healthy = client
        .as_ref()
        .and_then(|c| c.success_rate)
        .is_some_and(|r| r >= 0.99);
    let summary = Summary {
        scenario: args.scenario,
        ended_by: end_reason,
        seconds: start.elapsed().as_secs_f64(),
        client,
        services: totals,
        proxies_up: last_scrape.as_ref().map_or(0, |s| s.up),
        proxies: mesh.pods.len(),
        control_plane_up: last_scrape.as_ref().is_some_and(|s| s.control_up),
        events,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    say("removing the mesh…");
    drop(mesh);
    Ok(healthy)
}

/// Root, and the tools the mesh is built with; installs them with apt-get
/// when they are missing and apt-get is there.
fn prerequisites() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("weftctl demo creates network namespaces and iptables rules: run it as root (sudo)");
    }
    let missing: Vec<(&str, &str)> = [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("setpriv", "util-linux"),
    ]
    .into_iter()
    .filter(|(cmd, _)| !on_path(cmd))
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    if on_path("apt-get") {
        eprintln!("weftctl demo: installing {}", packages.join(" "));
        let ok = std::process::Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        if ok && missing.iter().all(|(cmd, _)| on_path(cmd)) {
            return Ok(());
        }
    }
    bail!(
        "missing {}: install the packages {}",
        missing
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
            .join(", "),
        packages.join(" ")
    )
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(cmd).is_file()))
}

/// Makes the collector on the host reachable from the pods: a listener on
/// the bridge (made inside its namespace) whose connections this process
/// relays to the host's address. Nothing is added to the host.
fn relay_otlp(
    rt: &tokio::runtime::Runtime,
    mesh: &Mesh,
    collector: SocketAddr,
) -> anyhow::Result<()> {
    let listen = SocketAddr::from((mesh::gateway(), collector.port()));
    let listener = mesh
        .bridge
        .thread("weftctl-otlp-bind", move || {
            std::net::TcpListener::bind(listen)
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("binding the OTLP relay panicked"))??
        .with_context(|| format!("binding the OTLP relay on {listen}"))?;
    listener.set_nonblocking(true)?;
    let _guard = rt.enter();
    let listener = tokio::net::TcpListener::from_std(listener)?;
    rt.spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(collector).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    Ok(())
}

/// One round of `/metrics` from every sidecar.
#[derive(Debug)]
struct Scrape {
    /// Per reachable sidecar: its workload (`backend v2`) when it serves
    /// HTTP, and its samples.
    proxies: Vec<(Option<String>, Vec<stats::Sample>)>,
    up: usize,
    /// Sidecars scraped (up or not).
    total: usize,
    control_up: bool,
    /// Proxies the control plane reports connected and current.
    current: usize,
}

async fn scrape_loop(
    admins: Vec<(Option<String>, SocketAddr)>,
    control: SocketAddr,
    tx: mpsc::Sender<Scrape>,
    stop: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let mut proxies = Vec::new();
        let mut up = 0;
        for (workload, a) in &admins {
            if let Ok((200, text)) = get(*a, "/metrics").await {
                up += 1;
                proxies.push((workload.clone(), stats::parse(&text)));
            }
        }
        let status = get(control, "/status").await.ok();
        let current = status
            .as_ref()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok())
            .and_then(|v| {
                v["proxies"]
                    .as_array()
                    .map(|ps| ps.iter().filter(|p| p["current"] == true).count())
            })
            .unwrap_or(0);
        let scrape = Scrape {
            proxies,
            up,
            total: admins.len(),
            control_up: status.is_some(),
            current,
        };
        if tx.send(scrape).is_err() {
            return;
        }
    }
}

/// GET `path` on `addr` with a short timeout: (status, body).
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = format!("http://{addr}{path}").parse()?;
    let res = tokio::time::timeout(Duration::from_secs(2), client.get(uri))
        .await
        .context("timed out")??;
    let status = res.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(2), res.into_body().collect())
        .await
        .context("timed out")??
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Weights(u32),
    Kill(&'static str),
}

/// What the scenario does, and when.
#[derive(Debug)]
struct Timeline {
    steps: Vec<(Duration, Action)>,
}

impl Timeline {
    fn new(scenario: Scenario, duration: Option<Duration>) -> Timeline {
        let steps = match scenario {
            Scenario::Basic => Vec::new(),
            // Five moves of 20%, spread over the run (every 10s without --duration).
            Scenario::Canary => {
                let every = duration.map_or(Duration::from_secs(10), |d| d / 6);
                (1..=5)
                    .map(|i| (every * i, Action::Weights(100 - 20 * i)))
                    .collect()
            }
            Scenario::Faults => {
                let midway = duration.map_or(Duration::from_secs(20), |d| d / 2);
                vec![(midway, Action::Kill("backend-v1-2"))]
            }
        };
        Timeline { steps }
    }

    fn due(&mut self, elapsed: Duration) -> Vec<Action> {
        let (due, later): (Vec<_>, Vec<_>) =
            self.steps.drain(..).partition(|(at, _)| *at <= elapsed);
        self.steps = later;
        due.into_iter().map(|(_, a)| a).collect()
    }
}

#[derive(Debug, Clone, Serialize)]
struct Event {
    at_s: f64,
    what: String,
}

#[derive(Debug, Serialize)]
struct RowSummary {
    service: String,
    route: String,
    protocol: &'static str,
    /// Requests (HTTP) or connections (opaque TCP) over the run.
    requests: f64,
    success_rate: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    mtls_share: Option<f64>,
    retries: f64,
}

impl RowSummary {
    fn of(r: &Row) -> RowSummary {
        RowSummary {
            service: r.service.clone(),
            route: r.route.clone(),
            protocol: r.protocol,
            requests: r.requests,
            success_rate: r.success_rate(),
            p50_ms: r.quantile(0.5),
            p99_ms: r.quantile(0.99),
            mtls_share: r.mtls_share(),
            retries: r.retries,
        }
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    scenario: Scenario,
    ended_by: &'static str,
    seconds: f64,
    /// What the demo's client saw calling the frontend.
    client: Option<load::ClientSummary>,
    /// Per Service and route, as the calling sidecars counted them.
    services: Vec<RowSummary>,
    proxies: usize,
    proxies_up: usize,
    control_plane_up: bool,
    events: Vec<Event>,
}

fn print_table(
    rows: &BTreeMap<(String, String), Row>,
    prev: Option<&BTreeMap<(String, String), Row>>,
    scrape: &Scrape,
    client: Option<&load::ClientSummary>,
    elapsed: Duration,
    events: &[Event],
    args: &Args,
) {
    let mut out = String::new();
    // Clear the screen and go home, so the table refreshes in place.
    out.push_str("\x1b[2J\x1b[H");
    out.push_str(&format!(
        "Weft demo · scenario {} · {:.0}s{} · proxies up {}/{} · control plane {} · current config {}/{}\n\n",
        scenario_name(args.scenario),
        elapsed.as_secs_f64(),
        args.duration.map_or(String::new(), |d| format!(" of {}s", d.as_secs())),
        scrape.up,
        scrape.total,
        if scrape.control_up { "up" } else { "DOWN" },
        scrape.current,
        scrape.total,
    ));
    out.push_str(&format!(
        "{:<22} {:<10} {:>8} {:>9} {:>9} {:>9} {:>6} {:>8}\n",
        "SERVICE", "ROUTE", "RPS", "SUCCESS", "P50 ms", "P99 ms", "mTLS", "RETRY/s"
    ));
    for (key, row) in rows {
        let d = row.since(prev.and_then(|p| p.get(key)));
        let (p50, p99) = if row.protocol != "http" {
            ("-".to_string(), "-".to_string())
        } else {
            (
                fmt_opt(d.quantile(0.5), 1.0, 2),
                fmt_opt(d.quantile(0.99), 1.0, 2),
            )
        };
        out.push_str(&format!(
            "{:<22} {:<10} {:>8.1} {:>9} {:>9} {:>9} {:>6} {:>8.1}\n",
            row.service,
            route_name(row),
            d.requests,
            fmt_opt(d.success_rate(), 100.0, 1) + "%",
            p50,
            p99,
            fmt_opt(d.mtls_share(), 100.0, 0) + "%",
            d.retries,
        ));
    }
    if let Some(c) = client {
        out.push_str(&format!(
            "\nclient → frontend: {} requests, {}% ok, p50 {} ms, p99 {} ms\n",
            c.requests,
            fmt_opt(c.success_rate, 100.0, 2),
            fmt_opt(c.p50_ms, 1.0, 1),
            fmt_opt(c.p99_ms, 1.0, 1)
        ));
    }
    for e in events.iter().rev().take(5) {
        out.push_str(&format!("  at {:>5.1}s: {}\n", e.at_s, e.what));
    }
    out.push_str("\nRows are what callers' sidecars saw; (served): what a workload's own sidecar\nanswered; (tcp): connections. Ctrl-C ends the demo and removes the mesh.\n");
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::Basic => "basic",
        Scenario::Canary => "canary",
        Scenario::Faults => "faults",
    }
}

/// `(tcp)` for opaque rows, `default` for the Service's own route.
fn route_name(row: &Row) -> &str {
    match (row.protocol, row.route.as_str()) {
        ("tcp", _) => "(tcp)",
        ("served", _) => "(served)",
        (_, "") => "default",
        (_, r) => r,
    }
}

fn print_summary(s: &Summary) {
    println!("\nSummary ({:.0}s, ended by {}):", s.seconds, s.ended_by);
    if let Some(c) = &s.client {
        println!(
            "  client → frontend: {} requests, {}% ok, p50 {} ms, p99 {} ms",
            c.requests,
            fmt_opt(c.success_rate, 100.0, 2),
            fmt_opt(c.p50_ms, 1.0, 1),
            fmt_opt(c.p99_ms, 1.0, 1)
        );
    }
    for r in &s.services {
        let row = Row {
            route: r.route.clone(),
            protocol: r.protocol,
            ..Row::default()
        };
        println!(
            "  {} {}: {} {}, {}% ok, {}% mTLS, {} retries",
            r.service,
            route_name(&row),
            r.requests,
            if r.protocol == "tcp" {
                "connections"
            } else {
                "requests"
            },
            fmt_opt(r.success_rate, 100.0, 2),
            fmt_opt(r.mtls_share, 100.0, 0),
            r.retries
        );
    }
}
