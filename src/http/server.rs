//! The server layer: one span per inbound HTTP request, ended with its response body.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};
use std::time::Instant;

use http::{HeaderName, HeaderValue, Request, Response};
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, Tracer};
use opentelemetry::{Context, KeyValue};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::body::TracedBody;
use super::semconv;
use super::{grpc, keep};
use crate::active_span::{record_request_ids, ActiveSpan};
use crate::decisions;
use crate::propagation::{
    mark_random_trace, names, with_received_request, Inbound, RecordedBaggage, RequestIds,
};
use crate::DefaultTracer;

/// Span name used by NVIDIA Dynamo's frontend, kept so its dashboards and queries match.
///
/// ```
/// use tokentrace::http::{ServerLayer, SpanNameStyle, DYNAMO_SPAN_NAME};
///
/// // The default style names every server span so:
/// let layer = ServerLayer::default().span_name(SpanNameStyle::Dynamo);
/// assert_eq!(DYNAMO_SPAN_NAME, "http-request");
/// # let _ = layer;
/// ```
pub const DYNAMO_SPAN_NAME: &str = "http-request";

/// How the server span is named.
///
/// ```
/// use tokentrace::http::{ServerLayer, SpanNameStyle};
/// let layer = ServerLayer::default().span_name(SpanNameStyle::MethodAndRoute);
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpanNameStyle {
    /// `http-request`, as NVIDIA Dynamo names it (the default).
    #[default]
    Dynamo,
    /// `{method} {route}` per the HTTP semantic conventions (`{method}` alone when no route
    /// is known; the route comes from axum's `MatchedPath`).
    MethodAndRoute,
}

type Filter = Arc<dyn Fn(&http::Method, &http::Uri) -> bool + Send + Sync>;

/// Traces every inbound request of an HTTP service (an axum `Router`, any
/// `tower::Service<http::Request<B>>`).
///
/// For each request it:
/// - extracts the caller's W3C trace context and baggage with the installed
///   [`Propagators`](crate::propagation::Propagators), or starts a new trace; baggage goes into the
///   context as OpenTelemetry `Baggage` and into no span or log unless [`ServerLayer::record_baggage`]
///   names its key;
/// - opens the SERVER span (`http-request` by default) with the stable HTTP semantic-convention
///   attributes, then `x_request_id` and `request_id` if the span is sampled (never arbitrary
///   headers; the sampler sees the HTTP attributes, not the per-request ids);
/// - keeps a valid inbound `x-request-id` or generates one, echoes it on the response, and
///   stores two typed extensions: [`RequestIds`] (a handler takes `Extension<RequestIds>`) and
///   the request's `opentelemetry::Context` (`Extension<tokentrace::opentelemetry::Context>`,
///   its span and the ids);
/// - attaches the context while the handler's future and the response body are polled, so log
///   lines and outbound calls (through [`ClientLayer`](super::ClientLayer) or
///   [`rpc::ClientLayer`](crate::rpc::ClientLayer)) join the trace;
/// - ends the span when the response **body** ends, fails or is dropped (`cancelled=true`).
///
/// A gRPC request (`content-type: application/grpc…`), for instance under tonic's
/// `Server::builder().layer(ServerLayer::default())`, gets the RPC conventions instead: the
/// name `{package.Service}/{Method}`, `rpc.system = grpc`, `rpc.service`, `rpc.method`, and
/// `rpc.grpc.status_code` from the response headers (trailers-only) or the trailers when the
/// stream ends; only UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and
/// DATA_LOSS mark the span failed. A caller that drops a stream ends it as cancelled.
///
/// With keep rules installed (`TOKENTRACE_TRACES_KEEP`), a response announces and ends with a
/// `tokentrace-kept-by` trailer when this process kept the request's trace, and the layer
/// answers a caller's keep notice (`POST /.well-known/tokentrace/kept`, 204) itself, without
/// calling the service (hence a `Default` response body).
///
/// `ServerLayer::default()` starts each span with the global tracer provider installed at that
/// moment ([`DefaultTracer`]), so it may be built before or after `telemetry::init`;
/// [`ServerLayer::with_tracer`] takes any other tracer.
///
/// Its cost per request, beside the alternatives, is in `BENCHMARKS.md` (`cargo bench --bench layers`).
///
/// ```
/// use axum::{routing::get, Router};
/// use tokentrace::http::ServerLayer;
///
/// let app: Router = Router::new()
///     .route("/v1/models", get(|| async { "[]" }))
///     .route("/health", get(|| async { "ok" }))
///     .layer(ServerLayer::default().filter(|_, uri| uri.path() != "/health"));
/// # let _ = app;
/// ```
pub struct ServerLayer<T = DefaultTracer> {
    tracer: Arc<T>,
    filter: Option<Filter>,
    public_endpoint: bool,
    span_name: SpanNameStyle,
    recorded_baggage: RecordedBaggage,
}

