//! Weft's own custom resources, for what Gateway API does not cover. They
//! derive their CRD schema (kube + schemars), so the same types serve the
//! local manifests, the Kubernetes source and the generated CRD YAML.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use schemars::transform::{RecursiveTransform, Transform};
use serde::{Deserialize, Serialize};

/// Gateway API's duration grammar (GEP-2257), as its CRDs spell it: one to
/// four numbers of at most five digits, each with a unit `h`, `m`, `s` or
/// `ms` (`500ms`, `10s`, `1h30m`). [`duration_ms`] reads exactly this.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$";

/// The gRPC status codes by name, in number order.
const GRPC_CODES: [&str; 17] = [
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

/// [`GRPC_CODES`] as the schema's pattern.
const GRPC_CODE_PATTERN: &str = "^(OK|CANCELLED|UNKNOWN|INVALID_ARGUMENT|DEADLINE_EXCEEDED|NOT_FOUND|\
ALREADY_EXISTS|PERMISSION_DENIED|RESOURCE_EXHAUSTED|FAILED_PRECONDITION|ABORTED|OUT_OF_RANGE|\
UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS|UNAUTHENTICATED)$";

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
    derive = "PartialEq",
    status = "TrafficPolicyStatus",
    shortname = "tp",
    category = "weft",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "A Weft traffic policy: retry budget, retried failures, outlier detection, limits, and \
           default retries and timeouts for one Service (or one port of it)."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = kubernetes_schema)]
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
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub idle_timeout: Option<String>,
    /// A token bucket at the sidecar of each pod the Service selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// A local rate limit, enforced by the server-side sidecar of every pod the
/// Service selects, before the app sees a request: each sidecar has its own
/// bucket(s), so the Service as a whole admits about `requestsPerSecond` ×
/// its ready pods. Over the limit: 429 with `Retry-After` and
/// `weft-error: rate-limited` (gRPC: RESOURCE_EXHAUSTED).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Requests admitted per second, sustained: the bucket refills at this
    /// rate.
    #[schemars(range(min = 1))]
    pub requests_per_second: u32,
    /// Requests admitted at once after a quiet spell: the bucket's size.
    /// Default: `requestsPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u32>,
    /// What gets a bucket of its own: `Service` (one for every caller, the
    /// default), `Client` (one per caller identity; per IP address for
    /// plaintext callers), `Route` (one per rule of the Service's own
    /// HTTPRoutes and GRPCRoutes, matched again at the server side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<RateLimitKey>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum RateLimitKey {
    #[default]
    Service,
    Client,
    Route,
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
    #[schemars(regex(pattern = DURATION_PATTERN))]
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
    #[schemars(inner(regex(pattern = GRPC_CODE_PATTERN)))]
    pub grpc_codes: Vec<String>,
}

/// Consecutive-failure ejection. Defaults: 5 failures, 10s base ejection
/// (doubling each time, with jitter), at most 50% of endpoints ejected.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Failures in a row that eject an endpoint; 0 turns ejection off.
    pub consecutive_failures: Option<u32>,
    #[schemars(regex(pattern = DURATION_PATTERN))]
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
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub queue_timeout: Option<String>,
}

/// Gateway API's HTTPRoute retry, as a Service default.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    #[schemars(range(max = 10))]
    pub attempts: Option<u32>,
    #[schemars(regex(pattern = DURATION_PATTERN))]
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
    "message": "backendRequest timeout cannot be longer than request timeout",
    "fieldPath": ".backendRequest"
}]))]
pub struct Timeouts {
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub request: Option<String>,
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub backend_request: Option<String>,
}

/// A gRPC status code's number from its name, spelled as the schema says
/// (`UNAVAILABLE`).
pub fn grpc_code(name: &str) -> Option<u32> {
    GRPC_CODES.iter().position(|c| *c == name).map(|i| i as u32)
}

/// A Gateway API duration ([`DURATION_PATTERN`]: `500ms`, `10s`, `1h30m`)
/// in milliseconds, exactly as long as written.
fn gateway_duration(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "`{s}` is not a duration like 500ms, 10s or 1h30m (one to four parts of at most 5 \
             digits, each with a unit h, m, s or ms)"
        )
    };
    let mut rest = s;
    let mut parts = 0;
    let mut total = 0u64;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=5).contains(&digits) || parts == 4 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        // `ms` before `m`: in the grammar a unit is always followed by a
        // digit or the end, so `1ms` cannot be `1m` then `s`.
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += n * unit;
        parts += 1;
    }
    if parts == 0 {
        return Err(bad());
    }
    Ok(total)
}

/// A Gateway API duration ([`DURATION_PATTERN`]: `500ms`, `10s`, `1h30m`)
/// in milliseconds, the same strings the CRDs accept. The grammar allows up
/// to 4 x 99999h; anything beyond `u32::MAX` milliseconds (about 49.7 days)
/// counts as that long, which for a timeout is as good as never.
pub fn duration_ms(s: &str) -> Result<u32, String> {
    gateway_duration(s).map(|ms| u32::try_from(ms).unwrap_or(u32::MAX))
}

