//! Routes compiled for the proxies: every (route, rule, match) attached to
//! a Service port becomes one `RouteRule`, sorted by Gateway API precedence,
//! so a proxy just takes the first that matches.
//!
//! What a rule refers to is resolved here, once, for every proxy: a backend
//! that cannot be used (no such Service, a cross-namespace reference that no
//! ReferenceGrant allows, a kind that is not a Service) stays in the split
//! marked invalid, so that its share of requests gets 500 as the spec says,
//! and the same findings feed the route's status ([`diagnose`]).

use std::cmp::Ordering;

use gateway_api::experimental::httproutes::{
    HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs, HttpRouteRulesFilters,
    HttpRouteRulesMatches,
};
use weft_api::v1;

use super::model::{MeshRoute, Model, RouteKind, ServiceModel};

/// The serde name of a generated enum value (`PathPrefix`, `GET`, `301`).
fn enum_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A reference to a core Service (`group: ""`, `kind: Service`).
pub fn is_service_ref(group: Option<&str>, kind: Option<&str>) -> bool {
    kind == Some("Service") && group.is_none_or(|g| g.is_empty() || g == "core")
}

/// Whether a parentRef names this Service port: by `port`, or by
/// `sectionName` as the port's name; neither binds every port.
pub fn parent_binds(
    p: &HttpRouteParentRefs,
    route_ns: &str,
    svc: &ServiceModel,
    port: u16,
) -> bool {
    is_service_ref(p.group.as_deref(), p.kind.as_deref())
        && p.name == svc.name
        && p.namespace.as_deref().unwrap_or(route_ns) == svc.namespace
        && p.port.is_none_or(|pp| pp == i32::from(port))
        && p.section_name
            .as_deref()
            .is_none_or(|s| svc.ports.iter().any(|sp| sp.port == port && sp.name == s))
}

fn attaches(route: &MeshRoute, svc: &ServiceModel, port: u16) -> bool {
    let ns = route.namespace();
    route
        .route
        .spec
        .parent_refs
        .iter()
        .flatten()
        .any(|p| parent_binds(p, ns, svc, port))
}

/// Where one rule's requests land, for a policy on the rule: a backend
/// Service port, and the rule's matches as that backend sees the requests.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleScope {
    pub namespace: String,
    pub service: String,
    pub port: u16,
    pub matches: Vec<v1::RouteMatch>,
}

/// The backends of a route's rules (all, or the one named `section`), each
/// with the rule's matches rewritten as a URLRewrite rewrites the path, and
/// without header conditions on headers a filter changes: a policy scoped
/// this way never covers fewer requests than the route sends.
pub fn policy_scopes(model: &Model, route: &MeshRoute, section: Option<&str>) -> Vec<RuleScope> {
    let mut out: Vec<RuleScope> = Vec::new();
    for (i, rule) in route.route.spec.rules.iter().flatten().enumerate() {
        if section.is_some_and(|s| rule.name.as_deref() != Some(s)) {
            continue;
        }
        let matches: Vec<v1::RouteMatch> = match &rule.matches {
            Some(ms) if !ms.is_empty() => ms.iter().map(compile_match).collect(),
            _ => vec![v1::RouteMatch {
                path: "/".into(),
                ..Default::default()
            }],
        };
        for svc in &model.services {
            for sp in &svc.ports {
                if !attaches(route, svc, sp.port) {
                    continue;
                }
                let compiled = compile_rule(model, route, i, rule, sp.port).rule;
                for b in &compiled.backends {
                    let Some((name_ns, port)) = b.name.rsplit_once(':') else {
                        continue;
                    };
                    let Some((name, ns)) = name_ns.split_once('.') else {
                        continue;
                    };
                    let Ok(port) = port.parse::<u16>() else {
                        continue;
                    };
                    if !b.invalid.is_empty() {
                        continue;
                    }
                    let rewrite = b.rewrite.as_ref().or(compiled.rewrite.as_ref());
                    let changed: Vec<String> = compiled
                        .request_header_modifiers
                        .iter()
                        .chain(&b.request_header_modifiers)
                        .flat_map(|m| {
                            m.set
                                .iter()
                                .chain(&m.add)
                                .map(|h| h.name.to_ascii_lowercase())
                                .chain(m.remove.iter().map(|n| n.to_ascii_lowercase()))
                        })
                        .collect();
                    let seen: Vec<v1::RouteMatch> = matches
                        .iter()
                        .map(|m| as_backend_sees(m, rewrite, &changed))
                        .collect();
                    match out
                        .iter_mut()
                        .find(|s| s.namespace == ns && s.service == name && s.port == port)
                    {
                        Some(s) => {
                            for m in seen {
                                if !s.matches.contains(&m) {
                                    s.matches.push(m);
                                }
                            }
                        }
                        None => out.push(RuleScope {
                            namespace: ns.to_string(),
                            service: name.to_string(),
                            port,
                            matches: seen,
                        }),
                    }
                }
            }
        }
    }
    out
}

