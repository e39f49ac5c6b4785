//! Per-request overhead of the HTTP server layer over a bare axum `Router` (tower `oneshot`, no
//! network), against `axum-tracing-opentelemetry`'s `OtelAxumLayer` and `tower-http`'s
//! `TraceLayer` under `tracing-opentelemetry`, all exporting through a batch processor into a
//! discarding exporter, in one run. Each request carries a `traceparent` and an `x-request-id`
//! and its response body is read to the end (our span ends there).
//!
//! Run: `cargo bench --bench layers`
//!
//! Latest figures (mean; 2-core Intel Xeon @ 2.6 GHz KVM guest, 24 GiB, rustc 1.95.0, 2026-11-27):
//!
//! | variant | time per request | overhead over bare |
//! |---|---:|---:|
//! | bare axum `Router` | 1.00 µs | — |
//! | tokentrace `ServerLayer` | 3.72 µs | +2.84 µs |
//! | `OtelAxumLayer` | 4.98 µs | +4.02 µs |
//! | `TraceLayer` + tracing-opentelemetry | 7.26 µs | +6.16 µs |
//!
//! Overhead ratios: 0.71× `OtelAxumLayer`'s, 0.46× `TraceLayer`'s (0.69 and 0.47 in the run
//! before; the machine is noisy at ±5%). Of our ~13k extra instructions per request
//! (callgrind), the SDK span's start, end and batch hand-off are about a third, allocations
//! (context, extensions, attribute strings) most of the rest.

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

mod support;

const GROUP: &str = "server_layer";

fn app() -> Router {
    Router::new().route("/v1/completions", post(|| async { "{\"choices\":[]}" }))
}

fn request() -> http::Request<Body> {
    http::Request::post("/v1/completions")
        .header("host", "frontend:8000")
        .header("content-type", "application/json")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .header("x-request-id", "bench-request-1")
        .body(Body::from("{\"prompt\":\"hi\"}"))
        .unwrap()
}

fn bench(c: &mut Criterion, provider: &SdkTracerProvider) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let variants: [(&str, Router); 4] = [
        ("bare", app()),
        (
            "tokentrace",
            app().layer(tokentrace::http::ServerLayer::with_tracer(provider.tracer("tokentrace"))),
        ),
        ("otel_axum_layer", app().layer(axum_tracing_opentelemetry::middleware::OtelAxumLayer::default())),
        (
            "tower_http_trace_layer",
            app().layer(
                TraceLayer::new_for_http().make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO)),
            ),
        ),
    ];
    let mut group = c.benchmark_group(GROUP);
    for (name, router) in variants {
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let response = router.clone().oneshot(request()).await.unwrap();
                    black_box(response.into_body().collect().await.unwrap());
                })
            })
        });
    }
    group.finish();
}

fn main() {
    let provider = SdkTracerProvider::builder().with_batch_exporter(support::DiscardExporter).build();
    // The competitors read the global propagator and create `tracing` spans that
    // tracing-opentelemetry turns into OpenTelemetry spans on the same provider.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    support::install_tracing_opentelemetry(&provider);

    let mut c = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3))
        .configure_from_args();
    bench(&mut c, &provider);
    c.final_summary();
    support::print_overhead_ratio(GROUP, "bare", "tokentrace", "otel_axum_layer");
    support::print_overhead_ratio(GROUP, "bare", "tokentrace", "tower_http_trace_layer");
    let _ = provider.shutdown();
}
