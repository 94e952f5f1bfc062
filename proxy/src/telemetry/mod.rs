//! Logs and metrics.

pub mod log;
pub mod metrics;

pub use metrics::{Direction, Metrics, TcpMetrics};
