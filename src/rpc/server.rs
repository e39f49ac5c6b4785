//! The RPC server layer: the `handle_payload` SERVER span of a worker's handler, continuing the
//! caller's trace from the request's metadata.

use std::fmt;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{KeyValue, Value};
use tower_layer::Layer;
use tower_service::Service;

use super::client::{unix_nanos, SEND_TIMESTAMP};
use super::error::RpcError;
use super::future::CallFuture;
use super::request::Request;
use super::stream::{TracedStream, ATTRIBUTES_PER_SPAN, INSTANCE_ID};
use crate::active_span::{record_request_ids, ActiveSpan};
use crate::propagation::{mark_random_trace, with_received_request, Inbound, RecordedBaggage, RequestIds};
use crate::DefaultTracer;

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

const COMPONENT: &str = "component";
const ENDPOINT: &str = "endpoint";
const TRANSIT_MS: &str = "network.transit_ms";

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

impl Default for ServerLayer<DefaultTracer> {
    fn default() -> Self {
        Self::with_tracer(DefaultTracer::new())
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

impl<T> fmt::Debug for ServerLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerLayer")
            .field("component", &self.component)
            .field("instance_id", &self.instance_id)
            .field("recorded_baggage", &self.recorded_baggage)
            .finish_non_exhaustive()
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

impl<S, T> Layer<S> for ServerLayer<T> {
    type Service = ServerService<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerService { inner, layer: self.clone() }
    }
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

impl<S: Clone, T> Clone for ServerService<S, T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), layer: self.layer.clone() }
    }
}

crate::inner_accessors!(
    ServerService,
    "tokentrace::rpc::ServerLayer::default().layer(tower::service_fn(|_: tokentrace::rpc::Request<bytes::Bytes>| async {
    Ok::<_, tokentrace::rpc::RpcError>(futures_util::stream::empty::<Result<bytes::Bytes, tokentrace::rpc::RpcError>>())
}))"
);

// The response must be a stream of `Result<_, RpcError>`: said here, so a transport with an error
// type of its own fails where the layer is applied, naming `RpcError`.
impl<S, T, P, St, Item> Service<Request<P>> for ServerService<S, T>
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
        let arrival = Instant::now();
        let ids = RequestIds::receive(&mut request.metadata);
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
        CallFuture::new(inner, scope, true)
    }
}

/// Milliseconds since the client's send timestamp; `None` when absent, malformed, or from the
/// future (clock skew makes it meaningless).
fn transit_ms<P>(request: &Request<P>) -> Option<f64> {
    let sent: u64 = request.metadata.get(SEND_TIMESTAMP)?.parse().ok()?;
    let elapsed = unix_nanos().checked_sub(sent)?;
    Some(elapsed as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tower::ServiceExt;

    use super::*;
    use crate::rpc::Metadata;

    /// What the handler reads from its request's metadata and from the current context agree,
    /// whether the caller sent valid ids, refused ones or none.
    #[tokio::test]
    async fn the_handler_sees_one_set_of_ids_in_its_metadata_and_its_context() {
        let handler = tower::service_fn(|request: Request<Bytes>| async move {
            let current = RequestIds::current().expect("stored by the layer");
            assert_eq!(RequestIds::extract(&request.metadata), current, "metadata and context agree");
            assert_eq!(request.metadata.values("x-request-id").count(), 1);
            let item = Bytes::from(current.x_request_id.to_string());
            Ok::<_, RpcError>(futures_util::stream::iter([Ok::<_, RpcError>(item)]))
        });
        let worker = ServerLayer::default().layer(handler);
        let sent: [Metadata; 3] = [
            Metadata::new(),
            [("x-request-id", "bad id"), ("request-id", "nope")].into_iter().collect(),
            [("x-request-id", "req-9"), ("request-id", "123e4567-e89b-42d3-a456-426614174000")]
                .into_iter()
                .collect(),
        ];
        for (i, metadata) in sent.into_iter().enumerate() {
            let mut request = Request::new("generate", Bytes::new());
            request.metadata = metadata;
            let mut items = worker.clone().oneshot(request).await.unwrap();
            let seen = futures_util::StreamExt::next(&mut items).await.unwrap().unwrap();
            if i == 2 {
                assert_eq!(seen, "req-9", "a valid id is kept");
            } else {
                assert_eq!(seen.len(), 36, "a generated id");
            }
        }
    }
}
