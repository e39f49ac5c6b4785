//! Keep rules (`TOKENTRACE_TRACES_KEEP`): decide what to keep when a request is known, not at
//! its first byte. With rules set, every span is recorded; a span of a trace the head sampler
//! kept goes straight to the exporters, and the spans of any other trace are held until every
//! span of that trace in this process has ended, then kept (exported, their local roots marked
//! `tokentrace.kept_by`) if a rule matches, else dropped (or, in summary mode, reduced to the
//! local root span, marked `tokentrace.summary`).
//!
//! Each process decides on what it saw, and a decision travels both ways along the calls of the
//! trace (`crate::decisions`): a worker that keeps says so in its reply's end, and its caller
//! keeps its part too; a caller that keeps sends a notice to every peer it called for the
//! trace. So that a notice finds something to keep, a trace no rule kept here, whose caller
//! announced it will tell its decision, waits a grace time before it is dropped.
//!
//! Held spans, waiting ones included, are bounded in count and bytes: past a bound the oldest
//! undecided trace is decided as the head sampler decided it (dropped), and counted.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry::trace::{Link, SpanContext, SpanKind, TraceFlags, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    SamplingDecision, SamplingResult, ShouldSample, Span, SpanData, SpanProcessor,
};
use opentelemetry_sdk::Resource;

use super::open_traces::OpenTraces;
use crate::decisions::{Callee, Decisions};

mod remembered;
mod rules;

use remembered::Remembered;

#[cfg(test)]
use rules::attribute;
pub(crate) use rules::duration;
use rules::is_local_root;
pub use rules::KeepRules;

/// Attribute on the local root spans of a trace a rule kept: the rule.
pub(crate) const KEPT_BY: &str = "tokentrace.kept_by";
/// Attribute on the lone local root span exported for a dropped trace in summary mode.
pub(crate) const SUMMARY: &str = "tokentrace.summary";
/// The counter of requests decided early because the held spans reached a bound.
pub(crate) const OVERFLOWS: &str = "tokentrace.traces.keep.overflows";

/// With keep rules, the head sampler's "drop" becomes "record, do not sample": the span is
/// recorded (and held), and the sampled flag every outbound call carries stays the head
/// decision, so a process without tokentrace follows head sampling.
#[derive(Clone, Debug)]
pub(crate) struct RecordAll(pub(crate) Box<dyn ShouldSample>);

impl ShouldSample for RecordAll {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let mut result = self.0.should_sample(parent_context, trace_id, name, span_kind, attributes, links);
        if result.decision == SamplingDecision::Drop {
            result.decision = SamplingDecision::RecordOnly;
        }
        result
    }
}

/// Bounds on what is held for undecided traces, and how long a trace finished here waits for
/// its caller's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeepLimits {
    pub(crate) spans: usize,
    pub(crate) bytes: usize,
    pub(crate) grace: Duration,
}

/// Holds the spans of undecided traces, decides each once its spans here have ended, and hands
/// what is kept to the exporters, marked sampled. A dropped span is handed over unsampled:
/// exporters ignore it, and a processor that counts open spans sees it end.
///
/// The state lives in a [`Keeper`] shared with the transports (through `crate::decisions`), so
/// a peer's notice can release a waiting trace as soon as it arrives.
#[derive(Debug)]
pub(crate) struct KeepProcessor(Arc<Keeper>);

/// The keep rules' state: the held spans, the decisions, and the exporters.
pub(crate) struct Keeper {
    rules: KeepRules,
    summary: bool,
    limits: KeepLimits,
    /// The exporters, their resource set before they were handed over (the provider sets the
    /// resource of its own processors only, this one).
    exporters: Vec<Box<dyn SpanProcessor>>,
    held: Mutex<OpenTraces>,
    overflows: Arc<AtomicU64>,
    /// `tokentrace.traces.keep.overflows`, made at the first overflow from the global meter
    /// provider (which `telemetry::init` installs after building this processor).
    overflow_counter: OnceLock<opentelemetry::metrics::Counter<u64>>,
    memory: Mutex<Memory>,
}

/// What a keeper remembers of recent traces.
#[derive(Default)]
struct Memory {
    /// Kept here, by this rule.
    kept: Remembered<Arc<str>>,
    /// A peer said it kept them, by this rule.
    told: Remembered<Arc<str>>,
    /// The peers this process called for them.
    callees: Remembered<Vec<Callee>>,
    /// Their callers said they will tell their decision.
    callers: Remembered<()>,
}

