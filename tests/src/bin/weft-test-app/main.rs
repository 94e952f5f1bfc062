//! `weft-test-app`: the applications the e2e tests and the demo put in pods.
//!
//! - `http`: an httpbin-like server (HTTP/1.1 and h2c on one port) that says
//!   who it is and can fail or reset a share of requests on purpose.
//! - `tcp`: a TCP server that echoes, or reads to EOF and answers with a digest
//!   (to prove half-close: the answer comes after the client stopped writing).

mod db;
mod dns_server;
mod grpc_server;
mod http_server;
mod resolver;
mod tcp_server;

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "weft-test-app", version, about = "Test applications for Weft")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// HTTP/1.1 + h2c server: `/`, `/status/{code}`, `/delay/{ms}`, `/headers`,
    /// `/echo`, `/_stats` (requests served, never failed on purpose) and
    /// `/_seen` (the last requests); with --echo-requests, any other path
    /// echoes the request. A request's `x-echo-set-header: name:value,...`
    /// sets those headers on its response.
    Http(http_server::Args),
    /// TCP server: `echo` copies bytes back as they come; `digest` reads to
    /// EOF, then writes `<length> <sha256 hex>\n`.
    Tcp {
        #[arg(long, default_value = "0.0.0.0:7000")]
        listen: SocketAddr,
        #[arg(long, value_enum, default_value_t = tcp_server::Mode::Echo)]
        mode: tcp_server::Mode,
        /// This instance's name (the banner mode sends it first).
        #[arg(long, env = "WEFT_TEST_POD", default_value = "test-0")]
        pod: String,
    },
    /// A DNS server (UDP) answering A queries from a fixed table, NXDOMAIN
    /// otherwise: the "upstream resolver" of test pods.
    Dns {
        #[arg(long, default_value = "0.0.0.0:53")]
        listen: SocketAddr,
        /// NAME=IPV4, repeatable.
        #[arg(long = "record", value_delimiter = ',')]
        records: Vec<String>,
    },
    /// gRPC (h2c) server of the `weft.test.Echo` and `weft.test.Hello` services.
    Grpc {
        #[arg(long, default_value = "0.0.0.0:9090")]
        listen: SocketAddr,
        #[arg(long, env = "WEFT_TEST_POD", default_value = "test-0")]
        pod: String,
    },
    /// GET a URL (HTTP/1.1) and print the body; exits 1 unless the status is 2xx.
    Get { url: http::Uri },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Http(args) => http_server::serve(args).await,
        Command::Tcp { listen, mode, pod } => tcp_server::serve(listen, mode, pod).await,
        Command::Dns { listen, records } => dns_server::serve(listen, &records).await,
        Command::Get { url } => get(url).await,
        Command::Grpc { listen, pod } => grpc_server::serve(listen, pod).await,
    }
}

async fn get(url: http::Uri) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let res = client.get(url.clone()).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    print!("{}", String::from_utf8_lossy(&body));
    anyhow::ensure!(status.is_success(), "GET {url}: {status}");
    Ok(())
}
