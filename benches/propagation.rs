//! Extract and inject of W3C trace context and W3C Baggage: tokentrace's strict propagators
//! against the OpenTelemetry SDK's `TraceContextPropagator` and `BaggagePropagator` (through
//! `opentelemetry-http`'s `HeaderExtractor`/`HeaderInjector`), in the same group, with the ratio
//! printed at the end.
//!
//! Like for like: `tokentrace` extracts into an `opentelemetry::Context`, as the SDK does;
//! `tokentrace_parse_only` stops at the parsed `RemoteContext` (less work than the SDK's, shown
//! for reference, never the headline). Baggage: both sides extract into a `Context` holding
//! OpenTelemetry `Baggage`, and inject one `baggage` header from such a context, as received
//! (`inject/baggage-*`) or after user code replaced it (`inject/baggage-*-replaced`).
//!
//! Run: `cargo bench --bench propagation`; the latest figures are in `BENCHMARKS.md`.

use std::hint::black_box;

use criterion::Criterion;
use http::HeaderMap;
use opentelemetry::baggage::{Baggage, BaggageExt};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tokentrace::propagation::{extract_baggage, inject_baggage, Propagators, RemoteContext};

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
    group.bench_function("tokentrace", |b| {
        b.iter(|| Propagators::TRACE_CONTEXT.inject_into(black_box(&mut headers), black_box(&cx)))
    });
    let mut headers = inbound(0);
    group.bench_function("otel_sdk", |b| {
        b.iter(|| sdk.inject_context(black_box(&cx), &mut HeaderInjector(black_box(&mut headers))))
    });
    group.finish();
}

/// A `baggage` header of `members` members: routing and accounting facts, one escaped value.
fn baggage_header(members: usize) -> String {
    let facts = ["tenant=acme", "lora=sql%20v2;ttl=60", "priority=high"];
    let mut list: Vec<String> = facts.iter().take(members).map(|m| m.to_string()).collect();
    list.extend((facts.len()..members).map(|i| format!("key{i:02}=value-{i:02}-{}", "x".repeat(100))));
    list.join(",")
}

const BAGGAGE_CASES: [(&str, usize); 2] = [("baggage-3", 3), ("baggage-64", 64)];

fn baggage(c: &mut Criterion) {
    let sdk = BaggagePropagator::new();
    for (case, members) in BAGGAGE_CASES {
        let mut headers = inbound(0);
        headers.insert("baggage", baggage_header(members).parse().unwrap());
        assert!(headers["baggage"].len() <= 8192);

        let mut group = c.benchmark_group(format!("extract/{case}"));
        group.bench_function("tokentrace", |b| {
            b.iter(|| extract_baggage(black_box(&headers), &Context::new()))
        });
        group.bench_function("otel_sdk", |b| b.iter(|| sdk.extract(&HeaderExtractor(black_box(&headers)))));
        group.finish();

        let received = extract_baggage(&headers, &Context::new());
        assert_eq!(received.baggage().len(), members);
        let mut out = inbound(0);
        let mut group = c.benchmark_group(format!("inject/{case}"));
        group.bench_function("tokentrace", |b| {
            b.iter(|| inject_baggage(black_box(&mut out), black_box(&received)))
        });
        group.bench_function("otel_sdk", |b| {
            b.iter(|| sdk.inject_context(black_box(&received), &mut HeaderInjector(black_box(&mut out))))
        });
        group.finish();

        let replaced = received.with_baggage(
            received
                .baggage()
                .iter()
                .map(|(k, (v, m))| {
                    opentelemetry::baggage::KeyValueMetadata::new(k.clone(), v.clone(), m.clone())
                })
                .collect::<Baggage>(),
        );
        let mut group = c.benchmark_group(format!("inject/{case}-replaced"));
        group.bench_function("tokentrace", |b| {
            b.iter(|| inject_baggage(black_box(&mut out), black_box(&replaced)))
        });
        group.bench_function("otel_sdk", |b| {
            b.iter(|| sdk.inject_context(black_box(&replaced), &mut HeaderInjector(black_box(&mut out))))
        });
        group.finish();
    }
}

fn main() {
    let mut c = support::criterion()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .configure_from_args();
    extract(&mut c);
    inject(&mut c);
    baggage(&mut c);
    c.final_summary();
    for (group, _) in EXTRACT_CASES {
        support::print_speedup(group, "tokentrace", "otel_sdk");
        support::print_speedup(group, "tokentrace_parse_only", "otel_sdk");
    }
    support::print_speedup("inject", "tokentrace", "otel_sdk");
    for (case, _) in BAGGAGE_CASES {
        for group in [format!("extract/{case}"), format!("inject/{case}"), format!("inject/{case}-replaced")]
        {
            support::print_speedup(&group, "tokentrace", "otel_sdk");
        }
    }
}
