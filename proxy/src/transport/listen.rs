//! Binding the proxy's listeners.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Binds every address in `addrs`. An IPv6 address is skipped (with a warning)
/// when the namespace has no IPv6, as long as some address bound, so the same
/// defaults work in IPv4-only and dual-stack pods.
pub fn bind_all(addrs: &[SocketAddr], what: &str) -> io::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    let mut last_err = None;
    for addr in addrs {
        match bind(*addr) {
            Ok(l) => out.push(l),
            Err(e) if addr.is_ipv6() && ipv6_unavailable(&e) => {
                tracing::warn!(%addr, error = %e, "{what} listener: no IPv6 here, skipping");
                last_err = Some(e);
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{what} listener: cannot bind {addr}: {e}"),
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(last_err.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what} listener: no address given"),
            )
        }));
    }
    Ok(out)
}

fn ipv6_unavailable(e: &io::Error) -> bool {
    // EAFNOSUPPORT (97) or EADDRNOTAVAIL (99): no IPv6 stack or no ::1.
    matches!(e.raw_os_error(), Some(97) | Some(99))
}

/// One listener. IPv6 sockets are v6-only so `0.0.0.0` and `[::]` can both bind.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}
