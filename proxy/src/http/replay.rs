//! A request body that can be sent again: [`ReplayBody`] lets the retry
//! layer stream a request's first attempt while it keeps a copy of the data
//! (and trailers) read so far, up to a limit. Without it a body had to be
//! collected before the first try, which delays every request and rules out
//! retrying bodies of unknown length (chunked uploads, gRPC streams).
//!
//! Attempts are sequential. [`ReplayBody::try_replay`] makes a fresh attempt
//! that first replays the copied frames and then goes on reading the
//! original body where the earlier attempt left off (which may be at its
//! very start, when that attempt failed before sending anything). Only the
//! newest attempt reads: an older one polled afterwards gets an error, never
//! a frame of the newer one's (nor a truncated end of stream that would pass
//! for a whole body). Once more than `max_replay` bytes have been read, the
//! copy is dropped and the request can no longer be retried; the attempt
//! under way still gets every byte.
//!
//! The state the attempts share sits behind a `std::sync::Mutex`, held only
//! inside the synchronous body methods, so the body stays `Send + Sync +
//! Unpin` and boxes into [`Body`].

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Frame, SizeHint};

use super::{Body, BoxError};

/// Why an attempt's body could not go on.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("a newer attempt has taken over the request body")]
    Superseded,
    #[error("the request body's copy for replay is gone")]
    BufferGone,
    #[error("the request body's shared state is poisoned")]
    Poisoned,
}

/// One attempt's view of a request body that may be replayed: see the
/// module docs.
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// Which attempt this is; only the newest may read.
    attempt: u64,
    /// Copied data frames this attempt has yielded (an index into
    /// [`Shared::chunks`]).
    next_chunk: usize,
    /// Data bytes this attempt has yielded.
    bytes_out: u64,
    /// Whether this attempt has yielded the trailers.
    trailers_out: bool,
}

/// What the attempts share.
struct Shared {
    /// The newest attempt: the only one allowed to read.
    newest: u64,
    /// The original body, until it has ended (or failed).
    inner: Option<Body>,
    /// Copies of the data frames read from `inner`, in order; None once the
    /// copy was dropped (too large, or the body failed).
    chunks: Option<Vec<Bytes>>,
    /// Data frames read from `inner`, copied or not.
    chunks_read: usize,
    /// Data bytes read from `inner`.
    bytes_read: u64,
    /// The original's trailers, once read.
    trailers: Option<HeaderMap>,
    /// The original body failed: a retry could not send it whole.
    failed: bool,
    max_replay: u64,
    /// The original said at the start it is larger than `max_replay`: no
    /// point copying any of it (it can still be retried before any of it is
    /// read).
    too_large: bool,
    /// The waker of the attempt waiting on `inner`, woken when a newer
    /// attempt supersedes it so that it stops waiting.
    waiting: Option<Waker>,
}

impl Shared {
    fn replayable(&self) -> bool {
        !self.failed && self.chunks.is_some()
    }
}

impl ReplayBody {
    /// Wraps `body`, keeping up to `max_replay` bytes of it for replay.
    pub fn new(body: Body, max_replay: usize) -> ReplayBody {
        let max_replay = u64::try_from(max_replay).unwrap_or(u64::MAX);
        let too_large = hyper::body::Body::size_hint(&body).lower() > max_replay;
        let shared = Shared {
            newest: 0,
            inner: Some(body),
            chunks: Some(Vec::new()),
            chunks_read: 0,
            bytes_read: 0,
            trailers: None,
            failed: false,
            max_replay,
            too_large,
            waiting: None,
        };
        ReplayBody {
            shared: Arc::new(Mutex::new(shared)),
            attempt: 0,
            next_chunk: 0,
            bytes_out: 0,
            trailers_out: false,
        }
    }

    /// A body for the next attempt, yielding the same frames from the
    /// beginning; None when that is no longer possible (more than
    /// `max_replay` bytes were read, or the original body failed).
    ///
    /// The new attempt supersedes every earlier one (whichever handle this
    /// is called on): they must not be sent any further, and polling them
    /// yields [`ReplayError::Superseded`].
    pub fn try_replay(&self) -> Option<ReplayBody> {
        let (attempt, waiting) = {
            let mut s = self.shared.lock().ok()?;
            if !s.replayable() {
                return None;
            }
            s.newest += 1;
            (s.newest, s.waiting.take())
        };
        // An earlier attempt waiting for the original hears it is done.
        if let Some(w) = waiting {
            w.wake();
        }
        Some(ReplayBody {
            shared: self.shared.clone(),
            attempt,
            next_chunk: 0,
            bytes_out: 0,
            trailers_out: false,
        })
    }

