//! A started span and the one place that ends it, whichever way the work finishes.

use std::borrow::Cow;

use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};

/// Attribute set on spans whose work was abandoned before its end (client gone, stream dropped).
pub(crate) const CANCELLED: &str = "cancelled";
/// Semantic-convention attribute naming the class of error.
pub(crate) const ERROR_TYPE: &str = "error.type";

/// Owns a span (inside its `Context`) until the work ends. Handed from a response future to its
/// body or stream; dropping it before an explicit end records a cancellation, so a span is
/// ended exactly once on every path.
#[derive(Debug)]
pub(crate) struct ActiveSpan {
    cx: Option<Context>,
}

impl ActiveSpan {
    pub(crate) fn new(cx: Context) -> Self {
        Self { cx: Some(cx) }
    }

    pub(crate) fn set_attribute(&self, attribute: KeyValue) {
        if let Some(cx) = &self.cx {
            cx.span().set_attribute(attribute);
        }
    }

    pub(crate) fn set_attributes(&self, attributes: Vec<KeyValue>) {
        if let Some(cx) = &self.cx {
            cx.span().set_attributes(attributes);
        }
    }

    /// Marks the span failed (it stays open).
    pub(crate) fn set_error(
        &self,
        error_type: impl Into<Cow<'static, str>>,
        description: impl Into<Cow<'static, str>>,
    ) {
        if let Some(cx) = &self.cx {
            let span = cx.span();
            span.set_attribute(KeyValue::new(ERROR_TYPE, error_type.into()));
            span.set_status(Status::error(description));
        }
    }

    /// Ends the span: the work finished.
    pub(crate) fn end(&mut self) {
        if let Some(cx) = self.cx.take() {
            cx.span().end();
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
        self.fail(std::any::type_name::<E>(), format!("{what}: {error}"));
    }

    /// Ends the span as abandoned before its end.
    pub(crate) fn cancel(&mut self) {
        if self.cx.is_some() {
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
