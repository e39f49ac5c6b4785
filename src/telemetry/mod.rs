//! Environment-driven telemetry setup: OTLP traces and logs (gRPC or HTTP), JSON Lines logs
//! carrying trace ids, sampling, and a guard that flushes on drop.
//!
//! One call at the start of each process:
//!
//! ```no_run
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Reads OTEL_EXPORT_ENABLED, DYN_LOGGING_JSONL, DYN_LOG, OTEL_EXPORTER_OTLP_*, ...
//!     let _telemetry = tokentrace::telemetry::init("dynamo-frontend")?;
//!     tracing::info!("serving");
//!     Ok(())
//! } // the guard flushes and shuts down, within a bounded time
//! ```
//!
//! | variable | meaning |
//! |---|---|
//! | `OTEL_EXPORT_ENABLED` | export traces **and** logs over OTLP (`1/true/on/yes`) |
//! | `OTEL_EXPORT_LOGS_ENABLED` | `false` keeps logs local while traces are exported |
//! | `DYN_LOGGING_JSONL` | JSON Lines on stderr: `time, level, target, file, line, message, trace_id, span_id, x_request_id, request_id`, fields |
//! | `DYN_LOG` | filter directives (`info`; `info,tokentrace=debug`) |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | default `http://localhost:4317` |
//! | `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` | default: where traces go |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT`, `_PROTOCOL` (`grpc`, `http/protobuf`), `_HEADERS`, `_TIMEOUT` | the standard variables, per-signal variants too |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the resource |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | `parentbased_always_on` by default; ratios sample consistently, writing `ot=th:…` |
//!
//! Export goes through the OpenTelemetry SDK's batch processors (bounded queues, their own
//! threads; the `OTEL_BSP_*` and `OTEL_BLRP_*` variables apply) onto a runtime of its own: a
//! collector that is down or slow never blocks or fails a request, and what is lost is counted
//! and reported at shutdown.

mod config;
mod console;
mod export;
mod jsonl;
mod keep;
mod open_traces;
mod probability;
mod waterfall;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, ShouldSample, SpanProcessor};
use opentelemetry_sdk::Resource;
use tracing::level_filters::LevelFilter;
use tracing::Subscriber;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

pub use config::{ConfigError, OtlpTarget, Protocol, SamplerConfig, TelemetryConfig, TlsConfig};
use export::Counts;
pub use jsonl::JsonLines;
pub use keep::KeepRules;
pub use waterfall::{render_waterfall, WaterfallSpan};

/// Why telemetry could not be set up.
///
/// ```
/// use tokentrace::telemetry::{Telemetry, TelemetryConfig, TelemetryError};
///
/// let error = TelemetryConfig::from_vars("svc", [("OTEL_EXPORT_ENABLED", "perhaps")]).unwrap_err();
/// let error = TelemetryError::from(error);
/// assert!(error.to_string().contains("OTEL_EXPORT_ENABLED"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum TelemetryError {
    /// A bad environment value (the message names the variable).
    Config(ConfigError),
    /// An exporter or its runtime could not be built.
    Export(String),
    /// A global tracing subscriber was already installed.
    AlreadyInitialized,
}

impl fmt::Display for TelemetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(error) => write!(f, "telemetry configuration: {error}"),
            Self::Export(error) => write!(f, "telemetry export: {error}"),
            Self::AlreadyInitialized => f.write_str("telemetry: a global tracing subscriber is already set"),
        }
    }
}

impl std::error::Error for TelemetryError {}

impl From<ConfigError> for TelemetryError {
    fn from(error: ConfigError) -> Self {
        Self::Config(error)
    }
}

