//! New connections with a full mTLS handshake each, as a peer sidecar would
//! open them: TCP, TLS 1.3 with a client certificate (no resumption), the
//! server's SPIFFE ID checked, ALPN h2, one GET, close. Pointed at the
//! server-side proxy of a pair (Weft's inbound listener or Envoy's), it
//! measures how many such connections per second that proxy accepts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;
use tokio_rustls::TlsConnector;
use weft_api::SpiffeId;
use weft_api::tls::{self, CertSlot, TrustAnchors};

use crate::stats::{Summary, summarize};

#[derive(Debug, clap::Args)]
pub struct HandshakeArgs {
    /// The server-side proxy's mTLS listener.
    #[arg(long)]
    addr: SocketAddr,
    /// Client certificate chain (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Client key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// Trust anchors (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// The SPIFFE ID the server must present.
    #[arg(long)]
    server_id: SpiffeId,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = weft_api::duration::parse)]
    duration: Duration,
    /// Connections in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
}

#[derive(Debug, Serialize)]
struct Results {
    connections: u64,
    errors: u64,
    first_error: Option<String>,
    seconds: f64,
    per_second: f64,
    /// Connect + handshake + request + response, per connection.
    latency: Summary,
}

fn pem_certs(path: &PathBuf) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

async fn one(connector: &TlsConnector, addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("bench-server")?;
    let tls = connector.connect(name, tcp).await?;
    anyhow::ensure!(
        tls.get_ref().1.alpn_protocol() == Some(tls::ALPN_H2),
        "the server did not agree to h2"
    );
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    let driver = tokio::spawn(conn);
    let req = http::Request::get(format!("http://bench{path}")).body(Empty::<Bytes>::new())?;
    let res = send.send_request(req).await?;
    let status = res.status();
    res.into_body().collect().await?;
    anyhow::ensure!(status.is_success(), "status {status}");
    drop(send);
    let _ = driver.await;
    Ok(())
}

pub async fn run(args: HandshakeArgs) -> anyhow::Result<()> {
    let chain = pem_certs(&args.cert)?;
    let key_pem = std::fs::read(&args.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.key.display()))?;
    let slot = CertSlot::default();
    slot.set(chain, key)?;
    let anchors = TrustAnchors::new(pem_certs(&args.ca)?)?;
    let config = tls::client_config(slot, anchors, args.server_id.clone(), &[tls::ALPN_H2])?;
    let connector = TlsConnector::from(Arc::new(config));

    let started = Instant::now();
    let deadline = started + args.duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (connector, path) = (connector.clone(), args.path.clone());
        let addr = args.addr;
        workers.spawn(async move {
            let mut lat = Vec::new();
            let (mut errors, mut first_error) = (0u64, None);
            while Instant::now() < deadline {
                let t = Instant::now();
                match one(&connector, addr, &path).await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            (lat, errors, first_error)
        });
    }
    let mut lat = Vec::new();
    let (mut errors, mut first_error) = (0u64, None);
    while let Some(r) = workers.join_next().await {
        let (l, e, f) = r?;
        lat.extend(l);
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let results = Results {
        connections: lat.len() as u64,
        errors,
        first_error,
        seconds,
        per_second: lat.len() as f64 / seconds,
        latency: summarize(lat),
    };
    println!("{}", serde_json::to_string_pretty(&results)?);
    Ok(())
}
