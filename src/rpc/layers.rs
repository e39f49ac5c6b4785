//! The RPC client and server layers: transport-agnostic, over any
//! `tower::Service<rpc::Request<T>>` whose response is a stream of `Result<_, RpcError>`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, Value};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::request::Request;
use super::stream::{TracedStream, OUTCOME};
use crate::active_span::{record_request_ids, ActiveSpan};
use crate::propagation::{
    inject_context, mark_random_trace, with_received_request, Carrier, Inbound, RecordedBaggage, RequestIds,
};
use crate::DefaultTracer;

/// Metadata entry carrying the client's send time (nanoseconds since the Unix epoch), from
/// which the server derives the network transit time.
///
/// ```
/// use bytes::Bytes;
/// use tokentrace::rpc::{ClientLayer, Request, RpcError, SEND_TIMESTAMP};
/// use tower::{Layer, ServiceExt};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let transport = tower::service_fn(|request: Request<Bytes>| async move {
///     let sent: u64 = request.metadata.get(SEND_TIMESTAMP).unwrap().parse().unwrap();
///     assert!(sent > 1_700_000_000_000_000_000); // nanoseconds since 1970
///     Ok::<_, RpcError>(futures_util::stream::empty::<Result<Bytes, RpcError>>())
/// });
/// let stream = ClientLayer::default().layer(transport).oneshot(Request::new("generate", Bytes::new())).await;
/// # drop(stream);
/// # });
/// ```
pub const SEND_TIMESTAMP: &str = "x-frontend-send-ts-ns";
/// Span name of the worker's server span, as NVIDIA Dynamo names it.
///
/// ```
/// use bytes::Bytes;
/// use opentelemetry::trace::TracerProvider;
/// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
/// use tokentrace::rpc::{Request, RpcError, ServerLayer, HANDLE_PAYLOAD};
/// use tower::{Layer, ServiceExt};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let exporter = InMemorySpanExporter::default();
/// let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
/// let handler = tower::service_fn(|_: Request<Bytes>| async {
///     Ok::<_, RpcError>(futures_util::stream::empty::<Result<Bytes, RpcError>>())
/// });
/// let worker = ServerLayer::with_tracer(provider.tracer("worker")).layer(handler);
/// let stream = worker.oneshot(Request::new("generate", Bytes::new())).await.unwrap();
/// drop(stream);
/// assert_eq!(exporter.get_finished_spans().unwrap()[0].name, HANDLE_PAYLOAD);
/// # });
/// ```
pub const HANDLE_PAYLOAD: &str = "handle_payload";

/// The most attributes an RPC span gets (four at its start, the two request ids just after, the
/// items and the outcome at its end): the vector is allocated once, at its final size.
const ATTRIBUTES_PER_SPAN: usize = 8;