/// A match as the backend sees what it matched: the path rewritten, and
/// header conditions on changed headers dropped (which widens it).
fn as_backend_sees(
    m: &v1::RouteMatch,
    rewrite: Option<&v1::Rewrite>,
    changed: &[String],
) -> v1::RouteMatch {
    use v1::route_match::PathKind;
    let mut m = m.clone();
    m.headers.retain(|h| !changed.contains(&h.name));
    if let Some(r) = rewrite.filter(|r| r.enabled) {
        if let Some(full) = &r.path_full {
            // Every request of the match reaches the backend at one path.
            m.path_kind = PathKind::Exact as i32;
            m.path = full.clone();
        } else if let Some(prefix) = &r.path_prefix {
            if m.path_kind == PathKind::Prefix as i32 {
                m.path = if prefix.is_empty() {
                    "/".into()
                } else {
                    prefix.clone()
                };
            } else {
                // A rewritten regex or exact match: any path may result.
                m.path_kind = PathKind::Prefix as i32;
                m.path = "/".into();
            }
        }
    }
    m
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

/// Why a reference cannot be used, the Gateway API way: the condition
/// reason and a message naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    fn new(reason: &'static str, message: String) -> Self {
        Problem { reason, message }
    }
}

/// A backendRef's or a mirror's reference, as written.
struct Ref<'r> {
    group: Option<&'r str>,
    kind: Option<&'r str>,
    name: &'r str,
    namespace: Option<&'r str>,
    port: Option<i32>,
}

/// A backend (or mirror) reference resolved against the model.
struct Resolved<'a> {
    svc: &'a ServiceModel,
    port: u16,
}

/// Resolves a Service reference made from `route` (a backendRef or a
/// mirror's): the Service must exist, in the route's namespace or one whose
/// ReferenceGrant lets the route's kind in, and have the port.
fn resolve<'a>(
    model: &'a Model,
    route: &MeshRoute,
    at: &str,
    r: Ref<'_>,
    default_port: u16,
) -> Result<Resolved<'a>, Problem> {
    let Ref {
        group,
        kind,
        name,
        namespace,
        port,
    } = r;
    let kind = kind.unwrap_or("Service");
    if !is_service_ref(group, Some(kind)) {
        return Err(Problem::new(
            "InvalidKind",
            format!("{at}: only core Services can be backends, not {kind}"),
        ));
    }
    let route_ns = route.namespace();
    let ns = namespace.unwrap_or(route_ns);
    // A consumer route sending to the Service it attaches to widens no
    // access (GEP-1294); any other Service elsewhere needs its owner's grant.
    let own_parent = route.route.spec.parent_refs.iter().flatten().any(|p| {
        is_service_ref(p.group.as_deref(), p.kind.as_deref())
            && p.name == name
            && p.namespace.as_deref().unwrap_or(route_ns) == ns
    });
    if ns != route_ns && !own_parent && !model.grants(route_ns, route.kind.name(), ns, name) {
        return Err(Problem::new(
            "RefNotPermitted",
            format!(
                "{at}: Service {ns}/{name} is in another namespace and no ReferenceGrant in {ns} allows {}s from {route_ns}",
                route.kind.name()
            ),
        ));
    }
    let Some(svc) = model
        .services
        .iter()
        .find(|s| s.name == name && s.namespace == ns)
    else {
        return Err(Problem::new(
            "BackendNotFound",
            format!("{at}: Service {ns}/{name} does not exist"),
        ));
    };
    let port = port
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(default_port);
    if svc.vip.is_none() {
        return Err(Problem::new(
            "BackendNotFound",
            format!("{at}: Service {ns}/{name} has no cluster IP (headless)"),
        ));
    }
    // `diagnose` judges a route for no port in particular (default 0): a
    // backendRef without a port then takes the parent's, which exists.
    let checked = port != 0;
    if checked && !svc.ports.iter().any(|p| p.port == port) {
        return Err(Problem::new(
            "BackendNotFound",
            format!("{at}: Service {ns}/{name} has no port {port}"),
        ));
    }
    Ok(Resolved { svc, port })
}

