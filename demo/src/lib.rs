//! `weftctl demo`: a whole mesh on one Linux machine, no Kubernetes. The
//! control plane and every pod get a network namespace of their own, joined
//! by a bridge; each pod runs a test application and a real sidecar installed
//! through `weft-proxy init`, with strict mTLS mesh-wide and the sidecars'
//! DNS answering Service names. The demo drives load through it and shows the
//! sidecars' golden metrics live. Whatever ends it (Ctrl-C, SIGTERM, SIGHUP,
//! SIGQUIT, `--duration`, an error, a panic), everything it made is removed;
//! a run also removes what a killed run left behind.

mod args;
mod dashboard;
mod error;
mod load;
mod mesh;
mod prereq;
mod relay;
mod report;
mod scenario;
mod scrape;
mod spec;
mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use args::{Args, Scenario};
pub use error::Error;

use mesh::{Bins, Mesh};
use report::{Frame, RowSummary, Rows, Summary};
use scenario::{Action, Event, Timeline};
use scrape::Scrape;

/// Runs the demo to its end; `Ok(true)` when the client saw no failure worth
/// reporting (success rate at least 99%).
pub fn run(args: Args) -> Result<bool, Error> {
    prereq::check()?;
    let bins = Bins::find(args.bin_dir.as_deref())?;
    // Signals first, so a Ctrl-C while the mesh is being built still cleans up.
    let signalled = Arc::new(AtomicBool::new(false));
    {
        let signalled = signalled.clone();
        weft_netns::on_signal(move |_| signalled.store(true, Ordering::SeqCst))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    say(&args, "building the mesh (control plane, 8 pods)…");
    let mut mesh = build(&args, bins, &signalled, &stop)?;
    say(
        &args,
        &format!(
            "mesh ready; state in {}, manifests in {}",
            args.state_file.display(),
            mesh.manifests().display()
        ),
    );
    let result = observe(&args, &mut mesh, &signalled, &stop);
    stop.store(true, Ordering::SeqCst);
    let summary = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        report::print_summary(&summary);
    }
    say(&args, "removing the mesh…");
    drop(mesh);
    Ok(summary.healthy())
}

/// A progress line on stderr, unless the output is JSON.
fn say(args: &Args, msg: &str) {
    if !args.json {
        eprintln!("weftctl demo: {msg}");
    }
}

/// The mesh, ready: the control plane, every pod with its sidecar ready,
/// the OTLP relay when asked for, and the state file written.
fn build(
    args: &Args,
    bins: Bins,
    signalled: &AtomicBool,
    stop: &Arc<AtomicBool>,
) -> Result<Mesh, Error> {
    let mut mesh = Mesh::create(
        args.dir.clone(),
        args.state_file.clone(),
        bins,
        args.otlp_endpoint,
    )?;
    if let Some(collector) = args.otlp_endpoint {
        relay::start(&mesh, collector, stop.clone())?;
    }
    let specs = spec::pods(args.scenario.fail_rate());
    mesh.start_control(&specs, args.scenario.initial_v1())?;
    for spec in specs {
        if signalled.load(Ordering::SeqCst) {
            return Err(Error::Interrupted);
        }
        mesh.add_pod(spec)?;
    }
    mesh.wait_ready()?;
    open_to_host(args, &mut mesh, stop)?;
    mesh.write_state(args.scenario.name())?;
    Ok(mesh)
}