impl fmt::Debug for Keeper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keeper")
            .field("rules", &self.rules)
            .field("summary", &self.summary)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// What deciding hands on once the locks are released: each span and whether it goes out
/// sampled, and the notices to send to the peers called for traces kept here.
#[derive(Default)]
struct Decided {
    spans: Vec<(SpanData, bool)>,
    notices: Vec<(TraceId, Arc<str>, Vec<Callee>)>,
}

impl KeepProcessor {
    /// A processor deciding by `rules` and handing what it keeps to `exporters`, whose
    /// resource must already be set.
    pub(crate) fn new(
        rules: KeepRules,
        summary: bool,
        limits: KeepLimits,
        exporters: Vec<Box<dyn SpanProcessor>>,
    ) -> Self {
        Self(Arc::new(Keeper {
            rules,
            summary,
            limits,
            exporters,
            held: Mutex::default(),
            overflows: Arc::default(),
            overflow_counter: OnceLock::new(),
            memory: Mutex::default(),
        }))
    }

    /// Traces decided early because the held spans reached a bound.
    pub(crate) fn overflows(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.0.overflows)
    }

    /// The decisions, for the transports to carry.
    pub(crate) fn decisions(&self) -> Arc<dyn Decisions> {
        Arc::clone(&self.0) as Arc<dyn Decisions>
    }
}

impl Keeper {
    fn held(&self) -> MutexGuard<'_, OpenTraces> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn memory(&self) -> MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides the trace of `spans`, whose spans here have all ended: kept when a peer kept it
    /// or a rule matches here; else, if its caller said it will tell its own decision, held
    /// for the grace time; else dropped.
    fn decide(&self, spans: Vec<SpanData>, held: &mut OpenTraces, now: Instant, out: &mut Decided) {
        let Some(trace_id) = spans.first().map(|span| span.span_context.trace_id()) else { return };
        let (told, caller_will_tell) = {
            let mut memory = self.memory();
            (memory.told.get(trace_id).cloned(), memory.callers.take(trace_id).is_some())
        };
        match told.or_else(|| self.rules.matched(&spans).map(Arc::from)) {
            Some(rule) => self.keep(trace_id, spans, rule, out),
            None if caller_will_tell && !self.limits.grace.is_zero() => held.wait(trace_id, spans, now),
            None => self.discard(spans, out),
        }
    }

    /// Keeps a trace: its spans go out sampled, its local roots marked with `rule`, and the
    /// peers called for it hear so.
    fn keep(&self, trace_id: TraceId, spans: Vec<SpanData>, rule: Arc<str>, out: &mut Decided) {
        let callees = {
            let mut memory = self.memory();
            memory.kept.insert(trace_id, Arc::clone(&rule));
            memory.callees.take(trace_id).unwrap_or_default()
        };
        out.spans.extend(spans.into_iter().map(|mut span| {
            if is_local_root(&span) {
                span.attributes.push(KeyValue::new(KEPT_BY, rule.to_string()));
            }
            (span, true)
        }));
        if !callees.is_empty() {
            out.notices.push((trace_id, rule, callees));
        }
    }

    /// Drops a trace: in summary mode its local roots still go out, marked as summaries.
    fn discard(&self, spans: Vec<SpanData>, out: &mut Decided) {
        out.spans.extend(spans.into_iter().map(|mut span| {
            let summary = self.summary && is_local_root(&span);
            if summary {
                span.attributes.push(KeyValue::new(SUMMARY, true));
            }
            (span, summary)
        }));
    }

    /// Drops the waiting traces whose grace time is over, and decides the oldest held traces
    /// as the head sampler did (dropped) until within bounds.
    fn tidy(&self, held: &mut OpenTraces, now: Instant, out: &mut Decided) {
        if let Some(waited_since) = now.checked_sub(self.limits.grace) {
            for spans in held.waited(waited_since) {
                self.discard(spans, out);
            }
        }
        let limits = self.limits;
        for spans in held.evict_while(|spans, bytes| spans > limits.spans || bytes > limits.bytes) {
            self.overflows.fetch_add(1, Ordering::Relaxed);
            self.overflow_counter
                .get_or_init(|| {
                    opentelemetry::global::meter("tokentrace")
                        .u64_counter(OVERFLOWS)
                        .with_description(
                            "Requests decided before their end, as head sampling had, because the spans held for keep rules reached a bound",
                        )
                        .build()
                })
                .add(1, &[]);
            self.discard(spans, out);
        }
    }

