//! The last few minutes of reads: the window the rates are taken over, and
//! the points of each Service's sparkline.

use std::collections::VecDeque;
use std::time::Duration;

use crate::aggregate::Round;

#[derive(Debug)]
pub struct History {
    keep: Duration,
    /// (when it was read, Unix ms; what it added), oldest first.
    rounds: VecDeque<(u64, Round)>,
}

/// A point of a sparkline: requests per second and success rate in one read.
pub type Point = (f64, Option<f64>);

impl History {
    pub fn new(keep: Duration) -> History {
        History {
            keep,
            rounds: VecDeque::new(),
        }
    }

    pub fn push(&mut self, at_ms: u64, round: Round) {
        self.rounds.push_back((at_ms, round));
        let keep = self.keep.as_millis() as u64;
        while self
            .rounds
            .front()
            .is_some_and(|(t, _)| at_ms.saturating_sub(*t) > keep)
        {
            self.rounds.pop_front();
        }
    }

    /// The reads of the last `window`, merged.
    pub fn window(&self, window: Duration) -> Round {
        let Some((newest, _)) = self.rounds.back() else {
            return Round::default();
        };
        let from = newest.saturating_sub(window.as_millis() as u64);
        let mut sum = Round::default();
        for (_, r) in self.rounds.iter().filter(|(t, _)| *t > from) {
            sum.merge(r);
        }
        sum
    }

    /// One Service's (and route's) points over the history, oldest first.
    pub fn spark(&self, key: &(String, String)) -> Vec<Point> {
        self.rounds
            .iter()
            .filter(|(_, r)| r.seconds > 0.0)
            .map(|(_, r)| match r.services.get(key) {
                Some(c) => (c.http.requests / r.seconds, c.http.success_rate()),
                None => (0.0, None),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Calls;

    fn round(seconds: f64, requests: f64) -> Round {
        let mut r = Round {
            seconds,
            ..Round::default()
        };
        let mut calls = Calls::default();
        calls.http.requests = requests;
        r.services.insert(("web:80".into(), String::new()), calls);
        r
    }

    #[test]
    fn the_window_merges_recent_reads_and_old_ones_go() {
        let mut h = History::new(Duration::from_secs(10));
        for i in 0..8u64 {
            h.push(i * 2000, round(2.0, 10.0 * i as f64));
        }
        // Kept: 4 s … 14 s; the window of 4 s holds the reads at 12 and 14 s.
        let w = h.window(Duration::from_secs(4));
        assert_eq!(w.seconds, 4.0);
        let key = ("web:80".to_string(), String::new());
        assert_eq!(w.services[&key].http.requests, 60.0 + 70.0);
        let spark: Vec<f64> = h.spark(&key).into_iter().map(|p| p.0).collect();
        assert_eq!(spark, [10.0, 15.0, 20.0, 25.0, 30.0, 35.0]);
    }
}