fn address(r: &Resolved<'_>) -> (String, String) {
    let vip = r
        .svc
        .vip
        .map(|ip| std::net::SocketAddr::new(ip, r.port).to_string());
    (
        vip.unwrap_or_default(),
        format!("{}.{}:{}", r.svc.name, r.svc.namespace, r.port),
    )
}

fn headers<T: serde::Serialize>(list: &Option<Vec<T>>) -> Vec<v1::Header> {
    #[derive(serde::Deserialize)]
    struct H {
        name: String,
        value: String,
    }
    list.iter()
        .flatten()
        .filter_map(|h| serde_json::to_value(h).ok())
        .filter_map(|v| serde_json::from_value::<H>(v).ok())
        .map(|h| v1::Header {
            name: h.name,
            value: h.value,
        })
        .collect()
}

/// What one list of filters (a rule's, or a backendRef's) amounts to.
#[derive(Default)]
struct Filters {
    request: Vec<v1::HeaderModifier>,
    response: Vec<v1::HeaderModifier>,
    mirrors: Vec<v1::Mirror>,
    redirect: Option<v1::Redirect>,
    rewrite: Option<v1::Rewrite>,
    cors: Option<v1::Cors>,
    /// A FaultInjection (an ExtensionRef filter).
    fault: Option<v1::Fault>,
    /// A filter Weft cannot apply: the requests it would see get 500.
    unsupported: Option<Problem>,
    /// Mirrors whose Service cannot be used (dropped; reported).
    unresolved: Vec<Problem>,
}

