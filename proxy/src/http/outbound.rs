//! The outbound HTTP service: requests from the app are routed (HTTPRoute
//! rules, filters, weighted splits) and handed to the stack built for the
//! route and backend ([`super::stack`]); to a single meshed address they go
//! straight to its sidecar.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
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
use super::{Attempts, Body, BoxFuture, Failed, ProxyError, Served, boxed, full, headers, upgrade};
use crate::destination::{Plan, Target};
use crate::discovery::Mesh;
use crate::routes::Rule;
use crate::telemetry::RetryMetrics;
use crate::tls::Alpn;

#[derive(Debug)]
pub struct HttpOutbound {
    server: Arc<Server>,
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
                self.parts.metrics.error(e.reason());
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
        let backend = match &stacks.direct {
            Some(b) => b,
            None => {
                let routes = &stacks.service.routes;
                let i = routes
                    .position(&parts.method, &parts.uri, &parts.headers)
                    .ok_or(ProxyError::NoRoute)?;
                let rule = &routes.rules()[i];
                routed.route = rule.route.clone();
                if let Some(r) = &rule.redirect {
                    return Ok(redirect(r, rule, &parts));
                }
                apply_filters(rule, &mut parts)?;
                let b = rule.pick_backend_index().ok_or(ProxyError::NoBackend)?;
                stacks.rules[i][b].as_ref().ok_or(ProxyError::NoBackend)?
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
        call(&backend.stack, Request::from_parts(parts, body)).await
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

/// The path after a rule's filters: a full replacement, or the matched
/// prefix swapped for another.
fn rewritten_path(path: &str, full: &str, prefix: &str, matched: Option<&str>) -> Option<String> {
    if !full.is_empty() {
        return Some(full.to_string());
    }
    let matched = matched?.trim_end_matches('/');
    if prefix.is_empty() && matched.is_empty() {
        return None;
    }
    let rest = path.strip_prefix(matched).unwrap_or(path);
    let prefix = prefix.trim_end_matches('/');
    let joined = format!("{prefix}{rest}");
    Some(if joined.is_empty() {
        "/".into()
    } else {
        joined
    })
}

fn apply_filters(rule: &Rule, parts: &mut http::request::Parts) -> Result<(), ProxyError> {
    for m in &rule.header_modifiers {
        let name = |n: &str| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|e| ProxyError::BadRequest(e.to_string()))
        };
        let value =
            |v: &str| HeaderValue::from_str(v).map_err(|e| ProxyError::BadRequest(e.to_string()));
        for h in &m.set {
            parts.headers.insert(name(&h.name)?, value(&h.value)?);
        }
        for h in &m.add {
            parts.headers.append(name(&h.name)?, value(&h.value)?);
        }
        for n in &m.remove {
            parts.headers.remove(n.as_str());
        }
    }
    if let Some(rw) = &rule.rewrite {
        if !rw.hostname.is_empty() {
            parts.headers.insert(
                header::HOST,
                HeaderValue::from_str(&rw.hostname)
                    .map_err(|e| ProxyError::BadRequest(e.to_string()))?,
            );
        }
        if let Some(path) = rewritten_path(
            parts.uri.path(),
            &rw.path_full,
            &rw.path_prefix,
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
    }
    Ok(())
}

/// A RequestRedirect filter's answer.
fn redirect(r: &v1::Redirect, rule: &Rule, parts: &http::request::Parts) -> Response<Body> {
    let host_header = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let (host, port) = match host_header.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse::<u32>().ok()),
        None => (host_header.to_string(), None),
    };
    let scheme = if r.scheme.is_empty() {
        "http"
    } else {
        r.scheme.as_str()
    };
    let host = if r.hostname.is_empty() {
        host
    } else {
        r.hostname.clone()
    };
    let port = if r.port != 0 { Some(r.port) } else { port };
    let path = rewritten_path(
        parts.uri.path(),
        &r.path_full,
        &r.path_prefix,
        rule.prefix.as_deref(),
    )
    .unwrap_or_else(|| parts.uri.path().to_string());
    let default_port = if scheme == "https" { 443 } else { 80 };
    let location = match port {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}{path}"),
        _ => format!("{scheme}://{host}{path}"),
    };
    let mut res = Response::new(full(Vec::new()));
    *res.status_mut() = StatusCode::from_u16(r.status_code as u16).unwrap_or(StatusCode::FOUND);
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
        assert_eq!(
            rewritten_path("/api/v1/items", "", "/v2", Some("/api/v1")).as_deref(),
            Some("/v2/items")
        );
        assert_eq!(
            rewritten_path("/api", "", "/", Some("/api")).as_deref(),
            Some("/")
        );
        assert_eq!(
            rewritten_path("/x", "/fixed", "", Some("/")).as_deref(),
            Some("/fixed")
        );
        assert_eq!(rewritten_path("/x", "", "", Some("/")), None);
    }
}
