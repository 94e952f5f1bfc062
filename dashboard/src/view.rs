//! What the page is sent: the whole picture as JSON, rates over the window.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;

use crate::aggregate::{Http, UNMESHED};
use crate::counters::PodKey;
use crate::history::History;
use crate::status::Status;
use crate::text::Sample;

/// A proxy's gauges at its last read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gauges {
    pub cert_expiry: Option<f64>,
    pub last_update: Option<f64>,
    pub snapshot_version: Option<f64>,
}

impl Gauges {
    pub fn read(samples: &[Sample]) -> Gauges {
        let get = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
        Gauges {
            cert_expiry: get("identity_cert_expiry_timestamp_seconds"),
            last_update: get("discovery_last_update_timestamp_seconds"),
            snapshot_version: get("discovery_snapshot_version"),
        }
    }
}

/// Everything a model is made from.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub at_ms: u64,
    /// Where metrics come from, for the header.
    pub source: &'a str,
    pub control_plane: &'a str,
    /// The last status read (kept while the control plane cannot be read).
    pub status: Option<&'a Status>,
    /// Why the latest read of the status failed, if it did.
    pub status_error: Option<&'a str>,
    pub window: Duration,
    pub history: &'a History,
    pub gauges: &'a HashMap<PodKey, Gauges>,
    /// Proxies whose metrics could not be read, and why.
    pub unread: &'a BTreeMap<PodKey, String>,
    /// Jaeger's UI, for links.
    pub jaeger: &'a str,
}

