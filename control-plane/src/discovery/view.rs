//! What one Discover stream's proxy sees: the Services it subscribed to,
//! those its pod declares, every Service their routes send to, and the
//! Workloads at the addresses it asked about. Each message carries only
//! what changed in that view since the stream's last message.
//!
//! The view lives with the stream and dies with it: after a reconnect the
//! proxy subscribes again in its first request, so replicas of the control
//! plane are interchangeable and nothing is kept per proxy between streams.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;

use super::frames::{Message, head};
use super::snapshot::{Encoded, Shared};

/// Subscriptions per stream beyond this are ignored (each kind).
pub const MAX_SUBSCRIPTIONS: usize = 10_000;

#[derive(Debug, Default)]
pub struct View {
    explicit: HashSet<Arc<str>>,
    addresses: HashSet<IpAddr>,
    /// What the proxy holds, with the digest it was sent.
    sent_services: HashMap<Arc<str>, u64>,
    sent_workloads: HashMap<IpAddr, u64>,
    /// Keys reported as not found (once each, until they appear).
    reported: HashSet<String>,
    /// Digests of the always-sent parts as last sent.
    names: Option<u64>,
    always: Option<(u64, u64, u64)>,
    /// The version of this stream's last message (0: none yet).
    last_version: u64,
}

/// A subscription request the view refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    TooMany,
    BadKey(String),
}

impl View {
    /// Adds Services ("namespace/name") to the view.
    pub fn subscribe(&mut self, keys: &[String]) -> Vec<Refused> {
        let mut refused = Vec::new();
        for k in keys {
            if k.split_once('/')
                .is_none_or(|(ns, n)| ns.is_empty() || n.is_empty())
            {
                refused.push(Refused::BadKey(k.clone()));
            } else if self.explicit.len() >= MAX_SUBSCRIPTIONS {
                refused.push(Refused::TooMany);
            } else {
                self.explicit.insert(Arc::from(k.as_str()));
            }
        }
        refused
    }

    pub fn unsubscribe(&mut self, keys: &[String]) {
        for k in keys {
            self.explicit.remove(k.as_str());
        }
    }

    /// Adds pod IPs to the view.
    pub fn subscribe_addresses(&mut self, ips: &[String]) -> Vec<Refused> {
        let mut refused = Vec::new();
        for ip in ips {
            match ip.parse::<IpAddr>() {
                Err(_) => refused.push(Refused::BadKey(ip.clone())),
                Ok(_) if self.addresses.len() >= MAX_SUBSCRIPTIONS => {
                    refused.push(Refused::TooMany)
                }
                Ok(a) => {
                    self.addresses.insert(a);
                }
            }
        }
        refused
    }

    pub fn unsubscribe_addresses(&mut self, ips: &[String]) {
        for ip in ips.iter().filter_map(|ip| ip.parse::<IpAddr>().ok()) {
            self.addresses.remove(&ip);
        }
    }

    /// Services the proxy holds now.
    pub fn services(&self) -> usize {
        self.sent_services.len()
    }

    /// Explicit subscriptions (Services and addresses).
    pub fn subscriptions(&self) -> usize {
        self.explicit.len() + self.addresses.len()
    }

    /// The message that brings the proxy from what it holds to this view of
    /// `shared` (with `declared`, its pod's dependencies, and `inbound`, its
    /// own settings as field 4); None when nothing it sees changed.
    pub fn emit(
        &mut self,
        shared: &Shared,
        declared: &[Arc<str>],
        inbound: &Encoded,
    ) -> Option<Message> {
        let mut body: Vec<Bytes> = Vec::new();
        let mut tail: Vec<u8> = Vec::new();
        let mut changed = self.last_version == 0;

        // The closure of the roots over route backends and mirrors.
        let mut want: HashSet<Arc<str>> = HashSet::new();
        let mut queue: Vec<Arc<str>> = self.explicit.iter().chain(declared).cloned().collect();
        while let Some(k) = queue.pop() {
            if !want.insert(k.clone()) {
                continue;
            }
            if let Some(s) = shared.services.get(&k) {
                queue.extend(s.deps.iter().filter(|d| !want.contains(*d)).cloned());
            }
        }
        for k in &want {
            match shared.services.get(k) {
                Some(s) => {
                    self.reported.remove(&**k);
                    if self.sent_services.get(k) != Some(&s.encoded.digest) {
                        self.sent_services.insert(k.clone(), s.encoded.digest);
                        body.push(s.encoded.bytes.clone());
                        changed = true;
                    }
                }
                None => {
                    if self.reported.insert(k.to_string()) {
                        prost::encoding::string::encode(12, &k.to_string(), &mut tail);
                        changed = true;
                    }
                }
            }
        }
        let mut gone: Vec<Arc<str>> = self
            .sent_services
            .keys()
            .filter(|k| !want.contains(*k) || !shared.services.contains_key(*k))
            .cloned()
            .collect();
        gone.sort();
        for k in gone {
            self.sent_services.remove(&k);
            prost::encoding::string::encode(8, &k.to_string(), &mut tail);
            changed = true;
        }
        // Keys no longer wanted are reported again if wanted again.
        self.reported.retain(|k| {
            want.contains(k.as_str())
                || k.parse::<IpAddr>()
                    .is_ok_and(|ip| self.addresses.contains(&ip))
        });

        for ip in &self.addresses {
            match shared.workloads.get(ip) {
                Some(w) => {
                    self.reported.remove(&ip.to_string());
                    if self.sent_workloads.get(ip) != Some(&w.digest) {
                        self.sent_workloads.insert(*ip, w.digest);
                        body.push(w.bytes.clone());
                        changed = true;
                    }
                }
                None => {
                    if self.reported.insert(ip.to_string()) {
                        prost::encoding::string::encode(12, &ip.to_string(), &mut tail);
                        changed = true;
                    }
                }
            }
        }
        let mut gone: Vec<IpAddr> = self
            .sent_workloads
            .keys()
            .filter(|ip| !self.addresses.contains(*ip) || !shared.workloads.contains_key(*ip))
            .copied()
            .collect();
        gone.sort();
        for ip in gone {
            self.sent_workloads.remove(&ip);
            prost::encoding::string::encode(9, &ip.to_string(), &mut tail);
            changed = true;
        }

        let names = self.names != Some(shared.names.digest);
        let always = (shared.common.digest, shared.networks.digest, inbound.digest);
        changed |= names || self.always != Some(always);
        if !changed {
            return None;
        }
        let mut msg = Vec::with_capacity(body.len() + 6);
        msg.push(Bytes::from(head(shared.version, self.last_version)));
        msg.push(shared.common.bytes.clone());
        msg.push(shared.networks.bytes.clone());
        msg.push(inbound.bytes.clone());
        if names {
            msg.push(shared.names.bytes.clone());
        }
        msg.extend(body);
        msg.push(Bytes::from(tail));
        self.names = Some(shared.names.digest);
        self.always = Some(always);
        self.last_version = shared.version;
        Some(msg)
    }
}
