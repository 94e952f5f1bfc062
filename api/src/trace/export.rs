//! A bound on spans waiting for export, with every dropped span counted.
//!
//! The SDK's batch processor drops spans silently when its queue is full and
//! only logs failed exports. This processor keeps its own count of spans
//! handed to the batch processor and not yet taken by the exporter, refuses
//! (and counts) spans beyond the bound, and the exporter wrapper counts spans
//! exported and spans lost to failed exports. The batch processor's own queue
//! is made larger than the bound, so it never drops on its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

/// Span export counters, registered into the owning binary's registry.
#[derive(Clone, Debug, Default)]
pub struct ExportMetrics {
    exported: Counter,
    dropped: Family<DropLabels, Counter>,
}

impl ExportMetrics {
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "trace_spans_exported",
            "Spans the collector accepted",
            self.exported.clone(),
        );
        reg.register(
            "trace_spans_dropped",
            "Spans lost: the export queue was full, or the collector failed or was unreachable",
            self.dropped.clone(),
        );
    }

    fn drop_spans(&self, reason: &'static str, n: usize) {
        self.dropped
            .get_or_create(&DropLabels { reason })
            .inc_by(n as u64);
    }

    /// Spans dropped for `reason` (`queue_full`, `export_failed`).
    pub fn dropped(&self, reason: &'static str) -> u64 {
        self.dropped.get_or_create(&DropLabels { reason }).get()
    }

    pub fn exported(&self) -> u64 {
        self.exported.get()
    }
}

/// Spans accepted and not yet handed to the exporter.
#[derive(Debug, Default)]
pub(super) struct Queued(AtomicUsize);

/// Wraps the batch processor: at most `bound` spans wait.
#[derive(Debug)]
pub(super) struct Bounded<P> {
    inner: P,
    queued: Arc<Queued>,
    bound: usize,
    metrics: ExportMetrics,
}

/// Wraps the exporter: what it takes leaves the queue; outcomes are counted.
#[derive(Debug)]
pub(super) struct Counting<E> {
    inner: E,
    queued: Arc<Queued>,
    metrics: ExportMetrics,
}

impl<E> Counting<E> {
    /// The exporter, and the queue count its processor must share.
    pub(super) fn new(inner: E, metrics: ExportMetrics) -> (Self, Arc<Queued>) {
        let queued = Arc::new(Queued::default());
        let this = Counting {
            inner,
            queued: queued.clone(),
            metrics,
        };
        (this, queued)
    }
}

impl<P> Bounded<P> {
    pub(super) fn new(inner: P, queued: Arc<Queued>, bound: usize, metrics: ExportMetrics) -> Self {
        Bounded {
            inner,
            queued,
            bound,
            metrics,
        }
    }
}

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let admitted = self
            .queued
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.bound).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            self.inner.on_end(span);
        } else {
            self.metrics.drop_spans("queue_full", 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        // Saturating: a span the SDK handed over without passing `on_end`
        // (none today) must not wrap the count.
        let _ = self
            .queued
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(n))
            });
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                self.metrics.exported.inc_by(n as u64);
            }
            Err(_) => self.metrics.drop_spans("export_failed", n),
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
    use std::sync::Mutex;
    use std::time::SystemTime;

    fn span() -> SpanData {
        SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: "test".into(),
            start_time: SystemTime::now(),
            end_time: SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    /// Keeps what it is given, as the batch processor's queue would.
    #[derive(Debug, Default)]
    struct Keep(Mutex<Vec<SpanData>>);

    impl SpanProcessor for Keep {
        fn on_start(&self, _: &mut Span, _: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    /// A collector that answers every export with `ok`.
    #[derive(Debug)]
    struct Collector {
        ok: bool,
    }

    impl SpanExporter for Collector {
        async fn export(&self, _: Vec<SpanData>) -> OTelSdkResult {
            match self.ok {
                true => Ok(()),
                false => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                    "collector down".into(),
                )),
            }
        }
    }

    #[tokio::test]
    async fn spans_beyond_the_bound_and_failed_exports_are_counted() {
        let metrics = ExportMetrics::default();
        let (exporter, queued) = Counting::new(Collector { ok: false }, metrics.clone());
        let processor = Bounded::new(Keep::default(), queued.clone(), 3, metrics.clone());
        for _ in 0..5 {
            processor.on_end(span());
        }
        assert_eq!(metrics.dropped("queue_full"), 2);
        let batch = std::mem::take(&mut *processor.inner.0.lock().unwrap());
        assert_eq!(batch.len(), 3);

        // The exporter takes them: room again, and the failure is counted.
        assert!(exporter.export(batch).await.is_err());
        assert_eq!(metrics.dropped("export_failed"), 3);
        processor.on_end(span());
        assert_eq!(metrics.dropped("queue_full"), 2);
        assert_eq!(queued.0.load(Ordering::Acquire), 1);

        let (ok, _) = Counting::new(Collector { ok: true }, metrics.clone());
        assert!(ok.export(vec![span(), span()]).await.is_ok());
        assert_eq!(metrics.exported(), 2);
    }
}
