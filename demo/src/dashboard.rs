//! The demo's dashboard: `weftctl dashboard` over the demo's control plane
//! (through its relay on 127.0.0.1), on a thread of its own until `stop`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{Args, Error};

/// Binds `--dashboard` (here, so a port in use is an error now) and serves.
pub fn start(args: &Args, control_plane: &str, stop: Arc<AtomicBool>) -> Result<SocketAddr, Error> {
    let listener = std::net::TcpListener::bind(args.dashboard)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(Error::io(format!(
            "serving the dashboard on {} (choose another with --dashboard ADDR, or --no-dashboard)",
            args.dashboard
        )))?;
    let addr = listener
        .local_addr()
        .map_err(Error::io("serving the dashboard"))?;
    let read = weft_dashboard::ReadArgs {
        jaeger: args.jaeger_ui.clone(),
        ..weft_dashboard::ReadArgs::default()
    };
    read.check(control_plane)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(Error::io("starting the dashboard"))?;
    let control_plane = control_plane.to_string();
    std::thread::Builder::new()
        .name("weftctl-dashboard".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                tokio::select! {
                    () = weft_dashboard::serve(listener, &control_plane, &read) => {}
                    () = async {
                        while !stop.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    } => {}
                }
            });
        })
        .map_err(Error::io("starting the dashboard"))?;
    Ok(addr)
}
