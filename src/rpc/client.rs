//! The RPC client layer: a CLIENT span per call to a worker, the trace context and request ids
//! injected into the request's metadata.

use std::fmt;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, Value};
use tower_layer::Layer;
use tower_service::Service;

use super::error::RpcError;
use super::future::CallFuture;
use super::request::Request;
use super::stream::{TracedStream, ATTRIBUTES_PER_SPAN, INSTANCE_ID};
use crate::active_span::{record_request_ids, ActiveSpan};
use crate::propagation::{inject_context, Carrier, RequestIds};
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
const RPC_METHOD: &str = "rpc.method";
const SERVER_ADDRESS: &str = "server.address";
const ATTEMPT: &str = "attempt";

/// Nanoseconds since the Unix epoch, as [`SEND_TIMESTAMP`] carries them.
pub(crate) fn unix_nanos() -> u64 {
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

impl Default for ClientLayer<DefaultTracer> {
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

impl<T> fmt::Debug for ClientLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLayer")
            .field("server_address", &self.server_address)
            .field("instance_id", &self.instance_id)
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

impl<S, T> Layer<S> for ClientLayer<T> {
    type Service = ClientService<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientService { inner, layer: self.clone() }
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

impl<S: Clone, T> Clone for ClientService<S, T> {
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
// The response must be a stream of `Result<_, RpcError>`: said here, so a transport with an error
// type of its own fails where the layer is applied, naming `RpcError`.
impl<S, T, P, St, Item> Service<Request<P>> for ClientService<S, T>
where
    S: Service<Request<P>, Response = St>,
    St: futures_core::Stream<Item = Result<Item, RpcError>>,
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
        CallFuture::new(self.inner.call(request), ActiveSpan::new(cx), false)
    }
}
