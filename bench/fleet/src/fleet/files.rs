//! The files the control plane reads: manifests (Pods, Services, the hot
//! and cold HTTPRoutes) and bootstrap tokens, sized to the fleet.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Instant, SystemTime};

use super::NAMESPACE;

pub fn service_account(i: usize, per: usize) -> String {
    format!("sa-{}", i / per)
}

pub fn pod_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256)
}

/// A meshed Pod behind svc-`k` (its `app` label), serving port 8080.
pub fn meshed_pod(out: &mut String, name: &str, k: usize, sa: &str, ip: &str) {
    let _ = write!(
        out,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n  \
         labels: {{app: svc-{k}}}\n  annotations: {{weft.dev/inject: enabled}}\n\
         spec:\n  serviceAccountName: {sa}\n  containers:\n  - name: app\n    image: app:1\n    \
         ports: [{{name: http, containerPort: 8080}}]\nstatus:\n  podIP: {ip}\n---\n"
    );
}

/// The number of Services for `mesh` meshed pods, `per` to a Service.
pub fn service_count(mesh: usize, per: usize) -> usize {
    mesh.div_ceil(per).max(2)
}

/// Manifests: Pods (the first `mesh` meshed and behind Services), the
/// Services, an HTTPRoute splitting svc-0 between svc-0 and svc-1 (the hot
/// route), and, with `cold`, a route on that Service alone (the cold one).
pub fn write_manifests(
    dir: &Path,
    n: usize,
    mesh: usize,
    per: usize,
    cold: Option<usize>,
) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut pods = String::with_capacity(n * 400);
    for i in 0..n {
        let sa = service_account(i, per);
        let ip = pod_ip(i);
        if i < mesh {
            meshed_pod(&mut pods, &format!("p-{i}"), i / per, &sa, &ip);
        } else {
            let _ = write!(
                pods,
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p-{i}\n  namespace: {NAMESPACE}\n  \
                 labels: {{role: client}}\nspec:\n  serviceAccountName: {sa}\n  containers:\n  \
                 - name: app\n    image: app:1\nstatus:\n  podIP: {ip}\n---\n"
            );
        }
    }
    std::fs::write(dir.join("pods.yaml"), pods)?;
    let services = service_count(mesh, per);
    let mut svcs = String::new();
    for k in 0..services {
        let _ = write!(
            svcs,
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{k}\n  namespace: {NAMESPACE}\n\
             spec:\n  clusterIP: 10.96.{}.{}\n  selector: {{app: svc-{k}}}\n  ports:\n  \
             - {{name: http, port: 80, targetPort: http, appProtocol: http}}\n---\n",
            k / 256,
            k % 256
        );
    }
    std::fs::write(dir.join("services.yaml"), svcs)?;
    write_route(dir, 90)?;
    if let Some(k) = cold {
        write_cold_route(dir, k, 0)?;
    }
    Ok(services)
}

/// Rewrites the route atomically (write, then rename); returns when the
/// rename happened.
pub fn write_route(dir: &Path, weight: u32) -> anyhow::Result<(Instant, SystemTime)> {
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: canary\n  \
         namespace: {NAMESPACE}\nspec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: svc-0, port: 80}}\n  \
         rules:\n  - backendRefs:\n    - {{name: svc-0, port: 80, weight: {weight}}}\n    \
         - {{name: svc-1, port: 80, weight: {}}}\n",
        100 - weight
    );
    replace(dir, "routes.yaml", &route)
}

/// Rewrites the cold route: svc-`k` to itself alone, for requests whose
/// `x-change` header says `value` (what changes). No other Service's
/// content depends on it, so only the streams whose view holds svc-`k`
/// should hear of it.
pub fn write_cold_route(
    dir: &Path,
    k: usize,
    value: usize,
) -> anyhow::Result<(Instant, SystemTime)> {
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: cold\n  \
         namespace: {NAMESPACE}\nspec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: svc-{k}, port: 80}}\n  \
         rules:\n  - matches:\n    - headers: [{{name: x-change, value: \"c{value}\"}}]\n    \
         backendRefs:\n    - {{name: svc-{k}, port: 80}}\n"
    );
    replace(dir, "cold-route.yaml", &route)
}

/// Writes `name` in `dir` atomically (write, then rename: the control plane
/// never reads half a file); returns when the rename happened.
pub fn replace(dir: &Path, name: &str, text: &str) -> anyhow::Result<(Instant, SystemTime)> {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text)?;
    let (at, wall) = (Instant::now(), SystemTime::now());
    std::fs::rename(&tmp, dir.join(name))?;
    Ok((at, wall))
}

pub fn write_tokens(path: &Path, accounts: usize) -> anyhow::Result<()> {
    let mut s = String::from("tokens:\n");
    for k in 0..accounts {
        let _ = writeln!(
            s,
            "  - {{token: tok-{k}, namespace: {NAMESPACE}, serviceAccount: sa-{k}}}"
        );
    }
    std::fs::write(path, s)?;
    Ok(())
}
