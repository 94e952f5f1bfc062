//! HTTP/2 frame budgets a served connection's client must stay within,
//! counted from the frame headers as bytes arrive (nothing is buffered or
//! parsed beyond the 9-byte headers).
//!
//! The h2 library already cuts a burst of resets (streams reset before they
//! were accepted) and CONTINUATION floods. What it leaves open:
//! - a flood of PING or SETTINGS frames, each demanding an ack: answering
//!   them costs as much as the flood, and a client that stops reading pins
//!   the connection with replies it never takes;
//! - rapid reset at a slow, steady rate, under the burst limit.
//!
//! Past a budget the connection gets GOAWAY with ENHANCE_YOUR_CALM (when the
//! output is at a frame boundary) and is closed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::telemetry::{DefenceMetrics, Direction};

/// How many frames of each kind a client may send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameBudget {
    /// PING and SETTINGS frames (not acks) per second.
    pub control_per_sec: u32,
    /// RST_STREAM frames per second, averaged over [`RESET_WINDOW`]; None:
    /// no limit (peer sidecars, which relay their callers' cancellations).
    pub resets_per_sec: Option<u32>,
}

impl Default for FrameBudget {
    fn default() -> Self {
        FrameBudget {
            control_per_sec: 1000,
            resets_per_sec: Some(100),
        }
    }
}

impl FrameBudget {
    /// The budget for connections from peer sidecars.
    pub fn for_peers(&self) -> Self {
        FrameBudget {
            control_per_sec: self.control_per_sec,
            resets_per_sec: None,
        }
    }
}

/// The window the reset rate is averaged over: long enough that a slow,
/// steady rapid reset shows, short enough to stop it soon.
pub const RESET_WINDOW: Duration = Duration::from_secs(10);

const PREFACE_LEN: usize = 24;
const HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Walks a byte stream frame by frame, seeing only frame headers.
#[derive(Debug, Default)]
struct Framing {
    /// Bytes to pass before the next frame header (preface, payload).
    skip: usize,
    head: [u8; HEADER_LEN],
    head_len: usize,
}

/// A frame's type, flags and stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameHead {
    kind: u8,
    flags: u8,
    stream: u32,
}

impl Framing {
    fn at_boundary(&self) -> bool {
        self.skip == 0 && self.head_len == 0
    }

    /// Feeds bytes; calls `on` for each complete frame header, stopping at
    /// the first `Err` it returns.
    fn feed<E>(
        &mut self,
        mut b: &[u8],
        mut on: impl FnMut(FrameHead) -> Result<(), E>,
    ) -> Result<(), E> {
        while !b.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(b.len());
                self.skip -= n;
                b = &b[n..];
                continue;
            }
            let n = (HEADER_LEN - self.head_len).min(b.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&b[..n]);
            self.head_len += n;
            b = &b[n..];
            if self.head_len == HEADER_LEN {
                self.head_len = 0;
                let h = &self.head;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                on(FrameHead {
                    kind: h[3],
                    flags: h[4],
                    stream,
                })?;
            }
        }
        Ok(())
    }
}

/// A count over a fixed window.
#[derive(Debug)]
struct Window {
    started: Instant,
    count: u32,
}

impl Window {
    fn new() -> Self {
        Window {
            started: Instant::now(),
            count: 0,
        }
    }

    /// Counts one; whether the count in this window is now over `max`.
    fn over(&mut self, span: Duration, max: u32) -> bool {
        let now = Instant::now();
        if now.saturating_duration_since(self.started) >= span {
            self.started = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count > max
    }
}

/// Which budget a client went over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Over {
    Control,
    Resets,
}

/// The IO of a served HTTP/2 connection, holding its client to a budget.
pub struct FrameGuard<I> {
    io: I,
    budget: FrameBudget,
    read: Framing,
    written: Framing,
    control: Window,
    resets: Window,
    /// The highest stream the client opened, for GOAWAY.
    last_stream: u32,
    tripped: bool,
    metrics: (DefenceMetrics, Direction),
}

impl<I> FrameGuard<I> {
    pub fn new(io: I, budget: FrameBudget, metrics: (DefenceMetrics, Direction)) -> Self {
        FrameGuard {
            io,
            budget,
            read: Framing {
                skip: PREFACE_LEN,
                ..Framing::default()
            },
            written: Framing::default(),
            control: Window::new(),
            resets: Window::new(),
            last_stream: 0,
            tripped: false,
            metrics,
        }
    }

