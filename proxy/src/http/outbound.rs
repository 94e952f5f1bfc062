//! The outbound HTTP service: requests from the app are routed (HTTPRoute
//! rules, filters, weighted splits) and handed to the stack built for the
//! route and backend ([`super::stack`]); to a single meshed address they go
//! straight to its sidecar.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::{Service, ServiceExt};
use tracing::debug;
use weft_api::SpiffeId;
use weft_api::v1;

use super::detect::Detected;
use super::observe::{Observer, Routed, Scope};
use super::pool::PeerPool;
use super::send::{Sender, authority_of};
use super::server::{Client, Proto, Server};
use super::stack::{RouteStack, ServiceStacks, StackCache, StackParts};
use super::{
    Attempts, Body, BoxFuture, Failed, ProxyError, Served, boxed, full, headers, mirror, upgrade,
};
use crate::destination::{Plan, Target};
use crate::discovery::Mesh;
use crate::routes::{Mirror, Rule};
use crate::telemetry::RetryMetrics;
use crate::tls::Alpn;

#[derive(Debug)]
pub struct HttpOutbound {
    server: Arc<Server>,
    /// Mirrored requests in flight (past the cap, copies are dropped).
    mirrors: Arc<tokio::sync::Semaphore>,
    stacks: StackCache,
    parts: StackParts,
    observer: Arc<Observer>,
}

impl HttpOutbound {
    pub fn new(
        mesh: Option<Mesh>,
        pool: Arc<PeerPool>,
        idle_timeout: Duration,
        metrics: RetryMetrics,
        observer: Observer,
        server: Arc<Server>,
    ) -> Self {
        HttpOutbound {
            server,
            mirrors: Arc::new(tokio::sync::Semaphore::new(mirror::MAX_IN_FLIGHT)),
            stacks: StackCache::new(mesh),
            parts: StackParts {
                sender: Arc::new(Sender::new(pool, idle_timeout)),
                metrics,
            },
            observer: Arc::new(observer),
        }
    }

