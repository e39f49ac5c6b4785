//! The frontend's metrics, under Dynamo's names, recorded once per request.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::buckets::{Buckets, FrontendBuckets};
use super::exemplar::{Histogram, TraceExemplar, WithBuckets};
use super::exposition::{render, Format};
use super::gen_ai::{GenAi, Status};
use crate::inference::FinishReason;
use crate::inference::{EndedStream, StreamObserver};
use crate::propagation::request_arrival;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    endpoint: String,
    request_type: &'static str,
    status: &'static str,
}

type Histograms = Family<ModelLabel, Histogram, WithBuckets>;

/// The most distinct `model` label values kept; the rest are counted as [`OVERFLOW_MODEL`].
///
/// ```
/// assert_eq!(tokentrace::metrics::MAX_MODELS, 64);
/// ```
pub const MAX_MODELS: usize = 64;

/// The `model` label of requests beyond [`MAX_MODELS`] distinct models.
///
/// ```
/// assert_eq!(tokentrace::metrics::OVERFLOW_MODEL, "_overflow");
/// ```
pub const OVERFLOW_MODEL: &str = "_overflow";

/// The frontend's metrics: Dynamo's `dynamo_frontend_*` names, so its dashboards work
/// unchanged, with the request's trace as exemplar on every histogram observation of a sampled
/// request.
///
/// - histograms (label `model`): `dynamo_frontend_time_to_first_token_seconds`,
///   `dynamo_frontend_inter_token_latency_seconds` (every gap of every stream),
///   `dynamo_frontend_request_duration_seconds`, `dynamo_frontend_input_sequence_tokens`,
///   `dynamo_frontend_output_sequence_tokens`;
/// - `dynamo_frontend_requests_total` (`model`, `endpoint`, `request_type` = `stream` or
///   `unary`, `status` = `success`, `error` or `cancelled`);
/// - gauges `dynamo_frontend_inflight_requests` and `dynamo_frontend_active_requests` (the
///   same value, old and new name), `dynamo_frontend_disconnected_clients`;
/// - `tokentrace_metrics_label_overflow_total`: requests whose model was counted as
///   [`OVERFLOW_MODEL`];
/// - through the global OpenTelemetry meter provider (exported over OTLP by `telemetry::init`
///   with `OTEL_METRICS_EXPORTER=otlp`), the GenAI semantic-convention histograms
///   `gen_ai.server.time_to_first_token`, `gen_ai.server.time_per_output_token` and
///   `gen_ai.server.request.duration` (seconds), with `gen_ai.operation.name`,
///   `gen_ai.request.model` and `error.type`.
///
/// A request is recorded once, when its token stream ends ([`TokenStream::record_metrics`]),
/// fails ([`RequestMetrics::failed`]) or is dropped; nothing is recorded per token.
///
/// [`TokenStream::record_metrics`]: crate::inference::TokenStream::record_metrics
///
/// ```
/// use tokentrace::metrics::{Format, FrontendMetrics};
/// use tokentrace::opentelemetry::Context;
///
/// let metrics = FrontendMetrics::new();
/// metrics.start(&Context::new(), "llama", "chat_completions", false).failed();
/// let text = metrics.render(Format::Prometheus);
/// assert!(text.contains(
///     r#"dynamo_frontend_requests_total{model="llama",endpoint="chat_completions",request_type="unary",status="error"} 1"#
/// ));
/// ```
#[derive(Clone, Debug)]
pub struct FrontendMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    ttft: Histograms,
    itl: Histograms,
    duration: Histograms,
    input_tokens: Histograms,
    output_tokens: Histograms,
    requests: Family<RequestLabels, Counter>,
    inflight: Family<ModelLabel, Gauge>,
    disconnected: Gauge,
    overflow: Counter,
    models: Mutex<HashSet<String>>,
    gen_ai: OnceLock<GenAi>,
}

impl Default for FrontendMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl FrontendMetrics {
    /// With the default buckets ([`FrontendBuckets::default`]).
    ///
    /// ```
    /// use tokentrace::metrics::{Format, FrontendMetrics};
    /// use tokentrace::opentelemetry::Context;
    ///
    /// let metrics = FrontendMetrics::new();
    /// metrics.start(&Context::new(), "m", "completions", false).failed();
    /// let text = metrics.render(Format::OpenMetrics);
    /// assert!(text.contains("# TYPE dynamo_frontend_request_duration_seconds histogram"));
    /// assert!(text.ends_with("# EOF\n"));
    /// ```
    pub fn new() -> Self {
        Self::with_buckets(FrontendBuckets::default())
    }

