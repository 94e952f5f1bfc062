//! Logs and metrics.

pub mod metrics;

pub use metrics::{Direction, Metrics, RetryMetrics, TcpMetrics, TlsMetrics};
