//! A Watch stream of arbitrary messages, as the proxy receives them: each
//! decoded from protobuf, folded onto the complete snapshot the stream holds
//! (a delta needs the right base), built into the mesh config against the
//! previous one (endpoint state and unchanged policies carried over), its
//! trust anchors taken. Then what the data path asks of the config: lookups,
//! DNS names, endpoint picks, route matching, policies, `/config`. Nothing
//! may panic; a message that cannot be used is an error.
//!
//! Input: length-delimited `weft.v1.Snapshot` messages, one after another.
#![no_main]

use std::net::SocketAddr;
use std::sync::LazyLock;

use http::{HeaderMap, Method, Uri};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use weft_api::tls::TrustAnchors;
use weft_api::v1;
use weft_proxy::fuzzing::{MeshConfig, WatchStream, throwaway_identity};

static ANCHORS: LazyLock<Vec<rustls_pki_types::CertificateDer<'static>>> = LazyLock::new(|| {
    throwaway_identity("spiffe://cluster.local/ns/default/sa/proxy")
        .expect("a throwaway identity")
        .anchors
        .ders()
});

/// What the data path asks of a config, for every Service the snapshot names.
fn use_config(mesh: &MeshConfig, snap: &v1::Snapshot) {
    let _ = mesh.to_json();
    let uri = Uri::from_static("http://web/api/v1?user=1");
    let mut headers = HeaderMap::new();
    headers.insert("x-canary", http::HeaderValue::from_static("yes"));
    for s in &snap.services {
        let _ = mesh.resolve(&format!("{}.{}.svc.cluster.local.", s.name, s.namespace));
        let Ok(ip) = s.virtual_ip.parse() else {
            continue;
        };
        for p in &s.ports {
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let Some(sp) = mesh.service(SocketAddr::new(ip, port)) else {
                continue;
            };
            let _ = sp.pick_connection();
            let _ = sp.pick_request(None);
            let _ = sp.may_eject(sp.policy.outlier.max_ejection_percent);
            if let Some(i) = sp.routes.position(&Method::GET, &uri, &headers) {
                let rule = &sp.routes.rules()[i];
                let _ = sp.policy.for_rule(rule.timeouts, rule.retry.as_ref());
            }
        }
    }
    for w in &snap.workloads {
        if let Ok(ip) = w.ip.parse() {
            let _ = mesh.lookup(SocketAddr::new(ip, 80));
            let _ = mesh.is_meshed(ip);
        }
    }
    if let Some(inbound) = &snap.inbound {
        for p in &inbound.ports {
            let _ = mesh.is_opaque(p.port as u16);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut stream = WatchStream::new(TrustAnchors::new(ANCHORS.clone()).expect("trust anchors"));
    let mut buf = data;
    while !buf.is_empty() {
        let Ok(msg) = v1::Snapshot::decode_length_delimited(&mut buf) else {
            break;
        };
        let _ = stream.receive(msg);
        if let Some(snap) = stream.current() {
            use_config(stream.mesh(), snap);
        }
    }
});