    /// Serves the app's HTTP connection until it closes.
    pub async fn serve<I>(
        self: Arc<Self>,
        io: I,
        plan: Plan,
        proto: Detected,
    ) -> Result<(), hyper::Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let server = match &plan.target {
            Target::Service(sp) => sp.name.clone(),
            Target::Direct(addr, _) => addr.to_string(),
        };
        let (observer, server_side) = (self.observer.clone(), self.server.clone());
        let route = RouteService {
            outbound: self,
            plan: Arc::new(plan),
        };
        let proto = match proto {
            Detected::Http2 => Proto::Http2,
            _ => Proto::Http1,
        };
        server_side
            .serve(
                io,
                proto,
                Client::App,
                route,
                Scope::Outbound { server },
                observer,
            )
            .await
    }

    async fn handle(&self, req: Request<Body>, plan: &Plan) -> Response<Body> {
        let version = req.version();
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let mut routed = Routed::default();
        let mut res = match self.proxy(req, plan, &mut routed).await {
            Ok(res) => res,
            Err(f) => {
                let e = &f.error;
                self.parts
                    .metrics
                    .error(&routed.service, &routed.route, e.reason());
                debug!(error = %e, reason = e.reason(), route = %routed.route, service = %routed.service, "answering for the upstream");
                let mut r = if grpc {
                    e.grpc_response(&routed.route, &routed.service)
                } else {
                    e.response(&routed.route, &routed.service)
                };
                if let Some(s) = f.served {
                    r.extensions_mut().insert(*s);
                }
                if f.attempts > 0 {
                    r.extensions_mut().insert(Attempts(f.attempts));
                }
                r
            }
        };
        // A 101's Connection/Upgrade headers are the handshake itself.
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            headers::strip_hop_by_hop(res.headers_mut());
        }
        *res.version_mut() = version;
        if let Target::Direct(addr, id) = &plan.target
            && res.extensions().get::<Served>().is_none()
        {
            res.extensions_mut().insert(Served {
                endpoint: *addr,
                identity: id.clone(),
            });
        }
        res.extensions_mut().insert(routed);
        res
    }

    async fn proxy(
        &self,
        mut req: Request<Body>,
        plan: &Plan,
        routed: &mut Routed,
    ) -> Result<Response<Body>, Failed> {
        let client_upgrade =
            upgrade::is_upgrade(req.method(), req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let upgrade_headers = upgrade::keep_headers(&parts.headers);
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::strip_reserved(&mut parts.headers);

        let sp = match &plan.target {
            Target::Direct(addr, id) => {
                if let Some(on_upgrade) = client_upgrade {
                    return self
                        .upgrade(*addr, id.clone(), parts, upgrade_headers, body, on_upgrade)
                        .await;
                }
                let res = self
                    .parts
                    .sender
                    .send(*addr, id.as_ref(), Request::from_parts(parts, body), None)
                    .await?;
                return Ok(res);
            }
            Target::Service(sp) => sp,
        };
        routed.service = sp.name.clone();
        let stacks = self.stacks_for(plan.dst, sp);
        let (backend, routed_to) = match &stacks.direct {
            Some(b) => (b, None),
            None => {
                let routes = &stacks.service.routes;
                let i = routes
                    .position(&parts.method, &parts.uri, &parts.headers)
                    .ok_or(ProxyError::NoRoute)?;
                let rule = &routes.rules()[i];
                routed.route = rule.route.clone();
                routed.rule = rule.name.clone();
                if let Some(why) = &rule.invalid {
                    return Err(ProxyError::InvalidRule(why.clone()).into());
                }
                if let Some(fault) = &rule.fault {
                    self.inject(fault, rule, &parts.headers, routed).await?;
                }
                if let Some(res) = rule
                    .cors
                    .as_ref()
                    .and_then(|c| c.preflight(&parts.method, &parts.headers))
                {
                    return Ok(res);
                }
                if let Some(r) = &rule.redirect {
                    let mut res = redirect(r, rule, &parts, plan.dst.port());
                    rule.filters.response.apply(res.headers_mut());
                    return Ok(res);
                }
                apply_rule_filters(rule, &mut parts)?;
                let b = rule.pick_backend_index().ok_or(ProxyError::NoBackend)?;
                let chosen = &rule.backends[b];
                if let Some(why) = &chosen.invalid {
                    return Err(ProxyError::InvalidBackend(why.clone()).into());
                }
                // The backend's own filters, for the requests it is chosen for.
                if let Some(res) = chosen
                    .cors
                    .as_ref()
                    .and_then(|c| c.preflight(&parts.method, &parts.headers))
                {
                    return Ok(res);
                }
                if let Some(r) = &chosen.redirect {
                    let mut res = redirect(r, rule, &parts, plan.dst.port());
                    chosen.filters.response.apply(res.headers_mut());
                    rule.filters.response.apply(res.headers_mut());
                    return Ok(res);
                }
                chosen.filters.request.apply(&mut parts.headers);
                if let Some(rw) = &chosen.rewrite {
                    rewrite(rw, rule, &mut parts)?;
                }
                let stack = stacks.rules[i][b].as_ref().ok_or(ProxyError::NoBackend)?;
                (stack, Some((rule, chosen)))
            }
        };
        if let Some(on_upgrade) = client_upgrade {
            let ep = backend
                .service
                .pick_request(None)
                .map_err(|why| ProxyError::unpicked(&backend.service.name, why))?;
            return self
                .upgrade(
                    ep.addr,
                    ep.identity.clone(),
                    parts,
                    upgrade_headers,
                    body,
                    on_upgrade,
                )
                .await;
        }
        let Some((rule, chosen)) = routed_to else {
            return call(&backend.stack, Request::from_parts(parts, body)).await;
        };
        let cors = rule.cors.as_ref().or(chosen.cors.as_ref());
        let origin = cors.and_then(|_| parts.headers.get(header::ORIGIN).cloned());
        let mirrors: Vec<&Mirror> = rule
            .filters
            .mirrors
            .iter()
            .chain(&chosen.filters.mirrors)
            .filter(|m| m.sampled())
            .collect();
        let body = if mirrors.is_empty() {
            body
        } else {
            self.mirror(&mirrors, &parts, body)
        };
        let mut res = call(&backend.stack, Request::from_parts(parts, body)).await?;
        chosen.filters.response.apply(res.headers_mut());
        rule.filters.response.apply(res.headers_mut());
        if let Some(c) = cors {
            c.decorate(origin.as_ref(), res.headers_mut());
        }
        Ok(res)
    }

    /// A rule's fault: the delay (outside the route's timeouts and retries,
    /// so it is neither cut short nor drawn again), then the abort, which
    /// answers at once without sending anything.
    async fn inject(
        &self,
        fault: &crate::http::fault::Fault,
        rule: &Rule,
        headers: &http::HeaderMap,
        routed: &mut Routed,
    ) -> Result<(), ProxyError> {
        let injected = fault.sample(headers);
        routed.fault = injected.kind();
        if let Some(delay) = injected.delay {
            self.parts.metrics.fault(&rule.route, "delay");
            tokio::time::sleep(delay).await;
        }
        if let Some(abort) = injected.abort {
            self.parts.metrics.fault(&rule.route, "abort");
            return Err(ProxyError::FaultInjected {
                fault: fault.name.clone(),
                abort,
            });
        }
        Ok(())
    }

    /// Sends a copy of the request to each mirror, fire and forget: the
    /// copies' answers are dropped, and a copy that cannot keep up with the
    /// request's body is cut off rather than slowing the request down.
    /// Returns the body to send on.
    fn mirror(&self, mirrors: &[&Mirror], parts: &http::request::Parts, body: Body) -> Body {
        let Some(stacks) = self.stacks.current() else {
            return body;
        };
        let mut copies = Vec::new();
        for m in mirrors {
            let Some(sp) = stacks.mesh.service(m.address) else {
                continue;
            };
            let Ok(ep) = sp.pick_request(None) else {
                debug!(mirror = %m.name, "mirror has no endpoint; copy dropped");
                continue;
            };
            let Ok(permit) = self.mirrors.clone().try_acquire_owned() else {
                debug!(mirror = %m.name, "too many mirrored requests in flight; copy dropped");
                continue;
            };
            copies.push((m.name.clone(), ep, permit));
        }
        if copies.is_empty() {
            return body;
        }
        let (body, tees) = mirror::tee(body, copies.len());
        for ((name, ep, permit), tee) in copies.into_iter().zip(tees) {
            let mut head = http::Request::builder()
                .method(parts.method.clone())
                .uri(parts.uri.clone())
                .version(parts.version);
            if let Some(h) = head.headers_mut() {
                h.clone_from(&parts.headers);
            }
            let Ok(req) = head.body(tee) else { continue };
            let sender = self.parts.sender.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let sent = tokio::time::timeout(
                    mirror::DEADLINE,
                    sender.send(ep.addr, ep.identity.as_ref(), req, None),
                )
                .await;
                match sent {
                    Ok(Ok(res)) => {
                        // Read the answer to its end so the connection is reused.
                        let _ = tokio::time::timeout(
                            mirror::DEADLINE,
                            http_body_util::BodyExt::collect(res.into_body()),
                        )
                        .await;
                    }
                    Ok(Err(e)) => debug!(mirror = %name, error = %e, "mirrored request failed"),
                    Err(_) => debug!(mirror = %name, "mirrored request timed out"),
                }
            });
        }
        body
    }

    /// The current stacks of the Service port at `vip`; a Service the
    /// snapshot no longer has is served as the connection first saw it.
    fn stacks_for(
        &self,
        vip: SocketAddr,
        sp: &Arc<crate::discovery::ServicePort>,
    ) -> Arc<ServiceStacks> {
        let current = self.stacks.current();
        if let Some(s) = current.as_ref().and_then(|s| s.service(vip, &self.parts)) {
            return s;
        }
        let empty = crate::discovery::MeshConfig::default();
        let mesh = current.as_ref().map_or(&empty, |s| s.mesh.as_ref());
        Arc::new(ServiceStacks::build(sp.clone(), mesh, &self.parts))
    }

    async fn upgrade(
        &self,
        addr: SocketAddr,
        identity: Option<SpiffeId>,
        mut parts: http::request::Parts,
        upgrade_headers: Vec<(http::header::HeaderName, HeaderValue)>,
        body: Body,
        on_upgrade: hyper::upgrade::OnUpgrade,
    ) -> Result<Response<Body>, Failed> {
        // A connection of its own, HTTP/1.1 end to end.
        for (n, v) in upgrade_headers {
            parts.headers.insert(n, v);
        }
        let authority = authority_of(&parts, addr);
        if parts.method != http::Method::CONNECT {
            let pq = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            parts.uri = Uri::from(pq);
        }
        parts.version = Version::HTTP_11;
        if !parts.headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(&authority)
        {
            parts.headers.insert(header::HOST, v);
        }
        let req = Request::from_parts(parts, body);
        let connector = self.parts.sender.pool().connector();
        let res = match &identity {
            Some(id) => {
                let tls = connector
                    .mtls(addr, id, Alpn::Http1)
                    .await
                    .map_err(ProxyError::from)?;
                upgrade::send(tls, req, on_upgrade).await?
            }
            None => {
                let tcp = connector.tcp(addr).await.map_err(ProxyError::from)?;
                upgrade::send(tcp, req, on_upgrade).await?
            }
        };
        let mut res = res.map(boxed);
        res.extensions_mut().insert(Served {
            endpoint: addr,
            identity,
        });
        Ok(res)
    }
}

