//! What a route's status says, parent by parent, from the same findings the
//! data path is compiled from ([`routes::diagnose`]), so that what users are
//! told and what the proxies do never disagree. Kubernetes gets it as
//! `status.parents` ([`crate::kubernetes::status`]); the manifest directory
//! as `/errors` entries ([`route_errors`]).
//!
//! `Accepted` is about the parent: the Service (and port) must exist, the
//! route must be one Weft can apply, and on a Service port that GRPCRoutes
//! attach to, HTTPRoutes lose (`Conflicted`), as [`routes::for_port`] drops
//! them. `ResolvedRefs` is about the backends (and mirrors).

use std::path::PathBuf;

use gateway_api::experimental::httproutes::HttpRouteParentRefs;

use super::manifests::ManifestError;
use super::model::{MeshRoute, Model, RouteKind, ServiceModel};
use super::objects::{Kind, ObjectKey};
use super::routes::{self, Diagnosis, Problem, is_service_ref};

/// One condition: whether it holds, its reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    pub fn yes(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            ok: true,
            reason,
            message: message.into(),
        }
    }

    pub fn no(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            ok: false,
            reason,
            message: message.into(),
        }
    }
}

/// The two conditions of one `status.parents` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentVerdict {
    pub accepted: Verdict,
    pub resolved_refs: Verdict,
}

/// The Service a parentRef names, if the model has it.
fn parent_service<'a>(
    model: &'a Model,
    route_ns: &str,
    p: &HttpRouteParentRefs,
) -> Option<&'a ServiceModel> {
    let ns = p.namespace.as_deref().unwrap_or(route_ns);
    model
        .services
        .iter()
        .find(|s| s.name == p.name && s.namespace == ns)
}

/// Whether `p` binds port `port` of `svc`: by `port`, or by `sectionName` as
/// the port's name; neither binds every port. (The same reading as the one
/// [`routes::for_port`] attaches routes by.)
use super::routes::parent_binds as binds;

/// The ports of `svc` that `p` binds.
fn bound_ports(p: &HttpRouteParentRefs, route_ns: &str, svc: &ServiceModel) -> Vec<u16> {
    svc.ports
        .iter()
        .map(|sp| sp.port)
        .filter(|&port| binds(p, route_ns, svc, port))
        .collect()
}

/// When `route` is an HTTPRoute and GRPCRoutes attach to every port its
/// parentRef `p` binds (so the data path drops it there): which ones.
pub fn conflicted(model: &Model, route: &MeshRoute, p: &HttpRouteParentRefs) -> Option<String> {
    if route.kind != RouteKind::Http {
        return None;
    }
    let ns = route.namespace();
    let svc = parent_service(model, ns, p)?;
    let ports = bound_ports(p, ns, svc);
    let mut winners = Vec::new();
    for &port in &ports {
        let grpc: Vec<String> = model
            .routes
            .iter()
            .filter(|r| r.kind == RouteKind::Grpc)
            // Only a GRPCRoute of the same group (producer, or the same
            // consumer namespace) takes the port from this route.
            .filter(|r| super::routes::scope(r, svc) == super::routes::scope(route, svc))
            .filter(|r| {
                let rns = r.namespace();
                r.route
                    .spec
                    .parent_refs
                    .iter()
                    .flatten()
                    .any(|gp| binds(gp, rns, svc, port))
            })
            .map(|r| format!("{}/{}", r.namespace(), r.name()))
            .collect();
        if grpc.is_empty() {
            return None;
        }
        for g in grpc {
            if !winners.contains(&g) {
                winners.push(g);
            }
        }
    }
    if winners.is_empty() {
        return None;
    }
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    Some(format!(
        "GRPCRoute {} attaches to Service {}/{} port {} too; on a Service port GRPCRoutes win over HTTPRoutes, so this route is not used there",
        winners.join(", GRPCRoute "),
        svc.namespace,
        svc.name,
        ports.join(", "),
    ))
}

