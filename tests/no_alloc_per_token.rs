//! The token stream allocates nothing per token, proven with a counting global allocator:
//! draining 100 or 10,000 tokens through a traced `TokenStream` costs the same allocations.

use std::task::{Context as TaskContext, Poll, Waker};

use futures_util::{stream, StreamExt};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tokentrace::inference::{Phases, StatsTarget, StreamOptions, TokenChunk, TokenStream};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{allocations, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Chunk;

impl TokenChunk for Chunk {
    fn token_count(&self) -> u32 {
        1
    }
}

// One test function: tests in a binary run on parallel threads and would count each other.
#[test]
fn draining_tokens_allocates_nothing_per_token() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let phases = Phases::with_tracer(provider.tracer("worker"));

    let allocations_for = |tokens: usize| {
        // Everything but the per-token loop is set up outside the measured region where
        // possible; the rest (span start and end) is the same for both sizes.
        let chunks = stream::iter((0..tokens).map(|_| Chunk));
        let before = allocations();
        let mut stream = TokenStream::new(
            chunks,
            StatsTarget::Phase(phases.decode(None)),
            StreamOptions::new().model("m"),
        );
        let mut cx = TaskContext::from_waker(Waker::noop());
        let mut seen = 0;
        while let Poll::Ready(Some(_)) = stream.poll_next_unpin(&mut cx) {
            seen += 1;
        }
        drop(stream);
        assert_eq!(seen, tokens);
        allocations() - before
    };
    // Warm up lazily initialised state.
    allocations_for(10);
    // The fewest of three runs: the counter is process-wide, and a machine under load has seen a
    // stray allocation or four land in one run; a per-token allocation would show in all three.
    let fewest = |tokens: usize| (0..3).map(|_| allocations_for(tokens)).min().unwrap();
    let small = fewest(100);
    let large = fewest(10_000);
    assert!(small > 0, "the counter counts (span start and end allocate)");
    assert_eq!(small, large, "allocations grew with the token count: {small} for 100, {large} for 10,000");
    assert_eq!(exporter.get_finished_spans().unwrap().len(), 7);
}
