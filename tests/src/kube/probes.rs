//! Probes, as a kubelet runs them: from the node (the bridge's namespace,
//! which holds the node's address), not from inside the pod, to the pod's
//! IP. `httpGet` (HTTP only: a status from 200 to 399 passes; redirects are
//! not followed) and `tcpSocket` are run; `exec` and `grpc` probes and
//! HTTPS are not (the stand-in reports an error and counts them as passing).
//! Liveness probes are not run at all.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nix::sched::CloneFlags;

/// A probe's timing, with the period capped at a second for speed.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(p: &Probe) -> Timing {
        let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
        Timing {
            initial_delay: secs(p.initial_delay_seconds, 0),
            period: secs(p.period_seconds, 10).min(Duration::from_secs(1)),
            timeout: secs(p.timeout_seconds, 1).max(Duration::from_millis(200)),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// What one probe run found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    /// A kind of probe the stand-in does not run.
    Unsupported(String),
}

/// Runs `probe` of container `c` against `pod_ip`, from the namespace at
/// `node_netns` (a `/run/netns/…` path), on a thread of its own.
pub async fn run(node_netns: String, pod_ip: Ipv4Addr, c: &Container, probe: &Probe) -> Outcome {
    let timeout = Timing::of(probe).timeout;
    let target = match target(pod_ip, c, probe) {
        Ok(t) => t,
        Err(o) => return o,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("probe".into())
        .spawn(move || {
            let outcome = match std::fs::File::open(&node_netns)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    nix::sched::setns(f, CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())
                }) {
                Ok(()) => check(&target, timeout),
                Err(e) => Outcome::Fail(format!("entering {node_netns}: {e}")),
            };
            let _ = tx.send(outcome);
        });
    if let Err(e) = spawned {
        return Outcome::Fail(format!("a probe thread: {e}"));
    }
    rx.await
        .unwrap_or_else(|_| Outcome::Fail("the probe thread died".into()))
}

/// Where a probe goes.
#[derive(Debug)]
enum Target {
    Http {
        addr: SocketAddr,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp(SocketAddr),
}

fn target(pod_ip: Ipv4Addr, c: &Container, probe: &Probe) -> Result<Target, Outcome> {
    let host = |h: Option<&String>| -> Result<IpAddr, Outcome> {
        match h {
            None => Ok(IpAddr::V4(pod_ip)),
            Some(h) => h
                .parse()
                .map_err(|_| Outcome::Unsupported(format!("probe host {h:?} is not an IP"))),
        }
    };
    if let Some(get) = &probe.http_get {
        if get
            .scheme
            .as_deref()
            .is_some_and(|s| !s.eq_ignore_ascii_case("HTTP"))
        {
            return Err(Outcome::Unsupported(format!(
                "{} probes",
                get.scheme.as_deref().unwrap_or_default()
            )));
        }
        let port = port(c, &get.port)?;
        let headers = get
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        return Ok(Target::Http {
            addr: SocketAddr::new(host(get.host.as_ref())?, port),
            path: get.path.clone().unwrap_or_else(|| "/".into()),
            headers,
        });
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = port(c, &tcp.port)?;
        return Ok(Target::Tcp(SocketAddr::new(host(tcp.host.as_ref())?, port)));
    }
    Err(Outcome::Unsupported("exec and grpc probes".to_string()))
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port(c: &Container, port: &IntOrString) -> Result<u16, Outcome> {
    match port {
        IntOrString::Int(n) => {
            u16::try_from(*n).map_err(|_| Outcome::Fail(format!("probe port {n} is out of range")))
        }
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| Outcome::Fail(format!("container {} has no port named {name}", c.name))),
    }
}

fn check(target: &Target, timeout: Duration) -> Outcome {
    match target {
        Target::Tcp(addr) => match TcpStream::connect_timeout(addr, timeout) {
            Ok(_) => Outcome::Pass,
            Err(e) => Outcome::Fail(format!("dial tcp {addr}: {e}")),
        },
        Target::Http {
            addr,
            path,
            headers,
        } => match http_get(*addr, path, headers, timeout) {
            Ok(code) if (200..400).contains(&code) => Outcome::Pass,
            Ok(code) => Outcome::Fail(format!("HTTP probe failed with statuscode: {code}")),
            Err(e) => Outcome::Fail(format!("Get \"http://{addr}{path}\": {e}")),
        },
    }
}

/// A plain HTTP/1.1 GET: the response's status code.
fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.34\r\nAccept: */*\r\n\
         Connection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "not an HTTP response: {:?}",
                    line.lines().next().unwrap_or("")
                ),
            )
        })
}
