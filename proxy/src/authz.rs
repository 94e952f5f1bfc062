//! Authorization at the server-side sidecar: the policies of one pod port,
//! compiled once per snapshot, and the decision for one request (HTTP) or
//! one connection (opaque TCP).
//!
//! The order is Istio's: a matching DENY policy denies; AUDIT policies only
//! mark; once any ALLOW policy targets the port, a request no ALLOW rule
//! matches is denied; with none, the port's default decides (`allow`,
//! `all-authenticated`, `deny`).
//!
//! A connection (TCP) has no method, path or headers: an ALLOW rule that
//! asks for them never matches one, and a DENY rule's HTTP conditions are
//! left out, so it matches more connections rather than fewer (failing
//! closed both ways).

use http::{HeaderMap, Method};
use weft_api::SpiffeId;

/// What a port does when no policy decides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefaultAuthz {
    #[default]
    Allow,
    AllAuthenticated,
    Deny,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Audit,
}

/// One kind of caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Identity(SpiffeId),
    /// (namespace, ServiceAccount) in the port's trust domain.
    ServiceAccount(String, String),
    Namespace(String),
    Authenticated,
    Unauthenticated,
}

impl Source {
    fn matches(&self, peer: Option<&SpiffeId>, trust_domain: &str) -> bool {
        match (self, peer) {
            (Source::Unauthenticated, None) => true,
            (Source::Unauthenticated, Some(_)) | (_, None) => false,
            (Source::Authenticated, Some(_)) => true,
            (Source::Identity(id), Some(p)) => id == p,
            // Another trust domain's `ns/sa` is another workload.
            (Source::ServiceAccount(ns, sa), Some(p)) => {
                p.trust_domain() == trust_domain && p.namespace() == ns && p.service_account() == sa
            }
            (Source::Namespace(ns), Some(p)) => {
                p.trust_domain() == trust_domain && p.namespace() == ns
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathRule {
    Exact(String),
    /// Whole segments: `/a` matches `/a` and `/a/b`, not `/ab`.
    Prefix(String),
}

impl PathRule {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathRule::Exact(p) => p == path,
            PathRule::Prefix(p) => {
                let p = p.trim_end_matches('/');
                p.is_empty()
                    || path == p
                    || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/'))
            }
        }
    }
}

/// What is called: every list that is not empty must have a match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Operation {
    pub methods: Vec<Method>,
    pub paths: Vec<PathRule>,
    pub headers: Vec<(http::HeaderName, String)>,
}

impl Operation {
    fn matches(&self, req: &Http<'_>) -> bool {
        (self.methods.is_empty() || self.methods.contains(req.method))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(req.path)))
            && self.headers.iter().all(|(name, value)| {
                req.headers
                    .get_all(name)
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| v == value))
            })
    }

    fn is_empty(&self) -> bool {
        self.methods.is_empty() && self.paths.is_empty() && self.headers.is_empty()
    }
}

/// A claim of a validated end-user token: any of the values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRule {
    /// Dotted path into the claims.
    pub path: Vec<String>,
    pub values: Vec<String>,
}

impl ClaimRule {
    fn matches(&self, claims: &serde_json::Map<String, serde_json::Value>) -> bool {
        let name = self.path.last().map_or("", String::as_str);
        crate::authn::claim(claims, &self.path).is_some_and(|v| {
            crate::authn::claim_values(name, v)
                .iter()
                .any(|c| self.values.contains(c))
        })
    }
}

/// SHA-256 digests of the API keys a rule accepts.
pub type KeySet = std::sync::Arc<std::collections::HashSet<[u8; 32]>>;

/// Conditions on the end user (HTTP only): every one set must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndUser {
    /// A validated token is required, with these claims.
    pub jwt: Option<Vec<ClaimRule>>,
    /// This header carries a key of the set.
    pub api_key: Option<(http::HeaderName, KeySet)>,
}

impl EndUser {
    fn is_empty(&self) -> bool {
        self.jwt.is_none() && self.api_key.is_none()
    }

