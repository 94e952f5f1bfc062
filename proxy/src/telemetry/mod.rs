//! Logs and metrics.

pub mod metrics;

pub use metrics::{
    AuthzMetrics, DefenceMetrics, Direction, HttpMetrics, Metrics, RateLimitMetrics, RequestLabels,
    RetryMetrics, RouteLabels, TcpMetrics, TlsMetrics, TlsStatus,
};
