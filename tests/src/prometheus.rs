//! A real Prometheus (built from its Go module by `scripts/prometheus-tool`)
//! on a free loopback port, and PromQL through its HTTP API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::Process;

/// The binary: `$WEFT_PROMETHEUS_BIN` (scripts/test sets it).
pub fn binary() -> PathBuf {
    let bin = std::env::var_os("WEFT_PROMETHEUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "WEFT_PROMETHEUS_BIN is not set: run the tests with scripts/test, or set it to \
             the prometheus that `scripts/prometheus-tool` prints the folder of (…/bin/prometheus)"
            )
        });
    assert!(
        bin.is_file(),
        "{} is not a file; WEFT_PROMETHEUS_BIN must name the prometheus binary scripts/prometheus-tool builds",
        bin.display()
    );
    bin
}

/// A Prometheus server, stopped on drop.
#[derive(Debug)]
pub struct Prometheus {
    pub addr: SocketAddr,
    pub process: Process,
    _data: tempfile::TempDir,
}

/// One series of an instant vector: its labels and value.
pub type Series = (serde_json::Map<String, serde_json::Value>, f64);

impl Prometheus {
    /// Starts it with `config` and waits until it is ready.
    pub fn start(config: &Path) -> Prometheus {
        let data = tempfile::tempdir().expect("a data directory");
        let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let mut cmd = Command::new(binary());
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        let process = Process::spawn("prometheus", cmd, data.path().join("prometheus.log"));
        let p = Prometheus {
            addr,
            process,
            _data: data,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while p.get("/-/ready").is_none_or(|(s, _)| s != 200) {
            if !p.process.is_running() || Instant::now() > deadline {
                p.process.dump_log();
                panic!("Prometheus did not become ready on {addr}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn get(&self, path_and_query: &str) -> Option<(u16, String)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let reply = rt
            .block_on(crate::client::get(self.addr, path_and_query))
            .ok()?;
        Some((reply.status.as_u16(), reply.text()))
    }

    /// The answer of an instant query: `Ok(series)`, or Prometheus's error.
    pub fn try_query(&self, promql: &str) -> Result<Vec<Series>, String> {
        let q: String = url_encode(promql);
        let (status, body) = self
            .get(&format!("/api/v1/query?query={q}"))
            .ok_or_else(|| format!("no answer from Prometheus at {}", self.addr))?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{promql}: {status}: {}", v["error"]));
        }
        Ok(v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let labels = s["metric"].as_object()?.clone();
                let value = s["value"][1].as_str()?.parse().ok()?;
                Some((labels, value))
            })
            .collect())
    }

    /// The answer of an instant query; fails the test on an error.
    pub fn query(&self, promql: &str) -> Vec<Series> {
        self.try_query(promql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The single value of a query that sums to one series (None: no data).
    pub fn scalar(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        assert!(r.len() <= 1, "{promql} gave {} series: {r:?}", r.len());
        r.first().map(|s| s.1).filter(|v| v.is_finite())
    }

    /// Waits until every target is up (at least `want` of them).
    pub fn wait_targets_up(&self, want: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let up = self.query("up");
            let healthy = up.iter().filter(|s| s.1 == 1.0).count();
            if healthy >= want && healthy == up.len() {
                return;
            }
            if Instant::now() > deadline {
                let (_, targets) = self.get("/api/v1/targets").unwrap_or_default();
                panic!(
                    "{healthy} of {} targets up (want {want}): {targets}",
                    up.len()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Percent-encodes a query parameter.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
