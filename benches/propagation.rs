//! Extract and inject of W3C trace context: tokentrace's strict propagator against the
//! OpenTelemetry SDK's `TraceContextPropagator` (through `opentelemetry-http`'s
//! `HeaderExtractor`/`HeaderInjector`), in the same group, with the ratio printed at the end.
//!
//! Like for like: `tokentrace` extracts into an `opentelemetry::Context`, as the SDK does;
//! `tokentrace_parse_only` stops at the parsed `RemoteContext` (less work than the SDK's, shown
//! for reference, never the headline).
//!
//! Run: `cargo bench --bench propagation`; the latest figures are in `BENCHMARKS.md`.

use std::hint::black_box;

use criterion::Criterion;
use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tokentrace::propagation::{inject_context, RemoteContext};

mod support;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn inbound(members: usize) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // A realistic request: a handful of ordinary headers besides the trace context.
    headers.insert("host", "frontend:8000".parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("accept", "text/event-stream".parse().unwrap());
    headers.insert("user-agent", "bench/1.0".parse().unwrap());
    headers.insert("traceparent", TRACEPARENT.parse().unwrap());
    if members > 0 {
        let state = (0..members).map(|i| format!("vendor{i}=value{i}")).collect::<Vec<_>>().join(",");
        headers.insert("tracestate", state.parse().unwrap());
    }
    headers
}

const EXTRACT_CASES: [(&str, usize); 3] =
    [("extract/traceparent", 0), ("extract/tracestate-2", 2), ("extract/tracestate-32", 32)];

fn extract(c: &mut Criterion) {
    let sdk = TraceContextPropagator::new();
    for (group_name, members) in EXTRACT_CASES {
        let headers = inbound(members);
        let mut group = c.benchmark_group(group_name);
        group.bench_function("tokentrace", |b| {
            b.iter(|| RemoteContext::extract(black_box(&headers)).map(|remote| remote.to_context()))
        });
        group.bench_function("tokentrace_parse_only", |b| {
            b.iter(|| RemoteContext::extract(black_box(&headers)))
        });
        group.bench_function("otel_sdk", |b| b.iter(|| sdk.extract(&HeaderExtractor(black_box(&headers)))));
        group.finish();
    }
}

fn inject(c: &mut Criterion) {
    let sdk = TraceContextPropagator::new();
    let span_context = SpanContext::new(
        TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736u128),
        SpanId::from(0x00f0_67aa_0ba9_02b7u64),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    );
    let cx = Context::new().with_remote_span_context(span_context);
    let mut group = c.benchmark_group("inject");
    let mut headers = inbound(0);
    group
        .bench_function("tokentrace", |b| b.iter(|| inject_context(black_box(&mut headers), black_box(&cx))));
    let mut headers = inbound(0);
    group.bench_function("otel_sdk", |b| {
        b.iter(|| sdk.inject_context(black_box(&cx), &mut HeaderInjector(black_box(&mut headers))))
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .configure_from_args();
    extract(&mut c);
    inject(&mut c);
    c.final_summary();
    for (group, _) in EXTRACT_CASES {
        support::print_speedup(group, "tokentrace", "otel_sdk");
        support::print_speedup(group, "tokentrace_parse_only", "otel_sdk");
    }
    support::print_speedup("inject", "tokentrace", "otel_sdk");
}
