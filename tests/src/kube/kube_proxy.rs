//! A kube-proxy stand-in: for every Service with a ClusterIP, iptables nat
//! rules in the bridge's namespace (which plays the node, and is every
//! pod's default gateway) that DNAT `ClusterIP:port` to the Service's ready
//! endpoints from its EndpointSlices (`-m statistic --mode random` across
//! several), and MASQUERADE what was DNATed so that replies come back
//! through the bridge (the hairpin: client and endpoint share the bridge).
//! The whole nat table of that namespace is rewritten with one
//! `iptables-restore` when anything changes; it goes with the namespace.
//! Not done: NodePorts, session affinity, traffic policies, topology,
//! IPv6, headless Services (no ClusterIP: nothing to DNAT).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Stdio;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::netns::Netns;

/// (namespace, name)
pub type Key = (String, String);

/// The `iptables-restore` input for the nat table of the node.
pub fn rules(services: &BTreeMap<Key, Service>, slices: &BTreeMap<Key, EndpointSlice>) -> String {
    let mut out = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:WEFT-SERVICES - [0:0]\n\
         -A PREROUTING -j WEFT-SERVICES\n-A OUTPUT -j WEFT-SERVICES\n\
         -A POSTROUTING -m conntrack --ctstate DNAT -j MASQUERADE\n",
    );
    for ((ns, name), svc) in services {
        let Some(spec) = &svc.spec else { continue };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        for port in spec.ports.iter().flatten() {
            let proto = port.protocol.as_deref().unwrap_or("TCP").to_lowercase();
            let endpoints = endpoints(slices, ns, name, port.name.as_deref(), &proto);
            let n = endpoints.len();
            for (i, ep) in endpoints.iter().enumerate() {
                let mut rule = format!(
                    "-A WEFT-SERVICES -d {ip}/32 -p {proto} -m {proto} --dport {} \
                     -m comment --comment \"{ns}/{name}:{}\"",
                    port.port,
                    port.name.as_deref().unwrap_or(""),
                );
                if i + 1 < n {
                    rule.push_str(&format!(
                        " -m statistic --mode random --probability {:.11}",
                        1.0 / (n - i) as f64
                    ));
                }
                rule.push_str(&format!(" -j DNAT --to-destination {ep}\n"));
                out.push_str(&rule);
            }
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// `ip:port` of the ready endpoints of Service `ns/name`'s port `port_name`.
fn endpoints(
    slices: &BTreeMap<Key, EndpointSlice>,
    ns: &str,
    name: &str,
    port_name: Option<&str>,
    proto: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for ((slice_ns, _), slice) in slices {
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"));
        if slice_ns != ns || owner.map(String::as_str) != Some(name) || slice.address_type != "IPv4"
        {
            continue;
        }
        let Some(port) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name.unwrap_or("")
                && p.protocol
                    .as_deref()
                    .unwrap_or("TCP")
                    .eq_ignore_ascii_case(proto)
        }) else {
            continue;
        };
        let Some(number) = port.port else { continue };
        for e in &slice.endpoints {
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for a in &e.addresses {
                out.push(format!("{a}:{number}"));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Turns the bridge's namespace into a node that forwards (and sends no
/// ICMP redirects, which would tell pods to bypass the DNAT).
pub fn enable_forwarding(bridge: &Netns) -> Result<(), String> {
    for setting in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.default.send_redirects=0",
        "net.ipv4.conf.br0.send_redirects=0",
    ] {
        let out = bridge
            .command("sysctl")
            .args(["-q", "-w", setting])
            .output()
            .map_err(|e| format!("sysctl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "sysctl {setting} in {}: {}",
                bridge.name(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// Replaces the nat table of the bridge's namespace with `rules`.
pub fn apply(bridge: &Netns, rules: &str) -> Result<(), String> {
    let mut child = bridge
        .command("iptables-restore")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("iptables-restore: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("iptables-restore's stdin")?
        .write_all(rules.as_bytes())
        .map_err(|e| format!("writing to iptables-restore: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("iptables-restore: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables-restore in {}: {}\n{rules}",
            bridge.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
