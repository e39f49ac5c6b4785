//! Worker RPC over NATS: the same [`rpc::Request`](crate::rpc::Request) and item-stream
//! contract as [`tcp`](crate::rpc::tcp), on `async-nats`, so any number of worker processes, on
//! any machine that reaches the NATS cluster, share a service's load.
//!
//! - A request is one message on `{subject}.{endpoint}` (`tokentrace.backend.generate`), taken
//!   by one worker of the queue group serving `subject`. Its metadata (`traceparent`,
//!   `tracestate`, `baggage`, `x-request-id`, ...) travels as NATS headers; the payload as is.
//! - The replies come back on the caller's inbox as TCP transport frame
//!   bodies, numbered from 0: items in order, then an end or an error, with heartbeats while
//!   the handler works. A lost reply, a silent worker or no worker at all is an error at the
//!   caller, never a hang or a short stream.
//! - A caller that drops its stream, or dies, unsubscribes its inbox; the worker's next reply
//!   or heartbeat finds no one there and its handler stops.
//! - Flow control: the caller grants each stream a window of bytes (4 MiB by default,
//!   [`Client::stream_window`]) and grants more as its consumer takes items; the worker sends
//!   no more than that ahead, so a stream nobody reads waits at its worker (still beating), not
//!   in NATS or the caller's buffers, and holds up no other. A worker refuses a caller that
//!   grants no window (one older than flow control), saying so; a caller's grants go where an
//!   older worker does not listen, so it simply streams without flow control.
//! - A request or item larger than the server's `max_payload` is refused with
//!   [`RpcError::FrameTooLarge`](crate::rpc::RpcError::FrameTooLarge), never truncated.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use bytes::Bytes;
//! use futures_util::StreamExt;
//! use tokentrace::rpc::{self, nats, Request, RpcError};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! // Worker (as many processes as you like):
//! let handler = tower::service_fn(|request: Request<Bytes>| async move {
//!     Ok::<_, RpcError>(futures_util::stream::iter([Ok::<_, RpcError>(request.payload)]))
//! });
//! let worker = ServiceBuilder::new().layer(rpc::ServerLayer::default().component("backend")).service(handler);
//! let listener = nats::Listener::bind(nats::async_nats::connect("nats://127.0.0.1:4222").await?, "tokentrace.backend").await?;
//! tokio::spawn(nats::serve(listener, worker));
//!
//! // Frontend:
//! let connection = nats::async_nats::connect("nats://127.0.0.1:4222").await?;
//! let client = ServiceBuilder::new()
//!     .layer(rpc::ClientLayer::default().server_address("tokentrace.backend"))
//!     .service(nats::Client::new(connection, "tokentrace.backend")?);
//! let mut items = client.oneshot(Request::new("generate", Bytes::from_static(b"hi"))).await?;
//! while let Some(item) = items.next().await {
//!     println!("{:?}", item?);
//! }
//! # Ok(()) }
//! ```

mod client;
mod flow;
mod server;
mod subject;

/// The async-nats this transport is built on, for connecting: `nats::async_nats::connect(url)`.
pub use async_nats;
pub use client::{Client, ResponseStream, DEFAULT_SILENCE_LIMIT};
pub use server::{serve, Listener, Server, DEFAULT_HEARTBEAT};
