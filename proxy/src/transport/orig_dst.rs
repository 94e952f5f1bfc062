//! The destination a connection had before iptables redirected it to us.

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// Why no original destination could be read.
#[derive(Debug, thiserror::Error)]
pub enum OrigDstError {
    /// The connection reached the listener directly, not through a REDIRECT rule.
    #[error("connection was not redirected by iptables (no original destination)")]
    NotRedirected,
    #[error("reading the original destination failed: {0}")]
    Io(#[from] io::Error),
}

/// Reads `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6), by the
/// family of the socket the connection arrived on.
pub fn original_dst(stream: &TcpStream) -> Result<SocketAddr, OrigDstError> {
    let sock = SockRef::from(stream);
    let local = stream.local_addr()?;
    let v4 = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    let res = if v4 {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    match res {
        Ok(addr) => addr
            .as_socket()
            .ok_or_else(|| OrigDstError::Io(io::Error::other("original destination is not IP"))),
        // ENOENT: conntrack has no NAT record for this connection.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(OrigDstError::NotRedirected),
        Err(e) => Err(e.into()),
    }
}