impl Default for ServerLayer<DefaultTracer> {
    fn default() -> Self {
        Self::with_tracer(DefaultTracer::new())
    }
}

impl<T> Clone for ServerLayer<T> {
    fn clone(&self) -> Self {
        Self {
            tracer: Arc::clone(&self.tracer),
            filter: self.filter.clone(),
            public_endpoint: self.public_endpoint,
            span_name: self.span_name,
            recorded_baggage: self.recorded_baggage.clone(),
        }
    }
}

impl<T> fmt::Debug for ServerLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerLayer")
            .field("filter", &self.filter.is_some())
            .field("public_endpoint", &self.public_endpoint)
            .field("span_name", &self.span_name)
            .field("recorded_baggage", &self.recorded_baggage)
            .finish_non_exhaustive()
    }
}

impl<T> ServerLayer<T>
where
    T: Tracer + Send + Sync + 'static,
    T::Span: Send + Sync + 'static,
{
    /// A layer that starts spans with `tracer`.
    ///
    /// ```
    /// use opentelemetry_sdk::trace::SdkTracerProvider;
    /// use opentelemetry::trace::TracerProvider;
    /// use tokentrace::http::ServerLayer;
    ///
    /// let provider = SdkTracerProvider::builder().build();
    /// let layer = ServerLayer::with_tracer(provider.tracer("frontend"));
    /// # let _ = layer;
    /// ```
    pub fn with_tracer(tracer: T) -> Self {
        Self {
            tracer: Arc::new(tracer),
            filter: None,
            public_endpoint: false,
            span_name: SpanNameStyle::Dynamo,
            recorded_baggage: RecordedBaggage::default(),
        }
    }

    /// Traces only the requests for which `filter(method, uri)` is true (for example, not
    /// `/health` or `/metrics`). Untraced requests still get an `x-request-id` and carry the
    /// caller's context on.
    ///
    /// ```
    /// use tokentrace::http::ServerLayer;
    /// let layer = ServerLayer::default().filter(|method, uri| method != "OPTIONS" && !uri.path().starts_with("/metrics"));
    /// # let _ = layer;
    /// ```
    pub fn filter<F>(mut self, filter: F) -> Self
    where
        F: Fn(&http::Method, &http::Uri) -> bool + Send + Sync + 'static,
    {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// For a service exposed to the public: an inbound trace context is not trusted. Each
    /// request starts a new trace whose root span links to the caller's context, the caller's
    /// sampled flag is not obeyed, and inbound baggage is dropped. With keep rules, no keep
    /// decision crosses it either way: the caller's notices reach the application (an unknown
    /// path) and the response carries no `tokentrace-kept-by` trailer.
    ///
    /// ```
    /// use tokentrace::http::ServerLayer;
    /// let layer = ServerLayer::default().public_endpoint();
    /// # let _ = layer;
    /// ```
    pub fn public_endpoint(mut self) -> Self {
        self.public_endpoint = true;
        self
    }

    /// Copies the values of these baggage keys into the server span as `baggage.<key>`
    /// attributes (bounded: see [`RecordedBaggage`]). No other baggage value is recorded.
    ///
    /// ```
    /// use tokentrace::http::ServerLayer;
    /// let layer = ServerLayer::default().record_baggage(["tenant"]);
    /// # let _ = layer;
    /// ```
    pub fn record_baggage<I>(mut self, keys: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.recorded_baggage = RecordedBaggage::new(keys);
        self
    }

    /// How spans are named (default: `http-request`, as Dynamo).
    ///
    /// ```
    /// use axum::{routing::post, Router};
    /// use tokentrace::http::{ServerLayer, SpanNameStyle};
    ///
    /// // Spans named `POST /v1/chat/completions` (the route, not the path, so names stay few).
    /// let app: Router = Router::new()
    ///     .route("/v1/chat/completions", post(|| async { "{}" }))
    ///     .layer(ServerLayer::default().span_name(SpanNameStyle::MethodAndRoute));
    /// # let _ = app;
    /// ```
    pub fn span_name(mut self, style: SpanNameStyle) -> Self {
        self.span_name = style;
        self
    }

    /// Starts the server span for `request` under `parent`.
    fn start_span<B>(
        &self,
        request: &Request<B>,
        parent: &Context,
        ids: &RequestIds,
        link: Option<Link>,
        is_grpc: bool,
    ) -> T::Span {
        let method = semconv::method(request.method());
        let route = matched_path(request);
        let uri = request.uri();
        let mut attributes = Vec::with_capacity(ATTRIBUTES_PER_SPAN);
        attributes.extend([
            KeyValue::new(semconv::HTTP_REQUEST_METHOD, method),
            KeyValue::new(semconv::URL_PATH, uri.path().to_owned()),
            KeyValue::new(semconv::URL_SCHEME, uri.scheme_str().map_or("http", scheme_name)),
            KeyValue::new(semconv::NETWORK_PROTOCOL_VERSION, semconv::protocol_version(request.version())),
        ]);
        if let Some(route) = route {
            attributes.push(KeyValue::new(semconv::HTTP_ROUTE, route.to_owned()));
        }
        semconv::push_server_address(&mut attributes, uri, request.headers().get(http::header::HOST));
        attributes.extend(self.recorded_baggage.attributes(parent));
        let grpc = is_grpc.then(|| grpc::span_name(uri.path())).flatten();
        let name: Cow<'static, str> = match (grpc, self.span_name, route) {
            (Some((name, rpc)), _, _) => {
                attributes.extend(rpc);
                name
            }
            (None, SpanNameStyle::Dynamo, _) => Cow::Borrowed(DYNAMO_SPAN_NAME),
            (None, SpanNameStyle::MethodAndRoute, Some(route)) => Cow::Owned(format!("{method} {route}")),
            (None, SpanNameStyle::MethodAndRoute, None) => Cow::Borrowed(method),
        };
        let mut builder =
            self.tracer.span_builder(name).with_kind(SpanKind::Server).with_attributes(attributes);
        if let Some(link) = link {
            builder = builder.with_links(vec![link]);
        }
        let mut span = builder.start_with_context(&*self.tracer, parent);
        record_request_ids(&mut span, ids);
        span
    }
}

