//! A Service port's HTTP routes, compiled once per snapshot: regexes built,
//! rules in precedence order, so matching a request is a scan to the first
//! rule that fits.

use std::net::SocketAddr;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};
use regex::Regex;
use weft_api::v1;

/// What in a rule could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("regex `{pattern}`: {source}")]
    Regex {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("method `{0}` is not an HTTP method")]
    Method(String),
    #[error("backend address `{0}` is not IP:PORT")]
    Backend(String),
    #[error("header `{0}` is not a valid HTTP header")]
    Header(String),
}

#[derive(Debug)]
enum Value {
    Exact(String),
    Regex(Regex),
}

impl Value {
    fn new(v: &v1::ValueMatch) -> Result<Self, RouteError> {
        if v.regex {
            anchored(&v.value).map(Value::Regex)
        } else {
            Ok(Value::Exact(v.value.clone()))
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Value::Exact(v) => v == s,
            Value::Regex(r) => r.is_match(s),
        }
    }
}

/// Anchored: a Gateway API regex must match the whole value.
fn anchored(pattern: &str) -> Result<Regex, RouteError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|source| RouteError::Regex {
        pattern: pattern.to_string(),
        source,
    })
}

#[derive(Debug)]
enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            // Element-wise: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
            PathMatch::Prefix(p) => {
                let p = p.trim_end_matches('/');
                p.is_empty()
                    || path == p
                    || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/'))
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Match {
    path: PathMatch,
    headers: Vec<(String, Value)>,
    query: Vec<(String, Value)>,
    method: Option<Method>,
}

impl Match {
    pub(crate) fn new(m: &v1::RouteMatch) -> Result<Self, RouteError> {
        use v1::route_match::PathKind;
        let path = match PathKind::try_from(m.path_kind).unwrap_or(PathKind::Prefix) {
            PathKind::Exact => PathMatch::Exact(m.path.clone()),
            PathKind::Prefix => PathMatch::Prefix(m.path.clone()),
            PathKind::Regex => PathMatch::Regex(anchored(&m.path)?),
        };
        let values = |vs: &[v1::ValueMatch]| -> Result<Vec<(String, Value)>, RouteError> {
            vs.iter()
                .map(|v| Ok((v.name.clone(), Value::new(v)?)))
                .collect()
        };
        Ok(Match {
            path,
            headers: values(&m.headers)?,
            query: values(&m.query_params)?,
            method: if m.method.is_empty() {
                None
            } else {
                Some(
                    Method::from_bytes(m.method.as_bytes())
                        .map_err(|_| RouteError::Method(m.method.clone()))?,
                )
            },
        })
    }

    fn matches(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        self.matches_parts(method, uri.path(), uri.query(), headers)
    }

    /// The match on a request's parts (`path` as matched, `query` raw).
    pub(crate) fn matches_parts(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) || !self.path.matches(path) {
            return false;
        }
        let header_ok = self.headers.iter().all(|(name, v)| {
            headers
                .get_all(name.as_str())
                .iter()
                .any(|h| h.to_str().is_ok_and(|s| v.matches(s)))
        });
        let query = query.unwrap_or_default();
        let query_ok = self.query.iter().all(|(name, v)| {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                .find(|(k, _)| k == name)
                .is_some_and(|(_, val)| v.matches(val))
        });
        header_ok && query_ok
    }
}

/// Header changes, compiled once: names and values checked when the
/// snapshot is applied, not per request.
#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    fn new(mods: &[v1::HeaderModifier]) -> Result<Self, RouteError> {
        let mut ops = HeaderOps::default();
        let pair = |h: &v1::Header| -> Result<(HeaderName, HeaderValue), RouteError> {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| RouteError::Header(h.name.clone()))?;
            let value = HeaderValue::from_str(&h.value)
                .map_err(|_| RouteError::Header(format!("{}: {}", h.name, h.value)))?;
            Ok((name, value))
        };
        for m in mods {
            for h in &m.set {
                ops.set.push(pair(h)?);
            }
            for h in &m.add {
                ops.add.push(pair(h)?);
            }
            for n in &m.remove {
                ops.remove.push(
                    HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| RouteError::Header(n.clone()))?,
                );
            }
        }
        Ok(ops)
    }

    /// Set replaces every value, add appends one, remove drops them all.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