const RPC_METHOD: &str = "rpc.method";
const SERVER_ADDRESS: &str = "server.address";
const INSTANCE_ID: &str = "instance_id";
const ATTEMPT: &str = "attempt";
const COMPONENT: &str = "component";
const ENDPOINT: &str = "endpoint";
const TRANSIT_MS: &str = "network.transit_ms";

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Traces calls from the frontend to a worker: a CLIENT span per call (child of the current
/// context; `rpc.method`, `server.address`, `instance_id`, `attempt`, `x_request_id`,
/// `request_id`, `outcome`), with `traceparent`/`tracestate`/`x-request-id`/`request-id` and
/// [`SEND_TIMESTAMP`] injected into the request metadata. The span ends when the response
/// stream ends, fails or is dropped.
///
/// ```
/// use tokentrace::rpc::ClientLayer;
/// let layer = ClientLayer::default().server_address("10.0.0.7:9000").instance_id(7);
/// # let _ = layer;
/// ```
pub struct ClientLayer<T = DefaultTracer> {
    tracer: Arc<T>,
    server_address: Option<Arc<str>>,
    instance_id: Option<i64>,
}

/// Traces a worker's handler: extracts the caller's context from the metadata and opens the
/// `handle_payload` SERVER span (`component`, `endpoint`, `instance_id`, `x_request_id`,
/// `request_id`, `network.transit_ms` from the client's send time), attaches the context while
/// the handler and its stream are polled, and ends the span with the stream.
///
/// ```
/// use tokentrace::rpc::ServerLayer;
/// let layer = ServerLayer::default().component("backend").instance_id(1);
/// # let _ = layer;
/// ```
pub struct ServerLayer<T = DefaultTracer> {
    tracer: Arc<T>,
    component: Option<Arc<str>>,
    instance_id: Option<i64>,
    recorded_baggage: RecordedBaggage,
}

impl Default for ClientLayer<DefaultTracer> {
    fn default() -> Self {
        Self::with_tracer(DefaultTracer::new())
    }
}

impl Default for ServerLayer<DefaultTracer> {
    fn default() -> Self {
        Self::with_tracer(DefaultTracer::new())
    }
}

impl<T> Clone for ClientLayer<T> {
    fn clone(&self) -> Self {
        Self {
            tracer: Arc::clone(&self.tracer),
            server_address: self.server_address.clone(),
            instance_id: self.instance_id,
        }
    }
}

impl<T> Clone for ServerLayer<T> {
    fn clone(&self) -> Self {
        Self {
            tracer: Arc::clone(&self.tracer),
            component: self.component.clone(),
            instance_id: self.instance_id,
            recorded_baggage: self.recorded_baggage.clone(),
        }
    }
}

impl<T> fmt::Debug for ClientLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLayer")
            .field("server_address", &self.server_address)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for ServerLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerLayer")
            .field("component", &self.component)
            .field("instance_id", &self.instance_id)
            .field("recorded_baggage", &self.recorded_baggage)
            .finish_non_exhaustive()
    }
}

impl<T> ClientLayer<T> {
    /// A layer that starts spans with `tracer`.
    ///
    /// ```
    /// use opentelemetry::trace::TracerProvider;
    /// use opentelemetry_sdk::trace::SdkTracerProvider;
    /// use tokentrace::rpc::ClientLayer;
    ///
    /// let provider = SdkTracerProvider::builder().build();
    /// let client = ClientLayer::with_tracer(provider.tracer("frontend"));
    /// # let _ = client;
    /// ```
    pub fn with_tracer(tracer: T) -> Self {
        Self { tracer: Arc::new(tracer), server_address: None, instance_id: None }
    }

    /// The worker's address, recorded as `server.address` (shared by every span of the
    /// layer, not copied per call).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use opentelemetry::trace::TracerProvider;
    /// use opentelemetry_sdk::trace::SdkTracerProvider;
    /// use tokentrace::rpc::{ClientLayer, Request, RpcError};
    /// use tower::{Layer, ServiceExt};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// // Stands in for the transport: sees the metadata the worker would receive.
    /// let transport = tower::service_fn(|request: Request<Bytes>| async move {
    ///     assert!(request.metadata.get("traceparent").is_some());
    ///     assert!(request.metadata.get("x-request-id").is_some());
    ///     Ok::<_, RpcError>(futures_util::stream::empty::<Result<Bytes, RpcError>>())
    /// });
    /// let provider = SdkTracerProvider::builder().build();
    /// let layer = ClientLayer::with_tracer(provider.tracer("frontend")).server_address("worker-0:9000");
    /// let client = layer.layer(transport);
    /// let stream = client.oneshot(Request::new("generate", Bytes::new())).await.unwrap();
    /// # drop(stream);
    /// # });
    /// ```
    pub fn server_address(mut self, address: impl Into<Arc<str>>) -> Self {
        self.server_address = Some(address.into());
        self
    }

    /// The worker instance called, recorded as `instance_id`.
    ///
    /// ```
    /// use tokentrace::rpc::ClientLayer;
    /// let client = ClientLayer::default().server_address("10.0.0.7:9000").instance_id(7);
    /// # let _ = client;
    /// ```
    pub fn instance_id(mut self, id: i64) -> Self {
        self.instance_id = Some(id);
        self
    }
}

