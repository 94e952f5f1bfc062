//! Where the numbers come from: the control plane's `/status`, and every
//! proxy's metrics, read through the control plane
//! (`/proxies/NAMESPACE/POD/metrics`) or from a Prometheus that scrapes them
//! (one query for every series the dashboard reads, by `namespace` and
//! `pod` target labels).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::counters::{COUNTERS, GAUGES, PodKey, wanted};
use crate::status::Status;
use crate::text::{Sample, parse_only};

/// For each answer: the connection, the headers and the body.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Proxies read at once through the control plane (which caps its own).
const CONCURRENCY: usize = 8;
/// A Prometheus answer for a big mesh is megabytes; this is plenty.
const MAX_BYTES: usize = 64 << 20;

/// Why something could not be read, as the page says it.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("`{0}` is not a URL")]
    Url(String),
    #[error("{url}: no answer within {TIMEOUT:?}")]
    Timeout { url: String },
    #[error("{url}: {message}")]
    Failed { url: String, message: String },
}

/// One read of everything.
#[derive(Debug)]
pub struct Read {
    pub status: Result<Status, String>,
    /// Each proxy read: its samples (counters as they stand).
    pub proxies: Vec<(PodKey, Vec<Sample>)>,
    /// Proxies listed but not read, and why.
    pub unread: BTreeMap<PodKey, String>,
}

#[derive(Clone, Debug)]
pub struct Reader {
    client: Client<HttpConnector, Empty<Bytes>>,
    control_plane: String,
    prometheus: Option<String>,
}

impl Reader {
    pub fn new(control_plane: &str, prometheus: Option<&str>) -> Reader {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(TIMEOUT));
        Reader {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            control_plane: control_plane.trim_end_matches('/').to_string(),
            prometheus: prometheus.map(|p| p.trim_end_matches('/').to_string()),
        }
    }

    /// Where the proxies' metrics come from, for the page's header.
    pub fn source(&self) -> String {
        match &self.prometheus {
            Some(p) => format!("Prometheus at {p}"),
            None => format!(
                "the proxies, through the control plane at {}",
                self.control_plane
            ),
        }
    }

    pub async fn read(&self) -> Read {
        let status = match self.get(&format!("{}/status", self.control_plane)).await {
            Ok(body) => serde_json::from_slice::<Status>(&body)
                .map(Status::with_every_pod)
                .map_err(|e| format!("{}/status is not the status: {e}", self.control_plane)),
            Err(e) => Err(e.to_string()),
        };
        let listed: Vec<PodKey> = status
            .as_ref()
            .map(|s| s.proxies.iter().map(|p| p.key()).collect())
            .unwrap_or_default();
        let (proxies, unread) = match &self.prometheus {
            Some(prom) => self.read_prometheus(prom, &listed).await,
            None => self.through_control_plane(&listed).await,
        };
        Read {
            status,
            proxies,
            unread,
        }
    }

    async fn through_control_plane(
        &self,
        listed: &[PodKey],
    ) -> (Vec<(PodKey, Vec<Sample>)>, BTreeMap<PodKey, String>) {
        let reads = futures_util::stream::iter(listed.iter().cloned())
            .map(|pod| async move {
                let url = format!(
                    "{}/proxies/{}/{}/metrics",
                    self.control_plane, pod.namespace, pod.pod
                );
                let res = self
                    .get(&url)
                    .await
                    .map(|body| parse_only(&String::from_utf8_lossy(&body), wanted));
                (pod, res)
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut proxies = Vec::new();
        let mut unread = BTreeMap::new();
        for (pod, res) in reads {
            match res {
                Ok(samples) => proxies.push((pod, samples)),
                Err(e) => {
                    unread.insert(pod, e.to_string());
                }
            }
        }
        proxies.sort_by(|a, b| a.0.cmp(&b.0));
        (proxies, unread)
    }

    async fn read_prometheus(
        &self,
        prom: &str,
        listed: &[PodKey],
    ) -> (Vec<(PodKey, Vec<Sample>)>, BTreeMap<PodKey, String>) {
        let names: Vec<&str> = COUNTERS.iter().chain(GAUGES).copied().collect();
        let query = format!("{{__name__=~\"{}\"}}", names.join("|"));
        let url = format!(
            "{prom}/api/v1/query?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("query", &query)
                .finish()
        );
        let mut by_pod = match self.get(&url).await.and_then(|b| vector(&url, &b)) {
            Ok(by_pod) => by_pod,
            Err(e) => {
                let why = e.to_string();
                return (
                    Vec::new(),
                    listed.iter().map(|p| (p.clone(), why.clone())).collect(),
                );
            }
        };
        let mut proxies = Vec::new();
        let mut unread = BTreeMap::new();
        for pod in listed {
            match by_pod.remove(pod) {
                Some(samples) => proxies.push((pod.clone(), samples)),
                None => {
                    unread.insert(
                        pod.clone(),
                        format!("{prom} has no series with namespace=\"{}\", pod=\"{}\" (is it scraped, with those target labels?)", pod.namespace, pod.pod),
                    );
                }
            }
        }
        (proxies, unread)
    }

    async fn get(&self, url: &str) -> Result<Bytes, ReadError> {
        let uri: http::Uri = url.parse().map_err(|_| ReadError::Url(url.to_string()))?;
        let failed = |message: String| ReadError::Failed {
            url: url.to_string(),
            message,
        };
        let fetch = async {
            let res = self
                .client
                .get(uri)
                .await
                .map_err(|e| failed(format!("cannot reach it: {e}")))?;
            let status = res.status();
            let body = Limited::new(res.into_body(), MAX_BYTES)
                .collect()
                .await
                .map_err(|e| failed(format!("reading the answer: {e}")))?
                .to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body);
                return Err(failed(format!("{status}: {}", text.trim())));
            }
            Ok(body)
        };
        tokio::time::timeout(TIMEOUT, fetch)
            .await
            .map_err(|_| ReadError::Timeout {
                url: url.to_string(),
            })?
    }
}

