//! One multiplexed mTLS HTTP/2 connection per peer, shared by every request
//! to it, whatever protocol the apps speak: handshakes stay rare and
//! requests interleave on one connection. A connection is keyed by the
//! address *and* the identity that was verified on it: when a pod IP is
//! taken over by another workload, requests expecting the new identity
//! never ride the connection authenticated as the old one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;
use tracing::debug;
use weft_api::SpiffeId;

use super::{Body, ProxyError};
use crate::connect::Connector;
use crate::tls::Alpn;

/// A peer connection and when it last carried a request.
#[derive(Debug)]
struct Conn {
    sender: SendRequest<Body>,
    last_used: Instant,
    /// This connection's idle timeout (its Service's, or the proxy's).
    idle: Duration,
}

type Slot = Arc<tokio::sync::Mutex<Option<Conn>>>;

#[derive(Debug)]
pub struct PeerPool {
    connector: Connector,
    idle_timeout: Duration,
    /// Per address, a connection per identity verified there (almost
    /// always one): looked up without copying the identity.
    conns: Mutex<HashMap<SocketAddr, Vec<(SpiffeId, Slot)>>>,
}

impl PeerPool {
    pub fn new(connector: Connector, idle_timeout: Duration) -> Self {
        PeerPool {
            connector,
            idle_timeout,
            conns: Mutex::new(HashMap::new()),
        }
    }

    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Closes idle connections, forever; run it in the background.
    pub async fn reap_idle(self: Arc<Self>) {
        loop {
            tokio::time::sleep((self.idle_timeout / 2).min(Duration::from_secs(1))).await;
            if self.reap(Instant::now()).is_err() {
                return;
            }
        }
    }

    /// Closes the connections idle (or closed) as of `now` and forgets their
    /// slots; returns how many. A connection still carrying a stream
    /// finishes it.
    fn reap(&self, now: Instant) -> Result<usize, ProxyError> {
        let mut conns = self
            .conns
            .lock()
            .map_err(|_| ProxyError::Internal("pool poisoned"))?;
        let mut closed = 0;
        conns.retain(|addr, slots| {
            slots.retain(|(_, slot)| {
                // A slot in use (a handshake under way) stays.
                let Ok(guard) = slot.try_lock() else {
                    return true;
                };
                let keep = guard.as_ref().is_some_and(|c| {
                    now.saturating_duration_since(c.last_used) < c.idle && !c.sender.is_closed()
                });
                if !keep {
                    closed += 1;
                    debug!(%addr, "closed an idle peer connection");
                }
                keep
            });
            !slots.is_empty()
        });
        Ok(closed)
    }

    /// Sends `req` to the sidecar at `addr`, which must be `identity`. A new
    /// connection closes after `idle` unused (default: the proxy's).
    pub async fn send(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        req: Request<Body>,
        idle: Option<Duration>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let slot = {
            let mut conns = self
                .conns
                .lock()
                .map_err(|_| ProxyError::Internal("pool poisoned"))?;
            let slots = conns.entry(addr).or_default();
            match slots.iter().find(|(id, _)| id == identity) {
                Some((_, slot)) => slot.clone(),
                None => {
                    let slot = Slot::default();
                    slots.push((identity.clone(), slot.clone()));
                    slot
                }
            }
        };
        let mut sender = {
            // One connection attempt at a time per peer: a burst of requests
            // waits for the first handshake instead of making its own.
            let mut guard = slot.lock().await;
            match guard.as_mut() {
                Some(c) if !c.sender.is_closed() => {
                    c.last_used = Instant::now();
                    c.sender.clone()
                }
                _ => {
                    let sender = self.connect(addr, identity).await?;
                    *guard = Some(Conn {
                        sender: sender.clone(),
                        last_used: Instant::now(),
                        idle: idle.unwrap_or(self.idle_timeout),
                    });
                    sender
                }
            }
        };
        sender.ready().await.map_err(ProxyError::Upstream)?;
        sender.send_request(req).await.map_err(ProxyError::Upstream)
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
    ) -> Result<SendRequest<Body>, ProxyError> {
        let tls = self.connector.mtls(addr, identity, Alpn::H2).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(ProxyError::Upstream)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %e, "peer connection ended");
            }
        });
        debug!(%addr, %identity, "new mTLS HTTP/2 connection to a peer");
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::TlsMetrics;
    use crate::test_pki::Pki;
    use crate::tls::{OutboundTls, TlsFailure};
    use http_body_util::BodyExt;

    /// An h2 server over mTLS as `id` at `addr` (port 0: any) answering with
    /// its own identity; returns its address and the task serving it.
    async fn peer(
        pki: &Pki,
        id: &str,
        addr: SocketAddr,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let identity = pki.identity(id);
        let cfg = weft_api::tls::server_config(
            identity.cert.clone(),
            identity.anchors.clone(),
            "cluster.local",
            true,
            &[weft_api::tls::ALPN_H2],
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener = socket.listen(16).unwrap();
        let local = listener.local_addr().unwrap();
        let name = id.to_string();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, name) = (acceptor.clone(), name.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        let name = name.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(Response::new(super::super::full(
                                name,
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        (local, task)
    }

    fn pool(pki: &Pki) -> PeerPool {
        let tls = Arc::new(OutboundTls::new(
            pki.identity("spiffe://cluster.local/ns/a/sa/client"),
        ));
        let connector = Connector::new(Duration::from_secs(2), Some(tls), TlsMetrics::default());
        PeerPool::new(connector, Duration::from_secs(60))
    }

    fn get() -> Request<Body> {
        Request::get("http://peer/")
            .body(super::super::full(""))
            .unwrap()
    }

    #[tokio::test]
    async fn a_reused_pod_ip_never_gets_a_request_over_the_old_identitys_connection() {
        let pki = Pki::new();
        let (old_id, new_id): (SpiffeId, SpiffeId) = (
            "spiffe://cluster.local/ns/a/sa/old".parse().unwrap(),
            "spiffe://cluster.local/ns/a/sa/new".parse().unwrap(),
        );
        let (addr, old) = peer(&pki, &old_id.to_string(), "127.0.0.1:0".parse().unwrap()).await;
        let pool = pool(&pki);
        let res = pool.send(addr, &old_id, get(), None).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, old_id.to_string());

        // The old workload still holds the address (its pooled connection is
        // open): a request expecting the new one must not go over it.
        let err = pool.send(addr, &new_id, get(), None).await.unwrap_err();
        assert!(
            matches!(err, ProxyError::Tls(_, TlsFailure::IdentityMismatch, _)),
            "{err}"
        );

        // The new workload takes the address over.
        old.abort();
        let _ = old.await;
        let (_, _new) = peer(&pki, &new_id.to_string(), addr).await;
        let res = pool.send(addr, &new_id, get(), None).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, new_id.to_string());
    }

    #[tokio::test]
    async fn idle_connections_are_reaped() {
        let pki = Pki::new();
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/server".parse().unwrap();
        let (addr, _server) = peer(&pki, &id.to_string(), "127.0.0.1:0".parse().unwrap()).await;
        let pool = pool(&pki);
        let idle = Duration::from_secs(5);
        pool.send(addr, &id, get(), Some(idle)).await.unwrap();
        let now = Instant::now();
        assert_eq!(pool.reap(now).unwrap(), 0, "a connection just used stays");
        assert_eq!(pool.reap(now + idle).unwrap(), 1, "an idle one goes");
        assert!(pool.conns.lock().unwrap().is_empty());
    }
}