impl TrafficPolicySpec {
    /// Checks what serde cannot, exactly what the CRD's schema checks on the
    /// API server (so a policy from a manifest directory and one from a
    /// cluster are refused alike): the target, durations, ranges, code
    /// names. Errors name the field as the API server does.
    pub fn validate(&self) -> Result<(), (String, String)> {
        fn err<T>(
            field: impl Into<String>,
            message: impl Into<String>,
        ) -> Result<T, (String, String)> {
            Err((field.into(), message.into()))
        }
        let dur = |field: &str, v: &Option<String>| match v {
            Some(s) => gateway_duration(s).map_err(|e| (field.to_string(), e)),
            None => Ok(0),
        };
        let at_least_1 = |field: &str, v: Option<u32>| match v {
            Some(0) => err(field, "must be at least 1"),
            _ => Ok(()),
        };
        let t = &self.target_ref;
        if t.kind != "Service" {
            return err(
                "spec.targetRef.kind",
                format!("a TrafficPolicy targets a Service, not `{}`", t.kind),
            );
        }
        if !t.group.is_empty() {
            return err(
                "spec.targetRef.group",
                format!("a Service is in the core group \"\", not `{}`", t.group),
            );
        }
        if !(1..=253).contains(&t.name.chars().count()) {
            return err("spec.targetRef.name", "a name of 1 to 253 characters");
        }
        if t.port == Some(0) {
            return err("spec.targetRef.port", "0 is not a port (1-65535)");
        }
        if let Some(b) = &self.retry_budget {
            if let Some(r) = b.ratio
                && !(0.0..=10.0).contains(&r)
            {
                return err(
                    "spec.retryBudget.ratio",
                    format!("{r} is not a ratio between 0 and 10"),
                );
            }
            dur("spec.retryBudget.window", &b.window)?;
        }
        if let Some(r) = &self.retry_on {
            for (i, c) in r.grpc_codes.iter().enumerate() {
                if grpc_code(c).is_none() {
                    return err(
                        format!("spec.retryOn.grpcCodes[{i}]"),
                        format!("`{c}` is not a gRPC status code name (e.g. UNAVAILABLE)"),
                    );
                }
            }
        }
        if let Some(o) = &self.outlier_detection {
            dur(
                "spec.outlierDetection.baseEjectionTime",
                &o.base_ejection_time,
            )?;
            if o.max_ejection_percent.is_some_and(|p| p > 100) {
                return err(
                    "spec.outlierDetection.maxEjectionPercent",
                    "a percentage is at most 100",
                );
            }
        }
        if let Some(l) = &self.limits {
            at_least_1(
                "spec.limits.maxConcurrentRequests",
                l.max_concurrent_requests,
            )?;
            at_least_1("spec.limits.maxConnections", l.max_connections)?;
            dur("spec.limits.queueTimeout", &l.queue_timeout)?;
        }
        if let Some(r) = &self.retry {
            if r.attempts.is_some_and(|a| a > 10) {
                return err("spec.retry.attempts", "attempts are at most 10");
            }
            dur("spec.retry.backoff", &r.backoff)?;
            if let Some((i, c)) = r
                .codes
                .iter()
                .enumerate()
                .find(|(_, c)| !(400..=599).contains(*c))
            {
                return err(
                    format!("spec.retry.codes[{i}]"),
                    format!("{c} is not a status code to retry (400-599)"),
                );
            }
        }
        if let Some(t) = &self.timeouts {
            let request = dur("spec.timeouts.request", &t.request)?;
            let backend = dur("spec.timeouts.backendRequest", &t.backend_request)?;
            // As the CEL rule on `timeouts`: a request timeout of 0 is none.
            if t.request.is_some()
                && t.backend_request.is_some()
                && request != 0
                && backend > request
            {
                return err(
                    "spec.timeouts.backendRequest",
                    "backendRequest timeout cannot be longer than request timeout",
                );
            }
        }
        dur("spec.idleTimeout", &self.idle_timeout)?;
        if let Some(r) = &self.rate_limit {
            at_least_1(
                "spec.rateLimit.requestsPerSecond",
                Some(r.requests_per_second),
            )?;
            at_least_1("spec.rateLimit.burst", r.burst)?;
        }
        Ok(())
    }
}

/// The Service a policy applies to (Gateway API's policy attachment shape).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.kind == 'Service'",
        "message": "a policy targets a Service",
        "fieldPath": ".kind"
    },
    {
        "rule": "!has(self.group) || self.group == ''",
        "message": "a Service is in the core group \"\"",
        "fieldPath": ".group"
    }
]))]
pub struct PolicyTargetRef {
    /// The core group, `""`.
    #[serde(default)]
    pub group: String,
    /// `Service`.
    pub kind: String,
    /// The Service's name, in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// One port of the Service; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub port: Option<u16>,
}

/// Who may call what at a workload's sidecar: rules over the caller's
/// identity and, for HTTP, the request (and validated end-user claims).
/// DENY wins over ALLOW; once any ALLOW policy targets a port, what no ALLOW
/// rule allows is denied; AUDIT rules decide nothing and are counted and
/// logged.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    derive = "PartialEq",
    status = "TrafficPolicyStatus",
    shortname = "authz",
    category = "weft",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "A Weft authorization policy: which callers (mesh identities, namespaces, end users) \
           may call a Service, one of its ports, or one HTTPRoute or GRPCRoute rule."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = kubernetes_schema)]
pub struct AuthorizationPolicySpec {
    pub target_ref: AuthzTargetRef,
    /// `ALLOW` (the default), `DENY` or `AUDIT`.
    #[serde(default)]
    pub action: AuthzAction,
    /// Any one rule matching is a match. None: an ALLOW policy allows
    /// nothing, a DENY or AUDIT policy matches every request.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub rules: Vec<AuthzRule>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum AuthzAction {
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
    #[serde(rename = "AUDIT")]
    Audit,
}

