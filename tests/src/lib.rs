//! weft-e2e: a harness that builds a virtual node out of Linux network
//! namespaces, runs real sidecars in it, and tears it all down again.
//!
//! A [`Node`] is a bridge in a namespace of its own; each [`Pod`] is a network
//! namespace joined to the bridge by a veth pair, with an address from
//! 198.18.0.0/24 (RFC 2544's benchmarking range). Routes exist only inside
//! those namespaces, so test traffic cannot leave them; nothing is added to
//! the root namespace. Everything is removed on drop (panics included), and a
//! new node first removes what a killed run left behind.
//!
//! Creating namespaces needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); every
//! entry point says so plainly when run without it.

pub mod bins;
pub mod browser;

/// The test gRPC service, generated from `proto/echo.proto`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod echo {
    tonic::include_proto!("weft.test");
}
pub mod capture;
pub mod client;
pub mod dashboard;
pub mod demo;
pub mod jwks;
pub mod kube;
pub mod mesh;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod otlp;
pub mod process;
pub mod prometheus;

pub use browser::Browser;
pub use mesh::{
    ControlPlane, http_pod, http_pod_in, namespace_yaml, pod_yaml, pod_yaml_in, service_yaml,
    service_yaml_in, spiffe, spiffe_in,
};
pub use netns::Netns;
pub use node::{Node, Pod};
pub use process::Process;

/// Fails the calling test with a clear message unless it runs as root.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "the weft e2e tests build network namespaces and iptables rules and need root \
             (CAP_NET_ADMIN, CAP_SYS_ADMIN): run them as root (scripts/test), or with `sudo -E` \
             (CI runs as root)"
        );
    }
}

/// Polls `cond` until it holds, failing the test after `timeout`.
pub fn eventually(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}
