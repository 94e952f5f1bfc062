//! `weftctl dashboard`: a web page of what the mesh is doing — a live graph
//! of workloads and the calls between them, per Service and route golden
//! metrics with sparklines, every proxy's identity, certificate and config,
//! and the answers proxies generated (`weft-error`), with links into Jaeger.
//!
//! It reads the control plane's `/status` and every proxy's metrics (through
//! the control plane, or from a Prometheus that scrapes them) every
//! `--interval`, turns counters into increases ([`counters`]), sums them
//! into edges and rows ([`aggregate`]), keeps a few minutes of them
//! ([`history`]) and sends the page one JSON picture ([`view`]) per read.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod aggregate;
pub mod counters;
pub mod history;
pub mod server;
pub mod source;
pub mod status;
pub mod text;
pub mod view;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::aggregate::{Directory, Round};
use crate::counters::{Counters, PodKey};
use crate::history::History;
use crate::source::Reader;
use crate::view::{Gauges, Inputs};

/// `weftctl dashboard`'s options (the control plane's address is
/// weftctl's `--control-plane`).
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// The address to serve the page on. The default answers this machine
    /// only; `0.0.0.0` answers anyone who can reach it (the page is
    /// read-only, but shows the mesh's names and numbers).
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    /// The port to serve the page on (0: any free port, printed).
    #[arg(long, short = 'p', default_value_t = 9900)]
    pub port: u16,
    #[command(flatten)]
    pub read: ReadArgs,
}

/// How and what the dashboard reads (shared with `weftctl demo`).
#[derive(Clone, Debug, clap::Args)]
pub struct ReadArgs {
    /// Read the proxies' metrics from this Prometheus (e.g.
    /// `http://prometheus.monitoring:9090`) instead of through the control
    /// plane; its series must carry `namespace` and `pod` target labels, as
    /// k8s/addons/prometheus/scrape-config.yaml sets them. The control plane
    /// is still read for the proxies' status.
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// Jaeger's UI, for the links to a Service's traces.
    #[arg(
        long,
        value_name = "URL",
        env = "WEFT_JAEGER_UI",
        default_value = "http://127.0.0.1:16686"
    )]
    pub jaeger: String,
    /// How often to read everything and update the page.
    #[arg(long, default_value = "2s", value_parser = weft_api::duration::parse)]
    pub interval: Duration,
    /// The window rates, success rates and latencies are taken over.
    #[arg(long, default_value = "30s", value_parser = weft_api::duration::parse)]
    pub window: Duration,
    /// How much the sparklines show.
    #[arg(long, default_value = "5m", value_parser = weft_api::duration::parse)]
    pub history: Duration,
    /// A host name the page may be opened by besides an IP address and
    /// `localhost` (repeatable); other names are refused, so that no web
    /// site can read the page through DNS rebinding.
    #[arg(long, value_name = "NAME")]
    pub allowed_host: Vec<String>,
}