fn compile_filters(
    model: &Model,
    route: &MeshRoute,
    at: &str,
    filters: &[HttpRouteRulesFilters],
    port: u16,
) -> Filters {
    let mut out = Filters::default();
    for (k, f) in filters.iter().enumerate() {
        let at = format!("{at}.filters[{k}]");
        let kind = enum_name(&f.r#type);
        match kind.as_str() {
            "RequestHeaderModifier" | "ResponseHeaderModifier" => {
                let m = if kind == "RequestHeaderModifier" {
                    f.request_header_modifier
                        .as_ref()
                        .map(|h| v1::HeaderModifier {
                            set: headers(&h.set),
                            add: headers(&h.add),
                            remove: h.remove.clone().unwrap_or_default(),
                        })
                } else {
                    f.response_header_modifier
                        .as_ref()
                        .map(|h| v1::HeaderModifier {
                            set: headers(&h.set),
                            add: headers(&h.add),
                            remove: h.remove.clone().unwrap_or_default(),
                        })
                };
                let Some(m) = m else {
                    out.unsupported = Some(missing(&at, &kind));
                    continue;
                };
                if kind == "RequestHeaderModifier" {
                    out.request.push(m);
                } else {
                    out.response.push(m);
                }
            }
            "RequestRedirect" => {
                let Some(r) = &f.request_redirect else {
                    out.unsupported = Some(missing(&at, &kind));
                    continue;
                };
                out.redirect = Some(v1::Redirect {
                    enabled: true,
                    scheme: r.scheme.as_ref().map(enum_name).unwrap_or_default(),
                    hostname: r.hostname.clone().unwrap_or_default(),
                    port: r.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                    path_full: r.path.as_ref().and_then(|p| p.replace_full_path.clone()),
                    path_prefix: r.path.as_ref().and_then(|p| p.replace_prefix_match.clone()),
                    status_code: r
                        .status_code
                        .and_then(|c| u32::try_from(c).ok())
                        .unwrap_or(302),
                });
            }
            "URLRewrite" => {
                let Some(r) = &f.url_rewrite else {
                    out.unsupported = Some(missing(&at, &kind));
                    continue;
                };
                out.rewrite = Some(v1::Rewrite {
                    enabled: true,
                    hostname: r.hostname.clone().unwrap_or_default(),
                    path_full: r.path.as_ref().and_then(|p| p.replace_full_path.clone()),
                    path_prefix: r.path.as_ref().and_then(|p| p.replace_prefix_match.clone()),
                });
            }
            "RequestMirror" => {
                let Some(m) = &f.request_mirror else {
                    out.unsupported = Some(missing(&at, &kind));
                    continue;
                };
                let b = &m.backend_ref;
                match resolve(
                    model,
                    route,
                    &format!("{at}.requestMirror.backendRef"),
                    Ref {
                        group: b.group.as_deref(),
                        kind: b.kind.as_deref(),
                        name: &b.name,
                        namespace: b.namespace.as_deref(),
                        port: b.port,
                    },
                    port,
                ) {
                    Ok(r) => {
                        let (address, name) = address(&r);
                        let (numerator, denominator) = match (&m.fraction, m.percent) {
                            (Some(f), _) => (
                                u32::try_from(f.numerator).unwrap_or(0),
                                f.denominator
                                    .and_then(|d| u32::try_from(d).ok())
                                    .unwrap_or(100),
                            ),
                            (None, Some(p)) => (u32::try_from(p).unwrap_or(0), 100),
                            (None, None) => (100, 100),
                        };
                        out.mirrors.push(v1::Mirror {
                            address,
                            name,
                            numerator,
                            denominator,
                        });
                    }
                    Err(p) => out.unresolved.push(p),
                }
            }
            "CORS" => {
                let Some(c) = &f.cors else {
                    out.unsupported = Some(missing(&at, &kind));
                    continue;
                };
                out.cors = Some(v1::Cors {
                    enabled: true,
                    allow_origins: c.allow_origins.clone().unwrap_or_default(),
                    allow_methods: c.allow_methods.clone().unwrap_or_default(),
                    allow_headers: c.allow_headers.clone().unwrap_or_default(),
                    expose_headers: c.expose_headers.clone().unwrap_or_default(),
                    allow_credentials: c.allow_credentials.unwrap_or(false),
                    max_age_seconds: c.max_age.and_then(|a| u32::try_from(a).ok()).unwrap_or(5),
                });
            }
            "ExtensionRef" => {
                let Some(r) = &f.extension_ref else {
                    out.unsupported = Some(missing(&at, &kind));
                    continue;
                };
                match fault(model, route, &format!("{at}.extensionRef"), r) {
                    Ok(_) if out.fault.is_some() => {
                        out.unsupported = Some(Problem::new(
                            "IncompatibleFilters",
                            format!("{at}: a rule applies one FaultInjection at most"),
                        ));
                    }
                    Ok(f) => out.fault = Some(f),
                    Err(p) => out.unsupported = Some(p),
                }
            }
            other => {
                out.unsupported = Some(Problem::new(
                    "UnsupportedValue",
                    format!("{at}.type: Weft does not support {other} filters"),
                ));
            }
        }
    }
    out
}

/// The FaultInjection an ExtensionRef filter names, in the route's
/// namespace, compiled; any other kind, or one that does not exist, is a
/// filter Weft cannot apply (its requests get 500, never skip the fault).
fn fault(
    model: &Model,
    route: &MeshRoute,
    at: &str,
    r: &gateway_api::experimental::httproutes::HttpRouteRulesFiltersExtensionRef,
) -> Result<v1::Fault, Problem> {
    use super::crds::{duration_ms, grpc_code};
    if r.group != "weft.dev" || r.kind != "FaultInjection" {
        return Err(Problem::new(
            "UnsupportedValue",
            format!(
                "{at}: Weft does not support ExtensionRef filters to {} in group `{}` (only FaultInjection in weft.dev)",
                r.kind, r.group
            ),
        ));
    }
    let ns = route.namespace();
    let Some(f) = model.faults.iter().find(|f| {
        f.metadata.namespace.as_deref().unwrap_or("default") == ns
            && f.metadata.name.as_deref() == Some(&r.name)
    }) else {
        return Err(Problem::new(
            "UnsupportedValue",
            format!("{at}: FaultInjection {ns}/{} does not exist", r.name),
        ));
    };
    // Parts per million: a percentage to a millionth.
    let ppm = |percent: f64| (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
    let s = &f.spec;
    Ok(v1::Fault {
        name: format!("{ns}/{}", r.name),
        delay_ms: s
            .delay
            .as_ref()
            .and_then(|d| duration_ms(&d.fixed_delay).ok())
            .unwrap_or(0),
        delay_ppm: s.delay.as_ref().map_or(0, |d| ppm(d.percent)),
        abort_http_status: s
            .abort
            .as_ref()
            .and_then(|a| a.http_status)
            .map_or(0, u32::from),
        abort_grpc_status: s
            .abort
            .as_ref()
            .and_then(|a| a.grpc_status.as_deref())
            .and_then(grpc_code),
        abort_ppm: s.abort.as_ref().map_or(0, |a| ppm(a.percent)),
        headers: s
            .headers
            .iter()
            .map(|h| v1::Header {
                name: h.name.to_ascii_lowercase(),
                value: h.value.clone(),
            })
            .collect(),
    })
}

fn missing(at: &str, kind: &str) -> Problem {
    Problem::new(
        "UnsupportedValue",
        format!("{at}: type {kind} without its {kind} settings"),
    )
}

/// A backendRef's filters, read as a rule's (the shapes are the same).
fn backend_filters(b: &HttpRouteRulesBackendRefs) -> Vec<HttpRouteRulesFilters> {
    b.filters
        .iter()
        .flatten()
        .filter_map(|f| serde_json::to_value(f).ok())
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}

/// One rule compiled, and what could not be resolved in it.
struct CompiledRule {
    rule: v1::RouteRule,
    problems: Vec<Problem>,
}

/// Filters and backends of one rule (shared by each of its matches).
fn compile_rule(
    model: &Model,
    route: &MeshRoute,
    i: usize,
    rule: &HttpRouteRules,
    port: u16,
) -> CompiledRule {
    let at = format!("spec.rules[{i}]");
    let mut problems = Vec::new();
    let filters = compile_filters(
        model,
        route,
        &at,
        rule.filters.as_deref().unwrap_or_default(),
        port,
    );
    problems.extend(filters.unresolved.iter().cloned());
    let mut backends = Vec::new();
    for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
        let at = format!("{at}.backendRefs[{j}]");
        let weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
        let mut backend = v1::Backend {
            weight,
            ..Default::default()
        };
        match resolve(
            model,
            route,
            &at,
            Ref {
                group: b.group.as_deref(),
                kind: b.kind.as_deref(),
                name: &b.name,
                namespace: b.namespace.as_deref(),
                port: b.port,
            },
            port,
        ) {
            Ok(r) => (backend.address, backend.name) = address(&r),
            Err(p) => {
                backend.invalid = p.message.clone();
                backend.name = b.name.clone();
                problems.push(p);
            }
        }
        let own = compile_filters(model, route, &at, &backend_filters(b), port);
        problems.extend(own.unresolved.iter().cloned());
        let incompatible = own.redirect.is_some() && own.rewrite.is_some();
        if let Some(p) = own
            .unsupported
            .clone()
            .or_else(|| {
                incompatible.then(|| {
                    Problem::new(
                        "IncompatibleFilters",
                        format!(
                            "{at}.filters: RequestRedirect and URLRewrite cannot be used together"
                        ),
                    )
                })
            })
            .or_else(|| {
                // A fault acts where the rule is matched, before a backend
                // is picked.
                own.fault.as_ref().map(|_| {
                    Problem::new(
                        "UnsupportedValue",
                        format!(
                            "{at}.filters: a FaultInjection goes on the rule, not on a backendRef"
                        ),
                    )
                })
            })
        {
            if backend.invalid.is_empty() {
                backend.invalid = p.message.clone();
            }
            problems.push(p);
        }
        backend.request_header_modifiers = own.request;
        backend.response_header_modifiers = own.response;
        backend.mirrors = own.mirrors;
        backend.redirect = own.redirect;
        backend.rewrite = own.rewrite;
        backend.cors = own.cors;
        backends.push(backend);
    }
    let ms = |v: &Option<String>| {
        v.as_deref()
            .and_then(|s| super::crds::duration_ms(s).ok())
            .unwrap_or(0)
    };
    let mut invalid = String::new();
    if let Some(p) = &filters.unsupported {
        invalid = p.message.clone();
        problems.push(p.clone());
    } else if filters.redirect.is_some() && filters.rewrite.is_some() {
        let p = Problem::new(
            "IncompatibleFilters",
            format!("{at}.filters: RequestRedirect and URLRewrite cannot be used together"),
        );
        invalid = p.message.clone();
        problems.push(p);
    }
    let route_ns = route.namespace();
    let rule = v1::RouteRule {
        route: format!("{route_ns}/{}", route.name()),
        rule_index: i as u32,
        rule_name: rule.name.clone().unwrap_or_default(),
        backends,
        timeouts: rule.timeouts.as_ref().map(|t| v1::Timeouts {
            request_ms: ms(&t.request),
            backend_request_ms: ms(&t.backend_request),
        }),
        // Gateway API counts retries; the proxy counts tries, the first included.
        retry: rule.retry.as_ref().map(|r| v1::RetryPolicy {
            attempts: r
                .attempts
                .and_then(|a| u32::try_from(a).ok())
                .map_or(0, |a| a + 1),
            backoff_ms: ms(&r.backoff),
            codes: r
                .codes
                .iter()
                .flatten()
                .filter_map(|c| u32::try_from(*c).ok())
                .collect(),
        }),
        request_header_modifiers: filters.request,
        response_header_modifiers: filters.response,
        mirrors: filters.mirrors,
        redirect: filters.redirect,
        rewrite: filters.rewrite,
        cors: filters.cors,
        fault: filters.fault,
        invalid,
        ..Default::default()
    };
    CompiledRule { rule, problems }
}

/// Gateway API precedence between two matches: exact path, then longer
/// prefix, then a method, then more header matches, then more query matches.
fn precedence(a: &v1::RouteMatch, b: &v1::RouteMatch) -> Ordering {
    use v1::route_match::PathKind;
    let rank =
        |m: &v1::RouteMatch| match PathKind::try_from(m.path_kind).unwrap_or(PathKind::Prefix) {
            PathKind::Exact => (0, 0),
            PathKind::Prefix => (1, usize::MAX - m.path.trim_end_matches('/').len()),
            PathKind::Regex => (2, usize::MAX - m.path.len()),
        };
    rank(a)
        .cmp(&rank(b))
        .then_with(|| a.method.is_empty().cmp(&b.method.is_empty()))
        .then_with(|| b.headers.len().cmp(&a.headers.len()))
        .then_with(|| b.query_params.len().cmp(&a.query_params.len()))
}

/// Whose route `route` is for `svc`: "" for a producer route (in the
/// Service's namespace), else the consumer namespace.
pub fn scope<'r>(route: &'r MeshRoute, svc: &ServiceModel) -> &'r str {
    if route.namespace() == svc.namespace {
        ""
    } else {
        route.namespace()
    }
}