    /// With these buckets (for instance [`FrontendBuckets::from_env`]).
    ///
    /// ```
    /// use tokentrace::metrics::{Buckets, Format, FrontendBuckets, FrontendMetrics};
    /// use tokentrace::opentelemetry::Context;
    ///
    /// let buckets = FrontendBuckets { ttft: Buckets::parse("0.5,1")?, ..FrontendBuckets::default() };
    /// let metrics = FrontendMetrics::with_buckets(buckets);
    /// # Ok::<(), String>(())
    /// ```
    pub fn with_buckets(buckets: FrontendBuckets) -> Self {
        let histograms = |bounds: &Buckets| Histograms::new_with_constructor(WithBuckets(bounds.clone()));
        let mut inner = Inner {
            registry: Registry::default(),
            ttft: histograms(&buckets.ttft),
            itl: histograms(&buckets.itl),
            duration: histograms(&buckets.duration),
            input_tokens: histograms(&buckets.tokens),
            output_tokens: histograms(&buckets.tokens),
            requests: Family::default(),
            inflight: Family::default(),
            disconnected: Gauge::default(),
            overflow: Counter::default(),
            models: Mutex::default(),
            gen_ai: OnceLock::new(),
        };
        let registry = &mut inner.registry;
        registry.register(
            "dynamo_frontend_time_to_first_token_seconds",
            "Time from the request's arrival to its first token",
            inner.ttft.clone(),
        );
        registry.register(
            "dynamo_frontend_inter_token_latency_seconds",
            "Time between consecutive tokens of a stream",
            inner.itl.clone(),
        );
        registry.register(
            "dynamo_frontend_request_duration_seconds",
            "Time from the request's arrival to its end",
            inner.duration.clone(),
        );
        registry.register(
            "dynamo_frontend_input_sequence_tokens",
            "Prompt tokens",
            inner.input_tokens.clone(),
        );
        registry.register(
            "dynamo_frontend_output_sequence_tokens",
            "Generated tokens",
            inner.output_tokens.clone(),
        );
        registry.register("dynamo_frontend_requests", "Requests, by outcome", inner.requests.clone());
        registry.register(
            "dynamo_frontend_inflight_requests",
            "Requests in progress",
            inner.inflight.clone(),
        );
        registry.register(
            "dynamo_frontend_active_requests",
            "Requests in progress (the newer name of inflight_requests)",
            inner.inflight.clone(),
        );
        registry.register(
            "dynamo_frontend_disconnected_clients",
            "Clients that went away before their response ended",
            inner.disconnected.clone(),
        );
        registry.register(
            "tokentrace_metrics_label_overflow",
            "Requests whose model label was replaced by _overflow",
            inner.overflow.clone(),
        );
        Self { inner: Arc::new(inner) }
    }

    /// Starts recording one request of `model` on `endpoint` (`streaming` or unary), in the
    /// request's context `cx` (its span becomes the exemplar when sampled; its arrival, stored
    /// by the server layer, starts the duration). Counts it in flight until it is recorded.
    ///
    /// `model` comes from the request, so it is bounded: characters outside
    /// `[A-Za-z0-9._:/@+-]` become `_`, it is cut at 128 bytes, and past [`MAX_MODELS`]
    /// distinct values it becomes [`OVERFLOW_MODEL`].
    ///
    /// ```
    /// use tokentrace::metrics::{Format, FrontendMetrics};
    /// use tokentrace::opentelemetry::Context;
    ///
    /// let metrics = FrontendMetrics::new();
    /// let request = metrics.start(&Context::new(), "llama", "completions", true);
    /// assert!(metrics.render(Format::Prometheus).contains(r#"dynamo_frontend_inflight_requests{model="llama"} 1"#));
    /// drop(request); // never streamed: counted as cancelled
    /// assert!(metrics.render(Format::Prometheus).contains(r#"dynamo_frontend_inflight_requests{model="llama"} 0"#));
    /// ```
    pub fn start(
        &self,
        cx: &Context,
        model: &str,
        endpoint: &'static str,
        streaming: bool,
    ) -> RequestMetrics {
        let model = ModelLabel { model: self.bounded_model(model) };
        self.inner.inflight.get_or_create(&model).inc();
        let exemplar = TraceExemplar::of(cx.span().span_context());
        RequestMetrics {
            metrics: self.clone(),
            model,
            endpoint,
            streaming,
            arrival: request_arrival(cx).unwrap_or_else(Instant::now),
            exemplar,
            input_tokens: None,
            recorded: false,
        }
    }

    fn bounded_model(&self, model: &str) -> String {
        let mut clean: String = model
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "._:/@+-".contains(c) { c } else { '_' })
            .collect();
        clean.truncate(128);
        let mut models = self.inner.models.lock().unwrap_or_else(PoisonError::into_inner);
        if models.contains(&clean) {
            return clean;
        }
        if models.len() < MAX_MODELS {
            models.insert(clean.clone());
            return clean;
        }
        self.inner.overflow.inc();
        OVERFLOW_MODEL.to_owned()
    }

    /// The metrics as text: [`Format::OpenMetrics`] (with exemplars) or
    /// [`Format::Prometheus`].
    ///
    /// ```
    /// use tokentrace::metrics::{Format, FrontendMetrics};
    /// assert!(!FrontendMetrics::new().render(Format::Prometheus).contains("# EOF"));
    /// ```
    pub fn render(&self, format: Format) -> String {
        render(&self.inner.registry, format)
    }

    /// A router serving `GET /metrics`, in the format the scraper's `Accept` header asks for.
    ///
    /// ```
    /// use axum::Router;
    /// use tokentrace::metrics::FrontendMetrics;
    ///
    /// let metrics = FrontendMetrics::new();
    /// let app: Router = Router::new().merge(metrics.router());
    /// # let _ = app;
    /// ```
    #[cfg(feature = "axum")]
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        let metrics = self.clone();
        super::exposition::router(move |format| metrics.render(format))
    }
}

