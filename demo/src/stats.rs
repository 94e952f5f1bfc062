//! Golden metrics for the live table, read from the sidecars' `/metrics`:
//! per Service and route, from the calling side (outbound), so each row is
//! what a client of that Service saw.

use std::collections::BTreeMap;

use serde::Serialize;

pub use weft_dashboard::text::{Sample, parse};

/// A row of the table: one Service (and route) as its clients saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Row {
    pub service: String,
    pub route: String,
    /// `http` or `tcp` (opaque: counted in connections).
    pub protocol: &'static str,
    pub requests: f64,
    pub successes: f64,
    pub mtls: f64,
    pub retries: f64,
    /// Cumulative latency histogram: (upper bound ms, count).
    #[serde(skip)]
    pub buckets: Vec<(f64, f64)>,
}

impl Row {
    /// Capped at 1: in a one-second window, responses to the previous
    /// second's requests can outnumber this second's requests.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| (self.successes / self.requests).min(1.0))
    }

    pub fn mtls_share(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| self.mtls / self.requests)
    }

    /// The `q` quantile in ms, interpolated within its bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        weft_dashboard::aggregate::quantile(&self.buckets, q)
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: Option<&Row>) -> Row {
        let Some(e) = earlier else {
            return self.clone();
        };
        Row {
            service: self.service.clone(),
            route: self.route.clone(),
            protocol: self.protocol,
            requests: self.requests - e.requests,
            successes: self.successes - e.successes,
            mtls: self.mtls - e.mtls,
            retries: self.retries - e.retries,
            buckets: self
                .buckets
                .iter()
                .map(|&(le, c)| {
                    let before = e
                        .buckets
                        .iter()
                        .find(|(l, _)| *l == le)
                        .map_or(0.0, |b| b.1);
                    (le, c - before)
                })
                .collect(),
        }
    }
}

/// Rows keyed by (service, route), summed over the given proxies' metrics:
/// what callers saw (outbound), and, for proxies given a `workload` name
/// (e.g. `backend v2`), what the workload served (inbound), so a canary's
/// shift shows. `tcp_services` maps a peer identity to the Service name of
/// an opaque row.
pub fn rows(
    proxies: &[(Option<String>, Vec<Sample>)],
    tcp_services: &BTreeMap<String, String>,
) -> BTreeMap<(String, String), Row> {
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    for (workload, samples) in proxies {
        for s in samples {
            match s.labels.get("direction").map(String::as_str) {
                Some("inbound") => {
                    if let Some(w) = workload {
                        add_served(&mut rows, w, s);
                    }
                }
                Some("outbound") => add_called(&mut rows, s, tcp_services),
                // Retries carry the Service and route they were for.
                _ if s.name == "http_retries_total" && label(s, "allowed") == "true" => {
                    let key = (label(s, "service"), label(s, "route"));
                    entry(&mut rows, &key, "http").retries += s.value;
                }
                _ => {}
            }
        }
    }
    for row in rows.values_mut() {
        row.buckets
            .sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    }
    rows
}

/// A label's value, empty when absent.
fn label(s: &Sample, key: &str) -> String {
    s.labels.get(key).cloned().unwrap_or_default()
}

/// An inbound sample of `workload`'s sidecar, into its `(served)` row.
fn add_served(rows: &mut BTreeMap<(String, String), Row>, workload: &str, s: &Sample) {
    let key = (workload.to_string(), "(served)".to_string());
    match s.name.as_str() {
        "request_total" => {
            let row = entry(rows, &key, "served");
            row.requests += s.value;
            if label(s, "tls") == "true" {
                row.mtls += s.value;
            }
        }
        "response_total" if label(s, "classification") == "success" => {
            entry(rows, &key, "served").successes += s.value;
        }
        _ => {}
    }
}

