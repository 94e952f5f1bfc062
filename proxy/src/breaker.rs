//! Circuit breaking by outlier detection: an endpoint that fails
//! `consecutive_failures` times in a row is ejected for a while, longer each
//! time it is ejected again before a success, and never so many endpoints
//! that more than `max_ejection_percent` of a Service is out.

use std::time::Duration;

use tokio::time::Instant;
use weft_api::v1::OutlierDetection;

/// Ejections double the base time up to this many times (32×).
const MAX_DOUBLINGS: u32 = 5;

/// One endpoint's failure count and ejection.
#[derive(Debug, Default)]
pub(crate) struct Ejection {
    consecutive: u32,
    ejections: u32,
    until: Option<Instant>,
}

impl Ejection {
    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    /// Records an outcome; true when this failure ejected the endpoint. The
    /// time is the base doubled per ejection since the last success, with
    /// up to 25% jitter; `may_eject` is false when the cap is reached.
    pub(crate) fn record(
        &mut self,
        success: bool,
        cfg: &OutlierDetection,
        may_eject: bool,
        now: Instant,
    ) -> bool {
        if success {
            self.consecutive = 0;
            self.ejections = 0;
            return false;
        }
        self.consecutive += 1;
        if cfg.consecutive_failures == 0
            || self.consecutive < cfg.consecutive_failures
            || !may_eject
        {
            return false;
        }
        let base = Duration::from_millis(u64::from(cfg.base_ejection_ms));
        let time = base
            .saturating_mul(1 << self.ejections.min(MAX_DOUBLINGS))
            .mul_f64(1.0 + rand::random::<f64>() * 0.25);
        self.until = Some(now + time);
        self.ejections += 1;
        self.consecutive = 0;
        true
    }
}

/// Whether one more of `total` endpoints may be ejected when `out` are.
pub(crate) fn may_eject(out: usize, total: usize, max_percent: u32) -> bool {
    (out + 1) * 100 <= max_percent as usize * total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierDetection {
        OutlierDetection {
            consecutive_failures: 2,
            base_ejection_ms: 1_000,
            max_ejection_percent: 50,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_end_and_grow_until_a_success() {
        let mut e = Ejection::default();
        assert!(!e.record(false, &cfg(), true, Instant::now()));
        assert!(e.record(false, &cfg(), true, Instant::now()));
        assert!(e.is_ejected(Instant::now()));
        tokio::time::advance(Duration::from_millis(1_251)).await;
        assert!(
            !e.is_ejected(Instant::now()),
            "the first ejection lasts at most 1.25 s"
        );
        // Ejected again before any success: at least twice as long.
        e.record(false, &cfg(), true, Instant::now());
        assert!(e.record(false, &cfg(), true, Instant::now()));
        tokio::time::advance(Duration::from_millis(1_999)).await;
        assert!(
            e.is_ejected(Instant::now()),
            "the second ejection lasts at least 2 s"
        );
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(!e.is_ejected(Instant::now()));
        // A success resets the count and the doubling.
        e.record(true, &cfg(), true, Instant::now());
        e.record(false, &cfg(), true, Instant::now());
        assert!(e.record(false, &cfg(), true, Instant::now()));
        tokio::time::advance(Duration::from_millis(1_251)).await;
        assert!(!e.is_ejected(Instant::now()));
    }

    #[test]
    fn the_cap_counts_the_next_ejection() {
        assert!(may_eject(0, 3, 34));
        assert!(!may_eject(1, 3, 34), "two of three is over 34%");
        assert!(!may_eject(0, 1, 99));
        assert!(may_eject(0, 1, 100));
    }
}
