//! Weft's own custom resources, for what Gateway API does not cover. They
//! derive their CRD schema (kube + schemars), so the same types serve the
//! local manifests, the Kubernetes source and the generated CRD YAML.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Traffic policy for one Service (or one of its ports): what Gateway API
/// does not say — the retry budget, which failures are retried, outlier
/// detection (circuit breaking), limits (bulkheads), and default retries and
/// timeouts for routes that set none. Durations are Gateway API style
/// (`100ms`, `10s`).
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    namespaced,
    status = "TrafficPolicyStatus",
    shortname = "tp",
    category = "weft",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicySpec {
    pub target_ref: PolicyTargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<RetryOn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Retries for requests whose route sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Timeouts for requests whose route sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// How requests pick an endpoint: `PeakEWMA` (default), `RoundRobin`,
    /// `Random`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Pooled connections to the endpoints close after this long unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub idle_timeout: Option<String>,
}

/// What the control plane made of a TrafficPolicy: an `Accepted` condition
/// (reasons `Accepted`, `Invalid`, `TargetNotFound`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicyStatus {
    #[serde(default)]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum LoadBalancer {
    #[serde(rename = "PeakEWMA")]
    PeakEwma,
    RoundRobin,
    Random,
}

/// Retries may add at most `ratio` of recent requests plus `minPerSecond`,
/// counted over `window`. Defaults: 0.2, 10, 10s.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    #[schemars(range(min = 0.0, max = 10.0))]
    pub ratio: Option<f32>,
    pub min_per_second: Option<u32>,
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub window: Option<String>,
}

/// Failures retried beyond status codes. Defaults: connect failures, refused
/// streams and resets yes, resets of non-idempotent methods no.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryOn {
    pub connect_failure: Option<bool>,
    pub refused_stream: Option<bool>,
    pub reset: Option<bool>,
    /// Retry resets of POST/PATCH too (they may have been applied).
    pub non_idempotent: Option<bool>,
    /// gRPC status codes by name, e.g. `UNAVAILABLE`.
    #[serde(default)]
    #[schemars(inner(regex(
        pattern = "^(OK|CANCELLED|UNKNOWN|INVALID_ARGUMENT|DEADLINE_EXCEEDED|NOT_FOUND|ALREADY_EXISTS|PERMISSION_DENIED|RESOURCE_EXHAUSTED|FAILED_PRECONDITION|ABORTED|OUT_OF_RANGE|UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS|UNAUTHENTICATED)$"
    )))]
    pub grpc_codes: Vec<String>,
}

/// Consecutive-failure ejection. Defaults: 5 failures, 10s base ejection
/// (doubling each time, with jitter), at most 50% of endpoints ejected.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[schemars(range(min = 1))]
    pub consecutive_failures: Option<u32>,
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub base_ejection_time: Option<String>,
    #[schemars(range(max = 100))]
    pub max_ejection_percent: Option<u32>,
}

/// Bulkheads: beyond these, requests fail fast with 503 (`overloaded`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    #[schemars(range(min = 1))]
    pub max_concurrent_requests: Option<u32>,
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    /// How long a request may wait for an endpoint to become available.
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub queue_timeout: Option<String>,
}

/// Gateway API's HTTPRoute retry, as a Service default.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    #[schemars(range(max = 10))]
    pub attempts: Option<u32>,
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub backoff: Option<String>,
    /// HTTP status codes to retry (400-599), as Gateway API allows.
    #[serde(default)]
    #[schemars(inner(range(min = 400, max = 599)))]
    pub codes: Vec<u16>,
}

/// Gateway API's HTTPRoute timeouts, as a Service default.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.request) && has(self.backendRequest) && duration(self.request) != duration('0s') && duration(self.backendRequest) > duration(self.request))",
    "message": "backendRequest timeout cannot be longer than request timeout"
}]))]
pub struct Timeouts {
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub request: Option<String>,
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub backend_request: Option<String>,
}

/// A gRPC status code's number from its name.
pub fn grpc_code(name: &str) -> Option<u32> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    CODES
        .iter()
        .position(|c| c.eq_ignore_ascii_case(name))
        .map(|i| i as u32)
}

/// A Gateway API duration (`500ms`, `10s`, `1h`) in milliseconds.
pub fn duration_ms(s: &str) -> Result<u32, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 500ms or 10s: {e}"))
        .and_then(|d| u32::try_from(d.as_millis()).map_err(|_| format!("`{s}` is too long")))
}

impl TrafficPolicySpec {
    /// Checks what serde cannot: durations, ranges, code names. Errors name
    /// the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let dur = |field: &str, v: &Option<String>| match v {
            Some(s) => duration_ms(s)
                .map(|_| ())
                .map_err(|e| (field.to_string(), e)),
            None => Ok(()),
        };
        if let Some(b) = &self.retry_budget {
            if let Some(r) = b.ratio
                && !(0.0..=10.0).contains(&r)
            {
                return Err((
                    "spec.retryBudget.ratio".into(),
                    format!("{r} is not a ratio between 0 and 10"),
                ));
            }
            dur("spec.retryBudget.window", &b.window)?;
        }
        if let Some(o) = &self.outlier_detection {
            dur(
                "spec.outlierDetection.baseEjectionTime",
                &o.base_ejection_time,
            )?;
            if o.max_ejection_percent.is_some_and(|p| p > 100) {
                return Err((
                    "spec.outlierDetection.maxEjectionPercent".into(),
                    "a percentage is at most 100".into(),
                ));
            }
        }
        if let Some(l) = &self.limits {
            dur("spec.limits.queueTimeout", &l.queue_timeout)?;
        }
        if let Some(r) = &self.retry_on {
            for (i, c) in r.grpc_codes.iter().enumerate() {
                if grpc_code(c).is_none() {
                    return Err((
                        format!("spec.retryOn.grpcCodes[{i}]"),
                        format!("`{c}` is not a gRPC status code name"),
                    ));
                }
            }
        }
        if let Some(r) = &self.retry {
            dur("spec.retry.backoff", &r.backoff)?;
            if r.attempts.is_some_and(|a| a > 10) {
                return Err((
                    "spec.retry.attempts".into(),
                    "attempts are at most 10".into(),
                ));
            }
            if let Some((i, c)) = r
                .codes
                .iter()
                .enumerate()
                .find(|(_, c)| !(400..=599).contains(*c))
            {
                return Err((
                    format!("spec.retry.codes[{i}]"),
                    format!("{c} is not a status code to retry (400-599)"),
                ));
            }
        }
        if let Some(t) = &self.timeouts {
            dur("spec.timeouts.request", &t.request)?;
            dur("spec.timeouts.backendRequest", &t.backend_request)?;
            let ms = |v: &Option<String>| v.as_deref().and_then(|s| duration_ms(s).ok());
            if let (Some(req), Some(backend)) = (ms(&t.request), ms(&t.backend_request))
                && req != 0
                && backend > req
            {
                return Err((
                    "spec.timeouts.backendRequest".into(),
                    "backendRequest timeout cannot be longer than request timeout".into(),
                ));
            }
        }
        dur("spec.idleTimeout", &self.idle_timeout)?;
        Ok(())
    }
}

/// The Service a policy applies to (Gateway API's policy attachment shape).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.kind == 'Service' && (!has(self.group) || self.group == '')",
    "message": "a TrafficPolicy targets a core Service: kind Service, group \"\""
}]))]
pub struct PolicyTargetRef {
    /// The core group, `""`.
    #[serde(default)]
    pub group: String,
    /// `Service`.
    pub kind: String,
    pub name: String,
    /// One port of the Service; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub port: Option<u16>,
}
