//! What a scenario does to the mesh, and when.

use std::time::Duration;

use serde::Serialize;

use crate::args::Scenario;

#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Rewrite the backend route with this share to v1.
    Weights(u32),
    /// Kill this pod's application.
    Kill(&'static str),
}

/// Something the scenario did, for the table and the summary.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at_s: f64,
    pub what: String,
}

/// The scenario's actions, each due at a time into the run.
#[derive(Debug)]
pub struct Timeline {
    steps: Vec<(Duration, Action)>,
}

impl Timeline {
    pub fn new(scenario: Scenario, duration: Option<Duration>) -> Timeline {
        let steps = match scenario {
            Scenario::Basic => Vec::new(),
            // Five moves of 20%, spread over the run (every 10s without --duration).
            Scenario::Canary => {
                let every = duration.map_or(Duration::from_secs(10), |d| d / 6);
                (1..=5)
                    .map(|i| (every * i, Action::Weights(100 - 20 * i)))
                    .collect()
            }
            Scenario::Faults => {
                let midway = duration.map_or(Duration::from_secs(20), |d| d / 2);
                vec![(midway, Action::Kill("backend-v1-2"))]
            }
        };
        Timeline { steps }
    }

    /// The actions due by `elapsed`, each once.
    pub fn due(&mut self, elapsed: Duration) -> Vec<Action> {
        let (due, later): (Vec<_>, Vec<_>) =
            self.steps.drain(..).partition(|(at, _)| *at <= elapsed);
        self.steps = later;
        due.into_iter().map(|(_, a)| a).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_moves_in_five_steps_over_the_run() {
        let mut t = Timeline::new(Scenario::Canary, Some(Duration::from_secs(60)));
        assert!(t.due(Duration::from_secs(9)).is_empty());
        let weights: Vec<u32> = t
            .due(Duration::from_secs(60))
            .into_iter()
            .map(|a| match a {
                Action::Weights(w) => w,
                Action::Kill(_) => 0,
            })
            .collect();
        assert_eq!(weights, [80, 60, 40, 20, 0]);
        assert!(t.due(Duration::from_secs(120)).is_empty());
    }
}
