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
                // Asked again: answered again, found or not.
                self.reported.remove(k);
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
                    self.reported.remove(ip);
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
    /// own settings as field 4); None when nothing it sees changed, unless
    /// `answer` (a request subscribed: it gets a message either way).
    pub fn emit(
        &mut self,
        shared: &Shared,
        declared: &[Arc<str>],
        inbound: &Encoded,
        answer: bool,
    ) -> Option<Message> {
        let mut body: Vec<Bytes> = Vec::new();
        let mut tail: Vec<u8> = Vec::new();
        let mut changed = self.last_version == 0 || answer;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Store;
    use crate::discovery::model::Model;
    use crate::discovery::snapshot::{self, MeshSettings};
    use prost::Message as _;
    use weft_api::v1;

    const SERVICES: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
        spec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}\n---\n\
        apiVersion: v1\nkind: Service\nmetadata: {name: web-v2, namespace: shop}\n\
        spec: {clusterIP: 10.96.0.2, selector: {app: web-v2}, ports: [{name: http, port: 80, targetPort: 8080}]}\n---\n\
        apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\n\
        spec: {clusterIP: 10.96.0.3, selector: {app: db}, ports: [{name: tcp, port: 5432}]}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: shop, labels: {app: web}, annotations: {weft.dev/inject: enabled}}\n\
        spec: {serviceAccountName: web, containers: [{name: app, image: x}]}\nstatus: {podIP: 10.1.0.5}\n";

    const SPLIT: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
        metadata: {name: split, namespace: shop}\n\
        spec:\n  parentRefs: [{group: \"\", kind: Service, name: web, port: 80}]\n  \
        rules: [{backendRefs: [{name: web, port: 80}, {name: web-v2, port: 80}]}]\n";

    fn shared(
        version: u64,
        yaml: &str,
        prev: Option<&snapshot::Shared>,
    ) -> (Model, Arc<snapshot::Shared>) {
        let settings = MeshSettings {
            trust_domain: "cluster.local".into(),
            mtls_mode: v1::MtlsMode::Permissive,
            default_authz: v1::DefaultAuthz::Allow,
            opaque_ports: vec![],
        };
        let mut store = Store::new(std::path::Path::new("/view"));
        store.load_text(std::path::Path::new("/view/all.yaml"), yaml);
        let (objects, errors) = store.objects();
        assert!(errors.is_empty(), "{errors:?}");
        let model = Model::build(&objects, &[]);
        let shared = snapshot::shared(version, &model, &settings, &[], prev);
        (model, shared)
    }

    fn decode(msg: &Message) -> v1::Snapshot {
        v1::Snapshot::decode(msg.concat().as_slice()).expect("a Snapshot")
    }

    fn names(s: &v1::Snapshot) -> Vec<&str> {
        let mut n: Vec<&str> = s.services.iter().map(|s| s.name.as_str()).collect();
        n.sort();
        n
    }

    fn inbound() -> Encoded {
        Encoded::of(4, &v1::Inbound::default())
    }

    #[test]
    fn a_view_holds_what_was_asked_for_and_what_its_routes_send_to() {
        let (_, v1s) = shared(1, SERVICES, None);
        let mut view = View::default();
        // First message: the names table, nothing else asked for.
        let first = decode(
            &view
                .emit(&v1s, &[], &inbound(), false)
                .expect("a first message"),
        );
        assert_eq!(
            (first.base_version, first.names.len(), first.names_complete),
            (0, 3, true)
        );
        assert!(first.services.is_empty());
        assert_eq!(first.mesh_networks, ["10.1.0.0/16"]);
        assert!(
            view.emit(&v1s, &[], &inbound(), false).is_none(),
            "nothing changed"
        );

        // Subscribing is answered within the same version, on top of it.
        assert!(
            view.subscribe(&["shop/web".into(), "shop/gone".into()])
                .is_empty()
        );
        let m = decode(&view.emit(&v1s, &[], &inbound(), false).expect("an answer"));
        assert_eq!((m.version, m.base_version), (1, 1));
        assert_eq!(names(&m), ["web"]);
        assert_eq!(m.not_found, ["shop/gone"]);
        assert!(
            m.names.is_empty() && !m.names_complete,
            "the table did not change"
        );

        // A route from web to web-v2 brings web-v2; db, never asked for, stays out.
        let (_, v2s) = shared(2, &format!("{SERVICES}---\n{SPLIT}"), Some(&v1s));
        let m = decode(
            &view
                .emit(&v2s, &[], &inbound(), false)
                .expect("the route change"),
        );
        assert_eq!((m.version, m.base_version), (2, 1));
        assert_eq!(names(&m), ["web", "web-v2"]);
        assert!(m.not_found.is_empty(), "not found is said once");

        // A declared dependency is in the view whatever was asked.
        let db: Arc<str> = Arc::from("shop/db");
        let m = decode(
            &view
                .emit(&v2s, std::slice::from_ref(&db), &inbound(), false)
                .expect("db"),
        );
        assert_eq!(names(&m), ["db"]);

        // Unsubscribing web drops it and what it brought.
        view.unsubscribe(&["shop/web".into()]);
        let m = decode(
            &view
                .emit(&v2s, std::slice::from_ref(&db), &inbound(), false)
                .expect("removals"),
        );
        assert!(m.services.is_empty());
        assert_eq!(m.removed_services, ["shop/web", "shop/web-v2"]);
        assert_eq!(view.services(), 1);
    }

    #[test]
    fn addresses_bring_their_workload_and_keys_are_checked() {
        let (_, s) = shared(1, SERVICES, None);
        let mut view = View::default();
        view.emit(&s, &[], &inbound(), false);
        assert_eq!(
            view.subscribe_addresses(&["10.1.0.5".into(), "10.1.0.6".into(), "nope".into()]),
            [Refused::BadKey("nope".into())]
        );
        assert_eq!(
            view.subscribe(&["no-slash".into()]),
            [Refused::BadKey("no-slash".into())]
        );
        let m = decode(&view.emit(&s, &[], &inbound(), false).expect("workloads"));
        assert_eq!(m.workloads.len(), 1);
        assert_eq!(
            m.workloads[0].identity,
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        assert_eq!(m.not_found, ["10.1.0.6"]);
        view.unsubscribe_addresses(&["10.1.0.5".into()]);
        let m = decode(&view.emit(&s, &[], &inbound(), false).expect("removal"));
        assert_eq!(m.removed_workloads, ["10.1.0.5"]);
    }
}
