//! A token stream that records its statistics with no allocation and no span per token.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};
use std::time::Instant;

use futures_core::Stream;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use pin_project_lite::pin_project;

use super::clock::{Clock, CpuClock, StreamClock};
use super::phases::{Phase, INPUT_TOKENS};
use super::stats::{FinishReason, TokenChunk, TokenStats, TokenSummary};
use crate::propagation::request_arrival;

/// Where a [`TokenStream`] writes its statistics when it ends.
///
/// ```
/// use opentelemetry::trace::{TraceContextExt, Tracer};
/// use tokentrace::inference::{StatsTarget, StreamOptions, TokenChunk, TokenStream};
///
/// struct Token;
/// impl TokenChunk for Token { fn token_count(&self) -> u32 { 1 } }
///
/// // In a frontend handler: record TTFT/ITL on the HTTP span, which the layer ends later.
/// let tokens = futures_util::stream::iter([Token, Token]);
/// let stream = TokenStream::new(tokens, StatsTarget::current_span(), StreamOptions::new());
/// # drop(stream);
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum StatsTarget {
    /// Nowhere: read them with [`TokenStream::summary`].
    Detached,
    /// Onto the span of this context, which stays open (the frontend's HTTP span: TTFT as the
    /// client sees it).
    Span(Context),
    /// Onto this phase (the worker's `decode`), which the stream then ends.
    Phase(Phase),
}

impl StatsTarget {
    /// The span of the current context (for example the HTTP server span in a handler).
    ///
    /// ```
    /// use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
    /// use opentelemetry::Context;
    /// use opentelemetry_sdk::trace::SdkTracerProvider;
    /// use tokentrace::inference::StatsTarget;
    ///
    /// let provider = SdkTracerProvider::builder().build();
    /// let span = provider.tracer("frontend").start("http-request");
    /// let _attached = Context::current_with_span(span).attach();
    /// match StatsTarget::current_span() {
    ///     StatsTarget::Span(cx) => assert!(cx.span().span_context().is_valid()),
    ///     _ => unreachable!(),
    /// }
    /// ```
    pub fn current_span() -> Self {
        Self::Span(Context::current())
    }
}

/// What a [`TokenStream`] knows beyond its tokens.
///
/// ```
/// use tokentrace::inference::StreamOptions;
/// let options = StreamOptions::new().model("llama-3-8b").input_tokens(42);
/// # let _ = options;
/// ```
#[derive(Clone, Debug, Default)]
pub struct StreamOptions {
    model: Option<Arc<str>>,
    input_tokens: Option<u64>,
    request_start: Option<Instant>,
    token_events: u32,
}

