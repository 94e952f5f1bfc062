//! Route changes: rewrite an HTTPRoute and time, per affected stream, the
//! file write to the new version acknowledged; count the streams that were
//! sent a message they had no use for.
//!
//! Changes alternate between the hot route (the canary on svc-0, in every
//! view) and the cold one (on a Service only its subscribers hold). A Watch
//! stream holds everything, so every change affects every Watch stream.

use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::control::Watchdog;
use super::files::{write_cold_route, write_route};
use super::procfs::cpu_seconds;
use super::proxy::{Event, Fleet};
use super::views::key;
use super::{Change, FleetArgs, Results};
use crate::stats::summarize;

/// How long after the last affected ack the bench keeps counting messages
/// to unaffected streams.
const OBSERVE: Duration = Duration::from_secs(2);

/// A route to change and the streams whose view holds it.
#[derive(Debug)]
pub struct Target {
    /// svc-`service`; its route is the hot one when 0, the cold one else.
    pub service: usize,
    pub affected: Vec<bool>,
}

/// `args.changes` route changes, alternating `hot` and `cold` (hot only
/// when there is no cold Service), each measured; stops early when the
/// watchdog stopped the run.
#[allow(clippy::too_many_arguments)]
pub async fn measure_all(
    args: &FleetArgs,
    manifests: &Path,
    pid: u32,
    fleet: &mut Fleet,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    watchdog: &Watchdog,
    results: &mut Results,
    hot: &Target,
    cold: Option<&Target>,
) -> anyhow::Result<()> {
    let mut all = Vec::new();
    let mut landed_ms = Vec::new();
    for c in 0..args.changes {
        // A quiet second between changes (the last one was observed for
        // two more); take in anything late (a reconnect, say).
        drain_for(fleet, rx, Duration::from_secs(1)).await;
        // Each change of a route is the `nth` of that route.
        let (target, nth) = match cold {
            Some(cold) if c % 2 == 1 => (cold, c / 2),
            Some(_) => (hot, c / 2),
            None => (hot, c),
        };
        let (change, sample) =
            measure_one(args, manifests, pid, nth, target, fleet, rx, watchdog).await?;
        log(c, &change);
        if change.missing == 0 {
            landed_ms.push(change.ack.max_ms);
        }
        all.extend(sample);
        results.changes.push(change);
        if watchdog.stopped() {
            break;
        }
    }
    results.change_all = summarize(all);
    landed_ms.sort_by(f64::total_cmp);
    results.change_all_landed_ms_median =
        landed_ms.get(landed_ms.len() / 2).copied().unwrap_or(0.0);
    Ok(())
}

/// Takes in events for `d`.
async fn drain_for(fleet: &mut Fleet, rx: &mut mpsc::UnboundedReceiver<Event>, d: Duration) {
    let until = tokio::time::Instant::now() + d;
    while let Ok(Some(e)) = tokio::time::timeout_at(until, rx.recv()).await {
        fleet.apply(e, |_, _, _| {});
    }
}

/// The `nth` change of the target's route: the route rewritten, then acks taken in until every
/// affected stream has the new version (or the timeout), and for
/// [`OBSERVE`] more.
#[allow(clippy::too_many_arguments)]
async fn measure_one(
    args: &FleetArgs,
    manifests: &Path,
    pid: u32,
    nth: usize,
    target: &Target,
    fleet: &mut Fleet,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    watchdog: &Watchdog,
) -> anyhow::Result<(Change, Vec<Duration>)> {
    let n = fleet.acked.len();
    let affected = target.affected.iter().filter(|a| **a).count();
    let prev = fleet.acked.iter().copied().max().unwrap_or(0);
    let failures_before = fleet.failures;
    let (cp_cpu, bench_cpu) = (cpu_seconds(pid), cpu_seconds(std::process::id()));
    let (t0, wall0) = if target.service == 0 {
        // From 90 (as written at start) to 50, and back.
        write_route(manifests, if nth.is_multiple_of(2) { 50 } else { 90 })?
    } else {
        write_cold_route(manifests, target.service, nth + 1)?
    };
    let mut tally = Tally {
        prev,
        t0,
        affected: &target.affected,
        times: vec![None; n],
        unaffected: vec![false; n],
        landed: 0,
        version: 0,
    };
    let deadline = Instant::now() + args.timeout;
    while tally.landed < affected && !watchdog.stopped() {
        let Ok(Some(e)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await else {
            break;
        };
        tally.take(fleet, e);
    }
    let seconds = t0.elapsed().as_secs_f64();
    let (control_cpu_s, bench_cpu_s) = (
        cpu_seconds(pid) - cp_cpu,
        cpu_seconds(std::process::id()) - bench_cpu,
    );
    // Messages to streams that do not hold the Service come late, if at all.
    let until = tokio::time::Instant::now() + OBSERVE;
    while let Ok(Some(e)) = tokio::time::timeout_at(until, rx.recv()).await {
        tally.take(fleet, e);
    }
    let Tally {
        times,
        unaffected,
        landed,
        version,
        ..
    } = tally;
    let sample: Vec<Duration> = times.iter().flatten().copied().collect();
    let wall0_ms = wall0
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or_default();
    let change = Change {
        kind: if target.service == 0 { "hot" } else { "cold" },
        service: key(target.service),
        version,
        write_to_version_ms: if version > 0 {
            version as f64 - wall0_ms
        } else {
            0.0
        },
        affected,
        ack: summarize(sample.clone()),
        landed,
        missing: affected - landed,
        unaffected_received: unaffected.iter().filter(|u| **u).count(),
        stream_failures: fleet.failures - failures_before,
        control_cpu_s,
        bench_cpu_s,
        seconds,
    };
    Ok((change, sample))
}

/// What one change reached.
struct Tally<'a> {
    /// The newest version before the change.
    prev: u64,
    /// The file write.
    t0: Instant,
    affected: &'a [bool],
    /// Per stream: from the write to its ack of a newer version.
    times: Vec<Option<Duration>>,
    /// Unaffected streams that acked a newer version (were sent one).
    unaffected: Vec<bool>,
    landed: usize,
    version: u64,
}

impl Tally<'_> {
    fn take(&mut self, fleet: &mut Fleet, e: Event) {
        fleet.apply(e, |proxy, v, at| {
            if v <= self.prev {
                return;
            }
            if !self.affected.get(proxy).copied().unwrap_or(false) {
                self.unaffected[proxy] = true;
            } else if self.times[proxy].is_none() {
                self.times[proxy] = Some(at.saturating_duration_since(self.t0));
                self.landed += 1;
                self.version = self.version.max(v);
            }
        })
    }
}

fn log(c: usize, change: &Change) {
    eprintln!(
        "fleet: change {} ({} {}): {}/{} affected streams acked, {} unaffected received a message; \
         from the write: version built after {:.0} ms, acks p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         {} stream failures; CPU s: control {:.2}, bench {:.2}",
        c + 1,
        change.kind,
        change.service,
        change.landed,
        change.affected,
        change.unaffected_received,
        change.write_to_version_ms,
        change.ack.p50_ms,
        change.ack.p99_ms,
        change.ack.max_ms,
        change.stream_failures,
        change.control_cpu_s,
        change.bench_cpu_s,
    );
}