    fn matches(&self, req: &Http<'_>) -> bool {
        use sha2::{Digest, Sha256};
        let jwt = match &self.jwt {
            None => true,
            Some(claims) => req
                .jwt
                .is_some_and(|v| claims.iter().all(|c| c.matches(&v.claims))),
        };
        let key = match &self.api_key {
            None => true,
            Some((name, set)) => req.headers.get_all(name).iter().any(|v| {
                let d: [u8; 32] = Sha256::digest(v.as_bytes()).into();
                set.contains(&d)
            }),
        };
        jwt && key
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// Any one (none: any caller).
    pub from: Vec<Source>,
    pub to: Operation,
    pub when: EndUser,
}

impl Rule {
    /// `http` is None for a TCP connection.
    fn matches(
        &self,
        action: Action,
        peer: Option<&SpiffeId>,
        http: Option<&Http<'_>>,
        trust_domain: &str,
    ) -> bool {
        let caller =
            self.from.is_empty() || self.from.iter().any(|s| s.matches(peer, trust_domain));
        let call = match http {
            Some(req) => self.to.matches(req) && self.when.matches(req),
            None if self.to.is_empty() && self.when.is_empty() => true,
            // TCP: an ALLOW that asks about HTTP never matches; a DENY
            // ignores what it cannot see.
            None => action == Action::Deny,
        };
        caller && call
    }
}

/// The requests of one route rule (as this pod sees them): a policy on
/// the rule covers only those.
#[derive(Clone, Debug)]
pub struct RouteScope {
    source: weft_api::v1::RouteMatch,
    compiled: std::sync::Arc<crate::routes::Match>,
}

impl PartialEq for RouteScope {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for RouteScope {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `namespace/name`, for the error, the metrics and the log.
    pub name: String,
    pub action: Action,
    /// Any one (none: an ALLOW matches nothing, a DENY or AUDIT everything).
    pub rules: Vec<Rule>,
    /// Any one (none: every request and connection of the port).
    pub routes: Vec<RouteScope>,
}

impl Policy {
    /// Whether the policy covers this request: a route-scoped one covers
    /// the requests of its route, and no connection.
    fn covers(&self, http: Option<&Http<'_>>) -> bool {
        if self.routes.is_empty() {
            return true;
        }
        http.is_some_and(|h| {
            self.routes.iter().any(|r| {
                r.compiled
                    .matches_parts(h.method, h.path, h.query, h.headers)
            })
        })
    }

    fn matches(&self, peer: Option<&SpiffeId>, http: Option<&Http<'_>>, td: &str) -> bool {
        if self.rules.is_empty() {
            return self.action != Action::Allow;
        }
        self.rules
            .iter()
            .any(|r| r.matches(self.action, peer, http, td))
    }
}

/// One HTTP request, as authorization sees it.
#[derive(Debug)]
pub struct Http<'a> {
    pub method: &'a Method,
    /// Normalised (no dot segments, no empty segments).
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// The raw query, for route matches.
    pub query: Option<&'a str>,
    /// The end user's validated token, if the request had one.
    pub jwt: Option<&'a crate::authn::Verified>,
}

/// Why a request or connection was refused (a closed list: a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// A DENY policy matched.
    DenyRule,
    /// ALLOW policies target the port and none matched.
    NoAllowRule,
    /// The port's default is `all-authenticated` and the caller has no identity.
    Unauthenticated,
    /// The port's default is `deny`.
    DefaultDeny,
}

impl DenyReason {
    pub fn label(self) -> &'static str {
        match self {
            DenyReason::DenyRule => "deny-rule",
            DenyReason::NoAllowRule => "no-allow-rule",
            DenyReason::Unauthenticated => "unauthenticated",
            DenyReason::DefaultDeny => "default-deny",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; by this policy when one decided, and marked by an AUDIT one.
    Allow {
        policy: Option<String>,
        audit: Option<String>,
    },
    Deny {
        /// The policy that decided, or `default`.
        policy: String,
        reason: DenyReason,
    },
}

/// The policies of one pod port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortAuthz {
    pub default: DefaultAuthz,
    pub policies: Vec<Policy>,
    /// The mesh's trust domain (ServiceAccounts and namespaces are in it).
    pub trust_domain: String,
}

