//! Leader election over a `coordination.k8s.io/v1` Lease in Weft's own
//! namespace. Every replica serves Watch and Certify; only the holder of the
//! Lease writes (statuses, the CA Secret, trust bundles), so they are written
//! once.
//!
//! The holder renews every [`RENEW`]; a Lease not renewed for [`DURATION`] is
//! free to take, so a killed leader is replaced within about
//! `DURATION + RENEW`. Every write carries the resourceVersion it read, so two
//! replicas can never both believe they hold it. A leader that cannot renew
//! steps down before its Lease runs out; one that stops cleanly releases it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// The Lease's name.
pub const LEASE: &str = "weft-control";
/// How long a Lease holds without renewal.
pub const DURATION: Duration = Duration::from_secs(10);
/// How often the holder renews and the others look.
pub const RENEW: Duration = Duration::from_secs(2);

fn now() -> Timestamp {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default();
    Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH)
}

#[derive(Debug)]
enum Outcome {
    Leading,
    Following(String),
}

pub struct Elector {
    api: Api<Lease>,
    identity: String,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Elector {
    pub fn new(client: Client, namespace: &str, identity: &str) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            identity: identity.into(),
        }
    }

    /// Runs the election until `stop` resolves; the receiver says whether this
    /// replica leads now. On stop, a held Lease is released.
    pub fn spawn(
        self,
        metrics: std::sync::Arc<Metrics>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut stop = std::pin::pin!(stop);
            let mut last_renewed: Option<tokio::time::Instant> = None;
            loop {
                let leading = match self.try_once().await {
                    Ok(Outcome::Leading) => {
                        last_renewed = Some(tokio::time::Instant::now());
                        true
                    }
                    Ok(Outcome::Following(holder)) => {
                        if *tx.borrow() {
                            warn!(holder, "lost the leader Lease");
                        }
                        last_renewed = None;
                        false
                    }
                    Err(e) => {
                        // Keep leading only while the Lease we hold is surely
                        // still ours: step down well before it can expire.
                        let held =
                            last_renewed.is_some_and(|t| t.elapsed() < DURATION.mul_f64(0.7));
                        warn!(error = %e, still_leading = held, "the leader Lease could not be read or renewed");
                        held
                    }
                };
                if *tx.borrow() != leading {
                    info!(identity = %self.identity, leading, "leadership changed");
                    metrics.set_leader(leading);
                    let _ = tx.send(leading);
                }
                tokio::select! {
                    _ = tokio::time::sleep(RENEW) => {}
                    _ = &mut stop => {
                        if *tx.borrow() {
                            self.release().await;
                            metrics.set_leader(false);
                            let _ = tx.send(false);
                        }
                        return;
                    }
                }
            }
        });
        rx
    }

    async fn try_once(&self) -> Result<Outcome, kube::Error> {
        let now = now();
        let Some(mut lease) = self.api.get_opt(LEASE).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(DURATION.as_secs() as i32),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Outcome::Leading),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    Ok(Outcome::Following("another replica".into()))
                }
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let duration_us = i64::from(
            spec.lease_duration_seconds
                .unwrap_or(DURATION.as_secs() as i32),
        ) * 1_000_000;
        let expired = spec
            .renew_time
            .as_ref()
            .is_none_or(|t| t.0.as_microsecond() + duration_us < now.as_microsecond());
        if holder != self.identity && !holder.is_empty() && !expired {
            return Ok(Outcome::Following(holder));
        }
        if holder != self.identity {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.lease_duration_seconds = Some(DURATION.as_secs() as i32);
        }
        spec.renew_time = Some(MicroTime(now));
        // The resourceVersion read above makes this a compare-and-swap.
        match self
            .api
            .replace(LEASE, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if holder != self.identity {
                    info!(previous = %holder, "took the leader Lease");
                }
                Ok(Outcome::Leading)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                Ok(Outcome::Following("another replica".into()))
            }
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up so that another replica takes it at once.
    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(LEASE).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match self
            .api
            .replace(LEASE, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!("released the leader Lease"),
            Err(e) => warn!(error = %e, "releasing the leader Lease"),
        }
    }
}