    /// Whether [`ReplayBody::try_replay`] would give a body.
    pub fn can_replay(&self) -> bool {
        self.lock().is_ok_and(|s| s.replayable())
    }

    fn lock(&self) -> Result<MutexGuard<'_, Shared>, ReplayError> {
        self.shared.lock().map_err(|_| ReplayError::Poisoned)
    }
}

impl hyper::body::Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut s = match this.shared.lock() {
            Ok(s) => s,
            Err(_) => return Poll::Ready(Some(Err(ReplayError::Poisoned.into()))),
        };
        if s.newest != this.attempt {
            return Poll::Ready(Some(Err(ReplayError::Superseded.into())));
        }

        // What an earlier attempt read, first.
        if this.next_chunk < s.chunks_read {
            let Some(chunk) = s.chunks.as_ref().and_then(|c| c.get(this.next_chunk)) else {
                return Poll::Ready(Some(Err(ReplayError::BufferGone.into())));
            };
            this.next_chunk += 1;
            this.bytes_out += chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if !this.trailers_out
            && let Some(t) = &s.trailers
        {
            this.trailers_out = true;
            return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
        }

        // Then the rest of the original, copied as it passes.
        let Some(inner) = s.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => {
                if !s.waiting.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.waiting = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            Poll::Ready(None) => {
                s.inner = None;
                s.waiting = None;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => {
                s.inner = None;
                s.waiting = None;
                s.failed = true;
                s.chunks = None;
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                s.chunks_read += 1;
                s.bytes_read = s.bytes_read.saturating_add(data.len() as u64);
                this.next_chunk = s.chunks_read;
                this.bytes_out = s.bytes_read;
                if s.too_large || s.bytes_read > s.max_replay {
                    s.chunks = None;
                } else if let Some(chunks) = s.chunks.as_mut() {
                    chunks.push(data.clone());
                }
                Frame::data(data)
            }
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    s.trailers = Some(trailers.clone());
                    this.trailers_out = true;
                    Frame::trailers(trailers)
                }
                Err(other) => other,
            },
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        let Ok(s) = self.lock() else {
            return false;
        };
        // A superseded attempt must be polled to learn it cannot go on.
        s.newest == self.attempt
            && self.next_chunk >= s.chunks_read
            && (self.trailers_out || s.trailers.is_none())
            && s.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let Ok(s) = self.lock() else {
            return SizeHint::default();
        };
        // Copied bytes yet to replay, plus what the original has left.
        let replay = s.bytes_read.saturating_sub(self.bytes_out);
        let Some(inner) = s.inner.as_ref() else {
            return SizeHint::with_exact(replay);
        };
        let rest = inner.size_hint();
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(replay));
        }
        hint.set_lower(rest.lower().saturating_add(replay));
        hint
    }
}