impl StreamOptions {
    /// No model, no input count, TTFT from the request's arrival (see
    /// [`StreamOptions::request_start`]), no token events.
    ///
    /// ```
    /// use tokentrace::inference::StreamOptions;
    /// let options = StreamOptions::new();
    /// # let _ = options;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// `gen_ai.request.model`.
    ///
    /// One shared string for every stream of the model, rather than a copy per request:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tokentrace::inference::StreamOptions;
    ///
    /// let model: Arc<str> = Arc::from("llama-3-8b-instruct");
    /// let options = StreamOptions::new().model(Arc::clone(&model));
    /// # let _ = options;
    /// ```
    pub fn model(mut self, model: impl Into<Arc<str>>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// `gen_ai.usage.input_tokens`.
    ///
    /// ```
    /// use tokentrace::inference::StreamOptions;
    /// let prompt_tokens = [101_u32, 2023, 2003].len() as u64;
    /// let options = StreamOptions::new().input_tokens(prompt_tokens);
    /// # let _ = options;
    /// ```
    pub fn input_tokens(mut self, tokens: u64) -> Self {
        self.input_tokens = Some(tokens);
        self
    }

    /// Measure TTFT from `start`. By default TTFT counts from when this service's server layer
    /// ([`http::ServerLayer`](crate::http::ServerLayer) or
    /// [`rpc::ServerLayer`](crate::rpc::ServerLayer)) received the request, when the stream's
    /// target belongs to it (the request's span, or a phase opened under it), else from
    /// [`TokenStream::new`]; an explicit start wins over both.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use futures_util::StreamExt;
    /// use tokentrace::inference::{StatsTarget, StreamOptions, TokenChunk, TokenStream};
    ///
    /// struct Token;
    /// impl TokenChunk for Token { fn token_count(&self) -> u32 { 1 } }
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let arrived = Instant::now();
    /// std::thread::sleep(Duration::from_millis(20)); // queueing, prefill ...
    /// let options = StreamOptions::new().request_start(arrived);
    /// let mut tokens = TokenStream::new(futures_util::stream::iter([Token]), StatsTarget::Detached, options);
    /// tokens.next().await;
    /// assert!(tokens.summary().ttft_ms.unwrap() >= 20.0); // counted from the arrival
    /// # });
    /// ```
    pub fn request_start(mut self, start: Instant) -> Self {
        self.request_start = Some(start);
        self
    }

    /// Add a `token` span event for each of the first `count` chunks of a sampled request (off
    /// by default; each event costs an allocation, so keep `count` small).
    ///
    /// ```
    /// use tokentrace::inference::StreamOptions;
    /// // Enough to see the first tokens arrive in a trace view, bounded per request.
    /// let options = StreamOptions::new().token_events(4);
    /// # let _ = options;
    /// ```
    pub fn token_events(mut self, count: u32) -> Self {
        self.token_events = count;
        self
    }
}

pin_project! {
    /// Wraps a stream of token chunks and records, per chunk, one clock read and a few integer
    /// updates: token count, time to first token, inter-token latency in a fixed-size
    /// histogram, finish reason. When the stream ends — or is dropped first, then with
    /// `cancelled=true` — it writes `gen_ai.request.model`, `gen_ai.usage.input_tokens`,
    /// `gen_ai.usage.output_tokens`, `gen_ai.response.finish_reasons`, `ttft_ms`,
    /// `avg_itl_ms`, `itl_p50_ms`, `itl_p99_ms`, `itl_max_ms` and `cancelled` once, to its
    /// [`StatsTarget`].
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use tokentrace::inference::{FinishReason, StatsTarget, StreamOptions, TokenChunk, TokenStream};
    ///
    /// struct Chunk(u32);
    /// impl TokenChunk for Chunk {
    ///     fn token_count(&self) -> u32 { self.0 }
    ///     fn finish_reason(&self) -> Option<FinishReason> { (self.0 == 0).then_some(FinishReason::Stop) }
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let chunks = futures_util::stream::iter([Chunk(1), Chunk(2), Chunk(0)]);
    /// let mut tokens = TokenStream::new(chunks, StatsTarget::Detached, StreamOptions::new());
    /// while let Some(_chunk) = tokens.next().await {}
    /// let summary = tokens.summary();
    /// assert_eq!(summary.output_tokens, 3);
    /// assert_eq!(summary.finish_reason, Some(FinishReason::Stop));
    /// # });
    /// ```
    pub struct TokenStream<S> {
        #[pin]
        inner: S,
        clock: StreamClock,
        stats: TokenStats,
        target: Option<StatsTarget>,
        options: StreamOptions,
        events_left: u32,
        // Told once, when the stream ends or is dropped (the request's metrics).
        observer: Option<Box<dyn StreamObserver>>,
    }

    impl<S> PinnedDrop for TokenStream<S> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(target) = this.target.take() {
                finish(target, this.stats, this.options, this.observer.take(), true);
            }
        }
    }
}

impl<S> TokenStream<S> {
    /// Wraps `stream`, timing with the CPU clock.
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use tokentrace::inference::{StatsTarget, StreamOptions, TokenChunk, TokenStream};
    ///
    /// struct Token;
    /// impl TokenChunk for Token { fn token_count(&self) -> u32 { 1 } }
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let engine_output = futures_util::stream::iter([Token, Token, Token]);
    /// let tokens = TokenStream::new(engine_output, StatsTarget::Detached, StreamOptions::new());
    /// assert_eq!(tokens.count().await, 3); // the items pass through unchanged
    /// # });
    /// ```
    pub fn new(stream: S, target: StatsTarget, options: StreamOptions) -> Self {
        Self::with_clock(stream, target, options, StreamClock::Cpu(CpuClock::default()))
    }

