//! The frontend's db client. By default each ping opens a connection of its
//! own, so the demo's opaque `(tcp)` row has connections to count (and the
//! mesh's cost of one, an mTLS handshake between the sidecars, is in the
//! frontend's latency); with `--db-keep-alive` connections are kept and
//! reused, one request at a time each, as a Redis or SQL client pool does.
//! Either way the name is resolved through the cache, not per ping.

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::resolver::CachingResolver;

const PING: &[u8; 15] = b"PING weft-demo\n";
const LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Db {
    host: String,
    port: u16,
    resolver: CachingResolver,
    keep_alive: bool,
    /// Connections not in use right now (with `keep_alive`).
    idle: Mutex<Vec<TcpStream>>,
}

impl Db {
    /// `host:port`; nothing is connected until the first ping.
    pub fn new(addr: &str, resolver: CachingResolver, keep_alive: bool) -> anyhow::Result<Db> {
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("--db `{addr}` is not host:port"))?;
        Ok(Db {
            host,
            port,
            resolver,
            keep_alive,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// One line through the echo server, checked: on an idle connection
    /// when one is kept and still works, otherwise on a new one.
    pub async fn ping(&self) -> std::io::Result<()> {
        let reused = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        if let Some(mut conn) = reused
            && ping_on(&mut conn).await.is_ok()
        {
            self.put_back(conn);
            return Ok(());
        }
        let mut conn = self.connect().await?;
        ping_on(&mut conn).await?;
        self.put_back(conn);
        Ok(())
    }

    fn put_back(&self, conn: TcpStream) {
        if !self.keep_alive {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        let ips = self.resolver.lookup(&self.host).await?;
        let ip = ips.first().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address")
        })?;
        let conn = tokio::time::timeout(LIMIT, TcpStream::connect((*ip, self.port)))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        conn.set_nodelay(true)?;
        Ok(conn)
    }
}

async fn ping_on(conn: &mut TcpStream) -> std::io::Result<()> {
    conn.write_all(PING).await?;
    let mut got = [0u8; PING.len()];
    tokio::time::timeout(LIMIT, conn.read_exact(&mut got))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no echo"))??;
    if &got != PING {
        return Err(std::io::Error::other("the echo differs"));
    }
    Ok(())
}
