//! GRPCRoute, read as the HTTPRoute it amounts to: a gRPC method is the
//! request path `/<service>/<method>`, and a GRPCRoute's filters, backendRefs
//! and parentRefs have the same shape as an HTTPRoute's. So both kinds are
//! compiled, attached and reported by one path ([`super::routes`]).

use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use serde_json::{Value, json};

/// The path match for one GRPCRoute method match (`service`, `method`, both
/// optional; `RegularExpression` or the default `Exact`).
fn path_match(method: &Value) -> Value {
    let service = method.get("service").and_then(Value::as_str).unwrap_or("");
    let name = method.get("method").and_then(Value::as_str).unwrap_or("");
    let regex = method.get("type").and_then(Value::as_str) == Some("RegularExpression");
    if regex {
        let part = |s: &str| {
            if s.is_empty() {
                "[^/]+".to_string()
            } else {
                format!("(?:{s})")
            }
        };
        let value = format!("/{}/{}", part(service), part(name));
        return json!({"type": "RegularExpression", "value": value});
    }
    match (service.is_empty(), name.is_empty()) {
        (false, false) => json!({"type": "Exact", "value": format!("/{service}/{name}")}),
        // Segment-wise prefix: `/pkg.Svc` matches `/pkg.Svc/<any method>`.
        (false, true) => json!({"type": "PathPrefix", "value": format!("/{service}")}),
        (true, false) => json!({
            "type": "RegularExpression",
            "value": format!("/[^/]+/{}", regex::escape(name)),
        }),
        (true, true) => json!({"type": "PathPrefix", "value": "/"}),
    }
}

/// The HTTPRoute `route` amounts to. Fields only GRPCRoute has (none that
/// the mesh uses) are dropped; nothing in a valid GRPCRoute fails here.
pub fn to_http(route: &GrpcRoute) -> HttpRoute {
    let mut v = serde_json::to_value(route).unwrap_or(Value::Null);
    if let Some(rules) = v.pointer_mut("/spec/rules").and_then(Value::as_array_mut) {
        for rule in rules {
            let Some(matches) = rule.get_mut("matches").and_then(Value::as_array_mut) else {
                continue;
            };
            for m in matches {
                let Some(obj) = m.as_object_mut() else {
                    continue;
                };
                if let Some(method) = obj.remove("method") {
                    obj.insert("path".into(), path_match(&method));
                }
            }
        }
    }
    v["kind"] = json!("HTTPRoute");
    serde_json::from_value(v).unwrap_or_else(|_| HttpRoute {
        metadata: route.metadata.clone(),
        spec: Default::default(),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml: &str) -> HttpRoute {
        let g: GrpcRoute = serde_norway::from_str(yaml).unwrap();
        to_http(&g)
    }

    #[test]
    fn methods_become_paths() {
        let r = route(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: echo, port: 9090}]
  rules:
  - name: unary
    matches:
    - method: {service: weft.test.Echo, method: Unary}
      headers: [{name: x-canary, value: "yes"}]
    - method: {service: weft.test.Hello}
    - method: {method: Fail}
    - method: {type: RegularExpression, service: "weft\\.test\\..*"}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-a, value: b}]}
    backendRefs:
    - name: echo-v2
      port: 9090
      weight: 3
      filters:
      - type: ResponseHeaderModifier
        responseHeaderModifier: {add: [{name: x-b, value: c}]}
"#,
        );
        let rule = &r.spec.rules.as_ref().unwrap()[0];
        let paths: Vec<(String, String)> = rule
            .matches
            .iter()
            .flatten()
            .map(|m| {
                let p = m.path.as_ref().unwrap();
                (
                    serde_json::to_value(p.r#type.as_ref().unwrap())
                        .unwrap()
                        .as_str()
                        .unwrap()
                        .to_string(),
                    p.value.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            paths,
            [
                ("Exact".into(), "/weft.test.Echo/Unary".into()),
                ("PathPrefix".into(), "/weft.test.Hello".into()),
                ("RegularExpression".into(), "/[^/]+/Fail".into()),
                (
                    "RegularExpression".into(),
                    "/(?:weft\\.test\\..*)/[^/]+".into()
                ),
            ]
        );
        assert_eq!(rule.name.as_deref(), Some("unary"));
        assert_eq!(
            rule.matches.as_ref().unwrap()[0].headers.as_ref().unwrap()[0].name,
            "x-canary"
        );
        assert!(
            rule.filters.as_ref().unwrap()[0]
                .request_header_modifier
                .is_some()
        );
        let b = &rule.backend_refs.as_ref().unwrap()[0];
        assert_eq!(
            (b.name.as_str(), b.port, b.weight),
            ("echo-v2", Some(9090), Some(3))
        );
        assert!(
            b.filters.as_ref().unwrap()[0]
                .response_header_modifier
                .is_some()
        );
        assert_eq!(r.spec.parent_refs.as_ref().unwrap()[0].port, Some(9090));
    }
}