/// A Service (optionally one port), or an HTTPRoute or GRPCRoute
/// (optionally one rule, by its `name`), in the policy's namespace.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(self.kind == 'Service' && (!has(self.group) || self.group == '')) || ((self.kind == 'HTTPRoute' || self.kind == 'GRPCRoute') && has(self.group) && self.group == 'gateway.networking.k8s.io')",
        "message": "the target is a Service (group \"\") or an HTTPRoute or GRPCRoute (group gateway.networking.k8s.io)",
        "fieldPath": ".kind"
    },
    {
        "rule": "!has(self.port) || self.kind == 'Service'",
        "message": "only a Service target has a port",
        "fieldPath": ".port"
    },
    {
        "rule": "!has(self.sectionName) || self.kind != 'Service'",
        "message": "a Service target names a port with `port`; sectionName names a route rule",
        "fieldPath": ".sectionName"
    }
]))]
pub struct AuthzTargetRef {
    /// `""` for a Service, `gateway.networking.k8s.io` for a route.
    #[serde(default)]
    pub group: String,
    /// `Service`, `HTTPRoute` or `GRPCRoute`.
    pub kind: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// One port of the Service; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub port: Option<u16>,
    /// One rule of the route, by its `name`; every rule when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
}

/// A match: one of `from` (none: any caller), and `to`, and `when`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzRule {
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub from: Vec<AuthzSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<AuthzOperation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<AuthzConditions>,
}

/// One kind of caller; exactly one field is set.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.identity) ? 1 : 0) + (has(self.serviceAccount) ? 1 : 0) + (has(self.namespace) ? 1 : 0) + (has(self.authenticated) ? 1 : 0) + (has(self.unauthenticated) ? 1 : 0) == 1",
    "message": "exactly one of identity, serviceAccount, namespace, authenticated, unauthenticated"
}]))]
pub struct AuthzSource {
    /// An exact SPIFFE ID (`spiffe://cluster.local/ns/shop/sa/checkout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^spiffe://[^/]+/.+$"))]
    pub identity: Option<String>,
    /// A ServiceAccount, in the policy's namespace unless one is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountRef>,
    /// Any mesh workload of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// `true`: any caller with a mesh identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticated: Option<bool>,
    /// `true`: callers without one (plaintext, from outside the mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unauthenticated: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What is called (HTTP only): every field set must match; within one, any
/// value.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzOperation {
    #[serde(default)]
    #[schemars(length(max = 16), inner(regex(pattern = "^[A-Z]+$")))]
    pub methods: Vec<String>,
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub paths: Vec<AuthzPath>,
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub headers: Vec<AuthzHeader>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzPath {
    /// `Exact` or `PathPrefix` (whole segments, as HTTPRoute's).
    #[serde(rename = "type")]
    pub kind: AuthzPathKind,
    #[schemars(regex(pattern = "^/"), length(max = 1024))]
    pub value: String,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum AuthzPathKind {
    Exact,
    PathPrefix,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzHeader {
    #[schemars(regex(pattern = "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"))]
    pub name: String,
    pub value: String,
}

/// Conditions on the end user (HTTP only).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzConditions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyCondition>,
}

/// An API key: the request carries `header` with a value whose SHA-256 is
/// one of the digests in the Secret (one `sha256:<64 hex>` per line; blank
/// and `#` lines are skipped). Keys are only ever stored hashed.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyCondition {
    #[schemars(regex(pattern = "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"), length(max = 256))]
    pub header: String,
    /// A Secret in the policy's namespace, and the key of its data.
    pub secret_ref: SecretKeyRef,
}

/// One key of a Secret in the referring object's namespace.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// End-user authentication: JSON Web Tokens a Service's sidecar validates
/// before authorization. A request with a token no rule accepts is refused
/// (401); a request with none passes, and AuthorizationPolicies decide
/// (`when.jwt.required`).
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "RequestAuthentication",
    namespaced,
    derive = "PartialEq",
    status = "TrafficPolicyStatus",
    shortname = "reqauthn",
    category = "weft",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "End-user JWT authentication at a Service's sidecars: the issuers \
           it trusts, their keys, and where the token is."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = kubernetes_schema)]
pub struct RequestAuthenticationSpec {
    pub target_ref: PolicyTargetRef,
    /// One per trusted issuer.
    #[schemars(length(min = 1, max = 16))]
    pub jwt_rules: Vec<JwtRule>,
}

/// One issuer: its keys, the audiences it must name, where its tokens are.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.jwks) ? 1 : 0) + (has(self.jwksUri) ? 1 : 0) + (has(self.jwksSecretRef) ? 1 : 0) == 1",
        "message": "exactly one of jwks, jwksUri, jwksSecretRef"
    },
    {
        "rule": "!has(self.refreshInterval) || has(self.jwksUri)",
        "message": "refreshInterval is for keys fetched from jwksUri",
        "fieldPath": ".refreshInterval"
    }
]))]
pub struct JwtRule {
    /// The `iss` a token must carry.
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: String,
    /// The token's `aud` must name one of these; none: `aud` is not checked.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub audiences: Vec<String>,
    /// The issuer's JSON Web Key Set, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub jwks: Option<String>,
    /// An `https://` URL the control plane fetches the key set from and
    /// pushes to the sidecars, every `refreshInterval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^https://"), length(max = 2048))]
    pub jwks_uri: Option<String>,
    /// The key set in a Secret of the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_secret_ref: Option<SecretKeyRef>,
    /// How often `jwksUri` is fetched again (default 5m, at least 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub refresh_interval: Option<String>,
    /// Headers the token may be in, tried in order. Default (with no
    /// `fromParams` either): `Authorization: Bearer <token>`.
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token may be in, after the headers.
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub from_params: Vec<String>,
    /// Claims copied into request headers for the app (a header the client
    /// sent with that name is always removed first).
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// Remove the token from the request before the app sees it.
    #[serde(default)]
    pub strip_token: bool,
    /// Leeway for `exp` and `nbf` (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub clock_skew: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    #[schemars(regex(pattern = "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"), length(max = 256))]
    pub name: String,
    /// Text before the token (`"Bearer "`); none: the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub prefix: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    #[schemars(regex(pattern = "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"), length(max = 256))]
    pub header: String,
    /// A claim name; a dotted name reaches into objects.
    #[schemars(length(min = 1, max = 256))]
    pub claim: String,
}

