//! Reading every sidecar's `/metrics` and the control plane's `/status`
//! once a second, from the bridge (which reaches every pod's admin port).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::stats;

/// A sidecar to scrape: its workload (`backend v2`) when it serves HTTP,
/// and its admin address.
pub type Target = (Option<String>, SocketAddr);

/// One round of `/metrics` from every sidecar.
#[derive(Debug)]
pub struct Scrape {
    /// Per reachable sidecar: its workload when it serves HTTP, and its
    /// samples.
    pub proxies: Vec<(Option<String>, Vec<stats::Sample>)>,
    pub up: usize,
    /// Sidecars scraped (up or not).
    pub total: usize,
    pub control_up: bool,
    /// Proxies the control plane reports connected and current.
    pub current: usize,
}

/// Sends a [`Scrape`] every second until `stop` (or the receiver goes).
pub async fn scrape_loop(
    admins: Vec<Target>,
    control: SocketAddr,
    tx: mpsc::Sender<Scrape>,
    stop: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if tx.send(scrape(&admins, control).await).is_err() {
            return;
        }
    }
}

async fn scrape(admins: &[Target], control: SocketAddr) -> Scrape {
    let mut proxies = Vec::new();
    for (workload, a) in admins {
        if let Some((200, text)) = get(*a, "/metrics").await {
            proxies.push((workload.clone(), stats::parse(&text)));
        }
    }
    let status = get(control, "/status").await;
    let current = status
        .as_ref()
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok())
        .and_then(|v| {
            v["proxies"]
                .as_array()
                .map(|ps| ps.iter().filter(|p| p["current"] == true).count())
        })
        .unwrap_or(0);
    Scrape {
        up: proxies.len(),
        proxies,
        total: admins.len(),
        control_up: status.is_some(),
        current,
    }
}

/// GET `path` on `addr`: (status, body), or nothing when it cannot be
/// reached within two seconds (a pod that is down, for the table).
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = format!("http://{addr}{path}").parse().ok()?;
    let limit = Duration::from_secs(2);
    let res = tokio::time::timeout(limit, client.get(uri))
        .await
        .ok()?
        .ok()?;
    let status = res.status().as_u16();
    let body = tokio::time::timeout(limit, res.into_body().collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}
