//! AuthorizationPolicies and RequestAuthentications compiled for one pod:
//! the policies and token issuers on each of its container ports (a Service
//! target reaches the pods the Service selects, at the target port each of
//! them serves), the API-key sets their rules name, and the pod's default.
//!
//! What cannot be resolved fails closed: a key set that is missing or
//! unreadable leaves its issuer with no keys (every token it signed is
//! refused), an API-key Secret that is missing is an empty set (no key
//! matches).

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};
use weft_api::v1;

use super::crds::{
    AuthorizationPolicy, AuthzAction, AuthzPathKind, AuthzRule, JwtRule, RequestAuthentication,
};
use super::findings::Verdict;
use super::model::{Model, PodModel, resolve_target};

fn action(a: AuthzAction) -> v1::AuthzAction {
    match a {
        AuthzAction::Allow => v1::AuthzAction::Allow,
        AuthzAction::Deny => v1::AuthzAction::Deny,
        AuthzAction::Audit => v1::AuthzAction::Audit,
    }
}

fn rule(r: &AuthzRule, policy_ns: &str) -> v1::AuthzRule {
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
    let when = r.when.clone().unwrap_or_default();
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
        never: false,
        jwt: when.jwt.map(|j| v1::JwtMatch {
            claims: j
                .claims
                .into_iter()
                .map(|c| v1::ClaimMatch {
                    name: c.name,
                    values: c.values,
                })
                .collect(),
        }),
        api_key: when.api_key.map(|k| v1::ApiKeyMatch {
            header: k.header.to_ascii_lowercase(),
            set: key_set_id(policy_ns, &k.secret_ref),
        }),
    }
}

fn key_set_id(ns: &str, r: &super::crds::SecretKeyRef) -> String {
    format!("{ns}/{}/{}", r.name, r.key)
}

fn compile(p: &AuthorizationPolicy) -> v1::AuthzPolicy {
    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
    v1::AuthzPolicy {
        name: format!("{ns}/{}", p.metadata.name.as_deref().unwrap_or_default()),
        action: action(p.spec.action) as i32,
        rules: p.spec.rules.iter().map(|r| rule(r, ns)).collect(),
        routes: Vec::new(),
    }
}

/// Where a policy on a route rule lands: the container ports of `pod` that
/// the rule's backends in the policy's own namespace reach, each with the
/// rule's matches as the pod sees them. (A backend in another namespace is
/// its owner's to protect.)
fn route_targets(
    model: &Model,
    pod: &PodModel,
    p: &AuthorizationPolicy,
) -> Vec<(u16, Vec<v1::RouteMatch>)> {
    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
    let t = &p.spec.target_ref;
    let kind = match t.kind.as_str() {
        "HTTPRoute" => super::model::RouteKind::Http,
        "GRPCRoute" => super::model::RouteKind::Grpc,
        _ => return Vec::new(),
    };
    let Some(route) = model
        .routes
        .iter()
        .find(|r| r.kind == kind && r.namespace() == ns && r.name() == t.name)
    else {
        return Vec::new();
    };
    let mut out: Vec<(u16, Vec<v1::RouteMatch>)> = Vec::new();
    for scope in super::routes::policy_scopes(model, route, t.section_name.as_deref()) {
        if scope.namespace != ns {
            continue;
        }
        for port in target_ports(model, pod, ns, &scope.service, Some(scope.port)) {
            match out.iter_mut().find(|(p, _)| *p == port) {
                Some((_, ms)) => {
                    for m in &scope.matches {
                        if !ms.contains(m) {
                            ms.push(m.clone());
                        }
                    }
                }
                None => out.push((port, scope.matches.clone())),
            }
        }
    }
    out
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

/// What one pod's sidecar enforces.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodPolicies {
    pub ports: Vec<v1::PortAuthz>,
    pub jwt_providers: Vec<v1::JwtProvider>,
    pub api_key_sets: Vec<v1::ApiKeySet>,
}

