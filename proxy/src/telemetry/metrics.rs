//! The proxy's Prometheus metrics. Labels are drawn from small fixed sets so the
//! registry's size does not grow with traffic.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Which listener a connection came through.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

/// Whether a proxied connection's mesh leg was mTLS.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum TlsStatus {
    /// mTLS with a peer sidecar, whose identity labels the series.
    Mtls,
    /// Plaintext: no identity, a passthrough destination, a permissive
    /// inbound client, or a connection that ended before TLS was settled.
    Plain,
    /// An outbound connection proxied as HTTP: each request picks its own
    /// endpoint and its own TLS, counted in the HTTP metrics.
    PerRequest,
}

impl EncodeLabelValue for TlsStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(
            encoder,
            match self {
                TlsStatus::Mtls => "true",
                TlsStatus::Plain => "false",
                TlsStatus::PerRequest => "per_request",
            },
        )
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpLabels {
    direction: Direction,
    tls: TlsStatus,
    /// The other sidecar's SPIFFE ID; empty without mTLS.
    peer_identity: String,
}

/// TCP metrics for both directions, by the peer's identity and TLS status.
/// The peer's identity is a workload identity, so the label set grows with
/// the service accounts a pod talks to, not with traffic.
#[derive(Clone, Debug, Default)]
pub struct TcpMetrics {
    open_total: Family<TcpLabels, Counter>,
    close_total: Family<TcpLabels, Counter>,
    open_connections: Family<TcpLabels, Gauge>,
    read_bytes: Family<TcpLabels, Counter>,
    write_bytes: Family<TcpLabels, Counter>,
    errors: Family<DirectionLabels, Counter>,
}

impl TcpMetrics {
    fn register(&self, reg: &mut Registry) {
        reg.register(
            "tcp_open",
            "Connections accepted by the proxy",
            self.open_total.clone(),
        );
        reg.register(
            "tcp_close",
            "Connections the proxy has finished with",
            self.close_total.clone(),
        );
        reg.register(
            "tcp_open_connections",
            "Connections open now",
            self.open_connections.clone(),
        );
        reg.register(
            "tcp_read_bytes",
            "Bytes read from the accepted (downstream) connections",
            self.read_bytes.clone(),
        );
        reg.register(
            "tcp_write_bytes",
            "Bytes written to the accepted (downstream) connections",
            self.write_bytes.clone(),
        );
        reg.register(
            "tcp_forward_errors",
            "Connections that ended in an error (connect failure, reset, loop refused)",
            self.errors.clone(),
        );
    }

    /// A connection just accepted. It is counted once its peer is known
    /// ([`Connection::open`]), or as plaintext when it ends before that.
    pub fn accept(&self, direction: Direction) -> Connection {
        Connection {
            metrics: self.clone(),
            direction,
            opened: None,
        }
    }

    pub fn error(&self, direction: Direction) {
        self.errors
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }
}

/// One accepted connection, held for its life; dropping it counts the close.
#[derive(Debug)]
pub struct Connection {
    metrics: TcpMetrics,
    direction: Direction,
    opened: Option<Opened>,
}

#[derive(Debug)]
struct Opened {
    close: Counter,
    open: Gauge,
    read: Counter,
    written: Counter,
}