impl RequestAuthenticationSpec {
    /// What the schema (and its CEL rules) refuse, naming the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        fn err<T>(
            field: impl Into<String>,
            message: impl Into<String>,
        ) -> Result<T, (String, String)> {
            Err((field.into(), message.into()))
        }
        let t = &self.target_ref;
        if t.kind != "Service" || !t.group.is_empty() {
            return err(
                "spec.targetRef.kind",
                format!(
                    "a RequestAuthentication targets a Service, not `{}`",
                    t.kind
                ),
            );
        }
        if t.port == Some(0) {
            return err("spec.targetRef.port", "0 is not a port (1-65535)");
        }
        if self.jwt_rules.is_empty() {
            return err("spec.jwtRules", "at least one rule");
        }
        let header_name = |field: String, name: &str| {
            if http::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return err(field, format!("`{name}` is not an HTTP header name"));
            }
            Ok(())
        };
        for (i, r) in self.jwt_rules.iter().enumerate() {
            let at = format!("spec.jwtRules[{i}]");
            if r.issuer.is_empty() {
                return err(format!("{at}.issuer"), "not empty");
            }
            let sources = [
                r.jwks.is_some(),
                r.jwks_uri.is_some(),
                r.jwks_secret_ref.is_some(),
            ];
            if sources.iter().filter(|x| **x).count() != 1 {
                return err(at, "exactly one of jwks, jwksUri, jwksSecretRef");
            }
            if let Some(u) = &r.jwks_uri
                && !u.starts_with("https://")
            {
                return err(
                    format!("{at}.jwksUri"),
                    format!("`{u}` is not an https:// URL (keys are only fetched over TLS)"),
                );
            }
            if r.refresh_interval.is_some() && r.jwks_uri.is_none() {
                return err(
                    format!("{at}.refreshInterval"),
                    "refreshInterval is for keys fetched from jwksUri",
                );
            }
            if let Some(d) = &r.refresh_interval {
                let ms = gateway_duration(d).map_err(|e| (format!("{at}.refreshInterval"), e))?;
                if ms < 1000 {
                    return err(format!("{at}.refreshInterval"), "at least 1s");
                }
            }
            if let Some(d) = &r.clock_skew {
                gateway_duration(d).map_err(|e| (format!("{at}.clockSkew"), e))?;
            }
            for (j, h) in r.from_headers.iter().enumerate() {
                header_name(format!("{at}.fromHeaders[{j}].name"), &h.name)?;
            }
            for (j, p) in r.from_params.iter().enumerate() {
                if p.is_empty() {
                    return err(format!("{at}.fromParams[{j}]"), "not empty");
                }
            }
            for (j, c) in r.output_claim_to_headers.iter().enumerate() {
                header_name(format!("{at}.outputClaimToHeaders[{j}].header"), &c.header)?;
                if c.header.to_ascii_lowercase().starts_with("weft-") {
                    return err(
                        format!("{at}.outputClaimToHeaders[{j}].header"),
                        "weft-* headers are reserved for the mesh",
                    );
                }
            }
        }
        Ok(())
    }
}

/// A validated JWT (see RequestAuthentication) and claims it must carry.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtCondition {
    /// Only requests with a valid token match.
    #[serde(default)]
    pub required: bool,
    /// Each claim must have one of its values (a dotted name reaches into
    /// objects; an array claim matches if any element does; `scope` is split
    /// on spaces).
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub claims: Vec<ClaimMatch>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimMatch {
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    #[schemars(length(min = 1, max = 64))]
    pub values: Vec<String>,
}

