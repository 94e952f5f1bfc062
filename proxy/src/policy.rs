//! A Service port's TrafficPolicy, compiled once per snapshot into what the
//! data path reads: timeouts, what is retried, the retry budget, the caps,
//! outlier detection and the balancing algorithm. The state a policy owns
//! (the budget's window, the caps' permits, the round-robin cursor) lives as
//! long as the policy itself is unchanged from one snapshot to the next.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::retry::budget::TpsBudget;
use weft_api::v1;

use crate::balance::{Algorithm, Cursor};
use crate::limits::Limits;

/// Backoff between attempts when a retry policy names none.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

/// The whole request's and each attempt's deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole request, retries included.
    pub request: Option<Duration>,
    /// Each attempt.
    pub per_try: Option<Duration>,
}

impl From<v1::Timeouts> for Timeouts {
    fn from(t: v1::Timeouts) -> Self {
        Timeouts {
            request: millis(t.request_ms),
            per_try: millis(t.backend_request_ms),
        }
    }
}

/// What is retried, and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included (always > 1).
    pub attempts: u32,
    pub backoff: Duration,
    pub codes: Vec<u16>,
    pub grpc_codes: Vec<u32>,
    pub connect_failure: bool,
    /// An HTTP/2 stream the server refused before processing it.
    pub refused_stream: bool,
    pub reset: bool,
    pub non_idempotent: bool,
}

impl Retry {
    /// None when the policy asks for one attempt only.
    fn new(r: &v1::RetryPolicy, on: &v1::RetryOn) -> Option<Retry> {
        (r.attempts > 1).then(|| Retry {
            attempts: r.attempts,
            backoff: millis(r.backoff_ms).unwrap_or(DEFAULT_BACKOFF),
            codes: if r.codes.is_empty() {
                vec![503]
            } else {
                r.codes
                    .iter()
                    .filter_map(|c| u16::try_from(*c).ok())
                    .collect()
            },
            grpc_codes: on.grpc_codes.clone(),
            connect_failure: on.connect_failure,
            refused_stream: on.refused_stream,
            reset: on.reset,
            non_idempotent: on.non_idempotent,
        })
    }
}

#[derive(Debug)]
pub struct ServicePolicy {
    /// As received: a new snapshot with the same spec keeps this policy.
    pub spec: v1::TrafficPolicy,
    pub algorithm: Algorithm,
    pub cursor: Cursor,
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
    pub budget: Arc<TpsBudget>,
    pub limits: Limits,
    pub outlier: v1::OutlierDetection,
    /// Pooled connections to this Service close after this long unused.
    pub idle_timeout: Option<Duration>,
    /// How long a request may wait for an endpoint (0: not at all).
    pub queue_timeout: Duration,
    /// Serializes ejection decisions, so two endpoints failing at once
    /// cannot both pass the max-ejected check.
    pub eject_lock: Mutex<()>,
}

impl ServicePolicy {
    pub fn new(spec: v1::TrafficPolicy) -> ServicePolicy {
        let on = spec.retry_on.clone().unwrap_or_default();
        ServicePolicy {
            algorithm: Algorithm::from(spec.load_balancer),
            cursor: Cursor::default(),
            timeouts: spec.timeouts.map(Timeouts::from).unwrap_or_default(),
            retry: spec.retry.as_ref().and_then(|r| Retry::new(r, &on)),
            budget: Arc::new(budget(spec.retry_budget.unwrap_or_default())),
            limits: Limits::new(spec.limits),
            outlier: spec.outlier_detection.unwrap_or_default(),
            idle_timeout: millis(spec.idle_timeout_ms),
            queue_timeout: Duration::from_millis(u64::from(
                spec.limits.map_or(0, |l| l.queue_timeout_ms),
            )),
            eject_lock: Mutex::new(()),
            spec,
        }
    }

    /// A route rule's timeouts and retries: the rule's own where it sets
    /// them, else this policy's defaults (retry conditions always this
    /// policy's).
    pub fn for_rule(
        &self,
        timeouts: Option<v1::Timeouts>,
        retry: Option<&v1::RetryPolicy>,
    ) -> (Timeouts, Option<Retry>) {
        let on = self.spec.retry_on.clone().unwrap_or_default();
        (
            timeouts.map_or(self.timeouts, Timeouts::from),
            match retry {
                Some(r) => Retry::new(r, &on),
                None => self.retry.clone(),
            },
        )
    }
}

/// The retry budget, its settings brought into the ranges `TpsBudget`
/// asserts (window 1 to 60 s, fewer than `i32::MAX` per second, a ratio of
/// 0 to 1000): a snapshot is data from the network, and a value out of
/// range must not take the proxy down. A ratio that is not a number allows
/// no retries beyond the floor.
fn budget(b: v1::RetryBudget) -> TpsBudget {
    let window = Duration::from_millis(u64::from(b.window_ms))
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    let ratio = if b.ratio.is_nan() {
        0.0
    } else {
        b.ratio.clamp(0.0, 1000.0)
    };
    TpsBudget::new(window, b.min_per_second.min(i32::MAX as u32 - 1), ratio)
}

fn millis(ms: u32) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `snapshot_delta` fuzz target: `TpsBudget::new` asserts
    /// its ranges, so these panicked while building the mesh config.
    #[test]
    fn a_retry_budget_out_of_range_is_brought_in_not_a_panic() {
        for b in [
            v1::RetryBudget {
                ratio: f32::NAN,
                ..Default::default()
            },
            v1::RetryBudget {
                window_ms: 120_000,
                ..Default::default()
            },
            v1::RetryBudget {
                min_per_second: u32::MAX,
                ratio: f32::INFINITY,
                ..Default::default()
            },
            v1::RetryBudget {
                ratio: -1.0,
                window_ms: u32::MAX,
                min_per_second: i32::MAX as u32,
            },
        ] {
            ServicePolicy::new(v1::TrafficPolicy {
                retry_budget: Some(b),
                ..Default::default()
            });
        }
    }

    #[test]
    fn a_rule_overrides_the_service_defaults_but_not_the_conditions() {
        let p = ServicePolicy::new(v1::TrafficPolicy {
            retry_on: Some(v1::RetryOn {
                connect_failure: true,
                ..Default::default()
            }),
            retry: Some(v1::RetryPolicy {
                attempts: 2,
                ..Default::default()
            }),
            timeouts: Some(v1::Timeouts {
                request_ms: 1000,
                backend_request_ms: 0,
            }),
            ..Default::default()
        });
        let (t, r) = p.for_rule(None, None);
        assert_eq!(t.request, Some(Duration::from_secs(1)));
        let r = r.unwrap();
        assert_eq!(
            (r.attempts, r.codes.as_slice(), r.backoff),
            (2, &[503][..], DEFAULT_BACKOFF)
        );
        let (t, r) = p.for_rule(
            Some(v1::Timeouts {
                request_ms: 0,
                backend_request_ms: 100,
            }),
            Some(&v1::RetryPolicy {
                attempts: 3,
                backoff_ms: 5,
                codes: vec![502],
            }),
        );
        assert_eq!(
            (t.request, t.per_try),
            (None, Some(Duration::from_millis(100)))
        );
        let r = r.unwrap();
        assert_eq!((r.attempts, r.codes.as_slice()), (3, &[502][..]));
        assert!(r.connect_failure);
        // One attempt: no retry at all.
        let once = v1::RetryPolicy {
            attempts: 1,
            ..Default::default()
        };
        assert!(p.for_rule(None, Some(&once)).1.is_none());
    }
}