impl Connection {
    /// Counts the connection under its peer and returns its byte counters
    /// (read, written). Later calls return the first call's counters.
    pub fn open(
        &mut self,
        tls: TlsStatus,
        peer: Option<&weft_api::SpiffeId>,
    ) -> (Counter, Counter) {
        let opened = self.opened.get_or_insert_with(|| {
            let m = &self.metrics;
            let l = TcpLabels {
                direction: self.direction,
                tls,
                peer_identity: peer.map(|p| p.to_string()).unwrap_or_default(),
            };
            m.open_total.get_or_create(&l).inc();
            let open = m.open_connections.get_or_create(&l).clone();
            open.inc();
            Opened {
                close: m.close_total.get_or_create(&l).clone(),
                open,
                read: m.read_bytes.get_or_create(&l).clone(),
                written: m.write_bytes.get_or_create(&l).clone(),
            }
        });
        (opened.read.clone(), opened.written.clone())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.open(TlsStatus::Plain, None);
        if let Some(o) = &self.opened {
            o.open.dec();
            o.close.inc();
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    direction: Direction,
    peer_identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    direction: Direction,
    reason: &'static str,
}

/// mTLS outcomes. The peer label is a workload identity, so its cardinality
/// is the number of service accounts this pod talks to.
#[derive(Clone, Debug, Default)]
pub struct TlsMetrics {
    sessions: Family<PeerLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    detected: Family<DetectLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DetectLabels {
    direction: Direction,
    protocol: &'static str,
}

impl TlsMetrics {
    fn register(&self, reg: &mut Registry) {
        reg.register(
            "tls_sessions",
            "mTLS connections established, by peer workload identity",
            self.sessions.clone(),
        );
        reg.register(
            "tls_errors",
            "Connections refused or failed in TLS, by reason",
            self.failures.clone(),
        );
        reg.register(
            "protocol_detect",
            "Connections by the protocol found (or declared) on them",
            self.detected.clone(),
        );
    }

    /// Counts a protocol detection outcome.
    pub fn detected(&self, direction: Direction, protocol: &'static str) {
        self.detected
            .get_or_create(&DetectLabels {
                direction,
                protocol,
            })
            .inc();
    }

    pub fn session(&self, direction: Direction, peer: &weft_api::SpiffeId) {
        self.sessions
            .get_or_create(&PeerLabels {
                direction,
                peer_identity: peer.to_string(),
            })
            .inc();
    }

    pub fn failure(&self, direction: Direction, reason: &'static str) {
        self.failures
            .get_or_create(&FailureLabels { direction, reason })
            .inc();
    }
}

/// The Service and route a retry or a generated answer belongs to, as in
/// `request_total` (`name.namespace:port`, `namespace/name` or empty), so a
/// dashboard can put them beside that Service's requests.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub service: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    #[prometheus(flatten)]
    at: RouteLabels,
    reason: &'static str,
    allowed: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    #[prometheus(flatten)]
    at: RouteLabels,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    /// `namespace/name` of the route (bounded by the snapshot's routes).
    route: String,
    /// `delay` or `abort`.
    kind: &'static str,
}

/// Resilience: retries (and whether the budget allowed them), the reasons
/// of the responses the proxy generated itself, and the faults it injected.
#[derive(Clone, Debug, Default)]
pub struct RetryMetrics {
    retries: Family<RetryLabels, Counter>,
    errors: Family<ReasonLabels, Counter>,
    ejections: Counter,
    faults: Family<FaultLabels, Counter>,
}

impl RetryMetrics {
    fn register(&self, reg: &mut Registry) {
        reg.register(
            "http_retries",
            "Retries wanted, by Service, route, why and whether the retry budget allowed them",
            self.retries.clone(),
        );
        reg.register(
            "http_proxy_errors",
            "Responses the proxy generated itself, by Service, route and weft-error reason",
            self.errors.clone(),
        );
        reg.register(
            "endpoint_ejections",
            "Endpoints ejected by outlier detection (circuit breaking)",
            self.ejections.clone(),
        );
        reg.register(
            "faults_injected",
            "Faults injected by FaultInjections, by route and kind (delay, abort)",
            self.faults.clone(),
        );
    }

    /// A fault injected into a request of `route`.
    pub fn fault(&self, route: &str, kind: &'static str) {
        self.faults
            .get_or_create(&FaultLabels {
                route: route.to_string(),
                kind,
            })
            .inc();
    }

    /// A retry of a request to `at` (retries are rare: the labels are
    /// cloned only then).
    pub fn retry(&self, at: &RouteLabels, reason: &'static str, allowed: bool) {
        let allowed = if allowed { "true" } else { "false" };
        self.retries
            .get_or_create(&RetryLabels {
                at: at.clone(),
                reason,
                allowed,
            })
            .inc();
    }

    pub fn ejected(&self) {
        self.ejections.inc();
    }

    /// An answer the proxy generated for a request to `service` (by
    /// `route`), with `weft-error: reason`.
    pub fn error(&self, service: &str, route: &str, reason: &'static str) {
        let at = RouteLabels {
            service: service.to_string(),
            route: route.to_string(),
        };
        self.errors
            .get_or_create(&ReasonLabels { at, reason })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DefenceLabels {
    direction: Direction,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthzLabels {
    action: &'static str,
    /// `namespace/name`, or `default` (bounded by this pod's policies).
    policy: String,
    reason: &'static str,
}

/// Authorization decisions at this pod's sidecar.
#[derive(Clone, Debug, Default)]
pub struct AuthzMetrics {
    decisions: Family<AuthzLabels, Counter>,
    jwt: Family<JwtLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JwtLabels {
    /// `valid` or `invalid`.
    result: &'static str,
    /// Why a token was refused (a closed list), or `valid`.
    reason: &'static str,
}

impl AuthzMetrics {
    fn register(&self, reg: &mut Registry) {
        reg.register(
            "authz_decisions",
            "Authorization decisions on requests and connections, by action, policy and reason",
            self.decisions.clone(),
        );
        reg.register(
            "jwt_authn",
            "End-user tokens checked at this pod's sidecar, by result and reason",
            self.jwt.clone(),
        );
    }

    pub fn jwt(&self, result: &'static str, reason: &'static str) {
        self.jwt.get_or_create(&JwtLabels { result, reason }).inc();
    }

    pub fn decided(&self, action: &'static str, policy: &str, reason: &'static str) {
        self.decisions
            .get_or_create(&AuthzLabels {
                action,
                policy: policy.to_string(),
                reason,
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitLabels {
    /// `namespace/name` of the TrafficPolicy (bounded by this pod's limits).
    limit: String,
    /// `admitted` or `limited`.
    decision: &'static str,
}

/// Rate-limit decisions at this pod's sidecar.
#[derive(Clone, Debug, Default)]
pub struct RateLimitMetrics {
    decisions: Family<RateLimitLabels, Counter>,
}

impl RateLimitMetrics {
    fn register(&self, reg: &mut Registry) {
        reg.register(
            "rate_limit_decisions",
            "Requests admitted or refused by a rate limit, by limit",
            self.decisions.clone(),
        );
    }

    /// The counter of one limit's decisions (`admitted` or `limited`).
    pub fn counter(&self, limit: &str, decision: &'static str) -> Counter {
        self.decisions
            .get_or_create(&RateLimitLabels {
                limit: limit.to_string(),
                decision,
            })
            .clone()
    }
}

/// Limits and deadlines enforced on clients and peers, by reason: every
/// request refused or connection closed to protect the others is counted.
#[derive(Clone, Debug, Default)]
pub struct DefenceMetrics {
    enforced: Family<DefenceLabels, Counter>,
}

impl DefenceMetrics {
    fn register(&self, reg: &mut Registry) {
        reg.register(
            "defences",
            "Requests refused and connections closed by a limit or deadline, by reason",
            self.enforced.clone(),
        );
    }

    pub fn enforced(&self, direction: Direction, reason: &'static str) {
        self.enforced
            .get_or_create(&DefenceLabels { direction, reason })
            .inc();
    }

    /// How often `reason` was enforced (for tests).
    #[cfg(test)]
    pub fn count(&self, direction: Direction, reason: &'static str) -> u64 {
        self.enforced
            .get_or_create(&DefenceLabels { direction, reason })
            .get()
    }
}

/// Latency buckets in milliseconds, fine enough to resolve sub-millisecond
/// proxy overhead.
const LATENCY_MS: [f64; 18] = [
    0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 3.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
    2500.0, 5000.0, 10000.0,
];

/// Where a request went, as metric labels: bounded by the Services, routes
/// and workload identities of the mesh (never paths or pod IPs).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    /// `name.namespace:port` (outbound), or the app port (inbound).
    pub service: String,
    /// `namespace/name` of the HTTPRoute, empty without one.
    pub route: String,
    pub peer_identity: String,
    pub tls: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    #[prometheus(flatten)]
    request: RequestLabels,
    status_code: u16,
    /// `success` (not 5xx), `failure` (5xx, or a gRPC error status).
    classification: &'static str,
    /// From a trailers-only gRPC answer; empty otherwise.
    grpc_status: String,
}

type LatencyFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// HTTP golden metrics, both directions.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: LatencyFamily,
    request_bytes: Family<RequestLabels, Counter>,
    response_bytes: Family<RequestLabels, Counter>,
    grpc: Family<GrpcLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    #[prometheus(flatten)]
    request: RequestLabels,
    grpc_status: String,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(LATENCY_MS)),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            grpc: Family::default(),
        }
    }
}

impl HttpMetrics {
    fn register(&self, reg: &mut Registry) {
        reg.register("request", "HTTP requests", self.requests.clone());
        reg.register(
            "response",
            "HTTP responses, by status code and classification",
            self.responses.clone(),
        );
        reg.register(
            "response_latency_ms",
            "Time to the response headers, in milliseconds",
            self.latency.clone(),
        );
        reg.register(
            "request_bytes",
            "HTTP request body bytes",
            self.request_bytes.clone(),
        );
        reg.register(
            "response_bytes",
            "HTTP response body bytes",
            self.response_bytes.clone(),
        );
        reg.register(
            "grpc_response",
            "gRPC responses by status (from the trailers, or a trailers-only answer)",
            self.grpc.clone(),
        );
    }

    /// Counts a gRPC status.
    pub fn grpc_status(&self, labels: &RequestLabels, status: &str) {
        self.grpc
            .get_or_create(&GrpcLabels {
                request: labels.clone(),
                grpc_status: status.to_string(),
            })
            .inc();
    }

    /// Counts a request; returns its body byte counter.
    pub fn request(&self, labels: &RequestLabels) -> Counter {
        self.requests.get_or_create(labels).inc();
        self.request_bytes.get_or_create(labels).clone()
    }

    /// Counts a response and its latency; returns its body byte counter.
    pub fn response(
        &self,
        labels: &RequestLabels,
        status: http::StatusCode,
        grpc_status: Option<&str>,
        latency: std::time::Duration,
    ) -> Counter {
        let failure = status.is_server_error() || grpc_status.is_some_and(|g| g != "0");
        self.responses
            .get_or_create(&ResponseLabels {
                request: labels.clone(),
                status_code: status.as_u16(),
                classification: if failure { "failure" } else { "success" },
                grpc_status: grpc_status.unwrap_or_default().to_string(),
            })
            .inc();
        self.latency
            .get_or_create(labels)
            .observe(latency.as_secs_f64() * 1000.0);
        self.response_bytes.get_or_create(labels).clone()
    }
}

/// Every metric the proxy exports, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    pub tcp: TcpMetrics,
    pub tls: TlsMetrics,
    pub http: RetryMetrics,
    pub requests: HttpMetrics,
    pub defences: DefenceMetrics,
    pub authz: AuthzMetrics,
    pub rate_limits: RateLimitMetrics,
    pub access_log_dropped: Counter,
    pub spans: weft_api::trace::ExportMetrics,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(None, None)
    }
}

impl Metrics {
    /// The registry, with the identity metrics when the proxy has an identity.
    pub fn new(
        identity: Option<&crate::identity::IdentityMetrics>,
        discovery: Option<&crate::discovery::DiscoveryMetrics>,
    ) -> Self {
        let tcp = TcpMetrics::default();
        let tls = TlsMetrics::default();
        let mut registry = Registry::default();
        let http = RetryMetrics::default();
        let requests = HttpMetrics::default();
        tcp.register(&mut registry);
        tls.register(&mut registry);
        http.register(&mut registry);
        requests.register(&mut registry);
        let defences = DefenceMetrics::default();
        defences.register(&mut registry);
        let authz = AuthzMetrics::default();
        authz.register(&mut registry);
        let rate_limits = RateLimitMetrics::default();
        rate_limits.register(&mut registry);
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        let spans = weft_api::trace::ExportMetrics::default();
        spans.register(&mut registry);
        if let Some(m) = identity {
            m.register(&mut registry);
        }
        if let Some(m) = discovery {
            m.register(&mut registry);
        }
        Metrics {
            tcp,
            tls,
            http,
            requests,
            defences,
            authz,
            rate_limits,
            access_log_dropped,
            spans,
            registry,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_open_close_and_bytes_by_peer_and_tls() {
        let m = Metrics::default();
        let peer: weft_api::SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let mtls =
            r#"{direction="inbound",tls="true",peer_identity="spiffe://cluster.local/ns/a/sa/b"}"#;
        {
            let mut c = m.tcp.accept(Direction::Inbound);
            let (r, w) = c.open(TlsStatus::Mtls, Some(&peer));
            r.inc_by(10);
            w.inc_by(20);
            assert!(
                m.render()
                    .contains(&format!("tcp_open_connections{mtls} 1"))
            );
            // A connection that ends before its peer is known counts as plaintext.
            drop(m.tcp.accept(Direction::Outbound));
        }
        let text = m.render();
        for want in [
            format!("tcp_open_total{mtls} 1"),
            format!("tcp_close_total{mtls} 1"),
            format!("tcp_open_connections{mtls} 0"),
            format!("tcp_read_bytes_total{mtls} 10"),
            format!("tcp_write_bytes_total{mtls} 20"),
            r#"tcp_close_total{direction="outbound",tls="false",peer_identity=""} 1"#.into(),
        ] {
            assert!(text.contains(&want), "{want} missing from\n{text}");
        }
    }
}
