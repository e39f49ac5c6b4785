//! Phase spans of an inference request: queue, prefill, kv_transfer, decode.

use std::fmt;
use std::sync::Arc;

use opentelemetry::trace::{Link, SpanContext, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use crate::active_span::ActiveSpan;
use crate::DefaultTracer;

pub(crate) const INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
const KV_BYTES: &str = "kv.bytes";
const KV_SOURCE: &str = "kv.source";
const KV_DESTINATION: &str = "kv.destination";

/// Opens the phase spans of inference work as children of the current context (under the
/// RPC `handle_payload` span when the worker is wrapped in
/// [`rpc::ServerLayer`](crate::rpc::ServerLayer)).
///
/// ```
/// use tokentrace::inference::Phases;
///
/// let phases = Phases::default();
/// let queue = phases.queue();
/// queue.end();
/// let prefill = phases.prefill(128);
/// // ... run the prefill ...
/// let prefill_span = prefill.span_context();
/// prefill.end();
/// let decode = phases.decode(Some(prefill_span)); // disaggregated: links to the prefill span
/// decode.end();
/// ```
pub struct Phases<T = DefaultTracer> {
    tracer: Arc<T>,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::WorkerMetrics>,
}

impl Default for Phases<DefaultTracer> {
    fn default() -> Self {
        Self::with_tracer(DefaultTracer::new())
    }
}

impl<T> Clone for Phases<T> {
    fn clone(&self) -> Self {
        Self {
            tracer: Arc::clone(&self.tracer),
            #[cfg(feature = "metrics")]
            metrics: self.metrics.clone(),
        }
    }
}

impl<T> fmt::Debug for Phases<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Phases").finish_non_exhaustive()
    }
}

