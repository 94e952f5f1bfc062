//! `weft-proxy`: `init` installs interception, `run` runs the sidecar.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use weft_api::log;
use weft_proxy::cli::{Cli, Command, InitArgs, Ipv6Mode};
use weft_proxy::init::{self, Action, Family, InitConfig, Iptables};

/// jemalloc, with its background thread purging freed pages a few seconds
/// after a load passes (glibc's malloc keeps them when longer-lived
/// allocations sit above them): the sidecar's memory follows its traffic
/// down as well as up.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    weft_api::tls::install_default_provider();
    if let Err(e) = log::init(cli.log_format, &cli.log_level) {
        eprintln!("weft-proxy: {e:#}");
        return ExitCode::from(2);
    }
    let res = match cli.command {
        Command::Init(args) => init_cmd(&args),
        Command::Run(args) => run_cmd(*args),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_cmd(args: &InitArgs) -> anyhow::Result<()> {
    let cfg = InitConfig {
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        admin_port: args.admin_port,
        dns_port: args.dns_port,
        proxy_uid: args.proxy_uid,
        skip_inbound_ports: args.skip_inbound_ports.clone(),
        skip_outbound_ports: args.skip_outbound_ports.clone(),
        dns: args.dns,
    };
    let mut tables = vec![Iptables::new(Family::V4, Some(&args.iptables))];
    let v6 = match args.ipv6 {
        Ipv6Mode::Always => true,
        Ipv6Mode::Never => false,
        Ipv6Mode::Auto => Family::V6.enabled_here(),
    };
    if v6 {
        tables.push(Iptables::new(Family::V6, Some(&args.ip6tables)));
    }
    let action = match (args.remove, args.dry_run) {
        (true, _) => Action::Remove,
        (_, true) => Action::DryRun,
        _ => Action::Install,
    };
    let printed = init::execute(&cfg, &tables, action)?;
    print!("{printed}");
    Ok(())
}

fn run_cmd(args: weft_proxy::cli::RunArgs) -> anyhow::Result<()> {
    let rt = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(args.threads))
            .enable_all()
            .build()
    }
    .context("starting the runtime")?;
    rt.block_on(weft_proxy::run::run(args))
}
