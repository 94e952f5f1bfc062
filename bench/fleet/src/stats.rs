//! Percentiles over a set of durations.

use std::time::Duration;

use serde::Serialize;

/// Summary of a latency sample, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub count: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of a sorted sample.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn summarize(mut sample: Vec<Duration>) -> Summary {
    sample.sort_unstable();
    if sample.is_empty() {
        return Summary::default();
    }
    let total: Duration = sample.iter().sum();
    Summary {
        count: sample.len(),
        min_ms: ms(sample[0]),
        p50_ms: ms(pct(&sample, 50.0)),
        p90_ms: ms(pct(&sample, 90.0)),
        p99_ms: ms(pct(&sample, 99.0)),
        p999_ms: ms(pct(&sample, 99.9)),
        max_ms: ms(sample[sample.len() - 1]),
        mean_ms: ms(total / sample.len() as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let sum = summarize(s);
        assert_eq!(sum.p50_ms, 50.0);
        assert_eq!(sum.p99_ms, 99.0);
        assert_eq!(sum.max_ms, 100.0);
        assert_eq!(sum.min_ms, 1.0);
    }
}