/// Reads the environment and installs everything globally: the tracer provider, the strict
/// W3C propagator, and the `tracing` subscriber (human-readable or JSON Lines on stderr, plus
/// OTLP logs). `default_service_name` names this component unless `OTEL_SERVICE_NAME` is set.
///
/// Layers built with `default()`, before or after this call, start their spans with the
/// provider it installed (see [`DefaultTracer`](crate::DefaultTracer)).
///
/// ```no_run
/// let guard = tokentrace::telemetry::init("dynamo-worker")?;
/// tracing::info!("ready");
/// drop(guard); // flushes and shuts down, within a bounded time
/// # Ok::<(), tokentrace::telemetry::TelemetryError>(())
/// ```
pub fn init(default_service_name: &str) -> Result<TelemetryGuard, TelemetryError> {
    Telemetry::build(TelemetryConfig::from_env(default_service_name)?)?.install()
}

/// Telemetry built from a [`TelemetryConfig`], not yet installed: use its parts directly (in
/// tests, with `tracing::subscriber::with_default`), or [`Telemetry::install`] it.
///
/// ```
/// use tokentrace::telemetry::{Telemetry, TelemetryConfig};
///
/// let config = TelemetryConfig::from_vars("worker", [("DYN_LOGGING_JSONL", "1")])?;
/// let telemetry = Telemetry::build(config)?;
/// tracing::subscriber::with_default(telemetry.subscriber(), || tracing::info!("hello"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Telemetry {
    config: TelemetryConfig,
    tracer_provider: SdkTracerProvider,
    logger_provider: Option<SdkLoggerProvider>,
    meter_provider: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
    metric_losses: Option<Arc<Counts>>,
    span_losses: Option<Arc<Counts>>,
    log_losses: Option<Arc<Counts>>,
    /// Requests decided early because the keep rules' held spans reached a bound.
    keep_overflows: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// The keep rules' decisions, which the transports carry once installed.
    keep_decisions: Option<Arc<dyn crate::decisions::Decisions>>,
    runtime: Option<export::ExportRuntime>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The sampler `config` names; a ratio samples consistently ([`probability`]): the threshold
/// scheme of OpenTelemetry's TraceState probability sampling, not the SDK's `TraceIdRatioBased`.
fn sampler(config: &SamplerConfig) -> Box<dyn ShouldSample> {
    match config {
        SamplerConfig::AlwaysOn => Box::new(Sampler::AlwaysOn),
        SamplerConfig::AlwaysOff => Box::new(Sampler::AlwaysOff),
        SamplerConfig::TraceIdRatio(ratio) => Box::new(probability::ConsistentRatio::new(*ratio)),
        SamplerConfig::ParentBased(root) => Box::new(probability::ParentBased::new(sampler(root))),
    }
}

/// How long shutdown may take, all of it.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

impl Telemetry {
    /// Builds providers and exporters (nothing global is touched). Fails if the export
    /// runtime cannot start or an exporter cannot be built from the configuration.
    ///
    /// ```
    /// use tokentrace::telemetry::{Telemetry, TelemetryConfig};
    ///
    /// let config = TelemetryConfig::from_vars("worker", [("OTEL_TRACES_SAMPLER", "always_off")])?;
    /// let telemetry = Telemetry::build(config)?;
    /// assert_eq!(telemetry.config().service_name, "worker");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn build(config: TelemetryConfig) -> Result<Self, TelemetryError> {
        let mut resource = Resource::builder_empty().with_service_name(config.service_name.clone());
        for (key, value) in &config.resource_attributes {
            resource = resource.with_attribute(KeyValue::new(key.clone(), value.clone()));
        }
        let resource = resource.build();

        let runtime = if config.export_traces || config.export_logs || config.export_metrics {
            Some(export::ExportRuntime::new().map_err(|error| TelemetryError::Export(error.to_string()))?)
        } else {
            None
        };

