//! A pod's volumes, materialized as directories under the pod's folder, as
//! a kubelet's volume plugins would: `emptyDir`, `configMap`, `secret`,
//! `downwardAPI`, and `projected` (ServiceAccount tokens from the
//! TokenRequest API bound to the pod, ConfigMap and Secret items, downward
//! API items). The automatic ServiceAccount token is one of these: the API
//! server's ServiceAccount admission adds it to the pod as a projected
//! volume (`kube-api-access-…`) unless `automountServiceAccountToken` is
//! false. Files are written once, when the pod starts: ConfigMaps, Secrets
//! and tokens are not refreshed later, unlike on a kubelet. Other volume
//! types (hostPath, PVCs, CSI, …) leave the pod Pending, with an error.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use ::kube::api::{Api, PostParams};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    DownwardAPIVolumeFile, KeyToPath, Pod as ApiPod, ServiceAccount, Volume,
};

use super::env;

/// A materialized volume: where its files are on this machine.
#[derive(Clone, Debug)]
pub struct Materialized {
    pub dir: PathBuf,
}

/// Writes every volume of `pod` under `dir` (one folder per volume), files
/// readable by any user (mode 0644 unless the spec says otherwise) and, with
/// an `fsGroup`, owned by that group.
pub async fn materialize(
    client: &::kube::Client,
    pod: &ApiPod,
    ip: Ipv4Addr,
    host_ip: Ipv4Addr,
    dir: &Path,
) -> Result<BTreeMap<String, Materialized>, String> {
    let spec = pod.spec.as_ref().ok_or("a pod without a spec")?;
    let fs_group = spec.security_context.as_ref().and_then(|s| s.fs_group);
    let mut out = BTreeMap::new();
    for v in spec.volumes.iter().flatten() {
        let vdir = dir.join(&v.name);
        let _ = std::fs::remove_dir_all(&vdir);
        mkdir(&vdir, 0o755)?;
        let files = files(client, pod, ip, host_ip, v).await?;
        match files {
            None => set_mode(&vdir, 0o777)?,
            Some(files) => {
                for (rel, bytes, mode) in files {
                    write(&vdir, &rel, &bytes, mode)?;
                }
            }
        }
        if let Some(g) = fs_group {
            group_own(&vdir, g)?;
        }
        out.insert(v.name.clone(), Materialized { dir: vdir });
    }
    Ok(out)
}

/// Refuses a pod with a volume of a type the stand-in does not make.
pub fn check(pod: &ApiPod) -> Result<(), String> {
    let volumes = pod.spec.iter().flat_map(|s| s.volumes.iter().flatten());
    for v in volumes {
        let projected_ok = v.projected.as_ref().is_none_or(|p| {
            p.sources.iter().flatten().all(|s| {
                s.service_account_token.is_some()
                    || s.config_map.is_some()
                    || s.secret.is_some()
                    || s.downward_api.is_some()
            })
        });
        let known = v.empty_dir.is_some()
            || v.config_map.is_some()
            || v.secret.is_some()
            || v.downward_api.is_some()
            || v.projected.is_some();
        if !known || !projected_ok {
            return Err(format!(
                "volume {}: only emptyDir, configMap, secret, downwardAPI and projected \
                 (serviceAccountToken, configMap, secret, downwardAPI) volumes are supported by \
                 the kubelet stand-in",
                v.name
            ));
        }
    }
    Ok(())
}

/// A file of a volume: relative path, contents, mode.
type File = (String, Vec<u8>, u32);

/// The files of one volume, or `None` for an `emptyDir`.
async fn files(
    client: &::kube::Client,
    pod: &ApiPod,
    ip: Ipv4Addr,
    host_ip: Ipv4Addr,
    v: &Volume,
) -> Result<Option<Vec<File>>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    if v.empty_dir.is_some() {
        return Ok(None);
    }
    let mut out = Vec::new();
    if let Some(cm) = &v.config_map {
        let mode = mode(cm.default_mode);
        let data = env::config_map(client, ns, &cm.name, cm.optional.unwrap_or(false)).await?;
        let data = data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
        out.extend(items(data, cm.items.as_deref(), mode, &cm.name)?);
    } else if let Some(s) = &v.secret {
        let mode = mode(s.default_mode);
        let name = s.secret_name.clone().unwrap_or_default();
        let data = env::secret(client, ns, &name, s.optional.unwrap_or(false)).await?;
        out.extend(items(data, s.items.as_deref(), mode, &name)?);
    } else if let Some(d) = &v.downward_api {
        let mode = mode(d.default_mode);
        for f in d.items.iter().flatten() {
            out.push(downward(pod, ip, host_ip, f, mode)?);
        }
    } else if let Some(p) = &v.projected {
        let mode = mode(p.default_mode);
        for s in p.sources.iter().flatten() {
            if let Some(t) = &s.service_account_token {
                let token = token(
                    client,
                    pod,
                    t.audience.as_deref(),
                    t.expiration_seconds.unwrap_or(3600),
                )
                .await?;
                out.push((t.path.clone(), token.into_bytes(), mode));
            } else if let Some(cm) = &s.config_map {
                let optional = cm.optional.unwrap_or(false);
                let data = env::config_map(client, ns, &cm.name, optional).await?;
                let data = data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
                out.extend(items(data, cm.items.as_deref(), mode, &cm.name)?);
            } else if let Some(sec) = &s.secret {
                let optional = sec.optional.unwrap_or(false);
                let data = env::secret(client, ns, &sec.name, optional).await?;
                out.extend(items(data, sec.items.as_deref(), mode, &sec.name)?);
            } else if let Some(d) = &s.downward_api {
                for f in d.items.iter().flatten() {
                    out.push(downward(pod, ip, host_ip, f, mode)?);
                }
            } else {
                return Err(format!(
                    "volume {}: a projected source the kubelet stand-in does not support",
                    v.name
                ));
            }
        }
    } else {
        return Err(format!(
            "volume {}: only emptyDir, configMap, secret, downwardAPI and projected volumes are \
             supported by the kubelet stand-in",
            v.name
        ));
    }
    Ok(Some(out))
}

