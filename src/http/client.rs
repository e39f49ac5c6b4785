//! The client layer: one CLIENT span per outbound HTTP call, with the trace context injected.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};

use http::{Request, Response};
use opentelemetry::trace::{SpanKind, TraceContextExt, TraceId, Tracer};
use opentelemetry::{Context, KeyValue};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::body::TracedBody;
use super::semconv;
use super::{grpc, keep};
use crate::active_span::{record_request_ids, ActiveSpan};
use crate::decisions;
use crate::propagation::{inject_context, RequestIds};
use crate::DefaultTracer;

/// Traces outbound HTTP calls (wrap a `hyper_util` client, or any
/// `tower::Service<http::Request<B>>`).
///
/// For each call it opens a CLIENT span as a child of the current context (one new span id per
/// call), removes any trace headers already on the request, injects exactly one `traceparent`,
/// `tracestate` when non-empty, and the request's `x-request-id` and `request-id` (those of
/// the current context, else valid ones already on the request, else new ones).
///
/// The span, per the HTTP semantic conventions:
/// - name: the method (`GET`, `POST`, …; `_OTHER` for methods the conventions do not list);
/// - when it starts: `http.request.method`, `server.address` and `server.port` (from the URI,
///   else the `Host` header), `url.full` without query or user info (they may hold secrets);
///   then, if sampled, `x_request_id` and `request_id`;
/// - at the response head: `http.response.status_code`; from 400 up also `error.type` (the
///   code) and an error status;
/// - it ends when the response body ends; a transport error ends it failed (`error.type` names
///   the error's type), a body that fails ends it failed (`error.type` = `body`), and a body
///   dropped before its end ends it with `cancelled = true`.
///
/// A gRPC call (`content-type: application/grpc…`), for instance a tonic `Channel` handed to a
/// generated client as `ServiceBuilder::new().layer(ClientLayer::default()).service(channel)`,
/// gets the RPC conventions instead: the name `{package.Service}/{Method}`, `rpc.system =
/// grpc`, `rpc.service`, `rpc.method`, and `rpc.grpc.status_code` from the response headers
/// (trailers-only) or the trailers when the body ends; any code but OK marks the span failed.
/// The trace context and request ids travel as gRPC metadata.
///
/// With keep rules installed (`TOKENTRACE_TRACES_KEEP`), each call also asks for trailers
/// (`te: trailers`) and says the process will tell its decision (`tokentrace-keep: notify`); a
/// `tokentrace-kept-by` trailer keeps this process's part of the trace, and if this process
/// keeps the trace later, a notice goes to the server through a clone of the inner service
/// (hence `S: Clone` and a `Default` request body).
///
/// ```
/// use http_body_util::Empty;
/// use hyper_util::{client::legacy::Client, rt::TokioExecutor};
/// use tokentrace::http::ClientLayer;
/// use tower::ServiceBuilder;
///
/// let hyper_client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
/// let client = ServiceBuilder::new().layer(ClientLayer::default()).service(hyper_client);
/// # let _ = client;
/// ```
pub struct ClientLayer<T = DefaultTracer> {
    tracer: Arc<T>,
}

impl Default for ClientLayer<DefaultTracer> {
    fn default() -> Self {
        Self::with_tracer(DefaultTracer::new())
    }
}

impl<T> Clone for ClientLayer<T> {
    fn clone(&self) -> Self {
        Self { tracer: Arc::clone(&self.tracer) }
    }
}

impl<T> fmt::Debug for ClientLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLayer").finish_non_exhaustive()
    }
}

impl<T> ClientLayer<T> {
    /// A layer that starts spans with `tracer`.
    ///
    /// ```
    /// use opentelemetry::trace::TracerProvider;
    /// use opentelemetry_sdk::trace::SdkTracerProvider;
    /// use tokentrace::http::ClientLayer;
    ///
    /// let layer = ClientLayer::with_tracer(SdkTracerProvider::builder().build().tracer("frontend"));
    /// # let _ = layer;
    /// ```
    pub fn with_tracer(tracer: T) -> Self {
        Self { tracer: Arc::new(tracer) }
    }
}

impl<S, T> Layer<S> for ClientLayer<T> {
    type Service = ClientService<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientService { inner, tracer: Arc::clone(&self.tracer) }
    }
}

/// The service [`ClientLayer`] produces.
///
/// ```
/// use tokentrace::http::{ClientLayer, ClientService};
/// use tower_layer::Layer;
///
/// let service: ClientService<_, _> = ClientLayer::default().layer(tower::service_fn(|_: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// }));
/// # let _ = service;
/// ```
pub struct ClientService<S, T = DefaultTracer> {
    inner: S,
    tracer: Arc<T>,
}

impl<S: Clone, T> Clone for ClientService<S, T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), tracer: Arc::clone(&self.tracer) }
    }
}

