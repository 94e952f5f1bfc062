//! The simulated Discover proxies: each opens the bidirectional Discover
//! stream on its own mTLS connection, subscribes in its first request,
//! acknowledges every message in-band, subscribes to more when told to (a
//! first use), and reconnects as a real proxy does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tonic::codec::Streaming;
use tonic::transport::Channel;
use weft_api::v1::{self, DiscoverRequest};

use super::NAMESPACE;
use super::proxy::{Event, SnapshotSize, backoff};

/// What a simulated proxy decodes of a message: its version, its base, and
/// the keys of the Services it carries (to see a subscription answered);
/// prost skips the rest (endpoints, routes, the names table). A real proxy
/// decodes and applies all of it, on its own CPU; see `SnapshotVersion`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoverMessage {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(message, repeated, tag = "2")]
    pub services: Vec<ServiceKey>,
    #[prost(uint64, tag = "7")]
    pub base_version: u64,
}

/// A Service's name and namespace, and nothing else of it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceKey {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub namespace: String,
}

impl DiscoverMessage {
    fn carries(&self, key: &str) -> bool {
        self.services.iter().any(|s| {
            key.split_once('/')
                .is_some_and(|(ns, n)| s.namespace == ns && s.name == n)
        })
    }
}

/// What the bench tells a running Discover proxy.
#[derive(Debug)]
pub enum Command {
    /// Subscribe to this Service ("namespace/name") now, and report how
    /// long until a message carries it.
    Subscribe(String),
}

/// An open Discover stream: its request side and its messages.
pub struct Session<M> {
    pub requests: mpsc::Sender<DiscoverRequest>,
    pub messages: Streaming<M>,
}

/// Opens Discover for `pod` with `subscribe` in the first request; messages
/// are decoded as `M` (as little of a Snapshot as the caller needs).
pub async fn open<M>(
    grpc: &mut tonic::client::Grpc<Channel>,
    pod: &str,
    subscribe: Vec<String>,
    applied: u64,
) -> anyhow::Result<Session<M>>
where
    M: prost::Message + Default + Send + 'static,
{
    // Acks and subscriptions are few and small; a proxy that cannot send
    // them waits, as the request stream's HTTP/2 flow control would make it.
    let (tx, rx) = mpsc::channel(16);
    tx.send(DiscoverRequest {
        pod_name: pod.to_string(),
        namespace: NAMESPACE.into(),
        applied_version: applied,
        subscribe,
        ..Default::default()
    })
    .await?;
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    grpc.ready().await?;
    let codec = tonic_prost::ProstCodec::<DiscoverRequest, M>::default();
    let messages = grpc
        .streaming(
            tonic::Request::new(requests),
            http::uri::PathAndQuery::from_static("/weft.v1.Discovery/Discover"),
            codec,
        )
        .await?
        .into_inner();
    Ok(Session {
        requests: tx,
        messages,
    })
}

/// The in-band acknowledgement of `version`.
pub fn ack(version: u64) -> DiscoverRequest {
    DiscoverRequest {
        acked_version: version,
        ..Default::default()
    }
}

/// One simulated Discover proxy.
#[derive(Debug)]
pub struct DiscoverProxy {
    /// Its index in the fleet, for events.
    pub index: usize,
    pub pod: String,
    pub config: Arc<rustls::ClientConfig>,
    pub grpc: SocketAddr,
    /// Keys ("namespace/name") it subscribes to; first uses add to them, so
    /// that a reconnect asks for them again.
    pub subscribe: Vec<String>,
}

