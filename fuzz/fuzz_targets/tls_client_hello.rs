//! The inbound side's TLS handshake on arbitrary client bytes: the server
//! config `InboundTls` builds (TLS 1.3, client certificate required, the
//! mesh's ALPNs), fed what a client sent, as the acceptor would be; and the
//! ClientHello alone through rustls's `Acceptor` (SNI, ALPN, as a peek at
//! them would read it). Nothing may panic.
#![no_main]

use std::io;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use rustls::ServerConfig;
use rustls::server::{Acceptor, ServerConnection};
use weft_proxy::fuzzing::{inbound_tls_config, throwaway_identity};

/// The first byte of a TLS handshake record: `InboundTls::accept` hands the
/// acceptor only connections that start with it (anything else is plaintext).
const TLS_HANDSHAKE: u8 = 0x16;

static CONFIG: LazyLock<Arc<ServerConfig>> = LazyLock::new(|| {
    let id = throwaway_identity("spiffe://cluster.local/ns/default/sa/server")
        .expect("a throwaway identity");
    Arc::new(inbound_tls_config(&id).expect("the inbound TLS config"))
});

/// Reads `data` in pieces of `step` bytes, as TCP segments arrive.
struct Segments<'a> {
    data: &'a [u8],
    step: usize,
}

impl io::Read for Segments<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.data.len().min(self.step).min(buf.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

// The first byte is the segment size, the rest what the client sent.
fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    if data.first() != Some(&TLS_HANDSHAKE) {
        return;
    }
    let step = usize::from(step).max(1);

    // The handshake, as tokio-rustls drives it: read, process, write back.
    let mut conn = ServerConnection::new(CONFIG.clone()).expect("a server connection");
    let mut rd = Segments { data, step };
    loop {
        match conn.read_tls(&mut rd) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let failed = conn.process_new_packets().is_err();
        // The answer (or the alert) goes out either way.
        while conn.wants_write() {
            if conn.write_tls(&mut io::sink()).is_err() {
                break;
            }
        }
        if failed {
            break;
        }
    }
    let _ = (
        conn.alpn_protocol(),
        conn.server_name(),
        conn.peer_certificates(),
    );

    // The ClientHello alone, read before a config is chosen.
    let mut acceptor = Acceptor::default();
    let mut rd = Segments { data, step };
    loop {
        match acceptor.read_tls(&mut rd) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let _ = (hello.server_name(), hello.signature_schemes());
                let _ = hello.alpn().map(|a| a.count());
                let _ = accepted.into_connection(CONFIG.clone());
                break;
            }
            Err(_) => break,
        }
    }
});
