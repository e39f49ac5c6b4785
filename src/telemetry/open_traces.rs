//! Ended spans grouped by trace until every span of the trace that this process started has
//! ended: what the console prints as one tree, and what keep rules decide on as one request.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use opentelemetry::trace::TraceId;
use opentelemetry::Value;
use opentelemetry_sdk::trace::SpanData;

/// Counts each trace's open spans as they start and end, and holds the ended spans of each
/// trace still open here.
#[derive(Debug, Default)]
pub(crate) struct OpenTraces {
    /// Spans started and not yet ended, per trace.
    open: HashMap<TraceId, usize>,
    /// Ended spans held, per trace.
    held: HashMap<TraceId, Vec<SpanData>>,
    /// Traces with held spans, oldest first, for the bounds.
    order: VecDeque<TraceId>,
    /// Traces whose spans here have all ended, held for a peer's decision, with when each
    /// began to wait, oldest first.
    waiting: VecDeque<(Instant, TraceId)>,
    /// Spans held, and about the memory they hold.
    spans: usize,
    bytes: usize,
}

impl OpenTraces {
    /// A span of `trace_id` started.
    pub(crate) fn started(&mut self, trace_id: TraceId) {
        *self.open.entry(trace_id).or_default() += 1;
    }

    /// `span` ended, held if `hold`: the trace's held spans once it was the last of its trace
    /// open here (a trace whose start was not seen is complete at once).
    pub(crate) fn ended(&mut self, span: SpanData, hold: bool) -> Option<Vec<SpanData>> {
        let trace_id = span.span_context.trace_id();
        let still_open = match self.open.get_mut(&trace_id) {
            Some(open) if *open > 1 => {
                *open -= 1;
                true
            }
            _ => {
                self.open.remove(&trace_id);
                false
            }
        };
        if hold {
            let spans = self.held.entry(trace_id).or_default();
            if spans.is_empty() {
                self.order.push_back(trace_id);
            }
            self.bytes += size(&span);
            self.spans += 1;
            spans.push(span);
        }
        if still_open {
            return None;
        }
        self.forget_order(trace_id);
        Some(self.take(trace_id))
    }

    fn forget_order(&mut self, trace_id: TraceId) {
        // Traces mostly end in the order they started: the search stops near the front.
        if let Some(at) = self.order.iter().position(|id| *id == trace_id) {
            self.order.remove(at);
        }
    }

    /// The oldest held traces, taken while `over(spans, bytes)` says the holdings are too large.
    pub(crate) fn evict_while(&mut self, over: impl Fn(usize, usize) -> bool) -> Vec<Vec<SpanData>> {
        let mut evicted = Vec::new();
        while over(self.spans, self.bytes) {
            let Some(oldest) = self.order.pop_front() else { break };
            evicted.push(self.take(oldest));
        }
        evicted
    }

    /// Holds the spans of a trace whose spans here have all ended, from `now`, until
    /// [`take_waiting`](Self::take_waiting) or [`waited`](Self::waited) takes them (or a bound
    /// evicts them: they count with the other held spans).
    pub(crate) fn wait(&mut self, trace_id: TraceId, spans: Vec<SpanData>, now: Instant) {
        if spans.is_empty() {
            return;
        }
        self.spans += spans.len();
        self.bytes += spans.iter().map(size).sum::<usize>();
        let held = self.held.entry(trace_id).or_default();
        if held.is_empty() {
            self.order.push_back(trace_id);
        }
        held.extend(spans);
        self.waiting.push_back((now, trace_id));
    }

    /// The spans of `trace_id` if it is waiting (complete here and held).
    pub(crate) fn take_waiting(&mut self, trace_id: TraceId) -> Option<Vec<SpanData>> {
        if self.open.contains_key(&trace_id) || !self.held.contains_key(&trace_id) {
            return None;
        }
        self.forget_order(trace_id);
        Some(self.take(trace_id))
    }

    /// The traces that began to wait before `since` and still wait, oldest first.
    pub(crate) fn waited(&mut self, since: Instant) -> Vec<Vec<SpanData>> {
        let mut done = Vec::new();
        while let Some(&(began, trace_id)) = self.waiting.front() {
            if began >= since {
                break;
            }
            self.waiting.pop_front();
            // Taken already (a peer's decision, a bound), or open again (another call of
            // the same trace, decided at its own end): nothing to do here.
            if let Some(spans) = self.take_waiting(trace_id) {
                done.push(spans);
            }
        }
        done
    }

    /// Every held trace, oldest first (at shutdown).
    pub(crate) fn drain(&mut self) -> Vec<Vec<SpanData>> {
        self.open.clear();
        self.waiting.clear();
        let order = std::mem::take(&mut self.order);
        order.into_iter().map(|trace_id| self.take(trace_id)).collect()
    }

    fn take(&mut self, trace_id: TraceId) -> Vec<SpanData> {
        let spans = self.held.remove(&trace_id).unwrap_or_default();
        self.spans -= spans.len();
        self.bytes -= spans.iter().map(size).sum::<usize>();
        spans
    }
}

/// About what a span holds in memory: the struct, its name, its attributes and events.
fn size(span: &SpanData) -> usize {
    let value = |value: &Value| match value {
        Value::String(text) => text.as_str().len(),
        _ => 8,
    };
    let attributes: usize =
        span.attributes.iter().map(|kv| kv.key.as_str().len() + value(&kv.value) + 32).sum();
    let events: usize = span.events.iter().map(|event| event.name.len() + 64).sum();
    std::mem::size_of::<SpanData>() + span.name.len() + attributes + events
}