impl AuthorizationPolicySpec {
    /// What the schema (and its CEL rules) refuse, refused the same way in
    /// local mode, naming the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        fn err<T>(
            field: impl Into<String>,
            message: impl Into<String>,
        ) -> Result<T, (String, String)> {
            Err((field.into(), message.into()))
        }
        let t = &self.target_ref;
        match (t.kind.as_str(), t.group.as_str()) {
            ("Service", "") => {}
            ("HTTPRoute" | "GRPCRoute", "gateway.networking.k8s.io") => {}
            _ => {
                return err(
                    "spec.targetRef.kind",
                    format!(
                        "the target is a Service (group \"\") or an HTTPRoute or GRPCRoute (group gateway.networking.k8s.io), not {} in group `{}`",
                        t.kind, t.group
                    ),
                );
            }
        }
        if !(1..=253).contains(&t.name.chars().count()) {
            return err("spec.targetRef.name", "a name of 1 to 253 characters");
        }
        match (t.kind.as_str(), t.port, &t.section_name) {
            (_, Some(0), _) => return err("spec.targetRef.port", "0 is not a port (1-65535)"),
            ("Service", _, Some(_)) => {
                return err(
                    "spec.targetRef.sectionName",
                    "a Service target names a port with `port`; sectionName names a route rule",
                );
            }
            ("HTTPRoute" | "GRPCRoute", Some(_), _) => {
                return err("spec.targetRef.port", "only a Service target has a port");
            }
            _ => {}
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            for (j, f) in rule.from.iter().enumerate() {
                let at = format!("{at}.from[{j}]");
                let set = [
                    f.identity.is_some(),
                    f.service_account.is_some(),
                    f.namespace.is_some(),
                    f.authenticated.is_some(),
                    f.unauthenticated.is_some(),
                ]
                .iter()
                .filter(|x| **x)
                .count();
                if set != 1 {
                    return err(
                        at,
                        "exactly one of identity, serviceAccount, namespace, authenticated, unauthenticated",
                    );
                }
                if let Some(id) = &f.identity
                    && id.parse::<weft_api::SpiffeId>().is_err()
                {
                    return err(
                        format!("{at}.identity"),
                        format!(
                            "`{id}` is not a SPIFFE ID (spiffe://<trust domain>/ns/<ns>/sa/<sa>)"
                        ),
                    );
                }
                if f.namespace.as_deref().is_some_and(str::is_empty) {
                    return err(format!("{at}.namespace"), "a namespace name is not empty");
                }
                if let Some(sa) = &f.service_account
                    && (sa.name.is_empty() || sa.namespace.as_deref().is_some_and(str::is_empty))
                {
                    return err(format!("{at}.serviceAccount"), "names are not empty");
                }
            }
            if let Some(to) = &rule.to {
                for (j, m) in to.methods.iter().enumerate() {
                    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                        return err(
                            format!("{at}.to.methods[{j}]"),
                            format!("`{m}` is not an HTTP method in capitals (GET, POST)"),
                        );
                    }
                }
                for (j, p) in to.paths.iter().enumerate() {
                    if !p.value.starts_with('/') {
                        return err(
                            format!("{at}.to.paths[{j}].value"),
                            format!("`{}` does not start with /", p.value),
                        );
                    }
                }
                for (j, h) in to.headers.iter().enumerate() {
                    if http::header::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                        return err(
                            format!("{at}.to.headers[{j}].name"),
                            format!("`{}` is not an HTTP header name", h.name),
                        );
                    }
                }
            }
            if let Some(k) = rule.when.as_ref().and_then(|w| w.api_key.as_ref()) {
                if http::header::HeaderName::from_bytes(k.header.as_bytes()).is_err() {
                    return err(
                        format!("{at}.when.apiKey.header"),
                        format!("`{}` is not an HTTP header name", k.header),
                    );
                }
                if k.secret_ref.name.is_empty() || k.secret_ref.key.is_empty() {
                    return err(format!("{at}.when.apiKey.secretRef"), "names are not empty");
                }
            }
            if let Some(jwt) = rule.when.as_ref().and_then(|w| w.jwt.as_ref()) {
                for (j, c) in jwt.claims.iter().enumerate() {
                    if c.name.is_empty() {
                        return err(format!("{at}.when.jwt.claims[{j}].name"), "not empty");
                    }
                    if c.values.is_empty() {
                        return err(
                            format!("{at}.when.jwt.claims[{j}].values"),
                            "at least one value",
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// A fault for testing how callers cope: a fixed delay and/or an abort,
/// each for a share of requests, optionally only for requests that carry
/// given headers (so a tester can target their own traffic). An HTTPRoute
/// or GRPCRoute rule in the same namespace applies it with the filter
/// `{type: ExtensionRef, extensionRef: {group: weft.dev, kind:
/// FaultInjection, name}}`; the caller's sidecar injects it where it
/// matches the rule, and marks what it injected (`weft-error:
/// fault-injected`, the access log's `fault`, the span's `weft.fault`).
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "FaultInjection",
    namespaced,
    derive = "PartialEq",
    shortname = "fault",
    category = "weft",
    printcolumn = r#"{"name":"Delay","type":"string","jsonPath":".spec.delay.fixedDelay"}"#,
    printcolumn = r#"{"name":"Delayed%","type":"number","jsonPath":".spec.delay.percent"}"#,
    printcolumn = r#"{"name":"Aborted%","type":"number","jsonPath":".spec.abort.percent"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "A Weft fault: a fixed delay and/or an abort for a share of the requests of the \
           HTTPRoute or GRPCRoute rules that refer to it (an ExtensionRef filter)."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = kubernetes_schema)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.delay) || has(self.abort)",
    "message": "a fault has a delay, an abort, or both"
}]))]
pub struct FaultInjectionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
    /// Only requests carrying every one of these headers (exact values)
    /// get the fault; none: every request of the rule may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<FaultHeader>,
}

/// Hold `percent` of the requests for `fixedDelay` before they are sent
/// (outside the route's timeouts and retries).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub fixed_delay: String,
    /// The share of requests delayed, 0 to 100 (to a millionth).
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: f64,
}

/// Answer `percent` of the requests at once, without sending them: with
/// `httpStatus`, and gRPC requests with `grpcStatus` (trailers-only). One
/// of the two is enough: the other is mapped from it.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.httpStatus) || has(self.grpcStatus)",
    "message": "an abort has an httpStatus, a grpcStatus, or both"
}]))]
pub struct FaultAbort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 200, max = 599))]
    pub http_status: Option<u16>,
    /// A gRPC status code by name, e.g. `UNAVAILABLE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GRPC_CODE_PATTERN))]
    pub grpc_status: Option<String>,
    /// The share of requests aborted, 0 to 100 (to a millionth).
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: f64,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultHeader {
    #[schemars(regex(pattern = "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"))]
    pub name: String,
    pub value: String,
}

