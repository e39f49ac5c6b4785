//! The request ids as attribute strings whose memory goes back to the thread that made them.
//!
//! Why: a batch span processor drops exported spans on its own thread, so every string in a span
//! attribute is allocated on a request thread and freed on the exporter's, which with glibc's
//! allocator is expensive; the server layer's budget in `BENCHMARKS.md` (`layers`) needs this.
//! Each string is an `Arc<str>`: the span holds one reference and this thread's ring of the
//! [`RETAINED`] most recent ones the other, so by the time the ring comes round the exporter has
//! usually let go and the memory is freed here.
//!
//! Bounded: strings longer than [`MAX_LEN`] are plain copies; at most [`RETAINED`] strings per
//! thread are held past their span (about 160 KiB per thread with 36-character ids).

use std::cell::RefCell;
use std::sync::Arc;

use opentelemetry::Value;

/// Strings each thread keeps after handing them to a span: more than a batch processor holds
/// (512 spans per batch by default) for the spans of about a thousand requests.
const RETAINED: usize = 2048;

/// Longest string kept in the ring (a request id is at most 128 bytes).
const MAX_LEN: usize = 256;

struct Ring {
    strings: Vec<Arc<str>>,
    next: usize,
}

thread_local! {
    static RING: RefCell<Ring> = const { RefCell::new(Ring { strings: Vec::new(), next: 0 }) };
}

/// `text` as an attribute value whose memory this thread will most likely free.
pub(crate) fn string(text: &str) -> Value {
    if text.len() > MAX_LEN {
        return Value::from(text.to_owned());
    }
    let shared: Arc<str> = Arc::from(text);
    // `try_with`: during thread teardown the ring may be gone; the span still gets its value.
    let _ = RING.try_with(|ring| {
        let mut ring = ring.borrow_mut();
        if ring.strings.len() < RETAINED {
            ring.strings.push(Arc::clone(&shared));
        } else {
            // Replacing drops the oldest: usually its last reference, freed on this thread.
            let next = ring.next;
            ring.strings[next] = Arc::clone(&shared);
            ring.next = (next + 1) % RETAINED;
        }
    });
    Value::from(shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_exact_and_the_ring_is_bounded() {
        let values: Vec<Value> = (0..RETAINED + 10).map(|i| string(&format!("req-{i}"))).collect();
        for (i, value) in values.iter().enumerate() {
            assert_eq!(value.as_str(), format!("req-{i}"));
        }
        RING.with(|ring| {
            let ring = ring.borrow();
            assert_eq!(ring.strings.len(), RETAINED, "no more than RETAINED kept");
            // The oldest ten were replaced by the newest ten.
            assert_eq!(&*ring.strings[0], format!("req-{RETAINED}"));
            assert_eq!(&*ring.strings[10], "req-10");
        });
        drop(values);
        // Once the spans are gone, the ring holds the only references.
        RING.with(|ring| assert!(ring.borrow().strings.iter().all(|s| Arc::strong_count(s) == 1)));
        let long = "x".repeat(MAX_LEN + 1);
        assert_eq!(string(&long).as_str(), long, "long strings are copied, not kept");
    }
}