    /// Hands the decided spans to the exporters and sends the notices.
    fn hand_on(&self, decided: Decided) {
        for (mut span, sampled) in decided.spans {
            let context = &span.span_context;
            let flags =
                if sampled { context.trace_flags() | TraceFlags::SAMPLED } else { context.trace_flags() };
            span.span_context = SpanContext::new(
                context.trace_id(),
                context.span_id(),
                flags,
                context.is_remote(),
                context.trace_state().clone(),
            );
            self.forward(span);
        }
        for (trace_id, rule, callees) in decided.notices {
            for callee in callees {
                callee.tell(trace_id, &rule);
            }
        }
    }

    fn forward(&self, span: SpanData) {
        if let Some((last, others)) = self.exporters.split_last() {
            for processor in others {
                processor.on_end(span.clone());
            }
            last.on_end(span);
        }
    }
}

impl Decisions for Keeper {
    fn kept(&self, trace_id: TraceId) -> Option<Arc<str>> {
        self.memory().kept.get(trace_id).cloned()
    }

    fn told(&self, trace_id: TraceId, rule: &str) {
        {
            let mut memory = self.memory();
            if memory.kept.get(trace_id).is_some() {
                return;
            }
            memory.told.insert(trace_id, Arc::from(rule));
        }
        // A trace still open here is kept when it ends (`decide` asks); one waiting is kept now.
        let mut out = Decided::default();
        let waiting = self.held().take_waiting(trace_id);
        if let Some(spans) = waiting {
            self.keep(trace_id, spans, Arc::from(rule), &mut out);
        }
        self.hand_on(out);
    }

    fn calling(&self, trace_id: TraceId, callee: &Callee) {
        let kept = {
            let mut memory = self.memory();
            match memory.kept.get(trace_id).cloned() {
                Some(rule) => Some(rule),
                None => {
                    let callees = memory.callees.entry(trace_id, Vec::new);
                    if !callees.iter().any(|known| known.same(callee)) {
                        callees.push(callee.clone());
                    }
                    None
                }
            }
        };
        // Kept before this call (a retry after the decision): the peer hears at once.
        if let Some(rule) = kept {
            callee.tell(trace_id, &rule);
        }
    }

    fn caller_will_tell(&self, trace_id: TraceId) {
        self.memory().callers.entry(trace_id, || ());
    }
}

impl SpanProcessor for KeepProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        use opentelemetry::trace::Span as _;
        let context = span.span_context();
        if !context.is_sampled() {
            self.0.held().started(context.trace_id());
        }
        for processor in &self.0.exporters {
            processor.on_start(span, cx);
        }
    }

    fn on_end(&self, span: SpanData) {
        let keeper = &self.0;
        if span.span_context.is_sampled() {
            return keeper.forward(span);
        }
        let now = Instant::now();
        let mut decided = Decided::default();
        {
            let mut held = keeper.held();
            if let Some(spans) = held.ended(span, true) {
                keeper.decide(spans, &mut held, now, &mut decided);
            }
            keeper.tidy(&mut held, now, &mut decided);
        }
        keeper.hand_on(decided);
    }

    fn force_flush(&self) -> OTelSdkResult {
        for processor in &self.0.exporters {
            processor.force_flush()?;
        }
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        // Whatever is still undecided goes as the head sampler decided it.
        let keeper = &self.0;
        let mut undecided = Decided::default();
        for spans in keeper.held().drain() {
            keeper.discard(spans, &mut undecided);
        }
        keeper.hand_on(undecided);
        let mut result = Ok(());
        for processor in &keeper.exporters {
            if let Err(error) = processor.shutdown_with_timeout(timeout) {
                result = Err(error);
            }
        }
        result
    }

    /// The exporters' resource was set before they were handed over: `Arc` shares them with
    /// the transports, so they cannot be reached mutably here.
    fn set_resource(&mut self, _resource: &Resource) {}
}

#[cfg(test)]
mod tests;
