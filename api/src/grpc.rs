//! A gRPC channel to the control plane over Weft's own mTLS (rustls with the
//! SPIFFE verifier), shared by the proxy, weftctl and the tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// A channel that connects (and reconnects) lazily to `addr` (`host:port`,
/// resolved at each attempt) with `config`. No request timeout is set, since
/// Watch streams live for hours; unary calls set their own.
pub fn connect_lazy(addr: String, config: Arc<ClientConfig>) -> Channel {
    let connector = tower::service_fn(move |_uri| {
        let (config, addr) = (config.clone(), addr.clone());
        async move {
            let target: SocketAddr = tokio::net::lookup_host(&addr)
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to nothing")))?;
            let tcp = tokio::net::TcpStream::connect(target).await?;
            let _ = tcp.set_nodelay(true);
            // The name is not checked (the verifier checks the SPIFFE ID).
            let name = ServerName::try_from("weft-control").map_err(std::io::Error::other)?;
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Endpoint::from_static("http://weft-control")
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        // Generous: a control plane pushing to thousands of proxies answers
        // pings late, and a dropped stream costs a handshake and a complete
        // snapshot, which only makes it later.
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(connector)
}
