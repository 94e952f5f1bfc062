//! The Weft sidecar proxy.
//!
//! `weft-proxy init` installs the pod's interception rules ([`init`]);
//! `weft-proxy run` ([`run`]) accepts the redirected connections on the
//! inbound and outbound listeners and forwards them ([`forward`]), with an
//! admin server ([`admin`]) for probes, metrics and shutdown.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod cli;
pub mod discovery;
pub mod dns;
pub mod forward;
pub mod http;
pub mod identity;
pub mod init;
pub mod ports;
pub mod probes;
pub mod run;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod transport;
