//! Per-token cost of instrumenting a token stream: bare; tokentrace's `TokenStream` (one clock
//! read and a few integer updates per chunk, attributes written once, the decode span started
//! and ended in each iteration); OpenTelemetry's `Span::add_event` per token; a `tracing` event
//! per token under `tracing-opentelemetry`. Both baselines keep every event: the SDK's default
//! limit of 128 events per span is lifted for them, since dropping events is not recording
//! them. Streams of 256 and 4096 single-token chunks, polled directly (no runtime), exporting
//! through a batch processor into a discarding exporter. Prints ns/token over the bare stream
//! and the ratios.
//!
//! Run: `cargo bench --bench per_token`; the latest figures are in `BENCHMARKS.md`.

use std::hint::black_box;
use std::task::{Context as TaskContext, Poll, Waker};

use criterion::{Criterion, Throughput};
use futures_util::{stream, Stream, StreamExt};
use opentelemetry::trace::{Span as _, Tracer, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokentrace::inference::{Phases, StatsTarget, StreamOptions, TokenChunk, TokenStream};

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

fn main() {
    let provider = SdkTracerProvider::builder().with_batch_exporter(support::DiscardExporter).build();
    // By default the SDK keeps 128 events per span and drops the rest almost for free; a
    // baseline that silently loses events would flatter it, so it keeps them all.
    let all_events = SdkTracerProvider::builder()
        .with_batch_exporter(support::DiscardExporter)
        .with_max_events_per_span(u32::MAX)
        .build();
    support::install_tracing_opentelemetry(&all_events);

    let mut c = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3))
        .configure_from_args();
    for n in [256, 4096] {
        bench(&mut c, &provider, &all_events, n);
    }
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
    let _ = provider.shutdown();
}