/// The order between routes with equal matches: the oldest first, then by
/// namespace/name.
fn route_order(a: &MeshRoute, b: &MeshRoute) -> Ordering {
    let ts = |r: &MeshRoute| {
        r.route
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
    };
    ts(a)
        .cmp(&ts(b))
        .then_with(|| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())))
}

/// The rules for one Service port, in the order a proxy tries them. A
/// route in the Service's own namespace is a producer route, for every
/// client; one in another namespace is a consumer route, for that
/// namespace's clients only (`consumer_namespace`).
pub fn for_port(model: &Model, svc: &ServiceModel, port: u16) -> Vec<v1::RouteRule> {
    let mut routes: Vec<&MeshRoute> = model
        .routes
        .iter()
        .filter(|r| attaches(r, svc, port))
        .collect();
    // One kind per Service port and group of routes (the producer routes;
    // each namespace's consumer routes): GRPCRoutes win (GEP-1294).
    let grpc_scopes: Vec<&str> = routes
        .iter()
        .filter(|r| r.kind == RouteKind::Grpc)
        .map(|r| scope(r, svc))
        .collect();
    routes.retain(|r| r.kind == RouteKind::Grpc || !grpc_scopes.contains(&scope(r, svc)));
    routes.sort_by(|a, b| route_order(a, b));
    let mut out = Vec::new();
    for route in routes {
        let consumer = scope(route, svc).to_string();
        for (i, rule) in route.route.spec.rules.iter().flatten().enumerate() {
            let compiled = compile_rule(model, route, i, rule, port).rule;
            let matches = rule.matches.clone().unwrap_or_default();
            let matches = if matches.is_empty() {
                vec![HttpRouteRulesMatches::default()]
            } else {
                matches
            };
            for m in &matches {
                out.push(v1::RouteRule {
                    matches: vec![compile_match(m)],
                    consumer_namespace: consumer.clone(),
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

/// What a route's status says of it, for one of its parents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    /// `Accepted`: None when accepted.
    pub accepted: Option<Problem>,
    /// `ResolvedRefs`: every reference that could not be resolved.
    pub unresolved: Vec<Problem>,
}

/// The findings on `route`: references that do not resolve, filters that
/// cannot be applied. Parents are checked by the caller (they exist or not
/// in the cluster's view).
pub fn diagnose(model: &Model, route: &MeshRoute) -> Diagnosis {
    let mut unresolved = Vec::new();
    let mut accepted = None;
    for (i, rule) in route.route.spec.rules.iter().flatten().enumerate() {
        let c = compile_rule(model, route, i, rule, 0);
        for p in c.problems {
            let refs = matches!(
                p.reason,
                "BackendNotFound" | "RefNotPermitted" | "InvalidKind"
            );
            if refs {
                if !unresolved.contains(&p) {
                    unresolved.push(p);
                }
            } else if accepted.is_none() {
                accepted = Some(p);
            }
        }
    }
    Diagnosis {
        accepted,
        unresolved,
    }
}

/// The TrafficPolicy that applies to a Service port: a port-specific one
/// wins over one for the whole Service.
pub fn chosen_policy<'m>(
    model: &'m Model,
    svc: &ServiceModel,
    port: u16,
) -> Option<&'m super::crds::TrafficPolicy> {
    let targets = |p: &&super::crds::TrafficPolicy| {
        let t = &p.spec.target_ref;
        p.metadata.namespace.as_deref().unwrap_or("default") == svc.namespace && t.name == svc.name
    };
    model
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
        })
}

/// The TrafficPolicy for a Service port ([`chosen_policy`]), resolved with
/// defaults. Its `rateLimit` is not here: the server-side sidecars enforce
/// it (`super::ratelimit`), and a limit change then touches no Service.
pub fn policy(model: &Model, svc: &ServiceModel, port: u16) -> v1::TrafficPolicy {
    use super::crds::{duration_ms, grpc_code};
    let spec = chosen_policy(model, svc, port).map(|p| p.spec.clone());
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
            // Retries, as the Gateway API counts them; the proxy counts tries.
            .map(|r| v1::RetryPolicy {
                attempts: r.attempts.map_or(0, |a| a + 1),
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
        // Header names are matched case-insensitively; an unresolvable backend
        // keeps its share, marked invalid (its requests get 500).
        assert_eq!(rules[2].matches[0].headers[0].name, "x-canary");
        assert_eq!(rules[3].backends.len(), 2);
        assert!(rules[3].backends[1].invalid.contains("does not exist"));
        assert_eq!(
            (
                rules[3].backends[0].address.as_str(),
                rules[3].backends[0].weight
            ),
            ("198.19.0.2:80", 3)
        );
    }

    #[test]
    fn equal_matches_go_to_the_oldest_route_then_by_namespace_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 198.19.0.1\n  selector: {app: web}\n  ports: [{port: 80}]\n";
        let route = |name: &str, ns: &str, created: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\"}}\nspec:\n  parentRefs: [{{kind: Service, name: web, namespace: default}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /api}}}}]\n    backendRefs: [{{name: web, namespace: default, port: 80}}]\n---\n"
            )
        };
        let routes = [
            route("zeta", "default", "2026-01-02T00:00:00Z"),
            route("young", "default", "2026-06-01T00:00:00Z"),
            route("alpha", "default", "2026-01-02T00:00:00Z"),
            route("old", "default", "2025-01-01T00:00:00Z"),
        ]
        .concat();
        std::fs::write(dir.path().join("s.yaml"), svc).unwrap();
        std::fs::write(dir.path().join("r.yaml"), routes).unwrap();
        let mut store = Store::new(dir.path());
        store.refresh();
        let (objects, errors) = store.objects();
        assert!(errors.is_empty(), "{errors:?}");
        let model = Model::build(&objects, &[]);
        let web = &model.services[0];
        let order: Vec<String> = for_port(&model, web, 80)
            .into_iter()
            .map(|r| r.route)
            .collect();
        assert_eq!(
            order,
            [
                "default/old",
                "default/alpha",
                "default/zeta",
                "default/young"
            ]
        );
    }

    #[test]
    fn extension_refs_to_fault_injections_compile_and_anything_else_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = r#"apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 198.19.0.1, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: weft.dev/v1alpha1
