//! Worker RPC: a traced request envelope, client and server layers that know nothing of the
//! transport, and two transports: the crate's own over TCP ([`tcp`]) and NATS (`nats`, with the
//! `nats` feature).
//!
//! ```
//! use bytes::Bytes;
//! use tokentrace::rpc::{Request, RpcError, ServerLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let handler = tower::service_fn(|request: Request<Bytes>| async move {
//!     Ok::<_, RpcError>(futures_util::stream::iter([Ok::<_, RpcError>(request.payload)]))
//! });
//! let worker = ServiceBuilder::new().layer(ServerLayer::default().component("backend")).service(handler);
//! let stream = worker.oneshot(Request::new("generate", Bytes::from_static(b"hi"))).await.unwrap();
//! # drop(stream);
//! # });
//! ```
//!
//! ## A transport of your own
//!
//! The layers wrap any `tower::Service<Request<P>>` whose response is a stream of
//! `Result<_, RpcError>` (map a transport's own errors into [`RpcError`]). What a transport
//! must do:
//!
//! - **carry the request's parts**: the endpoint, the attempt, every metadata pair in order
//!   ([`Metadata::iter`]; `traceparent`, `tracestate`, `baggage`, `x-request-id`, `request-id`
//!   and [`SEND_TIMESTAMP`] among them), and the payload; on the server side, rebuild the
//!   request with [`Request::from_parts`] and call the handler behind [`ServerLayer`];
//! - **stream the items back** in order, and end the stream when the handler's ends;
//! - **drop the handler's stream when the caller goes away**: the caller dropping its response
//!   stream must reach the server, which drops the handler's stream; that is how a cancelled
//!   request ends `handle_payload` (as `cancelled`) and stops its work.
//!
//! An in-process transport over a channel, wrapped on both sides:
//!
//! ```
//! use bytes::Bytes;
//! use futures_util::{StreamExt, TryStreamExt};
//! use tokentrace::rpc::{ClientLayer, Metadata, Request, RpcError, ServerLayer};
//! use tower::{Layer, Service, ServiceExt};
//!
//! type Items = futures_util::stream::BoxStream<'static, Result<Bytes, RpcError>>;
//! /// What crosses the "wire": the request's parts and a way back for its items.
//! type Call = (String, u32, Vec<(String, String)>, Bytes, tokio::sync::mpsc::Sender<Result<Bytes, RpcError>>);
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let (wire, mut incoming) = tokio::sync::mpsc::channel::<Call>(16);
//! // Server side: rebuild each request and hand it to the traced handler.
//! let handler = tower::service_fn(|request: Request<Bytes>| async move {
//!     Ok::<_, RpcError>(futures_util::stream::iter([Ok::<_, RpcError>(request.payload)]))
//! });
//! let worker = ServerLayer::default().component("backend").layer(handler);
//! tokio::spawn(async move {
//!     while let Some((endpoint, attempt, pairs, payload, reply)) = incoming.recv().await {
//!         let metadata: Metadata = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
//!         let request = Request::from_parts(endpoint, attempt, metadata, payload);
//!         let mut items = worker.clone().oneshot(request).await.unwrap();
//!         // `send` fails once the caller dropped its end: the handler's stream is dropped too.
//!         while let Some(item) = items.next().await {
//!             if reply.send(item).await.is_err() { break; }
//!         }
//!     }
//! });
//! // Client side: send the parts, stream the items back.
//! let transport = tower::service_fn(move |request: Request<Bytes>| {
//!     let wire = wire.clone();
//!     async move {
//!         let (reply, items) = tokio::sync::mpsc::channel(16);
//!         let pairs = request.metadata.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
//!         let call = (request.endpoint().to_owned(), request.attempt(), pairs, request.payload, reply);
//!         wire.send(call).await.map_err(|_| RpcError::Closed)?;
//!         Ok::<Items, RpcError>(tokio_stream_like(items))
//!     }
//! });
//! # fn tokio_stream_like(mut items: tokio::sync::mpsc::Receiver<Result<Bytes, RpcError>>) -> Items {
//! #     futures_util::stream::poll_fn(move |cx| items.poll_recv(cx)).boxed()
//! # }
//! let mut client = ClientLayer::default().layer(transport);
//! let stream = client.ready().await.unwrap().call(Request::new("generate", Bytes::from_static(b"hi"))).await.unwrap();
//! assert_eq!(stream.try_collect::<Vec<_>>().await.unwrap(), ["hi"]);
//! # });
//! ```

mod client;
mod error;
mod flow;
mod future;
mod handlers;
mod metadata;
#[cfg(feature = "nats")]
pub mod nats;
mod request;
mod server;
mod stream;
pub mod tcp;

pub use client::{ClientLayer, ClientService, SEND_TIMESTAMP};
pub use error::RpcError;
pub use future::CallFuture;
pub use metadata::{Metadata, MAX_METADATA_ENTRIES};
pub use request::Request;
pub use server::{ServerLayer, ServerService, HANDLE_PAYLOAD};
pub use stream::TracedStream;