/// `Accepted` and `ResolvedRefs` of `route` on its Service parent `p`.
/// `invalid` is a check the route failed outright (the field and why):
/// Weft does not apply such a route at all.
pub fn parent_verdict(
    model: &Model,
    route: &MeshRoute,
    p: &HttpRouteParentRefs,
    diagnosis: &Diagnosis,
    invalid: Option<&(String, String)>,
) -> ParentVerdict {
    let ns = route.namespace();
    let pns = p.namespace.as_deref().unwrap_or(ns);
    let accepted = match parent_service(model, ns, p) {
        None => Verdict::no(
            "NoMatchingParent",
            format!("Service {pns}/{} does not exist", p.name),
        ),
        Some(svc) if bound_ports(p, ns, svc).is_empty() => {
            let which = match (&p.section_name, p.port) {
                (Some(s), Some(port)) => format!("a port {port} named {s}"),
                (Some(s), None) => format!("a port named {s}"),
                (None, Some(port)) => format!("port {port}"),
                (None, None) => "TCP ports".to_string(),
            };
            Verdict::no(
                "NoMatchingParent",
                format!("Service {pns}/{} has no {which}", p.name),
            )
        }
        Some(_) => {
            if let Some((field, message)) = invalid {
                Verdict::no("UnsupportedValue", format!("{field}: {message}"))
            } else if let Some(problem) = &diagnosis.accepted {
                Verdict::no(problem.reason, problem.message.clone())
            } else if let Some(why) = conflicted(model, route, p) {
                Verdict::no("Conflicted", why)
            } else {
                Verdict::yes(
                    "Accepted",
                    "attached to the Service; the mesh routes its traffic",
                )
            }
        }
    };
    ParentVerdict {
        accepted,
        resolved_refs: resolved_refs(&diagnosis.unresolved),
    }
}