impl<S: fmt::Debug, T> fmt::Debug for ClientService<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientService").field("inner", &self.inner).finish_non_exhaustive()
    }
}

crate::inner_accessors!(
    ClientService,
    "tokentrace::http::ClientLayer::default().layer(tower::service_fn(|_: http::Request<String>| async {
    Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
}))"
);

impl<S, T, ReqBody, ResBody> Service<Request<ReqBody>> for ClientService<S, T>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: fmt::Display,
    ReqBody: Default + Send + 'static,
    ResBody: http_body::Body,
    T: Tracer + Send + Sync + 'static,
    T::Span: Send + Sync + 'static,
{
    type Response = Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = ClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let parent = Context::current();
        let method = semconv::method(request.method());
        let mut attributes = vec![KeyValue::new(semconv::HTTP_REQUEST_METHOD, method)];
        semconv::push_server_address(
            &mut attributes,
            request.uri(),
            request.headers().get(http::header::HOST),
        );
        attributes.push(KeyValue::new(semconv::URL_FULL, url_without_secrets(request.uri())));
        let grpc = grpc::is_grpc(request.headers()).then(|| grpc::span_name(request.uri().path())).flatten();
        let side = grpc.is_some().then_some(grpc::Side::Client);
        let name: std::borrow::Cow<'static, str> = match grpc {
            Some((name, rpc)) => {
                attributes.extend(rpc);
                name
            }
            None => method.into(),
        };
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&*self.tracer, &parent);
        let ids = RequestIds::for_outbound(&parent, request.headers());
        record_request_ids(&mut span, &ids);
        let cx = parent.with_span(span);

        inject_context(request.headers_mut(), &cx);
        ids.inject(request.headers_mut());
        let keep = self.keep_decisions(&mut request, &cx);

        let inner = self.inner.call(request);
        ClientFuture { inner, span: Some(ActiveSpan::new(cx)), grpc: side, keep }
    }
}

impl<S, T> ClientService<S, T> {
    /// With keep rules installed: asks for trailers (where the server says it kept the trace),
    /// and registers the server to hear if this process keeps it. The trace, for the response.
    fn keep_decisions<B>(&self, request: &mut Request<B>, cx: &Context) -> Option<(grpc::Side, TraceId)>
    where
        S: Service<Request<B>> + Clone + Send + 'static,
        S::Future: Send,
        B: Default + Send + 'static,
    {
        if !decisions::active() {
            return None;
        }
        let trace_id = cx.span().span_context().trace_id();
        if trace_id == TraceId::INVALID {
            return None;
        }
        let headers = request.headers_mut();
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        // The server waits for this process's decision.
        headers.insert(
            http::HeaderName::from_static(decisions::WILL_TELL),
            http::HeaderValue::from_static(decisions::WILL_TELL_VALUE),
        );
        if let Some(callee) = keep::callee(&self.inner, request.uri()) {
            decisions::calling(Some(trace_id), &callee);
        }
        Some((grpc::Side::Client, trace_id))
    }
}

/// `scheme://host[:port]/path`: the query and any user info are left out, as they may hold
/// secrets.
fn url_without_secrets(uri: &http::Uri) -> String {
    let path = uri.path();
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => match authority.port_u16() {
            Some(port) => format!("{scheme}://{}:{port}{path}", authority.host()),
            None => format!("{scheme}://{}{path}", authority.host()),
        },
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_leave_out_queries_and_user_info() {
        let url = |text: &str| super::url_without_secrets(&text.parse().unwrap());
        assert_eq!(url("http://user:pw@worker:9000/v1/x?token=secret"), "http://worker:9000/v1/x");
        assert_eq!(url("https://worker/v1/x"), "https://worker/v1/x");
        assert_eq!(url("/relative?q=1"), "/relative");
    }
}

pin_project! {
    /// The response future of [`ClientService`]; the span moves into the response body.
    pub struct ClientFuture<F> {
        #[pin]
        inner: F,
        span: Option<ActiveSpan>,
        // A gRPC call: its status comes in the response headers or trailers.
        grpc: Option<grpc::Side>,
        // With keep rules: the trace whose decision the response's trailers may carry.
        keep: Option<(grpc::Side, TraceId)>,
    }
}

impl<F> fmt::Debug for ClientFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ClientFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: fmt::Display,
    B: http_body::Body,
{
    type Output = Result<Response<TracedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(task));
        let mut span = this.span.take();
        Poll::Ready(match result {
            Ok(response) => {
                let status = response.status();
                semconv::record_status(
                    span.as_ref(),
                    status,
                    status.is_client_error() || status.is_server_error(),
                );
                Ok(TracedBody::wrap(response, span, false, *this.grpc, *this.keep))
            }
            Err(error) => {
                if let Some(span) = span.as_mut() {
                    span.fail_with("request failed", &error);
                }
                Err(error)
            }
        })
    }
}
