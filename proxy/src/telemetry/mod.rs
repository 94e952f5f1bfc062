//! Logs and metrics.

pub mod metrics;

pub use metrics::{
    Direction, HttpMetrics, Metrics, RequestLabels, RetryMetrics, TcpMetrics, TlsMetrics, TlsStatus,
};
