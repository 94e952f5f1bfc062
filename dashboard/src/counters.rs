//! From what each proxy's counters say now to how much they grew since the
//! last read: the same whether the values came from the proxies or from a
//! Prometheus, and right across a proxy's restart (a counter that went down
//! started again from zero).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::text::Sample;

/// The counters the dashboard reads (OpenMetrics sample names).
pub const COUNTERS: &[&str] = &[
    "request_total",
    "response_total",
    "response_latency_ms_bucket",
    "tcp_open_total",
    "tcp_read_bytes_total",
    "tcp_write_bytes_total",
    "http_retries_total",
    "http_proxy_errors_total",
];

/// The gauges it reads, taken as they are.
pub const GAUGES: &[&str] = &[
    "tcp_open_connections",
    "identity_cert_expiry_timestamp_seconds",
    "discovery_last_update_timestamp_seconds",
    "discovery_snapshot_version",
];

/// Whether the dashboard reads metric `name` at all.
pub fn wanted(name: &str) -> bool {
    COUNTERS.contains(&name) || GAUGES.contains(&name)
}

/// A pod, as the control plane names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub pod: String,
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.pod)
    }
}

/// The last value of every counter of every proxy.
#[derive(Debug, Default)]
pub struct Counters {
    last: HashMap<PodKey, HashMap<String, f64>>,
}

impl Counters {
    /// Each proxy's samples with its counters replaced by their increase
    /// since its last read (gauges unchanged). A proxy read for the first
    /// time sets the baseline (no increase); a series new in a proxy read
    /// before grew from zero. Proxies no longer `listed` are forgotten;
    /// those listed but not read this time keep their last values.
    pub fn advance(
        &mut self,
        reads: Vec<(PodKey, Vec<Sample>)>,
        listed: &HashSet<PodKey>,
    ) -> Vec<(PodKey, Vec<Sample>)> {
        self.last.retain(|k, _| listed.contains(k));
        reads
            .into_iter()
            .map(|(pod, samples)| {
                let known = self.last.contains_key(&pod);
                let last = self.last.entry(pod.clone()).or_default();
                let samples = samples
                    .into_iter()
                    .map(|mut s| {
                        if COUNTERS.contains(&s.name.as_str()) {
                            let now = s.value;
                            let before = last.insert(series(&s.name, &s.labels), now);
                            s.value = match before {
                                Some(b) if now >= b => now - b,
                                // Restarted: it counted `now` since.
                                Some(_) => now,
                                None if known => now,
                                None => 0.0,
                            };
                        }
                        s
                    })
                    .collect();
                (pod, samples)
            })
            .collect()
    }
}

fn series(name: &str, labels: &BTreeMap<String, String>) -> String {
    let mut key = String::from(name);
    for (k, v) in labels {
        key.push('\u{1f}');
        key.push_str(k);
        key.push('=');
        key.push_str(v);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::parse;

    fn pod(p: &str) -> PodKey {
        PodKey {
            namespace: "demo".into(),
            pod: p.into(),
        }
    }

    fn values(out: &[(PodKey, Vec<Sample>)]) -> Vec<f64> {
        out.iter()
            .flat_map(|(_, s)| s.iter().map(|s| s.value))
            .collect()
    }

    #[test]
    fn increases_across_reads_restarts_and_new_series() {
        let mut c = Counters::default();
        let listed: HashSet<PodKey> = [pod("a")].into();
        let read = |t: &str| vec![(pod("a"), parse(t))];
        // The first read is the baseline; gauges pass as they are.
        let out = c.advance(read("request_total 10\ntcp_open_connections 3\n"), &listed);
        assert_eq!(values(&out), [0.0, 3.0]);
        let out = c.advance(read("request_total 15\ntcp_open_connections 2\n"), &listed);
        assert_eq!(values(&out), [5.0, 2.0]);
        // Restarted: it counted 4 since.
        let out = c.advance(read("request_total 4\n"), &listed);
        assert_eq!(values(&out), [4.0]);
        // A series first seen in a proxy read before started from zero.
        let out = c.advance(
            read("request_total 4\nresponse_total{a=\"b\"} 2\n"),
            &listed,
        );
        assert_eq!(values(&out), [0.0, 2.0]);
        // Forgotten once no longer listed: back to a baseline.
        c.advance(Vec::new(), &HashSet::new());
        let out = c.advance(read("request_total 9\n"), &listed);
        assert_eq!(values(&out), [0.0]);
    }
}
