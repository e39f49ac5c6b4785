//! OTLP exporters on a runtime of their own, behind bounded queues.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{LogExporter, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter as _, SpanProcessor};
use opentelemetry_sdk::Resource;
use tokio::runtime::{Handle, Runtime};

use super::config::{OtlpTarget, Protocol};
use super::queue::{ExportQueue, Losses};

/// A Tokio runtime for the exporters alone, so export works with or without the application's
/// runtime, and goes on after a test's runtime ends.
pub(crate) fn export_runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tokentrace-otlp")
        .enable_all()
        .build()
}

/// Errors while building an exporter, with the target they were for.
pub(crate) fn build_error(signal: &str, target: &OtlpTarget, error: impl fmt::Display) -> String {
    format!("cannot build the OTLP {signal} exporter for {}: {error}", target.endpoint)
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

fn headers(target: &OtlpTarget) -> std::collections::HashMap<String, String> {
    target.headers.iter().cloned().collect()
}

/// Builds an OTLP exporter of type `$exporter` for `$target`, inside `$runtime` (which tonic
/// needs). The span and log exporters have distinct builder types with the same methods.
macro_rules! build_exporter {
    ($exporter:ty, $signal:literal, $runtime:expr, $target:expr) => {{
        let (runtime, target): (&Runtime, &OtlpTarget) = ($runtime, $target);
        let _entered = runtime.enter();
        let built = match target.protocol {
            Protocol::Grpc => <$exporter>::builder()
                .with_tonic()
                .with_endpoint(&target.endpoint)
                .with_timeout(target.timeout)
                .with_metadata(tonic_metadata(target))
                .build(),
            Protocol::HttpProtobuf => <$exporter>::builder()
                .with_http()
                .with_endpoint(&target.endpoint)
                .with_timeout(target.timeout)
                .with_headers(headers(target))
                .with_http_client(HttpClient::new(runtime.handle().clone(), target.timeout))
                .build(),
        };
        built.map_err(|error| build_error($signal, target, error))
    }};
}

/// Builds the span exporter for `target`.
pub(crate) fn span_exporter(runtime: &Runtime, target: &OtlpTarget) -> Result<SpanExporter, String> {
    build_exporter!(SpanExporter, "trace", runtime, target)
}

/// Builds the log exporter for `target`.
pub(crate) fn log_exporter(runtime: &Runtime, target: &OtlpTarget) -> Result<LogExporter, String> {
    build_exporter!(LogExporter, "log", runtime, target)
}

/// The OTLP/HTTP client: hyper on the export runtime, callable from any thread.
#[derive(Clone)]
struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    runtime: Handle,
    timeout: Duration,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl HttpClient {
    fn new(runtime: Handle, timeout: Duration) -> Self {
        let _entered = runtime.enter();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self { client: Client::builder(TokioExecutor::new()).build(connector), runtime, timeout }
    }
}

/// Largest collector response we read.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let exchange = async move {
            let response = client.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_RESPONSE).collect().await?.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
        };
        // Spawned on the export runtime, so the caller may be any executor (or none).
        self.runtime
            .spawn(async move {
                tokio::time::timeout(timeout, exchange)
                    .await
                    .map_err(|_| format!("no answer within {timeout:?}"))?
            })
            .await?
    }
}

/// Runs an export future on the export runtime from the queue's thread.
fn export_on<F>(runtime: &Handle, timeout: Duration, export: F) -> Result<(), String>
where
    F: std::future::Future<Output = OTelSdkResult>,
{
    runtime.block_on(async {
        match tokio::time::timeout(timeout, export).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    })
}

/// Spans to OTLP through a bounded queue.
#[derive(Debug)]
pub(crate) struct QueueSpanProcessor {
    queue: ExportQueue<SpanData>,
}

impl QueueSpanProcessor {
    pub(crate) fn new(
        mut exporter: SpanExporter,
        resource: &Resource,
        runtime: Handle,
        timeout: Duration,
    ) -> Self {
        exporter.set_resource(resource);
        let queue =
            ExportQueue::start("traces", move |batch| export_on(&runtime, timeout, exporter.export(batch)));
        Self { queue }
    }

    pub(crate) fn losses(&self) -> Arc<Losses> {
        Arc::clone(self.queue.losses())
    }
}

impl SpanProcessor for QueueSpanProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.queue.push(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.queue.flush(Duration::from_secs(5)).map_err(OTelSdkError::InternalFailure)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.queue.shutdown(timeout).map_err(OTelSdkError::InternalFailure)
    }
}

/// Log records to OTLP through a bounded queue.
#[derive(Debug)]
pub(crate) struct QueueLogProcessor {
    queue: ExportQueue<(SdkLogRecord, InstrumentationScope)>,
}

impl QueueLogProcessor {
    pub(crate) fn new(
        mut exporter: LogExporter,
        resource: &Resource,
        runtime: Handle,
        timeout: Duration,
    ) -> Self {
        exporter.set_resource(resource);
        let queue = ExportQueue::start("logs", move |batch: Vec<(SdkLogRecord, InstrumentationScope)>| {
            let records: Vec<(&SdkLogRecord, &InstrumentationScope)> =
                batch.iter().map(|(r, s)| (r, s)).collect();
            export_on(&runtime, timeout, exporter.export(LogBatch::new(&records)))
        });
        Self { queue }
    }

    pub(crate) fn losses(&self) -> Arc<Losses> {
        Arc::clone(self.queue.losses())
    }
}

impl LogProcessor for QueueLogProcessor {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        self.queue.push((record.clone(), scope.clone()));
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.queue.flush(Duration::from_secs(5)).map_err(OTelSdkError::InternalFailure)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.queue.shutdown(timeout).map_err(OTelSdkError::InternalFailure)
    }
}
