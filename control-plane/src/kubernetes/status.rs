//! What the leader tells users through status: for each HTTPRoute and
//! GRPCRoute attached to a Service (GAMMA), one `status.parents` entry per
//! Service parent with the Gateway API conditions `Accepted` and
//! `ResolvedRefs`; for each TrafficPolicy, an `Accepted` condition; for each
//! AuthorizationPolicy and RequestAuthentication, `Accepted` and
//! `ResolvedRefs` ([`authz`](crate::discovery::authz)).
//!
//! Route conditions come from the model the proxies are served
//! ([`findings`], over [`routes::diagnose`](crate::discovery::routes::diagnose)),
//! so status and the data path agree: a cross-namespace backend is resolved
//! when a ReferenceGrant allows it (or it is the route's own parent), an
//! HTTPRoute on a Service port GRPCRoutes attach to is `Conflicted`.
//!
//! Entries of other controllers are kept as they are; ours are rewritten only
//! when they change, and a condition's `lastTransitionTime` moves only when
//! its status does.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use gateway_api::experimental::grpcroutes::{GrpcRoute, GrpcRouteStatusParents};
use gateway_api::experimental::httproutes::{
    HttpRoute, HttpRouteStatusParents, HttpRouteStatusParentsParentRef,
};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::Stores;
use super::source::{mesh_grpc_route, mesh_route};
use crate::discovery::crds::{TrafficPolicy, TrafficPolicyStatus};
use crate::discovery::findings::{self, Verdict};
use crate::discovery::model::{MeshRoute, Model, RouteKind};
use crate::discovery::source::State;
use crate::discovery::{authz, grpc, manifests, routes};
use crate::metrics::Metrics;

/// Weft's controller name in route status.
pub const CONTROLLER: &str = "weft.dev/control-plane";
/// How often the leader compares statuses with the cluster.
const EVERY: Duration = Duration::from_secs(1);

fn now() -> Time {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    Time(
        k8s_openapi::jiff::Timestamp::from_second(secs)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: now(),
    }
}

fn verdict_condition(type_: &str, v: Verdict, generation: Option<i64>) -> Condition {
    condition(type_, v.ok, v.reason, v.message, generation)
}

/// Keeps each condition's transition time from `old` when its status is the
/// same, so that an unchanged status compares equal.
fn keep_times(new: &mut [Condition], old: &[Condition]) {
    for c in new {
        if let Some(o) = old
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = o.last_transition_time.clone();
        }
    }
}

/// Our entries for a mesh route (its Service parents only): `invalid` is
/// the check it failed outright, if any.
fn parents(
    route: &MeshRoute,
    invalid: Option<(String, String)>,
    model: &Model,
) -> Vec<HttpRouteStatusParents> {
    let generation = route.route.metadata.generation;
    let diagnosis = routes::diagnose(model, route);
    findings::service_parents(route)
        .map(|p| {
            let v = findings::parent_verdict(model, route, p, &diagnosis, invalid.as_ref());
            let parent_ref: HttpRouteStatusParentsParentRef = serde_json::to_value(p)
                .and_then(serde_json::from_value)
                .unwrap_or_default();
            HttpRouteStatusParents {
                conditions: vec![
                    verdict_condition("Accepted", v.accepted, generation),
                    verdict_condition("ResolvedRefs", v.resolved_refs, generation),
                ],
                controller_name: CONTROLLER.into(),
                parent_ref,
            }
        })
        .collect()
}

/// Our status entries for an HTTPRoute: one per Service parent, judged
/// against `model` (the one the proxies are served).
pub fn route_parents(route: &HttpRoute, model: &Model) -> Vec<HttpRouteStatusParents> {
    let Some(mut mesh) = mesh_route(route) else {
        return Vec::new();
    };
    mesh.status = None;
    let invalid = manifests::validate_route(&mesh).err();
    let mesh = MeshRoute {
        kind: RouteKind::Http,
        route: mesh,
    };
    parents(&mesh, invalid, model)
}

