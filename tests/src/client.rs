//! Small clients the tests use from inside a pod (see [`crate::Netns::block_on`]).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A complete HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP request on a new connection (HTTP/1.1, or h2c with `http2`).
pub async fn http(
    method: Method,
    addr: SocketAddr,
    path: &str,
    body: Bytes,
    http2: bool,
) -> Result<Reply, String> {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .pool_max_idle_per_host(0)
        .build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| format!("{addr}{path}: timed out"))?
        .map_err(|e| format!("{addr}{path}: {e:?}"))?;
    let (parts, body) = res.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("{addr}{path}: reading the body: {e}"))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

pub async fn get(addr: SocketAddr, path: &str) -> Result<Reply, String> {
    http(Method::GET, addr, path, Bytes::new(), false).await
}

/// A deterministic, non-repeating-looking byte pattern of length `n`.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// One DNS query over UDP to `server`.
pub async fn dns_query(
    server: SocketAddr,
    name: &str,
    qtype: hickory_proto::rr::RecordType,
) -> Result<hickory_proto::op::Message, String> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::Name;
    use std::str::FromStr;
    let mut q = Message::query();
    q.metadata.id = rand::random();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(
        Name::from_str(name).map_err(|e| e.to_string())?,
        qtype,
    ));
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0")
        .await
        .map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    sock.send(&q.to_vec().map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .map_err(|_| format!("no DNS answer from {server} for {name}"))?
        .map_err(|e| e.to_string())?;
    Message::from_vec(&buf[..n]).map_err(|e| e.to_string())
}

/// The IPv4 addresses in a DNS answer.
pub fn a_records(m: &hickory_proto::op::Message) -> Vec<std::net::Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}
