//! Snapshot messages as pieces of shared bytes, and the gRPC response body
//! that sends them.
//!
//! A message is the concatenation of encoded `Snapshot` fields: a small
//! head written for the stream (version, base, removed keys) and pieces
//! encoded once per version and shared by every stream ([`Shared`]). The
//! body hands those pieces to HTTP/2 as they are, so a stream holds no
//! encode buffer of its own: tonic's encoder would copy every message into
//! one per stream and keep its capacity, a whole snapshot's worth per proxy.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use http::HeaderMap;
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::Status;

use super::snapshot::{Encoded, Shared};

/// One `Snapshot` message: its pieces, in order.
pub type Message = Vec<Bytes>;

/// Field 1 (`version`) and, unless 0, field 7 (`base_version`).
pub fn head(version: u64, base: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    prost::encoding::uint64::encode(1, &version, &mut b);
    if base != 0 {
        prost::encoding::uint64::encode(7, &base, &mut b);
    }
    b
}

/// A Watch stream's message: everything, or only the changes when the
/// stream sent the version before (`sent`); and a digest of its content,
/// version aside, to skip sending the same content twice.
pub fn watch(shared: &Shared, inbound: &Encoded, sent: Option<u64>) -> (Message, u64) {
    let d = inbound.digest ^ shared.digest.rotate_left(1);
    let mut msg = vec![
        Bytes::from(head(shared.version, 0)),
        shared.common.bytes.clone(),
    ];
    match shared.changes() {
        Some((base, changes)) if sent == Some(base) => msg.push(changes),
        _ => msg.push(shared.everything()),
    }
    msg.push(inbound.bytes.clone());
    (msg, d)
}

/// The response body of a streaming call: each message from `rx` as the
/// 5-byte gRPC prefix and its pieces, then the status in trailers (OK when
/// the sender is dropped).
#[derive(Debug)]
pub struct SnapshotBody {
    rx: mpsc::Receiver<Result<Message, Status>>,
    pending: VecDeque<Bytes>,
    done: bool,
}

impl SnapshotBody {
    pub fn new(rx: mpsc::Receiver<Result<Message, Status>>) -> Self {
        SnapshotBody {
            rx,
            pending: VecDeque::new(),
            done: false,
        }
    }

    fn trailers(status: &Status) -> HeaderMap {
        let mut map = HeaderMap::new();
        if status.add_header(&mut map).is_err() {
            map.insert("grpc-status", http::HeaderValue::from_static("13"));
        }
        map
    }
}

impl http_body::Body for SnapshotBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(piece) = self.pending.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(msg))) => {
                let len: usize = msg.iter().map(Bytes::len).sum();
                let Ok(len32) = u32::try_from(len) else {
                    self.done = true;
                    let status = Status::resource_exhausted("snapshot larger than 4 GiB");
                    return Poll::Ready(Some(Ok(Frame::trailers(Self::trailers(&status)))));
                };
                let mut prefix = Vec::with_capacity(5);
                prefix.put_u8(0);
                prefix.put_u32(len32);
                self.pending.push_back(Bytes::from(prefix));
                self.pending
                    .extend(msg.into_iter().filter(|piece| !piece.is_empty()));
                let first = self.pending.pop_front().unwrap_or_default();
                Poll::Ready(Some(Ok(Frame::data(first))))
            }
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(Self::trailers(&status)))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(Self::trailers(&Status::ok(""))))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use prost::Message as _;
    use tonic::codec::{Codec, Streaming};
    use weft_api::v1;

    /// What the body sends decodes, through tonic's own decoder, to the
    /// messages it was given, and an error ends it with that status.
    #[tokio::test]
    async fn the_body_decodes_as_grpc_messages_then_trailers() {
        let (tx, rx) = mpsc::channel(4);
        let svc = v1::Service {
            name: "db".into(),
            namespace: "shop".into(),
            ..Default::default()
        };
        let piece = Bytes::from(super::super::snapshot::field(2, &svc));
        tx.send(Ok(vec![
            Bytes::from(head(7, 0)),
            piece.clone(),
            Bytes::new(),
        ]))
        .await
        .unwrap();
        tx.send(Ok(vec![Bytes::from(head(8, 7)), piece]))
            .await
            .unwrap();
        tx.send(Err(Status::not_found("gone"))).await.unwrap();
        drop(tx);
        let body = SnapshotBody::new(rx);
        let decoder = tonic_prost::ProstCodec::<v1::Snapshot, v1::Snapshot>::default().decoder();
        let mut stream = Streaming::new_response(decoder, body, http::StatusCode::OK, None, None);
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(
            (first.version, first.base_version, first.services.len()),
            (7, 0, 1)
        );
        assert_eq!(first.services[0].name, "db");
        let second = stream.message().await.unwrap().unwrap();
        assert_eq!((second.version, second.base_version), (8, 7));
        let err = stream.message().await.unwrap_err();
        assert_eq!((err.code(), err.message()), (tonic::Code::NotFound, "gone"));
        // The same pieces, read raw, are a valid prost encoding.
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(vec![Bytes::from(head(9, 0))])).await.unwrap();
        drop(tx);
        let all = SnapshotBody::new(rx).collect().await.unwrap();
        assert_eq!(all.trailers().unwrap()["grpc-status"], "0");
        let bytes = all.to_bytes();
        assert_eq!(v1::Snapshot::decode(&bytes[5..]).unwrap().version, 9);
    }
}
