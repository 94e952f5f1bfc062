//! HTTPRoutes compiled for the proxies: every (route, rule, match) attached
//! to a Service port becomes one `RouteRule`, sorted by Gateway API
//! precedence, so a proxy just takes the first that matches.

use std::cmp::Ordering;

use gateway_api::experimental::httproutes::{HttpRoute, HttpRouteRules, HttpRouteRulesMatches};
use weft_api::v1;

use super::model::{Model, ServiceModel};

/// The serde name of a generated enum value (`PathPrefix`, `GET`, `301`).
fn enum_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn attaches(route: &HttpRoute, svc: &ServiceModel, port: u16) -> bool {
    let route_ns = route.metadata.namespace.as_deref().unwrap_or("default");
    route.spec.parent_refs.iter().flatten().any(|p| {
        p.kind.as_deref() == Some("Service")
            && p.name == svc.name
            && p.namespace.as_deref().unwrap_or(route_ns) == svc.namespace
            && p.port.is_none_or(|pp| pp == i32::from(port))
    })
}

fn compile_match(m: &HttpRouteRulesMatches) -> v1::RouteMatch {
    let (kind, path) = match &m.path {
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            let kind = match p.r#type.as_ref().map(enum_name).as_deref() {
                Some("Exact") => v1::route_match::PathKind::Exact,
                Some("RegularExpression") => v1::route_match::PathKind::Regex,
                _ => v1::route_match::PathKind::Prefix,
            };
            (kind, value)
        }
        None => (v1::route_match::PathKind::Prefix, "/".into()),
    };
    v1::RouteMatch {
        path_kind: kind as i32,
        path,
        headers: m
            .headers
            .iter()
            .flatten()
            .map(|h| v1::ValueMatch {
                name: h.name.to_ascii_lowercase(),
                value: h.value.clone(),
                regex: h.r#type.as_ref().map(enum_name).as_deref() == Some("RegularExpression"),
            })
            .collect(),
        query_params: m
            .query_params
            .iter()
            .flatten()
            .map(|q| v1::ValueMatch {
                name: q.name.clone(),
                value: q.value.clone(),
                regex: q.r#type.as_ref().map(enum_name).as_deref() == Some("RegularExpression"),
            })
            .collect(),
        method: m.method.as_ref().map(enum_name).unwrap_or_default(),
    }
}

/// Filters and backends of one rule (shared by each of its matches).
fn compile_rule(
    model: &Model,
    route: &HttpRoute,
    rule: &HttpRouteRules,
    port: u16,
) -> v1::RouteRule {
    let route_ns = route
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let backends = rule
        .backend_refs
        .iter()
        .flatten()
        .filter(|b| b.kind.as_deref().unwrap_or("Service") == "Service")
        .filter_map(|b| {
            let ns = b.namespace.clone().unwrap_or_else(|| route_ns.clone());
            let svc = model
                .services
                .iter()
                .find(|s| s.name == b.name && s.namespace == ns)?;
            let bport = b.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(port);
            Some(v1::Backend {
                address: std::net::SocketAddr::new(svc.vip?, bport).to_string(),
                name: format!("{}.{}:{bport}", svc.name, svc.namespace),
                weight: u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0),
            })
        })
        .collect();
    let ms = |v: &Option<String>| {
        v.as_deref()
            .and_then(|s| super::crds::duration_ms(s).ok())
            .unwrap_or(0)
    };
    let mut out = v1::RouteRule {
        route: format!(
            "{route_ns}/{}",
            route.metadata.name.clone().unwrap_or_default()
        ),
        backends,
        timeouts: rule.timeouts.as_ref().map(|t| v1::Timeouts {
            request_ms: ms(&t.request),
            backend_request_ms: ms(&t.backend_request),
        }),
        retry: rule.retry.as_ref().map(|r| v1::RetryPolicy {
            attempts: r.attempts.and_then(|a| u32::try_from(a).ok()).unwrap_or(0),
            backoff_ms: ms(&r.backoff),
            codes: r
                .codes
                .iter()
                .flatten()
                .filter_map(|c| u32::try_from(*c).ok())
                .collect(),
        }),
        ..Default::default()
    };
    for f in rule.filters.iter().flatten() {
        if let Some(h) = &f.request_header_modifier {
            out.request_header_modifiers.push(v1::HeaderModifier {
                set: h
                    .set
                    .iter()
                    .flatten()
                    .map(|h| v1::Header {
                        name: h.name.clone(),
                        value: h.value.clone(),
                    })
                    .collect(),
                add: h
                    .add
                    .iter()
                    .flatten()
                    .map(|h| v1::Header {
                        name: h.name.clone(),
                        value: h.value.clone(),
                    })
                    .collect(),
                remove: h.remove.clone().unwrap_or_default(),
            });
        }
        if let Some(r) = &f.request_redirect {
            out.redirect = Some(v1::Redirect {
                enabled: true,
                scheme: r.scheme.as_ref().map(enum_name).unwrap_or_default(),
                hostname: r.hostname.clone().unwrap_or_default(),
                port: r.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                path_full: r
                    .path
                    .as_ref()
                    .and_then(|p| p.replace_full_path.clone())
                    .unwrap_or_default(),
                path_prefix: r
                    .path
                    .as_ref()
                    .and_then(|p| p.replace_prefix_match.clone())
                    .unwrap_or_default(),
                status_code: r
                    .status_code
                    .and_then(|c| u32::try_from(c).ok())
                    .unwrap_or(302),
            });
        }
        if let Some(r) = &f.url_rewrite {
            out.rewrite = Some(v1::Rewrite {
                enabled: true,
                hostname: r.hostname.clone().unwrap_or_default(),
                path_full: r
                    .path
                    .as_ref()
                    .and_then(|p| p.replace_full_path.clone())
                    .unwrap_or_default(),
                path_prefix: r
                    .path
                    .as_ref()
                    .and_then(|p| p.replace_prefix_match.clone())
                    .unwrap_or_default(),
            });
        }
    }
    out
}