impl FaultInjectionSpec {
    /// What the schema (and its CEL rules) refuse, refused the same way in
    /// local mode, naming the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        fn err<T>(
            field: impl Into<String>,
            message: impl Into<String>,
        ) -> Result<T, (String, String)> {
            Err((field.into(), message.into()))
        }
        let percent = |field: &str, p: f64| {
            if (0.0..=100.0).contains(&p) {
                Ok(())
            } else {
                err(field, format!("{p} is not a percentage (0 to 100)"))
            }
        };
        if self.delay.is_none() && self.abort.is_none() {
            return err("spec", "a fault has a delay, an abort, or both");
        }
        if let Some(d) = &self.delay {
            gateway_duration(&d.fixed_delay).map_err(|e| ("spec.delay.fixedDelay".into(), e))?;
            percent("spec.delay.percent", d.percent)?;
        }
        if let Some(a) = &self.abort {
            if a.http_status.is_none() && a.grpc_status.is_none() {
                return err(
                    "spec.abort",
                    "an abort has an httpStatus, a grpcStatus, or both",
                );
            }
            if let Some(s) = a.http_status
                && !(200..=599).contains(&s)
            {
                return err(
                    "spec.abort.httpStatus",
                    format!("{s} is not a status to answer with (200-599)"),
                );
            }
            if let Some(c) = &a.grpc_status
                && grpc_code(c).is_none()
            {
                return err(
                    "spec.abort.grpcStatus",
                    format!("`{c}` is not a gRPC status code name (e.g. UNAVAILABLE)"),
                );
            }
            percent("spec.abort.percent", a.percent)?;
        }
        for (i, h) in self.headers.iter().enumerate() {
            if http::header::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                return err(
                    format!("spec.headers[{i}].name"),
                    format!("`{}` is not an HTTP header name", h.name),
                );
            }
        }
        Ok(())
    }
}

/// What the API server needs beyond what schemars derives, applied to the
/// whole spec schema (kube's own transforms then make it structural):
/// - unsigned integers get the bound of their type and a format Kubernetes
///   knows: schemars says `format: uint32` with only `minimum: 0`, so the
///   API server would store a 5000000000 the control plane cannot read;
/// - `null` leaves the enums of optional fields (they are `nullable`
///   already, and the API server listed `"null"` among the supported
///   values in its error messages).
fn kubernetes_schema(schema: &mut schemars::Schema) {
    RecursiveTransform(|s: &mut schemars::Schema| {
        let Some(obj) = s.as_object_mut() else {
            return;
        };
        let bound = match obj.get("format").and_then(|f| f.as_str()) {
            Some("uint8") => Some(("int32", u64::from(u8::MAX))),
            Some("uint16") => Some(("int32", u64::from(u16::MAX))),
            Some("uint32") => Some(("int64", u64::from(u32::MAX))),
            _ => None,
        };
        if let Some((format, max)) = bound {
            obj.insert("format".into(), format.into());
            let max = obj
                .get("maximum")
                .and_then(|m| m.as_f64())
                .map_or(max, |m| max.min(m as u64));
            obj.insert("maximum".into(), max.into());
        }
        if let Some(serde_json::Value::Array(values)) = obj.get_mut("enum") {
            values.retain(|v| !v.is_null());
        }
    })
    .transform(schema);
}

/// Every Weft CRD, generated from these types.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        TrafficPolicy::crd(),
        AuthorizationPolicy::crd(),
        FaultInjection::crd(),
        RequestAuthentication::crd(),
    ]
}

/// Where k8s/crds/ keeps a CRD: `<group>_<plural>.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// One CRD as k8s/crds/ holds it: a header saying where it comes from,
/// then the YAML.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_norway::Error> {
    let yaml = serde_norway::to_string(crd)?;
    Ok(format!(
        "# Generated from the Rust types in control-plane/src/discovery/crds.rs: do not edit.\n\
         # Regenerate with `WEFT_UPDATE_CRDS=1 cargo test -p weft-control crds`\n\
         # (or print it with `weftctl crds`).\n\
         ---\n{yaml}"
    ))
}

