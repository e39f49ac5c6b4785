//! A response stream that ends its span when the stream ends.

use std::pin::Pin;
use std::task::{ready, Context as TaskContext, Poll};

use futures_core::Stream;
use opentelemetry::KeyValue;
use pin_project_lite::pin_project;

use super::error::RpcError;
use crate::active_span::ActiveSpan;

/// Attribute: how the call ended (`ok`, `error`, `cancelled`).
pub(crate) const OUTCOME: &str = "outcome";
/// Attribute: the worker instance called (client) or serving (server).
pub(crate) const INSTANCE_ID: &str = "instance_id";
/// The most attributes an RPC span gets (four at its start, the two request ids just after, the
/// items and the outcome at its end): the vector is allocated once, at its final size.
pub(crate) const ATTRIBUTES_PER_SPAN: usize = 8;
/// Attribute: number of items the stream delivered.
pub(crate) const ITEMS: &str = "rpc.response.items";

pin_project! {
    /// Wraps an RPC response stream: its span ends when the stream ends (`outcome=ok`), fails
    /// (`outcome=error`) or is dropped before its end (`outcome=cancelled`). On the server it
    /// also attaches the request's context while the handler's stream is polled. Per item:
    /// one integer increment, no clock read, no span operation.
    ///
    /// ```
    /// use tokentrace::rpc::{RpcError, TracedStream};
    /// fn assert_stream<S: futures_core::Stream>() {}
    /// assert_stream::<TracedStream<futures_util::stream::Empty<Result<bytes::Bytes, RpcError>>>>();
    /// ```
    #[derive(Debug)]
    pub struct TracedStream<S> {
        #[pin]
        inner: S,
        span: ActiveSpan,
        // Whether the span's context is attached while `inner` is polled (server side); it
        // stays attached after an error item, as the handler may go on.
        attach: bool,
        items: u64,
    }

    impl<S> PinnedDrop for TracedStream<S> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.span.is_open() {
                record_outcome(this.span, *this.items, "cancelled");
                this.span.cancel();
            }
        }
    }
}

/// Records, on a span about to end, how many items went through and how the stream ended.
fn record_outcome(span: &ActiveSpan, items: u64, outcome: &'static str) {
    span.set_attribute(KeyValue::new(ITEMS, items as i64));
    span.set_attribute(KeyValue::new(OUTCOME, outcome));
}

impl<S> TracedStream<S> {
    pub(crate) fn new(inner: S, span: ActiveSpan, attach: bool) -> Self {
        Self { inner, span, attach, items: 0 }
    }
}

impl<S, T> Stream for TracedStream<S>
where
    S: Stream<Item = Result<T, RpcError>>,
{
    type Item = Result<T, RpcError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let _attached = this.attach.then(|| this.span.attach());
        let item = ready!(this.inner.poll_next(cx));
        match &item {
            Some(Ok(_)) => *this.items += 1,
            // The first error or the end closes the span; what follows is not recorded.
            Some(Err(error)) if this.span.is_open() => {
                record_outcome(this.span, *this.items, "error");
                this.span.fail(error.kind(), error.to_string());
            }
            None if this.span.is_open() => {
                record_outcome(this.span, *this.items, "ok");
                this.span.end();
            }
            _ => {}
        }
        Poll::Ready(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}
