//! OTLP export through the SDK's batch processors, with what they lack here: exports run on a
//! runtime of their own (tonic and hyper need Tokio, whatever runtime the application has, or
//! none), and every span or log record that never reached the collector is counted.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{
    LogExporter, MetricExporter, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{BatchLogProcessor, LogBatch, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{BatchSpanProcessor, Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;
use tokio::runtime::{Handle, Runtime};

use super::config::{OtlpTarget, Protocol, TlsConfig};
use crate::rate_limit::RateLimitedWarning;

/// A Tokio runtime for the exporters alone, so export works with or without the application's
/// runtime, and goes on after a test's runtime ends. Dropping it never blocks, so it may be
/// dropped anywhere, inside an async context too (a plain `Runtime` panics there).
#[derive(Debug)]
pub(crate) struct ExportRuntime(Option<Runtime>);

impl ExportRuntime {
    pub(crate) fn new() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tokentrace-otlp")
            .enable_all()
            .build()?;
        Ok(Self(Some(runtime)))
    }
}

impl std::ops::Deref for ExportRuntime {
    type Target = Runtime;

    fn deref(&self) -> &Runtime {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// How long a queued item waits at most when no full batch sends it sooner, unless
/// `OTEL_BSP_SCHEDULE_DELAY` / `OTEL_BLRP_SCHEDULE_DELAY` say otherwise: the SDK's 5 s default for
/// spans would keep a quiet service's traces from the collector that long.
const SCHEDULE_DELAY: Duration = Duration::from_secs(1);

/// What happened to the items handed to one signal's processor.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    handed: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    shut_down: AtomicBool,
}

impl Counts {
    /// Items that never reached the collector: those in failed exports while running; after
    /// shutdown, every item handed over and not delivered (dropped from a full queue too).
    pub(crate) fn lost(&self) -> u64 {
        if self.shut_down.load(Ordering::Acquire) {
            let handed = self.handed.load(Ordering::Relaxed);
            handed.saturating_sub(self.delivered.load(Ordering::Relaxed))
        } else {
            self.failed.load(Ordering::Relaxed)
        }
    }
}

fn tonic_metadata(target: &OtlpTarget) -> tonic::metadata::MetadataMap {
    let mut metadata = tonic::metadata::MetadataMap::new();
    for (name, value) in &target.headers {
        if let (Ok(name), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            metadata.insert(name, value);
        }
    }
    metadata
}

/// tonic's TLS settings: the given CA bundle, else the platform's roots; a client identity for
/// mutual TLS.
fn tonic_tls(tls: &TlsConfig) -> tonic::transport::ClientTlsConfig {
    let mut config = tonic::transport::ClientTlsConfig::new();
    config = match &tls.ca_certificate {
        Some(pem) => config.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        None => config.with_native_roots(),
    };
    if let Some((certificate, key)) = &tls.client_identity {
        config = config.identity(tonic::transport::Identity::from_pem(certificate, key));
    }
    config
}

/// An HTTP client for OTLP/HTTP over TLS: rustls (ring), trusting the given CA bundle or the
/// platform's roots, with a client certificate for mutual TLS.
fn https_client(
    target: &OtlpTarget,
) -> Result<
    opentelemetry_http::hyper::HyperClient<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    >,
    String,
> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let mut roots = rustls::RootCertStore::empty();
    match &target.tls.ca_certificate {
        Some(pem) => {
            for certificate in CertificateDer::pem_slice_iter(pem) {
                let certificate = certificate.map_err(|error| format!("CA certificate: {error}"))?;
                roots.add(certificate).map_err(|error| format!("CA certificate: {error}"))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots);
    let config = match &target.tls.client_identity {
        Some((certificates, key)) => {
            let chain = CertificateDer::pem_slice_iter(certificates)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| format!("client certificate: {error}"))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|error| format!("client key: {error}"))?;
            builder.with_client_auth_cert(chain, key).map_err(|error| format!("client identity: {error}"))?
        }
        None => builder.with_no_client_auth(),
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    Ok(opentelemetry_http::hyper::HyperClient::new(connector, target.timeout, None))
}

/// The reason of the last failed HTTP request, which the exporter's own error reduces to
/// "network error" (an unknown CA, a wrong host name, a refused connection).
pub(crate) type FailureDetail = Arc<std::sync::Mutex<Option<String>>>;

/// An HTTP client that keeps the reason of each failure in its [`FailureDetail`].
#[derive(Debug)]
struct Explained<C> {
    inner: C,
    detail: FailureDetail,
}

#[async_trait::async_trait]
impl<C: opentelemetry_http::HttpClient> opentelemetry_http::HttpClient for Explained<C> {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        self.inner.send_bytes(request).await.inspect_err(|error| {
            let mut reason = error.to_string();
            let mut source = error.source();
            while let Some(cause) = source {
                let text = cause.to_string();
                if !reason.contains(&text) {
                    reason.push_str(": ");
                    reason.push_str(&text);
                }
                source = cause.source();
            }
            *self.detail.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
        })
    }
}

/// Builds an OTLP exporter of type `$exporter` for `$target`, inside `$runtime` (which tonic
/// needs). The span, log and metric exporters have distinct builder types with the same methods.
macro_rules! build_exporter {
    ($exporter:ty, $signal:literal, $runtime:expr, $target:expr, $detail:expr) => {{
        let (runtime, target, detail): (&Runtime, &OtlpTarget, &FailureDetail) = ($runtime, $target, $detail);
        let _entered = runtime.enter();
        let tls = target.endpoint.starts_with("https://");
        let built = match target.protocol {
            Protocol::Grpc => {
                let builder = <$exporter>::builder()
                    .with_tonic()
                    .with_endpoint(&target.endpoint)
                    .with_timeout(target.timeout)
                    .with_metadata(tonic_metadata(target));
                if tls {
                    builder.with_tls_config(tonic_tls(&target.tls)).build()
                } else {
                    builder.build()
                }
            }
            Protocol::HttpProtobuf => {
                let builder = <$exporter>::builder()
                    .with_http()
                    .with_endpoint(&target.endpoint)
                    .with_timeout(target.timeout)
                    .with_headers(target.headers.iter().cloned().collect());
                if tls {
                    let client = https_client(target).map_err(|error| {
                        format!(
                            "cannot set up TLS for the OTLP {} exporter to {}: {error}",
                            $signal, target.endpoint
                        )
                    })?;
                    builder.with_http_client(Explained { inner: client, detail: detail.clone() }).build()
                } else {
                    let client =
                        opentelemetry_http::hyper::HyperClient::with_default_connector(target.timeout, None);
                    builder.with_http_client(Explained { inner: client, detail: detail.clone() }).build()
                }
            }
        };
        built.map_err(|error| {
            format!("cannot build the OTLP {} exporter for {}: {error}", $signal, target.endpoint)
        })
    }};
}

/// An exporter whose exports run on the export runtime, counted.
pub(crate) struct OnRuntime<E> {
    inner: E,
    signal: &'static str,
    endpoint: String,
    detail: FailureDetail,
    runtime: Handle,
    timeout: Duration,
    counts: Arc<Counts>,
    // Per signal, so a failing log export does not silence the trace export's warning.
    failed: RateLimitedWarning,
}

impl<E> fmt::Debug for OnRuntime<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnRuntime").field("signal", &self.signal).finish_non_exhaustive()
    }
}

