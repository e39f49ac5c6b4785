//! A bounded memory of something per trace, for the keep decisions.

use std::collections::{HashMap, VecDeque};

use opentelemetry::trace::TraceId;

/// Traces remembered of each kind: more than the requests a process has in flight.
pub(crate) const REMEMBERED: usize = 4096;

/// A bounded memory of something per trace: the most recent [`REMEMBERED`] traces.
#[derive(Debug)]
pub(crate) struct Remembered<V> {
    values: HashMap<TraceId, V>,
    order: VecDeque<TraceId>,
}

impl<V> Default for Remembered<V> {
    fn default() -> Self {
        Self { values: HashMap::new(), order: VecDeque::new() }
    }
}

impl<V> Remembered<V> {
    /// The value for `trace_id`, made by `new` if there is none (forgetting the oldest trace
    /// past the bound).
    pub(crate) fn entry(&mut self, trace_id: TraceId, new: impl FnOnce() -> V) -> &mut V {
        self.make_room_for(trace_id);
        self.values.entry(trace_id).or_insert_with(new)
    }

    /// Remembers `value` for `trace_id`, in place of any earlier one.
    pub(crate) fn insert(&mut self, trace_id: TraceId, value: V) {
        self.make_room_for(trace_id);
        self.values.insert(trace_id, value);
    }

    /// A trace not remembered yet takes the newest place, the oldest forgotten past the bound.
    fn make_room_for(&mut self, trace_id: TraceId) {
        if !self.values.contains_key(&trace_id) {
            while self.order.len() >= REMEMBERED {
                if let Some(oldest) = self.order.pop_front() {
                    self.values.remove(&oldest);
                }
            }
            self.order.push_back(trace_id);
        }
    }

    pub(crate) fn get(&self, trace_id: TraceId) -> Option<&V> {
        self.values.get(&trace_id)
    }

    /// Takes the value for `trace_id` (its place in the order is freed when it comes up).
    pub(crate) fn take(&mut self, trace_id: TraceId) -> Option<V> {
        let value = self.values.remove(&trace_id)?;
        if let Some(at) = self.order.iter().rposition(|id| *id == trace_id) {
            self.order.remove(at);
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_recent_traces_are_remembered() {
        let mut kept = Remembered::default();
        for n in 0..REMEMBERED as u128 + 10 {
            kept.insert(TraceId::from(n + 1), "error");
        }
        assert_eq!(kept.get(TraceId::from(1)), None, "the oldest forgotten");
        assert_eq!(kept.get(TraceId::from(REMEMBERED as u128 + 10)), Some(&"error"));
        assert_eq!(kept.take(TraceId::from(REMEMBERED as u128 + 10)), Some("error"));
        assert_eq!(kept.get(TraceId::from(REMEMBERED as u128 + 10)), None);
        kept.insert(TraceId::from(1), "cancelled");
        assert_eq!(kept.values.len(), REMEMBERED, "taking one made room for another");
    }
}