impl<T> ServerLayer<T> {
    /// A layer that starts spans with `tracer`.
    ///
    /// ```
    /// use opentelemetry::trace::TracerProvider;
    /// use opentelemetry_sdk::trace::SdkTracerProvider;
    /// use tokentrace::rpc::ServerLayer;
    ///
    /// let provider = SdkTracerProvider::builder().build();
    /// let server = ServerLayer::with_tracer(provider.tracer("worker")).component("prefill");
    /// # let _ = server;
    /// ```
    pub fn with_tracer(tracer: T) -> Self {
        Self {
            tracer: Arc::new(tracer),
            component: None,
            instance_id: None,
            recorded_baggage: RecordedBaggage::default(),
        }
    }

    /// The worker component (for example `backend`, `prefill`, `decode`).
    ///
    /// ```
    /// use tokentrace::rpc::ServerLayer;
    /// let prefill = ServerLayer::default().component("prefill");
    /// let decode = ServerLayer::default().component(String::from("decode"));
    /// # let _ = (prefill, decode);
    /// ```
    pub fn component(mut self, component: impl Into<Arc<str>>) -> Self {
        self.component = Some(component.into());
        self
    }

    /// The worker instance serving, recorded as `instance_id`.
    ///
    /// ```
    /// use tokentrace::rpc::ServerLayer;
    /// let server = ServerLayer::default().component("decode").instance_id(7);
    /// # let _ = server;
    /// ```
    pub fn instance_id(mut self, id: i64) -> Self {
        self.instance_id = Some(id);
        self
    }

    /// Copies the values of these baggage keys into `handle_payload` as `baggage.<key>`
    /// attributes (bounded: see [`RecordedBaggage`]). No other baggage value is recorded.
    ///
    /// ```
    /// use tokentrace::rpc::ServerLayer;
    /// let server = ServerLayer::default().record_baggage(["tenant", "lora_adapter"]);
    /// # let _ = server;
    /// ```
    pub fn record_baggage<I>(mut self, keys: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.recorded_baggage = RecordedBaggage::new(keys);
        self
    }
}

impl<S, T> Layer<S> for ClientLayer<T> {
    type Service = ClientService<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientService { inner, layer: self.clone() }
    }
}

impl<S, T> Layer<S> for ServerLayer<T> {
    type Service = ServerService<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerService { inner, layer: self.clone() }
    }
}

/// The service [`ClientLayer`] produces.
///
/// ```
/// use bytes::Bytes;
/// use tokentrace::rpc::{ClientLayer, ClientService, Request, RpcError};
/// use tower::Layer;
///
/// let transport = tower::service_fn(|_: Request<Bytes>| async {
///     Ok::<_, RpcError>(futures_util::stream::empty::<Result<Bytes, RpcError>>())
/// });
/// let client: ClientService<_> = ClientLayer::default().layer(transport);
/// # let _ = client;
/// ```
#[derive(Debug)]
pub struct ClientService<S, T = DefaultTracer> {
    inner: S,
    layer: ClientLayer<T>,
}

/// The service [`ServerLayer`] produces.
///
/// ```
/// use bytes::Bytes;
/// use tokentrace::rpc::{Request, RpcError, ServerLayer, ServerService};
/// use tower::Layer;
///
/// let handler = tower::service_fn(|request: Request<Bytes>| async move {
///     Ok::<_, RpcError>(futures_util::stream::iter([Ok::<_, RpcError>(request.payload)]))
/// });
/// let worker: ServerService<_> = ServerLayer::default().component("backend").layer(handler);
/// # let _ = worker;
/// ```
#[derive(Debug)]
pub struct ServerService<S, T = DefaultTracer> {
    inner: S,
    layer: ServerLayer<T>,
}

impl<S: Clone, T> Clone for ClientService<S, T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), layer: self.layer.clone() }
    }
}

impl<S: Clone, T> Clone for ServerService<S, T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), layer: self.layer.clone() }
    }
}

crate::inner_accessors!(
    ClientService,
    "tokentrace::rpc::ClientLayer::default().layer(tower::service_fn(|_: tokentrace::rpc::Request<bytes::Bytes>| async {
    Ok::<_, tokentrace::rpc::RpcError>(futures_util::stream::empty::<Result<bytes::Bytes, tokentrace::rpc::RpcError>>())
}))"
);
crate::inner_accessors!(
    ServerService,
    "tokentrace::rpc::ServerLayer::default().layer(tower::service_fn(|_: tokentrace::rpc::Request<bytes::Bytes>| async {
    Ok::<_, tokentrace::rpc::RpcError>(futures_util::stream::empty::<Result<bytes::Bytes, tokentrace::rpc::RpcError>>())
}))"
);