impl PortAuthz {
    /// The decision for a request (`http`) or a connection (None) from
    /// `peer` (None: no mesh identity).
    pub fn decide(&self, peer: Option<&SpiffeId>, http: Option<&Http<'_>>) -> Decision {
        let td = self.trust_domain.as_str();
        let of = |action: Action| {
            self.policies
                .iter()
                .filter(move |p| p.action == action && p.covers(http))
        };
        if let Some(p) = of(Action::Deny).find(|p| p.matches(peer, http, td)) {
            return Decision::Deny {
                policy: p.name.clone(),
                reason: DenyReason::DenyRule,
            };
        }
        let audit = of(Action::Audit)
            .find(|p| p.matches(peer, http, td))
            .map(|p| p.name.clone());
        let mut allows = of(Action::Allow).peekable();
        if let Some(first) = allows.peek().map(|p| p.name.clone()) {
            return match allows.find(|p| p.matches(peer, http, td)) {
                Some(p) => Decision::Allow {
                    policy: Some(p.name.clone()),
                    audit,
                },
                None => Decision::Deny {
                    policy: first,
                    reason: DenyReason::NoAllowRule,
                },
            };
        }
        let denied = |reason| Decision::Deny {
            policy: "default".into(),
            reason,
        };
        match (self.default, peer) {
            (DefaultAuthz::Deny, _) => denied(DenyReason::DefaultDeny),
            (DefaultAuthz::AllAuthenticated, None) => denied(DenyReason::Unauthenticated),
            _ => Decision::Allow {
                policy: None,
                audit,
            },
        }
    }
}

impl PortAuthz {
    /// The policies of one port from the snapshot (`policies` None: the
    /// port has none, only the default).
    pub fn from_snapshot(
        default: DefaultAuthz,
        policies: Option<&weft_api::v1::PortAuthz>,
        trust_domain: &str,
        key_sets: &std::collections::HashMap<String, KeySet>,
    ) -> PortAuthz {
        use weft_api::v1;
        let source = |s: &v1::AuthzSource| -> Option<Source> {
            use v1::authz_source::Kind;
            Some(match s.kind.as_ref()? {
                Kind::Identity(id) => Source::Identity(id.parse().ok()?),
                Kind::ServiceAccount(nsa) => {
                    let (ns, sa) = nsa.split_once('/')?;
                    Source::ServiceAccount(ns.into(), sa.into())
                }
                Kind::Namespace(ns) => Source::Namespace(ns.clone()),
                Kind::Authenticated(_) => Source::Authenticated,
                Kind::Unauthenticated(_) => Source::Unauthenticated,
            })
        };
        let rule = |r: &v1::AuthzRule, action: Action| -> Option<Rule> {
            // A rule the proxy cannot check: an ALLOW never matches; a
            // DENY matches everything it can see (the control plane already
            // dropped what it cannot check from DENY rules).
            if r.never {
                return None;
            }
            let from: Vec<Source> = r.from.iter().filter_map(source).collect();
            // A source the proxy cannot read narrows an ALLOW to nothing
            // and widens a DENY to everyone.
            if from.len() != r.from.len() && action == Action::Allow {
                return None;
            }
            let from = if from.len() != r.from.len() {
                Vec::new()
            } else {
                from
            };
            let when = EndUser {
                jwt: r.jwt.as_ref().map(|j| {
                    j.claims
                        .iter()
                        .map(|c| ClaimRule {
                            path: c.name.split('.').map(str::to_string).collect(),
                            values: c.values.clone(),
                        })
                        .collect()
                }),
                api_key: match &r.api_key {
                    None => None,
                    // A header name the proxy cannot read: an ALLOW
                    // matches nothing; a DENY ignores the condition.
                    Some(k) => match k.header.parse() {
                        Ok(h) => Some((h, key_sets.get(&k.set).cloned().unwrap_or_default())),
                        Err(_) if action == Action::Allow => return None,
                        Err(_) => None,
                    },
                },
            };
            Some(Rule {
                from,
                when,
                to: Operation {
                    methods: r
                        .methods
                        .iter()
                        .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                        .collect(),
                    paths: r
                        .paths
                        .iter()
                        .map(|p| {
                            if p.prefix {
                                PathRule::Prefix(p.value.clone())
                            } else {
                                PathRule::Exact(p.value.clone())
                            }
                        })
                        .collect(),
                    headers: r
                        .headers
                        .iter()
                        .filter_map(|h| Some((h.name.parse().ok()?, h.value.clone())))
                        .collect(),
                },
            })
        };
        let policies = policies
            .into_iter()
            .flat_map(|p| p.policies.iter())
            .map(|p| {
                let action = match v1::AuthzAction::try_from(p.action) {
                    Ok(v1::AuthzAction::Deny) => Action::Deny,
                    Ok(v1::AuthzAction::Audit) => Action::Audit,
                    _ => Action::Allow,
                };
                // An ALLOW whose every rule was dropped allows nothing, as
                // an empty rule list says; a DENY never loses a rule.
                let rules: Vec<Rule> = p.rules.iter().filter_map(|r| rule(r, action)).collect();
                // A route match the proxy cannot compile widens the policy
                // to the whole port (fails closed both ways).
                let routes = p
                    .routes
                    .iter()
                    .map(|m| {
                        Some(RouteScope {
                            source: m.clone(),
                            compiled: std::sync::Arc::new(crate::routes::Match::new(m).ok()?),
                        })
                    })
                    .collect::<Option<Vec<_>>>()
                    .unwrap_or_default();
                Policy {
                    name: p.name.clone(),
                    action,
                    rules,
                    routes,
                }
            })
            .collect();
        PortAuthz {
            default,
            policies,
            trust_domain: trust_domain.to_string(),
        }
    }
}