/// The container ports of `pod` a Service target (in `ns`, optionally one
/// Service port) reaches.
fn target_ports(
    model: &Model,
    pod: &PodModel,
    ns: &str,
    name: &str,
    port: Option<u16>,
) -> Vec<u16> {
    if ns != pod.namespace {
        return Vec::new();
    }
    let Some(svc) = model
        .services
        .iter()
        .find(|s| s.namespace == ns && s.name == name)
    else {
        return Vec::new();
    };
    if svc.selects(std::slice::from_ref(pod)).next().is_none() {
        return Vec::new();
    }
    svc.ports
        .iter()
        .filter(|sp| port.is_none_or(|p| p == sp.port))
        .filter_map(|sp| resolve_target(&sp.target, sp.port, pod))
        .collect()
}

/// The policies and issuers on each container port of `pod`, by port, and
/// what they refer to.
pub fn for_pod(model: &Model, pod: &PodModel) -> PodPolicies {
    let mut ports: BTreeMap<u16, v1::PortAuthz> = BTreeMap::new();
    let mut sets: BTreeSet<String> = BTreeSet::new();
    for p in &model.authz_policies {
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        let t = &p.spec.target_ref;
        let targets: Vec<(u16, Vec<v1::RouteMatch>)> = if t.kind == "Service" {
            target_ports(model, pod, ns, &t.name, t.port)
                .into_iter()
                .map(|port| (port, Vec::new()))
                .collect()
        } else {
            route_targets(model, pod, p)
        };
        if targets.is_empty() {
            continue;
        }
        let compiled = compile(p);
        for r in &compiled.rules {
            if let Some(k) = &r.api_key {
                sets.insert(k.set.clone());
            }
        }
        for (port, routes) in targets {
            let e = ports.entry(port).or_insert_with(|| v1::PortAuthz {
                port: u32::from(port),
                ..Default::default()
            });
            let scoped = v1::AuthzPolicy {
                routes,
                ..compiled.clone()
            };
            if !e.policies.contains(&scoped) {
                e.policies.push(scoped);
            }
        }
    }
    let mut providers: BTreeMap<String, v1::JwtProvider> = BTreeMap::new();
    for a in &model.request_authns {
        let ns = a.metadata.namespace.as_deref().unwrap_or("default");
        let t = &a.spec.target_ref;
        let targets = target_ports(model, pod, ns, &t.name, t.port);
        if targets.is_empty() {
            continue;
        }
        for (i, r) in a.spec.jwt_rules.iter().enumerate() {
            let p = provider(model, a, i, r);
            for &port in &targets {
                let e = ports.entry(port).or_insert_with(|| v1::PortAuthz {
                    port: u32::from(port),
                    ..Default::default()
                });
                if !e.jwt_providers.contains(&p.id) {
                    e.jwt_providers.push(p.id.clone());
                }
            }
            providers.insert(p.id.clone(), p);
        }
    }
    PodPolicies {
        ports: ports.into_values().collect(),
        jwt_providers: providers.into_values().collect(),
        api_key_sets: sets.into_iter().map(|id| api_key_set(model, &id)).collect(),
    }
}

/// The key set of one issuer, as the proxies get it.
fn provider(model: &Model, a: &RequestAuthentication, i: usize, r: &JwtRule) -> v1::JwtProvider {
    let ns = a.metadata.namespace.as_deref().unwrap_or("default");
    let name = a.metadata.name.as_deref().unwrap_or_default();
    let mut locations: Vec<v1::TokenLocation> = r
        .from_headers
        .iter()
        .map(|h| v1::TokenLocation {
            kind: Some(v1::token_location::Kind::Header(v1::HeaderLocation {
                name: h.name.to_ascii_lowercase(),
                prefix: h.prefix.clone().unwrap_or_default(),
            })),
        })
        .chain(r.from_params.iter().map(|q| v1::TokenLocation {
            kind: Some(v1::token_location::Kind::QueryParam(q.clone())),
        }))
        .collect();
    if locations.is_empty() {
        locations.push(v1::TokenLocation {
            kind: Some(v1::token_location::Kind::Header(v1::HeaderLocation {
                name: "authorization".into(),
                prefix: "Bearer ".into(),
            })),
        });
    }
    let skew = r
        .clock_skew
        .as_deref()
        .and_then(|d| super::crds::duration_ms(d).ok())
        .map_or(60, |ms| ms / 1000);
    v1::JwtProvider {
        id: format!("{ns}/{name}/{i}"),
        issuer: r.issuer.clone(),
        audiences: r.audiences.clone(),
        locations,
        jwks: jwks_of(model, ns, r).ok().unwrap_or_default(),
        claim_headers: r
            .output_claim_to_headers
            .iter()
            .map(|c| v1::ClaimHeader {
                claim: c.claim.clone(),
                header: c.header.to_ascii_lowercase(),
            })
            .collect(),
        strip_token: r.strip_token,
        clock_skew_s: skew,
    }
}