impl<S, T, P, St> Service<Request<P>> for ClientService<S, T>
where
    S: Service<Request<P>, Response = St>,
    S::Error: fmt::Display,
    T: Tracer + Send + Sync + 'static,
    T::Span: Send + Sync + 'static,
{
    type Response = TracedStream<St>;
    type Error = S::Error;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<P>) -> Self::Future {
        let parent = Context::current();
        let mut attributes = Vec::with_capacity(ATTRIBUTES_PER_SPAN);
        attributes.push(KeyValue::new(RPC_METHOD, request.endpoint_name()));
        attributes.push(KeyValue::new(ATTEMPT, i64::from(request.attempt())));
        if let Some(address) = &self.layer.server_address {
            attributes.push(KeyValue::new(SERVER_ADDRESS, Value::from(Arc::clone(address))));
        }
        if let Some(id) = self.layer.instance_id {
            attributes.push(KeyValue::new(INSTANCE_ID, id));
        }
        let ids = RequestIds::for_outbound(&parent, &request.metadata);
        let tracer = &*self.layer.tracer;
        let mut span = tracer
            .span_builder(request.endpoint_name())
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        record_request_ids(&mut span, &ids);
        let cx = parent.with_span(span);
        inject_context(&mut request.metadata, &cx);
        ids.inject(&mut request.metadata);
        request.metadata.set(SEND_TIMESTAMP, &unix_nanos().to_string());
        CallFuture { inner: self.inner.call(request), span: Some(ActiveSpan::new(cx)), attach: false }
    }
}

impl<S, T, P, St> Service<Request<P>> for ServerService<S, T>
where
    S: Service<Request<P>, Response = St>,
    S::Error: fmt::Display,
    T: Tracer + Send + Sync + 'static,
    T::Span: Send + Sync + 'static,
{
    type Response = TracedStream<St>;
    type Error = S::Error;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<P>) -> Self::Future {
        let arrival = Instant::now();
        let ids = RequestIds::extract(&request.metadata);
        let Inbound { parent, root, .. } = Inbound::extract(&request.metadata, false);
        let parent = with_received_request(&parent, ids.clone(), arrival, Some(request.endpoint_name()));
        let mut attributes = Vec::with_capacity(ATTRIBUTES_PER_SPAN);
        attributes.push(KeyValue::new(ENDPOINT, request.endpoint_name()));
        if let Some(component) = &self.layer.component {
            attributes.push(KeyValue::new(COMPONENT, Value::from(Arc::clone(component))));
        }
        if let Some(id) = self.layer.instance_id {
            attributes.push(KeyValue::new(INSTANCE_ID, id));
        }
        if let Some(transit_ms) = transit_ms(&request) {
            attributes.push(KeyValue::new(TRANSIT_MS, transit_ms));
        }
        attributes.extend(self.layer.recorded_baggage.attributes(&parent));
        let tracer = &*self.layer.tracer;
        let mut span = tracer
            .span_builder(HANDLE_PAYLOAD)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        record_request_ids(&mut span, &ids);
        let cx = parent.with_span(span);
        // A trace started here has a random id (the SDK's generator): Level 2 says so.
        let scope = ActiveSpan::new(if root { mark_random_trace(cx) } else { cx });
        let inner = {
            let _attached = scope.attach();
            self.inner.call(request)
        };
        CallFuture { inner, span: Some(scope), attach: true }
    }
}

/// Milliseconds since the client's send timestamp; `None` when absent, malformed, or from the
/// future (clock skew makes it meaningless).
fn transit_ms<P>(request: &Request<P>) -> Option<f64> {
    let sent: u64 = request.metadata.get(SEND_TIMESTAMP)?.parse().ok()?;
    let elapsed = unix_nanos().checked_sub(sent)?;
    Some(elapsed as f64 / 1e6)
}

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
