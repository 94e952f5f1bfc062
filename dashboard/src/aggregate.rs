//! One read's increases, summed into what the page shows: edges between
//! workloads (from the called side, which knows both ends: itself, and its
//! caller by the identity mTLS proved), Services and routes (from the
//! calling side: what clients saw, retries included), and the answers the
//! proxies generated themselves (`weft-error`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::counters::PodKey;
use crate::status::Status;
use crate::text::Sample;

/// A node of the graph: `namespace/workload`, or an identity that is not
/// one workload's (`spiffe://…`), or [`UNMESHED`].
pub type NodeId = String;

/// Callers without a verified identity (plaintext, e.g. a permissive pod's
/// unmeshed clients).
pub const UNMESHED: &str = "unmeshed";

/// HTTP requests and their answers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Http {
    pub requests: f64,
    pub responses: f64,
    pub successes: f64,
    /// Requests that travelled over mTLS between sidecars.
    pub mtls: f64,
    /// The latency histogram: (upper bound in ms, cumulative count), sorted.
    pub buckets: Vec<(f64, f64)>,
}

impl Http {
    fn count(&mut self, s: &Sample) {
        match s.name.as_str() {
            "request_total" => {
                self.requests += s.value;
                if s.label("tls") == "true" {
                    self.mtls += s.value;
                }
            }
            "response_total" => {
                self.responses += s.value;
                if s.label("classification") == "success" {
                    self.successes += s.value;
                }
            }
            "response_latency_ms_bucket" => {
                let le = match s.label("le") {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap_or(f64::INFINITY),
                };
                self.add_bucket(le, s.value);
            }
            _ => {}
        }
    }

    fn add_bucket(&mut self, le: f64, count: f64) {
        match self.buckets.binary_search_by(|(b, _)| b.total_cmp(&le)) {
            Ok(i) => self.buckets[i].1 += count,
            Err(i) => self.buckets.insert(i, (le, count)),
        }
    }

    pub fn merge(&mut self, o: &Http) {
        self.requests += o.requests;
        self.responses += o.responses;
        self.successes += o.successes;
        self.mtls += o.mtls;
        for &(le, c) in &o.buckets {
            self.add_bucket(le, c);
        }
    }

    /// Successes among the answers (a 5xx, or a gRPC error, is a failure).
    pub fn success_rate(&self) -> Option<f64> {
        (self.responses > 0.0).then(|| (self.successes / self.responses).min(1.0))
    }

    pub fn mtls_share(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| (self.mtls / self.requests).min(1.0))
    }

    /// The `q` quantile in ms (see [`quantile`]).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.buckets, q)
    }
}

/// The `q` quantile of a cumulative histogram (upper bound, count; sorted),
/// interpolated within its bucket as Prometheus's `histogram_quantile` does.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let want = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= want {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let span = count - prev.1;
            let frac = if span > 0.0 {
                (want - prev.1) / span
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    None
}

/// Opaque (and all) connections.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tcp {
    pub opens: f64,
    pub bytes: f64,
    /// Open at the last read (a gauge: not summed over time).
    pub open_now: f64,
}

/// What went from one node to another.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Flow {
    pub http: Http,
    pub tcp: Tcp,
}

/// What the callers of one Service port (and route) saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Calls {
    pub http: Http,
    /// Retries the budget allowed.
    pub retries: f64,
    /// The identities that answered (for links to their traces).
    pub servers: BTreeSet<String>,
    /// The workloads that called.
    pub callers: BTreeSet<NodeId>,
}

/// Answers the proxies generated, for one Service and reason.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Generated {
    pub count: f64,
    /// The identities of the proxies that answered so.
    pub callers: BTreeSet<String>,
}

/// One read's increases (or several reads', merged).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Round {
    /// How long it covers.
    pub seconds: f64,
    pub edges: BTreeMap<(NodeId, NodeId), Flow>,
    /// By (Service port, route).
    pub services: BTreeMap<(String, String), Calls>,
    /// By (Service port, reason).
    pub errors: BTreeMap<(String, String), Generated>,
}

/// Who is who: each proxy's node and identity, and the nodes of each
/// identity.
#[derive(Debug, Default)]
pub struct Directory {
    pods: HashMap<PodKey, (NodeId, String)>,
    identities: HashMap<String, BTreeSet<NodeId>>,
}

impl Directory {
    pub fn new(status: &Status) -> Directory {
        let mut d = Directory::default();
        for p in &status.proxies {
            let node = format!("{}/{}", p.namespace, p.workload());
            d.identities
                .entry(p.identity.clone())
                .or_default()
                .insert(node.clone());
            d.pods.insert(p.key(), (node, p.identity.clone()));
        }
        d
    }

