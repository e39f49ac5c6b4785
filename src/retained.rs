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

use opentelemetry::trace::Span;
use opentelemetry::{KeyValue, Value};

use crate::propagation::{RequestIds, RequestUuid};

/// Dynamo's attribute names for the request ids.
const X_REQUEST_ID: &str = "x_request_id";
const REQUEST_ID: &str = "request_id";

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
fn string(text: &str) -> Value {
    let shared: Arc<str> = Arc::from(text);
    // `try_with`: during thread teardown the ring may be gone; the span still gets its value.
    let _ = RING.try_with(|ring| ring.borrow_mut().keep(Arc::clone(&shared)));
    Value::from(shared)
}

/// A request UUID as an attribute value, as [`string`] does.
fn uuid(id: &RequestUuid) -> Value {
    // Hex digits and dashes: always UTF-8.
    string(std::str::from_utf8(&id.to_bytes()).unwrap_or_default())
}

/// Records the request ids on a span that was just started, if it records: `x_request_id`,
/// and `request_id` too when `with_request_id`.
///
/// After the start rather than among the start attributes: an unsampled span (most of them
/// under ratio sampling) would drop the values, so it costs no formatting and no string at all.
/// The sampler does not see them; it has no use for a value unique to each request.
///
/// ```ignore
/// retained::record_request_ids(&mut span, &ids, true);
/// ```
pub(crate) fn record_request_ids<S: Span>(span: &mut S, ids: &RequestIds, with_request_id: bool) {
    if !span.is_recording() {
        return;
    }
    span.set_attribute(KeyValue::new(X_REQUEST_ID, string(ids.x_request_id.as_str())));
    if with_request_id {
        span.set_attribute(KeyValue::new(REQUEST_ID, uuid(&ids.request_id)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_recorded_on_recording_spans_only() {
        use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
        use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider};

        use crate::propagation::RequestId;

        let ids = RequestIds {
            x_request_id: RequestId::parse(b"req-7").unwrap(),
            request_id: RequestUuid::parse(b"f47ac10b-58cc-4372-a567-0e02b2c3d479").unwrap(),
        };
        let exporter = InMemorySpanExporter::default();
        let sampled = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let unsampled = SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOff)
            .with_simple_exporter(exporter.clone())
            .build();

        let mut span = unsampled.tracer("t").start("unsampled");
        record_request_ids(&mut span, &ids, true);
        span.end();
        RING.with(|ring| assert!(ring.borrow().strings.is_empty(), "no string made for an unsampled span"));

        for (name, with_request_id) in [("server", true), ("client", false)] {
            let mut span = sampled.tracer("t").start(name);
            record_request_ids(&mut span, &ids, with_request_id);
            span.end();
        }
        let spans = exporter.get_finished_spans().unwrap();
        let attribute = |span: &str, key: &str| {
            let span = spans.iter().find(|s| s.name == span).unwrap();
            span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.as_str().into_owned())
        };
        assert_eq!(spans.len(), 2, "only the sampled spans are exported");
        assert_eq!(attribute("server", X_REQUEST_ID).as_deref(), Some("req-7"));
        assert_eq!(attribute("server", REQUEST_ID).as_deref(), Some("f47ac10b-58cc-4372-a567-0e02b2c3d479"));
        assert_eq!(attribute("client", X_REQUEST_ID).as_deref(), Some("req-7"));
        assert_eq!(attribute("client", REQUEST_ID), None);
    }

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
