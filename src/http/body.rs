//! A response body that ends its span when the body ends.

use std::pin::Pin;
use std::task::{ready, Context as TaskContext, Poll};

use http_body::{Body, Frame, SizeHint};
use opentelemetry::trace::TraceId;
use pin_project_lite::pin_project;

use super::{grpc, keep};
use crate::active_span::ActiveSpan;

pin_project! {
    /// Wraps a response body so its span covers the whole body: the span ends at the end of
    /// the stream (last data frame, trailers, or an error), or — if the body is dropped first
    /// because the peer went away — then, recorded as `cancelled`.
    ///
    /// For server responses the request's context is attached while the body is polled, so a
    /// streaming handler's log lines and outbound calls see it. No clock read and no span
    /// operation happens per frame.
    ///
    /// Produced by [`ServerLayer`](super::ServerLayer) and [`ClientLayer`](super::ClientLayer):
    ///
    /// ```
    /// use tokentrace::http::TracedBody;
    /// fn assert_body<B: http_body::Body>() {}
    /// assert_body::<TracedBody<String>>();
    /// ```
    #[derive(Debug)]
    pub struct TracedBody<B: Body> {
        #[pin]
        inner: B,
        span: Option<ActiveSpan>,
        // Whether the span's context is attached while the inner body is polled (server side).
        attach: bool,
        // A gRPC response whose status is still to come, in its trailers: the span's side.
        grpc: Option<grpc::Side>,
        // With keep rules installed: the trace whose keep decision the trailers carry (a server
        // writes it, a client reads it).
        keep: Option<(grpc::Side, TraceId)>,
        // Trailers still to send after the inner body's end (a server's keep decision).
        trailers: Option<http::HeaderMap>,
        // The inner body has ended: it is not polled again.
        done: bool,
    }

    impl<B: Body> PinnedDrop for TracedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(span) = this.span {
                // Servers stop polling a body that reports its end; that is a normal end.
                if this.inner.is_end_stream() {
                    span.end();
                } else {
                    span.cancel();
                }
            }
        }
    }
}

impl<B: Body> TracedBody<B> {
    /// Wraps `response`'s body so that `span` ends with it. For a gRPC call (`grpc`: the span's
    /// side), the status is recorded now when the response is trailers-only, else read from
    /// the trailers when they come. `keep`: the side and trace of a hop whose trailers carry a
    /// keep decision.
    pub(crate) fn wrap(
        response: http::Response<B>,
        span: Option<ActiveSpan>,
        attach: bool,
        grpc: Option<grpc::Side>,
        keep: Option<(grpc::Side, TraceId)>,
    ) -> http::Response<Self> {
        let grpc = match (grpc, span.as_ref()) {
            (Some(side), Some(span)) => match grpc::status(response.headers()) {
                Some(code) => {
                    grpc::record_status(span, side, code, response.headers());
                    None
                }
                None => Some(side),
            },
            _ => None,
        };
        response.map(|inner| Self { inner, span, attach, grpc, keep, trailers: None, done: false })
    }
}

impl<B: Body> Body for TracedBody<B>
where
    B::Error: std::fmt::Display,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(this.trailers.take().map(|trailers| Ok(Frame::trailers(trailers))));
        }
        let attached = this.span.as_ref().filter(|_| *this.attach).map(ActiveSpan::attach);
        let mut frame = ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(frame)) => frame.is_trailers() || this.inner.is_end_stream(),
        };
        if let (Some(span), Some(side), Some(Ok(frame))) = (this.span.as_ref(), *this.grpc, &frame) {
            if let Some(code) = frame.trailers_ref().and_then(grpc::status) {
                grpc::record_status(span, side, code, frame.trailers_ref().expect("trailers"));
            }
        }
        if let Some(span) = this.span.as_mut() {
            match &frame {
                Some(Err(error)) => span.fail("body", format!("response body failed: {error}")),
                _ if ended => span.end(),
                _ => {}
            }
        }
        match (*this.keep, frame.as_mut()) {
            (Some((grpc::Side::Client, trace_id)), Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    keep::heard(trace_id, trailers);
                }
            }
            // The span has ended, so the keep rules have decided if it was the last of its
            // trace here: a kept trace's rule goes into the trailers, or trailers of its own.
            (Some((grpc::Side::Server, trace_id)), frame) if ended && !matches!(frame, Some(Err(_))) => {
                let kept = crate::decisions::kept_here(Some(trace_id));
                if let Some(kept) = kept.as_deref().and_then(keep::kept_trailers) {
                    match frame.and_then(|frame| frame.as_mut().ok()).and_then(Frame::trailers_mut) {
                        Some(trailers) => trailers.extend(kept),
                        None => *this.trailers = Some(kept),
                    }
                }
            }
            _ => {}
        }
        if ended {
            // Nothing runs in this body any more: the last poll (the one that sees `None`
            // after a body that announced its end) need not attach the context again.
            drop(attached);
            *this.attach = false;
            *this.done = true;
            if frame.is_none() {
                return Poll::Ready(this.trailers.take().map(|trailers| Ok(Frame::trailers(trailers))));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        if self.done {
            return self.trailers.is_none();
        }
        self.inner.is_end_stream() && self.keep.is_none_or(|(side, _)| side == grpc::Side::Client)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
