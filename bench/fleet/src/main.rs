//! `weft-bench`: the Rust half of Weft's benchmark harness (`bench/run` drives
//! it). Two tools:
//!
//! - `fleet`: one process simulating N proxies against a real `weft-control`:
//!   Certify throughput, control-plane memory per connected proxy, and how long
//!   a route change takes to reach (and be acknowledged by) every proxy.
//! - `handshake`: new connections with a full mTLS 1.3 handshake per request,
//!   against a server-side sidecar (Weft or Envoy), as a peer sidecar makes them.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod fleet;
mod handshake;
mod stats;

#[derive(Debug, Parser)]
#[command(name = "weft-bench", version, about = "Weft benchmark tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Control-plane fleet benchmark: N simulated proxies, each with its own
    /// certificate, mTLS connection and Watch stream.
    Fleet(Box<fleet::FleetArgs>),
    /// New-connection rate with a full mTLS handshake per request.
    Handshake(Box<handshake::HandshakeArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    weft_api::tls::install_default_provider();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-bench: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        match cli.command {
            Command::Fleet(args) => fleet::run(*args).await,
            Command::Handshake(args) => handshake::run(*args).await,
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
