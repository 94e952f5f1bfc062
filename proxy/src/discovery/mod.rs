//! What the control plane tells this proxy about the mesh: the Services it may
//! call (virtual IPs, endpoints and their identities), the meshed pods, and
//! its own inbound settings. Received over `Discover` (on demand,
//! [`subscriptions`]) or `Watch` (everything), replaced atomically, and kept
//! when the control plane goes away.

mod client;
mod config;
mod delta;
pub mod subscriptions;

#[cfg(feature = "fuzzing")]
pub(crate) use client::fold;
pub use client::{DiscoveryMetrics, Watcher};
pub use config::{Address, Mesh, MeshConfig, MeshState, ServicePort};
pub use subscriptions::{Key, Subscriptions, UseGuard};
