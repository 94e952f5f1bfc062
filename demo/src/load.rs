//! The demo's client: GETs at a fixed rate from inside the `loadgen` pod (so
//! its sidecar carries them), and what it saw, from the caller's side.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

/// Outcomes so far. Latencies are kept in a fixed log-scale histogram, so
/// memory does not grow with the run's length.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub requests: u64,
    pub ok: u64,
    /// By status code (0: no response at all).
    pub statuses: std::collections::BTreeMap<u16, u64>,
    buckets: Vec<u64>,
}

/// Bucket `i` holds latencies below `BASE * GROWTH^i` ms.
const BASE: f64 = 0.1;
const GROWTH: f64 = 1.1;
const BUCKETS: usize = 130;

impl Outcomes {
    fn record(&mut self, status: u16, latency: Duration) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; BUCKETS];
        }
        self.requests += 1;
        if (200..300).contains(&status) {
            self.ok += 1;
        }
        *self.statuses.entry(status).or_default() += 1;
        let ms = latency.as_secs_f64() * 1000.0;
        let i = if ms <= BASE {
            0
        } else {
            ((ms / BASE).ln() / GROWTH.ln()).ceil() as usize
        };
        self.buckets[i.min(BUCKETS - 1)] += 1;
    }

    /// The `q` quantile in ms (the upper bound of its bucket).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let want = (q * self.requests as f64).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want.max(1) {
                return Some(BASE * GROWTH.powi(i as i32));
            }
        }
        None
    }

    pub fn summary(&self) -> ClientSummary {
        ClientSummary {
            requests: self.requests,
            ok: self.ok,
            success_rate: (self.requests > 0).then(|| self.ok as f64 / self.requests as f64),
            p50_ms: self.quantile(0.5),
            p99_ms: self.quantile(0.99),
            statuses: self
                .statuses
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientSummary {
    pub requests: u64,
    pub ok: u64,
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Responses by status code; `0` counts requests with no response.
    pub statuses: std::collections::BTreeMap<String, u64>,
}

/// Sends `rate` GETs a second to `target` until `stop`; runs on a thread
/// inside the client pod's namespace.
pub async fn drive(
    target: SocketAddr,
    host: String,
    rate: u32,
    outcomes: Arc<Mutex<Outcomes>>,
    stop: Arc<AtomicBool>,
) {
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(10))
        .build_http::<Empty<Bytes>>();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let url = format!("http://{target}/");
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let (client, outcomes, url, host) =
            (client.clone(), outcomes.clone(), url.clone(), host.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let req = http::Request::get(url.as_str())
                .header(http::header::HOST, host)
                .body(Empty::new());
            let status = match req {
                Ok(req) => {
                    match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                        Ok(Ok(res)) => {
                            let status = res.status().as_u16();
                            // The body too: a response that breaks midway is a failure.
                            match res.into_body().collect().await {
                                Ok(_) => status,
                                Err(_) => 0,
                            }
                        }
                        _ => 0,
                    }
                }
                Err(_) => 0,
            };
            if let Ok(mut o) = outcomes.lock() {
                o.record(status, start.elapsed());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_histogram() {
        let mut o = Outcomes::default();
        for ms in 1..=100 {
            o.record(200, Duration::from_millis(ms));
        }
        o.record(503, Duration::from_millis(5));
        assert_eq!((o.requests, o.ok), (101, 100));
        let p50 = o.quantile(0.5).unwrap();
        assert!((45.0..60.0).contains(&p50), "{p50}");
        let p99 = o.quantile(0.99).unwrap();
        assert!((95.0..115.0).contains(&p99), "{p99}");
        assert_eq!(o.summary().statuses["503"], 1);
    }
}
