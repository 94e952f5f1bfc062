//! Makes a collector on the host reachable from the pods without touching
//! the host's network: a listener on the bridge whose connections this
//! process relays to the host's address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::Error;
use crate::mesh::Mesh;
use crate::spec::gateway;

/// Listens on the bridge at the collector's port and relays until `stop`.
/// The listener is made inside the bridge's namespace; the relay runs on a
/// thread of the host's, from where the collector is reached.
pub fn start(mesh: &Mesh, collector: SocketAddr, stop: Arc<AtomicBool>) -> Result<(), Error> {
    let listen = SocketAddr::from((gateway(), collector.port()));
    let listener = mesh
        .bridge
        .run_in(|| std::net::TcpListener::bind(listen))?
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(Error::io(format!("binding the OTLP relay on {listen}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::io("starting the OTLP relay"))?;
    std::thread::Builder::new()
        .name("weftctl-otlp".into())
        .spawn(move || rt.block_on(relay(listener, collector, stop)))
        .map_err(Error::io("starting the OTLP relay"))?;
    Ok(())
}

async fn relay(listener: std::net::TcpListener, collector: SocketAddr, stop: Arc<AtomicBool>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        // A short wait, so `stop` is seen soon after it is set.
        match tokio::time::timeout(Duration::from_millis(200), listener.accept()).await {
            Ok(Ok((mut inbound, _))) => {
                tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(collector).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
            // Out of descriptors, say: try again later rather than spin.
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => {}
        }
    }
}