/// A copy of requests sent to another Service, its answer discarded.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub address: SocketAddr,
    /// `name.namespace:port`, for logs.
    pub name: String,
    numerator: u32,
    denominator: u32,
}

impl Mirror {
    fn new(m: &v1::Mirror) -> Result<Self, RouteError> {
        Ok(Mirror {
            address: m
                .address
                .parse()
                .map_err(|_| RouteError::Backend(m.address.clone()))?,
            name: m.name.clone(),
            numerator: m.numerator,
            denominator: m.denominator,
        })
    }

    /// Whether this request is one of the share copied.
    pub fn sampled(&self) -> bool {
        match (self.numerator, self.denominator) {
            (_, 0) => true,
            (n, d) if n >= d => true,
            (n, d) => rand::random_range(0..d) < n,
        }
    }
}

/// The filters of a rule or of one backend.
#[derive(Debug, Default, Clone)]
pub struct Filters {
    pub request: HeaderOps,
    pub response: HeaderOps,
    pub mirrors: Vec<Mirror>,
}

impl Filters {
    fn new(
        request: &[v1::HeaderModifier],
        response: &[v1::HeaderModifier],
        mirrors: &[v1::Mirror],
    ) -> Result<Self, RouteError> {
        Ok(Filters {
            request: HeaderOps::new(request)?,
            response: HeaderOps::new(response)?,
            mirrors: mirrors.iter().map(Mirror::new).collect::<Result<_, _>>()?,
        })
    }
}

/// Where a matched request goes (one of a weighted split).
#[derive(Debug, Clone)]
pub struct Backend {
    /// None when the backend cannot be used: its share gets 500.
    pub address: Option<SocketAddr>,
    /// Why it cannot be used.
    pub invalid: Option<String>,
    pub weight: u32,
    pub filters: Filters,
    /// This backend's own redirect, rewrite and CORS (the rule's come first).
    pub redirect: Option<v1::Redirect>,
    pub rewrite: Option<v1::Rewrite>,
    pub cors: Option<crate::http::cors::Cors>,
}

#[derive(Debug)]
pub struct Rule {
    /// `namespace/name` of the route.
    pub route: String,
    /// The rule's own name, if it has one.
    pub name: String,
    matches: Vec<Match>,
    pub backends: Vec<Backend>,
    total_weight: u64,
    pub filters: Filters,
    pub redirect: Option<v1::Redirect>,
    pub rewrite: Option<v1::Rewrite>,
    pub cors: Option<crate::http::cors::Cors>,
    /// Why the rule cannot be served as written: its requests get 500.
    pub invalid: Option<String>,
    /// A fault injected into a share of the rule's requests.
    pub fault: Option<crate::http::fault::Fault>,
    /// The path prefix this rule matched on, for prefix rewrites.
    pub prefix: Option<String>,
    pub timeouts: Option<v1::Timeouts>,
    pub retry: Option<v1::RetryPolicy>,
}

