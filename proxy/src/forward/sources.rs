//! A cap on the connections one source address may hold open at once on
//! the inbound listener, so that one client outside the mesh (a slowloris,
//! a runaway pool) cannot take every socket and byte of memory the pod's
//! other callers need. Peer sidecars multiplex their callers over a few
//! connections and never come near it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct SourceCap {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One connection counted against its source while it lives.
#[derive(Debug)]
pub struct SourceSlot {
    cap: Arc<SourceCap>,
    ip: IpAddr,
}

impl SourceCap {
    /// `max` connections per source address; 0: no cap.
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(SourceCap {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `ip`, or None at the cap.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        if self.max == 0 {
            return Some(SourceSlot {
                cap: self.clone(),
                ip,
            });
        }
        let mut open = self.open.lock().ok()?;
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            cap: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if self.cap.max == 0 {
            return;
        }
        if let Ok(mut open) = self.cap.open.lock()
            && let Some(n) = open.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_gets_its_own_cap_and_slots_come_back() {
        let cap = SourceCap::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let s1 = cap.admit(a).unwrap();
        let _s2 = cap.admit(a).unwrap();
        assert!(cap.admit(a).is_none(), "a third from one source is refused");
        assert!(cap.admit(b).is_some(), "another source is not affected");
        drop(s1);
        assert!(cap.admit(a).is_some(), "a closed connection frees its slot");
    }

    #[test]
    fn zero_means_no_cap_and_forgets_nothing() {
        let cap = SourceCap::new(0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<_> = (0..1000).map(|_| cap.admit(ip).unwrap()).collect();
        drop(slots);
        assert!(cap.open.lock().unwrap().is_empty());
    }
}