/// The public keys of an issuer, normalized (symmetric and unknown keys,
/// and any private part, dropped), or why there are none.
pub fn jwks_of(model: &Model, ns: &str, r: &JwtRule) -> Result<String, String> {
    let raw: String = if let Some(inline) = &r.jwks {
        inline.clone()
    } else if let Some(s) = &r.jwks_secret_ref {
        let data = model
            .secrets
            .get(&(ns.to_string(), s.name.clone()))
            .ok_or_else(|| {
                format!(
                    "Secret {ns}/{} not found or not readable (see weft-policy-secrets)",
                    s.name
                )
            })?;
        let v = data
            .0
            .get(&s.key)
            .ok_or_else(|| format!("Secret {ns}/{} has no key `{}`", s.name, s.key))?;
        String::from_utf8(v.clone())
            .map_err(|_| format!("Secret {ns}/{} key `{}` is not UTF-8", s.name, s.key))?
    } else if let Some(uri) = &r.jwks_uri {
        let f = model
            .jwks
            .get(uri)
            .ok_or_else(|| format!("{uri} not fetched yet"))?;
        match (&f.jwks, &f.error) {
            (Some(j), _) => j.to_string(),
            (None, Some(e)) => return Err(format!("{uri}: {e}")),
            (None, None) => return Err(format!("{uri} not fetched yet")),
        }
    } else {
        return Err("no key set".into());
    };
    normalize_jwks(&raw)
}

/// A JSON Web Key Set with only the public keys the proxies verify with.
pub fn normalize_jwks(raw: &str) -> Result<String, String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
    let set: JwkSet =
        serde_json::from_str(raw).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    let keys: Vec<_> = set
        .keys
        .into_iter()
        .filter(|k| {
            matches!(
                k.algorithm,
                AlgorithmParameters::RSA(_)
                    | AlgorithmParameters::EllipticCurve(_)
                    | AlgorithmParameters::OctetKeyPair(_)
            )
        })
        .collect();
    if keys.is_empty() {
        return Err("the key set has no RSA, EC or OKP public key".into());
    }
    serde_json::to_string(&JwkSet { keys }).map_err(|e| e.to_string())
}

/// The digests of an API-key set (`namespace/secret/key`): one
/// `sha256:<hex>` per line of the Secret's value.
fn api_key_set(model: &Model, id: &str) -> v1::ApiKeySet {
    v1::ApiKeySet {
        id: id.to_string(),
        sha256: api_key_digests(model, id).unwrap_or_default(),
    }
}

/// The digests of an API-key set, or why it cannot be read.
pub fn api_key_digests(model: &Model, id: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut parts = id.splitn(3, '/');
    let (Some(ns), Some(name), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("`{id}` is not namespace/secret/key"));
    };
    let data = model
        .secrets
        .get(&(ns.to_string(), name.to_string()))
        .ok_or_else(|| {
            format!("Secret {ns}/{name} not found or not readable (see weft-policy-secrets)")
        })?;
    let v = data
        .0
        .get(key)
        .ok_or_else(|| format!("Secret {ns}/{name} has no key `{key}`"))?;
    let text = std::str::from_utf8(v)
        .map_err(|_| format!("Secret {ns}/{name} key `{key}` is not UTF-8"))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let digest = line
            .strip_prefix("sha256:")
            .and_then(hex_32)
            .ok_or_else(|| {
                format!(
                    "Secret {ns}/{name} key `{key}` line {}: not sha256:<64 hex digits> (API keys are stored hashed)",
                    n + 1
                )
            })?;
        out.push(digest);
    }
    Ok(out)
}