/// Decides with the current snapshot's policies, and counts.
#[derive(Clone, Debug, Default)]
pub struct Enforcer {
    /// None: no discovery, nothing to enforce.
    pub mesh: Option<crate::discovery::Mesh>,
    pub metrics: crate::telemetry::AuthzMetrics,
}

impl Enforcer {
    /// The decision for a request (`http`) or connection to `port`.
    pub fn decide(&self, port: u16, peer: Option<&SpiffeId>, http: Option<&Http<'_>>) -> Decision {
        let Some(mesh) = &self.mesh else {
            return Decision::Allow {
                policy: None,
                audit: None,
            };
        };
        let decision = mesh.load().authz(port).decide(peer, http);
        match &decision {
            Decision::Allow { policy, audit } => {
                if let Some(a) = audit {
                    self.metrics.decided("audit", a, "audit-rule");
                }
                match policy {
                    Some(p) => self.metrics.decided("allow", p, "allow-rule"),
                    None => self.metrics.decided("allow", "default", "default"),
                }
            }
            Decision::Deny { policy, reason } => {
                self.metrics.decided("deny", policy, reason.label())
            }
        }
        decision
    }
}

/// The path authorization matches: `.` and `..` segments resolved and
/// empty segments dropped, as the app's router would read it (so `/a/../admin`
/// cannot slip past a rule on `/admin`).
pub fn normalize(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut s = format!("/{}", out.join("/"));
    if path.ends_with('/') && s.len() > 1 {
        s.push('/');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "cluster.local";

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new(TD, ns, sa).unwrap()
    }

    fn policy(name: &str, action: Action, rules: Vec<Rule>) -> Policy {
        Policy {
            name: name.into(),
            action,
            rules,
            routes: vec![],
        }
    }

    fn from(s: Source) -> Rule {
        Rule {
            from: vec![s],
            to: Operation::default(),
            ..Default::default()
        }
    }

    fn port(default: DefaultAuthz, policies: Vec<Policy>) -> PortAuthz {
        PortAuthz {
            default,
            policies,
            trust_domain: TD.into(),
        }
    }

    fn get(path: &str) -> (Method, String, HeaderMap) {
        (Method::GET, path.into(), HeaderMap::new())
    }

    fn allowed(d: &Decision) -> bool {
        matches!(d, Decision::Allow { .. })
    }

    #[test]
    fn deny_wins_over_allow() {
        let a = port(
            DefaultAuthz::Allow,
            vec![
                policy(
                    "shop/allow",
                    Action::Allow,
                    vec![from(Source::Authenticated)],
                ),
                policy(
                    "shop/deny",
                    Action::Deny,
                    vec![from(Source::ServiceAccount("shop".into(), "bad".into()))],
                ),
            ],
        );
        assert_eq!(
            a.decide(Some(&id("shop", "bad")), None),
            Decision::Deny {
                policy: "shop/deny".into(),
                reason: DenyReason::DenyRule
            }
        );
        assert!(allowed(&a.decide(Some(&id("shop", "good")), None)));
    }

    #[test]
    fn with_an_allow_policy_what_no_rule_allows_is_denied() {
        let a = port(
            DefaultAuthz::Allow,
            vec![policy(
                "shop/only-checkout",
                Action::Allow,
                vec![from(Source::ServiceAccount(
                    "shop".into(),
                    "checkout".into(),
                ))],
            )],
        );
        assert!(allowed(&a.decide(Some(&id("shop", "checkout")), None)));
        assert_eq!(
            a.decide(Some(&id("shop", "web")), None),
            Decision::Deny {
                policy: "shop/only-checkout".into(),
                reason: DenyReason::NoAllowRule
            }
        );
        assert!(!allowed(&a.decide(None, None)));
        // An ALLOW policy without rules allows nothing; a DENY one denies all.
        let none = port(
            DefaultAuthz::Allow,
            vec![policy("p", Action::Allow, vec![])],
        );
        assert!(!allowed(&none.decide(Some(&id("shop", "x")), None)));
        let all = port(DefaultAuthz::Allow, vec![policy("p", Action::Deny, vec![])]);
        assert!(!allowed(&all.decide(Some(&id("shop", "x")), None)));
    }

    #[test]
    fn defaults_allow_all_authenticated_and_deny() {
        let peer = id("shop", "web");
        for (default, with_peer, without) in [
            (DefaultAuthz::Allow, true, true),
            (DefaultAuthz::AllAuthenticated, true, false),
            (DefaultAuthz::Deny, false, false),
        ] {
            let a = port(default, vec![]);
            assert_eq!(
                allowed(&a.decide(Some(&peer), None)),
                with_peer,
                "{default:?}"
            );
            assert_eq!(allowed(&a.decide(None, None)), without, "{default:?}");
        }
    }

    #[test]
    fn sources_match_identities_accounts_namespaces_and_authentication() {
        let peer = id("shop", "checkout");
        let foreign = SpiffeId::new("other.example", "shop", "checkout").unwrap();
        for (source, mine, theirs, nobody) in [
            (Source::Identity(peer.clone()), true, false, false),
            (
                Source::ServiceAccount("shop".into(), "checkout".into()),
                true,
                false,
                false,
            ),
            (Source::Namespace("shop".into()), true, false, false),
            (Source::Namespace("ops".into()), false, false, false),
            (Source::Authenticated, true, true, false),
            (Source::Unauthenticated, false, false, true),
        ] {
            assert_eq!(source.matches(Some(&peer), TD), mine, "{source:?}");
            assert_eq!(
                source.matches(Some(&foreign), TD),
                theirs,
                "{source:?} foreign"
            );
            assert_eq!(source.matches(None, TD), nobody, "{source:?} none");
        }
    }

    #[test]
    fn operations_match_methods_whole_segment_paths_and_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", "acme".parse().unwrap());
        let op = Operation {
            methods: vec![Method::POST],
            paths: vec![
                PathRule::Prefix("/orders".into()),
                PathRule::Exact("/x".into()),
            ],
            headers: vec![("x-tenant".parse().unwrap(), "acme".into())],
        };
        let req = |m: Method, p: &str, h: &HeaderMap| {
            op.matches(&Http {
                method: &m,
                path: p,
                headers: h,
                query: None,
                jwt: None,
            })
        };
        assert!(req(Method::POST, "/orders", &headers));
        assert!(req(Method::POST, "/orders/7", &headers));
        assert!(req(Method::POST, "/x", &headers));
        assert!(!req(Method::POST, "/ordersx", &headers));
        assert!(!req(Method::POST, "/x/y", &headers));
        assert!(!req(Method::GET, "/orders", &headers));
        assert!(!req(Method::POST, "/orders", &HeaderMap::new()));
    }

    #[test]
    fn audit_marks_and_never_decides() {
        let a = port(
            DefaultAuthz::Deny,
            vec![policy(
                "shop/watch",
                Action::Audit,
                vec![from(Source::Authenticated)],
            )],
        );
        let d = a.decide(Some(&id("shop", "web")), None);
        assert_eq!(
            d,
            Decision::Deny {
                policy: "default".into(),
                reason: DenyReason::DefaultDeny
            }
        );
        let a = port(DefaultAuthz::Allow, a.policies.clone());
        assert_eq!(
            a.decide(Some(&id("shop", "web")), None),
            Decision::Allow {
                policy: None,
                audit: Some("shop/watch".into())
            }
        );
    }

    #[test]
    fn connections_fail_closed_on_http_conditions() {
        let posts = Operation {
            methods: vec![Method::POST],
            ..Operation::default()
        };
        let rule = Rule {
            from: vec![Source::Authenticated],
            to: posts,
            ..Default::default()
        };
        let peer = id("shop", "web");
        // An ALLOW about POSTs never allows a connection...
        let a = port(
            DefaultAuthz::Allow,
            vec![policy("p", Action::Allow, vec![rule.clone()])],
        );
        assert!(!allowed(&a.decide(Some(&peer), None)));
        // ...and a DENY about POSTs denies it.
        let d = port(
            DefaultAuthz::Allow,
            vec![policy("p", Action::Deny, vec![rule])],
        );
        assert!(!allowed(&d.decide(Some(&peer), None)));
        // Over HTTP, each matches what it says.
        let (m, p, h) = get("/");
        let http = Http {
            method: &m,
            path: &p,
            headers: &h,
            query: None,
            jwt: None,
        };
        assert!(!allowed(&a.decide(Some(&peer), Some(&http))));
        assert!(allowed(&d.decide(Some(&peer), Some(&http))));
    }

    #[test]
    fn end_user_rules_need_a_token_with_the_claims_or_a_listed_key() {
        use sha2::{Digest, Sha256};
        let jwt_rule = Rule {
            when: EndUser {
                jwt: Some(vec![ClaimRule {
                    path: vec!["realm".into(), "roles".into()],
                    values: vec!["admin".into()],
                }]),
                api_key: None,
            },
            ..Default::default()
        };
        let digest: [u8; 32] = Sha256::digest(b"s3cret").into();
        let key_rule = Rule {
            when: EndUser {
                jwt: None,
                api_key: Some((
                    "x-api-key".parse().unwrap(),
                    std::sync::Arc::new([digest].into()),
                )),
            },
            ..Default::default()
        };
        let a = port(
            DefaultAuthz::Allow,
            vec![policy("p", Action::Allow, vec![jwt_rule, key_rule])],
        );
        let verified = |claims: serde_json::Value| crate::authn::Verified {
            issuer: "i".into(),
            claims: std::sync::Arc::new(claims.as_object().unwrap().clone()),
        };
        let admin = verified(serde_json::json!({"realm": {"roles": ["dev", "admin"]}}));
        let dev = verified(serde_json::json!({"realm": {"roles": ["dev"]}}));
        let (m, p, mut h) = get("/");
        let with = |jwt: Option<&crate::authn::Verified>, h: &HeaderMap| {
            allowed(&a.decide(
                None,
                Some(&Http {
                    method: &m,
                    path: &p,
                    headers: h,
                    query: None,
                    jwt,
                }),
            ))
        };
        assert!(with(Some(&admin), &h));
        assert!(!with(Some(&dev), &h));
        assert!(!with(None, &h));
        h.insert("x-api-key", "wrong".parse().unwrap());
        assert!(!with(None, &h));
        h.insert("x-api-key", "s3cret".parse().unwrap());
        assert!(with(None, &h));
        // A connection carries neither: never allowed by such rules.
        assert!(!allowed(&a.decide(None, None)));
    }

    #[test]
    fn dot_segments_and_empty_segments_are_normalized() {
        for (raw, want) in [
            ("/a/../admin", "/admin"),
            ("/./admin", "/admin"),
            ("//admin", "/admin"),
            ("/a/b/../../admin/", "/admin/"),
            ("/../..", "/"),
            ("/orders", "/orders"),
            ("/", "/"),
        ] {
            assert_eq!(normalize(raw), want, "{raw}");
        }
    }
}
