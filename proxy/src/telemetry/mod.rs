//! Logs and metrics.

pub mod metrics;
pub mod trace;

pub use metrics::{
    Direction, HttpMetrics, Metrics, RequestLabels, RetryMetrics, TcpMetrics, TlsMetrics,
};