/// Sends through a route's stack. (A plain function returning a boxed
/// future: rustc cannot prove the stack's future Send inside the async
/// caller.)
fn call(stack: &RouteStack, req: Request<Body>) -> BoxFuture<Result<Response<Body>, Failed>> {
    Box::pin(stack.clone().oneshot(req))
}

/// Routes one connection's requests: the layer between observing and the
/// route's stack.
#[derive(Clone, Debug)]
struct RouteService {
    outbound: Arc<HttpOutbound>,
    plan: Arc<Plan>,
}

impl Service<Request<Body>> for RouteService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (outbound, plan) = (self.outbound.clone(), self.plan.clone());
        Box::pin(async move { Ok(outbound.handle(req, &plan).await) })
    }
}

/// The path after a path modifier: a full replacement, or the matched
/// prefix swapped for another (None: no modifier, the path stays).
fn rewritten_path(
    path: &str,
    full: Option<&str>,
    prefix: Option<&str>,
    matched: Option<&str>,
) -> Option<String> {
    if let Some(full) = full {
        return Some(full.to_string());
    }
    let prefix = prefix?.trim_end_matches('/');
    let matched = matched.unwrap_or("/").trim_end_matches('/');
    let rest = path.strip_prefix(matched).unwrap_or(path);
    let joined = format!("{prefix}{rest}");
    Some(if joined.is_empty() {
        "/".into()
    } else if !joined.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    })
}

