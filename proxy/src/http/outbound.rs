//! The outbound HTTP service: requests from the app are routed (HTTPRoute
//! rules, weighted splits), balanced over the chosen Service's endpoints by
//! latency, and sent to the endpoint's sidecar over the shared mTLS HTTP/2
//! connection, or in plaintext to an endpoint outside the mesh.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;
use weft_api::SpiffeId;
use weft_api::v1;

use super::PeerSlot;
use super::access_log::{AccessLog, Entry};
use super::bulkhead::BulkheadLayer;
use super::detect::Detected;
use super::endpoint::Endpoints;
use super::headers::{self, ORIG_PROTO};
use super::pool::{PeerPool, dial_tcp};
use super::retry::{self, OnRetry, RetryLayer, RetryPolicy};
use super::routes::Rule;
use super::timeout::TimeoutLayer;
use super::upgrade;
use super::{Body, ProxyError, boxed, full};
use crate::discovery::{Mesh, ServicePort};
use crate::telemetry::{Direction, HttpMetrics, RequestLabels, RetryMetrics};
use crate::tls::Alpn;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use std::time::Duration;
use tower::{ServiceBuilder, ServiceExt};
use weft_api::trace::{HopSpan, Tracing};

/// Where requests on one connection are headed.
#[derive(Clone, Debug)]
pub enum Target {
    /// A Service port: routes, splits, balancing.
    Service(Arc<ServicePort>),
    /// One address (a meshed pod, or an explicit-mode target); mTLS when an
    /// identity is expected there.
    Direct(SocketAddr, Option<SpiffeId>),
}

#[derive(Debug)]
pub struct HttpOutbound {
    mesh: Option<Mesh>,
    sender: Arc<Sender>,
    metrics: RetryMetrics,
    requests: HttpMetrics,
    access_log: Option<AccessLog>,
    tracing: Option<Arc<Tracing>>,
}

/// What the error response says about where a request was going.
#[derive(Debug, Default)]
struct ReqContext {
    route: String,
    service: String,
}

impl HttpOutbound {
    pub fn new(
        mesh: Option<Mesh>,
        pool: Arc<PeerPool>,
        idle_timeout: Duration,
        metrics: RetryMetrics,
        requests: HttpMetrics,
        access_log: Option<AccessLog>,
        tracing: Option<Arc<Tracing>>,
    ) -> Self {
        HttpOutbound {
            mesh,
            sender: Arc::new(Sender::new(pool, idle_timeout)),
            metrics,
            requests,
            access_log,
            tracing,
        }
    }