    /// Wraps `stream`, timing with `clock` (a hand-moved clock in tests).
    pub(crate) fn with_clock(
        stream: S,
        target: StatsTarget,
        mut options: StreamOptions,
        clock: StreamClock,
    ) -> Self {
        let anchor = clock.anchor();
        if options.request_start.is_none() {
            options.request_start = match &target {
                StatsTarget::Span(cx) => request_arrival(cx),
                StatsTarget::Phase(phase) => request_arrival(phase.context()),
                StatsTarget::Detached => None,
            };
        }
        let events_left = match &target {
            StatsTarget::Span(cx) if cx.span().span_context().is_sampled() => options.token_events,
            StatsTarget::Phase(phase) if phase.span_context().is_sampled() => options.token_events,
            _ => 0,
        };
        Self {
            inner: stream,
            clock,
            stats: TokenStats::new(anchor),
            target: Some(target),
            options,
            events_left,
            observer: None,
        }
    }

    /// Records this stream's request in `metrics` when the stream ends (or is dropped, then as
    /// cancelled): TTFT, every inter-token gap, duration, token counts and status, once, with
    /// the request's trace as exemplar. Nothing is added per token.
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use tokentrace::inference::{StatsTarget, StreamOptions, TokenChunk, TokenStream};
    /// use tokentrace::metrics::{Format, FrontendMetrics};
    /// use tokentrace::opentelemetry::Context;
    ///
    /// struct Token;
    /// impl TokenChunk for Token { fn token_count(&self) -> u32 { 1 } }
    ///
    /// let metrics = FrontendMetrics::new();
    /// let request = metrics.start(&Context::new(), "llama", "chat_completions", true);
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let tokens = TokenStream::new(futures_util::stream::iter([Token, Token, Token]), StatsTarget::Detached, StreamOptions::new())
    ///     .record_metrics(request);
    /// tokens.count().await;
    /// # });
    /// let text = metrics.render(Format::Prometheus);
    /// assert!(text.contains(r#"dynamo_frontend_inter_token_latency_seconds_count{model="llama"} 2"#));
    /// ```
    #[cfg(feature = "metrics")]
    pub fn record_metrics(mut self, metrics: crate::metrics::RequestMetrics) -> Self {
        self.observer = Some(Box::new(metrics));
        self
    }

    /// The statistics so far (final once the stream has ended).
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use tokentrace::inference::{StatsTarget, StreamOptions, TokenChunk, TokenStream};
    ///
    /// struct Token;
    /// impl TokenChunk for Token { fn token_count(&self) -> u32 { 1 } }
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let chunks = futures_util::stream::iter([Token, Token]);
    /// let mut tokens = TokenStream::new(chunks, StatsTarget::Detached, StreamOptions::new());
    /// assert_eq!(tokens.summary().ttft_ms, None); // no token yet
    /// tokens.next().await;
    /// assert_eq!(tokens.summary().output_tokens, 1);
    /// assert!(tokens.summary().ttft_ms.is_some());
    /// # });
    /// ```
    pub fn summary(&self) -> TokenSummary {
        self.stats.summary(self.options.request_start)
    }
}

