//! Workload identity: the mesh CA, proof-of-identity tokens, and the Identity
//! gRPC service that turns a token and a CSR into a certificate.

pub mod ca;
pub mod service;
pub mod tokens;

pub use ca::{Ca, CaError};
pub use service::IdentityService;
pub use tokens::{BootstrapTokens, TokenVerifier};
