//! Keep decisions that travel between processes: the traces this process's keep rules kept
//! (a worker says so in its reply's end), and the traces a peer said it kept (a caller that
//! hears so keeps its own part too, whatever its own rules say).
//!
//! Global, as the tracer provider is: the transports are built without a handle to the
//! telemetry that `telemetry::init` sets up, and the two meet only at a trace id. Bounded: the
//! most recent [`REMEMBERED`] decisions of each kind.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use opentelemetry::trace::TraceId;

use crate::propagation::{names::TRACEPARENT, Carrier, TraceParent};

/// Decisions remembered of each kind: more than the requests a process has in flight.
const REMEMBERED: usize = 4096;

static INSTALLED: RwLock<Option<Arc<Decisions>>> = RwLock::new(None);

/// The decisions of the process's installed telemetry, when it has keep rules.
pub(crate) fn installed() -> Option<Arc<Decisions>> {
    INSTALLED.read().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Makes `decisions` the process's (by `telemetry::init`).
#[cfg_attr(not(feature = "telemetry"), allow(dead_code))]
pub(crate) fn install(decisions: Arc<Decisions>) {
    *INSTALLED.write().unwrap_or_else(PoisonError::into_inner) = Some(decisions);
}

/// The trace a request's metadata (or headers) continues, if it carries a valid `traceparent`
/// and decisions are installed to carry (else the parse is skipped: it is on every call).
pub(crate) fn trace_of<C: Carrier + ?Sized>(carrier: &C) -> Option<TraceId> {
    INSTALLED.read().unwrap_or_else(PoisonError::into_inner).as_ref()?;
    let traceparent = TraceParent::parse(carrier.get_single(TRACEPARENT)?).ok()?;
    Some(traceparent.trace_id())
}

/// The rule that kept `trace_id` here, if the installed keep rules kept it.
pub(crate) fn kept_here(trace_id: Option<TraceId>) -> Option<Arc<str>> {
    installed()?.kept(trace_id?)
}

/// A peer kept `trace_id` by `rule`: tell the installed keep rules, if any.
pub(crate) fn kept_by_peer(trace_id: Option<TraceId>, rule: &str) {
    if let (Some(decisions), Some(trace_id)) = (installed(), trace_id) {
        decisions.told(trace_id, rule);
    }
}

/// Recent decisions, each kind in a bounded, oldest-first memory.
#[derive(Debug, Default)]
pub(crate) struct Decisions {
    kept: Mutex<Remembered>,
    told: Mutex<Remembered>,
}

#[derive(Debug, Default)]
struct Remembered {
    rules: HashMap<TraceId, Arc<str>>,
    order: VecDeque<TraceId>,
}

impl Remembered {
    fn remember(&mut self, trace_id: TraceId, rule: &str) {
        if self.rules.insert(trace_id, rule.into()).is_none() {
            self.order.push_back(trace_id);
        }
        while self.order.len() > REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.rules.remove(&oldest);
            }
        }
    }
}

impl Decisions {
    /// This process's keep rules kept `trace_id` by `rule`.
    #[cfg_attr(not(feature = "telemetry"), allow(dead_code))]
    pub(crate) fn record_kept(&self, trace_id: TraceId, rule: &str) {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner).remember(trace_id, rule);
    }

    /// The rule that kept `trace_id` here, if one did.
    pub(crate) fn kept(&self, trace_id: TraceId) -> Option<Arc<str>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner).rules.get(&trace_id).cloned()
    }

    /// A peer said it kept `trace_id` by `rule`.
    pub(crate) fn told(&self, trace_id: TraceId, rule: &str) {
        self.told.lock().unwrap_or_else(PoisonError::into_inner).remember(trace_id, rule);
    }

    /// The rule a peer kept `trace_id` by, if one said so.
    #[cfg_attr(not(feature = "telemetry"), allow(dead_code))]
    pub(crate) fn told_rule(&self, trace_id: TraceId) -> Option<Arc<str>> {
        self.told.lock().unwrap_or_else(PoisonError::into_inner).rules.get(&trace_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_remembered_within_their_bound() {
        let decisions = Decisions::default();
        for n in 0..REMEMBERED as u128 + 10 {
            decisions.record_kept(TraceId::from(n + 1), "error");
        }
        assert_eq!(decisions.kept(TraceId::from(1)), None, "the oldest forgotten");
        assert_eq!(decisions.kept(TraceId::from(REMEMBERED as u128 + 10)).as_deref(), Some("error"));
        decisions.told(TraceId::from(7), "cancelled");
        assert_eq!(decisions.told_rule(TraceId::from(7)).as_deref(), Some("cancelled"));
        assert_eq!(decisions.told_rule(TraceId::from(8)), None);
    }
}