/// The rule's request filters: header changes, then the URL rewrite.
fn apply_rule_filters(rule: &Rule, parts: &mut http::request::Parts) -> Result<(), ProxyError> {
    rule.filters.request.apply(&mut parts.headers);
    match &rule.rewrite {
        Some(rw) => rewrite(rw, rule, parts),
        None => Ok(()),
    }
}

/// A URLRewrite: the Host, then the path (a prefix replaced is the one
/// `rule` matched on).
fn rewrite(
    rw: &v1::Rewrite,
    rule: &Rule,
    parts: &mut http::request::Parts,
) -> Result<(), ProxyError> {
    if !rw.hostname.is_empty() {
        parts.headers.insert(
            header::HOST,
            HeaderValue::from_str(&rw.hostname)
                .map_err(|e| ProxyError::BadRequest(e.to_string()))?,
        );
    }
    if let Some(path) = rewritten_path(
        parts.uri.path(),
        rw.path_full.as_deref(),
        rw.path_prefix.as_deref(),
        rule.prefix.as_deref(),
    ) {
        let pq = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut p = parts.uri.clone().into_parts();
        p.path_and_query = Some(
            pq.parse()
                .map_err(|_| ProxyError::BadRequest("rewritten path".into()))?,
        );
        parts.uri = Uri::from_parts(p).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    }
    Ok(())
}

