//! AuthorizationPolicies compiled for one pod: the policies on each of its
//! container ports (a Service target reaches the pods the Service selects,
//! at the target port each of them serves), and the pod's default.
//!
//! Conditions the proxies cannot check yet fail closed: an ALLOW rule with
//! them never matches, a DENY rule is kept without them (it matches more).

use std::collections::BTreeMap;

use weft_api::v1;

use super::crds::{AuthorizationPolicy, AuthzAction, AuthzPathKind, AuthzRule};
use super::model::{Model, PodModel, resolve_target};

fn action(a: AuthzAction) -> v1::AuthzAction {
    match a {
        AuthzAction::Allow => v1::AuthzAction::Allow,
        AuthzAction::Deny => v1::AuthzAction::Deny,
        AuthzAction::Audit => v1::AuthzAction::Audit,
    }
}

fn rule(r: &AuthzRule, policy_ns: &str, a: AuthzAction) -> v1::AuthzRule {
    use v1::authz_source::Kind;
    let from = r
        .from
        .iter()
        .filter_map(|s| {
            let kind = if let Some(id) = &s.identity {
                Kind::Identity(id.clone())
            } else if let Some(sa) = &s.service_account {
                Kind::ServiceAccount(format!(
                    "{}/{}",
                    sa.namespace.as_deref().unwrap_or(policy_ns),
                    sa.name
                ))
            } else if let Some(ns) = &s.namespace {
                Kind::Namespace(ns.clone())
            } else if s.authenticated == Some(true) {
                Kind::Authenticated(true)
            } else if s.unauthenticated == Some(true) {
                Kind::Unauthenticated(true)
            } else {
                // `authenticated: false` and the like say nothing.
                return None;
            };
            Some(v1::AuthzSource { kind: Some(kind) })
        })
        .collect();
    let to = r.to.clone().unwrap_or_default();
    // JWT conditions are not checked by the proxies yet.
    let unchecked = r.when.as_ref().is_some_and(|w| w.jwt.is_some());
    v1::AuthzRule {
        from,
        methods: to.methods,
        paths: to
            .paths
            .iter()
            .map(|p| v1::AuthzPath {
                prefix: p.kind == AuthzPathKind::PathPrefix,
                value: p.value.clone(),
            })
            .collect(),
        headers: to
            .headers
            .iter()
            .map(|h| v1::Header {
                name: h.name.to_ascii_lowercase(),
                value: h.value.clone(),
            })
            .collect(),
        never: unchecked && a == AuthzAction::Allow,
    }
}

fn compile(p: &AuthorizationPolicy) -> v1::AuthzPolicy {
    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
    v1::AuthzPolicy {
        name: format!("{ns}/{}", p.metadata.name.as_deref().unwrap_or_default()),
        action: action(p.spec.action) as i32,
        rules: p
            .spec
            .rules
            .iter()
            .map(|r| rule(r, ns, p.spec.action))
            .collect(),
    }
}

/// The pod's default: its Namespace's `weft.dev/default-authz`, else the
/// mesh's.
pub fn default_for(model: &Model, pod: &PodModel, mesh: v1::DefaultAuthz) -> v1::DefaultAuthz {
    model
        .namespaces
        .get(&pod.namespace)
        .and_then(|n| n.default_authz)
        .unwrap_or(mesh)
}

/// The policies on each container port of `pod`, by port.
pub fn for_pod(model: &Model, pod: &PodModel) -> Vec<v1::PortAuthz> {
    let mut ports: BTreeMap<u16, Vec<v1::AuthzPolicy>> = BTreeMap::new();
    for p in &model.authz_policies {
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        let t = &p.spec.target_ref;
        if ns != pod.namespace || t.kind != "Service" {
            continue;
        }
        let Some(svc) = model
            .services
            .iter()
            .find(|s| s.namespace == ns && s.name == t.name)
        else {
            continue;
        };
        if svc.selects(std::slice::from_ref(pod)).next().is_none() {
            continue;
        }
        let compiled = compile(p);
        for sp in svc
            .ports
            .iter()
            .filter(|sp| t.port.is_none_or(|port| port == sp.port))
        {
            if let Some(port) = resolve_target(&sp.target, sp.port, pod) {
                let list = ports.entry(port).or_default();
                if !list.contains(&compiled) {
                    list.push(compiled.clone());
                }
            }
        }
    }
    ports
        .into_iter()
        .map(|(port, policies)| v1::PortAuthz {
            port: u32::from(port),
            policies,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Store;

    fn model(yaml: &str) -> Model {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
        let mut store = Store::new(dir.path());
        store.refresh();
        let (objects, errors) = store.objects();
        assert!(errors.is_empty(), "{errors:?}");
        Model::build(&objects, &[])
    }

    const MESH: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop, annotations: {weft.dev/default-authz: deny}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.5
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: admin, port: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec: {containers: [{name: app, image: x}]}
status: {podIP: 198.18.0.20}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, labels: {app: db}}
spec: {containers: [{name: app, image: x}]}
status: {podIP: 198.18.0.21}
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: writers, namespace: shop}
spec:
  targetRef: {kind: Service, name: web, port: 80}
  rules:
  - from: [{serviceAccount: {name: checkout}}, {namespace: ops}]
    to: {methods: [POST], paths: [{type: PathPrefix, value: /orders}]}
  - from: [{authenticated: true}]
    when: {jwt: {required: true}}
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-ops, namespace: shop}
spec:
  targetRef: {kind: Service, name: web}
  action: DENY
  rules: [{from: [{namespace: ops}], when: {jwt: {required: true}}}]
";

    #[test]
    fn a_service_policy_reaches_the_pods_it_selects_at_their_target_ports() {
        let m = model(MESH);
        let web = m.pod("shop", "web-0").unwrap();
        let got = for_pod(&m, web);
        let ports: Vec<(u32, Vec<&str>)> = got
            .iter()
            .map(|p| (p.port, p.policies.iter().map(|x| x.name.as_str()).collect()))
            .collect();
        // Port 80 is the pod's 8080; the DENY has no port, so both ports
        // (policies in name order).
        assert_eq!(
            ports,
            [
                (8080, vec!["shop/no-ops", "shop/writers"]),
                (9000, vec!["shop/no-ops"])
            ]
        );
        let writers = &got[0].policies[1];
        assert_eq!(writers.rules[0].from.len(), 2);
        assert_eq!(
            writers.rules[0].from[0].kind,
            Some(v1::authz_source::Kind::ServiceAccount(
                "shop/checkout".into()
            ))
        );
        assert!(writers.rules[0].paths[0].prefix);
        // What the proxies cannot check yet fails closed.
        assert!(!writers.rules[0].never && writers.rules[1].never);
        assert!(!got[0].policies[0].rules[0].never, "a DENY keeps matching");
        // Pods the Service does not select get nothing; the Namespace's default.
        assert!(for_pod(&m, m.pod("shop", "db-0").unwrap()).is_empty());
        assert_eq!(
            default_for(&m, web, v1::DefaultAuthz::Allow),
            v1::DefaultAuthz::Deny
        );
    }
}