impl DiscoverProxy {
    /// Runs until `commands` closes (the bench is done with it): a stream
    /// that fails is reopened with the proxy's backoff.
    pub async fn run(
        mut self,
        events: mpsc::UnboundedSender<Event>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let channel = weft_api::grpc::connect_lazy(self.grpc.to_string(), self.config.clone());
        let mut grpc = tonic::client::Grpc::new(channel);
        let mut permit = permit;
        let mut applied = 0u64;
        let mut failures = 0u32;
        // The subscription waiting for its first message, and since when.
        let mut pending: Option<(String, Instant)> = None;
        loop {
            // Ok: told to stop.
            let res: anyhow::Result<()> = async {
                let mut s =
                    open::<DiscoverMessage>(&mut grpc, &self.pod, self.subscribe.clone(), applied)
                        .await?;
                loop {
                    tokio::select! {
                        msg = s.messages.message() => {
                            let Some(msg) = msg? else {
                                bail!("the control plane ended the Discover stream")
                            };
                            let at = Instant::now();
                            if let Some((key, since)) = &pending
                                && msg.carries(key)
                            {
                                let _ = events.send(Event::FirstUse {
                                    proxy: self.index,
                                    took: at.saturating_duration_since(*since),
                                });
                                pending = None;
                            }
                            s.requests.send(ack(msg.version)).await?;
                            applied = msg.version;
                            failures = 0;
                            permit.take();
                            let _ = events.send(Event::Acked {
                                proxy: self.index,
                                version: msg.version,
                                at,
                            });
                        }
                        cmd = commands.recv() => match cmd {
                            Some(Command::Subscribe(key)) => {
                                self.subscribe.push(key.clone());
                                pending = Some((key.clone(), Instant::now()));
                                s.requests
                                    .send(DiscoverRequest {
                                        subscribe: vec![key],
                                        ..Default::default()
                                    })
                                    .await?;
                            }
                            None => return Ok(()),
                        },
                    }
                }
            }
            .await;
            // A proxy that cannot connect does not hold up the others' start.
            permit.take();
            let Err(e) = res else { return };
            if events
                .send(Event::Failed {
                    error: format!("{e:#}"),
                })
                .is_err()
            {
                return;
            }
            failures = failures.saturating_add(1);
            // Subscriptions asked for meanwhile go in the reconnect's first
            // request (the first use then waits for the reconnect).
            let wake = tokio::time::Instant::now() + backoff(failures);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => break,
                    cmd = commands.recv() => match cmd {
                        Some(Command::Subscribe(key)) => {
                            self.subscribe.push(key.clone());
                            pending = Some((key, Instant::now()));
                        }
                        None => return,
                    },
                }
            }
        }
    }
}

/// One Discover for p-0 with `subscribe`, decoding the whole first
/// message: its size and content.
pub async fn probe(
    config: Arc<rustls::ClientConfig>,
    grpc: SocketAddr,
    subscribe: Vec<String>,
) -> anyhow::Result<SnapshotSize> {
    let channel = weft_api::grpc::connect_lazy(grpc.to_string(), config);
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut s = open::<v1::Snapshot>(&mut grpc, "p-0", subscribe, 0).await?;
    let snap = s
        .messages
        .message()
        .await?
        .context("the Discover stream ended at once")?;
    Ok(SnapshotSize::of(&snap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The minimal decode reads what a full one does, from a real Snapshot.
    #[test]
    fn the_minimal_decode_reads_version_base_and_service_keys() {
        let snap = v1::Snapshot {
            version: 9,
            base_version: 8,
            services: vec![v1::Service {
                name: "svc-3".into(),
                namespace: "fleet".into(),
                virtual_ip: "10.96.0.3".into(),
                ports: vec![v1::ServicePort {
                    port: 80,
                    endpoints: vec![v1::Endpoint {
                        ip: "10.1.0.1".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }],
            names: vec![v1::ServiceName {
                name: "svc-4".into(),
                namespace: "fleet".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let m = DiscoverMessage::decode(snap.encode_to_vec().as_slice()).unwrap();
        assert_eq!((m.version, m.base_version), (9, 8));
        assert!(m.carries("fleet/svc-3"));
        assert!(!m.carries("fleet/svc-4"), "a name is not a Service");
    }
}