impl<E> OnRuntime<E> {
    /// `inner`, exporting to `target` on `runtime`, and the counts it shares with its processor.
    fn new(
        inner: E,
        signal: &'static str,
        runtime: &Runtime,
        target: &OtlpTarget,
        detail: FailureDetail,
    ) -> (Self, Arc<Counts>) {
        let counts = Arc::new(Counts::default());
        let exporter = Self {
            inner,
            signal,
            endpoint: target.endpoint.clone(),
            detail,
            runtime: runtime.handle().clone(),
            timeout: target.timeout,
            counts: Arc::clone(&counts),
            failed: RateLimitedWarning::new(),
        };
        (exporter, counts)
    }

    /// Runs `export` of `items` items to its end on the export runtime. The SDK's batch
    /// processor calls this from its own thread, never from inside a Tokio runtime.
    fn run(&self, items: usize, export: impl Future<Output = OTelSdkResult>) -> OTelSdkResult {
        let timeout = self.timeout;
        let result = self.runtime.block_on(async {
            tokio::time::timeout(timeout, export).await.unwrap_or(Err(OTelSdkError::Timeout(timeout)))
        });
        let count = if result.is_ok() { &self.counts.delivered } else { &self.counts.failed };
        count.fetch_add(items as u64, Ordering::Relaxed);
        if let Err(error) = &result {
            // Straight to stderr: a log event here would feed a failing log pipeline.
            let detail = self.detail.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            if self.failed.should_emit() {
                let reason = detail.map_or_else(|| error.to_string(), |detail| format!("{error}: {detail}"));
                eprintln!(
                    "tokentrace: OTLP {} export to {} failed ({reason}); dropping data until the collector is back",
                    self.signal, self.endpoint
                );
            }
        }
        result
    }
}

