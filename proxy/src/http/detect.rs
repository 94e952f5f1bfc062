//! Telling HTTP/1, HTTP/2 (prior knowledge, so gRPC too) and anything else
//! apart by peeking at a connection's first bytes. Nothing is consumed.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Opaque,
}

impl Detected {
    pub fn as_str(self) -> &'static str {
        match self {
            Detected::Http1 => "http/1",
            Detected::Http2 => "http/2",
            Detected::Opaque => "opaque",
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longer than any method a client sends.
const MAX_METHOD: usize = 24;

/// Classifies what has arrived so far; None when more bytes are needed.
pub fn classify(b: &[u8]) -> Option<Detected> {
    let k = b.len().min(H2_PREFACE.len());
    if k > 0 && b[..k] == H2_PREFACE[..k] {
        return (k == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    for (i, c) in b.iter().enumerate() {
        match c {
            b' ' if i > 0 => return Some(Detected::Http1),
            b'A'..=b'Z' | b'-' | b'_' if i < MAX_METHOD => {}
            _ => return Some(Detected::Opaque),
        }
    }
    // Only letters so far, at most MAX_METHOD of them: the next byte decides
    // (a space: HTTP; anything else: opaque), however the bytes were split.
    None
}

/// Peeks until the protocol is clear or `timeout` passes (then it is opaque:
/// a client that does not speak first is not speaking HTTP).
pub async fn detect(tcp: &TcpStream, timeout: Duration) -> Detected {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 32];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return Detected::Opaque,
        };
        if n == 0 {
            return Detected::Opaque;
        }
        if let Some(d) = classify(&buf[..n]) {
            return d;
        }
        // A request line split over segments: wait for the rest.
        if Instant::now() >= deadline {
            return Detected::Opaque;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_what_it_sees() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"POST /x HTTP/1.1"), Some(Detected::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"\x16\x03\x01"), Some(Detected::Opaque));
        assert_eq!(classify(b"*1\r\n$4\r\nPING"), Some(Detected::Opaque));
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Detected::Opaque));
        assert_eq!(classify(b" GET"), Some(Detected::Opaque));
    }

    /// Found by the `detect` fuzz target: the answer must not depend on
    /// how the bytes were split into segments.
    #[test]
    fn a_method_of_the_longest_length_has_one_answer_however_it_arrives() {
        let mut b = vec![b'A'; MAX_METHOD];
        assert_eq!(classify(&b), None, "the next byte decides");
        b.push(b' ');
        assert_eq!(classify(&b), Some(Detected::Http1));
        let mut longer = vec![b'A'; MAX_METHOD + 1];
        assert_eq!(classify(&longer), Some(Detected::Opaque));
        longer.push(b' ');
        assert_eq!(classify(&longer), Some(Detected::Opaque));
    }
}