/// Attributes a server span starts with, the two request ids recorded just after its start and
/// the status code set at the response: the vector is allocated once, at its final size.
const ATTRIBUTES_PER_SPAN: usize = 10;

/// Scheme names as static strings (only `http`/`https` are expected here).
fn scheme_name(scheme: &str) -> &'static str {
    match scheme {
        "https" => "https",
        "http" => "http",
        _ => "_OTHER",
    }
}

#[cfg(feature = "axum")]
fn matched_path<B>(request: &Request<B>) -> Option<&str> {
    request.extensions().get::<axum::extract::MatchedPath>().map(|path| path.as_str())
}

#[cfg(not(feature = "axum"))]
fn matched_path<B>(_request: &Request<B>) -> Option<&str> {
    None
}

impl<S, T> Layer<S> for ServerLayer<T> {
    type Service = ServerService<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerService { inner, layer: self.clone() }
    }
}

/// The service [`ServerLayer`] produces.
///
/// ```
/// use tokentrace::http::{ServerLayer, ServerService};
/// use tower_layer::Layer;
///
/// let service: ServerService<_, _> = ServerLayer::default().layer(tower::service_fn(|_: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// }));
/// # let _ = service;
/// ```
pub struct ServerService<S, T = DefaultTracer> {
    inner: S,
    layer: ServerLayer<T>,
}

impl<S: Clone, T> Clone for ServerService<S, T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), layer: self.layer.clone() }
    }
}

impl<S: fmt::Debug, T> fmt::Debug for ServerService<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerService").field("inner", &self.inner).field("layer", &self.layer).finish()
    }
}

crate::inner_accessors!(
    ServerService,
    "tokentrace::http::ServerLayer::default().layer(tower::service_fn(|_: http::Request<String>| async {
    Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
}))"
);

