//! The control plane under test: started from the benchmark's files, and
//! watched so that it cannot take the shared machine's memory.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::FleetArgs;
use super::procfs::rss;

/// A running `weft-control`, killed when dropped.
#[derive(Debug)]
pub struct Control {
    child: tokio::process::Child,
    pub pid: u32,
}

impl Control {
    /// Starts it (under `--control-wrap`) and waits for its `/ready`.
    pub async fn start(args: &FleetArgs, manifests: &Path) -> anyhow::Result<Control> {
        let work = &args.workdir;
        let log = std::fs::File::create(work.join("control.log"))?;
        let mut cmd = wrapped(args);
        cmd.arg("--ca-dir")
            .arg(work.join("ca"))
            .arg("--tokens")
            .arg(work.join("tokens.yaml"))
            .arg("--manifests")
            .arg(manifests)
            .arg("--grpc-listen")
            .arg(args.grpc.to_string())
            .arg("--admin-listen")
            .arg(args.admin.to_string())
            .arg("--debounce")
            .arg(&args.debounce);
        if let Some(ttl) = args.stale_ttl() {
            cmd.arg("--stale-proxy-ttl")
                .arg(format!("{}ms", ttl.as_millis()));
        }
        cmd.stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = cmd.spawn().context("starting weft-control")?;
        let pid = child.id().context("weft-control has no pid")?;
        let mut control = Control { child, pid };
        control.wait_ready(args.admin, work).await?;
        Ok(control)
    }

    async fn wait_ready(&mut self, admin: SocketAddr, work: &Path) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = http_get(admin, "/ready").await {
                break;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
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
            "fleet: control plane ready (pid {}) in {:?}",
            self.pid,
            started.elapsed()
        );
        Ok(())
    }

    /// SIGTERM, and up to 10 s for it to go.
    pub async fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// `weft-control`, or the `--control-wrap` command running it.
fn wrapped(args: &FleetArgs) -> tokio::process::Command {
    let wrap: Vec<String> = args
        .control_wrap
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .map(String::from)
        .collect();
    match wrap.split_first() {
        Some((prog, rest)) => {
            let mut c = tokio::process::Command::new(prog);
            c.args(rest).arg(&args.control_bin);
            c
        }
        None => tokio::process::Command::new(&args.control_bin),
    }
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

/// What the control plane's registry lists (`/status`): proxies, those
/// connected, and those current (synced to the newest version).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Listed {
    pub listed: usize,
    pub connected: usize,
    pub current: usize,
}

pub async fn listed(admin: SocketAddr) -> anyhow::Result<Listed> {
    let (code, text) = http_get(admin, "/status").await?;
    if code != 200 {
        bail!("/status answered {code}");
    }
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body).context("/status is not JSON")?;
    let proxies = v["proxies"]
        .as_array()
        .context("/status lists no proxies")?;
    let count = |field: &str| {
        proxies
            .iter()
            .filter(|p| p[field].as_bool() == Some(true))
            .count()
    };
    Ok(Listed {
        listed: proxies.len(),
        connected: count("connected"),
        current: count("current"),
    })
}

/// The watchdog: the machine is shared, so when the control plane (or this
/// process, which holds as many snapshots in flight) grows beyond the limit,
/// the control plane is stopped and the run reported as aborted.
#[derive(Debug, Clone)]
pub struct Watchdog {
    /// 0: running, 1: the control plane was too big, 2: this process was.
    aborted: Arc<AtomicU8>,
    /// The control plane's RSS at the last look, KiB.
    last_rss: Arc<AtomicU64>,
    limit_gib: f64,
}

impl Watchdog {
    pub fn start(pid: u32, limit_gib: f64) -> Watchdog {
        let dog = Watchdog {
            aborted: Arc::new(AtomicU8::new(0)),
            last_rss: Arc::new(AtomicU64::new(0)),
            limit_gib,
        };
        let (aborted, last_rss) = (dog.aborted.clone(), dog.last_rss.clone());
        let limit = (limit_gib * 1024.0 * 1024.0) as u64;
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
        dog
    }

    pub fn stopped(&self) -> bool {
        self.aborted.load(Ordering::SeqCst) != 0
    }

    pub fn last_rss(&self) -> u64 {
        self.last_rss.load(Ordering::SeqCst)
    }

    /// Why the run was stopped, if it was.
    pub fn reason(&self) -> Option<String> {
        match self.aborted.load(Ordering::SeqCst) {
            0 => None,
            1 => Some(format!(
                "the control plane went beyond {} GiB of RSS and was stopped",
                self.limit_gib
            )),
            _ => Some(format!(
                "the simulated proxies went beyond {} GiB of RSS and the run was stopped",
                self.limit_gib
            )),
        }
    }
}
