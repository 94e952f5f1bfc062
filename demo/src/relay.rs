//! Joins the host and the mesh without touching the host's network: a
//! collector on the host made reachable from the pods (a listener on the
//! bridge, relayed to the host's address), and admin servers in the mesh
//! made reachable from the host (listeners on 127.0.0.1, relayed from the
//! bridge's namespace) for `weftctl status`, the dashboard and Prometheus.

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

/// For each of `targets` (addresses inside the mesh), a listener on
/// 127.0.0.1 at a free port whose connections are relayed to it, until
/// `stop`; returns the listeners' addresses, in order. The listeners are
/// made here, in the host's namespace; the relays run on a thread of the
/// bridge's, from where every pod is reached.
pub fn expose(
    mesh: &Mesh,
    targets: &[SocketAddr],
    stop: Arc<AtomicBool>,
) -> Result<Vec<SocketAddr>, Error> {
    let mut pairs = Vec::new();
    let mut addrs = Vec::new();
    for &target in targets {
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(Error::io(format!("listening on 127.0.0.1 for {target}")))?;
        addrs.push(
            listener
                .local_addr()
                .map_err(Error::io(format!("listening on 127.0.0.1 for {target}")))?,
        );
        pairs.push((listener, target));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::io("starting the admin relays"))?;
    // Detached: it ends by itself once `stop` is set.
    let _relays = mesh.bridge.thread("weftctl-expose", move || {
        rt.block_on(async move {
            let relays: Vec<_> = pairs
                .into_iter()
                .map(|(l, t)| tokio::spawn(relay(l, t, stop.clone())))
                .collect();
            for r in relays {
                let _ = r.await;
            }
        });
    })?;
    Ok(addrs)
}
