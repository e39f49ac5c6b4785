//! Histograms whose observations carry the request's trace as exemplar.

use opentelemetry::trace::SpanContext;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::MetricConstructor;

use super::buckets::Buckets;

/// The exemplar of an observation: the request's trace.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TraceExemplar {
    trace_id: String,
    span_id: String,
}

impl TraceExemplar {
    /// The exemplar of a sampled span; none for an unsampled one (its trace is not stored).
    pub(crate) fn of(span: &SpanContext) -> Option<Self> {
        span.is_sampled()
            .then(|| Self { trace_id: span.trace_id().to_string(), span_id: span.span_id().to_string() })
    }
}

pub(crate) type Histogram = HistogramWithExemplars<TraceExemplar>;

/// Builds a family's histograms with its buckets.
#[derive(Clone, Debug)]
pub(crate) struct WithBuckets(pub(crate) Buckets);

impl MetricConstructor<Histogram> for WithBuckets {
    fn new_metric(&self) -> Histogram {
        HistogramWithExemplars::new(self.0.bounds().iter().copied())
    }
}
