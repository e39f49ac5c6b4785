//! The tracer every layer uses unless it is given one.

use opentelemetry::global::{self, BoxedSpan};
use opentelemetry::trace::{SpanBuilder, Tracer};
use opentelemetry::Context;

/// The instrumentation scope of every span tokentrace starts with its default tracer.
const SCOPE: &str = "tokentrace";

/// The tracer the layers use unless given one (`ServerLayer::default()` and the like): the
/// tracer of whatever global tracer provider is installed **when each span starts**, so a layer
/// built before [`telemetry::init`](crate::telemetry::init) (or before any other call to
/// `opentelemetry::global::set_tracer_provider`) exports through the provider installed later.
///
/// ```
/// use opentelemetry::trace::{Span, Tracer};
/// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
/// use tokentrace::DefaultTracer;
///
/// let tracer = DefaultTracer::new(); // before any provider is installed
/// let exporter = InMemorySpanExporter::default();
/// opentelemetry::global::set_tracer_provider(
///     SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build(),
/// );
/// tracer.start("work").end();
/// assert_eq!(exporter.get_finished_spans().unwrap()[0].name, "work");
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultTracer {
    _private: (),
}

impl DefaultTracer {
    /// The default tracer (see the type's docs).
    ///
    /// ```
    /// let tracer = tokentrace::DefaultTracer::new();
    /// # let _ = tracer;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }
}

impl Tracer for DefaultTracer {
    type Span = BoxedSpan;

    fn build_with_context(&self, builder: SpanBuilder, parent_cx: &Context) -> BoxedSpan {
        global::tracer(SCOPE).build_with_context(builder, parent_cx)
    }
}
