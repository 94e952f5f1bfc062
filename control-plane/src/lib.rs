//! The Weft control plane: the mesh CA and the Identity API, discovery and
//! the Watch push API (from a manifest directory or the Kubernetes API),
//! route and policy status, the sidecar injector, and what `weftctl` runs
//! against a cluster (`install`, `inject`, `check`). The local demo is
//! `weft-demo`; the `weftctl` binary is a package of its own.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod check;
pub mod discovery;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod identity;
pub mod inject;
pub mod install;
pub mod kubernetes;
pub mod metrics;
pub mod proxy_metrics;
pub mod server;
