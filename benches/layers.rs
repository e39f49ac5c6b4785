//! Per-request overhead of the HTTP server layer over a bare axum `Router` (tower `oneshot`, no
//! network), against `axum-tracing-opentelemetry`'s `OtelAxumLayer` and `tower-http`'s
//! `TraceLayer` under `tracing-opentelemetry`, all exporting through a batch processor into a
//! discarding exporter, in one run. Each request carries a `traceparent` and an `x-request-id`
//! and its response body is read to the end (our span ends there).
//!
//! Each rival runs twice: under `tracing-opentelemetry` at its defaults, and lean (no code
//! location, thread or inactivity tracking, `tracing` events kept out of the spans), so that
//! every layer records one span and nothing else. The budget compares ours with the lean rows.
//!
//! Run: `cargo bench --bench layers`; the latest figures are in `BENCHMARKS.md`.

use std::hint::black_box;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use criterion::Criterion;
use http_body_util::BodyExt;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower::ServiceExt;
use tower_http::trace::{DefaultMakeSpan, TraceLayer};
use tracing::Dispatch;

mod support;

#[path = "../examples/serve/demo/receiver.rs"]
mod receiver;

const GROUP: &str = "server_layer";

fn app() -> Router {
    Router::new().route("/v1/completions", post(|| async { "{\"choices\":[]}" }))
}

/// A request whose caller's `traceparent` has these flags (`00`: not sampled).
fn request_with(flags: &str) -> http::Request<Body> {
    http::Request::post("/v1/completions")
        .header("host", "frontend:8000")
        .header("content-type", "application/json")
        .header("traceparent", format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}"))
        .header("x-request-id", "bench-request-1")
        .body(Body::from("{\"prompt\":\"hi\"}"))
        .unwrap()
}

/// The `tracing` subscribers the rivals run under: `tracing-opentelemetry` at its defaults, and
/// lean.
fn subscribers(provider: &SdkTracerProvider) -> (Dispatch, Dispatch) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer as _;
    let defaults = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tracing-opentelemetry")));
    let lean = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("tracing-opentelemetry"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|metadata| metadata.is_span())),
    );
    (Dispatch::new(defaults), Dispatch::new(lean))
}

/// Tracers as `telemetry` sets them up from `vars`, exporting nothing: for the rows whose
/// requests are not exported (sampled out, or dropped by the keep rules).
fn telemetry(vars: &[(&str, &str)]) -> tokentrace::telemetry::Telemetry {
    let vars = [&[("OTEL_TRACES_EXPORTER", "none")][..], vars].concat();
    let config = tokentrace::telemetry::TelemetryConfig::from_vars("bench", vars).unwrap();
    tokentrace::telemetry::Telemetry::build(config).unwrap()
}

fn bench(c: &mut Criterion, provider: &SdkTracerProvider) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // A caller that did not sample: at head sampling the span is not recorded; with keep rules
    // it is recorded, held until the request ends, and dropped (no rule matches).
    let head = telemetry(&[]);
    let keep = telemetry(&[("TOKENTRACE_TRACES_KEEP", "error,cancelled,ttft>500ms")]);
    // Exported over OTLP to a receiver in this process: a request a rule keeps (held, decided,
    // then exported) beside a sampled one exported the same way.
    let receiver_runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let receiver = receiver_runtime.block_on(receiver::grpc());
    let exported = support::exporting_traces_to(receiver.endpoint(), &[]);
    let kept =
        support::exporting_traces_to(receiver.endpoint(), &[("TOKENTRACE_TRACES_KEEP", "duration>0ms")]);
    let (defaults, lean) = subscribers(provider);
    let none = Dispatch::none();
    let otel_axum = || app().layer(axum_tracing_opentelemetry::middleware::OtelAxumLayer::default());
    let trace_layer = || {
        app().layer(
            TraceLayer::new_for_http().make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO)),
        )
    };
    let variants: [(&str, Router, &Dispatch, &str); 11] = [
        ("bare", app(), &none, "01"),
        (
            "tokentrace",
            app().layer(tokentrace::http::ServerLayer::with_tracer(provider.tracer("tokentrace"))),
            &none,
            "01",
        ),
        // `ServerLayer::default()`: the tracer of the installed global provider.
        ("tokentrace_default", app().layer(tokentrace::http::ServerLayer::default()), &none, "01"),
        (
            "tokentrace_sampled_out",
            app().layer(tokentrace::http::ServerLayer::with_tracer(head.tracer("tokentrace"))),
            &none,
            "00",
        ),
        (
            "tokentrace_keep_dropped",
            app().layer(tokentrace::http::ServerLayer::with_tracer(keep.tracer("tokentrace"))),
            &none,
            "00",
        ),
        (
            "tokentrace_otlp",
            app().layer(tokentrace::http::ServerLayer::with_tracer(exported.tracer("tokentrace"))),
            &none,
            "01",
        ),
        (
            "tokentrace_keep_kept",
            app().layer(tokentrace::http::ServerLayer::with_tracer(kept.tracer("tokentrace"))),
            &none,
            "00",
        ),
        ("otel_axum_layer", otel_axum(), &defaults, "01"),
        ("otel_axum_layer_lean", otel_axum(), &lean, "01"),
        ("tower_http_trace_layer", trace_layer(), &defaults, "01"),
        ("tower_http_trace_layer_lean", trace_layer(), &lean, "01"),
    ];
    let mut group = c.benchmark_group(GROUP);
    for (name, router, dispatch, flags) in variants {
        tracing::dispatcher::with_default(dispatch, || {
            group.bench_function(name, |b| {
                b.iter(|| {
                    runtime.block_on(async {
                        let response = router.clone().oneshot(request_with(flags)).await.unwrap();
                        black_box(response.into_body().collect().await.unwrap());
                    })
                })
            });
        });
    }
    group.finish();
}

fn main() {
    let provider = SdkTracerProvider::builder().with_batch_exporter(support::DiscardExporter).build();
    // The rivals read the global propagator and create `tracing` spans that tracing-opentelemetry
    // turns into OpenTelemetry spans on the same provider.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());

    let mut c = support::criterion()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3))
        .configure_from_args();
    bench(&mut c, &provider);
    c.final_summary();
    for rival in
        ["otel_axum_layer", "otel_axum_layer_lean", "tower_http_trace_layer", "tower_http_trace_layer_lean"]
    {
        support::print_overhead_ratio(GROUP, "bare", "tokentrace", rival);
    }
    support::print_overhead_ratio(GROUP, "bare", "tokentrace_default", "tokentrace");
    // Budget: a request dropped in keep mode costs no more than one sampled and exported.
    support::print_overhead_ratio(GROUP, "bare", "tokentrace_keep_dropped", "tokentrace");
    support::print_overhead_ratio(GROUP, "bare", "tokentrace_keep_kept", "tokentrace_otlp");
    support::print_overhead_ratio(GROUP, "bare", "tokentrace_sampled_out", "tokentrace");
    let _ = provider.shutdown();
}
