//! The strict propagator as an OpenTelemetry `TextMapPropagator`.

use std::sync::OnceLock;

use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::Context;

use super::carrier::Carrier;
use super::context::{inject_context, RemoteContext};
use super::names;

/// W3C Trace Context, strictly (see [`TraceParent`](super::TraceParent) and
/// [`TraceState`](super::TraceState)), as an OpenTelemetry propagator.
///
/// tokentrace's layers hold one and call it directly; install it globally so that other
/// instrumentation uses the same rules:
///
/// ```
/// use opentelemetry::propagation::TextMapPropagator;
/// use opentelemetry::trace::TraceContextExt;
/// use std::collections::HashMap;
/// use tokentrace::propagation::StrictPropagator;
///
/// opentelemetry::global::set_text_map_propagator(StrictPropagator::new());
///
/// let mut carrier = HashMap::new();
/// carrier.insert("traceparent".to_string(),
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string());
/// let cx = StrictPropagator::new().extract(&carrier);
/// assert!(cx.span().span_context().is_remote());
///
/// let mut out = HashMap::new();
/// StrictPropagator::new().inject_context(&cx, &mut out);
/// assert_eq!(out["traceparent"], carrier["traceparent"]);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct StrictPropagator {
    _private: (),
}

impl StrictPropagator {
    /// The propagator (it holds no state: a `const`, usable in statics).
    ///
    /// ```
    /// use opentelemetry::propagation::TextMapPropagator;
    /// use tokentrace::propagation::StrictPropagator;
    ///
    /// static PROPAGATOR: StrictPropagator = StrictPropagator::new();
    /// let fields: Vec<&str> = PROPAGATOR.fields().collect();
    /// assert!(fields.contains(&"traceparent") && fields.contains(&"tracestate"));
    /// ```
    pub const fn new() -> Self {
        Self { _private: () }
    }
}

/// Reads through an OpenTelemetry `Extractor`.
struct ExtractorCarrier<'a>(&'a dyn Extractor);

impl Carrier for ExtractorCarrier<'_> {
    fn get_all(&self, name: &'static str) -> impl Iterator<Item = &[u8]> {
        self.0.get_all(name).into_iter().flatten().map(str::as_bytes)
    }

    fn set(&mut self, _name: &'static str, _value: &str) {}

    fn remove_all(&mut self, _name: &'static str) {}
}

/// Writes through an OpenTelemetry `Injector`.
struct InjectorCarrier<'a>(&'a mut dyn Injector);

impl Carrier for InjectorCarrier<'_> {
    fn get_all(&self, _name: &'static str) -> impl Iterator<Item = &[u8]> {
        std::iter::empty()
    }

    fn set(&mut self, name: &'static str, value: &str) {
        self.0.set(name, value.to_owned());
    }

    // An `Injector` cannot remove; `set` replaces the value in every injector OpenTelemetry
    // ships, and an absent tracestate is simply not written.
    fn remove_all(&mut self, _name: &'static str) {}
}

impl TextMapPropagator for StrictPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        inject_context(&mut InjectorCarrier(injector), cx);
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match RemoteContext::extract(&ExtractorCarrier(extractor)) {
            Some(remote) => remote.attach_to(cx),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        static FIELDS: OnceLock<[String; 2]> = OnceLock::new();
        FieldIter::new(FIELDS.get_or_init(|| [names::TRACEPARENT.to_owned(), names::TRACESTATE.to_owned()]))
    }
}