    /// Counts the frames in newly read bytes against the budget.
    fn inspect(&mut self, bytes: &[u8]) -> Result<(), Over> {
        let (budget, control, resets, last) = (
            &self.budget,
            &mut self.control,
            &mut self.resets,
            &mut self.last_stream,
        );
        self.read.feed(bytes, |f| match f.kind {
            HEADERS => {
                *last = (*last).max(f.stream);
                Ok(())
            }
            PING | SETTINGS if f.flags & ACK == 0 => {
                if control.over(Duration::from_secs(1), budget.control_per_sec) {
                    Err(Over::Control)
                } else {
                    Ok(())
                }
            }
            RST_STREAM => match budget.resets_per_sec {
                Some(rate)
                    if resets.over(
                        RESET_WINDOW,
                        rate.saturating_mul(RESET_WINDOW.as_secs() as u32),
                    ) =>
                {
                    Err(Over::Resets)
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        })
    }

    /// The GOAWAY (ENHANCE_YOUR_CALM) frame that tells the client why.
    fn goaway(&self) -> [u8; HEADER_LEN + 8] {
        let mut f = [0u8; HEADER_LEN + 8];
        f[2] = 8; // payload length
        f[3] = 0x7; // GOAWAY
        f[9..13].copy_from_slice(&self.last_stream.to_be_bytes());
        f[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        f
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for FrameGuard<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.tripped {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "HTTP/2 frame budget exceeded",
            )));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() == before {
            return res;
        }
        let Err(over) = this.inspect(&buf.filled()[before..]) else {
            return res;
        };
        this.tripped = true;
        let (metrics, direction) = &this.metrics;
        metrics.enforced(
            *direction,
            match over {
                Over::Control => "h2_control_flood",
                Over::Resets => "h2_reset_flood",
            },
        );
        if this.written.at_boundary() {
            // Best effort: a client that does not read gets no reason.
            let goaway = this.goaway();
            let _ = Pin::new(&mut this.io).poll_write(cx, &goaway);
            let _ = Pin::new(&mut this.io).poll_flush(cx);
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            match over {
                Over::Control => "too many PING/SETTINGS frames (ENHANCE_YOUR_CALM)",
                Over::Resets => "too many stream resets (ENHANCE_YOUR_CALM)",
            },
        )))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FrameGuard<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            let _ = this.written.feed(&buf[..n], |_| Ok::<(), ()>(()));
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            let mut left = n;
            for b in bufs {
                if left == 0 {
                    break;
                }
                let k = left.min(b.len());
                let _ = this.written.feed(&b[..k], |_| Ok::<(), ()>(()));
                left -= k;
            }
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn framing_sees_every_header_however_the_bytes_are_split() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0; 6]));
        bytes.extend(frame(HEADERS, 0x4, 1, &[1, 2, 3]));
        bytes.extend(frame(PING, 0, 0, &[0; 8]));
        for split in 1..bytes.len() {
            let mut f = Framing {
                skip: PREFACE_LEN,
                ..Framing::default()
            };
            let mut seen = Vec::new();
            for chunk in bytes.chunks(split) {
                f.feed(chunk, |h| {
                    seen.push((h.kind, h.stream));
                    Ok::<(), ()>(())
                })
                .unwrap();
            }
            assert_eq!(
                seen,
                [(SETTINGS, 0), (HEADERS, 1), (PING, 0)],
                "split {split}"
            );
            assert!(f.at_boundary());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_flood_gets_goaway_enhance_your_calm() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let metrics = DefenceMetrics::default();
        let budget = FrameBudget {
            control_per_sec: 10,
            resets_per_sec: Some(1),
        };
        let mut guard = FrameGuard::new(server, budget, (metrics.clone(), Direction::Inbound));
        let mut flood = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        flood.extend(frame(HEADERS, 0x5, 3, &[]));
        for _ in 0..11 {
            flood.extend(frame(PING, 0, 0, &[0; 8]));
        }
        client.write_all(&flood).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let err = guard.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        let mut goaway = [0u8; 17];
        client.read_exact(&mut goaway).await.unwrap();
        assert_eq!(goaway[3], 0x7);
        assert_eq!(&goaway[9..13], &3u32.to_be_bytes());
        assert_eq!(&goaway[13..17], &ENHANCE_YOUR_CALM.to_be_bytes());
        assert_eq!(metrics.count(Direction::Inbound, "h2_control_flood"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_reset_rate_within_budget_passes_and_over_it_trips() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let budget = FrameBudget {
            control_per_sec: 10,
            resets_per_sec: Some(1),
        };
        let mut guard = FrameGuard::new(
            server,
            budget,
            (DefenceMetrics::default(), Direction::Inbound),
        );
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        assert_eq!(guard.read(&mut buf).await.unwrap(), 24);
        // One a second for 30 s: within budget.
        for i in 0..30u32 {
            client
                .write_all(&frame(RST_STREAM, 0, 2 * i + 1, &[0, 0, 0, 8]))
                .await
                .unwrap();
            assert_eq!(guard.read(&mut buf).await.unwrap(), 13);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Eleven at once: over ten in the window.
        for i in 0..11u32 {
            client
                .write_all(&frame(RST_STREAM, 0, 101 + 2 * i, &[0, 0, 0, 8]))
                .await
                .unwrap();
        }
        let mut res = Ok(0);
        for _ in 0..11 {
            res = guard.read(&mut buf).await;
            if res.is_err() {
                break;
            }
        }
        assert!(res.is_err());
    }
}