#[derive(Debug, Serialize)]
pub struct Model {
    pub at_unix_ms: u64,
    pub source: String,
    pub control_plane: ControlPlane,
    pub window_seconds: f64,
    pub jaeger: String,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub services: Vec<ServiceRow>,
    pub errors: Vec<ErrorRow>,
    pub proxies: Vec<ProxyRow>,
    pub manifest_errors: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct ControlPlane {
    pub url: String,
    pub up: bool,
    pub error: String,
    pub version: u64,
}

#[derive(Debug, Serialize)]
pub struct Node {
    pub id: String,
    pub namespace: String,
    pub name: String,
    /// `workload`, `identity` (more than one workload runs as it, or none
    /// the control plane knows) or `unmeshed`.
    pub kind: &'static str,
    pub pods: usize,
    /// Pods whose proxy's metrics were read.
    pub pods_read: usize,
    pub identity: String,
    pub jaeger: String,
}

#[derive(Debug, Serialize)]
pub struct Edge {
    pub src: String,
    pub dst: String,
    /// `http` when requests were seen, else `tcp`.
    pub protocol: &'static str,
    pub rps: f64,
    pub success: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Share of requests (HTTP) over mTLS; for TCP, whether the caller had
    /// an identity (connections are only counted with one over mTLS).
    pub mtls: Option<f64>,
    /// Connections opened per second, and open at the last read.
    pub cps: f64,
    pub open: f64,
    pub bytes_per_s: f64,
    /// `good` (≥ 99% success), `warn` (≥ 95%), `bad`, or `idle`.
    pub health: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ServiceRow {
    pub service: String,
    pub route: String,
    pub rps: f64,
    pub success: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub retries_per_s: f64,
    pub mtls: Option<f64>,
    pub callers: Vec<String>,
    pub spark_rps: Vec<f64>,
    pub spark_success: Vec<Option<f64>>,
    pub health: &'static str,
    pub jaeger: String,
}

#[derive(Debug, Serialize)]
pub struct ErrorRow {
    pub service: String,
    pub reason: String,
    /// In the window.
    pub count: f64,
    pub per_s: f64,
    pub jaeger: String,
}

#[derive(Debug, Serialize)]
pub struct ProxyRow {
    pub namespace: String,
    pub pod: String,
    pub workload: String,
    pub identity: String,
    pub connected: bool,
    /// No stream to the replica read: another replica serves it (or it has
    /// not connected yet).
    pub elsewhere: bool,
    pub current: bool,
    pub control_version: u64,
    pub sent_version: u64,
    pub acked_version: u64,
    pub ack_error: String,
    /// What the proxy says it runs.
    pub applied_version: Option<u64>,
    pub cert_expires_unix: Option<f64>,
    pub cert_expires_in_s: Option<f64>,
    /// Since the proxy last applied a snapshot.
    pub snapshot_age_s: Option<f64>,
    /// Empty when its metrics were read; why not otherwise.
    pub unread: String,
}

/// Points in a sparkline (over `--history`).
const SPARK_POINTS: usize = 60;

/// `good`, `warn`, `bad` or `idle`, by success rate.
fn health(http: &Http) -> &'static str {
    match http.success_rate() {
        None => "idle",
        Some(s) if s >= 0.99 => "good",
        Some(s) if s >= 0.95 => "warn",
        Some(_) => "bad",
    }
}

/// A Jaeger search for `service` (a SPIFFE ID: the proxies' service name),
/// with `tags` when given.
pub fn jaeger_link(base: &str, service: &str, tags: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("service", service);
    if !tags.is_empty() {
        let map: serde_json::Map<String, serde_json::Value> = tags
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        q.append_pair("tags", &serde_json::Value::Object(map).to_string());
    }
    q.append_pair("lookback", "1h");
    q.append_pair("limit", "20");
    format!("{}/search?{}", base.trim_end_matches('/'), q.finish())
}

pub fn model(i: &Inputs<'_>) -> Model {
    let seconds_now = i.at_ms as f64 / 1000.0;
    let window = i.history.window(i.window);
    let per_s = |v: f64| {
        if window.seconds > 0.0 {
            v / window.seconds
        } else {
            0.0
        }
    };
    let empty = Status::default();
    let status = i.status.unwrap_or(&empty);

    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for p in &status.proxies {
        let id = format!("{}/{}", p.namespace, p.workload());
        let n = nodes.entry(id.clone()).or_insert_with(|| Node {
            id,
            namespace: p.namespace.clone(),
            name: p.workload().to_string(),
            kind: "workload",
            pods: 0,
            pods_read: 0,
            identity: p.identity.clone(),
            jaeger: jaeger_link(i.jaeger, &p.identity, &[]),
        });
        n.pods += 1;
        if !i.unread.contains_key(&p.key()) && i.gauges.contains_key(&p.key()) {
            n.pods_read += 1;
        }
    }

    let mut edges = Vec::new();
    for ((src, dst), f) in &window.edges {
        let http = f.http.requests > 0.0;
        if !http && f.tcp.opens <= 0.0 && f.tcp.open_now <= 0.0 {
            continue;
        }
        for id in [src, dst] {
            if !nodes.contains_key(id) {
                let unmeshed = id == UNMESHED;
                nodes.insert(
                    id.clone(),
                    Node {
                        id: id.clone(),
                        namespace: String::new(),
                        name: if unmeshed {
                            "unmeshed clients".into()
                        } else {
                            id.clone()
                        },
                        kind: if unmeshed { "unmeshed" } else { "identity" },
                        pods: 0,
                        pods_read: 0,
                        identity: if unmeshed { String::new() } else { id.clone() },
                        jaeger: String::new(),
                    },
                );
            }
        }
        edges.push(Edge {
            src: src.clone(),
            dst: dst.clone(),
            protocol: if http { "http" } else { "tcp" },
            rps: per_s(f.http.requests),
            success: f.http.success_rate(),
            p50_ms: f.http.quantile(0.5),
            p99_ms: f.http.quantile(0.99),
            mtls: if http {
                f.http.mtls_share()
            } else {
                Some(if src == UNMESHED { 0.0 } else { 1.0 })
            },
            cps: per_s(f.tcp.opens),
            open: f.tcp.open_now,
            bytes_per_s: per_s(f.tcp.bytes),
            health: if http { health(&f.http) } else { "good" },
        });
    }

    let services = window
        .services
        .iter()
        .filter(|(_, c)| c.http.requests > 0.0 || c.http.responses > 0.0)
        .map(|(key, c)| {
            let spark = i.history.spark(key, SPARK_POINTS);
            ServiceRow {
                service: key.0.clone(),
                route: key.1.clone(),
                rps: per_s(c.http.requests),
                success: c.http.success_rate(),
                p50_ms: c.http.quantile(0.5),
                p95_ms: c.http.quantile(0.95),
                p99_ms: c.http.quantile(0.99),
                retries_per_s: per_s(c.retries),
                mtls: c.http.mtls_share(),
                callers: c.callers.iter().cloned().collect(),
                spark_rps: spark.iter().map(|p| p.0).collect(),
                spark_success: spark.iter().map(|p| p.1).collect(),
                health: health(&c.http),
                jaeger: c
                    .servers
                    .iter()
                    .next()
                    .map(|id| jaeger_link(i.jaeger, id, &[]))
                    .unwrap_or_default(),
            }
        })
        .collect();

    let errors = window
        .errors
        .iter()
        .map(|((service, reason), g)| ErrorRow {
            service: service.clone(),
            reason: reason.clone(),
            count: g.count,
            per_s: per_s(g.count),
            jaeger: g
                .callers
                .iter()
                .next()
                .map(|id| jaeger_link(i.jaeger, id, &[("weft.error", reason)]))
                .unwrap_or_default(),
        })
        .collect();

    let proxies = status
        .proxies
        .iter()
        .map(|p| {
            let g = i.gauges.get(&p.key()).cloned().unwrap_or_default();
            let unread = match (i.unread.get(&p.key()), i.gauges.contains_key(&p.key())) {
                (Some(why), _) => why.clone(),
                (None, true) => String::new(),
                (None, false) => "not read yet".into(),
            };
            ProxyRow {
                namespace: p.namespace.clone(),
                pod: p.pod.clone(),
                workload: p.workload().to_string(),
                identity: p.identity.clone(),
                connected: p.connected,
                elsewhere: p.elsewhere,
                current: p.current,
                control_version: status.version,
                sent_version: p.sent_version,
                acked_version: p.acked_version,
                ack_error: p.ack_error.clone(),
                applied_version: g.snapshot_version.map(|v| v as u64),
                cert_expires_unix: g.cert_expiry,
                cert_expires_in_s: g.cert_expiry.map(|t| t - seconds_now),
                snapshot_age_s: g
                    .last_update
                    .filter(|t| *t > 0.0)
                    .map(|t| (seconds_now - t).max(0.0)),
                unread,
            }
        })
        .collect();

    Model {
        at_unix_ms: i.at_ms,
        source: i.source.to_string(),
        control_plane: ControlPlane {
            url: i.control_plane.to_string(),
            up: i.status_error.is_none(),
            error: i.status_error.unwrap_or_default().to_string(),
            version: status.version,
        },
        window_seconds: window.seconds,
        jaeger: i.jaeger.to_string(),
        nodes: nodes.into_values().collect(),
        edges,
        services,
        errors,
        proxies,
        manifest_errors: status.errors.clone(),
    }
}