impl<S> Stream for TokenStream<S>
where
    S: Stream,
    S::Item: TokenChunk,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let item = ready!(this.inner.poll_next(cx));
        match &item {
            Some(chunk) => {
                let tokens = chunk.token_count();
                this.stats.record(this.clock.now_ns(), tokens);
                if let Some(reason) = chunk.finish_reason() {
                    this.stats.finish(reason);
                }
                if *this.events_left > 0 && tokens > 0 {
                    *this.events_left -= 1;
                    token_event(this.target.as_ref(), this.stats.tokens(), tokens);
                }
            }
            None => {
                if let Some(target) = this.target.take() {
                    finish(target, this.stats, this.options, this.observer.take(), false);
                }
            }
        }
        Poll::Ready(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

fn token_event(target: Option<&StatsTarget>, tokens_so_far: u64, chunk_tokens: u32) {
    let attributes = vec![
        KeyValue::new("gen_ai.token.index", tokens_so_far as i64),
        KeyValue::new("chunk_tokens", i64::from(chunk_tokens)),
    ];
    match target {
        Some(StatsTarget::Span(cx)) => cx.span().add_event("token", attributes),
        Some(StatsTarget::Phase(phase)) => phase.context().span().add_event("token", attributes),
        _ => {}
    }
}

/// The stream's end (or drop, `cancelled`): tells its observer, then writes its statistics to
/// `target`, once.
fn finish(
    target: StatsTarget,
    stats: &TokenStats,
    options: &StreamOptions,
    observer: Option<Box<dyn StreamObserver>>,
    cancelled: bool,
) {
    let summary = stats.summary(options.request_start);
    if let Some(observer) = observer {
        observer.stream_ended(&EndedStream { summary: &summary, stats, cancelled });
    }
    write(target, &summary, options, cancelled);
}

/// What a stream's observer (the metrics) is told when it ends.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) struct EndedStream<'a> {
    pub(crate) summary: &'a TokenSummary,
    stats: &'a TokenStats,
    /// Dropped before its end.
    pub(crate) cancelled: bool,
}

#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
impl EndedStream<'_> {
    /// Every inter-token gap, in seconds, as `(gap, how many)`.
    pub(crate) fn itl_seconds(&self) -> impl Iterator<Item = (f64, u32)> + '_ {
        self.stats.itl_seconds()
    }
}

/// Told once, when a stream ends or is dropped.
pub(crate) trait StreamObserver: Send + Sync {
    fn stream_ended(self: Box<Self>, stream: &EndedStream<'_>);
}

/// The attributes a finished stream writes, once.
fn attributes(summary: &TokenSummary, options: &StreamOptions, cancelled: bool) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(10);
    if let Some(model) = &options.model {
        attributes.push(KeyValue::new("gen_ai.request.model", Arc::clone(model)));
    }
    if let Some(input) = options.input_tokens {
        attributes.push(KeyValue::new(INPUT_TOKENS, input as i64));
    }
    attributes.push(KeyValue::new("gen_ai.usage.output_tokens", summary.output_tokens as i64));
    let reason = match (summary.finish_reason, cancelled) {
        (Some(reason), _) => Some(reason),
        (None, true) => Some(FinishReason::Cancelled),
        (None, false) => None,
    };
    if let Some(reason) = reason {
        let reasons = Array::String(vec![StringValue::from(reason.as_str())]);
        attributes.push(KeyValue::new("gen_ai.response.finish_reasons", Value::Array(reasons)));
    }
    let timings = [
        ("ttft_ms", summary.ttft_ms),
        ("avg_itl_ms", summary.avg_itl_ms),
        ("itl_p50_ms", summary.itl_p50_ms),
        ("itl_p99_ms", summary.itl_p99_ms),
        ("itl_max_ms", summary.itl_max_ms),
    ];
    for (key, value) in timings {
        if let Some(value) = value {
            attributes.push(KeyValue::new(key, value));
        }
    }
    attributes.push(KeyValue::new("cancelled", cancelled));
    attributes
}

fn write(target: StatsTarget, summary: &TokenSummary, options: &StreamOptions, cancelled: bool) {
    match target {
        StatsTarget::Detached => {}
        StatsTarget::Span(cx) => cx.span().set_attributes(attributes(summary, options, cancelled)),
        StatsTarget::Phase(phase) => {
            phase.set_attributes(attributes(summary, options, cancelled));
            if cancelled {
                phase.cancel();
            } else {
                phase.end();
            }
        }
    }
}