kind: FaultInjection
metadata: {name: flaky}
spec:
  delay: {fixedDelay: 20ms, percent: 12.5}
  abort: {grpcStatus: UNAVAILABLE, percent: 0.0001}
  headers: [{name: X-Fault, value: me}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: Exact, value: /flaky}}]
    filters: [{type: ExtensionRef, extensionRef: {group: weft.dev, kind: FaultInjection, name: flaky}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: Exact, value: /missing}}]
    filters: [{type: ExtensionRef, extensionRef: {group: weft.dev, kind: FaultInjection, name: nope}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: Exact, value: /magic}}]
    filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Magic, name: m}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: Exact, value: /backend}}]
    backendRefs:
    - name: web
      port: 80
      filters: [{type: ExtensionRef, extensionRef: {group: weft.dev, kind: FaultInjection, name: flaky}}]
"#;
        std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
        let mut store = Store::new(dir.path());
        store.refresh();
        let (objects, errors) = store.objects();
        assert!(errors.is_empty(), "{errors:?}");
        let model = Model::build(&objects, &[]);
        let rules = for_port(&model, &model.services[0], 80);
        let by_path = |p: &str| {
            rules
                .iter()
                .find(|r| r.matches[0].path == p)
                .unwrap_or_else(|| panic!("{p}"))
        };
        let flaky = by_path("/flaky");
        assert!(flaky.invalid.is_empty(), "{flaky:?}");
        assert_eq!(
            flaky.fault,
            Some(v1::Fault {
                name: "default/flaky".into(),
                delay_ms: 20,
                delay_ppm: 125_000,
                abort_http_status: 0,
                abort_grpc_status: Some(14),
                abort_ppm: 1,
                headers: vec![v1::Header {
                    name: "x-fault".into(),
                    value: "me".into()
                }],
            })
        );
        // A missing FaultInjection, another kind: the rule is invalid (500),
        // the fault is never skipped; on a backendRef, that backend is.
        let missing = by_path("/missing");
        assert!(
            missing
                .invalid
                .contains("FaultInjection default/nope does not exist"),
            "{missing:?}"
        );
        assert!(by_path("/magic").invalid.contains("example.com"));
        let backend = by_path("/backend");
        assert!(backend.fault.is_none() && backend.invalid.is_empty());
        assert!(backend.backends[0].invalid.contains("not on a backendRef"));
        // The route's status names the first problem.
        let d = diagnose(&model, &model.routes[0]);
        let accepted = d.accepted.expect("not accepted");
        assert_eq!(accepted.reason, "UnsupportedValue");
        assert!(
            accepted
                .message
                .starts_with("spec.rules[1].filters[0].extensionRef"),
            "{accepted:?}"
        );
    }

    #[test]
    fn a_backend_without_a_port_resolves_in_status_as_in_the_data_path() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 198.19.0.1\n  selector: {app: web}\n  ports: [{port: 80}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{kind: Service, name: web, port: 80}]\n  rules: [{backendRefs: [{name: web}, {name: web, port: 81}]}]\n";
        std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
        let mut store = Store::new(dir.path());
        store.refresh();
        let (objects, errors) = store.objects();
        assert!(errors.is_empty(), "{errors:?}");
        let model = Model::build(&objects, &[]);
        let d = diagnose(&model, &model.routes[0]);
        // Only the backend naming a port the Service lacks is unresolved.
        assert_eq!(d.unresolved.len(), 1, "{d:?}");
        assert!(d.unresolved[0].message.contains("no port 81"), "{d:?}");
        let rules = for_port(&model, &model.services[0], 80);
        assert!(rules[0].backends[0].invalid.is_empty());
        assert!(!rules[0].backends[1].invalid.is_empty());
    }
}
