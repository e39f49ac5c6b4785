//! The tracer every layer uses unless it is given one.
//!
//! Why not just OpenTelemetry's global tracer: its `BoxedTracer` boxes every span, and a span
//! stored in a `Context` is boxed once more (`Context::with_span` boxes whatever span it is
//! given), so each request would pay an extra allocation and two dynamic calls per span
//! operation. Measured on the HTTP server layer (`cargo bench --bench layers`, row
//! `tokentrace_global_tracer`, 2-core Xeon, eleven runs): +0.02 to +0.20 µs per request over the
//! same layer with a concrete SDK tracer. When tokentrace's own telemetry set up the process, the
//! provider it installed is known here, and the layers use its tracer directly.

use std::borrow::Cow;
use std::fmt;
use std::time::SystemTime;

use opentelemetry::global::{self, BoxedSpan, BoxedTracer};
use opentelemetry::trace::{Span, SpanBuilder, SpanContext, Status, Tracer};
use opentelemetry::{Context, KeyValue};

/// The instrumentation scope of every span tokentrace starts with its default tracer.
const SCOPE: &str = "tokentrace";

/// The provider [`Telemetry::install`](crate::telemetry::Telemetry::install) made global, while
/// its guard lives: default tracers use it directly.
#[cfg(feature = "telemetry")]
pub(crate) mod installed {
    use std::sync::{PoisonError, RwLock};

    use opentelemetry_sdk::trace::SdkTracerProvider;

    static PROVIDER: RwLock<Option<SdkTracerProvider>> = RwLock::new(None);

    /// Records `provider` as installed (`None` once its guard shuts it down).
    pub(crate) fn set(provider: Option<SdkTracerProvider>) {
        *PROVIDER.write().unwrap_or_else(PoisonError::into_inner) = provider;
    }

    pub(crate) fn get() -> Option<SdkTracerProvider> {
        PROVIDER.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The tracer the layers use unless given one (`ServerLayer::default()` and the like): the
/// global tracer provider's, taken when the layer is built.
///
/// When that provider is the one [`tokentrace::telemetry::init`](crate::telemetry::init)
/// installed, its SDK tracer is used directly rather than through OpenTelemetry's
/// `BoxedTracer`, which saves an allocation and two dynamic calls per span; the spans are the
/// same. A program that replaces the global provider after `init` should hand its tracer to the
/// layers with `with_tracer`.
///
/// ```
/// use opentelemetry::trace::{Span, Tracer};
/// use tokentrace::DefaultTracer;
///
/// let tracer = DefaultTracer::new();
/// let mut span = tracer.start("work");
/// span.end();
/// ```
pub struct DefaultTracer(Route);

enum Route {
    #[cfg(feature = "telemetry")]
    Installed(opentelemetry_sdk::trace::SdkTracer),
    Global(BoxedTracer),
}

impl DefaultTracer {
    /// The tracer of the provider installed now (see the type's docs).
    ///
    /// ```
    /// let tracer = tokentrace::DefaultTracer::new();
    /// # let _ = tracer;
    /// ```
    pub fn new() -> Self {
        #[cfg(feature = "telemetry")]
        if let Some(provider) = installed::get() {
            use opentelemetry::trace::TracerProvider as _;
            return Self(Route::Installed(provider.tracer(SCOPE)));
        }
        Self(Route::Global(global::tracer(SCOPE)))
    }

    /// Whether spans go straight to the SDK provider tokentrace's telemetry installed, rather
    /// than through the global `BoxedTracer`.
    ///
    /// ```
    /// // Nothing installed by `tokentrace::telemetry` in this program.
    /// assert!(!tokentrace::DefaultTracer::new().is_direct());
    /// ```
    pub fn is_direct(&self) -> bool {
        match self.0 {
            #[cfg(feature = "telemetry")]
            Route::Installed(_) => true,
            Route::Global(_) => false,
        }
    }
}

impl Default for DefaultTracer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for DefaultTracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultTracer").field("direct", &self.is_direct()).finish()
    }
}

impl Tracer for DefaultTracer {
    type Span = DefaultSpan;

    fn build_with_context(&self, builder: SpanBuilder, parent_cx: &Context) -> DefaultSpan {
        DefaultSpan(match &self.0 {
            #[cfg(feature = "telemetry")]
            Route::Installed(tracer) => SpanRoute::Installed(tracer.build_with_context(builder, parent_cx)),
            Route::Global(tracer) => SpanRoute::Global(tracer.build_with_context(builder, parent_cx)),
        })
    }
}

/// A span of [`DefaultTracer`]: the SDK's own span, or the global tracer's boxed one.
///
/// ```
/// use opentelemetry::trace::{Span, Tracer};
///
/// let span: tokentrace::DefaultSpan = tokentrace::DefaultTracer::new().start("work");
/// assert!(!span.span_context().is_valid()); // no tracer provider installed here
/// ```
#[derive(Debug)]
pub struct DefaultSpan(SpanRoute);

// Unboxed on purpose: the one allocation a span in a `Context` costs is the box
// `Context::with_span` makes; boxing the SDK's span here would add another.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum SpanRoute {
    #[cfg(feature = "telemetry")]
    Installed(opentelemetry_sdk::trace::Span),
    Global(BoxedSpan),
}

