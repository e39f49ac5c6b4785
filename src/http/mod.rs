//! HTTP: a server layer for an axum `Router` (any `tower::Service<http::Request<B>>`) and a
//! client layer for a hyper client.
//!
//! ```
//! use axum::{routing::post, Router};
//! use tokentrace::http::ServerLayer;
//!
//! let app: Router = Router::new()
//!     .route("/v1/completions", post(|| async { "{}" }))
//!     .layer(ServerLayer::default());
//! # let _ = app;
//! ```

mod body;
mod client;
mod grpc;
mod keep;
mod semconv;
mod server;

pub use body::TracedBody;
pub use client::{ClientFuture, ClientLayer, ClientService};
pub use server::{ResponseFuture, ServerLayer, ServerService, SpanNameStyle, DYNAMO_SPAN_NAME};
