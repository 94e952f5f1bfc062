//! The Weft control plane: the mesh CA and the Identity API so far;
//! discovery, the Watch push API and the injector come with later issues.

pub mod admin;
pub mod demo;
pub mod discovery;
pub mod grpc;
pub mod identity;
pub mod inject;
pub mod install;
pub mod kubernetes;
pub mod metrics;
pub mod server;