        let mut exporters: Vec<Box<dyn SpanProcessor>> = Vec::new();
        let mut span_losses = None;
        if let (true, Some(runtime)) = (config.export_traces, &runtime) {
            let processor =
                export::Counted::spans(runtime, &config.traces).map_err(TelemetryError::Export)?;
            span_losses = Some(processor.counts());
            exporters.push(Box::new(processor));
        }
        if config.console_traces {
            let format = if config.jsonl { console::Format::Json } else { console::Format::Text };
            exporters.push(Box::new(console::ConsoleProcessor::new(format, console::Sink::Stderr)));
        }
        let mut traces = SdkTracerProvider::builder().with_resource(resource.clone());
        let mut keep_overflows = None;
        let mut keep_decisions = None;
        match &config.keep {
            // Keep rules: every span recorded, each trace decided when it ends (see `keep`).
            Some(rules) => {
                let limits = keep::KeepLimits {
                    spans: config.keep_max_spans,
                    bytes: config.keep_max_bytes,
                    grace: config.keep_grace,
                };
                // The keep processor shares its exporters with the transports: they get the
                // resource now, not from the provider.
                for exporter in &mut exporters {
                    exporter.set_resource(&resource);
                }
                let processor =
                    keep::KeepProcessor::new(rules.clone(), config.keep_summary, limits, exporters);
                keep_overflows = Some(processor.overflows());
                keep_decisions = Some(processor.decisions());
                traces = traces
                    .with_sampler(keep::RecordAll(sampler(&config.sampler)))
                    .with_span_processor(processor);
            }
            None => {
                traces = traces.with_sampler(sampler(&config.sampler));
                for processor in exporters {
                    traces = traces.with_span_processor(Exporter(processor));
                }
            }
        }

        let mut metric_losses = None;
        let meter_provider = match (config.export_metrics, &runtime) {
            (true, Some(runtime)) => {
                let (reader, counts) =
                    export::metric_reader(runtime, &config.metrics).map_err(TelemetryError::Export)?;
                metric_losses = Some(counts);
                Some(
                    opentelemetry_sdk::metrics::SdkMeterProvider::builder()
                        .with_resource(resource.clone())
                        .with_reader(reader)
                        .build(),
                )
            }
            _ => None,
        };

        let mut log_losses = None;
        let logger_provider = match (config.export_logs, &runtime) {
            (true, Some(runtime)) => {
                let processor =
                    export::Counted::logs(runtime, &config.logs).map_err(TelemetryError::Export)?;
                log_losses = Some(processor.counts());
                Some(
                    SdkLoggerProvider::builder()
                        .with_resource(resource)
                        .with_log_processor(processor)
                        .build(),
                )
            }
            _ => None,
        };

