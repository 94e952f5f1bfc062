//! The last few minutes of reads: the window the rates are taken over, and
//! the points of each Service's sparkline.

use std::collections::VecDeque;
use std::time::Duration;

use crate::aggregate::{Http, Round};

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

    /// One Service's (and route's) points over the history, oldest first:
    /// the history cut into `points` equal spans (so that a Prometheus
    /// scraped less often than the dashboard reads gives a smooth line, not
    /// bursts between zeros); spans with no read are left out.
    pub fn spark(&self, key: &(String, String), points: usize) -> Vec<Point> {
        let Some((newest, _)) = self.rounds.back() else {
            return Vec::new();
        };
        let points = points.max(1);
        let keep = self.keep.as_millis() as u64;
        let width = (keep / points as u64).max(1);
        let start = newest.saturating_sub(keep);
        let mut spans = vec![(0.0, Http::default()); points];
        for (t, r) in self.rounds.iter().filter(|(_, r)| r.seconds > 0.0) {
            let i = ((t.saturating_sub(start) / width) as usize).min(points - 1);
            spans[i].0 += r.seconds;
            if let Some(c) = r.services.get(key) {
                spans[i].1.merge(&c.http);
            }
        }
        spans
            .into_iter()
            .filter(|(seconds, _)| *seconds > 0.0)
            .map(|(seconds, http)| (http.requests / seconds, http.success_rate()))
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
        // Five spans of 2 s over the 10 s kept (reads at 4 s … 14 s of 20,
        // 30, … 70 requests in 2 s each): the newest span takes the last two.
        let spark: Vec<f64> = h.spark(&key, 5).into_iter().map(|p| p.0).collect();
        assert_eq!(spark, [10.0, 15.0, 20.0, 25.0, (60.0 + 70.0) / 4.0]);
        // Fewer spans: reads summed, over the seconds they cover.
        let spark: Vec<f64> = h.spark(&key, 2).into_iter().map(|p| p.0).collect();
        assert_eq!(
            spark,
            [(20.0 + 30.0 + 40.0) / 6.0, (50.0 + 60.0 + 70.0) / 6.0]
        );
    }
}
