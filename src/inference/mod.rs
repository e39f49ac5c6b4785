//! The inference hot path: phase spans and token-stream statistics at near-zero cost per token.
//!
//! - [`Phases`]: `queue`, `prefill`, `kv_transfer`, `decode` spans (the decode span
//!   links to the prefill span in disaggregated serving).
//! - [`TokenStream`]: wraps any stream of [`TokenChunk`]s; per chunk one clock read and a few
//!   integer updates, no allocation, no span; the GenAI attributes and TTFT/ITL statistics are
//!   written once, at the end.
//!
//! ```
//! use futures_util::StreamExt;
//! use tokentrace::inference::{Phases, StatsTarget, StreamOptions, TokenChunk, TokenStream};
//!
//! struct Chunk(u32);
//! impl TokenChunk for Chunk {
//!     fn token_count(&self) -> u32 { self.0 }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let phases = Phases::default();
//! let prefill = phases.prefill(12);
//! prefill.end();
//! let decode = phases.decode(None);
//! let chunks = futures_util::stream::iter((0..8).map(|_| Chunk(1)));
//! let mut tokens = TokenStream::new(chunks, StatsTarget::Phase(decode), StreamOptions::new().model("demo"));
//! while let Some(_chunk) = tokens.next().await {}
//! # });
//! ```

mod clock;
mod histogram;
mod phases;
mod stats;
mod stream;
#[cfg(test)]
mod tests;

pub use phases::{Phase, Phases};
pub use stats::{FinishReason, TokenChunk, TokenSummary};
#[cfg(feature = "metrics")]
pub(crate) use stream::{EndedStream, StreamObserver};
pub use stream::{StatsTarget, StreamOptions, TokenStream};
