//! The simulated Watch proxies: each Watches on its own mTLS connection,
//! acks every snapshot and reconnects as a real proxy does; [`Fleet`] is
//! what the simulated proxies (Watch or Discover) acknowledged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prost::Message;
use tokio::sync::mpsc;
use weft_api::v1::discovery_client::DiscoveryClient;
use weft_api::v1::{self, AckRequest, WatchRequest};

use super::NAMESPACE;

#[derive(Debug)]
pub enum Event {
    Acked {
        proxy: usize,
        version: u64,
        at: Instant,
    },
    Failed {
        error: String,
    },
    /// A Discover proxy's new subscription arrived, this long after it
    /// asked.
    FirstUse {
        proxy: usize,
        took: Duration,
    },
}

/// What a simulated proxy decodes of a snapshot: the version only (prost
/// skips the rest). A real proxy decodes and applies all of it, but on its
/// own CPU; decoding N whole snapshots here, on one core, would measure this
/// process rather than the control plane.
#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotVersion {
    #[prost(uint64, tag = "1")]
    version: u64,
}

/// The proxy's Watch backoff (proxy/src/discovery/client.rs): 200ms doubling
/// up to 10s, with jitter.
pub fn backoff(failures: u32) -> Duration {
    let exp = Duration::from_millis(200).saturating_mul(1 << failures.min(8));
    exp.min(Duration::from_secs(10))
        .mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

/// One simulated proxy: Watch on its own mTLS connection, ack every
/// snapshot, and reconnect with the proxy's backoff when the stream fails.
pub async fn simulated_proxy(
    i: usize,
    config: Arc<rustls::ClientConfig>,
    grpc: SocketAddr,
    events: mpsc::UnboundedSender<Event>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let channel = weft_api::grpc::connect_lazy(grpc.to_string(), config);
    let mut acks = DiscoveryClient::new(channel.clone());
    let mut watch = tonic::client::Grpc::new(channel);
    let pod = format!("p-{i}");
    let mut permit = Some(permit);
    let mut applied = 0u64;
    let mut failures = 0u32;
    loop {
        let res: anyhow::Result<()> = async {
            watch.ready().await?;
            let codec = tonic_prost::ProstCodec::<WatchRequest, SnapshotVersion>::default();
            let mut stream = watch
                .server_streaming(
                    tonic::Request::new(WatchRequest {
                        pod_name: pod.clone(),
                        namespace: NAMESPACE.into(),
                        applied_version: applied,
                    }),
                    http::uri::PathAndQuery::from_static("/weft.v1.Discovery/Watch"),
                    codec,
                )
                .await?
                .into_inner();
            while let Some(snap) = stream.message().await? {
                let version = snap.version;
                acks.ack(AckRequest {
                    pod_name: pod.clone(),
                    namespace: NAMESPACE.into(),
                    version,
                    error: String::new(),
                })
                .await?;
                applied = version;
                failures = 0;
                permit.take();
                let _ = events.send(Event::Acked {
                    proxy: i,
                    version,
                    at: Instant::now(),
                });
            }
            bail!("the control plane ended the Watch stream")
        }
        .await;
        // A proxy that cannot connect does not hold up the others' start.
        permit.take();
        if let Err(e) = res
            && events
                .send(Event::Failed {
                    error: format!("{e:#}"),
                })
                .is_err()
        {
            return;
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(backoff(failures)).await;
    }
}

#[derive(Debug, Default)]
pub struct Fleet {
    pub acked: Vec<u64>,
    pub failures: usize,
    pub first_error: Option<String>,
    /// Messages acknowledged, all streams together.
    pub messages: u64,
    /// First uses answered: which proxy, and how long it took.
    pub first_uses: Vec<(usize, Duration)>,
}

impl Fleet {
    pub fn new(n: usize) -> Fleet {
        Fleet {
            acked: vec![0; n],
            ..Default::default()
        }
    }

    /// Applies one event; `on_ack` hears of each proxy's newer version.
    pub fn apply(&mut self, e: Event, mut on_ack: impl FnMut(usize, u64, Instant)) {
        match e {
            Event::Acked { proxy, version, at } => {
                self.messages += 1;
                if let Some(acked) = self.acked.get_mut(proxy)
                    && version > *acked
                {
                    *acked = version;
                    on_ack(proxy, version, at);
                }
            }
            Event::Failed { error } => {
                self.failures += 1;
                self.first_error.get_or_insert(error);
            }
            Event::FirstUse { proxy, took } => self.first_uses.push((proxy, took)),
        }
    }
}

/// A first snapshot, decoded whole: its encoded size and what it holds.
#[derive(Debug, Default, Clone, Copy)]
pub struct SnapshotSize {
    pub bytes: usize,
    pub services: usize,
    pub workloads: usize,
    /// Entries of the names table (Discover only).
    pub names: usize,
}

impl SnapshotSize {
    pub fn of(snap: &v1::Snapshot) -> SnapshotSize {
        SnapshotSize {
            bytes: snap.encoded_len(),
            services: snap.services.len(),
            workloads: snap.workloads.len(),
            names: snap.names.len(),
        }
    }
}

/// One full Watch, decoding the whole first snapshot: its size and content.
pub async fn probe(
    config: Arc<rustls::ClientConfig>,
    grpc: SocketAddr,
) -> anyhow::Result<SnapshotSize> {
    let mut client = DiscoveryClient::new(weft_api::grpc::connect_lazy(grpc.to_string(), config));
    let mut stream = client
        .watch(WatchRequest {
            pod_name: "p-0".into(),
            namespace: NAMESPACE.into(),
            applied_version: 0,
        })
        .await?
        .into_inner();
    let snap = stream
        .message()
        .await?
        .context("the Watch stream ended at once")?;
    Ok(SnapshotSize::of(&snap))
}