        Ok(Self {
            tracer_provider: traces.build(),
            logger_provider,
            meter_provider,
            metric_losses,
            span_losses,
            log_losses,
            keep_overflows,
            keep_decisions,
            runtime,
            config,
        })
    }

    /// The configuration this was built from.
    ///
    /// ```
    /// # use tokentrace::telemetry::{Telemetry, TelemetryConfig};
    /// let telemetry = Telemetry::build(TelemetryConfig::from_vars("svc", [("DYN_LOG", "debug")])?)?;
    /// assert_eq!(telemetry.config().log_filter, "debug");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn config(&self) -> &TelemetryConfig {
        &self.config
    }

    /// The tracer provider (hand its tracers to the layers' `with_tracer`).
    ///
    /// ```
    /// use opentelemetry::trace::TracerProvider;
    /// # use tokentrace::telemetry::{Telemetry, TelemetryConfig};
    /// let telemetry = Telemetry::build(TelemetryConfig::from_vars("svc", Vec::<(String, String)>::new())?)?;
    /// let layer = tokentrace::rpc::ServerLayer::with_tracer(telemetry.tracer_provider().tracer("worker"));
    /// # let _ = layer;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.tracer_provider
    }

    /// A tracer named `name`.
    ///
    /// ```
    /// # use tokentrace::telemetry::{Telemetry, TelemetryConfig};
    /// let telemetry = Telemetry::build(TelemetryConfig::from_vars("svc", Vec::<(String, String)>::new())?)?;
    /// let layer = tokentrace::http::ServerLayer::with_tracer(telemetry.tracer("frontend"));
    /// # let _ = layer;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tracer(&self, name: &'static str) -> SdkTracer {
        self.tracer_provider.tracer(name)
    }

    /// The `tracing` subscriber: `DYN_LOG` filter; JSON Lines or human-readable lines on
    /// stderr; OTLP logs when enabled (without the exporter's own transport crates, which
    /// would otherwise log about their own exports).
    ///
    /// ```
    /// # use tokentrace::telemetry::{Telemetry, TelemetryConfig};
    /// let telemetry = Telemetry::build(TelemetryConfig::from_vars("svc", [("DYN_LOGGING_JSONL", "1")])?)?;
    /// // A JSON line on stderr, for this closure only.
    /// tracing::subscriber::with_default(telemetry.subscriber(), || tracing::warn!(queue = 3, "slow"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscriber(&self) -> impl Subscriber + Send + Sync + 'static {
        // Validated when the configuration was read.
        let filter = Targets::from_str(&self.config.log_filter)
            .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO));
        let jsonl = self.config.jsonl.then(JsonLines::stderr);
        let readable =
            (!self.config.jsonl).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
        let bridge = self.logger_provider.as_ref().map(|provider| {
            let quiet = [
                "h2",
                "hyper",
                "hyper_util",
                "tonic",
                "tower",
                "opentelemetry",
                "opentelemetry_sdk",
                "opentelemetry_otlp",
            ]
            .into_iter()
            .fold(filter.clone(), |targets, target| targets.with_target(target, LevelFilter::OFF));
            OpenTelemetryTracingBridge::new(provider).with_filter(quiet)
        });
        tracing_subscriber::registry()
            .with(bridge)
            .with(jsonl.with_filter(filter.clone()))
            .with(readable.with_filter(filter))
    }

    /// Installs the tracer provider, the configured [`Propagators`](crate::propagation::Propagators)
    /// and the subscriber globally, once
    /// per process ([`TelemetryError::AlreadyInitialized`] after that).
    ///
    /// ```
    /// # use tokentrace::telemetry::{Telemetry, TelemetryConfig, TelemetryError};
    /// let config = TelemetryConfig::from_vars("svc", Vec::<(String, String)>::new())?;
    /// let guard = Telemetry::build(config.clone())?.install()?;
    /// assert!(matches!(Telemetry::build(config)?.install(), Err(TelemetryError::AlreadyInitialized)));
    /// drop(guard);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn install(self) -> Result<TelemetryGuard, TelemetryError> {
        tracing::subscriber::set_global_default(self.subscriber())
            .map_err(|_| TelemetryError::AlreadyInitialized)?;
        self.config.propagators.install();
        opentelemetry::global::set_tracer_provider(self.tracer_provider.clone());
        if let Some(meters) = &self.meter_provider {
            opentelemetry::global::set_meter_provider(meters.clone());
        }
        if let Some(decisions) = &self.keep_decisions {
            crate::decisions::install(Arc::clone(decisions));
        }
        Ok(TelemetryGuard { telemetry: Some(self) })
    }

    /// Flushes and shuts down, within a bounded time; returns what was lost.
    ///
    /// ```
    /// use opentelemetry::trace::{Span, Tracer};
    /// # use tokentrace::telemetry::{Telemetry, TelemetryConfig};
    /// let telemetry = Telemetry::build(TelemetryConfig::from_vars("svc", Vec::<(String, String)>::new())?)?;
    /// telemetry.tracer("job").start("step").end();
    /// assert_eq!(telemetry.shutdown().spans, 0); // nothing exported, nothing lost
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(mut self) -> Lost {
        self.shutdown_inner()
    }

    fn shutdown_inner(&mut self) -> Lost {
        let _ = self.tracer_provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        if let Some(logs) = &self.logger_provider {
            let _ = logs.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        }
        if let Some(meters) = &self.meter_provider {
            let _ = meters.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        }
        // Dropping it never blocks, and is allowed inside another runtime.
        drop(self.runtime.take());
        self.losses()
    }

    /// What never reached the collector so far (see [`Lost`]).
    ///
    /// ```
    /// # use tokentrace::telemetry::{Telemetry, TelemetryConfig};
    /// let telemetry = Telemetry::build(TelemetryConfig::from_vars("svc", Vec::<(String, String)>::new())?)?;
    /// assert_eq!(telemetry.losses().logs, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn losses(&self) -> Lost {
        Lost {
            spans: self.span_losses.as_ref().map_or(0, |counts| counts.lost()),
            logs: self.log_losses.as_ref().map_or(0, |counts| counts.lost()),
            metric_exports: self.metric_losses.as_ref().map_or(0, |counts| counts.lost()),
            keep_overflows: self
                .keep_overflows
                .as_ref()
                .map_or(0, |count| count.load(std::sync::atomic::Ordering::Relaxed)),
        }
    }
}

