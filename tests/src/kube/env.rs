//! A container's environment, as a kubelet computes it: the image's `ENV`,
//! the Service links (`KUBERNETES_SERVICE_HOST` and friends), `envFrom`,
//! then `env` (`value` with `$(VAR)` expansion, `valueFrom.fieldRef`,
//! `resourceFieldRef`, `configMapKeyRef`, `secretKeyRef`). Also the downward
//! API's fields and resources, which volumes share.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ::kube::api::Api;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod as ApiPod, Secret, Service};

use super::images::{Image, expand};

/// What the stand-in's Node reports as allocatable, which is what a
/// `resourceFieldRef` to an unset limit reads.
pub const NODE_CPU: &str = "8";
pub const NODE_MEMORY: &str = "16Gi";

/// Everything a container's environment is made from that is not in the
/// pod itself.
pub struct Inputs<'a> {
    pub client: &'a ::kube::Client,
    pub pod: &'a ApiPod,
    pub ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    /// Every Service in the cluster (links use the pod's namespace's and
    /// `default/kubernetes`).
    pub services: &'a [Service],
}

/// The environment of container `c`, in the order a kubelet builds it
/// (later entries win).
pub async fn container_env(
    inp: &Inputs<'_>,
    image: &Image,
    c: &Container,
) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
    );
    for (k, v) in image.env {
        env.insert(k.to_string(), v.to_string());
    }
    let hostname = inp
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| inp.pod.metadata.name.clone())
        .unwrap_or_default();
    env.insert("HOSTNAME".to_string(), hostname);
    env.extend(service_links(inp));
    let ns = namespace(inp.pod);
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            let optional = r.optional.unwrap_or(false);
            let data = config_map(inp.client, ns, &r.name, optional).await?;
            env.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
        }
        if let Some(r) = &from.secret_ref {
            let optional = r.optional.unwrap_or(false);
            let data = secret(inp.client, ns, &r.name, optional).await?;
            env.extend(data.into_iter().map(|(k, v)| {
                let v = String::from_utf8_lossy(&v).into_owned();
                (format!("{prefix}{k}"), v)
            }));
        }
    }
    for var in c.env.iter().flatten() {
        let value = match &var.value_from {
            None => expand(var.value.as_deref().unwrap_or_default(), &env),
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    field(inp.pod, inp.ip, inp.host_ip, &f.field_path)?
                } else if let Some(r) = &from.resource_field_ref {
                    let container = r.container_name.as_deref().unwrap_or(&c.name);
                    let divisor = r.divisor.as_ref().map(|q| q.0.as_str());
                    resource(inp.pod, container, &r.resource, divisor)?
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    match config_map(inp.client, ns, &r.name, optional)
                        .await?
                        .remove(&r.key)
                    {
                        Some(v) => v,
                        None if optional => continue,
                        None => {
                            return Err(format!(
                                "env {}: ConfigMap {ns}/{} has no key {}",
                                var.name, r.name, r.key
                            ));
                        }
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    match secret(inp.client, ns, &r.name, optional)
                        .await?
                        .remove(&r.key)
                    {
                        Some(v) => String::from_utf8_lossy(&v).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(format!(
                                "env {}: Secret {ns}/{} has no key {}",
                                var.name, r.name, r.key
                            ));
                        }
                    }
                } else {
                    return Err(format!("env {}: an empty valueFrom", var.name));
                }
            }
        };
        env.insert(var.name.clone(), value);
    }
    Ok(env)
}

fn namespace(pod: &ApiPod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// The Docker-link style variables for the Services of the pod's namespace
/// (unless `enableServiceLinks: false`) and always for `default/kubernetes`.
fn service_links(inp: &Inputs<'_>) -> BTreeMap<String, String> {
    let ns = namespace(inp.pod);
    let links = inp
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut env = BTreeMap::new();
    for svc in inp.services {
        let svc_ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let master = svc_ns == "default" && name == "kubernetes";
        if !(master || (links && svc_ns == ns)) {
            continue;
        }
        let Some(spec) = &svc.spec else { continue };
        let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| *ip != "None") else {
            continue;
        };
        let n = name.to_uppercase().replace('-', "_");
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        env.insert(format!("{n}_SERVICE_HOST"), ip.to_string());
        env.insert(format!("{n}_SERVICE_PORT"), first.port.to_string());
        let proto = |p: &Option<String>| p.as_deref().unwrap_or("TCP").to_lowercase();
        env.insert(
            format!("{n}_PORT"),
            format!("{}://{ip}:{}", proto(&first.protocol), first.port),
        );
        for p in ports {
            if let Some(pn) = &p.name {
                let pn = pn.to_uppercase().replace('-', "_");
                env.insert(format!("{n}_SERVICE_PORT_{pn}"), p.port.to_string());
            }
            let lower = proto(&p.protocol);
            let upper = lower.to_uppercase();
            let base = format!("{n}_PORT_{}_{upper}", p.port);
            env.insert(base.clone(), format!("{lower}://{ip}:{}", p.port));
            env.insert(format!("{base}_PROTO"), lower);
            env.insert(format!("{base}_PORT"), p.port.to_string());
            env.insert(format!("{base}_ADDR"), ip.to_string());
        }
    }
    env
}

