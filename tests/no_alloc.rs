//! Extracting a `traceparent` allocates nothing, proven with a counting global allocator.
//!
//! Its own test binary, so no other test allocates concurrently under the counter.

use http::HeaderMap;
use tokentrace::propagation::{RemoteContext, TraceParent};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{allocations_during, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

// One test function: tests in a binary run on parallel threads and would count each other.
#[test]
fn extracting_a_traceparent_allocates_nothing() {
    // Guards against a counter that never moves.
    let count = allocations_during(|| {
        std::hint::black_box(vec![1u8; 64]);
    });
    assert!(count >= 1);

    let mut headers = HeaderMap::new();
    headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    let _warm = RemoteContext::extract(&headers);

    let count = allocations_during(|| {
        for _ in 0..1000 {
            let remote = RemoteContext::extract(std::hint::black_box(&headers)).expect("valid");
            std::hint::black_box(remote);
        }
    });
    assert_eq!(count, 0, "extracting traceparent allocated {count} times in 1000 extractions");

    let count = allocations_during(|| {
        for value in [&b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..], b"garbage", b""] {
            let _ = std::hint::black_box(TraceParent::parse(std::hint::black_box(value)));
        }
    });
    assert_eq!(count, 0);
}
