//! The outbound request stack, built once per route and snapshot rather
//! than per request. [`route_stack`] is the whole path of a request after
//! routing, read top to bottom; [`Stacks`] keeps the stacks of the Services
//! this pod calls, and is replaced when a new snapshot is applied.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use http::{Request, Response};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use super::balance::BalanceLayer;
use super::breaker::BreakerLayer;
use super::bulkhead::BulkheadLayer;
use super::retry::{DEFAULT_MAX_REPLAY, OnRetry, RetryLayer, RetryPolicy};
use super::send::{Send, Sender};
use super::timeout::TimeoutLayer;
use super::{Body, Failed};
use crate::discovery::{Mesh, MeshConfig, ServicePort};
use crate::routes::Rule;
use crate::telemetry::{RetryMetrics, RouteLabels};

/// One route's way to one backend.
pub type RouteStack = BoxCloneSyncService<Request<Body>, Response<Body>, Failed>;

/// What every stack shares.
#[derive(Debug)]
pub struct StackParts {
    pub sender: Arc<Sender>,
    pub metrics: RetryMetrics,
}

/// The path of a request to `backend`, routed by `rule` of `called` (None:
/// `called` has no routes and `backend` is itself): its Service's caps →
/// the whole request's deadline → retries → an endpoint by latency → each
/// attempt's deadline → that endpoint's breaker → the peer connection.
/// The attempt's deadline sits below the balancer so that an attempt cut
/// short still reports its endpoint, and the retry goes elsewhere.
/// Route settings win over the called Service's TrafficPolicy defaults.
pub fn route_stack(
    called: &ServicePort,
    rule: Option<&Rule>,
    backend: Arc<ServicePort>,
    parts: &StackParts,
) -> RouteStack {
    let policy = &called.policy;
    let (timeouts, retry) = match rule {
        Some(r) => policy.for_rule(r.timeouts, r.retry.as_ref()),
        None => (policy.timeouts, policy.retry.clone()),
    };
    let metrics = parts.metrics.clone();
    let at = RouteLabels {
        service: called.name.clone(),
        route: rule.map(|r| r.route.clone()).unwrap_or_default(),
    };
    let retry = retry.map(|conditions| {
        Arc::new(RetryPolicy {
            conditions,
            budget: policy.budget.clone(),
            max_replay: DEFAULT_MAX_REPLAY,
            on_retry: Some(OnRetry(Arc::new(move |why, allowed| {
                metrics.retry(&at, why, allowed)
            }))),
        })
    });
    let stack = ServiceBuilder::new()
        .layer(BulkheadLayer::new(policy.clone()))
        .layer(TimeoutLayer::new(timeouts.request))
        .layer(RetryLayer::new(retry))
        .layer(BalanceLayer::new(backend.clone()))
        .layer(TimeoutLayer::new(timeouts.per_try))
        .layer(BreakerLayer::new(backend.clone(), parts.metrics.clone()))
        .service(Send::new(parts.sender.clone(), backend.policy.idle_timeout));
    BoxCloneSyncService::new(stack)
}

/// A backend Service port and the stack that reaches it.
#[derive(Debug)]
pub struct Backend {
    pub service: Arc<ServicePort>,
    pub stack: RouteStack,
}

/// A Service port's stacks: per rule, per backend (None: the backend is not
/// a Service this pod knows); or one stack when it has no routes.
#[derive(Debug)]
pub struct ServiceStacks {
    pub service: Arc<ServicePort>,
    pub rules: Vec<Vec<Option<Backend>>>,
    pub direct: Option<Backend>,
}

impl ServiceStacks {
    pub fn build(service: Arc<ServicePort>, mesh: &MeshConfig, parts: &StackParts) -> Self {
        if service.routes.is_empty() {
            return ServiceStacks {
                direct: Some(Backend {
                    stack: route_stack(&service, None, service.clone(), parts),
                    service: service.clone(),
                }),
                rules: Vec::new(),
                service,
            };
        }
        let rules = service
            .routes
            .rules()
            .iter()
            .map(|rule| {
                rule.backends
                    .iter()
                    .map(|b| {
                        b.address
                            .and_then(|a| mesh.service(a))
                            .map(|backend| Backend {
                                stack: route_stack(&service, Some(rule), backend.clone(), parts),
                                service: backend,
                            })
                    })
                    .collect()
            })
            .collect();
        ServiceStacks {
            service,
            rules,
            direct: None,
        }
    }
}

/// The stacks of one snapshot, built for a Service the first time this pod
/// calls it: memory follows what the pod calls, not the size of the mesh.
#[derive(Debug)]
pub struct Stacks {
    pub mesh: Arc<MeshConfig>,
    services: Mutex<HashMap<SocketAddr, Arc<ServiceStacks>>>,
}

impl Stacks {
    /// The stacks of the Service port at `vip`, if the snapshot has it.
    pub fn service(&self, vip: SocketAddr, parts: &StackParts) -> Option<Arc<ServiceStacks>> {
        let mut services = self.services.lock().ok()?;
        if let Some(s) = services.get(&vip) {
            return Some(s.clone());
        }
        let sp = self.mesh.service(vip)?;
        let built = Arc::new(ServiceStacks::build(sp, &self.mesh, parts));
        services.insert(vip, built.clone());
        Some(built)
    }
}

/// The current snapshot's stacks, replaced when the snapshot is.
#[derive(Debug)]
pub struct StackCache {
    mesh: Option<Mesh>,
    current: ArcSwapOption<Stacks>,
}

impl StackCache {
    pub fn new(mesh: Option<Mesh>) -> Self {
        StackCache {
            mesh,
            current: ArcSwapOption::empty(),
        }
    }

    /// The stacks for the snapshot applied now (None: no discovery).
    pub fn current(&self) -> Option<Arc<Stacks>> {
        let mesh = self.mesh.as_ref()?.load_full();
        if let Some(s) = self.current.load_full()
            && Arc::ptr_eq(&s.mesh, &mesh)
        {
            return Some(s);
        }
        let fresh = Arc::new(Stacks {
            mesh,
            services: Mutex::new(HashMap::new()),
        });
        // Two requests racing past a new snapshot may each build one; the
        // later store wins and both are correct.
        self.current.store(Some(fresh.clone()));
        Some(fresh)
    }
}