/// One request being recorded; see [`FrontendMetrics::start`]. Recorded once: by its token
/// stream's end ([`TokenStream::record_metrics`](crate::inference::TokenStream::record_metrics)),
/// by [`RequestMetrics::failed`], or, dropped before either, as `cancelled`.
#[derive(Debug)]
pub struct RequestMetrics {
    metrics: FrontendMetrics,
    model: ModelLabel,
    endpoint: &'static str,
    streaming: bool,
    arrival: Instant,
    exemplar: Option<TraceExemplar>,
    input_tokens: Option<u64>,
    recorded: bool,
}

impl RequestMetrics {
    /// The prompt's length, for `dynamo_frontend_input_sequence_tokens`.
    ///
    /// ```
    /// use tokentrace::metrics::{Format, FrontendMetrics};
    /// use tokentrace::opentelemetry::Context;
    ///
    /// let metrics = FrontendMetrics::new();
    /// metrics.start(&Context::new(), "m", "chat_completions", false).input_tokens(12).failed();
    /// assert!(metrics.render(Format::Prometheus).contains(r#"dynamo_frontend_input_sequence_tokens_count{model="m"} 1"#));
    /// ```
    pub fn input_tokens(mut self, tokens: u64) -> Self {
        self.input_tokens = Some(tokens);
        self
    }

    /// Records the request as failed before any token (for example, its worker was
    /// unavailable): `status="error"`, no TTFT.
    ///
    /// ```
    /// use tokentrace::metrics::{Format, FrontendMetrics};
    /// use tokentrace::opentelemetry::Context;
    ///
    /// let metrics = FrontendMetrics::new();
    /// metrics.start(&Context::new(), "m", "chat_completions", true).failed();
    /// let text = metrics.render(Format::Prometheus);
    /// assert!(text.contains(r#"status="error"} 1"#));
    /// assert!(!text.contains("time_to_first_token_seconds_count"), "no token, no TTFT");
    /// ```
    pub fn failed(mut self) {
        self.record(Status::Error, None);
    }

    fn record(&mut self, status: Status, stream: Option<&EndedStream<'_>>) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let inner = &self.metrics.inner;
        inner.inflight.get_or_create(&self.model).dec();
        let status_label = match status {
            Status::Success => "success",
            Status::Error => "error",
            Status::Cancelled => {
                inner.disconnected.inc();
                "cancelled"
            }
        };
        inner
            .requests
            .get_or_create(&RequestLabels {
                model: self.model.model.clone(),
                endpoint: self.endpoint.to_owned(),
                request_type: if self.streaming { "stream" } else { "unary" },
                status: status_label,
            })
            .inc();
        let exemplar = || self.exemplar.clone();
        let duration = self.arrival.elapsed().as_secs_f64();
        inner.duration.get_or_create(&self.model).observe(duration, exemplar(), None);
        self.metrics.inner.gen_ai.get_or_init(GenAi::new).record(
            self.endpoint,
            &self.model.model,
            status,
            duration,
            stream,
        );
        if let Some(tokens) = self.input_tokens {
            inner.input_tokens.get_or_create(&self.model).observe(tokens as f64, exemplar(), None);
        }
        let Some(stream) = stream else { return };
        if let Some(ttft_ms) = stream.summary.ttft_ms {
            inner.ttft.get_or_create(&self.model).observe(ttft_ms / 1e3, exemplar(), None);
        }
        inner.output_tokens.get_or_create(&self.model).observe(
            stream.summary.output_tokens as f64,
            exemplar(),
            None,
        );
        let itl = inner.itl.get_or_create(&self.model);
        for (gap, count) in stream.itl_seconds() {
            // One exemplar per group of gaps is enough: each bucket keeps its latest.
            itl.observe(gap, exemplar(), None);
            for _ in 1..count {
                itl.observe(gap, None, None);
            }
        }
    }
}

impl StreamObserver for RequestMetrics {
    fn stream_ended(mut self: Box<Self>, stream: &EndedStream<'_>) {
        let status = match (stream.cancelled, stream.summary.finish_reason) {
            (true, _) | (false, Some(FinishReason::Cancelled)) => Status::Cancelled,
            (false, Some(FinishReason::Error)) => Status::Error,
            _ => Status::Success,
        };
        self.record(status, Some(stream));
    }
}

impl Drop for RequestMetrics {
    fn drop(&mut self) {
        self.record(Status::Cancelled, None);
    }
}
