//! A worker's metrics: how long each inference phase took, and the KV bytes moved.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::trace::SpanContext;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::buckets::Buckets;
use super::exemplar::{Histogram, TraceExemplar, WithBuckets};
use super::exposition::{render, Format};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    component: String,
    endpoint: Cow<'static, str>,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    component: String,
    endpoint: Cow<'static, str>,
}

/// A worker's metrics, recorded by [`Phases::record_metrics`](crate::inference::Phases::record_metrics)
/// when each phase ends:
///
/// - `tokentrace_worker_phase_duration_seconds` (`component`, `endpoint`, `phase` = `queue`,
///   `prefill`, `kv_transfer` or `decode`), a histogram whose observations of a sampled request
///   carry the phase's span as exemplar;
/// - `tokentrace_worker_kv_transfer_bytes_total` (`component`, `endpoint`).
///
/// `endpoint` is the RPC endpoint the request called (stored by
/// [`rpc::ServerLayer`](crate::rpc::ServerLayer)); empty outside one.
///
/// ```
/// use tokentrace::inference::Phases;
/// use tokentrace::metrics::{Format, WorkerMetrics};
///
/// let metrics = WorkerMetrics::new("prefill");
/// let phases = Phases::default().record_metrics(metrics.clone());
/// phases.prefill(12).end();
/// phases.kv_transfer(4096, "prefill-0", "decode-0").end();
/// let text = metrics.render(Format::Prometheus);
/// assert!(text.contains(r#"tokentrace_worker_phase_duration_seconds_count{component="prefill",endpoint="",phase="prefill"} 1"#));
/// assert!(text.contains(r#"tokentrace_worker_kv_transfer_bytes_total{component="prefill",endpoint=""} 4096"#));
/// ```
#[derive(Clone, Debug)]
pub struct WorkerMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    component: String,
    phases: Family<PhaseLabels, Histogram, WithBuckets>,
    kv_bytes: Family<EndpointLabels, Counter>,
}

impl WorkerMetrics {
    /// The metrics of a worker of `component` (`backend`, `prefill`, `decode`, ...), with
    /// phase buckets log-spaced from 100 µs to 480 s.
    ///
    /// ```
    /// use tokentrace::metrics::{Format, WorkerMetrics};
    /// assert!(WorkerMetrics::new("decode").render(Format::OpenMetrics).ends_with("# EOF\n"));
    /// ```
    pub fn new(component: impl Into<String>) -> Self {
        let phases = Family::new_with_constructor(WithBuckets(Buckets::log_spaced(0.0001, 480.0, 24)));
        let kv_bytes = Family::<EndpointLabels, Counter>::default();
        let mut registry = Registry::default();
        registry.register(
            "tokentrace_worker_phase_duration_seconds",
            "Duration of each inference phase (queue, prefill, kv_transfer, decode)",
            phases.clone(),
        );
        registry.register("tokentrace_worker_kv_transfer_bytes", "KV cache bytes moved", kv_bytes.clone());
        Self { inner: Arc::new(Inner { registry, component: component.into(), phases, kv_bytes }) }
    }

    /// The metrics as text.
    ///
    /// ```
    /// use tokentrace::metrics::{Format, WorkerMetrics};
    /// assert!(!WorkerMetrics::new("decode").render(Format::Prometheus).contains("# EOF"));
    /// ```
    pub fn render(&self, format: Format) -> String {
        render(&self.inner.registry, format)
    }

    /// A router serving `GET /metrics`, in the format the scraper's `Accept` header asks for
    /// (a worker serves it on a port of its own).
    ///
    /// ```
    /// use tokentrace::metrics::WorkerMetrics;
    /// let app: axum::Router = WorkerMetrics::new("decode").router();
    /// # let _ = app;
    /// ```
    #[cfg(feature = "axum")]
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        let metrics = self.clone();
        super::exposition::router(move |format| metrics.render(format))
    }

    /// Records a phase that started at `started`; `kv_bytes` for a KV transfer.
    pub(crate) fn record_phase(
        &self,
        phase: &'static str,
        endpoint: Cow<'static, str>,
        started: Instant,
        span: &SpanContext,
        kv_bytes: Option<u64>,
    ) {
        let labels = PhaseLabels { component: self.inner.component.clone(), endpoint, phase };
        self.inner.phases.get_or_create(&labels).observe(
            started.elapsed().as_secs_f64(),
            TraceExemplar::of(span),
            None,
        );
        if let Some(bytes) = kv_bytes {
            let labels = EndpointLabels { component: labels.component, endpoint: labels.endpoint };
            self.inner.kv_bytes.get_or_create(&labels).inc_by(bytes);
        }
    }
}