/// A downward-API field (`fieldRef.fieldPath`).
pub fn field(pod: &ApiPod, ip: Ipv4Addr, host_ip: Ipv4Addr, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let quoted = |path: &str, prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    let map_lines = |m: &Option<BTreeMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect::<String>()
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => map_lines(&meta.labels),
        "metadata.annotations" => map_lines(&meta.annotations),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| super::NODE_NAME.to_string()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_string()),
        "status.podIP" | "status.podIPs" => ip.to_string(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        p => {
            if let Some(k) = quoted(p, "metadata.labels['") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&k).cloned())
                    .unwrap_or_default()
            } else if let Some(k) = quoted(p, "metadata.annotations['") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(&k).cloned())
                    .unwrap_or_default()
            } else {
                return Err(format!(
                    "fieldRef {p:?} is not a field the kubelet stand-in knows"
                ));
            }
        }
    })
}

/// A downward-API resource (`resourceFieldRef`) of container `container`:
/// an unset limit reads as the node's allocatable, as on a kubelet.
pub fn resource(
    pod: &ApiPod,
    container: &str,
    resource: &str,
    divisor: Option<&str>,
) -> Result<String, String> {
    let spec = pod.spec.as_ref().ok_or("a pod without a spec")?;
    let c = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == container)
        .ok_or_else(|| format!("resourceFieldRef names no container {container}"))?;
    let res = c.resources.as_ref();
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("resourceFieldRef {resource:?}"))?;
    let map = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("resourceFieldRef {resource:?}")),
    };
    let set = map.and_then(|m| m.get(name)).map(|q| q.0.clone());
    let value = match (set, kind, name) {
        (Some(q), _, _) => q,
        (None, "limits", "cpu") => NODE_CPU.to_string(),
        (None, "limits", "memory") => NODE_MEMORY.to_string(),
        (None, _, _) => "0".to_string(),
    };
    let v = quantity(&value)?;
    let d = quantity(divisor.unwrap_or("1"))?;
    if d <= 0.0 {
        return Err(format!("resourceFieldRef {resource}: divisor {divisor:?}"));
    }
    Ok(format!("{}", (v / d).ceil() as u64))
}

/// A Kubernetes quantity (`500m`, `64Mi`, `2`, `1G`) as a number.
pub fn quantity(q: &str) -> Result<f64, String> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("quantity {q:?}"))?;
    let k = 1024f64;
    let m = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => k,
        "Mi" => k * k,
        "Gi" => k * k * k,
        "Ti" => k * k * k * k,
        "Pi" => k * k * k * k * k,
        "Ei" => k * k * k * k * k * k,
        _ => return Err(format!("quantity {q:?}")),
    };
    Ok(n * m)
}

/// A ConfigMap's data (and binaryData, lossily as text); empty when it is
/// missing and `optional`.
pub async fn config_map(
    client: &::kube::Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, String>, String> {
    let got = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| format!("getting ConfigMap {ns}/{name}: {e}"))?;
    match got {
        Some(cm) => {
            let mut data = cm.data.unwrap_or_default();
            for (k, v) in cm.binary_data.unwrap_or_default() {
                data.insert(k, String::from_utf8_lossy(&v.0).into_owned());
            }
            Ok(data)
        }
        None if optional => Ok(BTreeMap::new()),
        None => Err(format!("ConfigMap {ns}/{name} not found")),
    }
}

/// A Secret's data; empty when it is missing and `optional`.
pub async fn secret(
    client: &::kube::Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let got = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| format!("getting Secret {ns}/{name}: {e}"))?;
    match got {
        Some(s) => {
            let mut data: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in s.string_data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            Ok(data)
        }
        None if optional => Ok(BTreeMap::new()),
        None => Err(format!("Secret {ns}/{name} not found")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(quantity("500m").unwrap(), 0.5);
        assert_eq!(quantity("64Mi").unwrap(), 64.0 * 1024.0 * 1024.0);
        assert_eq!(quantity("2").unwrap(), 2.0);
        assert!(quantity("3x").is_err());
    }
}