#[derive(Deserialize)]
struct PromAnswer {
    status: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    data: Option<PromData>,
}

#[derive(Deserialize)]
struct PromData {
    #[serde(default)]
    result: Vec<PromSeries>,
}

#[derive(Deserialize)]
struct PromSeries {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// The labels Prometheus (or its scrape configuration) adds to a target's
/// series, which are not the proxy's own.
const TARGET_LABELS: [&str; 5] = ["namespace", "pod", "job", "instance", "workload"];

/// An instant vector, by the `namespace` and `pod` of each series' target.
fn vector(url: &str, body: &[u8]) -> Result<HashMap<PodKey, Vec<Sample>>, ReadError> {
    let failed = |message: String| ReadError::Failed {
        url: url.to_string(),
        message,
    };
    let answer: PromAnswer = serde_json::from_slice(body)
        .map_err(|e| failed(format!("not a Prometheus query answer: {e}")))?;
    if answer.status != "success" {
        return Err(failed(format!("the query failed: {}", answer.error)));
    }
    let mut out: HashMap<PodKey, Vec<Sample>> = HashMap::new();
    for s in answer.data.map(|d| d.result).unwrap_or_default() {
        let mut labels = s.metric;
        let (Some(namespace), Some(pod)) = (labels.remove("namespace"), labels.remove("pod"))
        else {
            continue;
        };
        let Some(name) = labels.remove("__name__") else {
            continue;
        };
        let Ok(value) = s.value.1.parse::<f64>() else {
            continue;
        };
        for l in TARGET_LABELS {
            labels.remove(l);
        }
        out.entry(PodKey { namespace, pod })
            .or_default()
            .push(Sample {
                name,
                labels,
                value,
            });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prometheus_vector_groups_by_target_pod() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"request_total","direction":"outbound","namespace":"demo","pod":"web-0","job":"weft-proxies","instance":"10.0.0.1:4191"},"value":[1700000000.1,"12"]},
            {"metric":{"__name__":"request_total","direction":"inbound","namespace":"demo","pod":"web-0"},"value":[1700000000.1,"3"]},
            {"metric":{"__name__":"request_total","namespace":"demo"},"value":[1700000000.1,"9"]}
        ]}}"#;
        let v = vector("u", body).unwrap();
        let pod = PodKey {
            namespace: "demo".into(),
            pod: "web-0".into(),
        };
        assert_eq!(v.len(), 1);
        let samples = &v[&pod];
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].value, 12.0);
        // Only the proxy's own labels are left.
        assert_eq!(samples[0].labels.keys().collect::<Vec<_>>(), ["direction"]);

        let e = vector("u", br#"{"status":"error","error":"parse error"}"#).unwrap_err();
        assert_eq!(e.to_string(), "u: the query failed: parse error");
    }
}
