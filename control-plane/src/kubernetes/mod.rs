//! Weft on Kubernetes: the API server as the source of truth (reflectors
//! feeding the same model as the manifest directory), ServiceAccount tokens
//! as proof of identity (TokenReview), the mesh CA in a Secret with trust
//! bundles in every meshed namespace, route and policy status, and a Lease
//! that elects the one replica that writes.

pub mod ca;
pub mod leader;
pub mod source;
pub mod status;
pub mod tokens;

pub use source::{KubeSource, Stores};