fn mode(m: Option<i32>) -> u32 {
    m.map(|m| m as u32).unwrap_or(0o644)
}

/// A ConfigMap's or Secret's keys as files: all of them, or the `items`.
fn items(
    mut data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: u32,
    source: &str,
) -> Result<Vec<File>, String> {
    match items {
        None => Ok(data.into_iter().map(|(k, v)| (k, v, mode)).collect()),
        Some(items) => items
            .iter()
            .map(|i| {
                let bytes = data
                    .remove(&i.key)
                    .ok_or_else(|| format!("{source} has no key {}", i.key))?;
                Ok((
                    i.path.clone(),
                    bytes,
                    i.mode.map(|m| m as u32).unwrap_or(mode),
                ))
            })
            .collect(),
    }
}

fn downward(
    pod: &ApiPod,
    ip: Ipv4Addr,
    host_ip: Ipv4Addr,
    f: &DownwardAPIVolumeFile,
    mode: u32,
) -> Result<File, String> {
    let value = if let Some(r) = &f.field_ref {
        env::field(pod, ip, host_ip, &r.field_path)?
    } else if let Some(r) = &f.resource_field_ref {
        let c = r.container_name.as_deref().ok_or_else(|| {
            format!(
                "downwardAPI {}: resourceFieldRef needs a containerName",
                f.path
            )
        })?;
        env::resource(
            pod,
            c,
            &r.resource,
            r.divisor.as_ref().map(|d| d.0.as_str()),
        )?
    } else {
        return Err(format!(
            "downwardAPI {}: no fieldRef or resourceFieldRef",
            f.path
        ));
    };
    Ok((
        f.path.clone(),
        value.into_bytes(),
        f.mode.map(|m| m as u32).unwrap_or(mode),
    ))
}

/// A token from the TokenRequest API for the pod's ServiceAccount, bound to
/// the pod (so it dies with it), for `audience` (the API server's own when
/// unset).
pub async fn token(
    client: &::kube::Client,
    pod: &ApiPod,
    audience: Option<&str>,
    seconds: i64,
) -> Result<String, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
            expiration_seconds: Some(seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    let made = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("a TokenRequest for ServiceAccount {ns}/{sa}: {e}"))?;
    made.status
        .map(|s| s.token)
        .ok_or_else(|| format!("the TokenRequest for {ns}/{sa} came back without a token"))
}

fn write(dir: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result<(), String> {
    let relp = Path::new(rel);
    if rel.is_empty() || !relp.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!(
            "volume path {rel:?} must be relative, without `..`"
        ));
    }
    let path = dir.join(relp);
    if let Some(parent) = path.parent() {
        mkdir(parent, 0o755)?;
    }
    std::fs::write(&path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
    set_mode(&path, mode)
}

fn mkdir(dir: &Path, mode: u32) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    set_mode(dir, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

/// Gives `gid` the files of a volume, readable by the group (what a
/// kubelet does for `fsGroup`).
fn group_own(dir: &Path, gid: i64) -> Result<(), String> {
    let gid = nix::unistd::Gid::from_raw(gid as u32);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        nix::unistd::chown(&p, None, Some(gid))
            .map_err(|e| format!("chgrp {}: {e}", p.display()))?;
        let meta = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let extra = if meta.is_dir() { 0o070 } else { 0o040 };
        set_mode(&p, (meta.permissions().mode() & 0o7777) | extra)?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).map_err(|e| format!("{}: {e}", p.display()))? {
                stack.push(e.map_err(|e| e.to_string())?.path());
            }
        }
    }
    Ok(())
}