/// Gateway API precedence between two matches: exact path, then longer
/// prefix, then a method, then more header matches, then more query matches.
fn precedence(a: &v1::RouteMatch, b: &v1::RouteMatch) -> Ordering {
    use v1::route_match::PathKind;
    let rank =
        |m: &v1::RouteMatch| match PathKind::try_from(m.path_kind).unwrap_or(PathKind::Prefix) {
            PathKind::Exact => (0, 0),
            PathKind::Prefix => (1, usize::MAX - m.path.len()),
            PathKind::Regex => (2, usize::MAX - m.path.len()),
        };
    rank(a)
        .cmp(&rank(b))
        .then_with(|| a.method.is_empty().cmp(&b.method.is_empty()))
        .then_with(|| b.headers.len().cmp(&a.headers.len()))
        .then_with(|| b.query_params.len().cmp(&a.query_params.len()))
}

/// The rules for one Service port, in the order a proxy tries them.
pub fn for_port(model: &Model, svc: &ServiceModel, port: u16) -> Vec<v1::RouteRule> {
    let mut routes: Vec<&HttpRoute> = model
        .routes
        .iter()
        .filter(|r| attaches(r, svc, port))
        .collect();
    // Ties go to the oldest route, then by namespace/name.
    routes.sort_by(|a, b| {
        let ts = |r: &HttpRoute| {
            r.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
        };
        let key = |r: &HttpRoute| (r.metadata.namespace.clone(), r.metadata.name.clone());
        ts(a).cmp(&ts(b)).then_with(|| key(a).cmp(&key(b)))
    });
    let mut out = Vec::new();
    for route in routes {
        for (i, rule) in route.spec.rules.iter().flatten().enumerate() {
            let compiled = compile_rule(model, route, rule, port);
            let matches = rule.matches.clone().unwrap_or_default();
            let matches = if matches.is_empty() {
                vec![HttpRouteRulesMatches::default()]
            } else {
                matches
            };
            for m in &matches {
                out.push(v1::RouteRule {
                    rule_index: i as u32,
                    matches: vec![compile_match(m)],
                    ..compiled.clone()
                });
            }
        }
    }
    // A stable sort keeps the route order for equal precedence.
    out.sort_by(|a, b| match (a.matches.first(), b.matches.first()) {
        (Some(x), Some(y)) => precedence(x, y),
        _ => Ordering::Equal,
    });
    out
}