/// Our status entries for a GRPCRoute, as for an HTTPRoute.
pub fn grpc_route_parents(route: &GrpcRoute, model: &Model) -> Vec<GrpcRouteStatusParents> {
    let Some(mut mesh) = mesh_grpc_route(route) else {
        return Vec::new();
    };
    mesh.status = None;
    let http = grpc::to_http(&mesh);
    let invalid = manifests::validate_route(&http).err();
    let mesh = MeshRoute {
        kind: RouteKind::Grpc,
        route: http,
    };
    convert(parents(&mesh, invalid, model))
}

/// Between the two kinds' status types (the same shape).
fn convert<A: Serialize, B: DeserializeOwned>(from: Vec<A>) -> Vec<B> {
    from.into_iter()
        .filter_map(|a| serde_json::to_value(a).ok())
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}

/// The `status.parents` to write, or none when ours are unchanged: other
/// controllers' entries as they are, then ours, each condition keeping its
/// transition time while its status stays.
fn merge(
    current: Vec<HttpRouteStatusParents>,
    mut ours: Vec<HttpRouteStatusParents>,
) -> Option<Vec<HttpRouteStatusParents>> {
    let (mine, others): (Vec<_>, Vec<_>) = current
        .into_iter()
        .partition(|p| p.controller_name == CONTROLLER);
    for entry in &mut ours {
        if let Some(old) = mine.iter().find(|o| o.parent_ref == entry.parent_ref) {
            keep_times(&mut entry.conditions, &old.conditions);
        }
    }
    if ours == mine {
        return None;
    }
    let mut parents = others;
    parents.extend(ours);
    Some(parents)
}

/// The TrafficPolicy's conditions.
pub fn policy_conditions(p: &TrafficPolicy, stores: &Stores) -> Vec<Condition> {
    let generation = p.metadata.generation;
    let ns = p.namespace().unwrap_or_else(|| "default".into());
    let (ok, reason, message) = match manifests::validate_policy(p) {
        Err((field, message)) => (false, "Invalid", format!("{field}: {message}")),
        Ok(()) => {
            let t = &p.spec.target_ref;
            if stores
                .services
                .get(&ObjectRef::new(&t.name).within(&ns))
                .is_none()
            {
                (
                    false,
                    "TargetNotFound",
                    format!("Service {ns}/{} does not exist", t.name),
                )
            } else {
                (
                    true,
                    "Accepted",
                    format!("applies to Service {ns}/{}", t.name),
                )
            }
        }
    };
    vec![condition("Accepted", ok, reason, message, generation)]
}

/// While this replica leads, keeps the statuses of every mesh route and
/// TrafficPolicy current. Routes are judged against the latest published
/// model (`state`), the one the proxies are served.
pub fn spawn(
    client: Client,
    stores: Stores,
    state: watch::Receiver<Arc<State>>,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(EVERY).await;
            if !*leader.borrow() {
                continue;
            }
            let published = state.borrow().clone();
            let model = &published.model;
            for route in stores.routes.state() {
                let ours = route_parents(&route, model);
                let current = route
                    .status
                    .as_ref()
                    .map(|s| s.parents.clone())
                    .unwrap_or_default();
                if let Err(e) =
                    write_parents(&client, &*route, "HTTPRoute", current, ours, &metrics).await
                {
                    warn!(route = %route.name_any(), error = %e, "writing HTTPRoute status");
                }
            }
            for route in stores.grpc_routes.state() {
                let ours = convert(grpc_route_parents(&route, model));
                let current = convert(
                    route
                        .status
                        .as_ref()
                        .map(|s| s.parents.clone())
                        .unwrap_or_default(),
                );
                if let Err(e) =
                    write_parents(&client, &*route, "GRPCRoute", current, ours, &metrics).await
                {
                    warn!(route = %route.name_any(), error = %e, "writing GRPCRoute status");
                }
            }
            for policy in stores.policies.state() {
                if let Err(e) = write_policy(&client, &policy, &stores, &metrics).await {
                    warn!(policy = %policy.name_any(), error = %e, "writing TrafficPolicy status");
                }
            }
            for p in stores.authz.state() {
                let v = authz::authz_verdict(model, &p);
                let old = p.status.as_ref().map(|s| s.conditions.clone());
                if let Err(e) =
                    write_conditions(&client, &*p, "AuthorizationPolicy", old, v, &metrics).await
                {
                    warn!(policy = %p.name_any(), error = %e, "writing AuthorizationPolicy status");
                }
            }
            for a in stores.authns.state() {
                let v = authz::authn_verdict(model, &a);
                let old = a.status.as_ref().map(|s| s.conditions.clone());
                if let Err(e) =
                    write_conditions(&client, &*a, "RequestAuthentication", old, v, &metrics).await
                {
                    warn!(policy = %a.name_any(), error = %e, "writing RequestAuthentication status");
                }
            }
        }
    });
}

