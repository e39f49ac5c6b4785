//! Metrics that lead to traces: TTFT, ITL, duration and token histograms whose exemplars are
//! the request's trace, served as OpenMetrics (with exemplars) or Prometheus text.
//!
//! A request is recorded once, when its token stream ends, from what the stream already
//! measured: no clock read, lock or allocation is added per token. Every inter-token gap of
//! the stream reaches the ITL histogram.
//!
//! ```
//! use axum::{routing::post, Router};
//! use tokentrace::http::ServerLayer;
//! use tokentrace::metrics::FrontendMetrics;
//!
//! let metrics = FrontendMetrics::new();
//! let app: Router = Router::new()
//!     .route("/v1/chat/completions", post(|| async { "..." }))
//!     .layer(ServerLayer::default())
//!     .merge(metrics.router()); // GET /metrics, untraced
//! # let _ = app;
//! ```

mod buckets;
mod exemplar;
mod exposition;
mod frontend;
mod gen_ai;
mod worker;

pub use buckets::{Buckets, BucketsError, FrontendBuckets};
pub use exposition::Format;
pub use frontend::{FrontendMetrics, RequestMetrics, MAX_MODELS, OVERFLOW_MODEL};
pub use worker::WorkerMetrics;
