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

mod handlers;
mod layers;
mod metadata;
#[cfg(feature = "nats")]
pub mod nats;
mod request;
mod stream;
pub mod tcp;

pub use layers::{
    CallFuture, ClientLayer, ClientService, ServerLayer, ServerService, HANDLE_PAYLOAD, SEND_TIMESTAMP,
};
pub use metadata::{Metadata, MAX_METADATA_ENTRIES};
pub use request::{Request, RpcError};
pub use stream::TracedStream;