fn hex_32(h: &str) -> Option<Vec<u8>> {
    if h.len() != 64 {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// The digest the proxies compare an API key with.
pub fn api_key_digest(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// What status says of a policy: `Accepted` (`Accepted`, `Invalid`,
/// `TargetNotFound`) and `ResolvedRefs` (`ResolvedRefs`, `SecretNotFound`,
/// `InvalidSecret`, `NoJwtProvider`, `JwksUnavailable`), each with the field
/// at fault first in its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyVerdict {
    pub accepted: Verdict,
    pub resolved_refs: Verdict,
}

fn target_service<'a>(
    model: &'a Model,
    ns: &str,
    name: &str,
) -> Option<&'a super::model::ServiceModel> {
    model
        .services
        .iter()
        .find(|s| s.namespace == ns && s.name == name)
}

/// An AuthorizationPolicy's conditions, from the model the proxies get.
pub fn authz_verdict(model: &Model, p: &AuthorizationPolicy) -> PolicyVerdict {
    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
    let t = &p.spec.target_ref;
    let accepted = match p.spec.validate() {
        Err((field, message)) => Verdict::no("Invalid", format!("{field}: {message}")),
        Ok(()) if t.kind == "Service" => match target_service(model, ns, &t.name) {
            None => Verdict::no(
                "TargetNotFound",
                format!("spec.targetRef: Service {ns}/{} does not exist", t.name),
            ),
            Some(s)
                if t.port
                    .is_some_and(|port| !s.ports.iter().any(|sp| sp.port == port)) =>
            {
                Verdict::no(
                    "TargetNotFound",
                    format!(
                        "spec.targetRef.port: Service {ns}/{} has no port {}",
                        t.name,
                        t.port.unwrap_or_default()
                    ),
                )
            }
            Some(_) => Verdict::yes("Accepted", format!("applies to Service {ns}/{}", t.name)),
        },
        Ok(()) => {
            let route = model
                .routes
                .iter()
                .find(|r| r.kind.name() == t.kind && r.namespace() == ns && r.name() == t.name);
            match (route, &t.section_name) {
                (None, _) => Verdict::no(
                    "TargetNotFound",
                    format!("spec.targetRef: {} {ns}/{} does not exist", t.kind, t.name),
                ),
                (Some(r), Some(section))
                    if !r
                        .route
                        .spec
                        .rules
                        .iter()
                        .flatten()
                        .any(|rule| rule.name.as_deref() == Some(section)) =>
                {
                    Verdict::no(
                        "TargetNotFound",
                        format!(
                            "spec.targetRef.sectionName: {} {ns}/{} has no rule named {section}",
                            t.kind, t.name
                        ),
                    )
                }
                (Some(r), section) => {
                    let scopes = super::routes::policy_scopes(model, r, section.as_deref());
                    let here = scopes.iter().filter(|s| s.namespace == ns).count();
                    Verdict::yes(
                        "Accepted",
                        format!(
                            "applies to the requests of {} {ns}/{} at {here} backend Service port(s) in {ns}",
                            t.kind, t.name
                        ),
                    )
                }
            }
        }
    };
    let mut resolved = Verdict::yes("ResolvedRefs", "every reference resolved");
    for (i, r) in p.spec.rules.iter().enumerate() {
        let Some(when) = &r.when else { continue };
        if let Some(k) = &when.api_key
            && let Err(e) = api_key_digests(model, &key_set_id(ns, &k.secret_ref))
        {
            let reason = if e.contains("not found") {
                "SecretNotFound"
            } else {
                "InvalidSecret"
            };
            resolved = Verdict::no(
                reason,
                format!("spec.rules[{i}].when.apiKey.secretRef: {e}"),
            );
            break;
        }
        if when.jwt.is_some() && t.kind == "Service" {
            let has = model.request_authns.iter().any(|a| {
                a.metadata.namespace.as_deref().unwrap_or("default") == ns
                    && a.spec.target_ref.name == t.name
            });
            if !has {
                resolved = Verdict::no(
                    "NoJwtProvider",
                    format!(
                        "spec.rules[{i}].when.jwt: no RequestAuthentication targets Service {ns}/{}, so no token is ever valid there",
                        t.name
                    ),
                );
                break;
            }
        }
    }
    PolicyVerdict {
        accepted,
        resolved_refs: resolved,
    }
}