/// `ResolvedRefs`: the first problem's reason, every problem's message.
fn resolved_refs(unresolved: &[Problem]) -> Verdict {
    match unresolved.first() {
        None => Verdict::yes("ResolvedRefs", "every backendRef resolves to a Service"),
        Some(first) => Verdict::no(
            first.reason,
            unresolved
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

/// The Service parents of a route (GAMMA); others are not the mesh's.
pub fn service_parents(route: &MeshRoute) -> impl Iterator<Item = &HttpRouteParentRefs> {
    route
        .route
        .spec
        .parent_refs
        .iter()
        .flatten()
        .filter(|p| is_service_ref(p.group.as_deref(), p.kind.as_deref()))
}

/// The route's key, as `/errors` names it.
pub fn key(route: &MeshRoute) -> ObjectKey {
    ObjectKey {
        kind: match route.kind {
            RouteKind::Http => Kind::HttpRoute,
            RouteKind::Grpc => Kind::GrpcRoute,
        },
        namespace: route.namespace().to_string(),
        name: route.name().to_string(),
    }
}

/// A problem's message (`spec.rules[0].backendRefs[1]: Service ... does
/// not exist`) split into the field and the rest.
fn split_field(message: &str) -> (String, String) {
    match message.split_once(": ") {
        Some((field, rest)) if field.starts_with("spec.") && !field.contains(' ') => {
            (field.to_string(), rest.to_string())
        }
        _ => (String::new(), message.to_string()),
    }
}

/// What the manifest directory's `/errors` lists of the model's routes:
/// every condition that is not True, as status would say it on Kubernetes.
/// The routes stay applied (an unresolved backend's share of requests gets
/// 500, gRPC `UNAVAILABLE`); `file` names the manifest a route came from.
pub fn route_errors(
    model: &Model,
    file: impl Fn(&ObjectKey) -> Option<PathBuf>,
) -> Vec<ManifestError> {
    let mut out: Vec<ManifestError> = Vec::new();
    for route in &model.routes {
        let key = key(route);
        let diagnosis = routes::diagnose(model, route);
        let mut push = |condition: &str, v: &Verdict, field: String, message: String| {
            let e = ManifestError {
                file: file(&key),
                object: key.to_string(),
                field,
                message: format!("{message} ({condition}: {})", v.reason),
            };
            if !out.contains(&e) {
                out.push(e);
            }
        };
        for (i, p) in route
            .route
            .spec
            .parent_refs
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, p)| is_service_ref(p.group.as_deref(), p.kind.as_deref()))
        {
            let v = parent_verdict(model, route, p, &diagnosis, None);
            if !v.accepted.ok {
                // Problems in the rules name their field; the parent's own
                // (a missing Service, a conflict) name the parentRef.
                let (field, message) = split_field(&v.accepted.message);
                let field = if field.is_empty() {
                    format!("spec.parentRefs[{i}]")
                } else {
                    field
                };
                push("Accepted", &v.accepted, field, message);
            }
        }
        // One entry per unresolved reference, not one joined message.
        for problem in &diagnosis.unresolved {
            let v = Verdict::no(problem.reason, problem.message.clone());
            let (field, message) = split_field(&problem.message);
            push(
                "ResolvedRefs",
                &v,
                field,
                format!("{message}; its share of requests gets 500"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::discovery::Store;
    use crate::discovery::objects::Object;

    fn objects(yaml: &str) -> (tempfile::TempDir, Store, BTreeMap<ObjectKey, Object>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
        let mut store = Store::new(dir.path());
        store.refresh();
        let (objects, errors) = store.objects();
        assert!(errors.is_empty(), "{errors:?}");
        (dir, store, objects)
    }

    const SERVICES: &str = "\
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  clusterIP: 198.19.0.10
  ports: [{name: grpc, port: 9090}, {name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: other}
spec:
  clusterIP: 198.19.0.11
  ports: [{name: grpc, port: 9090}]
";

    const GRPC: &str = "
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: echo, port: 9090}]
  rules:
  - backendRefs: [{name: echo-v2, namespace: other, port: 9090}]
";

    const GRANT: &str = "
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-shop, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: GRPCRoute, namespace: shop}]
  to: [{group: \"\", kind: Service, name: echo-v2}]
";

    fn verdicts(model: &Model, name: &str) -> Vec<ParentVerdict> {
        let route = model.routes.iter().find(|r| r.name() == name).unwrap();
        let d = routes::diagnose(model, route);
        service_parents(route)
            .map(|p| parent_verdict(model, route, p, &d, None))
            .collect()
    }

    #[test]
    fn a_reference_grant_resolves_a_cross_namespace_backend() {
        let (_d, _s, objs) = objects(&format!("{SERVICES}{GRPC}"));
        let m = Model::build(&objs, &[]);
        let v = &verdicts(&m, "g")[0];
        assert!(v.accepted.ok, "{v:?}");
        assert_eq!(
            (v.resolved_refs.ok, v.resolved_refs.reason),
            (false, "RefNotPermitted")
        );
        assert!(
            v.resolved_refs
                .message
                .contains("no ReferenceGrant in other"),
            "{v:?}"
        );

        let (_d, _s, objs) = objects(&format!("{SERVICES}{GRPC}{GRANT}"));
        let m = Model::build(&objs, &[]);
        let v = &verdicts(&m, "g")[0];
        assert_eq!(
            (
                v.accepted.reason,
                v.resolved_refs.ok,
                v.resolved_refs.reason
            ),
            ("Accepted", true, "ResolvedRefs")
        );
        // A grant for HTTPRoutes does not let a GRPCRoute in.
        let http_grant = GRANT.replace("kind: GRPCRoute", "kind: HTTPRoute");
        let (_d, _s, objs) = objects(&format!("{SERVICES}{GRPC}{http_grant}"));
        let m = Model::build(&objs, &[]);
        assert_eq!(verdicts(&m, "g")[0].resolved_refs.reason, "RefNotPermitted");
    }

    #[test]
    fn a_backend_in_the_parents_namespace_is_the_consumers_own() {
        // A consumer route in `other` on shop/echo, sending to shop/echo
        // (its own parent): no grant needed (GEP-1294).
        let consumer = "
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: c, namespace: other}
spec:
  parentRefs: [{kind: Service, name: echo, namespace: shop, port: 80}]
  rules:
  - backendRefs: [{name: echo, namespace: shop, port: 80}, {name: missing, port: 80}]
";
        let (_d, _s, objs) = objects(&format!("{SERVICES}{consumer}"));
        let m = Model::build(&objs, &[]);
        let v = &verdicts(&m, "c")[0];
        assert!(v.accepted.ok, "{v:?}");
        assert_eq!(
            (v.resolved_refs.ok, v.resolved_refs.reason),
            (false, "BackendNotFound")
        );
        assert_eq!(
            v.resolved_refs.message,
            "spec.rules[0].backendRefs[1]: Service other/missing does not exist"
        );
    }

    #[test]
    fn http_routes_lose_to_grpc_routes_on_a_port() {
        let http = "
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: h, namespace: shop}
spec:
  parentRefs:
  - {kind: Service, name: echo, port: 9090}
  - {kind: Service, name: echo, sectionName: http}
  - {kind: Service, name: echo}
  - {kind: Service, name: echo, port: 81}
  - {kind: Service, name: gone}
  rules:
  - backendRefs: [{name: echo, port: 80}]
";
        let (_d, _s, objs) = objects(&format!("{SERVICES}{GRPC}{GRANT}{http}"));
        let m = Model::build(&objs, &[]);
        let v = verdicts(&m, "h");
        let accepted: Vec<(bool, &str)> = v
            .iter()
            .map(|v| (v.accepted.ok, v.accepted.reason))
            .collect();
        assert_eq!(
            accepted,
            [
                // 9090 is the GRPCRoute's.
                (false, "Conflicted"),
                // 80 is nobody else's.
                (true, "Accepted"),
                // Every port: 80 still takes this route.
                (true, "Accepted"),
                (false, "NoMatchingParent"),
                (false, "NoMatchingParent"),
            ]
        );
        assert!(v[0].accepted.message.contains("GRPCRoute shop/g"), "{v:?}");
        assert!(v[3].accepted.message.contains("no port 81"), "{v:?}");
        assert!(v[4].accepted.message.contains("shop/gone does not exist"));
        // The GRPCRoute itself is fine.
        assert_eq!(verdicts(&m, "g")[0].accepted.reason, "Accepted");
    }

    #[test]
    fn unsupported_filters_are_not_accepted() {
        let http = "
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: h, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: echo, port: 80}]
  rules:
  - filters:
    - {type: RequestRedirect, requestRedirect: {statusCode: 301}}
    - {type: URLRewrite, urlRewrite: {hostname: x}}
    backendRefs: [{name: echo, port: 80}]
";
        let (_d, _s, objs) = objects(&format!("{SERVICES}{http}"));
        let m = Model::build(&objs, &[]);
        let v = &verdicts(&m, "h")[0];
        assert_eq!(
            (v.accepted.ok, v.accepted.reason),
            (false, "IncompatibleFilters")
        );
        assert!(v.resolved_refs.ok);
        // A check the route fails outright comes first.
        let route = m.routes.iter().find(|r| r.name() == "h").unwrap();
        let d = routes::diagnose(&m, route);
        let p = service_parents(route).next().unwrap();
        let bad = ("spec.rules[0].retry.attempts".into(), "too many".into());
        let v = parent_verdict(&m, route, p, &d, Some(&bad));
        assert_eq!(v.accepted.reason, "UnsupportedValue");
        assert_eq!(v.accepted.message, "spec.rules[0].retry.attempts: too many");
    }

    #[test]
    fn route_errors_name_the_file_the_object_and_the_field() {
        let http = "
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: h, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: echo, port: 9090}]
  rules:
  - backendRefs: [{name: missing, port: 80}, {name: echo, port: 9090}]
