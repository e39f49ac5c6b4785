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
