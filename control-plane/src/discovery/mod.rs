//! Discovery: the control plane's model of the mesh, built from a directory of
//! Kubernetes-style manifests, and the Watch API that pushes each proxy its
//! snapshot.
//!
//! The manifests are read into [`manifests::Store`] (which keeps the last good
//! version of anything that breaks), turned into a [`model::Model`] (Services,
//! Pods, derived endpoints, routes), and served as per-proxy snapshots by
//! [`service::DiscoveryService`], which remembers what each proxy was sent and
//! acknowledged ([`registry::Registry`]).

pub mod annotations;
pub mod authz;
pub mod crds;
pub mod external;
pub mod findings;
pub mod frames;
pub mod grpc;
pub mod grpc_routes;
pub mod manifests;
pub mod model;
pub mod objects;
pub mod ratelimit;
pub mod registry;
pub mod routes;
pub mod service;
pub mod snapshot;
pub mod source;
pub mod view;

pub use manifests::{ManifestError, Store};
pub use model::Model;
pub use registry::Registry;
pub use service::DiscoveryService;
