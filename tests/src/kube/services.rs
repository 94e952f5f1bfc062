//! The node's view of Services and EndpointSlices (two watches), which the
//! kube-proxy stand-in's rules, the pods' hosts files and the Service
//! environment variables are made from.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ::kube::api::Api;
use ::kube::runtime::utils::StreamBackoff;
use ::kube::runtime::watcher::{self, Event};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::kube_proxy::{self, Key};
use super::{hosts, stand_in::Steady};
use crate::netns::Netns;

/// A pod's hosts file, kept current.
#[derive(Debug)]
struct HostsFile {
    namespace: String,
    ip: Ipv4Addr,
    hostname: String,
    written: String,
}

/// Services, EndpointSlices, and what is made from them.
#[derive(Debug, Default)]
pub struct Network {
    pub services: BTreeMap<Key, Service>,
    pub slices: BTreeMap<Key, EndpointSlice>,
    hosts: BTreeMap<PathBuf, HostsFile>,
    rules: String,
}

impl Network {
    /// Brings the node's nat rules and every hosts file up to date;
    /// returns what failed.
    pub fn sync(&mut self, bridge: &Netns) -> Vec<String> {
        let mut errors = Vec::new();
        let rules = kube_proxy::rules(&self.services, &self.slices);
        if rules != self.rules {
            match kube_proxy::apply(bridge, &rules) {
                Ok(()) => self.rules = rules,
                Err(e) => errors.push(e),
            }
        }
        for (path, h) in &mut self.hosts {
            let text = hosts::hosts(&self.services, &h.namespace, h.ip, &h.hostname);
            if text != h.written {
                match hosts::write_in_place(path, &text) {
                    Ok(()) => h.written = text,
                    Err(e) => errors.push(e),
                }
            }
        }
        errors
    }

    /// Writes a pod's hosts file at `path` and keeps it current.
    pub fn add_hosts(
        &mut self,
        path: PathBuf,
        namespace: &str,
        ip: Ipv4Addr,
        hostname: &str,
    ) -> Result<(), String> {
        let text = hosts::hosts(&self.services, namespace, ip, hostname);
        hosts::write_in_place(&path, &text)?;
        self.hosts.insert(
            path,
            HostsFile {
                namespace: namespace.to_string(),
                ip,
                hostname: hostname.to_string(),
                written: text,
            },
        );
        Ok(())
    }

    pub fn remove_hosts(&mut self, path: &std::path::Path) {
        self.hosts.remove(path);
    }
}

/// A change to one of the two watched kinds.
enum Change {
    Service(Box<Event<Service>>),
    Slice(Box<Event<EndpointSlice>>),
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Applies one watch event to `map` (`fresh` collects a relist).
fn apply<K: ::kube::Resource + Clone>(
    map: &mut BTreeMap<Key, K>,
    fresh: &mut Option<BTreeMap<Key, K>>,
    event: Event<K>,
) -> bool {
    match event {
        Event::Init => {
            *fresh = Some(BTreeMap::new());
            false
        }
        Event::InitApply(o) => {
            if let Some(f) = fresh {
                f.insert(key(o.meta()), o);
            }
            false
        }
        Event::InitDone => {
            *map = fresh.take().unwrap_or_default();
            true
        }
        Event::Apply(o) => {
            map.insert(key(o.meta()), o);
            false
        }
        Event::Delete(o) => {
            map.remove(&key(o.meta()));
            false
        }
    }
}

/// Watches Services and EndpointSlices in every namespace, keeping
/// `network` and the node's rules current; sends `true` on `synced` once
/// both were listed. Runs until dropped.
pub async fn watch(
    client: ::kube::Client,
    network: &std::sync::Mutex<Network>,
    bridge: &Netns,
    synced: &tokio::sync::watch::Sender<bool>,
    error: impl Fn(String),
) {
    let services = watcher::watcher(Api::<Service>::all(client.clone()), Default::default())
        .map(|e| e.map(|e| Change::Service(Box::new(e))));
    let slices = watcher::watcher(Api::<EndpointSlice>::all(client), Default::default())
        .map(|e| e.map(|e| Change::Slice(Box::new(e))));
    let events = StreamBackoff::new(futures_util::stream::select(services, slices), Steady);
    let mut events = std::pin::pin!(events);
    let (mut fresh_services, mut fresh_slices) = (None, None);
    let (mut services_listed, mut slices_listed) = (false, false);
    while let Some(event) = events.next().await {
        let errors = {
            let mut net = network.lock().expect("network lock");
            let net = &mut *net;
            match event {
                Ok(Change::Service(e)) => {
                    services_listed |= apply(&mut net.services, &mut fresh_services, *e);
                }
                Ok(Change::Slice(e)) => {
                    slices_listed |= apply(&mut net.slices, &mut fresh_slices, *e);
                }
                Err(e) => {
                    error(format!(
                        "watching Services and EndpointSlices (retrying in 250 ms): {e}"
                    ));
                    continue;
                }
            }
            if !(services_listed && slices_listed) {
                continue;
            }
            net.sync(bridge)
        };
        for e in errors {
            error(e);
        }
        synced.send_replace(true);
    }
}