/// A RequestAuthentication's conditions: its Service, and each issuer's
/// key set (the last fetch error of a `jwksUri`, never key material).
pub fn authn_verdict(model: &Model, a: &RequestAuthentication) -> PolicyVerdict {
    let ns = a.metadata.namespace.as_deref().unwrap_or("default");
    let t = &a.spec.target_ref;
    let accepted = match a.spec.validate() {
        Err((field, message)) => Verdict::no("Invalid", format!("{field}: {message}")),
        Ok(()) => match target_service(model, ns, &t.name) {
            None => Verdict::no(
                "TargetNotFound",
                format!("spec.targetRef: Service {ns}/{} does not exist", t.name),
            ),
            Some(_) => Verdict::yes("Accepted", format!("applies to Service {ns}/{}", t.name)),
        },
    };
    let mut resolved = Verdict::yes("ResolvedRefs", "every key set is available");
    for (i, r) in a.spec.jwt_rules.iter().enumerate() {
        if let Err(e) = jwks_of(model, ns, r) {
            let (reason, field) = if r.jwks_secret_ref.is_some() {
                (
                    if e.contains("not found") {
                        "SecretNotFound"
                    } else {
                        "InvalidSecret"
                    },
                    "jwksSecretRef",
                )
            } else if r.jwks_uri.is_some() {
                ("JwksUnavailable", "jwksUri")
            } else {
                ("InvalidJwks", "jwks")
            };
            resolved = Verdict::no(reason, format!("spec.jwtRules[{i}].{field}: {e}"));
            break;
        }
    }
    PolicyVerdict {
        accepted,
        resolved_refs: resolved,
    }
}

/// The same for the manifest directory's `/errors`: one entry per failing
/// condition, naming the file and the field.
pub fn policy_errors(
    model: &Model,
    file: impl Fn(&super::objects::ObjectKey) -> Option<std::path::PathBuf>,
) -> Vec<super::manifests::ManifestError> {
    use super::objects::{Kind, ObjectKey};
    let mut out = Vec::new();
    let mut push = |kind: Kind, meta: &kube::api::ObjectMeta, v: PolicyVerdict| {
        let key = ObjectKey {
            kind,
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone().unwrap_or_default(),
        };
        for (condition, c) in [("Accepted", v.accepted), ("ResolvedRefs", v.resolved_refs)] {
            if c.ok {
                continue;
            }
            let (field, message) = c
                .message
                .split_once(": ")
                .map(|(f, m)| (f.to_string(), m.to_string()))
                .unwrap_or_default();
            out.push(super::manifests::ManifestError {
                file: file(&key),
                object: key.to_string(),
                field,
                message: format!("{message} ({condition}: {})", c.reason),
            });
        }
    };
    for p in &model.authz_policies {
        push(
            Kind::AuthorizationPolicy,
            &p.metadata,
            authz_verdict(model, p),
        );
    }
    for a in &model.request_authns {
        push(
            Kind::RequestAuthentication,
            &a.metadata,
            authn_verdict(model, a),
        );
    }
    out
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
        let got = for_pod(&m, web).ports;
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
        // JWT conditions go to the proxies as written.
        assert!(writers.rules[0].jwt.is_none());
        assert_eq!(writers.rules[1].jwt, Some(v1::JwtMatch { claims: vec![] }));
        assert!(got[0].policies[0].rules[0].jwt.is_some());
        // Pods the Service does not select get nothing; the Namespace's default.
        assert_eq!(
            for_pod(&m, m.pod("shop", "db-0").unwrap()),
            PodPolicies::default()
        );
        assert_eq!(
            default_for(&m, web, v1::DefaultAuthz::Allow),
            v1::DefaultAuthz::Deny
        );
    }

    const JWKS: &str = r#"{"keys":[
        {"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","d":"jpsQnnGQmL-YBIffH1136cLV6ncDxHGzBiGx1CsUz4w"},
        {"kty":"oct","kid":"hmac","k":"c2VjcmV0"}]}"#;

    #[test]
    fn issuers_and_api_keys_reach_the_ports_as_public_keys_and_digests() {
        let yaml = format!(
            "{MESH}---
apiVersion: weft.dev/v1alpha1
kind: RequestAuthentication
metadata: {{name: users, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: web, port: 80}}
  jwtRules:
  - issuer: https://issuer.test
    audiences: [web]
    jwks: '{jwks}'
    outputClaimToHeaders: [{{header: X-User, claim: sub}}]
  - issuer: https://other.test
    jwksSecretRef: {{name: keys, key: jwks.json}}
    fromParams: [token]
---
apiVersion: v1
kind: Secret
metadata: {{name: api-keys, namespace: shop}}
stringData:
  keys: |
    # the billing job
    sha256:{digest}
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: by-key, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: web, port: 9000}}
  rules: [{{when: {{apiKey: {{header: X-Api-Key, secretRef: {{name: api-keys, key: keys}}}}}}}}]
