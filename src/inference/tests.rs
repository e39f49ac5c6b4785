//! Token-stream statistics on scripted timings (a hand-moved clock), cancellation, and the
//! exported attributes.

use std::task::{Context as TaskContext, Poll, Waker};

use futures_util::{stream, Stream, StreamExt};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{TraceContextExt, Tracer};
use opentelemetry::Context;

use super::clock::{ManualClock, StreamClock};
use super::{FinishReason, Phases, StatsTarget, StreamOptions, TokenChunk, TokenStream};

#[path = "../../tests/support/spans.rs"]
mod spans;
use spans::{attr, Spans};

#[derive(Debug)]
struct Chunk {
    tokens: u32,
    finish: Option<FinishReason>,
}

impl TokenChunk for Chunk {
    fn token_count(&self) -> u32 {
        self.tokens
    }
    fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }
}

const MS: u64 = 1_000_000;

/// Chunks that arrive after the given gaps (ns) on `clock`.
fn scripted(clock: &ManualClock, script: Vec<(u64, u32, Option<FinishReason>)>) -> impl Stream<Item = Chunk> {
    let clock = clock.clone();
    stream::iter(script).map(move |(gap, tokens, finish)| {
        clock.advance_ns(gap);
        Chunk { tokens, finish }
    })
}

fn drain<S: Stream + Unpin>(stream: &mut S) -> usize {
    let mut cx = TaskContext::from_waker(Waker::noop());
    let mut items = 0;
    while let Poll::Ready(Some(_)) = stream.poll_next_unpin(&mut cx) {
        items += 1;
    }
    items
}

fn close(actual: f64, expected: f64, tolerance: f64) -> bool {
    (actual - expected).abs() <= tolerance
}

#[test]
fn statistics_match_hand_computed_values() {
    let clock = ManualClock::new();
    let script = vec![
        (100 * MS, 1, None),                   // first token: TTFT 100 ms
        (10 * MS, 1, None),                    // ITL 10
        (20 * MS, 2, None),                    // two tokens sharing 20 ms: 10, 10
        (30 * MS, 1, None),                    // ITL 30
        (5 * MS, 0, Some(FinishReason::Stop)), // end marker, no token
    ];
    let mut tokens = TokenStream::with_clock(
        scripted(&clock, script),
        StatsTarget::Detached,
        StreamOptions::new(),
        StreamClock::Manual(clock.clone()),
    );
    assert_eq!(drain(&mut tokens), 5);
    let summary = tokens.summary();
    assert_eq!(summary.output_tokens, 5);
    assert_eq!(summary.ttft_ms, Some(100.0));
    assert_eq!(summary.avg_itl_ms, Some(15.0)); // (10 + 10 + 10 + 30) / 4
    assert_eq!(summary.itl_max_ms, Some(30.0));
    let p50 = summary.itl_p50_ms.unwrap();
    let p99 = summary.itl_p99_ms.unwrap();
    assert!(close(p50, 10.0, 10.0 / 32.0), "p50 {p50}");
    assert!(close(p99, 30.0, 30.0 / 32.0), "p99 {p99}");
    assert_eq!(summary.finish_reason, Some(FinishReason::Stop));
}

#[test]
fn multi_token_chunks_share_their_gap_and_the_first_chunk_arrives_at_once() {
    let clock = ManualClock::new();
    let script = vec![(50 * MS, 3, None), (40 * MS, 1, None), (60 * MS, 4, Some(FinishReason::Length))];
    let mut tokens = TokenStream::with_clock(
        scripted(&clock, script),
        StatsTarget::Detached,
        StreamOptions::new(),
        StreamClock::Manual(clock.clone()),
    );
    drain(&mut tokens);
    let summary = tokens.summary();
    assert_eq!(summary.output_tokens, 8);
    assert_eq!(summary.ttft_ms, Some(50.0));
    // Samples: 0, 0 (first chunk), 40, then 15 x 4.
    assert!(close(summary.avg_itl_ms.unwrap(), (40.0 + 60.0) / 7.0, 1e-9));
    assert_eq!(summary.itl_max_ms, Some(40.0));
    assert!(close(summary.itl_p50_ms.unwrap(), 15.0, 15.0 / 32.0));
    assert_eq!(summary.finish_reason, Some(FinishReason::Length));
}

#[test]
fn no_tokens_means_no_timings() {
    let clock = ManualClock::new();
    let mut tokens = TokenStream::with_clock(
        scripted(&clock, vec![]),
        StatsTarget::Detached,
        StreamOptions::new(),
        StreamClock::Manual(clock.clone()),
    );
    drain(&mut tokens);
    let summary = tokens.summary();
    assert_eq!(summary.output_tokens, 0);
    assert_eq!(summary.ttft_ms, None);
    assert_eq!(summary.avg_itl_ms, None);
    assert_eq!(summary.itl_max_ms, None);
}

