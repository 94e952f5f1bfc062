//! Peak-EWMA: a latency estimate that jumps up to a slower observation at
//! once and decays down slowly, so a slow endpoint is avoided quickly and
//! tried again only gradually (Finagle's, tower's and linkerd2-proxy's).

use std::time::Duration;

use tokio::time::Instant;

/// How fast old observations are forgotten.
const DECAY: Duration = Duration::from_secs(10);
/// The latency assumed of an endpoint not yet measured: low enough that a
/// new endpoint gets tried soon, and it decays like any other estimate.
pub(crate) const DEFAULT_RTT: Duration = Duration::from_millis(5);

#[derive(Debug)]
pub(crate) struct PeakEwma {
    cost_ns: f64,
    stamp: Instant,
}

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma {
            cost_ns: DEFAULT_RTT.as_nanos() as f64,
            stamp: Instant::now(),
        }
    }
}

impl PeakEwma {
    /// The estimate now, in nanoseconds.
    pub(crate) fn cost(&self, now: Instant) -> f64 {
        self.cost_ns * self.weight(now)
    }

    /// How much of the last estimate is left after the time since it.
    fn weight(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        (-elapsed / DECAY.as_secs_f64()).exp()
    }

    pub(crate) fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let current = self.cost(now);
        self.cost_ns = if rtt > current {
            rtt
        } else {
            let w = self.weight(now);
            current * w + rtt * (1.0 - w)
        };
        self.stamp = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn jumps_up_at_once_and_decays_slowly() {
        let mut e = PeakEwma::default();
        let ms = |ns: f64| ns / 1e6;
        assert!((ms(e.cost(Instant::now())) - 5.0).abs() < 0.01);
        e.observe(Duration::from_millis(100), Instant::now());
        assert!(
            (ms(e.cost(Instant::now())) - 100.0).abs() < 0.01,
            "a peak is taken at once"
        );
        tokio::time::advance(DECAY).await;
        let decayed = ms(e.cost(Instant::now()));
        assert!(
            (decayed - 100.0 / std::f64::consts::E).abs() < 0.5,
            "{decayed}"
        );
        // A fast answer pulls the estimate down, but not all the way.
        e.observe(Duration::from_millis(1), Instant::now());
        let after = ms(e.cost(Instant::now()));
        assert!(after > 1.0 && after < decayed, "{after}");
    }
}