/// Makes the admin servers reachable from this machine, writes the
/// Prometheus scrape configuration, and serves the dashboard.
fn open_to_host(args: &Args, mesh: &mut Mesh, stop: &Arc<AtomicBool>) -> Result<(), Error> {
    let mut targets = vec![mesh.control_admin()];
    targets.extend(mesh.pods.iter().map(|p| p.admin()));
    let exposed = relay::expose(mesh, &targets, stop.clone())?;
    let (control_admin, pod_admins) = exposed
        .split_first()
        .ok_or(Error::Missing("the control plane's relay"))?;
    let mut host = mesh::HostAccess {
        control_admin: *control_admin,
        pod_admins: pod_admins.to_vec(),
        prometheus_config: mesh.dir.join("prometheus.yml"),
        dashboard: None,
    };
    std::fs::write(&host.prometheus_config, mesh.prometheus_yaml(&host)).map_err(Error::io(
        format!("writing {}", host.prometheus_config.display()),
    ))?;
    if !args.no_dashboard {
        let control = format!("http://{control_admin}");
        let addr = dashboard::start(args, &control, stop.clone())?;
        let url = format!("http://{addr}");
        say(
            args,
            &format!("dashboard on {url} (or: weftctl dashboard --control-plane {control})"),
        );
        host.dashboard = Some(url);
    }
    say(
        args,
        &format!(
            "control plane admin on http://{control_admin}; Prometheus: prometheus --config.file={}",
            host.prometheus_config.display()
        ),
    );
    mesh.host = Some(host);
    Ok(())
}

/// Drives the load and the scenario, shows the table, and sums the run up
/// once a signal or `--duration` ends it.
fn observe(
    args: &Args,
    mesh: &mut Mesh,
    signalled: &AtomicBool,
    stop: &Arc<AtomicBool>,
) -> Result<Summary, Error> {
    let outcomes = Arc::new(Mutex::new(load::Outcomes::default()));
    let loader = start_load(mesh, args.rate, &outcomes, stop)?;
    let (tx, rx) = mpsc::channel::<Scrape>();
    let scraper = start_scraper(mesh, tx, stop)?;
    let mut seen = Seen::new(args, mesh.host.as_ref());
    let ended_by = loop {
        std::thread::sleep(Duration::from_millis(100));
        if signalled.load(Ordering::SeqCst) {
            break "signal";
        }
        let elapsed = seen.start.elapsed();
        if args.duration.is_some_and(|d| elapsed >= d) {
            break "duration";
        }
        seen.act(mesh, elapsed)?;
        if let Ok(scrape) = rx.try_recv() {
            seen.record(scrape, &outcomes, args);
        }
    };
    stop.store(true, Ordering::SeqCst);
    join(loader, "the load generator")?;
    join(scraper, "the scraper")?;
    let client = outcomes.lock().map(|o| o.summary()).ok();
    Ok(seen.summary(args, ended_by, client, mesh.pods.len()))
}

/// The client, inside the loadgen pod (so its sidecar carries the requests).
fn start_load(
    mesh: &Mesh,
    rate: u32,
    outcomes: &Arc<Mutex<load::Outcomes>>,
    stop: &Arc<AtomicBool>,
) -> Result<JoinHandle<Result<(), weft_netns::Error>>, Error> {
    let frontend = mesh
        .services
        .iter()
        .find(|s| s.name == "frontend")
        .map(|s| SocketAddr::from((s.vip, 80)))
        .ok_or(Error::Missing("frontend Service"))?;
    let client = mesh
        .pods
        .iter()
        .find(|p| p.spec.app == spec::App::Client)
        .ok_or(Error::Missing("client pod"))?;
    let host = format!("frontend.{}", spec::NAMESPACE);
    let (outcomes, stop) = (outcomes.clone(), stop.clone());
    let thread = client.ns.thread("weftctl-load", move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt {
            rt.block_on(load::drive(frontend, host, rate, outcomes, stop));
        }
    })?;
    Ok(thread)
}

/// The scraper, on the bridge (it reaches every pod's admin port).
fn start_scraper(
    mesh: &Mesh,
    tx: mpsc::Sender<Scrape>,
    stop: &Arc<AtomicBool>,
) -> Result<JoinHandle<Result<(), weft_netns::Error>>, Error> {
    let admins: Vec<scrape::Target> = mesh
        .pods
        .iter()
        .map(|p| {
            let workload = p
                .spec
                .serves_http()
                .then(|| format!("{} {}", p.spec.service, p.spec.version));
            (workload, p.admin())
        })
        .collect();
    let control = mesh.control_admin();
    let stop = stop.clone();
    let thread = mesh.bridge.thread("weftctl-scrape", move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt {
            rt.block_on(scrape::scrape_loop(admins, control, tx, stop));
        }
    })?;
    Ok(thread)
}