fn reason(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl Rule {
    pub fn new(r: &v1::RouteRule) -> Result<Self, RouteError> {
        let backends: Vec<Backend> = r
            .backends
            .iter()
            .map(|b| {
                let invalid = reason(&b.invalid);
                let address = match invalid {
                    Some(_) => None,
                    None => Some(
                        b.address
                            .parse()
                            .map_err(|_| RouteError::Backend(b.address.clone()))?,
                    ),
                };
                Ok(Backend {
                    address,
                    invalid,
                    weight: b.weight,
                    filters: Filters::new(
                        &b.request_header_modifiers,
                        &b.response_header_modifiers,
                        &b.mirrors,
                    )?,
                    redirect: b.redirect.clone().filter(|r| r.enabled),
                    rewrite: b.rewrite.clone().filter(|r| r.enabled),
                    cors: b
                        .cors
                        .as_ref()
                        .filter(|c| c.enabled)
                        .map(crate::http::cors::Cors::new),
                })
            })
            .collect::<Result<_, RouteError>>()?;
        let prefix = r.matches.first().and_then(|m| {
            (m.path_kind == v1::route_match::PathKind::Prefix as i32).then(|| m.path.clone())
        });
        Ok(Rule {
            route: r.route.clone(),
            name: r.rule_name.clone(),
            matches: r.matches.iter().map(Match::new).collect::<Result<_, _>>()?,
            total_weight: backends.iter().map(|b| u64::from(b.weight)).sum(),
            backends,
            filters: Filters::new(
                &r.request_header_modifiers,
                &r.response_header_modifiers,
                &r.mirrors,
            )?,
            redirect: r.redirect.clone().filter(|r| r.enabled),
            rewrite: r.rewrite.clone().filter(|r| r.enabled),
            cors: r
                .cors
                .as_ref()
                .filter(|c| c.enabled)
                .map(crate::http::cors::Cors::new),
            invalid: reason(&r.invalid),
            fault: r.fault.as_ref().map(crate::http::fault::Fault::new),
            prefix,
            timeouts: r.timeouts,
            retry: r.retry.clone(),
        })
    }

    fn matches(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(method, uri, headers))
    }

    /// A backend by weight; None when every weight is zero (or there are none).
    #[cfg(test)]
    fn pick_backend(&self) -> Option<&Backend> {
        self.pick_backend_index().and_then(|i| self.backends.get(i))
    }

    /// The index of a backend by weight.
    pub fn pick_backend_index(&self) -> Option<usize> {
        if self.total_weight == 0 {
            return None;
        }
        let mut n = rand::random_range(0..self.total_weight);
        for (i, b) in self.backends.iter().enumerate() {
            let w = u64::from(b.weight);
            if n < w {
                return Some(i);
            }
            n -= w;
        }
        None
    }
}

/// A Service port's rules, in precedence order.
#[derive(Debug, Default)]
pub struct Routes {
    rules: Vec<Rule>,
}

impl Routes {
    /// The rules a client in `namespace` follows: the consumer routes its
    /// namespace has for this Service, if any; otherwise the producer
    /// routes (GEP-1294). Another namespace's consumer routes never apply.
    pub fn new(rules: &[v1::RouteRule], namespace: &str) -> Result<Self, RouteError> {
        let consumer = rules
            .iter()
            .any(|r| !r.consumer_namespace.is_empty() && r.consumer_namespace == namespace);
        let scope = if consumer { namespace } else { "" };
        Ok(Routes {
            rules: rules
                .iter()
                .filter(|r| r.consumer_namespace == scope)
                .map(Rule::new)
                .collect::<Result<_, _>>()?,
        })
    }

    #[cfg(test)]
    fn new_for_test(rules: &[v1::RouteRule]) -> Result<Self, RouteError> {
        Self::new(rules, "default")
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule that matches.
    #[cfg(test)]
    fn find(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(method, uri, headers))
    }