impl<S, T, ReqBody, ResBody> Service<Request<ReqBody>> for ServerService<S, T>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: fmt::Display,
    ResBody: http_body::Body + Default,
    T: Tracer + Send + Sync + 'static,
    T::Span: Send + Sync + 'static,
{
    type Response = Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // Keep decisions cross this hop only with keep rules installed, and never a public
        // endpoint, whose trace is its own, not the caller's (see `keep`). A caller's notice is
        // answered here, not by the application.
        let keep_decisions = !self.layer.public_endpoint && decisions::active();
        if keep_decisions {
            if let Some((trace_id, rule)) = keep::notice(&request) {
                decisions::kept_by_peer(Some(trace_id), &rule);
                return ResponseFuture::noticed();
            }
        }
        let arrival = Instant::now();
        let ids = RequestIds::receive(request.headers_mut());
        let grpc = grpc::is_grpc(request.headers()).then_some(grpc::Side::Server);
        let traced = self.layer.filter.as_ref().is_none_or(|filter| filter(request.method(), request.uri()));
        let Inbound { parent, link, root } = Inbound::extract(request.headers(), self.layer.public_endpoint);
        let span = traced.then(|| self.layer.start_span(&request, &parent, &ids, link, grpc.is_some()));
        let x_request_id = ids.x_request_id.header_value().clone();
        request.extensions_mut().insert(ids.clone());
        let cx = with_received_request(&parent, ids, arrival, None);
        let scope = match span {
            // A trace started here has a random id (the SDK's generator): Level 2 says so.
            Some(span) if root => ActiveSpan::new(mark_random_trace(cx.with_span(span))),
            Some(span) => ActiveSpan::new(cx.with_span(span)),
            None => ActiveSpan::untraced(cx),
        };
        request.extensions_mut().insert(scope.context().clone());
        // The response's trailers say whether this process kept the trace it continues.
        let keep = keep_decisions.then(|| parent.span().span_context().clone()).and_then(|caller| {
            let trace_id = caller.trace_id();
            (caller.is_remote() && caller.is_valid()).then(|| {
                decisions::serving(trace_id, request.headers());
                (grpc::Side::Server, trace_id)
            })
        });
        let inner = {
            let _attached = scope.attach();
            self.inner.call(request)
        };
        ResponseFuture {
            inner: Some(inner),
            scope: Some(scope),
            x_request_id: Some(x_request_id),
            grpc,
            keep,
        }
    }
}

pin_project! {
    /// The response future of [`ServerService`]: attaches the request's context while the
    /// handler runs, then hands the span to the response body.
    ///
    /// If it is dropped before the response is ready (the client went away), the span ends
    /// as `cancelled`.
    ///
    /// ```
    /// use tokentrace::http::{ResponseFuture, ServerLayer};
    /// use tower::{Layer, Service};
    ///
    /// let mut service = ServerLayer::default().layer(tower::service_fn(|_: http::Request<String>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    /// }));
    /// let future: ResponseFuture<_> = service.call(http::Request::new(String::new()));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let response = future.await.unwrap();
    /// assert!(response.headers().contains_key("x-request-id")); // echoed, generated here
    /// # });
    /// ```
    pub struct ResponseFuture<F> {
        // None: a keep notice, answered at once.
        #[pin]
        inner: Option<F>,
        // The request's context, attached while `inner` runs, and its span (if traced); taken
        // by the response body.
        scope: Option<ActiveSpan>,
        // Echoed on the response: taken, not cloned, when the response is ready.
        x_request_id: Option<HeaderValue>,
        // A gRPC call: its status comes in the response headers or trailers.
        grpc: Option<grpc::Side>,
        // With keep rules: the trace whose decision the response's trailers carry.
        keep: Option<(grpc::Side, TraceId)>,
    }
}

impl<F> ResponseFuture<F> {
    fn noticed() -> Self {
        Self { inner: None, scope: None, x_request_id: None, grpc: None, keep: None }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").field("x_request_id", &self.x_request_id).finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: fmt::Display,
    B: http_body::Body + Default,
{
    type Output = Result<Response<TracedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Ok(TracedBody::wrap(keep::noticed(), None, false, None, None)));
        };
        let result = {
            let _attached = this.scope.as_ref().map(ActiveSpan::attach);
            ready!(inner.poll(task))
        };
        // Untraced, `scope` holds only the context: recording on it does nothing.
        let mut scope = this.scope.take();
        Poll::Ready(match result {
            Ok(mut response) => {
                let status = response.status();
                // Server spans mark 5xx as errors; 4xx are the caller's problem.
                semconv::record_status(scope.as_ref(), status, status.is_server_error());
                if let Some(x_request_id) = this.x_request_id.take() {
                    response
                        .headers_mut()
                        .insert(const { HeaderName::from_static(names::X_REQUEST_ID) }, x_request_id);
                }
                if this.keep.is_some() {
                    // HTTP/1.1 sends only the trailers the response announces.
                    response
                        .headers_mut()
                        .append(http::header::TRAILER, HeaderValue::from_static(keep::KEPT_BY_NAME));
                }
                Ok(TracedBody::wrap(response, scope, true, *this.grpc, *this.keep))
            }
            Err(error) => {
                if let Some(scope) = scope.as_mut() {
                    scope.fail_with("service failed", &error);
                }
                Err(error)
            }
        })
    }
}