/// Runs `$call` on whichever span `$route` holds.
macro_rules! on_span {
    ($route:expr, $span:ident => $call:expr) => {
        match $route {
            #[cfg(feature = "telemetry")]
            SpanRoute::Installed($span) => $call,
            SpanRoute::Global($span) => $call,
        }
    };
}

impl Span for DefaultSpan {
    fn add_event_with_timestamp<T>(&mut self, name: T, timestamp: SystemTime, attributes: Vec<KeyValue>)
    where
        T: Into<Cow<'static, str>>,
    {
        on_span!(&mut self.0, span => span.add_event_with_timestamp(name, timestamp, attributes))
    }

    fn span_context(&self) -> &SpanContext {
        on_span!(&self.0, span => span.span_context())
    }

    fn is_recording(&self) -> bool {
        on_span!(&self.0, span => span.is_recording())
    }

    fn set_attribute(&mut self, attribute: KeyValue) {
        on_span!(&mut self.0, span => span.set_attribute(attribute))
    }

    fn set_attributes(&mut self, attributes: impl IntoIterator<Item = KeyValue>) {
        on_span!(&mut self.0, span => span.set_attributes(attributes))
    }

    fn set_status(&mut self, status: Status) {
        on_span!(&mut self.0, span => span.set_status(status))
    }

    fn update_name<T>(&mut self, new_name: T)
    where
        T: Into<Cow<'static, str>>,
    {
        on_span!(&mut self.0, span => span.update_name(new_name))
    }

    fn add_link(&mut self, span_context: SpanContext, attributes: Vec<KeyValue>) {
        on_span!(&mut self.0, span => span.add_link(span_context, attributes))
    }

    fn end_with_timestamp(&mut self, timestamp: SystemTime) {
        on_span!(&mut self.0, span => span.end_with_timestamp(timestamp))
    }
}

#[cfg(all(test, feature = "telemetry"))]
mod tests {
    use opentelemetry::trace::{SpanKind, TraceContextExt, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

    use super::*;

    /// Starts a child span under a parent through `tracer` and uses every span operation.
    fn exercise(tracer: &DefaultTracer) {
        let parent = tracer.start("parent");
        let parent_cx = Context::new().with_span(parent);
        let mut span =
            tracer.span_builder("child").with_kind(SpanKind::Server).start_with_context(tracer, &parent_cx);
        assert!(span.is_recording());
        assert_eq!(span.span_context().trace_id(), parent_cx.span().span_context().trace_id());
        span.set_attribute(KeyValue::new("one", 1));
        span.set_attributes([KeyValue::new("two", 2), KeyValue::new("three", "3")]);
        span.add_event("token", vec![KeyValue::new("index", 0)]);
        span.add_link(parent_cx.span().span_context().clone(), vec![KeyValue::new("why", "test")]);
        span.set_status(Status::error("failed"));
        span.update_name("renamed");
        span.end_with_timestamp(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7));
        parent_cx.span().end();
    }

    fn exported(route: impl FnOnce(&SdkTracerProvider) -> DefaultTracer) -> Vec<SpanData> {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        exercise(&route(&provider));
        exporter.get_finished_spans().unwrap()
    }

    #[test]
    fn both_routes_record_the_same_span() {
        let direct = exported(|provider| DefaultTracer(Route::Installed(provider.tracer(SCOPE))));
        let boxed = exported(|provider| {
            DefaultTracer(Route::Global(BoxedTracer::new(Box::new(provider.tracer(SCOPE)))))
        });
        assert_eq!(direct.len(), 2);
        assert_eq!(boxed.len(), 2);
        for (direct, boxed) in direct.iter().zip(&boxed) {
            assert_eq!(direct.name, boxed.name);
            assert_eq!(direct.span_kind, boxed.span_kind);
            assert_eq!(direct.attributes, boxed.attributes);
            assert_eq!(direct.status, boxed.status);
            assert_eq!(direct.instrumentation_scope.name(), SCOPE);
            assert_eq!(
                direct.events.iter().map(|e| (&e.name, &e.attributes)).collect::<Vec<_>>(),
                boxed.events.iter().map(|e| (&e.name, &e.attributes)).collect::<Vec<_>>(),
            );
            assert_eq!(direct.links.len(), boxed.links.len());
        }
        let child = &direct[0];
        assert_eq!(child.name, "renamed");
        assert_eq!(child.span_kind, SpanKind::Server);
        assert_eq!(child.attributes.len(), 3);
        assert_eq!(child.events.len(), 1);
        assert_eq!(child.links.len(), 1);
        assert_eq!(child.status, Status::error("failed"));
        assert_eq!(child.end_time, SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7));
        assert_eq!(child.parent_span_id, direct[1].span_context.span_id());
    }

    #[test]
    fn the_installed_provider_is_used_while_it_is_installed() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        installed::set(Some(provider));
        let tracer = DefaultTracer::new();
        installed::set(None);
        assert!(tracer.is_direct());
        assert!(!DefaultTracer::new().is_direct(), "after the guard, the global tracer again");
        tracer.start("direct").end();
        assert_eq!(exporter.get_finished_spans().unwrap()[0].name, "direct");
    }
}
