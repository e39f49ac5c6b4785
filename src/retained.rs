//! Per-request attribute strings (request ids) whose memory goes back to the thread that made them.
//!
//! Why: a batch span processor drops exported spans on its own thread, so every `String` in a
//! span attribute is allocated on a request thread and freed on the exporter's. With glibc's
//! allocator that pattern is expensive: the request thread's cache for that size never refills,
//! and both threads contend for the same free lists and cache lines. Measured in the
//! `benches/layers.rs` scenario (2-core Xeon, one build switched by hand, median of five runs):
//! the two request-id strings of a server span cost 0.65–0.75 µs per request as plain
//! `String`s, ~0.1 µs as strings kept here, nothing as static strings.
//!
//! How: each string is an `Arc<str>`; the span holds one reference and this thread keeps the
//! other in a ring of the [`RETAINED`] most recent ones. By the time the ring comes round the
//! exporter has usually dropped its reference, so this thread drops the last one and the memory
//! returns to its own cache. If the exporter still holds it (spans waiting in a long batch), the
//! exporter frees it, as it would a plain `String`.
//!
//! Bounded: at most [`RETAINED`] strings per thread are held past their span, each at most a
//! request id (128 bytes): at most about 0.3 MiB per thread with the ring itself, about
//! 160 KiB with 36-character ids (64-byte allocations).

use std::cell::RefCell;
use std::sync::Arc;

use opentelemetry::Value;

use crate::propagation::RequestUuid;

/// Strings each thread keeps after handing them to a span: more than a batch processor holds
/// (512 spans per batch by default) for the spans of about a thousand requests.
pub(crate) const RETAINED: usize = 2048;

struct Ring {
    strings: Vec<Arc<str>>,
    next: usize,
}

impl Ring {
    fn keep(&mut self, string: Arc<str>) {
        if self.strings.len() < RETAINED {
            self.strings.push(string);
        } else {
            // Replacing drops the oldest: usually its last reference, freed on this thread.
            self.strings[self.next] = string;
            self.next = (self.next + 1) % RETAINED;
        }
    }
}

thread_local! {
    static RING: RefCell<Ring> = const { RefCell::new(Ring { strings: Vec::new(), next: 0 }) };
}

/// `text` as an attribute value whose memory this thread will most likely free.
///
/// ```ignore
/// let value = retained::string("req-42");
/// assert_eq!(value.as_str(), "req-42");
/// ```
pub(crate) fn string(text: &str) -> Value {
    let shared: Arc<str> = Arc::from(text);
    // `try_with`: during thread teardown the ring may be gone; the span still gets its value.
    let _ = RING.try_with(|ring| ring.borrow_mut().keep(Arc::clone(&shared)));
    Value::from(shared)
}

/// A request UUID as an attribute value, as [`string`] does.
pub(crate) fn uuid(id: &RequestUuid) -> Value {
    // Hex digits and dashes: always UTF-8.
    string(std::str::from_utf8(&id.to_bytes()).unwrap_or_default())
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
    }
}
