//! Route changes: rewrite the HTTPRoute, and time, per stream, the file
//! write to the new version acknowledged.

use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::control::Watchdog;
use super::files::write_route;
use super::procfs::cpu_seconds;
use super::proxy::{Event, Fleet};
use super::{Change, FleetArgs, Results};
use crate::stats::summarize;

/// `args.changes` route changes, two seconds apart, each measured; stops
/// early when the watchdog stopped the run.
pub async fn measure_all(
    args: &FleetArgs,
    manifests: &Path,
    pid: u32,
    fleet: &mut Fleet,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    watchdog: &Watchdog,
    results: &mut Results,
) -> anyhow::Result<()> {
    let mut all = Vec::new();
    let mut landed_ms = Vec::new();
    for c in 0..args.changes {
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Take in anything late (a reconnect, say).
        while let Ok(e) = rx.try_recv() {
            fleet.apply(e, |_, _, _| {});
        }
        let weight = if c % 2 == 0 { 50 } else { 90 };
        let (change, sample) =
            measure_one(args, manifests, pid, weight, fleet, rx, watchdog).await?;
        log(c, &change, fleet.acked.len());
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

/// One change: the route rewritten with `weight` to svc-0, then acks taken
/// in until every stream has the new version (or the timeout).
async fn measure_one(
    args: &FleetArgs,
    manifests: &Path,
    pid: u32,
    weight: u32,
    fleet: &mut Fleet,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    watchdog: &Watchdog,
) -> anyhow::Result<(Change, Vec<Duration>)> {
    let n = fleet.acked.len();
    let prev = fleet.acked.iter().copied().max().unwrap_or(0);
    let failures_before = fleet.failures;
    let (cp_cpu, bench_cpu) = (cpu_seconds(pid), cpu_seconds(std::process::id()));
    let (t0, wall0) = write_route(manifests, weight)?;
    let mut times = vec![None::<Duration>; n];
    let mut landed = 0usize;
    let mut version = 0u64;
    let deadline = Instant::now() + args.timeout;
    while landed < n && !watchdog.stopped() {
        let Ok(Some(e)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await else {
            break;
        };
        fleet.apply(e, |proxy, v, at| {
            if v > prev && times[proxy].is_none() {
                times[proxy] = Some(at.saturating_duration_since(t0));
                landed += 1;
                version = version.max(v);
            }
        });
    }
    let seconds = t0.elapsed().as_secs_f64();
    let sample: Vec<Duration> = times.iter().flatten().copied().collect();
    let wall0_ms = wall0
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or_default();
    let change = Change {
        version,
        write_to_version_ms: if version > 0 {
            version as f64 - wall0_ms
        } else {
            0.0
        },
        ack: summarize(sample.clone()),
        landed,
        missing: n - landed,
        stream_failures: fleet.failures - failures_before,
        control_cpu_s: cpu_seconds(pid) - cp_cpu,
        bench_cpu_s: cpu_seconds(std::process::id()) - bench_cpu,
        seconds,
    };
    Ok((change, sample))
}

fn log(c: usize, change: &Change, n: usize) {
    eprintln!(
        "fleet: change {}: {}/{n} acked; from the write: version built after {:.0} ms, \
         acks p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} stream failures; CPU s: control {:.2}, bench {:.2}",
        c + 1,
        change.landed,
        change.write_to_version_ms,
        change.ack.p50_ms,
        change.ack.p99_ms,
        change.ack.max_ms,
        change.stream_failures,
        change.control_cpu_s,
        change.bench_cpu_s,
    );
}