",
            jwks = JWKS.replace('\n', ""),
            digest = api_key_digest("s3cret")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let m = model(&yaml);
        let got = for_pod(&m, m.pod("shop", "web-0").unwrap());
        assert_eq!(got.ports[0].port, 8080);
        assert_eq!(got.ports[0].jwt_providers, ["shop/users/0", "shop/users/1"]);
        assert!(got.ports[1].jwt_providers.is_empty());
        let [inline, secret] = &got.jwt_providers[..] else {
            panic!("two issuers: {:?}", got.jwt_providers);
        };
        assert_eq!(inline.audiences, ["web"]);
        assert_eq!(inline.claim_headers[0].header, "x-user");
        // The default location is `Authorization: Bearer`.
        assert_eq!(
            inline.locations[0].kind,
            Some(v1::token_location::Kind::Header(v1::HeaderLocation {
                name: "authorization".into(),
                prefix: "Bearer ".into()
            }))
        );
        // Only the EC public key goes out: no `oct` key, no private `d`.
        assert!(inline.jwks.contains("\"k1\"") && !inline.jwks.contains("hmac"));
        assert!(!inline.jwks.contains("jpsQ"), "{}", inline.jwks);
        // A missing Secret: no keys, so every token of that issuer fails.
        assert_eq!(secret.jwks, "");
        assert_eq!(
            secret.locations[0].kind,
            Some(v1::token_location::Kind::QueryParam("token".into()))
        );
        assert_eq!(got.api_key_sets.len(), 1);
        assert_eq!(got.api_key_sets[0].id, "shop/api-keys/keys");
        assert_eq!(got.api_key_sets[0].sha256, [api_key_digest("s3cret")]);
        let rule = &got.ports[1].policies[0].rules[0];
        assert_eq!(
            rule.api_key,
            Some(v1::ApiKeyMatch {
                header: "x-api-key".into(),
                set: "shop/api-keys/keys".into()
            })
        );
        // A plaintext key in the Secret is refused, never pushed.
        let mut m = m;
        m.secrets.insert(
            ("shop".into(), "api-keys".into()),
            std::sync::Arc::new(crate::discovery::objects::SecretData(
                [("keys".to_string(), b"s3cret\n".to_vec())].into(),
            )),
        );
        let err = api_key_digests(&m, "shop/api-keys/keys").unwrap_err();
        assert!(err.contains("line 1") && err.contains("hashed"), "{err}");
        assert!(
            for_pod(&m, m.pod("shop", "web-0").unwrap()).api_key_sets[0]
                .sha256
                .is_empty()
        );
    }

    #[test]
    fn a_route_policy_lands_on_the_backends_with_the_matches_they_see() {
        let yaml = format!(
            "{MESH}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: shop}}
spec:
  parentRefs: [{{kind: Service, name: web, port: 80}}]
  rules:
  - name: legacy
    matches: [{{path: {{type: PathPrefix, value: /v1}}, headers: [{{name: x-tenant, value: a}}, {{name: x-keep, value: b}}]}}]
    filters:
    - type: URLRewrite
      urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: X-Tenant, value: b}}]}}
    backendRefs: [{{name: web, port: 80}}]
  - name: other
    backendRefs: [{{name: web, port: 80}}]
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: legacy-only, namespace: shop}}
spec:
  targetRef: {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r, sectionName: legacy}}
  rules: [{{from: [{{namespace: ops}}]}}]
