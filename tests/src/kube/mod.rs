//! A real Kubernetes control plane for the e2e tests: etcd,
//! kube-apiserver and kube-controller-manager (the binaries
//! `scripts/kube-tools` builds from their Go modules) in a harness pod of
//! their own, so that other pods on the test bridge reach the API server at
//! `https://<kube pod ip>:6443` and nothing listens in the root namespace.
//!
//! There is no kubelet and no container runtime: [`NodeStandIn`] is a test
//! fixture that stands in for one (it gives each API pod a harness network
//! namespace and reports it Running, or, made with
//! [`Cluster::stand_in_running`], runs its containers for real), so that
//! the real controllers (ReplicaSet, EndpointSlice, ...) do their real work.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use weft_e2e::{Node, kube::Cluster};
//! let node = Arc::new(Node::new("example"));
//! let cluster = Cluster::start(&node);
//! let kubelet = cluster.stand_in(node.clone());
//! cluster.apply("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n");
//! ```

mod cluster;
mod container;
mod env;
mod hosts;
mod images;
mod kube_proxy;
pub mod pki;
mod probes;
mod runner;
mod services;
mod stand_in;
mod status;
pub mod tools;
mod volumes;
pub mod weft;

pub use cluster::{API_PORT, Cluster, ISSUER};
pub use stand_in::{NODE_NAME, NodeStandIn};

use std::path::Path;

/// A client for the API server that `kubeconfig` names. Must be awaited
/// inside a namespace that reaches the server (the kube pod's, or any pod's
/// on the same node), e.g. within [`Cluster::block_on`].
pub async fn client(kubeconfig: &Path) -> ::kube::Client {
    let kc = ::kube::config::Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("reading {}: {e}", kubeconfig.display()));
    let config = ::kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("loading {}: {e}", kubeconfig.display()));
    ::kube::Client::try_from(config)
        .unwrap_or_else(|e| panic!("a client from {}: {e}", kubeconfig.display()))
}
