//! Headers the proxy owns: hop-by-hop headers (RFC 9110 §7.6.1) are never
//! forwarded, and the `weft-*` headers are the mesh's own, so any that arrive
//! from an application or from outside the mesh are removed before the proxy
//! sets its own (nothing outside the mesh can forge them).

use http::header::{self, HeaderMap, HeaderName};

/// The client's workload identity, set by the inbound sidecar for the app.
pub const CLIENT_ID: HeaderName = HeaderName::from_static("weft-client-id");
/// Why the proxy answered a request itself (on responses it generates).
pub const ERROR: HeaderName = HeaderName::from_static("weft-error");
/// The protocol the calling app spoke (`HTTP/1.1`, `HTTP/2`), carried between
/// sidecars so the server's sidecar speaks the same to its app.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("weft-orig-proto");

/// The `weft-error` value of a response the proxy (or a peer's) made, if any.
pub fn error_of(h: &HeaderMap) -> Option<&str> {
    h.get(ERROR).and_then(|v| v.to_str().ok())
}

/// Removes the mesh's own headers.
pub fn strip_reserved(h: &mut HeaderMap) {
    let reserved: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("weft-"))
        .cloned()
        .collect();
    for k in reserved {
        h.remove(k);
    }
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
/// `te: trailers` survives: gRPC needs it end to end.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        h.remove(n);
    }
    let trailers_only = h
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    h.remove(header::TE);
    if trailers_only {
        h.insert(header::TE, header::HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_reserved_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-custom".parse().unwrap());
        h.insert("x-custom", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers, deflate".parse().unwrap());
        h.insert("weft-client-id", "spiffe://evil/ns/x/sa/y".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
        strip_hop_by_hop(&mut h);
        strip_reserved(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-kept"], "yes");
    }
}
