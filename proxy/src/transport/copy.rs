//! Carrying bytes between the accepted connection and the upstream one.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Buffer per direction: large enough that bulk transfers are not syscall-bound,
/// small enough that ten thousand idle connections stay cheap.
const BUF: usize = 16 * 1024;

/// Copies both ways until both sides are done, or until nothing has moved
/// either way for `idle`. Half-close is kept: when one side ends its writes,
/// the other is shut down for writing and the opposite direction goes on
/// until it ends too. Returns bytes (client→server, server→client).
pub async fn forward<A, B>(client: &mut A, server: &mut B, idle: Duration) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let mut client = Touched {
        io: client,
        start,
        last: &last,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, server, BUF, BUF);
    tokio::pin!(copy);
    let mut deadline = start + idle;
    loop {
        tokio::select! {
            done = &mut copy => return done,
            _ = tokio::time::sleep_until(deadline) => {
                // One timer per connection, moved on only when it fires.
                let moved = start + Duration::from_millis(last.load(Ordering::Relaxed));
                if Instant::now() >= moved + idle {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no bytes either way for {idle:?}"),
                    ));
                }
                deadline = moved + idle;
            }
        }
    }
}

/// The client side, noting when bytes last moved either way.
struct Touched<'a, A: ?Sized> {
    io: &'a mut A,
    start: Instant,
    last: &'a AtomicU64,
}

impl<A: ?Sized> Touched<'_, A> {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<A: AsyncRead + Unpin + ?Sized> AsyncRead for Touched<'_, A> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut *self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        res
    }
}

impl<A: AsyncWrite + Unpin + ?Sized> AsyncWrite for Touched<'_, A> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut *self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res
            && n > 0
        {
            self.touch();
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The client finishes writing first and must still get the whole answer.
    #[tokio::test]
    async fn half_close_lets_the_answer_through() {
        let (mut client, mut proxy_in) = tokio::io::duplex(1024);
        let (mut proxy_out, mut server) = tokio::io::duplex(1024);
        let fwd = tokio::spawn(async move {
            forward(&mut proxy_in, &mut proxy_out, Duration::from_secs(60)).await
        });

        client.write_all(b"question").await.unwrap();
        client.shutdown().await.unwrap();

        let mut asked = Vec::new();
        server.read_to_end(&mut asked).await.unwrap();
        assert_eq!(asked, b"question");
        server.write_all(b"answer after EOF").await.unwrap();
        server.shutdown().await.unwrap();

        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer after EOF");
        assert_eq!(fwd.await.unwrap().unwrap(), (8, 16));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_silent_both_ways_is_closed_and_a_busy_one_is_not() {
        let (mut client, mut proxy_in) = tokio::io::duplex(1024);
        let (mut proxy_out, mut server) = tokio::io::duplex(1024);
        let idle = Duration::from_secs(60);
        let fwd = tokio::spawn(async move { forward(&mut proxy_in, &mut proxy_out, idle).await });
        // Bytes every 40 s, one way then the other: never idle for 60 s.
        for i in 0..5 {
            tokio::time::sleep(Duration::from_secs(40)).await;
            let mut b = [0u8; 1];
            if i % 2 == 0 {
                client.write_all(b"x").await.unwrap();
                server.read_exact(&mut b).await.unwrap();
            } else {
                server.write_all(b"y").await.unwrap();
                client.read_exact(&mut b).await.unwrap();
            }
        }
        assert!(!fwd.is_finished());
        tokio::time::sleep(Duration::from_secs(61)).await;
        let err = fwd.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
