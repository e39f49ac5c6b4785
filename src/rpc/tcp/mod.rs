//! A real TCP transport for worker RPC: one connection multiplexes many concurrent request
//! streams; frames travel through tokio-util's length-delimited codec with a size limit
//! checked before any allocation; dropping a response stream cancels the handler; a lost
//! connection fails every in-flight stream; the server shuts down gracefully.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use bytes::Bytes;
//! use futures_util::StreamExt;
//! use tokentrace::rpc::{self, tcp, Request, RpcError};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! // Worker:
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9000").await?;
//! let handler = tower::service_fn(|request: Request<Bytes>| async move {
//!     Ok::<_, RpcError>(futures_util::stream::iter([Ok::<_, RpcError>(request.payload)]))
//! });
//! let worker = ServiceBuilder::new().layer(rpc::ServerLayer::default().component("backend")).service(handler);
//! tokio::spawn(tcp::serve(listener, worker));
//!
//! // Frontend:
//! let client = ServiceBuilder::new()
//!     .layer(rpc::ClientLayer::default())
//!     .service(tcp::Client::connect("127.0.0.1:9000").await?);
//! let mut items = client.oneshot(Request::new("generate", Bytes::from_static(b"hi"))).await?;
//! while let Some(item) = items.next().await {
//!     println!("{:?}", item?);
//! }
//! # Ok(()) }
//! ```

mod client;
mod codec;
mod frame;
mod server;
mod writer;

pub use client::{Client, ClientBuilder, ResponseStream};
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use codec::FrameCodec;
pub use codec::DEFAULT_MAX_FRAME_LEN;
#[cfg(any(test, feature = "nats", feature = "fuzzing"))]
pub(crate) use frame::Frame;
pub use frame::MAX_FIELD_LEN;
pub use server::{serve, Server};
