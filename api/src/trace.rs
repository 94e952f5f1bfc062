//! Distributed tracing: one span per hop per direction, exported over OTLP
//! (gRPC) to a collector such as Jaeger. The sidecar continues a W3C
//! `traceparent`/`tracestate` it receives (B3 single and multi headers are
//! read too), or starts a trace under the sampling rule: follow the parent's
//! sampled flag, and sample new traces at a ratio. Export is batched and
//! bounded; a slow or absent collector never delays or fails a request
//! (spans that do not fit are dropped and counted).

use std::time::Duration;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};

mod export;

pub use export::ExportMetrics;

/// Spans waiting for export, at most; beyond, new spans are dropped (and
/// counted).
const QUEUE: usize = 2048;

#[derive(Debug)]
pub struct Tracing {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    propagator: TraceContextPropagator,
}

/// A span in progress, ended (and so exported) on drop.
#[derive(Debug)]
pub struct HopSpan {
    cx: Context,
}

impl HopSpan {
    pub fn trace_id(&self) -> String {
        let sc = self.cx.span().span_context().clone();
        if sc.is_valid() {
            sc.trace_id().to_string()
        } else {
            String::new()
        }
    }

    pub fn set(&self, kv: KeyValue) {
        self.cx.span().set_attribute(kv);
    }

    pub fn rename(&self, name: String) {
        self.cx.span().update_name(name);
    }

    /// Records the status code, and an error status for 5xx.
    pub fn finish(&self, status: u16, weft_error: Option<&str>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(e) = weft_error {
            span.set_attribute(KeyValue::new("weft.error", e.to_string()));
        }
        if status >= 500 {
            span.set_status(Status::error(format!("HTTP {status}")));
        }
    }
}

impl Drop for HopSpan {
    fn drop(&mut self) {
        self.cx.span().end();
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// A parent from B3 headers (single `b3`, or `x-b3-*`), when there is no
/// `traceparent`.
fn b3_parent(h: &HeaderMap) -> Option<SpanContext> {
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
    let (trace, span, sampled) = match get("b3") {
        Some(single) => {
            let mut parts = single.split('-');
            let trace = parts.next()?;
            let span = parts.next()?;
            let sampled = parts.next().unwrap_or("1");
            (
                trace.to_string(),
                span.to_string(),
                sampled == "1" || sampled == "d",
            )
        }
        None => (
            get("x-b3-traceid")?.to_string(),
            get("x-b3-spanid")?.to_string(),
            get("x-b3-sampled").is_none_or(|s| s == "1" || s == "true")
                || get("x-b3-flags") == Some("1"),
        ),
    };
    // 64-bit B3 trace ids are left-padded to 128 bits.
    let trace = format!("{trace:0>32}");
    let sc = SpanContext::new(
        TraceId::from_hex(&trace).ok()?,
        SpanId::from_hex(&span).ok()?,
        if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

impl Tracing {
    /// Starts exporting to `endpoint` (`http://host:4317`). Needs a tokio
    /// runtime (the exporter's gRPC channel lives on it).
    /// Exported and dropped spans are counted in `metrics`.
    pub fn start(
        endpoint: &str,
        sample_ratio: f64,
        service: String,
        metrics: ExportMetrics,
    ) -> anyhow::Result<Tracing> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| anyhow::anyhow!("--otlp-endpoint {endpoint}: {e}"))?;
        let (exporter, queued) = export::Counting::new(exporter, metrics.clone());
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    // Ours is the bound; the SDK's queue never fills first.
                    .with_max_queue_size(QUEUE * 2)
                    .build(),
            )
            .build();
        let processor = export::Bounded::new(batch, queued, QUEUE, metrics);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                sample_ratio,
            ))))
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        let tracer = provider.tracer("weft");
        Ok(Tracing {
            tracer,
            provider,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// Starts this hop's span as a child of whatever trace the request
    /// carries, and rewrites the request's trace headers so the next hop
    /// becomes a child of this span.
    pub fn start_hop(
        &self,
        headers: &mut HeaderMap,
        name: String,
        kind: SpanKind,
        attrs: Vec<KeyValue>,
    ) -> HopSpan {
        let mut parent = self.propagator.extract(&HeaderExtractor(headers));
        if !parent.span().span_context().is_valid()
            && let Some(sc) = b3_parent(headers)
        {
            parent = Context::new().with_remote_span_context(sc);
        }
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &parent);
        let cx = parent.with_span(span);
        self.propagator
            .inject_context(&cx, &mut HeaderInjector(headers));
        HopSpan { cx }
    }

    /// A span for work of our own (not a forwarded request): a root, or a
    /// child of `parent` when given.
    pub fn start_span(&self, name: String, kind: SpanKind, attrs: Vec<KeyValue>) -> HopSpan {
        let parent = Context::new();
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &parent);
        HopSpan {
            cx: parent.with_span(span),
        }
    }

    /// Exports what is queued; at shutdown.
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn reads_b3_single_and_multi_headers() {
        let sc = b3_parent(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
        )]))
        .unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert_eq!(sc.span_id().to_string(), "e457b5a2e4d86bd1");
        assert!(sc.is_sampled());
        let sc = b3_parent(&headers(&[
            ("x-b3-traceid", "64fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
        ]))
        .unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "000000000000000064fe8b2a57d3eff7"
        );
        assert!(!sc.is_sampled());
        assert!(b3_parent(&headers(&[("b3", "nonsense")])).is_none());
    }
}