/// Writes a route's `status.parents` when ours changed.
async fn write_parents<K>(
    client: &Client,
    route: &K,
    kind: &'static str,
    current: Vec<HttpRouteStatusParents>,
    ours: Vec<HttpRouteStatusParents>,
    metrics: &Metrics,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let Some(parents) = merge(current, ours) else {
        return Ok(());
    };
    let ns = route.namespace().unwrap_or_else(|| "default".into());
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    api.patch_status(
        &route.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "parents": parents } })),
    )
    .await?;
    metrics.status_written(kind);
    debug!(route = %route.name_any(), namespace = %ns, %kind, "route status written");
    Ok(())
}

/// Writes a policy's `Accepted` and `ResolvedRefs` when they changed.
async fn write_conditions<K>(
    client: &Client,
    obj: &K,
    kind: &'static str,
    old: Option<Vec<Condition>>,
    v: authz::PolicyVerdict,
    metrics: &Metrics,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let generation = obj.meta().generation;
    let mut conditions = vec![
        verdict_condition("Accepted", v.accepted, generation),
        verdict_condition("ResolvedRefs", v.resolved_refs, generation),
    ];
    let old = old.unwrap_or_default();
    keep_times(&mut conditions, &old);
    if conditions == old {
        return Ok(());
    }
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    api.patch_status(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": TrafficPolicyStatus { conditions } })),
    )
    .await?;
    metrics.status_written(kind);
    Ok(())
}

async fn write_policy(
    client: &Client,
    policy: &TrafficPolicy,
    stores: &Stores,
    metrics: &Metrics,
) -> Result<(), kube::Error> {
    let mut conditions = policy_conditions(policy, stores);
    let old = policy
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    keep_times(&mut conditions, &old);
    if conditions == old {
        return Ok(());
    }
    let ns = policy.namespace().unwrap_or_else(|| "default".into());
    let api: Api<TrafficPolicy> = Api::namespaced(client.clone(), &ns);
    api.patch_status(
        &policy.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": TrafficPolicyStatus { conditions } })),
    )
    .await?;
    metrics.status_written("TrafficPolicy");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Store;

    /// The model of `yaml` (what the proxies would be served).
    fn model(yaml: &str) -> Model {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
        let mut store = Store::new(dir.path());
        store.refresh();
        let (objects, errors) = store.objects();
        assert!(errors.is_empty(), "{errors:?}");
        Model::build(&objects, &[])
    }

    const CLUSTER: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80}, {name: grpc, port: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: other}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80}, {name: grpc, port: 9090}]
