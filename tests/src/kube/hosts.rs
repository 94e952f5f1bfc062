//! Cluster DNS names without a DNS server: every container gets a hosts
//! file bind-mounted over `/etc/hosts` that maps each Service with a
//! ClusterIP to it as `<svc>.<ns>.svc.cluster.local`, `<svc>.<ns>.svc` and
//! `<svc>.<ns>`, plus `<svc>` for Services of the pod's own namespace. The
//! file is rewritten in place (same inode, so the bind mount sees it) when
//! Services change. `/etc/resolv.conf` names the node as the nameserver
//! with the cluster's search path, as a kubelet's would; nothing answers
//! there, so a name that is not in the hosts file fails at once. Headless
//! Services and pod names are not resolvable.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use k8s_openapi::api::core::v1::Service;

use super::kube_proxy::Key;

/// The hosts file of a pod at `ip` called `hostname` in namespace `ns`.
pub fn hosts(services: &BTreeMap<Key, Service>, ns: &str, ip: Ipv4Addr, hostname: &str) -> String {
    let mut out = format!(
        "# Kubernetes-managed hosts file (the weft e2e kubelet stand-in).\n\
         127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n\
         {ip}\t{hostname}\n"
    );
    for ((svc_ns, name), svc) in services {
        let Some(cluster_ip) = svc
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        out.push_str(&format!(
            "{cluster_ip}\t{name}.{svc_ns}.svc.cluster.local {name}.{svc_ns}.svc {name}.{svc_ns}"
        ));
        if svc_ns == ns {
            out.push_str(&format!(" {name}"));
        }
        out.push('\n');
    }
    out
}

/// The resolv.conf of a pod in namespace `ns` on a node at `node_ip`.
pub fn resolv_conf(ns: &str, node_ip: Ipv4Addr) -> String {
    format!(
        "nameserver {node_ip}\nsearch {ns}.svc.cluster.local svc.cluster.local cluster.local\n\
         options ndots:5\n"
    )
}

/// Writes `text` into `path` keeping its inode (a bind mount of the file
/// goes on showing it); creates the file if it does not exist.
pub fn write_in_place(path: &Path, text: &str) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    let mut perms = f.metadata().map_err(|e| e.to_string())?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    f.set_permissions(perms).map_err(|e| e.to_string())
}
