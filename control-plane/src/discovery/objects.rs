//! The objects both sources (the manifest directory and the Kubernetes
//! API) read and hand the model: the kinds Weft understands, keyed by kind,
//! namespace and name.

use std::fmt;
use std::sync::Arc;

use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::experimental::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::crds::{AuthorizationPolicy, FaultInjection, RequestAuthentication, TrafficPolicy};

/// The kinds Weft reads. Others are skipped (a directory may hold anything).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Service,
    Pod,
    EndpointSlice,
    HttpRoute,
    GrpcRoute,
    ReferenceGrant,
    TrafficPolicy,
    AuthorizationPolicy,
    FaultInjection,
    RequestAuthentication,
    /// Only the data of Secrets that policies name (API keys, key sets).
    Secret,
    /// A key set the control plane fetched; named by its URL.
    Jwks,
}

impl Kind {
    /// The kind of an `apiVersion` and `kind`; none for kinds Weft skips.
    pub fn of(api_version: &str, kind: &str) -> Option<Kind> {
        match (api_version, kind) {
            ("v1", "Service") => Some(Kind::Service),
            ("v1", "Pod") => Some(Kind::Pod),
            ("v1", "Namespace") => Some(Kind::Namespace),
            ("discovery.k8s.io/v1", "EndpointSlice") => Some(Kind::EndpointSlice),
            ("gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1", "HTTPRoute") => {
                Some(Kind::HttpRoute)
            }
            ("gateway.networking.k8s.io/v1", "GRPCRoute") => Some(Kind::GrpcRoute),
            (
                "gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1",
                "ReferenceGrant",
            ) => Some(Kind::ReferenceGrant),
            ("weft.dev/v1alpha1", "TrafficPolicy") => Some(Kind::TrafficPolicy),
            ("weft.dev/v1alpha1", "AuthorizationPolicy") => Some(Kind::AuthorizationPolicy),
            ("weft.dev/v1alpha1", "FaultInjection") => Some(Kind::FaultInjection),
            ("weft.dev/v1alpha1", "RequestAuthentication") => Some(Kind::RequestAuthentication),
            ("v1", "Secret") => Some(Kind::Secret),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::Pod => "Pod",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::TrafficPolicy => "TrafficPolicy",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::FaultInjection => "FaultInjection",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::Secret => "Secret",
            Kind::Jwks => "JWKS",
        })
    }
}

/// Kind, namespace and name: what identifies an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

#[derive(Clone, Debug)]
pub enum Object {
    Namespace(Arc<Namespace>),
    Service(Arc<Service>),
    Pod(Arc<Pod>),
    EndpointSlice(Arc<EndpointSlice>),
    HttpRoute(Arc<HttpRoute>),
    GrpcRoute(Arc<GrpcRoute>),
    ReferenceGrant(Arc<ReferenceGrant>),
    TrafficPolicy(Arc<TrafficPolicy>),
    AuthorizationPolicy(Arc<AuthorizationPolicy>),
    FaultInjection(Arc<FaultInjection>),
    RequestAuthentication(Arc<RequestAuthentication>),
    /// A Secret's data, by key (nothing else of it is kept).
    Secret(Arc<SecretData>),
    /// The last key set fetched from a `jwksUri`, or why none could be.
    Jwks(Arc<FetchedJwks>),
}

/// A Secret's data, by key; its Debug never shows a value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData(pub std::collections::BTreeMap<String, Vec<u8>>);

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// What the control plane has for one `jwksUri`: the last key set it
/// fetched (kept when a later fetch fails), and the last failure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchedJwks {
    pub jwks: Option<Arc<str>>,
    pub error: Option<String>,
}