";

    const GRANT: &str = "
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: shop-routes, namespace: other}
spec:
  from:
  - {group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}
  - {group: gateway.networking.k8s.io, kind: GRPCRoute, namespace: shop}
  to: [{group: \"\", kind: Service}]
";

    const GRPC: &str = "
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: shop, generation: 4}
spec:
  parentRefs: [{group: \"\", kind: Service, name: web, port: 9090}]
  rules:
  - matches: [{method: {service: weft.test.Echo}}]
    backendRefs: [{name: web-v2, namespace: other, port: 9090}]
";

    fn http(yaml: &str) -> HttpRoute {
        serde_norway::from_str(yaml).unwrap()
    }

    fn grpc_route(yaml: &str) -> GrpcRoute {
        serde_norway::from_str(yaml.trim_start_matches("\n---\n")).unwrap()
    }

    /// `(type, status, reason)` of each condition of each entry.
    fn summary(entries: &[HttpRouteStatusParents]) -> Vec<Vec<(&str, &str, &str)>> {
        entries
            .iter()
            .map(|e| {
                e.conditions
                    .iter()
                    .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
                    .collect()
            })
            .collect()
    }

    const CROSS: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop, generation: 7}
spec:
  parentRefs:
  - {group: \"\", kind: Service, name: web, port: 80}
  - {group: \"\", kind: Service, name: gone}
  - {kind: Gateway, name: gw}
  rules:
  - backendRefs: [{name: web-v2, namespace: other, port: 80}]
";

    #[test]
    fn a_cross_namespace_backend_resolves_with_a_reference_grant() {
        let route = http(CROSS);
        let without = route_parents(&route, &model(CLUSTER));
        // One entry per Service parent; the Gateway's is not ours.
        assert_eq!(
            summary(&without),
            [
                [
                    ("Accepted", "True", "Accepted"),
                    ("ResolvedRefs", "False", "RefNotPermitted")
                ],
                [
                    ("Accepted", "False", "NoMatchingParent"),
                    ("ResolvedRefs", "False", "RefNotPermitted")
                ],
            ]
        );
        assert_eq!(
            without[0].conditions[1].message,
            "spec.rules[0].backendRefs[0]: Service other/web-v2 is in another namespace and no ReferenceGrant in other allows HTTPRoutes from shop"
        );
        assert_eq!(
            without[1].conditions[0].message,
            "Service shop/gone does not exist"
        );
        assert_eq!(without[0].parent_ref.name, "web");
        assert_eq!(without[0].parent_ref.port, Some(80));
        assert_eq!(without[0].controller_name, CONTROLLER);
        assert!(
            without[0]
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(7))
        );

        let with = route_parents(&route, &model(&format!("{CLUSTER}{GRANT}")));
        assert_eq!(
            summary(&with)[0],
            [
                ("Accepted", "True", "Accepted"),
                ("ResolvedRefs", "True", "ResolvedRefs")
            ]
        );
    }

    #[test]
    fn a_consumer_route_to_its_own_parent_needs_no_grant() {
        let route = http(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: c, namespace: other}
spec:
  parentRefs: [{kind: Service, name: web, namespace: shop, port: 80}]
  rules:
  - backendRefs: [{name: web, namespace: shop, port: 80}, {name: nope, port: 80}, {group: apps, kind: Deployment, name: web}]
",
        );
        let entries = route_parents(&route, &model(CLUSTER));
        assert_eq!(
            summary(&entries),
            [[
                ("Accepted", "True", "Accepted"),
                ("ResolvedRefs", "False", "BackendNotFound")
            ]]
        );
        // The first problem's reason, every problem's message.
        assert_eq!(
            entries[0].conditions[1].message,
            "spec.rules[0].backendRefs[1]: Service other/nope does not exist; spec.rules[0].backendRefs[2]: only core Services can be backends, not Deployment"
        );
    }

    #[test]
    fn grpc_routes_get_status_and_http_routes_on_their_port_are_conflicted() {
        let m = model(&format!("{CLUSTER}{GRANT}{GRPC}"));
        let g = grpc_route_parents(&grpc_route(GRPC), &m);
        assert_eq!(g.len(), 1);
        assert_eq!(
            (g[0].parent_ref.name.as_str(), g[0].parent_ref.port),
            ("web", Some(9090))
        );
        assert_eq!(g[0].parent_ref.group.as_deref(), Some(""));
        let conditions: Vec<(&str, &str, &str)> = g[0]
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            conditions,
            [
                ("Accepted", "True", "Accepted"),
                ("ResolvedRefs", "True", "ResolvedRefs")
            ]
        );
        assert!(
            g[0].conditions
                .iter()
                .all(|c| c.observed_generation == Some(4))
        );

        // An HTTPRoute on the same port loses; on another port it does not.
        let h = http(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: h, namespace: shop}
spec:
  parentRefs:
  - {kind: Service, name: web, port: 9090}
  - {kind: Service, name: web, port: 80}
  rules:
  - backendRefs: [{name: web, port: 80}]
",
        );
        let entries = route_parents(&h, &m);
        assert_eq!(
            summary(&entries),
            [
                [
                    ("Accepted", "False", "Conflicted"),
                    ("ResolvedRefs", "True", "ResolvedRefs")
                ],
                [
                    ("Accepted", "True", "Accepted"),
                    ("ResolvedRefs", "True", "ResolvedRefs")
                ],
            ]
        );
        assert!(
            entries[0].conditions[0]
                .message
                .contains("GRPCRoute shop/g attaches to Service shop/web port 9090"),
            "{:?}",
            entries[0].conditions[0]
        );

        // Without its grant the GRPCRoute's backend is not permitted (its
        // share answers UNAVAILABLE), but it still wins the port.
        let m = model(&format!("{CLUSTER}{GRPC}"));
        let g = grpc_route_parents(&grpc_route(GRPC), &m);
        assert_eq!(g[0].conditions[1].reason, "RefNotPermitted");
        assert!(g[0].conditions[1].message.contains("GRPCRoutes from shop"));
        assert_eq!(route_parents(&h, &m)[0].conditions[0].reason, "Conflicted");
    }

    #[test]
    fn routes_weft_cannot_apply_are_not_accepted() {
        let m = model(CLUSTER);
        // A failed check names the field.
        let bad = http(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: web, port: 80}]
  rules:
  - retry: {attempts: 11}
    backendRefs: [{name: web, port: 80}]