    /// Serves the app's HTTP connection until it closes.
    pub async fn serve<I>(
        self: Arc<Self>,
        io: I,
        target: Target,
        proto: Detected,
    ) -> Result<(), hyper::Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let svc = service_fn(move |req| {
            let (this, target) = (self.clone(), target.clone());
            async move { Ok::<_, Infallible>(this.handle(req, target).await) }
        });
        match proto {
            Detected::Http2 => {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), svc)
                    .await
            }
            _ => {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), svc)
                    .with_upgrades()
                    .await
            }
        }
    }

    async fn handle(&self, mut req: Request<Incoming>, target: Target) -> Response<Body> {
        let started = std::time::Instant::now();
        let peer = PeerSlot::default();
        if let Target::Direct(_, id) = &target {
            peer.set(id.as_ref());
        }
        req.extensions_mut().insert(peer.clone());
        let version = req.version();
        let method = req.method().to_string();
        let span = self.tracing.as_ref().map(|t| {
            let server = match &target {
                Target::Service(sp) => sp.name.clone(),
                Target::Direct(addr, _) => addr.to_string(),
            };
            let name = format!("{} {server}", req.method());
            let attrs = vec![
                KeyValue::new("http.request.method", req.method().to_string()),
                KeyValue::new("server.address", server),
                KeyValue::new("url.path", req.uri().path().to_string()),
            ];
            t.start_hop(req.headers_mut(), name, SpanKind::Client, attrs)
        });
        let logged = self.access_log.as_ref().map(|_| {
            let authority = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()))
                .unwrap_or_default()
                .to_string();
            (
                req.method().to_string(),
                authority,
                req.uri().path().to_string(),
            )
        });
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let mut ctx = ReqContext::default();
        let request_bytes = super::LateCounter::default();
        let req = req.map(|b| request_bytes.wrap(boxed(b)));
        let mut res = match self.proxy(req, target, &mut ctx).await {
            Ok(res) => res,
            Err(e) => {
                self.metrics.error(e.reason());
                debug!(error = %e, reason = e.reason(), route = %ctx.route, service = %ctx.service, "answering for the upstream");
                if grpc {
                    e.grpc_response(&ctx.route, &ctx.service)
                } else {
                    e.response(&ctx.route, &ctx.service)
                }
            }
        };
        // A 101's Connection/Upgrade headers are the handshake itself.
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            headers::strip_hop_by_hop(res.headers_mut());
        }
        *res.version_mut() = version;
        let peer_identity = peer.get();
        let labels = RequestLabels {
            direction: Direction::Outbound,
            service: ctx.service,
            route: ctx.route,
            tls: if peer_identity.is_empty() {
                "false"
            } else {
                "true"
            },
            peer_identity,
        };
        request_bytes.bind(self.requests.request(&labels));
        let grpc = res
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok());
        let bytes = self
            .requests
            .response(&labels, res.status(), grpc, started.elapsed());
        let (upstream, attempts) = peer.attempts();
        let weft_error = headers::error_of(res.headers()).map(str::to_string);
        if let Some(s) = &span {
            if !labels.route.is_empty() {
                s.rename(format!("{method} {}", labels.route));
                s.set(KeyValue::new("http.route", labels.route.clone()));
            }
            s.set(KeyValue::new(
                "weft.peer_identity",
                labels.peer_identity.clone(),
            ));
            s.set(KeyValue::new(
                "weft.retries",
                i64::from(attempts.saturating_sub(1)),
            ));
            s.finish(res.status().as_u16(), weft_error.as_deref());
        }
        let trace_id = span.as_ref().map(HopSpan::trace_id).unwrap_or_default();
        if let (Some(log), Some((method, authority, path))) = (&self.access_log, &logged) {
            log.log(Entry {
                direction: "outbound",
                trace_id: &trace_id,
                method,
                authority,
                path,
                status: res.status().as_u16(),
                duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                peer_identity: &labels.peer_identity,
                upstream,
                retries: attempts.saturating_sub(1),
                weft_error: weft_error.as_deref().unwrap_or_default(),
            });
        }
        count_response(&self.requests, res, &labels, bytes)
    }

    async fn proxy(
        &self,
        mut req: Request<Body>,
        target: Target,
        ctx: &mut ReqContext,
    ) -> Result<Response<Body>, ProxyError> {
        let client_upgrade =
            upgrade::is_upgrade(req.method(), req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let upgrade_headers = upgrade::keep_headers(&parts.headers);
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::strip_reserved(&mut parts.headers);
        let body = boxed(body);

        let (called, rule_cfg, backend) = match target {
            Target::Direct(addr, id) => {
                if let Some(on_upgrade) = client_upgrade {
                    return self
                        .upgrade(addr, id, parts, upgrade_headers, body, on_upgrade)
                        .await;
                }
                let res = self
                    .sender
                    .send(addr, id.as_ref(), Request::from_parts(parts, body), None)
                    .await?;
                return Ok(res.map(boxed));
            }
            Target::Service(sp) => {
                ctx.service = sp.name.clone();
                if sp.routes.is_empty() {
                    (sp.clone(), None, sp)
                } else {
                    let cfg = self.mesh.as_ref().map(|m| m.load_full());
                    let rule = sp
                        .routes
                        .find(&parts.method, &parts.uri, &parts.headers)
                        .ok_or(ProxyError::NoRoute)?;
                    ctx.route = rule.route.clone();
                    if let Some(r) = &rule.redirect {
                        return Ok(redirect(r, rule, &parts));
                    }
                    apply_filters(rule, &mut parts)?;
                    let backend = rule.pick_backend().ok_or(ProxyError::NoBackend)?;
                    let backend = cfg
                        .and_then(|c| c.service(backend.address))
                        .ok_or(ProxyError::NoBackend)?;
                    (
                        sp.clone(),
                        Some((rule.timeouts, rule.retry.clone())),
                        backend,
                    )
                }
            }
        };

        if let Some(on_upgrade) = client_upgrade {
            let ep = backend.pick_request(None)?;
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

        self.resilient(&called, rule_cfg, backend, Request::from_parts(parts, body))
            .await
    }

    /// Sends through the resilience stack: bulkhead → request timeout →
    /// retries → per-try timeout → balanced endpoints. Route settings win
    /// over the called Service's TrafficPolicy defaults. (A plain function
    /// returning a boxed future: rustc cannot prove the stack's future Send
    /// inside the async caller.)
    fn resilient(
        &self,
        called: &ServicePort,
        rule_cfg: Option<(Option<v1::Timeouts>, Option<v1::RetryPolicy>)>,
        backend: Arc<ServicePort>,
        req: Request<Body>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>> {
        let policy = &called.policy.spec;
        let (timeouts, retry) = match rule_cfg {
            Some((t, r)) => (t.or(policy.timeouts), r.or_else(|| policy.retry.clone())),
            None => (policy.timeouts, policy.retry.clone()),
        };
        let ms = |v: u32| (v > 0).then(|| Duration::from_millis(u64::from(v)));
        let request_timeout = timeouts.and_then(|t| ms(t.request_ms));
        let try_timeout = timeouts.and_then(|t| ms(t.backend_request_ms));
        let retry = retry.filter(|r| r.attempts > 1).map(|r| {
            let on = policy.retry_on.clone().unwrap_or_default();
            let metrics = self.metrics.clone();
            Arc::new(RetryPolicy {
                attempts: r.attempts,
                backoff: ms(r.backoff_ms).unwrap_or(Duration::from_millis(25)),
                codes: if r.codes.is_empty() {
                    vec![503]
                } else {
                    r.codes
                        .iter()
                        .filter_map(|c| u16::try_from(*c).ok())
                        .collect()
                },
                grpc_codes: on.grpc_codes,
                connect_failure: on.connect_failure,
                refused_stream: on.refused_stream,
                reset: on.reset,
                non_idempotent: on.non_idempotent,
                budget: called.policy.budget.clone(),
                max_replay: retry::DEFAULT_MAX_REPLAY,
                on_retry: Some(OnRetry(Arc::new(move |why, allowed| {
                    metrics.retry(why, allowed)
                }))),
            })
        });
        let stack = ServiceBuilder::new()
            .layer(BulkheadLayer::new(called.policy.permits.clone()))
            .layer(TimeoutLayer::new(request_timeout))
            .layer(RetryLayer::new(retry))
            .layer(TimeoutLayer::new(try_timeout))
            .service(Endpoints::new(
                backend,
                self.sender.clone(),
                self.metrics.clone(),
            ));
        Box::pin(stack.oneshot(req))
    }

    async fn upgrade(
        &self,
        addr: SocketAddr,
        identity: Option<SpiffeId>,
        mut parts: http::request::Parts,
        upgrade_headers: Vec<(http::header::HeaderName, HeaderValue)>,
        body: Body,
        on_upgrade: hyper::upgrade::OnUpgrade,
    ) -> Result<Response<Body>, ProxyError> {
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
        let pool = &self.sender.pool;
        let res = match &identity {
            Some(id) => {
                upgrade::send(pool.dial(addr, id, Alpn::Http1).await?, req, on_upgrade).await?
            }
            None => {
                upgrade::send(
                    dial_tcp(addr, pool.connect_timeout()).await?,
                    req,
                    on_upgrade,
                )
                .await?
            }
        };
        Ok(res.map(boxed))
    }
}

/// The request's authority: its Host header, else its URI's, else `addr`.
fn authority_of(parts: &http::request::Parts, addr: SocketAddr) -> String {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<Authority>().ok())
        .or_else(|| parts.uri.authority().cloned())
        .map_or_else(|| addr.to_string(), |a| a.to_string())
}

/// Sends one request to one address: to a peer sidecar over the shared mTLS
/// HTTP/2 connection when an identity is expected there, else plain HTTP/1.1.
#[derive(Debug)]
pub struct Sender {
    pool: Arc<PeerPool>,
    plain: Client<HttpConnector, Body>,
}

impl Sender {
    fn new(pool: Arc<PeerPool>, idle_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Sender {
            pool,
            plain: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(idle_timeout)
                .build(connector),
        }
    }

    /// `idle`: the idle timeout for a new peer connection (its Service's).
    pub async fn send(
        &self,
        addr: SocketAddr,
        identity: Option<&SpiffeId>,
        req: Request<Body>,
        idle: Option<Duration>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let authority = authority_of(&parts, addr);
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        match identity {
            Some(id) => {
                // To the peer sidecar: HTTP/2, whatever the app spoke.
                parts.headers.insert(ORIG_PROTO, proto_value(parts.version));
                parts.uri = uri(&authority, pq)?;
                parts.version = Version::HTTP_2;
                parts.headers.remove(header::HOST);
                self.pool
                    .send(addr, id, Request::from_parts(parts, body), idle)
                    .await
            }
            None => {
                // Outside the mesh: plain HTTP/1.1 to the address itself.
                parts.uri = uri(&addr.to_string(), pq)?;
                parts.version = Version::HTTP_11;
                if !parts.headers.contains_key(header::HOST)
                    && let Ok(v) = HeaderValue::from_str(&authority)
                {
                    parts.headers.insert(header::HOST, v);
                }
                let mut res = self
                    .plain
                    .request(Request::from_parts(parts, body))
                    .await
                    .map_err(ProxyError::Client)?;
                // Nothing outside the mesh speaks for the mesh.
                headers::strip_reserved(res.headers_mut());
                Ok(res)
            }
        }
    }
}

fn uri(authority: &str, pq: PathAndQuery) -> Result<Uri, ProxyError> {
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(pq)
        .build()
        .map_err(|e| ProxyError::BadRequest(e.to_string()))
}

fn proto_value(v: Version) -> HeaderValue {
    HeaderValue::from_static(if v == Version::HTTP_2 {
        "HTTP/2"
    } else {
        "HTTP/1.1"
    })
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

/// Counts a response's body bytes and, for gRPC, its status (from the
/// headers of a trailers-only answer, else from the trailers).
pub fn count_response(
    metrics: &HttpMetrics,
    res: Response<Body>,
    labels: &RequestLabels,
    bytes: prometheus_client::metrics::counter::Counter,
) -> Response<Body> {
    let is_grpc = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !is_grpc {
        return res.map(|b| super::counted(b, bytes));
    }
    if let Some(code) = res
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        metrics.grpc_status(labels, code);
        return res.map(|b| super::counted(b, bytes));
    }
    let (metrics, labels) = (metrics.clone(), labels.clone());
    res.map(|b| {
        super::watch_trailers(super::counted(b, bytes), move |t| {
            if let Some(code) = t.get("grpc-status").and_then(|v| v.to_str().ok()) {
                metrics.grpc_status(&labels, code);
            }
        })
    })
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