    /// The node of a caller known by its identity: its workload when only
    /// one workload runs as it; the identity itself otherwise.
    pub fn caller(&self, identity: &str) -> NodeId {
        if identity.is_empty() {
            return UNMESHED.to_string();
        }
        match self.identities.get(identity) {
            Some(nodes) if nodes.len() == 1 => nodes.iter().next().cloned().unwrap_or_default(),
            _ => identity.to_string(),
        }
    }

    pub fn pod(&self, pod: &PodKey) -> Option<&(NodeId, String)> {
        self.pods.get(pod)
    }
}

impl Round {
    /// Sums one read's increases (see [`crate::counters::Counters`]).
    pub fn build(seconds: f64, dir: &Directory, proxies: &[(PodKey, Vec<Sample>)]) -> Round {
        let mut round = Round {
            seconds,
            ..Round::default()
        };
        for (pod, samples) in proxies {
            let Some((node, identity)) = dir.pod(pod) else {
                continue;
            };
            for s in samples {
                match s.label("direction") {
                    "inbound" => round.served(dir, node, s),
                    "outbound" => round.called(node, s),
                    _ => round.other(identity, s),
                }
            }
        }
        round
    }

    /// An inbound sample of `node`'s proxy: an edge from its caller.
    fn served(&mut self, dir: &Directory, node: &NodeId, s: &Sample) {
        let key = (dir.caller(s.label("peer_identity")), node.clone());
        match s.name.as_str() {
            "tcp_open_total" => self.edges.entry(key).or_default().tcp.opens += s.value,
            "tcp_read_bytes_total" | "tcp_write_bytes_total" => {
                self.edges.entry(key).or_default().tcp.bytes += s.value;
            }
            "tcp_open_connections" => self.edges.entry(key).or_default().tcp.open_now += s.value,
            "request_total" | "response_total" | "response_latency_ms_bucket" => {
                self.edges.entry(key).or_default().http.count(s);
            }
            _ => {}
        }
    }

    /// An outbound sample of `node`'s proxy: a Service it called.
    fn called(&mut self, node: &NodeId, s: &Sample) {
        if !matches!(
            s.name.as_str(),
            "request_total" | "response_total" | "response_latency_ms_bucket"
        ) || s.label("service").is_empty()
        {
            return;
        }
        let key = (s.label("service").to_string(), s.label("route").to_string());
        let calls = self.services.entry(key).or_default();
        calls.http.count(s);
        if s.name == "request_total" {
            calls.callers.insert(node.clone());
            let server = s.label("peer_identity");
            if !server.is_empty() {
                calls.servers.insert(server.to_string());
            }
        }
    }

    /// Retries and generated answers (they carry their Service and route).
    fn other(&mut self, identity: &str, s: &Sample) {
        let service = s.label("service").to_string();
        match s.name.as_str() {
            "http_retries_total" if s.label("allowed") == "true" => {
                let key = (service, s.label("route").to_string());
                self.services.entry(key).or_default().retries += s.value;
            }
            "http_proxy_errors_total" if s.value > 0.0 => {
                let key = (service, s.label("reason").to_string());
                let g = self.errors.entry(key).or_default();
                g.count += s.value;
                g.callers.insert(identity.to_string());
            }
            _ => {}
        }
    }

