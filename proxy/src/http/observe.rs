//! Observe layer, the outermost of both directions: one span per request,
//! the request metrics, and the access log line. What it reports about where
//! a request went comes back up with the response, in its extensions:
//! [`Routed`] (Service and route), [`Served`] (the endpoint and its
//! identity) and [`Attempts`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header;
use http::{Request, Response};
use hyper::body::Incoming;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use tokio::time::Instant;
use tower::Service;
use weft_api::trace::{HopSpan, Tracing};

use super::access_log::{AccessLog, Entry};
use super::{Attempts, Body, BoxFuture, LateCounter, Served, boxed, headers};
use crate::telemetry::{Direction, HttpMetrics, RequestLabels};

/// The Service port and route a request was routed by (outbound).
#[derive(Clone, Debug, Default)]
pub struct Routed {
    pub service: String,
    pub route: String,
    /// The matched rule's `name`, if it has one.
    pub rule: String,
    /// What fault was injected ([`super::fault::Injected::kind`]).
    pub fault: &'static str,
}

/// What a connection's requests are, known when it is accepted.
#[derive(Clone, Debug)]
pub enum Scope {
    /// To the app at `dst`, from a peer sidecar (its verified identity) or
    /// a plaintext client (None).
    Inbound {
        dst: SocketAddr,
        peer: Option<String>,
    },
    /// From the app to `server` (a Service's name or an address).
    Outbound { server: String },
}

/// Where observations go; shared by every connection of a direction.
#[derive(Debug)]
pub struct Observer {
    pub metrics: HttpMetrics,
    pub access_log: Option<AccessLog>,
    pub tracing: Option<Arc<Tracing>>,
}

#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    scope: Arc<Scope>,
    observer: Arc<Observer>,
}

impl<S> Observe<S> {
    pub fn new(inner: S, scope: Scope, observer: Arc<Observer>) -> Self {
        Observe {
            inner,
            scope: Arc::new(scope),
            observer,
        }
    }
}

/// What is kept of a request to log it once answered.
struct Logged {
    method: String,
    authority: String,
    path: String,
}

