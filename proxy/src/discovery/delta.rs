//! Folding a snapshot that carries only changes into the complete one it
//! follows. The control plane sends a complete snapshot first on every
//! stream, then only what changed; a change this proxy cannot place (it does
//! not run the base version) ends the stream, and the reconnect brings a
//! complete snapshot again.

use std::collections::HashMap;

use weft_api::v1;

/// A change that cannot be placed on what this stream holds.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error(
        "version {version} carries changes since {base}, and this stream has no complete snapshot"
    )]
    NoBase { version: u64, base: u64 },
    #[error("version {version} carries changes since {base}, but this stream holds {held}")]
    OtherBase { version: u64, base: u64, held: u64 },
}

/// The complete snapshot `next` describes, given the complete one before it.
pub fn merge(
    current: Option<&v1::Snapshot>,
    next: v1::Snapshot,
) -> Result<v1::Snapshot, DeltaError> {
    if next.base_version == 0 {
        return Ok(v1::Snapshot {
            not_found: Vec::new(),
            ..next
        });
    }
    let Some(current) = current else {
        return Err(DeltaError::NoBase {
            version: next.version,
            base: next.base_version,
        });
    };
    if current.version != next.base_version {
        return Err(DeltaError::OtherBase {
            version: next.version,
            base: next.base_version,
            held: current.version,
        });
    }
    let key = |s: &v1::Service| format!("{}/{}", s.namespace, s.name);
    let mut services: HashMap<String, v1::Service> = current
        .services
        .iter()
        .map(|s| (key(s), s.clone()))
        .collect();
    for gone in &next.removed_services {
        services.remove(gone);
    }
    for s in next.services {
        services.insert(key(&s), s);
    }
    let mut workloads: HashMap<String, v1::Workload> = current
        .workloads
        .iter()
        .map(|w| (w.ip.clone(), w.clone()))
        .collect();
    for gone in &next.removed_workloads {
        workloads.remove(gone);
    }
    for w in next.workloads {
        workloads.insert(w.ip.clone(), w);
    }
    let mut services: Vec<v1::Service> = services.into_values().collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut workloads: Vec<v1::Workload> = workloads.into_values().collect();
    workloads.sort_by(|a, b| a.ip.cmp(&b.ip));
    // The names table comes complete or not at all; the config keeps it.
    Ok(v1::Snapshot {
        version: next.version,
        services,
        workloads,
        inbound: next.inbound,
        trust_anchors_der: next.trust_anchors_der,
        opaque_ports: next.opaque_ports,
        names: next.names,
        names_complete: next.names_complete,
        mesh_networks: next.mesh_networks,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, vip: &str) -> v1::Service {
        v1::Service {
            name: name.into(),
            namespace: "default".into(),
            virtual_ip: vip.into(),
            ports: Vec::new(),
        }
    }

    fn workload(ip: &str) -> v1::Workload {
        v1::Workload {
            ip: ip.into(),
            ..Default::default()
        }
    }

    fn full() -> v1::Snapshot {
        v1::Snapshot {
            version: 1,
            services: vec![svc("a", "10.0.0.1"), svc("b", "10.0.0.2")],
            workloads: vec![workload("10.1.0.1"), workload("10.1.0.2")],
            ..Default::default()
        }
    }

    #[test]
    fn changes_replace_add_and_remove_by_key() {
        let next = v1::Snapshot {
            version: 2,
            base_version: 1,
            services: vec![svc("b", "10.0.0.9"), svc("c", "10.0.0.3")],
            removed_services: vec!["default/a".into()],
            workloads: vec![workload("10.1.0.3")],
            removed_workloads: vec!["10.1.0.1".into()],
            ..Default::default()
        };
        let merged = merge(Some(&full()), next).unwrap();
        assert_eq!(merged.version, 2);
        assert_eq!(merged.base_version, 0);
        let vips: Vec<(&str, &str)> = merged
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.virtual_ip.as_str()))
            .collect();
        assert_eq!(vips, [("b", "10.0.0.9"), ("c", "10.0.0.3")]);
        let ips: Vec<&str> = merged.workloads.iter().map(|w| w.ip.as_str()).collect();
        assert_eq!(ips, ["10.1.0.2", "10.1.0.3"]);
    }

    #[test]
    fn changes_to_another_base_are_refused() {
        let next = v1::Snapshot {
            version: 3,
            base_version: 2,
            ..Default::default()
        };
        let err = merge(Some(&full()), next.clone()).unwrap_err();
        assert!(err.to_string().contains("holds 1"), "{err}");
        assert!(merge(None, next).is_err());
        // A complete snapshot needs no base.
        assert_eq!(merge(None, full()).unwrap().services, full().services);
    }

    /// Discover: the names table passes through as it came (the config
    /// keeps it), and a subscription answered within a version is placed.
    #[test]
    fn the_names_table_passes_through_as_it_came() {
        let name = |n: &str| v1::ServiceName {
            name: n.into(),
            namespace: "default".into(),
            ..Default::default()
        };
        let first = v1::Snapshot {
            names: vec![name("a"), name("b")],
            names_complete: true,
            ..full()
        };
        let held = merge(None, first).unwrap();
        let same_version = v1::Snapshot {
            version: 1,
            base_version: 1,
            services: vec![svc("c", "10.0.0.3")],
            ..Default::default()
        };
        let held = merge(Some(&held), same_version).unwrap();
        assert_eq!((held.names.len(), held.services.len()), (0, 3));
        assert!(!held.names_complete);
        let renamed = v1::Snapshot {
            version: 2,
            base_version: 1,
            names: vec![name("a")],
            names_complete: true,
            ..Default::default()
        };
        assert_eq!(merge(Some(&held), renamed).unwrap().names.len(), 1);
    }
}