/// Every Weft CRD as multi-document YAML for `kubectl apply -f -` (what
/// `weftctl crds` prints and k8s/crds/ holds).
pub fn crds_yaml() -> Result<String, serde_norway::Error> {
    crds().iter().map(crd_yaml).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// k8s/crds/ holds what the types generate; `WEFT_UPDATE_CRDS=1`
    /// rewrites it.
    #[test]
    fn checked_in_crds_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace holds control-plane/")
            .join("k8s/crds");
        let update = std::env::var_os("WEFT_UPDATE_CRDS").is_some_and(|v| v == "1");
        for crd in crds() {
            let file = dir.join(crd_file_name(&crd));
            let want = crd_yaml(&crd).unwrap();
            if update {
                std::fs::create_dir_all(&dir).expect("creating k8s/crds");
                std::fs::write(&file, &want)
                    .unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
                continue;
            }
            let Ok(have) = std::fs::read_to_string(&file) else {
                panic!(
                    "{} is missing; generate it with `WEFT_UPDATE_CRDS=1 cargo test -p \
                     weft-control crds` and commit it",
                    file.display()
                );
            };
            let line = first_difference(&have, &want);
            assert!(
                have == want,
                "{} is not what the types in control-plane/src/discovery/crds.rs generate; \
                 regenerate it with `WEFT_UPDATE_CRDS=1 cargo test -p weft-control crds` and \
                 commit it. The first difference, line {}:\n  checked in: {:?}\n  generated:  {:?}",
                file.display(),
                line + 1,
                have.lines().nth(line),
                want.lines().nth(line),
            );
        }
    }

    #[test]
    fn durations_follow_the_gateway_api_grammar() {
        for (s, ms) in [
            ("0s", 0),
            ("500ms", 500),
            ("10s", 10_000),
            ("1m", 60_000),
            ("1h30m", 5_400_000),
            ("1h1m1s1ms", 3_661_001),
            ("99999ms", 99_999),
        ] {
            assert_eq!(duration_ms(s), Ok(ms), "{s}");
        }
        // What the CRDs' pattern refuses: spaces, other units, fractions,
        // signs, 6 digits, 5 parts, nothing.
        for s in [
            "5 seconds",
            "5 s",
            "1d",
            "100us",
            "1.5s",
            "-1s",
            "+1s",
            "100000ms",
            "1s1s1s1s1s",
            "",
            "s",
            "10",
            "1H",
            " 1s",
        ] {
            assert!(duration_ms(s).is_err(), "`{s}` was taken");
        }
        // The longest the grammar allows is read, at most u32::MAX ms.
        assert_eq!(duration_ms("99999h99999h99999h99999h"), Ok(u32::MAX));
        assert_eq!(gateway_duration("99999h"), Ok(99_999 * 3_600_000));
    }

    #[test]
    fn the_grpc_code_pattern_lists_the_codes() {
        assert_eq!(
            GRPC_CODE_PATTERN,
            format!("^({})$", GRPC_CODES.join("|")),
            "the schema's pattern and grpc_code() know the same names"
        );
        assert_eq!(grpc_code("UNAVAILABLE"), Some(14));
        assert_eq!(
            grpc_code("unavailable"),
            None,
            "the schema's pattern is exact"
        );
    }

    fn spec(yaml: &str) -> TrafficPolicySpec {
        serde_norway::from_str(&format!(
            "targetRef: {{group: \"\", kind: Service, name: web}}\n{yaml}"
        ))
        .unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    /// validate() refuses what the CRD schema refuses, naming the field as
    /// the API server does (tests/tests/kube_crds.rs checks the same cases
    /// against a real API server).
    #[test]
    fn validate_refuses_what_the_schema_refuses() {
        assert_eq!(spec("").validate(), Ok(()));
        for (yaml, field) in [
            ("timeouts: {request: 5 seconds}", "spec.timeouts.request"),
            (
                "timeouts: {request: 1s, backendRequest: 2s}",
                "spec.timeouts.backendRequest",
            ),
            ("retryBudget: {ratio: 20}", "spec.retryBudget.ratio"),
            ("retryBudget: {ratio: -0.5}", "spec.retryBudget.ratio"),
            ("retryBudget: {window: 1d}", "spec.retryBudget.window"),
            (
                "outlierDetection: {maxEjectionPercent: 150}",
                "spec.outlierDetection.maxEjectionPercent",
            ),
            (
                "outlierDetection: {baseEjectionTime: 1.5s}",
                "spec.outlierDetection.baseEjectionTime",
            ),
            (
                "retryOn: {grpcCodes: [UNAVAILABLE, NOPE]}",
                "spec.retryOn.grpcCodes[1]",
            ),
            (
                "retryOn: {grpcCodes: [unavailable]}",
                "spec.retryOn.grpcCodes[0]",
            ),
            (
                "limits: {maxConcurrentRequests: 0}",
                "spec.limits.maxConcurrentRequests",
            ),
            ("limits: {maxConnections: 0}", "spec.limits.maxConnections"),
            ("limits: {queueTimeout: 100us}", "spec.limits.queueTimeout"),
            ("retry: {attempts: 11}", "spec.retry.attempts"),
            ("retry: {codes: [503, 200]}", "spec.retry.codes[1]"),
            ("retry: {backoff: 25}", "spec.retry.backoff"),
            ("idleTimeout: 30 s", "spec.idleTimeout"),
            (
                "rateLimit: {requestsPerSecond: 0}",
                "spec.rateLimit.requestsPerSecond",
            ),
            (
                "rateLimit: {requestsPerSecond: 10, burst: 0}",
                "spec.rateLimit.burst",
            ),
        ] {
            let got = spec(yaml).validate();
            assert_eq!(
                got.as_ref().map_err(|(f, _)| f.as_str()),
                Err(field),
                "{yaml}: {got:?}"
            );
        }
        for (target, field) in [
            ("{kind: Deployment, name: web}", "spec.targetRef.kind"),
            (
                "{group: apps, kind: Service, name: web}",
                "spec.targetRef.group",
            ),
            ("{kind: Service, name: \"\"}", "spec.targetRef.name"),
            ("{kind: Service, name: web, port: 0}", "spec.targetRef.port"),
        ] {
            let s: TrafficPolicySpec = serde_norway::from_str(&format!("targetRef: {target}"))
                .unwrap_or_else(|e| panic!("{target}: {e}"));
            let got = s.validate();
            assert_eq!(
                got.as_ref().map_err(|(f, _)| f.as_str()),
                Err(field),
                "{target}: {got:?}"
            );
        }
        // What the schema takes, validate() takes: a request timeout of 0s
        // is none, so any backendRequest goes; the longest durations.
        for yaml in [
            "timeouts: {request: 0s, backendRequest: 2s}",
            "timeouts: {request: 2s, backendRequest: 2000ms}",
            "idleTimeout: 99999h99999h99999h99999h",
            "retryBudget: {ratio: 10, minPerSecond: 4294967295}",
            "retry: {attempts: 10, codes: [400, 599]}",
            "outlierDetection: {maxEjectionPercent: 100}",
            "rateLimit: {requestsPerSecond: 1}",
            "rateLimit: {requestsPerSecond: 4294967295, burst: 4294967295, key: Client}",
            "rateLimit: {requestsPerSecond: 100, burst: 20, key: Route}",
        ] {
            assert_eq!(spec(yaml).validate(), Ok(()), "{yaml}");
        }
        // An unknown rate-limit key is refused by serde, as by the schema.
        assert!(
            serde_norway::from_str::<TrafficPolicySpec>(
                "targetRef: {kind: Service, name: web}\nrateLimit: {requestsPerSecond: 1, key: Header}\n"
            )
            .is_err()
        );
    }

    #[test]
    fn fault_injection_validate_refuses_what_the_schema_refuses() {
        let good = "delay: {fixedDelay: 20ms, percent: 12.5}\nabort: {httpStatus: 503, grpcStatus: UNAVAILABLE, percent: 10}\nheaders: [{name: x-fault, value: me}]\n";
        let spec: FaultInjectionSpec = serde_norway::from_str(good).unwrap();
        assert_eq!(spec.validate(), Ok(()));
        for yaml in [
            "abort: {grpcStatus: ABORTED, percent: 100}",
            "abort: {httpStatus: 200, percent: 0}",
            "delay: {fixedDelay: 1h, percent: 100}",
        ] {
            let spec: FaultInjectionSpec = serde_norway::from_str(yaml).unwrap();
            assert_eq!(spec.validate(), Ok(()), "{yaml}");
        }
        for (yaml, field) in [
            ("headers: [{name: x, value: y}]", "spec"),
            (
                "delay: {fixedDelay: 1 s, percent: 10}",
                "spec.delay.fixedDelay",
            ),
            (
                "delay: {fixedDelay: 1s, percent: 101}",
                "spec.delay.percent",
            ),
            ("delay: {fixedDelay: 1s, percent: -1}", "spec.delay.percent"),
            ("abort: {percent: 10}", "spec.abort"),
            (
                "abort: {httpStatus: 100, percent: 10}",
                "spec.abort.httpStatus",
            ),
            (
                "abort: {httpStatus: 600, percent: 10}",
                "spec.abort.httpStatus",
            ),
            (
                "abort: {grpcStatus: unavailable, percent: 10}",
                "spec.abort.grpcStatus",
            ),
            (
                "abort: {httpStatus: 503, percent: 100.5}",
                "spec.abort.percent",
            ),
            (
                "abort: {httpStatus: 503, percent: 1}\nheaders: [{name: \"a b\", value: c}]",
                "spec.headers[0].name",
            ),
        ] {
            let spec: FaultInjectionSpec = serde_norway::from_str(yaml).unwrap();
            assert_eq!(
                spec.validate().map_err(|e| e.0),
                Err(field.to_string()),
                "{yaml}"
            );
        }
        // A percentage is required; unknown fields are refused.
        for yaml in [
            "abort: {httpStatus: 503}",
            "abort: {httpStatus: 503, percent: 1, fraction: 2}",
        ] {
            assert!(
                serde_norway::from_str::<FaultInjectionSpec>(yaml).is_err(),
                "{yaml}"
            );
        }
    }

    fn first_difference(a: &str, b: &str) -> usize {
        a.lines()
            .zip(b.lines())
            .position(|(x, y)| x != y)
            .unwrap_or_else(|| a.lines().count().min(b.lines().count()))
    }

    #[test]
    fn authorization_policy_validate_refuses_what_the_schema_refuses() {
        let good = r#"
targetRef: {group: "", kind: Service, name: orders, port: 8080}
action: ALLOW
rules:
- from: [{serviceAccount: {name: checkout}}, {identity: "spiffe://cluster.local/ns/billing/sa/api"}, {namespace: ops}]
  to: {methods: [POST], paths: [{type: PathPrefix, value: /orders}], headers: [{name: x-tenant, value: acme}]}
  when: {jwt: {required: true, claims: [{name: scope, values: [orders.write]}]}}
- from: [{authenticated: true}]
"#;
        let spec: AuthorizationPolicySpec = serde_norway::from_str(good).unwrap();
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(spec.action, AuthzAction::Allow);
        let route: AuthorizationPolicySpec = serde_norway::from_str(
            "targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: r, sectionName: writes}\naction: DENY\n",
        )
        .unwrap();
        assert_eq!(route.validate(), Ok(()));
        for (yaml, field) in [
            (
                "targetRef: {kind: Deployment, name: x}",
                "spec.targetRef.kind",
            ),
            (
                "targetRef: {group: gateway.networking.k8s.io, kind: Service, name: x}",
                "spec.targetRef.kind",
            ),
            (
                "targetRef: {kind: Service, name: x, sectionName: http}",
                "spec.targetRef.sectionName",
            ),
            (
                "targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: x, port: 80}",
                "spec.targetRef.port",
            ),
            (
                "targetRef: {kind: Service, name: x, port: 0}",
                "spec.targetRef.port",
            ),
            (
                "targetRef: {kind: Service, name: x}\nrules: [{from: [{namespace: a, authenticated: true}]}]",
                "spec.rules[0].from[0]",
            ),
            (
                "targetRef: {kind: Service, name: x}\nrules: [{from: [{}]}]",
                "spec.rules[0].from[0]",
            ),
            (
                "targetRef: {kind: Service, name: x}\nrules: [{from: [{identity: checkout}]}]",
                "spec.rules[0].from[0].identity",
            ),
            (
                "targetRef: {kind: Service, name: x}\nrules: [{to: {methods: [get]}}]",
                "spec.rules[0].to.methods[0]",
            ),
            (
                "targetRef: {kind: Service, name: x}\nrules: [{to: {paths: [{type: Exact, value: orders}]}}]",
                "spec.rules[0].to.paths[0].value",
            ),
            (
                "targetRef: {kind: Service, name: x}\nrules: [{to: {headers: [{name: \"bad header\", value: v}]}}]",
                "spec.rules[0].to.headers[0].name",
            ),
            (
                "targetRef: {kind: Service, name: x}\nrules: [{when: {jwt: {claims: [{name: scope, values: []}]}}}]",
                "spec.rules[0].when.jwt.claims[0].values",
            ),
        ] {
            let spec: AuthorizationPolicySpec = serde_norway::from_str(yaml).unwrap();
            assert_eq!(
                spec.validate().map_err(|e| e.0),
                Err(field.to_string()),
                "{yaml}"
            );
        }
        // Unknown actions and fields are refused by serde, as by the schema.
        assert!(
            serde_norway::from_str::<AuthorizationPolicySpec>(
                "targetRef: {kind: Service, name: x}\naction: LOG\n"
            )
            .is_err()
        );
        assert!(
            serde_norway::from_str::<AuthorizationPolicySpec>(
                "targetRef: {kind: Service, name: x}\nrulez: []\n"
            )
            .is_err()
        );
    }
}