/// The name in a Host header, without its port.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A RequestRedirect filter's answer. Unset parts come from the request:
/// its scheme (plain HTTP, inside the mesh), its Host's name, its path and
/// query. The port: the one set, else the scheme's own when the scheme is
/// set, else the Service port called; left out when it is the scheme's.
fn redirect(
    r: &v1::Redirect,
    rule: &Rule,
    parts: &http::request::Parts,
    service_port: u16,
) -> Response<Body> {
    let host_header = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.host())
        .unwrap_or_default();
    let request_host = host_name(host_header);
    let scheme = if r.scheme.is_empty() {
        "http"
    } else {
        r.scheme.as_str()
    };
    let host = if r.hostname.is_empty() {
        request_host
    } else {
        r.hostname.as_str()
    };
    let well_known = if scheme == "https" { 443 } else { 80 };
    let port = match (r.port, r.scheme.is_empty()) {
        (p, _) if p != 0 => p,
        (_, false) => well_known,
        (_, true) => u32::from(service_port),
    };
    let path = rewritten_path(
        parts.uri.path(),
        r.path_full.as_deref(),
        r.path_prefix.as_deref(),
        rule.prefix.as_deref(),
    )
    .unwrap_or_else(|| parts.uri.path().to_string());
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let location = if port == well_known {
        format!("{scheme}://{host}{path}{query}")
    } else {
        format!("{scheme}://{host}:{port}{path}{query}")
    };
    let mut res = Response::new(full(Vec::new()));
    *res.status_mut() = u16::try_from(r.status_code)
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .filter(StatusCode::is_redirection)
        .unwrap_or(StatusCode::FOUND);
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrites_keep_the_rest_of_the_path() {
        // The Gateway API's ReplacePrefixMatch table.
        for (path, matched, replacement, want) in [
            ("/api/v1/items", "/api/v1", "/v2", "/v2/items"),
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
            ("/anything", "/", "/x", "/x/anything"),
        ] {
            assert_eq!(
                rewritten_path(path, None, Some(replacement), Some(matched)).as_deref(),
                Some(want),
                "{path} with {matched} -> {replacement}"
            );
        }
        assert_eq!(
            rewritten_path("/x", Some("/fixed"), None, Some("/")).as_deref(),
            Some("/fixed")
        );
        assert_eq!(rewritten_path("/x", None, None, Some("/x")), None);
    }

    fn redirect_for(
        r: v1::Redirect,
        matched: &str,
        path: &str,
        host: &str,
        port: u16,
    ) -> (u16, String) {
        let rule = Rule::new(&v1::RouteRule {
            matches: vec![v1::RouteMatch {
                path: matched.into(),
                ..Default::default()
            }],
            redirect: Some(v1::Redirect { enabled: true, ..r }),
            ..Default::default()
        })
        .unwrap();
        let req = Request::get(path).header("host", host).body(()).unwrap();
        let (parts, ()) = req.into_parts();
        let res = redirect(rule.redirect.as_ref().unwrap(), &rule, &parts, port);
        (
            res.status().as_u16(),
            res.headers()[header::LOCATION]
                .to_str()
                .unwrap()
                .to_string(),
        )
    }

    #[test]
    fn redirects_keep_what_they_do_not_change() {
        let r = |scheme: &str, hostname: &str, port: u32, status: u32| v1::Redirect {
            scheme: scheme.into(),
            hostname: hostname.into(),
            port,
            status_code: status,
            ..Default::default()
        };
        // Only a host: the path (and query) are the request's.
        assert_eq!(
            redirect_for(r("", "example.org", 0, 302), "/a", "/a/b?q=1", "echo", 80),
            (302, "http://example.org/a/b?q=1".into())
        );
        for status in [301, 303, 307, 308] {
            assert_eq!(
                redirect_for(r("", "", 0, status), "/redirect", "/redirect", "echo", 80),
                (status as u16, "http://echo/redirect".into())
            );
        }
        // A scheme brings its own port; none keeps the Service port.
        assert_eq!(
            redirect_for(r("https", "", 0, 302), "/", "/scheme", "echo:8080", 8080),
            (302, "https://echo/scheme".into())
        );
        assert_eq!(
            redirect_for(r("", "", 0, 302), "/", "/p", "echo:8080", 8080),
            (302, "http://echo:8080/p".into())
        );
        assert_eq!(
            redirect_for(r("", "example.org", 8083, 302), "/", "/port", "echo", 80),
            (302, "http://example.org:8083/port".into())
        );
        assert_eq!(
            redirect_for(r("https", "", 443, 302), "/", "/s", "echo", 80),
            (302, "https://echo/s".into())
        );
        // Path modifiers.
        let prefix = v1::Redirect {
            path_prefix: Some("/replacement-prefix".into()),
            status_code: 302,
            ..Default::default()
        };
        assert_eq!(
            redirect_for(
                prefix,
                "/original-prefix",
                "/original-prefix/lemon",
                "echo",
                80
            ),
            (302, "http://echo/replacement-prefix/lemon".into())
        );
        let full_path = v1::Redirect {
            path_full: Some("/full-path-replacement".into()),
            status_code: 301,
            ..Default::default()
        };
        assert_eq!(
            redirect_for(full_path, "/full", "/full/path/original", "echo", 80),
            (301, "http://echo/full-path-replacement".into())
        );
    }
}
