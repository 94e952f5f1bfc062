//! First use at scale: sampled Discover proxies each subscribe to one
//! Service they do not hold yet, as a proxy does when its app first calls
//! it; the time from the request sent to a message carrying that Service is
//! what the app's first request waits.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use super::discover::Command;
use super::proxy::{Event, Fleet};
use super::views::{Mesh, key};
use crate::stats::{Summary, summarize};

/// Subscriptions are asked for at this pace (a busy fleet's worth of first
/// calls, not one burst).
const EVERY: Duration = Duration::from_millis(1);

#[derive(Debug, Default, Serialize)]
pub struct FirstUse {
    /// Proxies asked (one Service each).
    pub asked: usize,
    pub answered: usize,
    /// Subscriptions sent per second.
    pub pace_per_second: f64,
    /// From the subscription sent to the message carrying it received.
    pub latency: Summary,
    pub stream_failures: usize,
}

/// Up to `samples` proxies, spread over the fleet, each subscribe to a
/// Service outside their view (added to `subs`); waits up to `timeout` for
/// the answers.
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    samples: usize,
    mesh: &Mesh,
    subs: &mut [BTreeSet<usize>],
    commands: &[mpsc::UnboundedSender<Command>],
    fleet: &mut Fleet,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    timeout: Duration,
) -> FirstUse {
    let n = commands.len();
    let samples = samples.min(n);
    let before = fleet.first_uses.len();
    let failures_before = fleet.failures;
    let mut asked = 0usize;
    let start = tokio::time::Instant::now();
    let mut next = start;
    for s in 0..samples {
        let i = s * n / samples;
        let Some(k) = mesh.unused(i, &mesh.view(&subs[i])) else {
            continue;
        };
        while let Ok(Some(e)) = tokio::time::timeout_at(next, rx.recv()).await {
            fleet.apply(e, |_, _, _| {});
        }
        next += EVERY;
        if commands[i].send(Command::Subscribe(key(k))).is_ok() {
            subs[i].insert(k);
            asked += 1;
        }
    }
    let pace = asked as f64 / start.elapsed().as_secs_f64().max(1e-9);
    let deadline = tokio::time::Instant::now() + timeout;
    while fleet.first_uses.len() - before < asked {
        let Ok(Some(e)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        fleet.apply(e, |_, _, _| {});
    }
    let took: Vec<Duration> = fleet.first_uses[before..].iter().map(|u| u.1).collect();
    let r = FirstUse {
        asked,
        answered: took.len(),
        pace_per_second: pace,
        latency: summarize(took),
        stream_failures: fleet.failures - failures_before,
    };
    eprintln!(
        "fleet: first use: {}/{} subscriptions answered ({:.0}/s asked); p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.answered,
        r.asked,
        r.pace_per_second,
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.latency.max_ms
    );
    r
}