    /// Adds a later round: sums, except open connections, which are the
    /// later round's.
    pub fn merge(&mut self, later: &Round) {
        self.seconds += later.seconds;
        for (k, e) in self.edges.iter_mut() {
            if !later.edges.contains_key(k) {
                e.tcp.open_now = 0.0;
            }
        }
        for (k, f) in &later.edges {
            let e = self.edges.entry(k.clone()).or_default();
            e.http.merge(&f.http);
            e.tcp.opens += f.tcp.opens;
            e.tcp.bytes += f.tcp.bytes;
            e.tcp.open_now = f.tcp.open_now;
        }
        for (k, c) in &later.services {
            let e = self.services.entry(k.clone()).or_default();
            e.http.merge(&c.http);
            e.retries += c.retries;
            e.servers.extend(c.servers.iter().cloned());
            e.callers.extend(c.callers.iter().cloned());
        }
        for (k, g) in &later.errors {
            let e = self.errors.entry(k.clone()).or_default();
            e.count += g.count;
            e.callers.extend(g.callers.iter().cloned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Proxy;
    use crate::text::parse;

    fn proxy(pod: &str, workload: &str, sa: &str) -> Proxy {
        Proxy {
            namespace: "shop".into(),
            pod: pod.into(),
            workload: workload.into(),
            identity: format!("spiffe://cluster.local/ns/shop/sa/{sa}"),
            ..Proxy::default()
        }
    }

    fn key(pod: &str) -> PodKey {
        PodKey {
            namespace: "shop".into(),
            pod: pod.into(),
        }
    }

    #[test]
    fn edges_come_from_the_called_side_and_rows_from_the_calling_side() {
        let status = Status {
            proxies: vec![
                proxy("web-0", "web", "web"),
                proxy("api-v1-0", "api-v1", "api"),
                proxy("api-v2-0", "api-v2", "api"),
            ],
            ..Status::default()
        };
        let dir = Directory::new(&status);
        let web = parse(
            r#"request_total{direction="outbound",service="api.shop:80",route="shop/api",peer_identity="spiffe://cluster.local/ns/shop/sa/api",tls="true"} 10
response_total{direction="outbound",service="api.shop:80",route="shop/api",peer_identity="spiffe://cluster.local/ns/shop/sa/api",tls="true",status_code="200",classification="success",grpc_status=""} 10
http_retries_total{service="api.shop:80",route="shop/api",reason="status",allowed="true"} 2
http_proxy_errors_total{service="api.shop:80",route="shop/api",reason="timeout"} 1
"#,
        );
        let api = parse(
            r#"request_total{direction="inbound",service="8080",route="",peer_identity="spiffe://cluster.local/ns/shop/sa/web",tls="true"} 8
response_total{direction="inbound",service="8080",route="",peer_identity="spiffe://cluster.local/ns/shop/sa/web",tls="true",status_code="200",classification="success",grpc_status=""} 6
response_total{direction="inbound",service="8080",route="",peer_identity="spiffe://cluster.local/ns/shop/sa/web",tls="true",status_code="503",classification="failure",grpc_status=""} 2
response_latency_ms_bucket{direction="inbound",service="8080",route="",peer_identity="spiffe://cluster.local/ns/shop/sa/web",tls="true",le="1.0"} 4
response_latency_ms_bucket{direction="inbound",service="8080",route="",peer_identity="spiffe://cluster.local/ns/shop/sa/web",tls="true",le="+Inf"} 8
request_total{direction="inbound",service="8080",route="",peer_identity="",tls="false"} 3
tcp_open_connections{direction="inbound",tls="true",peer_identity="spiffe://cluster.local/ns/shop/sa/api"} 1
"#,
        );
        let round = Round::build(
            2.0,
            &dir,
            &[
                (key("web-0"), web),
                (key("api-v1-0"), api),
                (key("gone-0"), parse("request_total 5\n")),
            ],
        );
        // web → api-v1, from api-v1's sidecar: 75% success, all mTLS.
        let e = &round.edges[&("shop/web".to_string(), "shop/api-v1".to_string())];
        assert_eq!(e.http.requests, 8.0);
        assert_eq!(e.http.success_rate(), Some(0.75));
        assert_eq!(e.http.mtls_share(), Some(1.0));
        assert_eq!(e.http.quantile(0.5), Some(1.0));
        // Plaintext callers, and an identity two workloads share.
        assert_eq!(
            round.edges[&(UNMESHED.to_string(), "shop/api-v1".to_string())]
                .http
                .requests,
            3.0
        );
        let shared = (
            "spiffe://cluster.local/ns/shop/sa/api".to_string(),
            "shop/api-v1".to_string(),
        );
        assert_eq!(round.edges[&shared].tcp.open_now, 1.0);
        // The Service and route as web saw them, its retries with them.
        let calls = &round.services[&("api.shop:80".to_string(), "shop/api".to_string())];
        assert_eq!((calls.http.requests, calls.retries), (10.0, 2.0));
        assert_eq!(calls.callers.iter().collect::<Vec<_>>(), ["shop/web"]);
        let generated = &round.errors[&("api.shop:80".to_string(), "timeout".to_string())];
        assert_eq!(generated.count, 1.0);
        assert_eq!(round.edges.len(), 3, "{:?}", round.edges.keys());

        // Merged with a later round: sums, and the later open connections.
        let mut sum = round.clone();
        let mut later = Round {
            seconds: 2.0,
            ..Round::default()
        };
        later.edges.insert(shared.clone(), Flow::default());
        sum.merge(&later);
        assert_eq!(sum.seconds, 4.0);
        assert_eq!(sum.edges[&shared].tcp.open_now, 0.0);
        assert_eq!(
            sum.edges[&("shop/web".to_string(), "shop/api-v1".to_string())]
                .http
                .requests,
            8.0
        );
    }
}
