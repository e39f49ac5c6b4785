//! The frontend's measures under the OpenTelemetry GenAI semantic-convention names, exported
//! through the global meter provider (OTLP), beside the Prometheus ones in `frontend`.

use crate::inference::EndedStream;

/// How a request ended.
#[derive(Clone, Copy)]
pub(super) enum Status {
    Success,
    Error,
    Cancelled,
}

/// The same measures under the OpenTelemetry GenAI semantic-convention names, recorded through
/// the global meter provider (`telemetry::init` installs one exporting over OTLP when
/// `OTEL_METRICS_EXPORTER=otlp`). Created at the first recorded request, so a provider
/// installed after [`FrontendMetrics::new`] is the one used.
#[derive(Debug)]
pub(super) struct GenAi {
    ttft: opentelemetry::metrics::Histogram<f64>,
    per_output_token: opentelemetry::metrics::Histogram<f64>,
    duration: opentelemetry::metrics::Histogram<f64>,
}

impl GenAi {
    pub(super) fn new() -> Self {
        let meter = opentelemetry::global::meter("tokentrace");
        let histogram = |name: &'static str, description: &'static str, bounds: Vec<f64>| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(bounds)
                .build()
        };
        Self {
            ttft: histogram(
                "gen_ai.server.time_to_first_token",
                "Time to generate the first token for successful responses",
                vec![
                    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                    10.0,
                ],
            ),
            per_output_token: histogram(
                "gen_ai.server.time_per_output_token",
                "Time per output token generated after the first token for successful responses",
                vec![0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5],
            ),
            duration: histogram(
                "gen_ai.server.request.duration",
                "Generative AI server request duration such as time-to-last byte or last output token",
                (0..14).map(|i| 0.01 * f64::from(1u32 << i)).collect(),
            ),
        }
    }

    /// The GenAI semantic-convention instruments: duration always, TTFT and time per output
    /// token for successful responses.
    pub(super) fn record(
        &self,
        endpoint: &'static str,
        model: &str,
        status: Status,
        duration: f64,
        stream: Option<&EndedStream<'_>>,
    ) {
        let operation = match endpoint {
            "chat_completions" => "chat",
            "completions" => "text_completion",
            other => other,
        };
        let mut attributes = vec![
            opentelemetry::KeyValue::new("gen_ai.operation.name", operation),
            opentelemetry::KeyValue::new("gen_ai.request.model", model.to_owned()),
        ];
        match status {
            Status::Success => {}
            Status::Error => attributes.push(opentelemetry::KeyValue::new("error.type", "_OTHER")),
            Status::Cancelled => attributes.push(opentelemetry::KeyValue::new("error.type", "cancelled")),
        }
        self.duration.record(duration, &attributes);
        let (Status::Success, Some(stream)) = (status, stream) else { return };
        if let Some(ttft_ms) = stream.summary.ttft_ms {
            self.ttft.record(ttft_ms / 1e3, &attributes);
        }
        if let Some(itl_ms) = stream.summary.avg_itl_ms {
            self.per_output_token.record(itl_ms / 1e3, &attributes);
        }
    }
}
