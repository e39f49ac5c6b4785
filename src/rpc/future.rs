//! The future of a traced RPC call, on either side: it becomes the [`TracedStream`] that owns
//! the call's span.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context as TaskContext, Poll};

use opentelemetry::KeyValue;
use pin_project_lite::pin_project;

use super::stream::{TracedStream, OUTCOME};
use crate::active_span::ActiveSpan;

pin_project! {
    /// The future of a traced RPC call: becomes a [`TracedStream`] that owns the span.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use futures_util::TryStreamExt;
    /// use tokentrace::rpc::{CallFuture, ClientLayer, Request, RpcError};
    /// use tower::{Layer, Service};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let transport = tower::service_fn(|_: Request<Bytes>| async {
    ///     Ok::<_, RpcError>(futures_util::stream::iter([Ok::<_, RpcError>(Bytes::from_static(b"token"))]))
    /// });
    /// let mut client = ClientLayer::default().layer(transport);
    /// let call: CallFuture<_> = client.call(Request::new("generate", Bytes::new()));
    /// let items: Vec<Bytes> = call.await.unwrap().try_collect().await.unwrap(); // the span ends here
    /// assert_eq!(items, ["token"]);
    /// # });
    /// ```
    pub struct CallFuture<F> {
        #[pin]
        inner: F,
        span: Option<ActiveSpan>,
        // Whether the span's context is attached while `inner` runs (server side).
        attach: bool,
    }
}

impl<F> CallFuture<F> {
    /// The call `inner`, whose span `span` ends with the response stream; `attach`: the span's
    /// context is attached while `inner` and the stream run (the server side).
    pub(crate) fn new(inner: F, span: ActiveSpan, attach: bool) -> Self {
        Self { inner, span: Some(span), attach }
    }
}

impl<F> fmt::Debug for CallFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallFuture").finish_non_exhaustive()
    }
}

impl<F, St, E> Future for CallFuture<F>
where
    F: Future<Output = Result<St, E>>,
    E: fmt::Display,
{
    type Output = Result<TracedStream<St>, E>;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _attached = this.span.as_ref().filter(|_| *this.attach).map(ActiveSpan::attach);
            ready!(this.inner.poll(task))
        };
        let Some(mut span) = this.span.take() else {
            // Polled again after completion: a contract violation by the caller; fail loudly
            // rather than hang.
            panic!("CallFuture polled after completion");
        };
        Poll::Ready(match result {
            Ok(stream) => Ok(TracedStream::new(stream, span, *this.attach)),
            Err(error) => {
                span.set_attribute(KeyValue::new(OUTCOME, "error"));
                span.fail_with("call failed", &error);
                Err(error)
            }
        })
    }
}