impl<T> Phases<T>
where
    T: Tracer + Send + Sync + 'static,
    T::Span: Send + Sync + 'static,
{
    /// Phases traced with `tracer`.
    ///
    /// ```
    /// use opentelemetry::trace::TracerProvider;
    /// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    /// use tokentrace::inference::Phases;
    ///
    /// let exporter = InMemorySpanExporter::default();
    /// let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    /// let phases = Phases::with_tracer(provider.tracer("worker"));
    /// phases.queue().end();
    /// assert_eq!(exporter.get_finished_spans().unwrap()[0].name, "queue");
    /// ```
    pub fn with_tracer(tracer: T) -> Self {
        Self {
            tracer: Arc::new(tracer),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// Records each phase's duration (and a KV transfer's bytes) in `metrics` when it ends,
    /// with the phase's span as exemplar when sampled.
    ///
    /// ```
    /// use tokentrace::inference::Phases;
    /// use tokentrace::metrics::{Format, WorkerMetrics};
    ///
    /// let metrics = WorkerMetrics::new("backend");
    /// let phases = Phases::default().record_metrics(metrics.clone());
    /// phases.queue().end();
    /// assert!(metrics.render(Format::Prometheus).contains(r#"phase="queue"} 1"#));
    /// ```
    #[cfg(feature = "metrics")]
    pub fn record_metrics(mut self, metrics: crate::metrics::WorkerMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn start(&self, name: &'static str, attributes: Vec<KeyValue>, links: Vec<Link>) -> Phase {
        let parent = Context::current();
        let span = self
            .tracer
            .span_builder(name)
            .with_attributes(attributes)
            .with_links(links)
            .start_with_context(&*self.tracer, &parent);
        #[cfg(feature = "metrics")]
        let recorder = self.metrics.clone().map(|metrics| PhaseRecorder {
            metrics,
            phase: name,
            endpoint: crate::propagation::request_endpoint(&parent).cloned().unwrap_or_default(),
            started: std::time::Instant::now(),
            kv_bytes: None,
        });
        Phase {
            span: ActiveSpan::new(parent.with_span(span)),
            #[cfg(feature = "metrics")]
            recorder,
        }
    }

    /// Waiting for a slot in the engine.
    ///
    /// ```
    /// use tokentrace::inference::Phases;
    ///
    /// let phases = Phases::default();
    /// let queued = phases.queue();
    /// // ... wait for a batch slot ...
    /// queued.end();
    /// ```
    pub fn queue(&self) -> Phase {
        self.start("queue", Vec::new(), Vec::new())
    }

    /// The prefill of `input_tokens` prompt tokens.
    ///
    /// ```
    /// use opentelemetry::trace::TracerProvider;
    /// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    /// use tokentrace::inference::Phases;
    ///
    /// let exporter = InMemorySpanExporter::default();
    /// let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    /// let phases = Phases::with_tracer(provider.tracer("worker"));
    /// phases.prefill(512).end();
    /// let span = &exporter.get_finished_spans().unwrap()[0];
    /// assert_eq!(span.name, "prefill");
    /// let tokens = span.attributes.iter().find(|kv| kv.key.as_str() == "gen_ai.usage.input_tokens");
    /// assert_eq!(tokens.map(|kv| kv.value.as_str()).as_deref(), Some("512"));
    /// ```
    pub fn prefill(&self, input_tokens: u64) -> Phase {
        self.start("prefill", vec![KeyValue::new(INPUT_TOKENS, input_tokens as i64)], Vec::new())
    }

    /// Moving `bytes` of KV cache from `source` to `destination` (disaggregated serving).
    ///
    /// ```
    /// use opentelemetry::trace::TracerProvider;
    /// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    /// use tokentrace::inference::Phases;
    ///
    /// let exporter = InMemorySpanExporter::default();
    /// let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    /// let phases = Phases::with_tracer(provider.tracer("worker"));
    /// let transfer = phases.kv_transfer(64 << 20, "prefill-0", "decode-3");
    /// // ... move the KV blocks ...
    /// transfer.end();
    /// let span = &exporter.get_finished_spans().unwrap()[0];
    /// let value = |key: &str| {
    ///     span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.as_str().into_owned())
    /// };
    /// assert_eq!(value("kv.bytes").as_deref(), Some("67108864"));
    /// assert_eq!(value("kv.destination").as_deref(), Some("decode-3"));
    /// ```
    pub fn kv_transfer(&self, bytes: u64, source: &str, destination: &str) -> Phase {
        #[cfg_attr(not(feature = "metrics"), allow(unused_mut))]
        let mut phase = self.start(
            "kv_transfer",
            vec![
                KeyValue::new(KV_BYTES, bytes as i64),
                KeyValue::new(KV_SOURCE, source.to_owned()),
                KeyValue::new(KV_DESTINATION, destination.to_owned()),
            ],
            Vec::new(),
        );
        #[cfg(feature = "metrics")]
        if let Some(recorder) = &mut phase.recorder {
            recorder.kv_bytes = Some(bytes);
        }
        phase
    }

    /// The decode; in disaggregated serving pass the prefill span it continues, which the
    /// decode span links to. Hand it to [`TokenStream`](super::TokenStream) through
    /// [`StatsTarget::Phase`](super::StatsTarget::Phase) to record the stream's statistics on it.
    ///
    /// ```
    /// use opentelemetry::trace::TracerProvider;
    /// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    /// use tokentrace::inference::Phases;
    ///
    /// let exporter = InMemorySpanExporter::default();
    /// let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    /// let phases = Phases::with_tracer(provider.tracer("worker"));
    /// // The prefill ran on another worker; its span context came with the request.
    /// let prefill = phases.prefill(16);
    /// let prefill_span = prefill.span_context();
    /// prefill.end();
    /// phases.decode(Some(prefill_span.clone())).end();
    /// let spans = exporter.get_finished_spans().unwrap();
    /// assert_eq!(spans[1].links.links[0].span_context, prefill_span);
    /// ```
    pub fn decode(&self, prefill: Option<SpanContext>) -> Phase {
        let links = prefill.filter(SpanContext::is_valid).map(Link::with_context).into_iter().collect();
        self.start("decode", Vec::new(), links)
    }
}

/// An open phase span. End it with [`Phase::end`]; a phase dropped without ending (an early
/// return, a panic, a cancelled future) is recorded as `cancelled`.
///
/// ```
/// use opentelemetry::KeyValue;
/// use tokentrace::inference::Phases;
///
/// let phases = Phases::default();
/// let prefill = phases.prefill(64);
/// let _attached = prefill.context().clone().attach(); // work inside is parented to it
/// prefill.set_attribute(KeyValue::new("queue_ms", 1.5));
/// drop(_attached);
/// prefill.end();
/// ```
#[derive(Debug)]
pub struct Phase {
    span: ActiveSpan,
    #[cfg(feature = "metrics")]
    recorder: Option<PhaseRecorder>,
}

/// Records a phase in the worker's metrics when it ends, however it ends.
#[cfg(feature = "metrics")]
#[derive(Debug)]
struct PhaseRecorder {
    metrics: crate::metrics::WorkerMetrics,
    phase: &'static str,
    endpoint: std::borrow::Cow<'static, str>,
    started: std::time::Instant,
    kv_bytes: Option<u64>,
}

#[cfg(feature = "metrics")]
impl Drop for Phase {
    fn drop(&mut self) {
        if let Some(recorder) = self.recorder.take() {
            let span = self.span.context().span().span_context().clone();
            recorder.metrics.record_phase(
                recorder.phase,
                recorder.endpoint,
                recorder.started,
                &span,
                recorder.kv_bytes,
            );
        }
    }
}

impl Phase {
    /// The context holding this span: attach it (or use it as a parent) for work inside the
    /// phase.
    ///
    /// ```
    /// use opentelemetry::trace::TraceContextExt;
    /// use opentelemetry::Context;
    /// use tokentrace::inference::Phases;
    ///
    /// let phases = Phases::default();
    /// let prefill = phases.prefill(16);
    /// {
    ///     let _attached = prefill.context().clone().attach();
    ///     // Spans and log lines from here on are inside the prefill.
    ///     assert_eq!(Context::current().span().span_context(), &prefill.span_context());
    /// }
    /// prefill.end();
    /// ```
    pub fn context(&self) -> &Context {
        self.span.context()
    }

    /// This span's identity, for links (the decode span links to the prefill span).
    ///
    /// ```
    /// use opentelemetry::trace::TracerProvider;
    /// use opentelemetry_sdk::trace::SdkTracerProvider;
    /// use tokentrace::inference::Phases;
    ///
    /// let provider = SdkTracerProvider::builder().build();
    /// let phases = Phases::with_tracer(provider.tracer("worker"));
    /// let prefill = phases.prefill(16);
    /// let id = prefill.span_context();
    /// assert!(id.is_valid() && id.is_sampled());
    /// prefill.end();
    /// ```
    pub fn span_context(&self) -> SpanContext {
        self.span.context().span().span_context().clone()
    }

    /// Adds an attribute.
    ///
    /// ```
    /// use opentelemetry::trace::TracerProvider;
    /// use opentelemetry::KeyValue;
    /// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    /// use tokentrace::inference::Phases;
    ///
    /// let exporter = InMemorySpanExporter::default();
    /// let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    /// let phases = Phases::with_tracer(provider.tracer("worker"));
    ///
    /// let prefill = phases.prefill(16);
    /// prefill.set_attribute(KeyValue::new("prefix_cache_hit_tokens", 12));
    /// prefill.end();
    /// let span = &exporter.get_finished_spans().unwrap()[0];
    /// assert!(span.attributes.iter().any(|kv| kv.key.as_str() == "prefix_cache_hit_tokens"));
    /// ```
    pub fn set_attribute(&self, attribute: KeyValue) {
        self.span.set_attribute(attribute);
    }

    pub(crate) fn set_attributes(&self, attributes: Vec<KeyValue>) {
        self.span.set_attributes(attributes);
    }

    /// Ends the phase.
    ///
    /// ```
    /// use opentelemetry::trace::TracerProvider;
    /// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    /// use tokentrace::inference::Phases;
    ///
    /// let exporter = InMemorySpanExporter::default();
    /// let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    /// let phases = Phases::with_tracer(provider.tracer("worker"));
    /// phases.queue().end();
    /// drop(phases.prefill(16)); // not ended: recorded as cancelled
    /// let spans = exporter.get_finished_spans().unwrap();
    /// let cancelled = |i: usize| spans[i].attributes.iter().any(|kv| kv.key.as_str() == "cancelled");
    /// assert!(!cancelled(0) && cancelled(1));
    /// ```
    pub fn end(mut self) {
        self.span.end();
    }

    /// Ends the phase as failed.
    ///
    /// ```
    /// use opentelemetry::trace::{Status, TracerProvider};
    /// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    /// use tokentrace::inference::Phases;
    ///
    /// let exporter = InMemorySpanExporter::default();
    /// let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    /// let phases = Phases::with_tracer(provider.tracer("worker"));
    ///
    /// phases.prefill(16).fail("out_of_memory", "KV cache exhausted");
    /// let span = &exporter.get_finished_spans().unwrap()[0];
    /// assert_eq!(span.status, Status::error("KV cache exhausted"));
    /// let error_type = span.attributes.iter().find(|kv| kv.key.as_str() == "error.type");
    /// assert_eq!(error_type.map(|kv| kv.value.as_str()).as_deref(), Some("out_of_memory"));
    /// ```
    pub fn fail(mut self, error_type: &'static str, description: impl Into<std::borrow::Cow<'static, str>>) {
        self.span.fail(error_type, description);
    }

    pub(crate) fn cancel(mut self) {
        self.span.cancel();
    }
}