impl opentelemetry_sdk::trace::SpanExporter for OnRuntime<SpanExporter> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.run(batch.len(), self.inner.export(batch))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl opentelemetry_sdk::metrics::exporter::PushMetricExporter for OnRuntime<MetricExporter> {
    async fn export(&self, metrics: &opentelemetry_sdk::metrics::data::ResourceMetrics) -> OTelSdkResult {
        self.run(1, self.inner.export(metrics))
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> opentelemetry_sdk::metrics::Temporality {
        self.inner.temporality()
    }
}

/// The SDK's periodic reader (its `OTEL_METRIC_EXPORT_INTERVAL` applies) exporting to `target`
/// on `runtime`, and the counts of its exports (each export counts as one item).
pub(crate) fn metric_reader(
    runtime: &Runtime,
    target: &OtlpTarget,
) -> Result<(opentelemetry_sdk::metrics::PeriodicReader<OnRuntime<MetricExporter>>, Arc<Counts>), String> {
    let detail = FailureDetail::default();
    let inner = build_exporter!(MetricExporter, "metric", runtime, target, &detail)?;
    let (exporter, counts) = OnRuntime::new(inner, "metrics", runtime, target, detail);
    Ok((opentelemetry_sdk::metrics::PeriodicReader::builder(exporter).build(), counts))
}

impl opentelemetry_sdk::logs::LogExporter for OnRuntime<LogExporter> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        self.run(batch.iter().count(), self.inner.export(batch))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// An SDK batch processor for OTLP export (its `OTEL_BSP_*` or `OTEL_BLRP_*` settings apply),
/// with what it is handed counted on the way in.
#[derive(Debug)]
pub(crate) struct Counted<P> {
    inner: P,
    counts: Arc<Counts>,
}

impl<P> Counted<P> {
    pub(crate) fn counts(&self) -> Arc<Counts> {
        Arc::clone(&self.counts)
    }

    /// Shuts the processor down with `shutdown`; from then on every undelivered item is lost.
    fn shut_down(&self, shutdown: impl FnOnce(&P) -> OTelSdkResult) -> OTelSdkResult {
        let result = shutdown(&self.inner);
        self.counts.shut_down.store(true, Ordering::Release);
        result
    }
}

impl Counted<BatchSpanProcessor> {
    /// The span processor, exporting sampled spans to `target`.
    pub(crate) fn spans(runtime: &Runtime, target: &OtlpTarget) -> Result<Self, String> {
        let detail = FailureDetail::default();
        let inner = build_exporter!(SpanExporter, "trace", runtime, target, &detail)?;
        let (exporter, counts) = OnRuntime::new(inner, "traces", runtime, target, detail);
        Ok(Self { inner: span_batch_processor(exporter), counts })
    }
}

/// The SDK's batch span processor around `exporter`, with its `OTEL_BSP_*` settings and a
/// 1 s schedule unless `OTEL_BSP_SCHEDULE_DELAY` says otherwise.
pub(crate) fn span_batch_processor<E: opentelemetry_sdk::trace::SpanExporter + 'static>(
    exporter: E,
) -> BatchSpanProcessor {
    let mut config = opentelemetry_sdk::trace::BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_SCHEDULE_DELAY").is_none() {
        config = config.with_scheduled_delay(SCHEDULE_DELAY);
    }
    BatchSpanProcessor::builder(exporter).with_batch_config(config.build()).build()
}

impl Counted<BatchLogProcessor> {
    /// The log processor, exporting log records to `target`.
    pub(crate) fn logs(runtime: &Runtime, target: &OtlpTarget) -> Result<Self, String> {
        let detail = FailureDetail::default();
        let inner = build_exporter!(LogExporter, "log", runtime, target, &detail)?;
        let (exporter, counts) = OnRuntime::new(inner, "logs", runtime, target, detail);
        let mut config = opentelemetry_sdk::logs::BatchConfigBuilder::default();
        if std::env::var_os("OTEL_BLRP_SCHEDULE_DELAY").is_none() {
            config = config.with_scheduled_delay(SCHEDULE_DELAY);
        }
        let inner = BatchLogProcessor::builder(exporter).with_batch_config(config.build()).build();
        Ok(Self { inner, counts })
    }
}

impl SpanProcessor for Counted<BatchSpanProcessor> {
    fn on_start(&self, span: &mut Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.counts.handed.fetch_add(1, Ordering::Relaxed);
            self.inner.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.shut_down(|inner| inner.shutdown_with_timeout(timeout))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl LogProcessor for Counted<BatchLogProcessor> {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        self.counts.handed.fetch_add(1, Ordering::Relaxed);
        self.inner.emit(record, scope);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.shut_down(|inner| inner.shutdown_with_timeout(timeout))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
