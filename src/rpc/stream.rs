//! A response stream that ends its span when the stream ends.

use std::pin::Pin;
use std::task::{ready, Context as TaskContext, Poll};

use futures_core::Stream;
use opentelemetry::{Context, KeyValue};
use pin_project_lite::pin_project;

use super::request::RpcError;
use crate::active_span::ActiveSpan;

/// Attribute: how the call ended (`ok`, `error`, `cancelled`).
pub(crate) const OUTCOME: &str = "outcome";
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
        attach: Option<Context>,
        span: Option<ActiveSpan>,
        items: u64,
    }

    impl<S> PinnedDrop for TracedStream<S> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(span) = this.span {
                span.set_attribute(KeyValue::new(ITEMS, *this.items as i64));
                span.set_attribute(KeyValue::new(OUTCOME, "cancelled"));
                span.cancel();
            }
        }
    }
}

impl<S> TracedStream<S> {
    pub(crate) fn new(inner: S, attach: Option<Context>, span: ActiveSpan) -> Self {
        Self { inner, attach, span: Some(span), items: 0 }
    }
}

impl<S, T> Stream for TracedStream<S>
where
    S: Stream<Item = Result<T, RpcError>>,
{
    type Item = Result<T, RpcError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let _attached = this.attach.as_ref().map(|context| context.clone().attach());
        let item = ready!(this.inner.poll_next(cx));
        match &item {
            Some(Ok(_)) => *this.items += 1,
            Some(Err(error)) => {
                if let Some(mut span) = this.span.take() {
                    span.set_attribute(KeyValue::new(ITEMS, *this.items as i64));
                    span.set_attribute(KeyValue::new(OUTCOME, "error"));
                    span.fail(error.kind(), error.to_string());
                }
            }
            None => {
                if let Some(mut span) = this.span.take() {
                    span.set_attribute(KeyValue::new(ITEMS, *this.items as i64));
                    span.set_attribute(KeyValue::new(OUTCOME, "ok"));
                    span.end();
                }
            }
        }
        Poll::Ready(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}
