//! A started span and the one place that ends it, whichever way the work finishes.

use std::borrow::Cow;

use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::{Context, ContextGuard, KeyValue};

/// Attribute set on spans whose work was abandoned before its end (client gone, stream dropped).
pub(crate) const CANCELLED: &str = "cancelled";
/// Semantic-convention attribute naming the class of error.
pub(crate) const ERROR_TYPE: &str = "error.type";

/// Owns a span (inside its `Context`) until the work ends. Handed from a response future to its
/// body or stream; dropping it before an explicit end records a cancellation, so a span is
/// ended exactly once on every path.
///
/// It also keeps the `Context` after the span ends, so a holder that attaches the request's
/// context around its work (a server's response future, body or stream) uses this one instead
/// of a clone of its own: every `Context` clone costs two atomic increments, and its drop two
/// decrements, on the request path. A holder with no span of its own to end (an untraced
/// request) holds its context through [`ActiveSpan::untraced`].
#[derive(Debug)]
pub(crate) struct ActiveSpan {
    cx: Context,
    /// Whether the span in `cx` is this holder's and not ended yet: only then is it annotated
    /// or ended here.
    open: bool,
}

impl ActiveSpan {
    /// Holds `cx`, whose span is this holder's to end.
    pub(crate) fn new(cx: Context) -> Self {
        Self { cx, open: true }
    }

    /// Holds `cx` for attaching only: its span (a remote parent's, or none) is never annotated or
    /// ended here.
    pub(crate) fn untraced(cx: Context) -> Self {
        Self { cx, open: false }
    }

    /// The context the work runs in; still valid after the span ends.
    pub(crate) fn context(&self) -> &Context {
        &self.cx
    }

    /// Attaches the context (a clone of it) to this thread until the guard drops: for the work
    /// polled in the request's name.
    pub(crate) fn attach(&self) -> ContextGuard {
        self.cx.clone().attach()
    }

    /// Whether the span is this holder's and still open.
    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    pub(crate) fn set_attribute(&self, attribute: KeyValue) {
        if self.open {
            self.cx.span().set_attribute(attribute);
        }
    }

    pub(crate) fn set_attributes(&self, attributes: Vec<KeyValue>) {
        if self.open {
            self.cx.span().set_attributes(attributes);
        }
    }

    /// Marks the span failed (it stays open).
    pub(crate) fn set_error(
        &self,
        error_type: impl Into<Cow<'static, str>>,
        description: impl Into<Cow<'static, str>>,
    ) {
        if self.open {
            let span = self.cx.span();
            span.set_attribute(KeyValue::new(ERROR_TYPE, error_type.into()));
            span.set_status(Status::error(description));
        }
    }

    /// Ends the span: the work finished.
    pub(crate) fn end(&mut self) {
        if self.open {
            self.open = false;
            self.cx.span().end();
        }
    }

    /// Ends the span as failed.
    pub(crate) fn fail(
        &mut self,
        error_type: impl Into<Cow<'static, str>>,
        description: impl Into<Cow<'static, str>>,
    ) {
        self.set_error(error_type, description);
        self.end();
    }

    /// Ends the span as failed by `error`, whose type names the `error.type`.
    pub(crate) fn fail_with<E: std::fmt::Display>(&mut self, what: &str, error: &E) {
        if self.open {
            self.fail(std::any::type_name::<E>(), format!("{what}: {error}"));
        }
    }

    /// Ends the span as abandoned before its end.
    pub(crate) fn cancel(&mut self) {
        if self.open {
            self.set_attribute(KeyValue::new(CANCELLED, true));
            self.fail("cancelled", "abandoned before the end (peer went away or stream dropped)");
        }
    }
}

impl Drop for ActiveSpan {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Records Dynamo's `x_request_id` and `request_id` attributes on a span that was just started,
/// if it records: an unsampled span would drop the values, so it costs no string at all.
pub(crate) fn record_request_ids<S: opentelemetry::trace::Span>(
    span: &mut S,
    ids: &crate::propagation::RequestIds,
) {
    if span.is_recording() {
        span.set_attribute(KeyValue::new("x_request_id", ids.x_request_id.as_str().to_owned()));
        span.set_attribute(KeyValue::new("request_id", ids.request_id.to_hyphenated()));
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider};

    use super::record_request_ids;
    use crate::propagation::{RequestId, RequestIds, RequestUuid};

    #[test]
    fn request_ids_are_recorded_on_recording_spans_only() {
        let ids = RequestIds {
            x_request_id: RequestId::parse(b"req-7").unwrap(),
            request_id: RequestUuid::parse(b"f47ac10b-58cc-4372-a567-0e02b2c3d479").unwrap(),
        };
        let exporter = InMemorySpanExporter::default();
        let provider = |sampler| {
            SdkTracerProvider::builder().with_sampler(sampler).with_simple_exporter(exporter.clone()).build()
        };
        let (unsampled, sampled) = (provider(Sampler::AlwaysOff), provider(Sampler::AlwaysOn));
        for (name, provider) in [("unsampled", &unsampled), ("sampled", &sampled)] {
            let mut span = provider.tracer("t").start(name);
            record_request_ids(&mut span, &ids);
            span.end();
        }
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.iter().map(|s| &*s.name).collect::<Vec<_>>(), ["sampled"]);
        let attribute = |key: &str| {
            spans[0]
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.as_str().into_owned())
        };
        assert_eq!(attribute("x_request_id").as_deref(), Some("req-7"));
        assert_eq!(attribute("request_id").as_deref(), Some("f47ac10b-58cc-4372-a567-0e02b2c3d479"));
    }
}
