//! HTTP/1.1 upgrades (WebSocket and the like) and CONNECT: the request goes
//! on a connection of its own (mTLS with ALPN `http/1.1` between sidecars),
//! and once the server agrees, both sides' connections are spliced into one
//! byte stream.

use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::{Body, ProxyError};

/// Whether a request asks to take over its connection.
pub fn is_upgrade(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::CONNECT
        || (headers.contains_key(header::UPGRADE)
            && headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// The `Connection` and `Upgrade` headers of an upgrade request, which must
/// reach the next hop although they are hop-by-hop.
pub fn keep_headers(headers: &HeaderMap) -> Vec<(header::HeaderName, header::HeaderValue)> {
    [header::CONNECTION, header::UPGRADE]
        .into_iter()
        .filter_map(|n| headers.get(&n).cloned().map(|v| (n, v)))
        .collect()
}

/// Sends one request over `io` as HTTP/1.1 and, when the answer switches
/// protocols (or accepts a CONNECT), splices `client` to the upstream.
pub async fn send<I>(
    io: I,
    req: Request<Body>,
    client: OnUpgrade,
) -> Result<Response<Incoming>, ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connect = req.method() == Method::CONNECT;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(ProxyError::Upstream)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "upgrade connection ended");
        }
    });
    let mut res = sender
        .send_request(req)
        .await
        .map_err(ProxyError::Upstream)?;
    let switched =
        res.status() == StatusCode::SWITCHING_PROTOCOLS || (connect && res.status().is_success());
    if switched {
        let upstream = hyper::upgrade::on(&mut res);
        tokio::spawn(async move {
            match tokio::try_join!(client, upstream) {
                Ok((c, u)) => {
                    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                    match tokio::io::copy_bidirectional(&mut c, &mut u).await {
                        Ok((up, down)) => debug!(up, down, "upgraded connection closed"),
                        Err(e) => debug!(error = %e, "upgraded connection ended"),
                    }
                }
                Err(e) => debug!(error = %e, "upgrade failed"),
            }
        });
    }
    Ok(res)
}
