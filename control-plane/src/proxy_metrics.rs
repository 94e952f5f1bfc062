//! A proxy's `/metrics`, read by the control plane for whoever asks its
//! admin server (`weftctl dashboard` on a laptop reaches the control plane
//! through one port-forward; it cannot reach every pod).
//!
//! Only meshed pods of the model are read, only their admin port and only
//! `/metrics`: the endpoint cannot be pointed anywhere else. Reads are
//! bounded in number, time and size, so a busy dashboard (or a hostile
//! caller) cannot make the control plane hold many connections or much
//! memory.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

/// Reads in flight at once; more wait for a turn (within [`TIMEOUT`]).
const CONCURRENCY: usize = 16;
/// For a turn, the connection, and the whole answer.
const TIMEOUT: Duration = Duration::from_secs(3);
/// A proxy's metrics are tens of KiB; anything near this is not metrics.
const MAX_BYTES: usize = 4 << 20;

/// Why a proxy's metrics could not be read, as the admin server answers.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("too many metrics reads in flight; try again")]
    Busy,
    #[error("no answer from {0} within {TIMEOUT:?}")]
    Timeout(SocketAddr),
    #[error("cannot read {addr}/metrics: {message}")]
    Failed { addr: SocketAddr, message: String },
}

/// The reader: one client (connections kept alive between reads) and the
/// cap on reads in flight.
#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    client: Client<HttpConnector, Empty<Bytes>>,
    turns: Arc<Semaphore>,
    port: u16,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new(weft_api::defaults::ADMIN_PORT)
    }
}

impl ProxyMetrics {
    /// Reads proxies' admin servers on `port`.
    pub fn new(port: u16) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(TIMEOUT));
        ProxyMetrics {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(1)
                .build(connector),
            turns: Arc::new(Semaphore::new(CONCURRENCY)),
            port,
        }
    }

    /// The metrics text of the proxy at `ip`, and its content type.
    pub async fn read(&self, ip: IpAddr) -> Result<(String, Bytes), ScrapeError> {
        let addr = SocketAddr::new(ip, self.port);
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let _turn = tokio::time::timeout_at(deadline, self.turns.acquire())
            .await
            .map_err(|_| ScrapeError::Busy)?
            .map_err(|_| ScrapeError::Busy)?;
        let failed = |e: &dyn std::fmt::Display| ScrapeError::Failed {
            addr,
            message: e.to_string(),
        };
        let uri: http::Uri = format!("http://{addr}/metrics")
            .parse()
            .map_err(|e: http::uri::InvalidUri| failed(&e))?;
        let read = async {
            let res = self.client.get(uri).await.map_err(|e| failed(&e))?;
            if !res.status().is_success() {
                return Err(failed(&res.status()));
            }
            let ctype = res
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("text/plain")
                .to_string();
            let body = Limited::new(res.into_body(), MAX_BYTES)
                .collect()
                .await
                .map_err(|e| failed(&e))?
                .to_bytes();
            Ok((ctype, body))
        };
        tokio::time::timeout_at(deadline, read)
            .await
            .map_err(|_| ScrapeError::Timeout(addr))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_metrics_and_names_what_failed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /metrics HTTP/1.1"));
            let body = "request_total 1\n# EOF\n";
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/openmetrics-text\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(body.as_bytes()).await.unwrap();
        });
        let reader = ProxyMetrics::new(port);
        let (ctype, body) = reader.read("127.0.0.1".parse().unwrap()).await.unwrap();
        assert_eq!(ctype, "application/openmetrics-text");
        assert_eq!(&body[..], b"request_total 1\n# EOF\n");

        // Nothing listens there now.
        let e = reader.read("127.0.0.1".parse().unwrap()).await.unwrap_err();
        assert!(
            e.to_string().contains(&format!("127.0.0.1:{port}/metrics")),
            "{e}"
        );
    }
}
