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
    held: HashMap<TraceId, Held>,
    /// Traces as they began to be held, oldest first, for the bounds. An entry whose hold has
    /// been taken since is skipped when it comes up (and swept when they outnumber the live),
    /// so taking a trace never searches this.
    order: VecDeque<(u64, TraceId)>,
    /// Traces whose spans here have all ended, held for a peer's decision, with when each
    /// began to wait, oldest first (stale entries skipped as in `order`).
    waiting: VecDeque<(Instant, u64, TraceId)>,
    /// Numbers each hold, so that an entry of `order` or `waiting` names one hold, not a trace.
    holds: u64,
    /// Spans held, and about the memory they hold.
    spans: usize,
    bytes: usize,
}

#[derive(Debug)]
struct Held {
    spans: Vec<SpanData>,
    /// Which hold this is (see `OpenTraces::holds`).
    hold: u64,
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
            self.hold(trace_id, [span]);
        }
        if still_open {
            return None;
        }
        Some(self.take(trace_id))
    }

    /// Adds `spans` to what is held of `trace_id`.
    fn hold(&mut self, trace_id: TraceId, spans: impl IntoIterator<Item = SpanData>) -> u64 {
        let next = self.holds;
        let held = self.held.entry(trace_id).or_insert_with(|| Held { spans: Vec::new(), hold: next });
        for span in spans {
            self.spans += 1;
            self.bytes += size(&span);
            held.spans.push(span);
        }
        let hold = held.hold;
        if hold == next {
            self.holds += 1;
            self.order.push_back((next, trace_id));
            if self.order.len() > 2 * self.held.len() + 1024 {
                let held = &self.held;
                self.order.retain(|(hold, id)| held.get(id).is_some_and(|h| h.hold == *hold));
            }
        }
        hold
    }

    /// Whether `hold` of `trace_id` is still held.
    fn holds(&self, hold: u64, trace_id: TraceId) -> bool {
        self.held.get(&trace_id).is_some_and(|held| held.hold == hold)
    }

    /// The oldest held traces, taken while `over(spans, bytes)` says the holdings are too large.
    pub(crate) fn evict_while(&mut self, over: impl Fn(usize, usize) -> bool) -> Vec<Vec<SpanData>> {
        let mut evicted = Vec::new();
        while over(self.spans, self.bytes) {
            let Some((hold, oldest)) = self.order.pop_front() else { break };
            if self.holds(hold, oldest) {
                evicted.push(self.take(oldest));
            }
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
        let hold = self.hold(trace_id, spans);
        self.waiting.push_back((now, hold, trace_id));
        if self.waiting.len() > 2 * self.held.len() + 1024 {
            let held = &self.held;
            self.waiting.retain(|(_, hold, id)| held.get(id).is_some_and(|h| h.hold == *hold));
        }
    }

    /// The spans of `trace_id` if it is waiting (complete here and held).
    pub(crate) fn take_waiting(&mut self, trace_id: TraceId) -> Option<Vec<SpanData>> {
        if self.open.contains_key(&trace_id) || !self.held.contains_key(&trace_id) {
            return None;
        }
        Some(self.take(trace_id))
    }

    /// The traces that began to wait before `since` and still wait, oldest first.
    pub(crate) fn waited(&mut self, since: Instant) -> Vec<Vec<SpanData>> {
        let mut done = Vec::new();
        while let Some(&(began, hold, trace_id)) = self.waiting.front() {
            if began >= since {
                break;
            }
            self.waiting.pop_front();
            // Taken already (a peer's decision, a bound), or open again (another call of the
            // same trace, decided at its own end): nothing to do here.
            if self.holds(hold, trace_id) && !self.open.contains_key(&trace_id) {
                done.push(self.take(trace_id));
            }
        }
        done
    }

    /// Every held trace, oldest first (at shutdown).
    pub(crate) fn drain(&mut self) -> Vec<Vec<SpanData>> {
        self.open.clear();
        self.waiting.clear();
        let mut drained = Vec::new();
        for (hold, trace_id) in std::mem::take(&mut self.order) {
            if self.holds(hold, trace_id) {
                drained.push(self.take(trace_id));
            }
        }
        drained
    }

    fn take(&mut self, trace_id: TraceId) -> Vec<SpanData> {
        let spans = self.held.remove(&trace_id).map(|held| held.spans).unwrap_or_default();
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