/// A boxed span processor, as the provider takes each processor by its type.
#[derive(Debug)]
struct Exporter(Box<dyn SpanProcessor>);

impl SpanProcessor for Exporter {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, span: opentelemetry_sdk::trace::SpanData) {
        self.0.on_end(span);
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// Spans and log records that never reached the collector. While telemetry runs: those in
/// exports the collector did not take (down, slow, refusing). After shutdown: every one handed
/// to the exporter and not delivered, those dropped from a full queue included.
///
/// ```
/// use tokentrace::telemetry::{Telemetry, TelemetryConfig};
///
/// let telemetry = Telemetry::build(TelemetryConfig::from_vars("svc", Vec::<(String, String)>::new())?)?;
/// assert_eq!(telemetry.losses().spans, 0); // nothing exported, nothing lost
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// Spans lost.
    pub spans: u64,
    /// Log records lost.
    pub logs: u64,
    /// Metric exports that failed (each carries every metric of one collection).
    pub metric_exports: u64,
    /// Requests that keep rules decided early (as the head sampler had) because the spans held
    /// for undecided requests reached `TOKENTRACE_TRACES_KEEP_MAX_SPANS` or `_MAX_BYTES`.
    pub keep_overflows: u64,
}

/// Keeps telemetry running; on drop, flushes and shuts down within a bounded time and reports
/// on stderr anything that was lost.
///
/// ```no_run
/// let guard = tokentrace::telemetry::init("dynamo-worker-vllm")?;
/// // ... serve ...
/// println!("lost so far: {:?}", guard.losses());
/// drop(guard); // flushes, within a bounded time
/// # Ok::<(), tokentrace::telemetry::TelemetryError>(())
/// ```
#[must_use = "telemetry shuts down when the guard is dropped"]
pub struct TelemetryGuard {
    telemetry: Option<Telemetry>,
}

impl fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryGuard").finish_non_exhaustive()
    }
}

impl TelemetryGuard {
    /// What never reached the collector so far.
    ///
    /// ```
    /// use tokentrace::telemetry::{Lost, Telemetry, TelemetryConfig};
    ///
    /// let config = TelemetryConfig::from_vars("svc", Vec::<(String, String)>::new())?;
    /// let guard = Telemetry::build(config)?.install()?;
    /// assert_eq!(guard.losses(), Lost::default());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn losses(&self) -> Lost {
        self.telemetry.as_ref().map(Telemetry::losses).unwrap_or_default()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(mut telemetry) = self.telemetry.take() {
            let lost = telemetry.shutdown_inner();
            if lost.spans > 0 || lost.logs > 0 {
                eprintln!(
                    "tokentrace: {} spans and {} log records never reached the collector (down, slow or refusing)",
                    lost.spans, lost.logs
                );
            }
            if lost.keep_overflows > 0 {
                eprintln!(
                    "tokentrace: {} requests were decided before their end, as head sampling had, because the \
                     spans held for keep rules reached TOKENTRACE_TRACES_KEEP_MAX_SPANS or _MAX_BYTES",
                    lost.keep_overflows
                );
            }
        }
    }
}
