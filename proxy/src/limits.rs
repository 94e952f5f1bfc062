//! A Service's caps, shared by every caller of it through this proxy:
//! requests in flight (maxConcurrentRequests), open connections
//! (maxConnections) and requests waiting for an endpoint
//! (maxPendingRequests). Over a cap the caller is refused at once rather
//! than queued, so an overloaded Service cannot pile up work here.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weft_api::v1;

/// Which cap refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AtLimit {
    #[error("too many requests in flight")]
    Requests,
    #[error("at its connection limit")]
    Connections,
    #[error("too many requests waiting for an endpoint")]
    Pending,
}

#[derive(Debug, Default)]
pub struct Limits {
    requests: Option<Arc<Semaphore>>,
    connections: Option<Arc<Semaphore>>,
    pending: Option<Arc<Semaphore>>,
}

/// Holds one unit of a cap while it lives (nothing when there is no cap).
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Limits {
    pub fn new(spec: Option<v1::Limits>) -> Self {
        let spec = spec.unwrap_or_default();
        let cap = |n: u32| (n > 0).then(|| Arc::new(Semaphore::new(n as usize)));
        Limits {
            requests: cap(spec.max_concurrent_requests),
            connections: cap(spec.max_connections),
            pending: cap(spec.max_pending_requests),
        }
    }

    pub fn request(&self) -> Result<Permit, AtLimit> {
        take(&self.requests, AtLimit::Requests)
    }

    pub fn connection(&self) -> Result<Permit, AtLimit> {
        take(&self.connections, AtLimit::Connections)
    }

    pub fn pending(&self) -> Result<Permit, AtLimit> {
        take(&self.pending, AtLimit::Pending)
    }
}

fn take(cap: &Option<Arc<Semaphore>>, which: AtLimit) -> Result<Permit, AtLimit> {
    match cap {
        None => Ok(Permit(None)),
        Some(s) => s
            .clone()
            .try_acquire_owned()
            .map(|p| Permit(Some(p)))
            .map_err(|_| which),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_refuses_until_a_permit_is_returned() {
        let l = Limits::new(Some(v1::Limits {
            max_connections: 1,
            ..Default::default()
        }));
        let first = l.connection().unwrap();
        assert_eq!(l.connection().unwrap_err(), AtLimit::Connections);
        drop(first);
        assert!(l.connection().is_ok());
        // No cap: always a permit.
        let _many: Vec<_> = (0..100).map(|_| l.request().unwrap()).collect();
    }
}
