//! Per-token cost of instrumenting a token stream: bare; tokentrace's `TokenStream` (one clock
//! read and a few integer updates per chunk, attributes written once, the decode span started
//! and ended in each iteration); OpenTelemetry's `Span::add_event` per token; a `tracing` event
//! per token under `tracing-opentelemetry`. Both baselines keep every event: the SDK's default
//! limit of 128 events per span is lifted for them, since dropping events is not recording
//! them. Streams of 256 and 4096 single-token chunks, polled directly (no runtime), exporting
//! through a batch processor into a discarding exporter. Prints ns/token over the bare stream
//! and the ratios.
//!
//! The `tokentrace_metrics` row records the stream's request in `FrontendMetrics` too (once,
//! at the end). The `metrics_per_request` group isolates that recording for a finished
//! 256-token stream (the stream with metrics minus the stream without) and sets it beside the
//! usual way, each token's gap observed straight into a prometheus-client histogram as it
//! arrives, for the same 256 tokens.
//!
//! Run: `cargo bench --bench per_token`; the latest figures are in `BENCHMARKS.md`.

use std::hint::black_box;
use std::task::{Context as TaskContext, Poll, Waker};

use criterion::{Criterion, Throughput};
use futures_util::{stream, Stream, StreamExt};
use opentelemetry::trace::{Span as _, Tracer, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use tokentrace::inference::{Phases, StatsTarget, StreamOptions, TokenChunk, TokenStream};
use tokentrace::metrics::{FrontendBuckets, FrontendMetrics};

mod support;

#[derive(Clone, Copy)]
struct Chunk(u32);

impl TokenChunk for Chunk {
    fn token_count(&self) -> u32 {
        1
    }
}

fn tokens(n: u32) -> impl Stream<Item = Chunk> + Unpin {
    stream::iter((0..n).map(Chunk))
}

/// Polls `stream` to its end with a no-op waker; every item goes through `black_box`.
fn drain<S: Stream + Unpin>(mut stream: S, mut each: impl FnMut(&S::Item)) {
    let mut cx = TaskContext::from_waker(Waker::noop());
    while let Poll::Ready(Some(item)) = stream.poll_next_unpin(&mut cx) {
        each(&item);
        black_box(item);
    }
}

fn bench(c: &mut Criterion, provider: &SdkTracerProvider, all_events: &SdkTracerProvider, n: u32) {
    let group_name = format!("per_token/{n}");
    let phases = Phases::with_tracer(provider.tracer("tokentrace"));
    let tracer = all_events.tracer("otel");
    let mut group = c.benchmark_group(&group_name);
    group.throughput(Throughput::Elements(u64::from(n)));
    group.bench_function("bare", |b| b.iter(|| drain(tokens(n), |_| {})));
    group.bench_function("tokentrace", |b| {
        b.iter(|| {
            let stream = TokenStream::new(
                tokens(n),
                StatsTarget::Phase(phases.decode(None)),
                StreamOptions::new().model("m"),
            );
            drain(stream, |_| {});
        })
    });
    let metrics = FrontendMetrics::new();
    group.bench_function("tokentrace_metrics", |b| {
        b.iter(|| {
            let decode = phases.decode(None);
            let request = metrics.start(decode.context(), "m", "chat_completions", true);
            let stream =
                TokenStream::new(tokens(n), StatsTarget::Phase(decode), StreamOptions::new().model("m"))
                    .record_metrics(request);
            drain(stream, |_| {});
        })
    });
    group.bench_function("otel_add_event", |b| {
        b.iter(|| {
            let mut span = tracer.start("decode");
            drain(tokens(n), |_| span.add_event("token", Vec::new()));
            span.end();
        })
    });
    group.bench_function("tracing_event", |b| {
        b.iter(|| {
            let span = tracing::info_span!("decode");
            let _entered = span.enter();
            drain(tokens(n), |chunk| tracing::info!(token = chunk.0, "token"));
        })
    });
    group.finish();
}

/// The recording of one finished 256-token stream's metrics, beside the usual per-token way.
fn metrics_per_request(c: &mut Criterion, provider: &SdkTracerProvider) {
    let phases = Phases::with_tracer(provider.tracer("tokentrace"));
    let metrics = FrontendMetrics::new();
    let mut group = c.benchmark_group("metrics_per_request");
    group.bench_function("stream_256", |b| {
        b.iter(|| {
            let decode = phases.decode(None);
            drain(TokenStream::new(tokens(256), StatsTarget::Phase(decode), StreamOptions::new()), |_| {});
        })
    });
    group.bench_function("stream_256_with_metrics", |b| {
        b.iter(|| {
            let decode = phases.decode(None);
            let request = metrics.start(decode.context(), "m", "chat_completions", true);
            let stream = TokenStream::new(tokens(256), StatsTarget::Phase(decode), StreamOptions::new())
                .record_metrics(request);
            drain(stream, |_| {});
        })
    });
    let itl: HistogramWithExemplars<Vec<(String, String)>> =
        HistogramWithExemplars::new(FrontendBuckets::default().itl.bounds().iter().copied());
    group.bench_function("usual_way_256_tokens", |b| {
        b.iter(|| {
            let mut last = std::time::Instant::now();
            for _ in 0..256 {
                let now = std::time::Instant::now();
                itl.observe((now - last).as_secs_f64(), None, None);
                last = now;
            }
        })
    });
    group.finish();
}

fn main() {
    let provider = SdkTracerProvider::builder().with_batch_exporter(support::DiscardExporter).build();
    // By default the SDK keeps 128 events per span and drops the rest almost for free; a
    // baseline that silently loses events would flatter it, so it keeps them all.
    let all_events = SdkTracerProvider::builder()
        .with_batch_exporter(support::DiscardExporter)
        .with_max_events_per_span(u32::MAX)
        .build();
    support::install_tracing_opentelemetry(&all_events);

    let mut c = support::criterion()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3))
        .configure_from_args();
    for n in [256, 4096] {
        bench(&mut c, &provider, &all_events, n);
    }
    metrics_per_request(&mut c, &provider);
    c.final_summary();
    for n in [256u64, 4096] {
        support::print_per_item_overhead(
            &format!("per_token/{n}"),
            "bare",
            "tokentrace",
            &["otel_add_event", "tracing_event"],
            n,
        );
    }
    for n in [256u64, 4096] {
        support::print_per_item_overhead(
            &format!("per_token/{n}"),
            "tokentrace",
            "tokentrace_metrics",
            &[],
            n,
        );
    }
    let group = "metrics_per_request";
    match (
        support::mean_ns(group, "stream_256"),
        support::mean_ns(group, "stream_256_with_metrics"),
        support::mean_ns(group, "usual_way_256_tokens"),
    ) {
        (Some(without), Some(with), Some(usual)) => println!(
            "metrics per request: tokentrace records a 256-token stream in {:.0} ns; the usual way pays {usual:.0} ns for the same 256 tokens -> {:.2}x",
            with - without,
            usual / (with - without)
        ),
        _ => println!("metrics per request: not measured in this run (filtered?)"),
    }
    let _ = provider.shutdown();
}
