//! `weft-proxy run`: binds the listeners, serves until told to stop, drains.

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::admin::{Admin, Readiness};
use crate::cli::RunArgs;
use crate::forward::{Forwarder, Target};
use crate::shutdown::Shutdown;
use crate::telemetry::{Direction, Metrics};
use crate::transport::bind_all;

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let shutdown = Shutdown::new();
    let ready = Readiness::default();
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let admin = Admin {
        metrics: metrics.clone(),
        ready: ready.clone(),
        shutdown: shutdown.clone(),
    };
    for l in bind_all(&args.admin_listen, "admin")? {
        tokio::spawn(admin.clone().serve(l));
    }

    let listeners = [
        (
            Direction::Inbound,
            args.no_inbound,
            &args.inbound_listen,
            args.inbound_target,
        ),
        (
            Direction::Outbound,
            args.no_outbound,
            &args.outbound_listen,
            args.outbound_target,
        ),
    ];
    for (direction, disabled, addrs, target) in listeners {
        if disabled {
            continue;
        }
        let fwd = Arc::new(Forwarder {
            direction,
            target: target.map_or(Target::OriginalDst, Target::Fixed),
            connect_timeout: args.connect_timeout,
            metrics: metrics.tcp.clone(),
            shutdown: shutdown.clone(),
        });
        for l in bind_all(addrs, direction.as_str())? {
            info!(
                direction = direction.as_str(),
                addr = ?l.local_addr().ok(),
                target = ?fwd.target,
                "listening"
            );
            tokio::spawn(fwd.clone().serve(l));
        }
    }
    ready.set(true);
    info!("ready");

    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: draining"),
        _ = sigint.recv() => info!("SIGINT: draining"),
        _ = shutdown.triggered() => info!("draining"),
    }
    ready.set(false);
    shutdown.trigger();
    if shutdown.drain(args.drain_timeout).await {
        info!("all connections finished; exiting");
    } else {
        warn!(
            open = shutdown.open_connections(),
            deadline = ?args.drain_timeout,
            "drain deadline passed; closing the connections still open"
        );
    }
    Ok(())
}
