//! Logs and metrics.

pub mod metrics;

pub use metrics::{
    DefenceMetrics, Direction, HttpMetrics, Metrics, RequestLabels, RetryMetrics, TcpMetrics,
    TlsMetrics, TlsStatus,
};
