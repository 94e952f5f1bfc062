//! A manifest file's text, and an edit of it, through the control plane's
//! local mode: YAML documents read into its objects (with errors naming the
//! file, object and field), the model, and the snapshots each proxy is sent
//! before and after the edit. Then through the proxy: what the control plane
//! sends, the proxy must take (a snapshot it refused would hold back every
//! change for every Service), and folding the delta onto the version before
//! must configure it exactly as the complete snapshot of the version after.
//!
//! Input: the text before the edit, a NUL byte, the text after (no NUL: the
//! file is new).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use weft_api::tls::TrustAnchors;
use weft_api::v1;
use weft_control::fuzzing::manifest_edit;
use weft_proxy::fuzzing::{WatchStream, throwaway_identity};

static ANCHORS: LazyLock<Vec<rustls_pki_types::CertificateDer<'static>>> = LazyLock::new(|| {
    throwaway_identity("spiffe://cluster.local/ns/default/sa/proxy")
        .expect("a throwaway identity")
        .anchors
        .ders()
});

fn stream() -> WatchStream {
    WatchStream::new(TrustAnchors::new(ANCHORS.clone()).expect("trust anchors"))
}

/// Sends `snap` over the wire (protobuf) to `proxy`, which must apply it.
fn send(proxy: &mut WatchStream, snap: &v1::Snapshot, what: &str) {
    let wire = v1::Snapshot::decode(snap.encode_to_vec().as_slice()).expect("protobuf round trip");
    match proxy.receive(wire) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the proxy rejects the {what} snapshot: {e}\n{snap:#?}"),
        Err(e) => panic!("the proxy cannot place the {what} snapshot: {e}\n{snap:#?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (before, after) = text.split_once('\0').unwrap_or(("", text));
    let (errors, sent) = manifest_edit(before, after);
    for e in &errors {
        assert!(!e.message.is_empty() && !e.object.is_empty(), "{e:?}");
    }
    for s in &sent {
        let mut edited = stream();
        send(&mut edited, &s.before, "first");
        send(&mut edited, &s.delta, "delta");
        let mut fresh = stream();
        send(&mut fresh, &s.after, "complete");
        assert_eq!(
            edited.mesh().to_json(),
            fresh.mesh().to_json(),
            "the delta and the complete snapshot configure the proxy differently\n{s:#?}"
        );
    }
});
