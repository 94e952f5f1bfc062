//! Weft's shared vocabulary: the names and default ports every part of the mesh
//! agrees on (the proxy, the control plane, the injector and the tests).
//!
//! The gRPC API between proxies and the control plane joins this crate with the
//! identity work; until then it holds only the defaults below.

pub mod defaults;