impl<S> Service<Request<Incoming>> for Observe<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let started = Instant::now();
        let (scope, observer, mut inner) = (
            self.scope.clone(),
            self.observer.clone(),
            self.inner.clone(),
        );
        let span = observer
            .tracing
            .as_ref()
            .map(|t| start_span(t, &scope, &mut req));
        let logged = observer.access_log.as_ref().map(|_| Logged {
            method: req.method().to_string(),
            authority: authority(&scope, &req),
            path: req.uri().path().to_string(),
        });
        let method = req.method().clone();
        // Inbound labels are known now; outbound ones once routed.
        let early = match scope.as_ref() {
            Scope::Inbound { dst, peer } => Some(RequestLabels {
                direction: Direction::Inbound,
                service: dst.port().to_string(),
                route: String::new(),
                tls: if peer.is_some() { "true" } else { "false" },
                peer_identity: peer.clone().unwrap_or_default(),
            }),
            Scope::Outbound { .. } => None,
        };
        let request_bytes = LateCounter::default();
        if let Some(labels) = &early {
            request_bytes.bind(observer.metrics.request(labels));
        }
        let req = req.map(|b| request_bytes.wrap(boxed(b)));
        // Boxed before the async block: works around rustc's "Send is not
        // general enough" with associated futures.
        let call: BoxFuture<Result<Response<Body>, Infallible>> = Box::pin(inner.call(req));
        Box::pin(async move {
            let Ok(res) = call.await;
            let served = res.extensions().get::<Served>().cloned();
            let attempts = res.extensions().get::<Attempts>().map_or(1, |a| a.0);
            let labels = match early {
                Some(labels) => labels,
                None => {
                    let routed = res
                        .extensions()
                        .get::<Routed>()
                        .cloned()
                        .unwrap_or_default();
                    let peer = served
                        .as_ref()
                        .and_then(|s| s.identity.as_ref())
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    if let Some(s) = &span {
                        if !routed.rule.is_empty() {
                            s.set(KeyValue::new("weft.route.rule", routed.rule.clone()));
                        }
                        if !routed.fault.is_empty() {
                            s.set(KeyValue::new("weft.fault", routed.fault));
                        }
                    }
                    let labels = RequestLabels {
                        direction: Direction::Outbound,
                        service: routed.service,
                        route: routed.route,
                        tls: if peer.is_empty() { "false" } else { "true" },
                        peer_identity: peer,
                    };
                    request_bytes.bind(observer.metrics.request(&labels));
                    labels
                }
            };
            let grpc = res
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok());
            let bytes = observer
                .metrics
                .response(&labels, res.status(), grpc, started.elapsed());
            let weft_error = headers::error_of(res.headers()).map(str::to_string);
            if let Some(s) = &span {
                if let Scope::Outbound { .. } = scope.as_ref() {
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
                }
                s.finish(res.status().as_u16(), weft_error.as_deref());
            }
            if let (Some(log), Some(l)) = (&observer.access_log, &logged) {
                let trace_id = span.as_ref().map(HopSpan::trace_id).unwrap_or_default();
                let (direction, upstream, retries) = match scope.as_ref() {
                    Scope::Inbound { dst, .. } => ("inbound", Some(*dst), 0),
                    Scope::Outbound { .. } => (
                        "outbound",
                        served.as_ref().map(|s| s.endpoint),
                        attempts.saturating_sub(1),
                    ),
                };
                let policy = res
                    .extensions()
                    .get::<super::authz::PolicyMark>()
                    .map(|m| m.0.clone())
                    .unwrap_or_default();
                let rate_limit = res
                    .extensions()
                    .get::<super::ratelimit::LimitMark>()
                    .map(|m| m.0.clone())
                    .unwrap_or_default();
                let fault = res.extensions().get::<Routed>().map_or("", |r| r.fault);
                log.log(Entry {
                    direction,
                    trace_id: &trace_id,
                    method: &l.method,
                    authority: &l.authority,
                    path: &l.path,
                    status: res.status().as_u16(),
                    duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                    peer_identity: &labels.peer_identity,
                    upstream,
                    retries,
                    weft_error: weft_error.as_deref().unwrap_or_default(),
                    policy: &policy,
                    rate_limit: &rate_limit,
                    fault,
                });
            }
            Ok(count_response(&observer.metrics, res, &labels, bytes))
        })
    }
}

fn start_span(t: &Tracing, scope: &Scope, req: &mut Request<Incoming>) -> HopSpan {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let (name, kind, attrs) = match scope {
        Scope::Inbound { dst, peer } => (
            format!("{method} :{}", dst.port()),
            SpanKind::Server,
            vec![
                KeyValue::new("http.request.method", method),
                KeyValue::new("url.path", path),
                KeyValue::new("server.port", i64::from(dst.port())),
                KeyValue::new("weft.peer_identity", peer.clone().unwrap_or_default()),
            ],
        ),
        Scope::Outbound { server } => (
            format!("{method} {server}"),
            SpanKind::Client,
            vec![
                KeyValue::new("http.request.method", method),
                KeyValue::new("server.address", server.clone()),
                KeyValue::new("url.path", path),
            ],
        ),
    };
    t.start_hop(req.headers_mut(), name, kind, attrs)
}

/// The authority to log: a peer's request carries it in its URI; an app's
/// in its Host header (HTTP/1.1) or URI (HTTP/2).
fn authority(scope: &Scope, req: &Request<Incoming>) -> String {
    let uri = req.uri().authority().map(|a| a.as_str());
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    match scope {
        Scope::Inbound { .. } => uri,
        Scope::Outbound { .. } => host.or(uri),
    }
    .unwrap_or_default()
    .to_string()
}

/// Counts a response's body bytes and, for gRPC, its status (from the
/// headers of a trailers-only answer, else from the trailers).
fn count_response(
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
