//! Weft's shared vocabulary: the names and default ports every part of the mesh
//! agrees on, and the gRPC API between proxies and the control plane.

pub mod defaults;
pub mod duration;
pub mod grpc;
pub mod identity;
pub mod log;

pub mod tls;
pub mod trace;

pub use identity::SpiffeId;

/// `weft.v1`: generated from `proto/weft/v1/*.proto` at build time (protox).
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("weft.v1");
}
