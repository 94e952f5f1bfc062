//! HTTP/1.1 request heads from a client, through a real hyper HTTP/1 server
//! connection as the proxy's listeners serve it (`http::server::Server`:
//! limits, deadlines, the observe layer), to a service that treats each
//! request as the inbound and outbound sides do before forwarding it: the
//! upgrade headers kept, hop-by-hop and reserved headers stripped, the
//! upgrade headers put back. No `weft-*` header and no hop-by-hop header
//! (but `te: trailers` and a kept upgrade pair) may remain.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_proxy::fuzzing::{
    Body, full, is_upgrade, keep_headers, serve_http1, strip_hop_by_hop, strip_reserved,
};

/// One runtime for every input. Time is paused: a connection that waits for
/// bytes that never come meets its deadline at once instead of hanging.
static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
});

async fn handle(req: Request<Body>) -> Response<Body> {
    let upgrade = is_upgrade(req.method(), req.headers());
    let kept = keep_headers(req.headers());
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    strip_reserved(&mut parts.headers);
    check(&parts.headers, &[]);
    if upgrade {
        for (n, v) in &kept {
            parts.headers.insert(n, v.clone());
        }
        check(&parts.headers, &kept);
    }
    // The body is read to its end (or to the error that ends it).
    let _ = body.collect().await;
    Response::new(full(Bytes::from_static(b"ok")))
}

/// What may be left of a request's headers after the proxy's treatment.
fn check(h: &HeaderMap, kept: &[(HeaderName, HeaderValue)]) {
    for name in h.keys() {
        assert!(
            !name.as_str().starts_with("weft-"),
            "reserved header {name} forwarded: {h:?}"
        );
    }
    for name in [
        header::CONNECTION,
        header::UPGRADE,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        let allowed = kept.iter().any(|(n, _)| *n == name);
        assert!(
            allowed || !h.contains_key(&name),
            "hop-by-hop header {name} forwarded: {h:?}"
        );
    }
    for te in h.get_all(header::TE) {
        assert_eq!(te, "trailers", "{h:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    RT.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let talk = async move {
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            // Read the responses, so the server is never stuck writing.
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        };
        // Longer than any of the server's deadlines (paused time: instant).
        let _ = tokio::time::timeout(Duration::from_secs(600), async {
            tokio::join!(serve_http1(server, handle), talk)
        })
        .await;
    });
});
