//! Carrying bytes between the accepted connection and the upstream one.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

/// Buffer per direction: large enough that bulk transfers are not syscall-bound,
/// small enough that ten thousand idle connections stay cheap.
const BUF: usize = 16 * 1024;

/// Copies both ways until both sides are done. Half-close is kept: when one
/// side ends its writes, the other is shut down for writing and the opposite
/// direction goes on until it ends too. Returns bytes (client→server,
/// server→client).
pub async fn forward<A, B>(client: &mut A, server: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(client, server, BUF, BUF).await
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
        let fwd = tokio::spawn(async move { forward(&mut proxy_in, &mut proxy_out).await });

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
}