#[test]
fn attributes_land_on_the_exported_decode_span_with_a_link_to_prefill() {
    let spans = Spans::new();
    let phases = Phases::with_tracer(spans.tracer("worker"));
    let clock = ManualClock::new();
    let root = Context::current_with_span(spans.tracer("test").start("handle_payload"));
    let _attached = root.clone().attach();

    phases.queue().end();
    let prefill = phases.prefill(17);
    let prefill_span = prefill.span_context();
    prefill.end();
    phases.kv_transfer(4096, "prefill-0", "decode-0").end();
    let decode = phases.decode(Some(prefill_span.clone()));
    let script = vec![(8 * MS, 1, None), (2 * MS, 1, None), (4 * MS, 1, Some(FinishReason::Stop))];
    let options = StreamOptions::new().model("tiny-llm").input_tokens(17);
    let mut tokens = TokenStream::with_clock(
        scripted(&clock, script),
        StatsTarget::Phase(decode),
        options,
        StreamClock::Manual(clock.clone()),
    );
    drain(&mut tokens);
    drop(tokens);
    root.span().end();

    let spans = spans.wait_for("five spans", |s| s.len() == 5);
    let by_name = |name: &str| spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name}"));
    let root = by_name("handle_payload");
    for name in ["queue", "prefill", "kv_transfer", "decode"] {
        assert_eq!(by_name(name).parent_span_id, root.span_context.span_id(), "{name} under handle_payload");
    }
    assert_eq!(attr(by_name("prefill"), "gen_ai.usage.input_tokens").as_deref(), Some("17"));
    let kv = by_name("kv_transfer");
    assert_eq!(attr(kv, "kv.bytes").as_deref(), Some("4096"));
    assert_eq!(attr(kv, "kv.source").as_deref(), Some("prefill-0"));
    let decode = by_name("decode");
    assert_eq!(decode.links.links.len(), 1);
    assert_eq!(decode.links.links[0].span_context.span_id(), prefill_span.span_id());
    for (key, value) in [
        ("gen_ai.request.model", "tiny-llm"),
        ("gen_ai.usage.input_tokens", "17"),
        ("gen_ai.usage.output_tokens", "3"),
        ("gen_ai.response.finish_reasons", "[\"stop\"]"),
        ("ttft_ms", "8"),
        ("avg_itl_ms", "3"),
        ("itl_max_ms", "4"),
        ("cancelled", "false"),
    ] {
        assert_eq!(attr(decode, key).as_deref(), Some(value), "{key}");
    }
    assert!(attr(decode, "itl_p50_ms").is_some() && attr(decode, "itl_p99_ms").is_some());
}

#[test]
fn a_stream_dropped_before_its_end_records_cancelled() {
    let spans = Spans::new();
    let phases = Phases::with_tracer(spans.tracer("worker"));
    let clock = ManualClock::new();
    let script = (0..100).map(|_| (MS, 1, None)).collect();
    let mut tokens = TokenStream::with_clock(
        scripted(&clock, script),
        StatsTarget::Phase(phases.decode(None)),
        StreamOptions::new(),
        StreamClock::Manual(clock.clone()),
    );
    let mut cx = TaskContext::from_waker(Waker::noop());
    for _ in 0..2 {
        assert!(matches!(tokens.poll_next_unpin(&mut cx), Poll::Ready(Some(_))));
    }
    drop(tokens); // the client went away

    let spans = spans.wait_for("decode span", |s| s.len() == 1);
    assert_eq!(attr(&spans[0], "cancelled").as_deref(), Some("true"));
    assert_eq!(attr(&spans[0], "gen_ai.usage.output_tokens").as_deref(), Some("2"));
    assert_eq!(attr(&spans[0], "gen_ai.response.finish_reasons").as_deref(), Some("[\"cancelled\"]"));
}

#[test]
fn the_frontend_records_on_its_own_span_without_ending_it() {
    let spans = Spans::new();
    let http_span = Context::current_with_span(spans.tracer("frontend").start("http-request"));
    let chunks = stream::iter((0..4).map(|_| Chunk { tokens: 1, finish: None }));
    let mut tokens = TokenStream::new(chunks, StatsTarget::Span(http_span.clone()), StreamOptions::new());
    drain(&mut tokens);
    assert!(spans.finished().is_empty(), "the HTTP span stays open");
    http_span.span().end();
    let spans = spans.wait_for("http span", |s| s.len() == 1);
    assert_eq!(attr(&spans[0], "gen_ai.usage.output_tokens").as_deref(), Some("4"));
    assert!(attr(&spans[0], "ttft_ms").is_some());
}

#[tokio::test]
async fn token_events_are_off_by_default_and_bounded() {
    let spans = Spans::new();
    let make = |events: u32| {
        let span = Context::current_with_span(spans.tracer("t").start("decode"));
        let chunks = stream::iter((0..10).map(|_| Chunk { tokens: 1, finish: None }));
        (
            span.clone(),
            TokenStream::new(chunks, StatsTarget::Span(span), StreamOptions::new().token_events(events)),
        )
    };
    let (off, mut stream_off) = make(0);
    let (on, mut stream_on) = make(3);
    async {
        while stream_off.next().await.is_some() {}
        while stream_on.next().await.is_some() {}
    }
    .with_context(Context::new())
    .await;
    off.span().end();
    on.span().end();
    let spans = spans.wait_for("two spans", |s| s.len() == 2);
    let mut counts: Vec<_> = spans.iter().map(|s| s.events.events.len()).collect();
    counts.sort();
    assert_eq!(counts, [0, 3]);
}
