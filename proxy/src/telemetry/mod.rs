//! Logs and metrics.

pub mod metrics;

pub use metrics::{
    AuthzMetrics, DefenceMetrics, Direction, HttpMetrics, Metrics, RequestLabels, RetryMetrics,
    TcpMetrics, TlsMetrics, TlsStatus,
};
