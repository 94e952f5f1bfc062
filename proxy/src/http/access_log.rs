//! The optional access log: one JSON line per request, written by a task of
//! its own through a bounded queue, so a slow disk never slows a request
//! (lines that do not fit are dropped and counted).

use std::path::PathBuf;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::warn;

/// Lines waiting to be written, at most.
const QUEUE: usize = 4096;

#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: mpsc::Sender<String>,
    dropped: prometheus_client::metrics::counter::Counter,
}

/// One request, as logged.
#[derive(Debug)]
pub struct Entry<'a> {
    pub direction: &'static str,
    pub trace_id: &'a str,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration_ms: f64,
    pub peer_identity: &'a str,
    pub upstream: Option<std::net::SocketAddr>,
    pub retries: u32,
    pub weft_error: &'a str,
    /// The authorization policy that decided (or audited) the request.
    pub policy: &'a str,
    /// The rate limit that refused the request (empty: none did).
    pub rate_limit: &'a str,
    /// The fault injected (`delay`, `abort`, `delay,abort`; empty: none).
    pub fault: &'a str,
}

impl AccessLog {
    /// Writes to `path`, or stdout for `-`.
    pub fn start(
        path: PathBuf,
        dropped: prometheus_client::metrics::counter::Counter,
    ) -> AccessLog {
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        tokio::spawn(async move {
            let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if path.as_os_str() == "-"
            {
                Box::new(tokio::io::stdout())
            } else {
                match tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .await
                {
                    Ok(f) => Box::new(f),
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "cannot open the access log; it is off");
                        return;
                    }
                }
            };
            while let Some(line) = rx.recv().await {
                if out.write_all(line.as_bytes()).await.is_err() || out.flush().await.is_err() {
                    warn!("writing the access log failed; it is off");
                    return;
                }
            }
        });
        AccessLog { tx, dropped }
    }

    pub fn log(&self, e: Entry<'_>) {
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let line = json!({
            "time": time,
            "direction": e.direction,
            "trace_id": e.trace_id,
            "method": e.method,
            "authority": e.authority,
            "path": e.path,
            "status": e.status,
            "duration_ms": (e.duration_ms * 1000.0).round() / 1000.0,
            "peer_identity": e.peer_identity,
            "upstream": e.upstream.map(|a| a.to_string()),
            "retries": e.retries,
            "weft_error": e.weft_error,
            "policy": e.policy,
            "rate_limit": e.rate_limit,
            "fault": e.fault,
        })
        .to_string()
            + "\n";
        if self.tx.try_send(line).is_err() {
            self.dropped.inc();
        }
    }
}