fn join(
    thread: JoinHandle<Result<(), weft_netns::Error>>,
    what: &'static str,
) -> Result<(), Error> {
    thread.join().map_err(|_| Error::Panicked(what))??;
    Ok(())
}

/// What the run has seen so far: the scenario's progress, the first and the
/// latest rows, and the latest scrape.
#[derive(Debug)]
struct Seen {
    start: Instant,
    timeline: Timeline,
    events: Vec<Event>,
    first: Option<Rows>,
    latest: Option<Rows>,
    last_scrape: Option<Scrape>,
    /// The table's lines on where to look further.
    links: String,
}

impl Seen {
    fn new(args: &Args, host: Option<&mesh::HostAccess>) -> Seen {
        let links = host.map_or_else(String::new, |h| {
            let dashboard = h
                .dashboard
                .as_ref()
                .map_or_else(String::new, |d| format!("Dashboard: {d}   "));
            format!(
                "\n{dashboard}control plane: http://{}   Prometheus: prometheus --config.file={}\n",
                h.control_admin,
                h.prometheus_config.display()
            )
        });
        Seen {
            start: Instant::now(),
            timeline: Timeline::new(args.scenario, args.duration),
            events: Vec::new(),
            first: None,
            latest: None,
            last_scrape: None,
            links,
        }
    }

    /// Does what the scenario has due by `elapsed`.
    fn act(&mut self, mesh: &mut Mesh, elapsed: Duration) -> Result<(), Error> {
        for action in self.timeline.due(elapsed) {
            let what = match action {
                Action::Weights(v1) => {
                    mesh.write_manifest("route-backend.yaml", &spec::route_yaml(v1))?;
                    format!("route backend: v1 {v1}%, v2 {}%", 100 - v1)
                }
                Action::Kill(pod) => {
                    mesh.kill_app(pod);
                    format!("killed the application of {pod}")
                }
            };
            self.events.push(Event {
                at_s: elapsed.as_secs_f64(),
                what,
            });
        }
        Ok(())
    }

    /// Takes in a scrape, and redraws the table unless the output is JSON.
    fn record(&mut self, scrape: Scrape, outcomes: &Mutex<load::Outcomes>, args: &Args) {
        let tcp_services = [(spec::spiffe("db"), format!("db.{}:6379", spec::NAMESPACE))];
        let rows = stats::rows(&scrape.proxies, &tcp_services.into_iter().collect());
        if self.first.is_none() {
            self.first = Some(rows.clone());
        }
        if !args.json {
            let client = outcomes.lock().map(|o| o.summary()).ok();
            Frame {
                rows: &rows,
                prev: self.latest.as_ref(),
                scrape: &scrape,
                client: client.as_ref(),
                elapsed: self.start.elapsed(),
                events: &self.events,
                links: &self.links,
            }
            .print(args);
        }
        self.latest = Some(rows);
        self.last_scrape = Some(scrape);
    }

    fn summary(
        self,
        args: &Args,
        ended_by: &'static str,
        client: Option<load::ClientSummary>,
        proxies: usize,
    ) -> Summary {
        Summary {
            scenario: args.scenario,
            ended_by,
            seconds: self.start.elapsed().as_secs_f64(),
            client,
            services: RowSummary::over_run(self.first.as_ref(), self.latest.as_ref()),
            proxies_up: self.last_scrape.as_ref().map_or(0, |s| s.up),
            proxies,
            control_plane_up: self.last_scrape.as_ref().is_some_and(|s| s.control_up),
            events: self.events,
        }
    }
}
