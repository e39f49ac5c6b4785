//! A tracer provider exporting into memory, and waiting for spans to arrive: shared by the
//! integration tests (through `support`) and the crate's own unit tests (by path).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracer, SdkTracerProvider, SpanData};

/// A provider whose finished spans land in `exporter`, synchronously at span end.
pub struct Spans {
    pub provider: SdkTracerProvider,
    pub exporter: InMemorySpanExporter,
}

impl Spans {
    pub fn new() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        Self { provider, exporter }
    }

    pub fn tracer(&self, name: &'static str) -> SdkTracer {
        self.provider.tracer(name)
    }

    pub fn finished(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().unwrap_or_default()
    }

    /// Waits (up to 5 s) until `done` holds for the finished spans, and returns them.
    pub fn wait_for(&self, what: &str, done: impl Fn(&[SpanData]) -> bool) -> Vec<SpanData> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(spans) = self.check(what, &done, deadline) {
                return spans;
            }
            std::thread::sleep(POLL);
        }
    }

    /// [`Spans::wait_for`] for async tests: sleeps without blocking the runtime.
    pub async fn wait_for_async(&self, what: &str, done: impl Fn(&[SpanData]) -> bool) -> Vec<SpanData> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(spans) = self.check(what, &done, deadline) {
                return spans;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The finished spans if `done` holds; fails the test once `deadline` has passed.
    fn check(
        &self,
        what: &str,
        done: &impl Fn(&[SpanData]) -> bool,
        deadline: Instant,
    ) -> Option<Vec<SpanData>> {
        let spans = self.finished();
        if done(&spans) {
            return Some(spans);
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; have {:#?}", names(&spans));
        None
    }
}

const WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

pub fn names(spans: &[SpanData]) -> Vec<String> {
    spans.iter().map(|s| format!("{} ({:?})", s.name, s.span_kind)).collect()
}

/// The value of attribute `key` on `span`, as a string.
pub fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}