/// The TrafficPolicy for a Service port (a port-specific one wins over one
/// for the whole Service), resolved with defaults.
pub fn policy(model: &Model, svc: &ServiceModel, port: u16) -> v1::TrafficPolicy {
    use super::crds::{duration_ms, grpc_code};
    let targets = |p: &&super::crds::TrafficPolicy| {
        let t = &p.spec.target_ref;
        p.metadata.namespace.as_deref().unwrap_or("default") == svc.namespace && t.name == svc.name
    };
    let chosen = model
        .policies
        .iter()
        .filter(targets)
        .find(|p| p.spec.target_ref.port == Some(port))
        .or_else(|| {
            model
                .policies
                .iter()
                .filter(targets)
                .find(|p| p.spec.target_ref.port.is_none())
        });
    let spec = chosen.map(|p| p.spec.clone());
    let ms =
        |v: Option<&String>, default: u32| v.and_then(|s| duration_ms(s).ok()).unwrap_or(default);
    let budget = spec
        .as_ref()
        .and_then(|s| s.retry_budget.clone())
        .unwrap_or_default();
    let on = spec
        .as_ref()
        .and_then(|s| s.retry_on.clone())
        .unwrap_or_default();
    let outlier = spec
        .as_ref()
        .and_then(|s| s.outlier_detection.clone())
        .unwrap_or_default();
    let limits = spec
        .as_ref()
        .and_then(|s| s.limits.clone())
        .unwrap_or_default();
    v1::TrafficPolicy {
        retry_budget: Some(v1::RetryBudget {
            ratio: budget.ratio.unwrap_or(0.2),
            min_per_second: budget.min_per_second.unwrap_or(10),
            window_ms: ms(budget.window.as_ref(), 10_000),
        }),
        retry_on: Some(v1::RetryOn {
            connect_failure: on.connect_failure.unwrap_or(true),
            refused_stream: on.refused_stream.unwrap_or(true),
            reset: on.reset.unwrap_or(true),
            non_idempotent: on.non_idempotent.unwrap_or(false),
            grpc_codes: on.grpc_codes.iter().filter_map(|c| grpc_code(c)).collect(),
        }),
        outlier_detection: Some(v1::OutlierDetection {
            consecutive_failures: outlier.consecutive_failures.unwrap_or(5),
            base_ejection_ms: ms(outlier.base_ejection_time.as_ref(), 10_000),
            max_ejection_percent: outlier.max_ejection_percent.unwrap_or(50),
        }),
        limits: Some(v1::Limits {
            max_concurrent_requests: limits.max_concurrent_requests.unwrap_or(0),
            max_connections: limits.max_connections.unwrap_or(0),
            max_pending_requests: limits.max_pending_requests.unwrap_or(0),
            queue_timeout_ms: ms(limits.queue_timeout.as_ref(), 0),
        }),
        retry: spec
            .as_ref()
            .and_then(|s| s.retry.as_ref())
            .map(|r| v1::RetryPolicy {
                attempts: r.attempts.unwrap_or(0),
                backoff_ms: ms(r.backoff.as_ref(), 0),
                codes: r.codes.iter().map(|c| u32::from(*c)).collect(),
            }),
        load_balancer: match spec.as_ref().and_then(|s| s.load_balancer) {
            Some(super::crds::LoadBalancer::RoundRobin) => v1::LoadBalancer::RoundRobin as i32,
            Some(super::crds::LoadBalancer::Random) => v1::LoadBalancer::Random as i32,
            _ => v1::LoadBalancer::PeakEwma as i32,
        },
        idle_timeout_ms: ms(spec.as_ref().and_then(|s| s.idle_timeout.as_ref()), 0),
        timeouts: spec
            .as_ref()
            .and_then(|s| s.timeouts.as_ref())
            .map(|t| v1::Timeouts {
                request_ms: ms(t.request.as_ref(), 0),
                backend_request_ms: ms(t.backend_request.as_ref(), 0),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Store;

    #[test]
    fn rules_are_ordered_by_gateway_api_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 198.19.0.1\n  selector: {app: web}\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web-v2}\nspec:\n  clusterIP: 198.19.0.2\n  selector: {app: web}\n  ports: [{port: 80}]\n";
        let routes = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules:
  - backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: web-v2, port: 80, weight: 3}, {name: missing, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b}
spec:
  parentRefs: [{kind: Service, name: web, port: 80}]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /api}
      headers: [{name: X-Canary, value: "yes"}]
    - path: {type: Exact, value: /health}
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}, method: POST}]
    backendRefs: [{name: web, port: 80}]
"#;
        std::fs::write(dir.path().join("s.yaml"), svc).unwrap();
        std::fs::write(dir.path().join("r.yaml"), routes).unwrap();
        let mut store = Store::new(dir.path());
        store.refresh();
        let (objects, errors) = store.objects();
        assert!(errors.is_empty(), "{errors:?}");
        let model = Model::build(&objects, &[]);
        let web = model.services.iter().find(|s| s.name == "web").unwrap();
        let rules = for_port(&model, web, 80);
        let order: Vec<(String, &str, usize, &str)> = rules
            .iter()
            .map(|r| {
                let m = &r.matches[0];
                (
                    r.route.clone(),
                    m.path.as_str(),
                    m.headers.len(),
                    m.method.as_str(),
                )
            })
            .collect();
        assert_eq!(
            order,
            vec![
                ("default/b".into(), "/health", 0, ""),
                ("default/b".into(), "/api", 0, "POST"),
                ("default/b".into(), "/api", 1, ""),
                ("default/a".into(), "/api", 0, ""),
                ("default/a".into(), "/", 0, ""),
            ]
        );
        // Header names are matched case-insensitively; unresolvable backends drop out.
        assert_eq!(rules[2].matches[0].headers[0].name, "x-canary");
        assert_eq!(rules[3].backends.len(), 1);
        assert_eq!(
            (
                rules[3].backends[0].address.as_str(),
                rules[3].backends[0].weight
            ),
            ("198.19.0.2:80", 3)
        );
    }
}