    /// The index of the first rule that matches.
    pub fn position(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<usize> {
        self.rules
            .iter()
            .position(|r| r.matches(method, uri, headers))
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        path_kind: v1::route_match::PathKind,
        path: &str,
        headers: Vec<v1::ValueMatch>,
        backends: &[(&str, u32)],
    ) -> v1::RouteRule {
        v1::RouteRule {
            route: "default/r".into(),
            matches: vec![v1::RouteMatch {
                path_kind: path_kind as i32,
                path: path.into(),
                headers,
                ..Default::default()
            }],
            backends: backends
                .iter()
                .map(|(a, w)| v1::Backend {
                    address: (*a).into(),
                    name: (*a).into(),
                    weight: *w,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> (Method, Uri, HeaderMap) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        (Method::GET, path.parse().unwrap(), h)
    }

    #[test]
    fn header_match_then_prefix() {
        use v1::route_match::PathKind;
        let routes = Routes::new_for_test(&[
            rule(
                PathKind::Prefix,
                "/",
                vec![v1::ValueMatch {
                    name: "x-version".into(),
                    value: "v2".into(),
                    regex: false,
                }],
                &[("198.19.0.2:80", 1)],
            ),
            rule(
                PathKind::Prefix,
                "/",
                vec![],
                &[("198.19.0.1:80", 9), ("198.19.0.2:80", 1)],
            ),
        ])
        .unwrap();
        let (m, u, h) = req("/x", &[("x-version", "v2")]);
        assert_eq!(routes.find(&m, &u, &h).unwrap().backends.len(), 1);
        let (m, u, h) = req("/x", &[]);
        let r = routes.find(&m, &u, &h).unwrap();
        let mut counts = [0u32; 2];
        for _ in 0..10_000 {
            let b = r.pick_backend().unwrap();
            counts[usize::from(b.address.unwrap().ip().to_string().ends_with(".2"))] += 1;
        }
        assert!((8800..=9200).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let p = PathMatch::Prefix("/foo".into());
        assert!(p.matches("/foo") && p.matches("/foo/bar"));
        assert!(!p.matches("/foobar"));
        assert!(PathMatch::Prefix("/".into()).matches("/anything"));
    }

    #[test]
    fn regexes_are_anchored_and_bad_ones_are_refused() {
        use v1::route_match::PathKind;
        let routes = Routes::new_for_test(&[rule(
            PathKind::Regex,
            "/v[0-9]+/.*",
            vec![],
            &[("198.19.0.1:80", 1)],
        )])
        .unwrap();
        let (m, u, h) = req("/v2/items", &[]);
        assert!(routes.find(&m, &u, &h).is_some());
        let (m, u, h) = req("/api/v2/items", &[]);
        assert!(routes.find(&m, &u, &h).is_none());
        assert!(Routes::new_for_test(&[rule(PathKind::Regex, "/(unclosed", vec![], &[])]).is_err());
    }

    #[test]
    fn consumer_routes_replace_producer_routes_for_their_namespace_only() {
        use v1::route_match::PathKind;
        let producer = rule(PathKind::Prefix, "/", vec![], &[("198.19.0.1:80", 1)]);
        let mut consumer = rule(PathKind::Prefix, "/", vec![], &[("198.19.0.2:80", 1)]);
        consumer.consumer_namespace = "shop".into();
        let mut other = rule(PathKind::Prefix, "/", vec![], &[("198.19.0.3:80", 1)]);
        other.consumer_namespace = "billing".into();
        let all = [consumer, other, producer];
        let to = |ns: &str| -> Vec<String> {
            Routes::new(&all, ns)
                .unwrap()
                .rules()
                .iter()
                .map(|r| r.backends[0].address.unwrap().to_string())
                .collect()
        };
        assert_eq!(to("shop"), ["198.19.0.2:80"]);
        assert_eq!(to("billing"), ["198.19.0.3:80"]);
        assert_eq!(to("default"), ["198.19.0.1:80"]);
        // Without producer routes, other namespaces see no routes at all.
        assert!(Routes::new(&all[..2], "default").unwrap().is_empty());
    }

    #[test]
    fn an_invalid_backend_keeps_its_share() {
        use v1::route_match::PathKind;
        let mut r = rule(
            PathKind::Prefix,
            "/",
            vec![],
            &[("198.19.0.1:80", 1), ("", 1), ("198.19.0.3:80", 0)],
        );
        r.backends[1].invalid = "Service default/missing does not exist".into();
        let routes = Routes::new_for_test(&[r]).unwrap();
        let rule = &routes.rules()[0];
        let mut invalid = 0;
        for _ in 0..10_000 {
            let b = &rule.backends[rule.pick_backend_index().unwrap()];
            assert_ne!(b.weight, 0, "a zero weight backend was picked");
            invalid += usize::from(b.invalid.is_some());
        }
        assert!((4_700..=5_300).contains(&invalid), "{invalid}");
    }
}
