//! What the leader tells users through status: for each HTTPRoute attached to
//! a Service (GAMMA), one `status.parents` entry per Service parent with the
//! Gateway API conditions `Accepted` and `ResolvedRefs`; for each
//! TrafficPolicy, an `Accepted` condition.
//!
//! Entries of other controllers are kept as they are; ours are rewritten only
//! when they change, and a condition's `lastTransitionTime` moves only when
//! its status does.

use std::sync::Arc;
use std::time::Duration;

use gateway_api::experimental::httproutes::{
    HttpRoute, HttpRouteStatusParents, HttpRouteStatusParentsParentRef,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::Stores;
use super::source::{is_service_ref, mesh_route};
use crate::discovery::crds::{TrafficPolicy, TrafficPolicyStatus};
use crate::discovery::manifests;
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

/// Our status entries for `route`: one per Service parent.
pub fn route_parents(route: &HttpRoute, stores: &Stores) -> Vec<HttpRouteStatusParents> {
    let ns = route.namespace().unwrap_or_else(|| "default".into());
    let generation = route.metadata.generation;
    let service_exists = |namespace: &str, name: &str| {
        stores
            .services
            .get(&ObjectRef::new(name).within(namespace))
            .is_some()
    };
    let invalid = mesh_route(route).and_then(|r| manifests::validate_route(&r).err());
    // ResolvedRefs: every backend a Service that exists, in the route's namespace.
    let mut resolved = (
        true,
        "ResolvedRefs",
        "every backendRef resolves to a Service".to_string(),
    );
    for (i, rule) in route.spec.rules.iter().flatten().enumerate() {
        for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
            let at = format!("spec.rules[{i}].backendRefs[{j}]");
            if !is_service_ref(
                b.group.as_deref(),
                Some(b.kind.as_deref().unwrap_or("Service")),
            ) {
                resolved = (
                    false,
                    "InvalidKind",
                    format!(
                        "{at}: only core Services are supported backends, not {}",
                        b.kind.as_deref().unwrap_or("?")
                    ),
                );
                break;
            }
            let bns = b.namespace.clone().unwrap_or_else(|| ns.clone());
            if bns != ns {
                resolved = (
                    false,
                    "RefNotPermitted",
                    format!(
                        "{at}: Service {bns}/{} is in another namespace (cross-namespace backends are not supported)",
                        b.name
                    ),
                );
                break;
            }
            if !service_exists(&bns, &b.name) {
                resolved = (
                    false,
                    "BackendNotFound",
                    format!("{at}: Service {bns}/{} does not exist", b.name),
                );
                break;
            }
        }
        if !resolved.0 {
            break;
        }
    }
    let mut out = Vec::new();
    for p in route.spec.parent_refs.iter().flatten() {
        if !is_service_ref(p.group.as_deref(), p.kind.as_deref()) {
            continue;
        }
        let pns = p.namespace.clone().unwrap_or_else(|| ns.clone());
        let accepted = if !service_exists(&pns, &p.name) {
            (
                false,
                "NoMatchingParent",
                format!("Service {pns}/{} does not exist", p.name),
            )
        } else if let Some((field, message)) = &invalid {
            (false, "UnsupportedValue", format!("{field}: {message}"))
        } else {
            (
                true,
                "Accepted",
                "attached to the Service; the mesh routes its traffic".to_string(),
            )
        };
        let parent_ref: HttpRouteStatusParentsParentRef = serde_json::to_value(p)
            .and_then(serde_json::from_value)
            .unwrap_or_default();
        out.push(HttpRouteStatusParents {
            conditions: vec![
                condition("Accepted", accepted.0, accepted.1, accepted.2, generation),
                condition(
                    "ResolvedRefs",
                    resolved.0,
                    resolved.1,
                    resolved.2.clone(),
                    generation,
                ),
            ],
            controller_name: CONTROLLER.into(),
            parent_ref,
        });
    }
    out
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
/// TrafficPolicy current.
pub fn spawn(client: Client, stores: Stores, leader: watch::Receiver<bool>, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(EVERY).await;
            if !*leader.borrow() {
                continue;
            }
            for route in stores.routes.state() {
                if let Err(e) = write_route(&client, &route, &stores, &metrics).await {
                    warn!(route = %route.name_any(), error = %e, "writing HTTPRoute status");
                }
            }
            for policy in stores.policies.state() {
                if let Err(e) = write_policy(&client, &policy, &stores, &metrics).await {
                    warn!(policy = %policy.name_any(), error = %e, "writing TrafficPolicy status");
                }
            }
        }
    });
}

async fn write_route(
    client: &Client,
    route: &HttpRoute,
    stores: &Stores,
    metrics: &Metrics,
) -> Result<(), kube::Error> {
    let mut ours = route_parents(route, stores);
    let current = route
        .status
        .as_ref()
        .map(|s| s.parents.clone())
        .unwrap_or_default();
    let (mine, others): (Vec<_>, Vec<_>) = current
        .into_iter()
        .partition(|p| p.controller_name == CONTROLLER);
    for entry in &mut ours {
        if let Some(old) = mine.iter().find(|o| o.parent_ref == entry.parent_ref) {
            keep_times(&mut entry.conditions, &old.conditions);
        }
    }
    if ours == mine {
        return Ok(());
    }
    let mut parents = others;
    parents.extend(ours);
    let ns = route.namespace().unwrap_or_else(|| "default".into());
    let api: Api<HttpRoute> = Api::namespaced(client.clone(), &ns);
    api.patch_status(
        &route.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "parents": parents } })),
    )
    .await?;
    metrics.status_written("HTTPRoute");
    debug!(route = %route.name_any(), namespace = %ns, "HTTPRoute status written");
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
