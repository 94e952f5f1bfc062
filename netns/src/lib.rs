//! Network namespaces for the demo (`weftctl demo`) and the e2e harness
//! (`weft-e2e`): each pod of theirs is a namespace named under /run/netns, as
//! iproute2 makes them, so `ip netns exec` and tools like tcpdump find them.
//!
//! Whatever ends a run, what it made goes: a [`Netns`] is removed on drop
//! (a normal end or a panic); [`on_signal`] and [`remove_on_signal`] turn
//! SIGINT, SIGTERM, SIGHUP and SIGQUIT into a clean end; and because SIGKILL
//! cannot be caught, the next run removes what a killed one left
//! ([`remove_all`], [`remove_stale`]), which is why every namespace's name
//! starts with a prefix its owner chooses.

mod error;
mod leftovers;
mod netns;
mod signals;

pub use error::Error;
pub use leftovers::{destroy, existing, pids, remove_all, remove_stale};
pub use netns::{Netns, ip};
pub use signals::{on_signal, remove_on_signal};
