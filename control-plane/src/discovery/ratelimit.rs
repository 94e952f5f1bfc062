//! TrafficPolicy rate limits compiled for one pod: the limit of every
//! Service port that selects the pod, at the container port it resolves to
//! there. The server-side sidecar enforces them, so they travel in the
//! pod's own `Inbound` and never in the shared Service snapshot: a limit
//! change reaches only the pods it limits.
//!
//! A `Route` key needs the routes at the server side, which does not know
//! which route a client followed (a client can call the pod IP): the
//! Service port's producer route rules go with the limit, matches only, and
//! the sidecar matches each request against them again.

use weft_api::v1;

use super::crds::RateLimitKey;
use super::model::{Model, PodModel, ServiceModel, resolve_target};

/// The rate limits on each container port of `pod`, by port then name.
pub fn for_pod(model: &Model, pod: &PodModel) -> Vec<v1::PortRateLimit> {
    let mut out: Vec<v1::PortRateLimit> = Vec::new();
    for svc in model.services_selecting(pod) {
        for sp in &svc.ports {
            let Some(port) = resolve_target(&sp.target, sp.port, pod) else {
                continue;
            };
            let Some(limit) = compile(model, svc, sp.port) else {
                continue;
            };
            let port = u32::from(port);
            // Two Services on one pod port with one policy: one limit.
            if !out
                .iter()
                .any(|p| p.port == port && p.limit.as_ref() == Some(&limit))
            {
                out.push(v1::PortRateLimit {
                    port,
                    limit: Some(limit),
                });
            }
        }
    }
    out.sort_by(|a, b| {
        let name = |p: &v1::PortRateLimit| p.limit.as_ref().map(|l| l.name.clone());
        (a.port, name(a)).cmp(&(b.port, name(b)))
    });
    out
}

/// The limit of the TrafficPolicy that applies to `svc`'s `port`, if it
/// has one.
fn compile(model: &Model, svc: &ServiceModel, port: u16) -> Option<v1::RateLimit> {
    let policy = super::routes::chosen_policy(model, svc, port)?;
    let r = policy.spec.rate_limit.as_ref()?;
    let key = r.key.unwrap_or_default();
    let routes = match key {
        RateLimitKey::Route => super::routes::for_port(model, svc, port)
            .into_iter()
            .filter(|r| r.consumer_namespace.is_empty())
            .map(|r| v1::RouteRule {
                route: r.route,
                rule_index: r.rule_index,
                rule_name: r.rule_name,
                matches: r.matches,
                ..Default::default()
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(v1::RateLimit {
        name: format!(
            "{}/{}",
            policy.metadata.namespace.as_deref().unwrap_or("default"),
            policy.metadata.name.as_deref().unwrap_or_default()
        ),
        rps: r.requests_per_second,
        burst: r.burst.unwrap_or(r.requests_per_second),
        key: match key {
            RateLimitKey::Service => v1::RateLimitKey::Service,
            RateLimitKey::Client => v1::RateLimitKey::Client,
            RateLimitKey::Route => v1::RateLimitKey::Route,
        } as i32,
        routes,
    })
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
kind: TrafficPolicy
metadata: {name: web-all, namespace: shop}
spec:
  targetRef: {kind: Service, name: web}
  rateLimit: {requestsPerSecond: 50, key: Client}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: web-http, namespace: shop}
spec:
  targetRef: {kind: Service, name: web, port: 80}
  rateLimit: {requestsPerSecond: 100, burst: 20, key: Route}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: web, port: 80}]
  rules:
  - name: api
    matches: [{path: {type: PathPrefix, value: /api}}, {path: {type: Exact, value: /v2}}]
    backendRefs: [{name: web, port: 80}]
  - backendRefs: [{name: web, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mine, namespace: other}
spec:
  parentRefs: [{kind: Service, name: web, namespace: shop, port: 80}]
  rules: [{backendRefs: [{name: web, namespace: shop, port: 80}]}]
";

    #[test]
    fn limits_reach_the_selected_pods_at_their_container_ports() {
        let m = model(MESH);
        let got = for_pod(&m, m.pod("shop", "web-0").unwrap());
        let summary: Vec<(u32, &str, u32, u32, i32)> = got
            .iter()
            .map(|p| {
                let l = p.limit.as_ref().unwrap();
                (p.port, l.name.as_str(), l.rps, l.burst, l.key)
            })
            .collect();
        // The port-specific policy wins on 80 (the pod's 8080); the other
        // covers 9000, its burst defaulting to its rate.
        assert_eq!(
            summary,
            [
                (
                    8080,
                    "shop/web-http",
                    100,
                    20,
                    v1::RateLimitKey::Route as i32
                ),
                (
                    9000,
                    "shop/web-all",
                    50,
                    50,
                    v1::RateLimitKey::Client as i32
                ),
            ]
        );
        // The Route key carries the producer rules (one per match, in
        // precedence order), matches only; the consumer route stays out.
        let routes = &got[0].limit.as_ref().unwrap().routes;
        let rules: Vec<(&str, u32, &str, &str)> = routes
            .iter()
            .map(|r| {
                (
                    r.route.as_str(),
                    r.rule_index,
                    r.rule_name.as_str(),
                    r.matches[0].path.as_str(),
                )
            })
            .collect();
        assert_eq!(
            rules,
            [
                ("shop/web", 0, "api", "/v2"),
                ("shop/web", 0, "api", "/api"),
                ("shop/web", 1, "", "/"),
            ]
        );
        assert!(routes.iter().all(|r| r.backends.is_empty()));
        assert!(got[1].limit.as_ref().unwrap().routes.is_empty());
        // A pod no Service with a limit selects gets none.
        assert!(for_pod(&m, m.pod("shop", "db-0").unwrap()).is_empty());
    }

    #[test]
    fn a_rate_limit_change_touches_no_shared_service() {
        use crate::discovery::snapshot::{MeshSettings, shared};
        let settings = MeshSettings {
            trust_domain: "cluster.local".into(),
            mtls_mode: v1::MtlsMode::Permissive,
            default_authz: v1::DefaultAuthz::Allow,
            opaque_ports: vec![],
        };
        let before = model(MESH);
        let after = model(&MESH.replace("requestsPerSecond: 50", "requestsPerSecond: 60"));
        let a = shared(1, &before, &settings, &[], None);
        let b = shared(2, &after, &settings, &[], Some(&a));
        assert_eq!(a.digest, b.digest);
        assert!(b.delta.as_ref().is_some_and(|d| d.services.is_empty()));
        let pod = |m: &Model| for_pod(m, m.pod("shop", "web-0").unwrap());
        assert_ne!(pod(&before), pod(&after));
    }
}
