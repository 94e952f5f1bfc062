//! Sockets: binding listeners, reading where a redirected connection was going,
//! and carrying bytes between two connections.

pub mod copy;
pub mod counted;
pub mod listen;
pub mod orig_dst;

pub use copy::forward;
pub use counted::Counted;
pub use listen::bind_all;
pub use orig_dst::original_dst;
