//! Token-stream statistics: a few integer updates per chunk, a summary at the end.

use std::time::Instant;

use super::clock::Anchor;
use super::histogram::Histogram;

/// Why generation stopped, as the OpenAI API and the GenAI conventions name it.
///
/// ```
/// use tokentrace::inference::FinishReason;
/// assert_eq!(FinishReason::Length.as_str(), "length");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FinishReason {
    /// A stop token or sequence.
    Stop,
    /// The token limit.
    Length,
    /// Content filtering.
    ContentFilter,
    /// The model called a tool.
    ToolCalls,
    /// The engine failed.
    Error,
    /// The request was cancelled.
    Cancelled,
}

impl FinishReason {
    /// The conventional name.
    ///
    /// ```
    /// use tokentrace::inference::FinishReason;
    /// assert_eq!(FinishReason::ToolCalls.as_str(), "tool_calls");
    /// assert_eq!(FinishReason::Length.as_str(), "length");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ContentFilter => "content_filter",
            Self::ToolCalls => "tool_calls",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
        }
    }
}

/// What a token stream's item tells the statistics: how many tokens it carries and, on the
/// last one, why generation stopped. Implement it for your engine's chunk type.
///
/// ```
/// use tokentrace::inference::{FinishReason, TokenChunk};
///
/// struct Chunk { tokens: Vec<u32>, done: bool }
/// impl TokenChunk for Chunk {
///     fn token_count(&self) -> u32 { self.tokens.len() as u32 }
///     fn finish_reason(&self) -> Option<FinishReason> { self.done.then_some(FinishReason::Stop) }
/// }
/// ```
pub trait TokenChunk {
    /// Tokens in this chunk (a chunk may carry several).
    ///
    /// ```
    /// use tokentrace::inference::TokenChunk;
    ///
    /// // A chunk of detokenised text that knows how many tokens it came from.
    /// struct Delta { text: String, tokens: u32 }
    /// impl TokenChunk for Delta { fn token_count(&self) -> u32 { self.tokens } }
    ///
    /// let chunk = Delta { text: "Hello,".into(), tokens: 2 };
    /// assert_eq!(chunk.token_count(), 2);
    /// # let _ = chunk.text;
    /// ```
    fn token_count(&self) -> u32;

    /// Why generation stopped, when this chunk is the last.
    ///
    /// ```
    /// use tokentrace::inference::{FinishReason, TokenChunk};
    ///
    /// struct Last { hit_limit: bool }
    /// impl TokenChunk for Last {
    ///     fn token_count(&self) -> u32 { 1 }
    ///     fn finish_reason(&self) -> Option<FinishReason> {
    ///         Some(if self.hit_limit { FinishReason::Length } else { FinishReason::Stop })
    ///     }
    /// }
    /// assert_eq!(Last { hit_limit: true }.finish_reason(), Some(FinishReason::Length));
    /// ```
    fn finish_reason(&self) -> Option<FinishReason> {
        None
    }
}

impl<T: TokenChunk, E> TokenChunk for Result<T, E> {
    fn token_count(&self) -> u32 {
        self.as_ref().map_or(0, T::token_count)
    }

    fn finish_reason(&self) -> Option<FinishReason> {
        match self {
            Ok(chunk) => chunk.finish_reason(),
            Err(_) => Some(FinishReason::Error),
        }
    }
}

/// Running statistics of one token stream, in nanoseconds.
#[derive(Clone, Debug)]
pub(crate) struct TokenStats {
    start: Anchor,
    first: Option<u64>,
    last: u64,
    tokens: u64,
    itl: Histogram,
    finish_reason: Option<FinishReason>,
}

impl TokenStats {
    pub(crate) fn new(start: Anchor) -> Self {
        Self { start, first: None, last: start.ns, tokens: 0, itl: Histogram::default(), finish_reason: None }
    }

    /// Records a chunk of `tokens` tokens that arrived at `now`. The tokens of a chunk share
    /// its gap evenly; the extra tokens of the first chunk arrived with the first token.
    #[inline]
    pub(crate) fn record(&mut self, now: u64, tokens: u32) {
        if tokens == 0 {
            return;
        }
        match self.first {
            None => {
                self.first = Some(now);
                if tokens > 1 {
                    self.itl.record_n(0, tokens - 1);
                }
            }
            Some(_) => {
                let gap = now.saturating_sub(self.last);
                self.itl.record_n(gap / u64::from(tokens), tokens);
            }
        }
        self.last = now;
        self.tokens += u64::from(tokens);
    }

    pub(crate) fn tokens(&self) -> u64 {
        self.tokens
    }

    #[inline]
    pub(crate) fn finish(&mut self, reason: FinishReason) {
        self.finish_reason = Some(reason);
    }

    /// The inter-token gaps, in seconds, as `(gap, how many)`: every gap of the stream, grouped
    /// by the histogram's buckets (each within 1/16 of its true value).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))] // the metrics' only reader
    pub(crate) fn itl_seconds(&self) -> impl Iterator<Item = (f64, u32)> + '_ {
        self.itl.buckets().map(|(ns, count)| (ns / 1e9, count))
    }

    /// Converts to milliseconds. `request_start`, when given, is where TTFT is measured from
    /// (else the stream's start).
    pub(crate) fn summary(&self, request_start: Option<Instant>) -> TokenSummary {
        let ms = |ns: f64| ns / 1e6;
        let before_stream_ms = request_start
            .map_or(0.0, |start| self.start.instant.saturating_duration_since(start).as_nanos() as f64 / 1e6);
        TokenSummary {
            output_tokens: self.tokens,
            ttft_ms: self
                .first
                .map(|first| before_stream_ms + ms(first.saturating_sub(self.start.ns) as f64)),
            avg_itl_ms: self.itl.mean().map(ms),
            itl_p50_ms: self.itl.quantile(0.50).map(ms),
            itl_p99_ms: self.itl.quantile(0.99).map(ms),
            itl_max_ms: (self.itl.count() > 0).then(|| ms(self.itl.max() as f64)),
            finish_reason: self.finish_reason,
        }
    }
}

/// The statistics of a finished (or abandoned) token stream.
///
/// ```
/// use tokentrace::inference::{StatsTarget, StreamOptions, TokenChunk, TokenStream};
/// use futures_util::StreamExt;
///
/// struct Token;
/// impl TokenChunk for Token { fn token_count(&self) -> u32 { 1 } }
///
/// let tokens = futures_util::stream::iter([Token, Token]);
/// let mut stream = TokenStream::new(tokens, StatsTarget::Detached, StreamOptions::new());
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// while stream.next().await.is_some() {}
/// # });
/// let summary = stream.summary();
/// assert_eq!(summary.output_tokens, 2);
/// assert!(summary.ttft_ms.is_some() && summary.avg_itl_ms.is_some());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct TokenSummary {
    /// Tokens delivered.
    pub output_tokens: u64,
    /// Time to first token, in milliseconds; `None` when no token came.
    pub ttft_ms: Option<f64>,
    /// Mean inter-token latency, in milliseconds; `None` with fewer than two tokens.
    pub avg_itl_ms: Option<f64>,
    /// Median inter-token latency (within 1/32), in milliseconds.
    pub itl_p50_ms: Option<f64>,
    /// 99th percentile inter-token latency (within 1/32), in milliseconds.
    pub itl_p99_ms: Option<f64>,
    /// Largest inter-token latency, in milliseconds.
    pub itl_max_ms: Option<f64>,
    /// Why generation stopped, if the stream said.
    pub finish_reason: Option<FinishReason>,
}
