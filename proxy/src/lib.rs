//! The Weft sidecar proxy.
//!
//! `weft-proxy init` installs the pod's interception rules ([`init`]);
//! `weft-proxy run` ([`run`]) accepts the redirected connections on the
//! inbound and outbound listeners and forwards them ([`forward`]), with an
//! admin server ([`admin`]) for probes, metrics and shutdown.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub(crate) mod admin;
pub(crate) mod authn;
pub(crate) mod authz;
pub(crate) mod balance;
pub(crate) mod breaker;
pub mod cli;
pub(crate) mod connect;
pub(crate) mod destination;
pub(crate) mod discovery;
pub(crate) mod dns;
pub(crate) mod forward;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod http;
pub(crate) mod identity;
pub mod init;
pub(crate) mod limits;
pub(crate) mod policy;
pub(crate) mod ports;
pub(crate) mod probes;
pub(crate) mod ratelimit;
pub(crate) mod routes;
pub mod run;
pub(crate) mod shutdown;
pub(crate) mod telemetry;
#[cfg(test)]
mod test_pki;
pub(crate) mod tls;
pub(crate) mod transport;
