//! The token stream allocates nothing per token, proven with a counting global allocator:
//! draining 100 or 10,000 tokens through a traced `TokenStream` costs the same allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll, Waker};

use futures_util::{stream, StreamExt};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tokentrace::inference::{InferenceTracer, StatsTarget, StreamOptions, TokenChunk, TokenStream};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

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
    let phases = InferenceTracer::with_tracer(provider.tracer("worker"));

    let allocations_for = |tokens: usize| {
        // Everything but the per-token loop is set up outside the measured region where
        // possible; the rest (span start and end) is the same for both sizes.
        let chunks = stream::iter((0..tokens).map(|_| Chunk));
        let before = ALLOCATIONS.load(Ordering::SeqCst);
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
        ALLOCATIONS.load(Ordering::SeqCst) - before
    };
    allocations_for(10); // warm up lazily initialised state
    let small = allocations_for(100);
    let large = allocations_for(10_000);
    assert!(small > 0, "the counter counts (span start and end allocate)");
    assert_eq!(small, large, "allocations grew with the token count: {small} for 100, {large} for 10,000");
    assert_eq!(exporter.get_finished_spans().unwrap().len(), 3);
}
