use std::net::SocketAddr;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Mode {
    Echo,
    Digest,
    /// Server speaks first: `<pod>\n` on connect, then echo.
    Banner,
}

pub async fn serve(listen: SocketAddr, mode: Mode, pod: String) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, ?mode, "tcp server listening");
    loop {
        let (s, peer) = l.accept().await?;
        let pod = pod.clone();
        tokio::spawn(async move {
            let res = match mode {
                Mode::Echo => echo(s).await,
                Mode::Digest => digest(s).await,
                Mode::Banner => banner(s, &pod).await,
            };
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "tcp connection");
            }
        });
    }
}

async fn echo(mut s: TcpStream) -> std::io::Result<()> {
    let (mut r, mut w) = s.split();
    tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await
}

async fn digest(mut s: TcpStream) -> std::io::Result<()> {
    let mut hash = Sha256::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        len += n as u64;
        hash.update(&buf[..n]);
    }
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    s.write_all(format!("{len} {hex}\n").as_bytes()).await?;
    s.shutdown().await
}

async fn banner(mut s: TcpStream, pod: &str) -> std::io::Result<()> {
    s.write_all(format!("{pod}\n").as_bytes()).await?;
    echo(s).await
}