";
        let (dir, store, objs) = objects(&format!("{SERVICES}{GRPC}{http}"));
        let m = Model::build(&objs, &[]);
        let errors = route_errors(&m, |k| store.file_of(k));
        let got: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.object.as_str(), e.field.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("HTTPRoute shop/h", "spec.parentRefs[0]"),
                ("HTTPRoute shop/h", "spec.rules[0].backendRefs[0]"),
                ("GRPCRoute shop/g", "spec.rules[0].backendRefs[0]"),
            ],
            "{errors:#?}"
        );
        assert!(
            errors
                .iter()
                .all(|e| e.file == Some(dir.path().join("m.yaml")))
        );
        assert_eq!(
            errors[1].message,
            "Service shop/missing does not exist; its share of requests gets 500 (ResolvedRefs: BackendNotFound)"
        );
        assert!(errors[0].message.ends_with("(Accepted: Conflicted)"));
        // The routes are still in the model: nothing is dropped.
        assert_eq!(m.routes.len(), 2);
        // With everything resolvable and no conflict, nothing is listed.
        let (_d, store, objs) = objects(&format!("{SERVICES}{GRPC}{GRANT}"));
        let m = Model::build(&objs, &[]);
        assert!(route_errors(&m, |k| store.file_of(k)).is_empty());
    }
}