impl Default for ReadArgs {
    /// The flags' defaults.
    fn default() -> Self {
        ReadArgs {
            prometheus: None,
            jaeger: "http://127.0.0.1:16686".into(),
            interval: Duration::from_secs(2),
            window: Duration::from_secs(30),
            history: Duration::from_secs(300),
            allowed_host: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{flag} {value:?}: {why}")]
    BadFlag {
        flag: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("cannot serve the dashboard on {addr}: {source} (choose another with --port)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl ReadArgs {
    /// Checks the flags, naming the one that is wrong.
    pub fn check(&self, control_plane: &str) -> Result<(), Error> {
        let url = |flag: &'static str, v: &str| {
            let ok = v
                .parse::<http::Uri>()
                .is_ok_and(|u| u.scheme_str() == Some("http") && u.host().is_some());
            if ok {
                Ok(())
            } else {
                Err(Error::BadFlag {
                    flag,
                    value: v.to_string(),
                    why: "must be an http:// URL",
                })
            }
        };
        url("--control-plane", control_plane)?;
        if let Some(p) = &self.prometheus {
            url("--prometheus", p)?;
        }
        if !self.jaeger.starts_with("http://") && !self.jaeger.starts_with("https://") {
            return Err(Error::BadFlag {
                flag: "--jaeger",
                value: self.jaeger.clone(),
                why: "must be an http:// or https:// URL",
            });
        }
        let d = |flag, d: Duration, why| Error::BadFlag {
            flag,
            value: humantime::format_duration(d).to_string(),
            why,
        };
        if self.interval < Duration::from_millis(200) {
            return Err(d("--interval", self.interval, "must be at least 200ms"));
        }
        if self.window < self.interval {
            return Err(d("--window", self.window, "must be at least --interval"));
        }
        if self.history < self.window {
            return Err(d("--history", self.history, "must be at least --window"));
        }
        Ok(())
    }
}

/// Binds, says where, and serves until the process ends.
pub async fn run(args: Args, control_plane: &str) -> Result<(), Error> {
    args.read.check(control_plane)?;
    let addr = SocketAddr::new(args.address, args.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    eprintln!("weftctl dashboard: http://{local} (reading {control_plane}; Ctrl-C ends it)");
    serve(listener, control_plane, &args.read).await;
    Ok(())
}

/// Reads every `interval` and serves the page on `listener`, until dropped.
pub async fn serve(listener: TcpListener, control_plane: &str, args: &ReadArgs) {
    let (tx, rx) = watch::channel(None);
    let router = server::router(rx, args.allowed_host.clone());
    let refresher = Refresher::new(control_plane, args);
    tokio::select! {
        () = refresher.run(tx) => {}
        () = server::serve(listener, router) => {}
    }
}

/// Reads, and publishes a new picture after every read.
#[derive(Debug)]
struct Refresher {
    reader: Reader,
    source: String,
    control_plane: String,
    args: ReadArgs,
    counters: Counters,
    history: History,
    gauges: HashMap<PodKey, Gauges>,
    /// The last status read: the page keeps showing the mesh while the
    /// control plane cannot be reached (and says so).
    status: Option<status::Status>,
}

impl Refresher {
    fn new(control_plane: &str, args: &ReadArgs) -> Refresher {
        let reader = Reader::new(control_plane, args.prometheus.as_deref());
        Refresher {
            source: reader.source(),
            reader,
            control_plane: control_plane.to_string(),
            args: args.clone(),
            counters: Counters::default(),
            history: History::new(args.history),
            gauges: HashMap::new(),
            status: None,
        }
    }

    async fn run(mut self, tx: watch::Sender<Option<Arc<str>>>) {
        let mut tick = tokio::time::interval(self.args.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            tick.tick().await;
            let read = self.reader.read().await;
            let now = tokio::time::Instant::now();
            let seconds = last.map_or(0.0, |l| (now - l).as_secs_f64());
            last = Some(now);
            let json = self.take(read, seconds);
            if tx.send(Some(json.into())).is_err() {
                return;
            }
        }
    }

    /// Takes in one read; the new picture as JSON.
    fn take(&mut self, read: source::Read, seconds: f64) -> String {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let status_error = match read.status {
            Ok(status) => {
                let listed: HashSet<PodKey> = status.proxies.iter().map(|p| p.key()).collect();
                let increases = self.counters.advance(read.proxies, &listed);
                self.gauges.retain(|k, _| listed.contains(k));
                for (pod, samples) in &increases {
                    self.gauges.insert(pod.clone(), Gauges::read(samples));
                }
                let dir = Directory::new(&status);
                self.history
                    .push(at_ms, Round::build(seconds, &dir, &increases));
                self.status = Some(status);
                None
            }
            // Without the status nothing can be placed: keep what we had.
            Err(e) => Some(e),
        };
        let model = view::model(&Inputs {
            at_ms,
            source: &self.source,
            control_plane: &self.control_plane,
            status: self.status.as_ref(),
            status_error: status_error.as_deref(),
            window: self.args.window,
            history: &self.history,
            gauges: &self.gauges,
            unread: &read.unread,
            jaeger: &self.args.jaeger,
        });
        serde_json::to_string(&model).unwrap_or_default()
    }
}