"
        );
        let m = model(&yaml);
        let got = for_pod(&m, m.pod("shop", "web-0").unwrap());
        let on_8080 = &got.ports[0];
        assert_eq!(on_8080.port, 8080);
        let p = on_8080
            .policies
            .iter()
            .find(|p| p.name == "shop/legacy-only")
            .unwrap();
        // The backend sees /v2 (rewritten), and x-tenant is set by the
        // route, so it is no condition of the scope; x-keep still is.
        assert_eq!(p.routes.len(), 1);
        assert_eq!(p.routes[0].path, "/v2");
        let names: Vec<&str> = p.routes[0]
            .headers
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(names, ["x-keep"]);
        // Not on the Service's other port.
        assert!(
            got.ports[1]
                .policies
                .iter()
                .all(|p| p.name != "shop/legacy-only")
        );
    }

    #[test]
    fn policy_status_names_what_is_missing() {
        let yaml = format!(
            "{MESH}---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: nowhere, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: gone}}
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: keyed, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: web}}
  rules: [{{when: {{apiKey: {{header: x-key, secretRef: {{name: absent, key: k}}}}}}}}]
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: no-rule, namespace: shop}}
spec:
  targetRef: {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r, sectionName: nope}}
---
apiVersion: weft.dev/v1alpha1
kind: RequestAuthentication
metadata: {{name: fetched, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: web}}
  jwtRules: [{{issuer: https://i.test, jwksUri: 'https://i.test/keys'}}]
"
        );
        let m = model(&yaml);
        let errs = policy_errors(&m, |_| None);
        let got: Vec<(String, String, String)> = errs
            .iter()
            .map(|e| (e.object.clone(), e.field.clone(), e.message.clone()))
            .collect();
        let has = |object: &str, field: &str, reason: &str| {
            got.iter()
                .any(|(o, f, m)| o == object && f == field && m.contains(reason))
        };
        assert!(
            has(
                "AuthorizationPolicy shop/nowhere",
                "spec.targetRef",
                "TargetNotFound"
            ),
            "{got:?}"
        );
        assert!(
            has(
                "AuthorizationPolicy shop/keyed",
                "spec.rules[0].when.apiKey.secretRef",
                "SecretNotFound"
            ),
            "{got:?}"
        );
        assert!(
            has(
                "AuthorizationPolicy shop/no-rule",
                "spec.targetRef",
                "TargetNotFound"
            ),
            "{got:?}"
        );
        assert!(
            has(
                "RequestAuthentication shop/fetched",
                "spec.jwtRules[0].jwksUri",
                "JwksUnavailable"
            ),
            "{got:?}"
        );
        // A jwt rule where no RequestAuthentication validates tokens.
        let alone = policy_errors(&model(MESH), |_| None);
        assert!(
            alone
                .iter()
                .any(|e| e.object == "AuthorizationPolicy shop/writers"
                    && e.field == "spec.rules[1].when.jwt"
                    && e.message.contains("NoJwtProvider")),
            "{alone:?}"
        );
        assert!(
            !got.iter()
                .any(|(o, _, _)| o == "AuthorizationPolicy shop/writers")
        );
    }

    /// examples/policy/ reads cleanly and every reference in it resolves.
    #[test]
    fn the_policy_examples_resolve() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy");
        let mut store = Store::new(&dir);
        store.refresh();
        let (objects, errors) = store.objects();
        assert!(errors.is_empty(), "{errors:?}");
        let m = Model::build(&objects, &[]);
        assert_eq!((m.authz_policies.len(), m.request_authns.len()), (4, 1));
        assert_eq!(policy_errors(&m, |_| None), vec![]);
        assert!(
            m.namespaces["payments"].default_authz == Some(v1::DefaultAuthz::Deny),
            "payments denies by default"
        );
    }
}