",
        );
        let entries = route_parents(&bad, &m);
        assert_eq!(entries[0].conditions[0].reason, "UnsupportedValue");
        assert!(
            entries[0].conditions[0]
                .message
                .starts_with("spec.rules[0].retry.attempts: ")
        );
        // So do the compiler's findings (here, filters that exclude each other).
        let both = http(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: web, port: 80}]
  rules:
  - filters:
    - {type: RequestRedirect, requestRedirect: {statusCode: 301}}
    - {type: URLRewrite, urlRewrite: {hostname: x}}
    backendRefs: [{name: web, port: 80}]
",
        );
        assert_eq!(
            summary(&route_parents(&both, &m)),
            [[
                ("Accepted", "False", "IncompatibleFilters"),
                ("ResolvedRefs", "True", "ResolvedRefs")
            ]]
        );
        // A route of Gateways only gets nothing from us.
        let gateway = http(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{name: gw}]
",
        );
        assert!(route_parents(&gateway, &m).is_empty());
    }

    #[test]
    fn merging_keeps_other_controllers_and_transition_times() {
        let m = model(CLUSTER);
        let route = http(CROSS);
        let ours = route_parents(&route, &m);
        let other = HttpRouteStatusParents {
            conditions: vec![condition("Accepted", true, "Accepted", String::new(), None)],
            controller_name: "example.com/gateway".into(),
            parent_ref: HttpRouteStatusParentsParentRef {
                name: "gw".into(),
                ..Default::default()
            },
        };
        let mut old = ours.clone();
        let then = Time(k8s_openapi::jiff::Timestamp::from_second(1_000_000).unwrap());
        for e in &mut old {
            for c in &mut e.conditions {
                c.last_transition_time = then.clone();
            }
        }
        let mut current = vec![other.clone()];
        current.extend(old.clone());
        // Nothing changed: nothing to write, old times and all.
        assert_eq!(merge(current.clone(), ours.clone()), None);

        // The grant arrives: ResolvedRefs flips (a new time), Accepted keeps
        // its time, the other controller's entry stays first.
        let resolved = route_parents(&route, &model(&format!("{CLUSTER}{GRANT}")));
        let merged = merge(current, resolved).expect("a change");
        assert_eq!(merged[0], other);
        assert_eq!(merged.len(), 3);
        let web = &merged[1];
        assert_eq!(web.conditions[0].last_transition_time, then);
        assert_eq!(web.conditions[1].status, "True");
        assert_ne!(web.conditions[1].last_transition_time, then);
    }
}