impl std::fmt::Debug for ReplayBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayBody")
            .field("attempt", &self.attempt)
            .field("next_chunk", &self.next_chunk)
            .field("bytes_out", &self.bytes_out)
            .field("trailers_out", &self.trailers_out)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use hyper::body::Body as _;
    use tokio::sync::mpsc;

    use super::*;
    use crate::http::{boxed, full};

    type Tx = mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>;

    /// A body fed through a channel, frame by frame, that knows its length
    /// (when given) the way hyper's incoming bodies do: what is left.
    struct Chan {
        rx: mpsc::UnboundedReceiver<Result<Frame<Bytes>, BoxError>>,
        left: Option<u64>,
    }

    impl hyper::body::Body for Chan {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            let res = self.rx.poll_recv(cx);
            if let (Poll::Ready(Some(Ok(f))), Some(left)) = (&res, self.left.as_mut()) {
                *left -= f.data_ref().map_or(0, |d| d.len() as u64);
            }
            res
        }

        fn size_hint(&self) -> SizeHint {
            self.left.map(SizeHint::with_exact).unwrap_or_default()
        }
    }

    fn chan(len: Option<u64>) -> (Tx, Body) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, boxed(Chan { rx, left: len }))
    }

    fn send(tx: &Tx, data: &'static str) {
        tx.send(Ok(Frame::data(Bytes::from_static(data.as_bytes()))))
            .unwrap();
    }

    fn trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        t
    }

    /// A whole body, in the chunks given, then trailers when given.
    fn chunked(chunks: &[&'static str], t: Option<HeaderMap>, len: Option<u64>) -> Body {
        let (tx, body) = chan(len);
        for c in chunks {
            send(&tx, c);
        }
        if let Some(t) = t {
            tx.send(Ok(Frame::trailers(t))).unwrap();
        }
        body
    }

    async fn next(b: &mut ReplayBody) -> Option<Result<Frame<Bytes>, BoxError>> {
        tokio::time::timeout(Duration::from_secs(5), b.frame())
            .await
            .expect("a frame in time")
    }

    /// Every frame of an attempt: its data frames and its trailers.
    async fn drain(b: &mut ReplayBody) -> (Vec<Bytes>, Option<HeaderMap>) {
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(f) = next(b).await {
            match f.unwrap().into_data() {
                Ok(d) => data.push(d),
                Err(f) => trailers = Some(f.into_trailers().unwrap()),
            }
        }
        assert!(b.is_end_stream());
        (data, trailers)
    }

    #[test]
    fn boxes_into_a_body() {
        fn send_sync_unpin<T: Send + Sync + Unpin + 'static>() {}
        send_sync_unpin::<ReplayBody>();
        let _: Body = boxed(ReplayBody::new(full("x"), 16));
    }

    #[tokio::test]
    async fn replays_every_chunk_and_the_trailers() {
        let want = (
            ["a", "bb", "ccc"].map(Bytes::from).to_vec(),
            Some(trailers()),
        );
        let body = chunked(&["a", "bb", "ccc"], Some(trailers()), None);
        let mut first = ReplayBody::new(body, 1024);
        assert_eq!(drain(&mut first).await, want);
        let mut second = first.try_replay().unwrap();
        assert!(!second.is_end_stream());
        assert_eq!(drain(&mut second).await, want);
        assert_eq!(drain(&mut second.try_replay().unwrap()).await, want);

        // The first try failed before reading anything: the second streams
        // it all, and the third replays it.
        let body = chunked(&["a", "bb", "ccc"], Some(trailers()), None);
        let first = ReplayBody::new(body, 1024);
        assert_eq!(drain(&mut first.try_replay().unwrap()).await, want);
        assert_eq!(drain(&mut first.try_replay().unwrap()).await, want);
    }

    #[tokio::test]
    async fn a_chunked_body_streams_and_replays() {
        let (tx, body) = chan(None);
        let mut first = ReplayBody::new(body, 1024);
        assert_eq!(first.size_hint().exact(), None);
        assert!(!first.is_end_stream());
        // Frames pass as they arrive: the body is not over yet.
        send(&tx, "hello ");
        let f = next(&mut first).await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "hello ");
        send(&tx, "world");
        drop(tx);
        let (data, t) = drain(&mut first).await;
        assert_eq!((data.concat(), t), (b"world".to_vec(), None));

        let s = ReplayBody::new(chunked(&["hello ", "world"], None, None), 1024);
        assert!(s.can_replay());
        let (data, _) = drain(&mut s.try_replay().unwrap()).await;
        assert_eq!(data.concat(), b"hello world");
        let mut again = s.try_replay().unwrap();
        // All of it is kept now: its length is known.
        assert_eq!(again.size_hint().exact(), Some(11));
        assert_eq!(drain(&mut again).await.0.concat(), b"hello world");
    }

    #[tokio::test]
    async fn too_much_to_keep_is_sent_once_in_full() {
        let body = chunked(&["abc", "def", "gh"], Some(trailers()), None);
        let mut first = ReplayBody::new(body, 4);
        assert!(first.can_replay());
        let (data, t) = drain(&mut first).await;
        assert_eq!(data, vec!["abc", "def", "gh"]);
        assert_eq!(t, Some(trailers()));
        assert!(!first.can_replay());
        assert!(first.try_replay().is_none());

        // Exactly the limit is kept.
        let b = ReplayBody::new(chunked(&["ab", "cd"], None, None), 4);
        let got = drain(&mut b.try_replay().unwrap()).await.0.concat();
        assert_eq!(got, b"abcd");
        assert_eq!(
            drain(&mut b.try_replay().unwrap()).await.0.concat(),
            b"abcd"
        );

        // Said to be too large at the start: nothing is copied, but a retry
        // before any byte was read still works.
        let b = ReplayBody::new(chunked(&["abcdef"], None, Some(6)), 4);
        let mut second = b.try_replay().unwrap();
        assert_eq!(second.size_hint().exact(), Some(6));
        let f = next(&mut second).await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "abcdef");
        assert!(second.try_replay().is_none());
    }

    #[tokio::test]
    async fn a_later_attempt_goes_on_where_the_earlier_stopped() {
        let (tx, body) = chan(None);
        let mut first = ReplayBody::new(body, 1024);
        send(&tx, "one ");
        assert_eq!(
            next(&mut first)
                .await
                .unwrap()
                .unwrap()
                .into_data()
                .unwrap(),
            "one "
        );
        // The first try fails midway.
        let mut second = first.try_replay().unwrap();
        send(&tx, "two ");
        send(&tx, "three");
        tx.send(Ok(Frame::trailers(trailers()))).unwrap();
        drop(tx);
        let (data, t) = drain(&mut second).await;
        assert_eq!(data, vec!["one ", "two ", "three"]);
        assert_eq!(t, Some(trailers()));
        let (data, t) = drain(&mut first.try_replay().unwrap()).await;
        assert_eq!(
            (data.concat(), t),
            (b"one two three".to_vec(), Some(trailers()))
        );
    }

    #[tokio::test]
    async fn a_superseded_attempt_cannot_steal_frames() {
        let (tx, body) = chan(None);
        let mut first = ReplayBody::new(body, 1024);
        send(&tx, "a");
        next(&mut first).await.unwrap().unwrap();
        let mut second = first.try_replay().unwrap();
        send(&tx, "b");
        let err = next(&mut first).await.unwrap().unwrap_err();
        assert!(matches!(
            err.downcast_ref::<ReplayError>(),
            Some(ReplayError::Superseded)
        ));
        // Not a (truncated) end either.
        assert!(!first.is_end_stream());
        assert!(next(&mut first).await.unwrap().is_err());
        send(&tx, "c");
        drop(tx);
        assert_eq!(drain(&mut second).await.0, vec!["a", "b", "c"]);
        assert!(next(&mut first).await.unwrap().is_err());
        let mut third = first.try_replay().unwrap();
        assert_eq!(drain(&mut third).await.0, vec!["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_superseded_attempt_waiting_for_more_is_woken() {
        let (tx, body) = chan(None);
        let first = ReplayBody::new(body, 1024);
        let mut second = first.try_replay().unwrap();
        let waiting = tokio::spawn(async move { second.frame().await.map(|f| f.is_ok()) });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let mut third = first.try_replay().unwrap();
        let res = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(res, Some(false));
        send(&tx, "x");
        assert_eq!(
            next(&mut third)
                .await
                .unwrap()
                .unwrap()
                .into_data()
                .unwrap(),
            "x"
        );
    }

    #[tokio::test]
    async fn lengths_and_ends_are_kept() {
        let b = ReplayBody::new(full("hello"), 1024);
        assert_eq!(b.size_hint().exact(), Some(5));
        assert!(!b.is_end_stream());
        let mut again = b.try_replay().unwrap();
        assert_eq!(again.size_hint().exact(), Some(5));
        assert_eq!(drain(&mut again).await.0.concat(), b"hello");
        let mut again = b.try_replay().unwrap();
        assert_eq!(again.size_hint().exact(), Some(5));
        assert!(!again.is_end_stream());
        assert_eq!(drain(&mut again).await.0.concat(), b"hello");

        // An empty body says so before it is polled, every attempt.
        let empty = ReplayBody::new(full(""), 1024);
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
        let mut again = empty.try_replay().unwrap();
        assert!(again.is_end_stream());
        assert_eq!(drain(&mut again).await, (vec![], None));
        let mut again = empty.try_replay().unwrap();
        assert!(again.is_end_stream());
        assert_eq!(again.size_hint().exact(), Some(0));
        assert_eq!(drain(&mut again).await, (vec![], None));

        // Partly read: what is left for this attempt, all of it for the next.
        let (tx, body) = chan(Some(6));
        let mut first = ReplayBody::new(body, 1024);
        assert_eq!(first.size_hint().exact(), Some(6));
        send(&tx, "abc");
        next(&mut first).await.unwrap().unwrap();
        assert_eq!(first.size_hint().exact(), Some(3));
        let mut second = first.try_replay().unwrap();
        assert_eq!(second.size_hint().exact(), Some(6));
        next(&mut second).await.unwrap().unwrap();
        assert_eq!(second.size_hint().exact(), Some(3));
        send(&tx, "def");
        drop(tx);
        next(&mut second).await.unwrap().unwrap();
        assert_eq!(second.size_hint().exact(), Some(0));
        assert!(next(&mut second).await.is_none());
        assert!(second.is_end_stream());
    }

    #[tokio::test]
    async fn a_failed_original_is_not_replayed() {
        let (tx, body) = chan(None);
        let mut first = ReplayBody::new(body, 1024);
        send(&tx, "a");
        tx.send(Err("client went away".into())).unwrap();
        next(&mut first).await.unwrap().unwrap();
        assert!(next(&mut first).await.unwrap().is_err());
        assert!(!first.can_replay());
        assert!(first.try_replay().is_none());
    }
}
