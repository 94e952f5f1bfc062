//! Request mirroring's body: the request's body is read once, and each of
//! its frames is also handed to the mirrored copies. A copy that cannot keep
//! up is cut off (its request fails, never arrives truncated as complete),
//! so a slow mirror never slows the request nor holds its memory.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::mpsc;

use super::{Body, BoxError, boxed};

/// How long a mirrored copy may take, answer included.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Frames a copy may lag behind the request before it is cut off.
const LAG: usize = 16;
/// Mirrored requests in flight at once, per proxy; more are not copied.
pub const MAX_IN_FLIGHT: usize = 256;

enum Item {
    Frame(Frame<Bytes>),
    End,
}

/// The request's body, copying as it goes.
struct Tee {
    inner: Body,
    copies: Vec<Option<mpsc::Sender<Item>>>,
}

impl Tee {
    fn hand(&mut self, item: impl Fn() -> Item) {
        for slot in &mut self.copies {
            if let Some(tx) = slot
                && tx.try_send(item()).is_err()
            {
                *slot = None;
            }
        }
    }
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    self.hand(|| Item::Frame(Frame::data(data.clone())));
                } else if let Some(trailers) = frame.trailers_ref() {
                    let trailers = trailers.clone();
                    self.hand(|| Item::Frame(Frame::trailers(trailers.clone())));
                }
            }
            Poll::Ready(None) => {
                self.hand(|| Item::End);
                self.copies.clear();
            }
            // The request failed: the copies fail too (their senders drop).
            Poll::Ready(Some(Err(_))) => self.copies.clear(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A mirrored copy's body, fed by the [`Tee`].
struct Copy {
    rx: mpsc::Receiver<Item>,
    done: bool,
    hint: SizeHint,
}

#[derive(Debug, thiserror::Error)]
#[error("the mirrored copy fell behind the request and was cut off")]
struct CutOff;

impl HttpBody for Copy {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Item::Frame(f))) => Poll::Ready(Some(Ok(f))),
            Poll::Ready(Some(Item::End)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Err(Box::new(CutOff))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// The body to send on, and `n` copies of it. A body known to be empty is
/// not teed at all.
pub fn tee(body: Body, n: usize) -> (Body, Vec<Body>) {
    if body.is_end_stream() {
        let copies = (0..n)
            .map(|_| boxed(http_body_util::Empty::<Bytes>::new()))
            .collect();
        return (body, copies);
    }
    let hint = body.size_hint();
    let mut senders = Vec::with_capacity(n);
    let mut copies = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = mpsc::channel(LAG);
        senders.push(Some(tx));
        copies.push(boxed(Copy {
            rx,
            done: false,
            hint,
        }));
    }
    (
        boxed(Tee {
            inner: body,
            copies: senders,
        }),
        copies,
    )
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::http::full;

    #[tokio::test]
    async fn copies_get_every_frame_and_a_lagging_one_is_cut_off() {
        let (body, mut copies) = tee(full("hello world"), 2);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello world");
        for c in copies.drain(..) {
            assert_eq!(c.collect().await.unwrap().to_bytes(), "hello world");
        }
        // A streamed body longer than the copy's lag, with nobody reading the copy.
        let frames = (0..40).map(|i| Ok::<_, BoxError>(Frame::data(Bytes::from(format!("{i},")))));
        let stream = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let (body, mut copies) = tee(boxed(stream), 1);
        let all = body.collect().await.unwrap().to_bytes();
        assert!(all.starts_with(b"0,1,") && all.ends_with(b"39,"));
        let copy = copies.remove(0).collect().await;
        assert!(
            copy.is_err(),
            "a copy that fell behind must fail, not end short"
        );
    }
}