/// An outbound sample into the row of the Service called.
fn add_called(
    rows: &mut BTreeMap<(String, String), Row>,
    s: &Sample,
    tcp_services: &BTreeMap<String, String>,
) {
    let key = (label(s, "service"), label(s, "route"));
    match s.name.as_str() {
        "request_total" => {
            let row = entry(rows, &key, "http");
            row.requests += s.value;
            if label(s, "tls") == "true" {
                row.mtls += s.value;
            }
        }
        "response_total" if label(s, "classification") == "success" => {
            entry(rows, &key, "http").successes += s.value;
        }
        "response_latency_ms_bucket" => {
            let le = match label(s, "le").as_str() {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or(f64::INFINITY),
            };
            let row = entry(rows, &key, "http");
            match row.buckets.iter_mut().find(|(b, _)| *b == le) {
                Some(b) => b.1 += s.value,
                None => row.buckets.push((le, s.value)),
            }
        }
        "tcp_open_total" => {
            if let Some(svc) = tcp_services.get(&label(s, "peer_identity")) {
                let key = (svc.clone(), "(tcp)".to_string());
                let row = entry(rows, &key, "tcp");
                row.requests += s.value;
                row.successes += s.value;
                if label(s, "tls") == "true" {
                    row.mtls += s.value;
                }
            }
        }
        _ => {}
    }
}

fn entry<'a>(
    rows: &'a mut BTreeMap<(String, String), Row>,
    key: &(String, String),
    protocol: &'static str,
) -> &'a mut Row {
    rows.entry(key.clone()).or_insert_with(|| Row {
        service: key.0.clone(),
        route: key.1.clone(),
        protocol,
        ..Row::default()
    })
}

/// `12.3` or `-`.
pub fn fmt_opt(v: Option<f64>, scale: f64, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{:.*}", digits, v * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP request Requests.
request_total{direction="outbound",service="backend.demo:80",route="backend",peer_identity="spiffe://x",tls="true"} 10
request_total{direction="outbound",service="backend.demo:80",route="backend",peer_identity="",tls="false"} 10
request_total{direction="inbound",service="8080",route="",peer_identity="spiffe://y",tls="true"} 99
response_total{direction="outbound",service="backend.demo:80",route="backend",peer_identity="spiffe://x",tls="true",status_code="200",classification="success",grpc_status=""} 19
response_total{direction="outbound",service="backend.demo:80",route="backend",peer_identity="spiffe://x",tls="true",status_code="503",classification="failure",grpc_status=""} 1
response_latency_ms_bucket{direction="outbound",service="backend.demo:80",route="backend",peer_identity="spiffe://x",tls="true",le="1.0"} 10
response_latency_ms_bucket{direction="outbound",service="backend.demo:80",route="backend",peer_identity="spiffe://x",tls="true",le="2.0"} 20
response_latency_ms_bucket{direction="outbound",service="backend.demo:80",route="backend",peer_identity="spiffe://x",tls="true",le="+Inf"} 20
http_retries_total{service="backend.demo:80",route="backend",reason="status",allowed="true"} 3
http_retries_total{service="backend.demo:80",route="backend",reason="status",allowed="false"} 5
tcp_open_total{direction="outbound",tls="true",peer_identity="spiffe://db"} 7
# EOF
"#;

    #[test]
    fn rows_sum_outbound_series_by_service_and_route() {
        let tcp = BTreeMap::from([("spiffe://db".to_string(), "db".to_string())]);
        let rows = rows(&[(None, parse(TEXT))], &tcp);
        let r = &rows[&("backend.demo:80".to_string(), "backend".to_string())];
        assert_eq!(
            (r.requests, r.successes, r.mtls, r.retries),
            (20.0, 19.0, 10.0, 3.0)
        );
        assert_eq!(r.success_rate(), Some(0.95));
        assert_eq!(r.mtls_share(), Some(0.5));
        assert_eq!(r.quantile(0.5), Some(1.0));
        assert_eq!(r.quantile(0.75), Some(1.5));
        let db = &rows[&("db".to_string(), "(tcp)".to_string())];
        assert_eq!((db.requests, db.mtls), (7.0, 7.0));
        assert_eq!(rows.len(), 2);
        let served = super::rows(&[(Some("backend v1".into()), parse(TEXT))], &tcp);
        let v1 = &served[&("backend v1".to_string(), "(served)".to_string())];
        assert_eq!((v1.requests, v1.mtls), (99.0, 99.0));

        let later = Row {
            requests: 30.0,
            ..r.clone()
        };
        assert_eq!(later.since(Some(r)).requests, 10.0);
    }
}
