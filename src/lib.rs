//! # tokentrace
//!
//! Tower middleware that makes one LLM request visible as **one trace** across an inference
//! deployment: an HTTP frontend and its workers, aggregated or disaggregated.
//!
//! ```text
//! aggregated:     client ──HTTP──▶ frontend ──RPC──▶ worker (prefill + decode) ──tokens──▶ back
//! disaggregated:  client ──HTTP──▶ frontend ──RPC──▶ prefill worker ──KV──▶ decode worker ──tokens──▶ back
//! ```
//!
//! The trace an operator opens in Grafana/Tempo (or Jaeger) for one request:
//!
//! ```text
//! http-request                     frontend   SERVER  http.*, x_request_id, request_id, gen_ai.*, ttft, itl stats
//! └─ {endpoint} (rpc client)       frontend   CLIENT  rpc.method, server.address, instance_id, attempt, outcome
//!    └─ handle_payload             worker     SERVER  component, endpoint, x_request_id, network.transit_ms
//!       ├─ queue                   worker             time waiting for a slot
//!       ├─ prefill                 worker             gen_ai.usage.input_tokens
//!       ├─ kv_transfer (disagg)    worker             bytes, source, destination
//!       └─ decode                  worker             output tokens, ttft_ms, itl p50/p99/max, finish_reason
//! ```
//!
//! Span names, the `x_request_id` attribute and the environment variables are compatible with
//! NVIDIA Dynamo's tracing, so its dashboards and Tempo queries work unchanged.
//!
//! ## Modules
//!
//! - [`http`]: [`ServerLayer`](http::ServerLayer) for an axum `Router`,
//!   [`ClientLayer`](http::ClientLayer) for a hyper client.
//! - [`inference`]: phase spans and token-stream statistics (TTFT, ITL) at near-zero cost
//!   per token.
//! - [`rpc`]: the worker RPC envelope, its client/server layers, and two transports: TCP
//!   (`rpc::tcp`) and NATS (`rpc::nats`, feature `nats`). gRPC goes through the [`http`] layers.
//! - `metrics` (feature `metrics`, on by default): TTFT, ITL and duration histograms whose
//!   exemplars open the request's trace.
//! - `telemetry` (feature `telemetry`, on by default): OTLP traces and logs, JSON Lines logs
//!   and sampling, configured from the environment.
//! - [`propagation`]: strict W3C `traceparent`/`tracestate`, `x-request-id`/`request-id`, the
//!   [`Carrier`](propagation::Carrier) trait every layer extracts from and injects into.
//!
//! ## Quick start
//!
//! Wrap the frontend's router in [`http::ServerLayer`]; a handler reads the request's ids as a
//! typed extension (and code below it with [`RequestIds::current`](propagation::RequestIds::current)):
//!
//! ```
//! use axum::{routing::post, Extension, Router};
//! use tokentrace::propagation::RequestIds;
//!
//! async fn chat(Extension(ids): Extension<RequestIds>) -> String {
//!     format!("answering {}", ids.x_request_id) // the caller's x-request-id, or a generated one
//! }
//! let app: Router = Router::new()
//!     .route("/v1/chat/completions", post(chat))
//!     .layer(tokentrace::http::ServerLayer::default());
//! # let _ = app;
//! ```
//!
//! Spans started on another task or thread (an engine's) join the request's trace when that
//! work runs with the request's context attached: hand it over as the
//! `Extension<tokentrace::opentelemetry::Context>` (or `Context::current()`) and call
//! `let _guard = cx.attach();` there, or wrap a future with `opentelemetry::context::FutureExt::with_context`.
//! Without it, a phase span started there begins a trace of its own.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

/// `get_ref`, `get_mut` and `into_inner` for a service wrapper `$service<S, T>` whose wrapped
/// service is its `inner` field; `$example` is an expression that builds one, for the docs'
/// examples.
macro_rules! inner_accessors {
    ($service:ident, $example:literal) => {
        impl<S, T> $service<S, T> {
            /// The wrapped service.
            ///
            #[doc = concat!("```\nuse tower::Layer;\nlet service = ", $example, ";\nlet _inner = service.get_ref();\n```")]
            pub fn get_ref(&self) -> &S {
                &self.inner
            }

            /// The wrapped service, mutably.
            ///
            #[doc = concat!("```\nuse tower::Layer;\nlet mut service = ", $example, ";\nlet _inner = service.get_mut();\n```")]
            pub fn get_mut(&mut self) -> &mut S {
                &mut self.inner
            }

            /// Unwraps the service, dropping the tracing.
            ///
            #[doc = concat!("```\nuse tower::Layer;\nlet service = ", $example, ";\nlet _inner = service.into_inner();\n```")]
            pub fn into_inner(self) -> S {
                self.inner
            }
        }
    };
}
pub(crate) use inner_accessors;

mod active_span;
mod decisions;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
/// The README's Rust examples, compiled as doctests so the front door never rots.
#[cfg(all(doctest, feature = "telemetry", feature = "axum"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
pub mod http;

pub mod inference;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod propagation;
mod rate_limit;
pub mod rpc;
#[cfg(feature = "telemetry")]
pub mod telemetry;
mod tracer;

pub use tracer::DefaultTracer;

/// The `opentelemetry` this crate is built against, so a handler can name
/// `Extension<tokentrace::opentelemetry::Context>` without a version of its own to match.
///
/// ```
/// use axum::{routing::get, Extension, Router};
/// use tokentrace::opentelemetry::{trace::TraceContextExt, Context};
///
/// async fn handler(Extension(cx): Extension<Context>) -> String {
///     cx.span().span_context().trace_id().to_string()
/// }
/// let app: Router = Router::new().route("/", get(handler)).layer(tokentrace::http::ServerLayer::default());
/// # let _ = app;
/// ```
pub use opentelemetry;
