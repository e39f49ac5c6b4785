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
/// use tokentrace::inference::InferenceTracer;
///
/// let phases = InferenceTracer::default();
/// let queue = phases.queue();
/// queue.end();
/// let prefill = phases.prefill(128);
/// // ... run the prefill ...
/// let prefill_span = prefill.span_context();
/// prefill.end();
/// let decode = phases.decode(Some(prefill_span)); // disaggregated: links to the prefill span
/// decode.end();
/// ```
pub struct InferenceTracer<T = DefaultTracer> {
    tracer: Arc<T>,
}

impl Default for InferenceTracer<DefaultTracer> {
    fn default() -> Self {
        Self::with_tracer(DefaultTracer::new())
    }
}

impl<T> Clone for InferenceTracer<T> {
    fn clone(&self) -> Self {
        Self { tracer: Arc::clone(&self.tracer) }
    }
}

impl<T> fmt::Debug for InferenceTracer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InferenceTracer").finish_non_exhaustive()
    }
}

impl<T> InferenceTracer<T>
where
    T: Tracer + Send + Sync + 'static,
    T::Span: Send + Sync + 'static,
{
    /// Phases traced with `tracer`.
    pub fn with_tracer(tracer: T) -> Self {
        Self { tracer: Arc::new(tracer) }
    }

    fn start(&self, name: &'static str, attributes: Vec<KeyValue>, links: Vec<Link>) -> Phase {
        let parent = Context::current();
        let span = self
            .tracer
            .span_builder(name)
            .with_attributes(attributes)
            .with_links(links)
            .start_with_context(&*self.tracer, &parent);
        Phase { span: ActiveSpan::new(parent.with_span(span)) }
    }

    /// Waiting for a slot in the engine.
    pub fn queue(&self) -> Phase {
        self.start("queue", Vec::new(), Vec::new())
    }

    /// The prefill of `input_tokens` prompt tokens.
    pub fn prefill(&self, input_tokens: u64) -> Phase {
        self.start("prefill", vec![KeyValue::new(INPUT_TOKENS, input_tokens as i64)], Vec::new())
    }

    /// Moving `bytes` of KV cache from `source` to `destination` (disaggregated serving).
    pub fn kv_transfer(&self, bytes: u64, source: &str, destination: &str) -> Phase {
        self.start(
            "kv_transfer",
            vec![
                KeyValue::new(KV_BYTES, bytes as i64),
                KeyValue::new(KV_SOURCE, source.to_owned()),
                KeyValue::new(KV_DESTINATION, destination.to_owned()),
            ],
            Vec::new(),
        )
    }

    /// The decode; in disaggregated serving pass the prefill span it continues, which the
    /// decode span links to. Hand it to [`TokenStream`](super::TokenStream) through
    /// [`StatsTarget::Phase`](super::StatsTarget::Phase) to record the stream's statistics on it.
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
/// use tokentrace::inference::InferenceTracer;
///
/// let phases = InferenceTracer::default();
/// let prefill = phases.prefill(64);
/// let _attached = prefill.context().clone().attach(); // work inside is parented to it
/// prefill.set_attribute(KeyValue::new("queue_ms", 1.5));
/// drop(_attached);
/// prefill.end();
/// ```
#[derive(Debug)]
pub struct Phase {
    span: ActiveSpan,
}

impl Phase {
    /// The context holding this span: attach it (or use it as a parent) for work inside the
    /// phase.
    pub fn context(&self) -> &Context {
        self.span.context()
    }

    /// This span's identity, for links (the decode span links to the prefill span).
    pub fn span_context(&self) -> SpanContext {
        self.span.context().span().span_context().clone()
    }

    /// Adds an attribute.
    pub fn set_attribute(&self, attribute: KeyValue) {
        self.span.set_attribute(attribute);
    }

    pub(crate) fn set_attributes(&self, attributes: Vec<KeyValue>) {
        self.span.set_attributes(attributes);
    }

    /// Ends the phase.
    pub fn end(mut self) {
        self.span.end();
    }

    /// Ends the phase as failed.
    pub fn fail(mut self, error_type: &'static str, description: impl Into<std::borrow::Cow<'static, str>>) {
        self.span.fail(error_type, description);
    }

    pub(crate) fn cancel(mut self) {
        self.span.cancel();
    }
}
