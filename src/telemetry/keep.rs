//! Keep rules (`TOKENTRACE_TRACES_KEEP`): decide what to keep when a request is known, not at
//! its first byte. With rules set, every span is recorded; a span of a trace the head sampler
//! kept goes straight to the exporters, and the spans of any other trace are held until every
//! span of that trace in this process has ended, then kept (exported, their local roots marked
//! `tokentrace.kept_by`) if a rule matches, else dropped (or, in summary mode, reduced to the
//! local root span, marked `tokentrace.summary`).
//!
//! Held spans are bounded in count and bytes: past a bound the oldest undecided trace is decided
//! as the head sampler decided it (dropped), and counted. Each process decides on what it saw,
//! and a worker's decision travels up: over the crate's TCP and NATS transports a worker that
//! kept a request's trace says so in the stream's end, and its caller keeps its own part too
//! (`crate::decisions`). A caller's decision does not yet reach the workers it called, and an
//! HTTP or gRPC hop carries no decision.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::trace::{Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    SamplingDecision, SamplingResult, ShouldSample, Span, SpanData, SpanProcessor,
};
use opentelemetry_sdk::Resource;

use super::open_traces::OpenTraces;
use crate::decisions::Decisions;

/// Attribute on the local root spans of a trace a rule kept: the rule.
pub(crate) const KEPT_BY: &str = "tokentrace.kept_by";
/// Attribute on the lone local root span exported for a dropped trace in summary mode.
pub(crate) const SUMMARY: &str = "tokentrace.summary";
/// The counter of requests decided early because the held spans reached a bound.
pub(crate) const OVERFLOWS: &str = "tokentrace.traces.keep.overflows";

/// The rules of `TOKENTRACE_TRACES_KEEP`: a trace is kept when any matches.
///
/// ```
/// use std::time::Duration;
/// use tokentrace::telemetry::KeepRules;
///
/// let rules = KeepRules::parse("error, cancelled, ttft>500ms, duration>30s, itl_p99>0.2s")?;
/// assert!(rules.error && rules.cancelled);
/// assert_eq!(rules.ttft, Some(Duration::from_millis(500)));
/// assert_eq!(rules.itl_p99, Some(Duration::from_millis(200)));
/// assert_eq!(rules.to_string(), "error,cancelled,ttft>500ms,duration>30000ms,itl_p99>200ms");
/// assert!(KeepRules::parse("slow").is_err());
/// # Ok::<(), String>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeepRules {
    /// `error`: a span failed (a cancellation is not an error here).
    pub error: bool,
    /// `cancelled`: a span was abandoned before its end (the client left, a stream was dropped).
    pub cancelled: bool,
    /// `ttft>…`: a span's `ttft_ms` exceeds this.
    pub ttft: Option<Duration>,
    /// `duration>…`: a local root span (this process's part of the request) lasted longer.
    pub duration: Option<Duration>,
    /// `itl_p99>…`: a span's `itl_p99_ms` exceeds this.
    pub itl_p99: Option<Duration>,
}

impl KeepRules {
    /// Parses a comma-separated list: `error`, `cancelled`, `ttft>T`, `duration>T`,
    /// `itl_p99>T`, each `T` a number with `ms` or `s`. An unknown rule or a malformed value
    /// is an error that says which.
    ///
    /// ```
    /// use tokentrace::telemetry::KeepRules;
    /// assert_eq!(KeepRules::parse("ttft>1.5s")?.ttft.unwrap().as_millis(), 1500);
    /// assert!(KeepRules::parse("ttft>fast").unwrap_err().contains("ttft>fast"));
    /// # Ok::<(), String>(())
    /// ```
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut rules = Self::default();
        for rule in list.split(',').map(str::trim).filter(|rule| !rule.is_empty()) {
            match rule.split_once('>') {
                None if rule == "error" => rules.error = true,
                None if rule == "cancelled" => rules.cancelled = true,
                Some((name, limit)) => {
                    let limit = Some(duration(limit.trim()).ok_or_else(|| {
                        format!("{rule:?}: the limit must be a number with ms or s, such as 500ms or 2s")
                    })?);
                    match name.trim() {
                        "ttft" => rules.ttft = limit,
                        "duration" => rules.duration = limit,
                        "itl_p99" => rules.itl_p99 = limit,
                        other => {
                            return Err(format!(
                                "unknown rule {other:?} in {rule:?} (known: ttft, duration, itl_p99)"
                            ))
                        }
                    }
                }
                None => {
                    return Err(format!(
                        "unknown rule {rule:?} (known: error, cancelled, ttft>T, duration>T, itl_p99>T)"
                    ))
                }
            }
        }
        if rules == Self::default() {
            return Err("no rule given".into());
        }
        Ok(rules)
    }

    /// The first rule the spans of one trace (in this process) match, as written in the list.
    fn matched(&self, spans: &[SpanData]) -> Option<String> {
        let cancelled =
            |span: &SpanData| attribute(span, "cancelled").is_some_and(|v| *v == Value::Bool(true));
        if self.error
            && spans.iter().any(|span| matches!(span.status, Status::Error { .. }) && !cancelled(span))
        {
            return Some("error".into());
        }
        if self.cancelled && spans.iter().any(cancelled) {
            return Some("cancelled".into());
        }
        let over = |key: &str, limit: Option<Duration>| {
            let limit = limit?;
            spans
                .iter()
                .filter_map(|span| milliseconds(attribute(span, key)?))
                .any(|ms| ms > limit.as_secs_f64() * 1e3)
                .then(|| format!("{}>{}ms", key.trim_end_matches("_ms"), limit.as_millis()))
        };
        if let Some(rule) = over("ttft_ms", self.ttft) {
            return Some(rule);
        }
        if let Some(limit) = self.duration {
            let longest = spans
                .iter()
                .filter(|span| is_local_root(span))
                .filter_map(|span| span.end_time.duration_since(span.start_time).ok())
                .max();
            if longest.is_some_and(|longest| longest > limit) {
                return Some(format!("duration>{}ms", limit.as_millis()));
            }
        }
        over("itl_p99_ms", self.itl_p99)
    }
}

impl fmt::Display for KeepRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rules = Vec::new();
        if self.error {
            rules.push("error".to_owned());
        }
        if self.cancelled {
            rules.push("cancelled".to_owned());
        }
        for (name, limit) in [("ttft", self.ttft), ("duration", self.duration), ("itl_p99", self.itl_p99)] {
            if let Some(limit) = limit {
                rules.push(format!("{name}>{}ms", limit.as_millis()));
            }
        }
        f.write_str(&rules.join(","))
    }
}

/// `500ms`, `2s`, `1.5s`.
fn duration(text: &str) -> Option<Duration> {
    let (number, scale) = match text.strip_suffix("ms") {
        Some(number) => (number, 1e-3),
        None => (text.strip_suffix('s')?, 1.0),
    };
    let value: f64 = number.trim().parse().ok()?;
    (value.is_finite() && value >= 0.0).then(|| Duration::from_secs_f64(value * scale))
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
}

fn milliseconds(value: &Value) -> Option<f64> {
    match value {
        Value::F64(ms) => Some(*ms),
        Value::I64(ms) => Some(*ms as f64),
        _ => None,
    }
}

/// This process's part of the request starts here: no parent, or a parent in another process.
fn is_local_root(span: &SpanData) -> bool {
    span.parent_span_id == SpanId::INVALID || span.parent_span_is_remote
}

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

/// Bounds on what is held for undecided traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeepLimits {
    pub(crate) spans: usize,
    pub(crate) bytes: usize,
}

/// Holds the spans of undecided traces, decides each once its spans here have ended, and hands
/// what is kept to `inner` (the exporters), marked sampled. A dropped span is handed over
/// unsampled: exporters ignore it, and a processor that counts open spans sees it end.
pub(crate) struct KeepProcessor {
    rules: KeepRules,
    summary: bool,
    limits: KeepLimits,
    inner: Vec<Box<dyn SpanProcessor>>,
    held: Mutex<OpenTraces>,
    overflows: Arc<AtomicU64>,
    /// `tokentrace.traces.keep.overflows`, made at the first overflow from the global meter
    /// provider (which `telemetry::init` installs after building this processor).
    overflow_counter: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>>,
    /// What was kept here, and what peers said they kept.
    decisions: Arc<Decisions>,
}

impl fmt::Debug for KeepProcessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeepProcessor")
            .field("rules", &self.rules)
            .field("summary", &self.summary)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// What deciding a trace hands on: each span, and whether it goes out sampled.
type Decided = Vec<(SpanData, bool)>;

impl KeepProcessor {
    pub(crate) fn new(
        rules: KeepRules,
        summary: bool,
        limits: KeepLimits,
        inner: Vec<Box<dyn SpanProcessor>>,
    ) -> Self {
        Self {
            rules,
            summary,
            limits,
            inner,
            held: Mutex::default(),
            overflows: Arc::default(),
            overflow_counter: std::sync::OnceLock::new(),
            decisions: Arc::default(),
        }
    }

    /// Traces decided early because the held spans reached a bound.
    pub(crate) fn overflows(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.overflows)
    }

    /// The traces kept here and those peers said they kept, for the transports to carry.
    pub(crate) fn decisions(&self) -> Arc<Decisions> {
        Arc::clone(&self.decisions)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, OpenTraces> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides the trace of `spans`: kept (local roots marked with the rule) when a peer kept it
    /// or a rule matches here, else dropped (in summary mode, the local roots kept alone,
    /// marked as summaries).
    fn decide(&self, spans: Vec<SpanData>) -> Decided {
        let trace_id = spans.first().map(|span| span.span_context.trace_id());
        let told = trace_id.and_then(|trace_id| self.decisions.told_rule(trace_id));
        let kept_by = told.map(|rule| rule.to_string()).or_else(|| self.rules.matched(&spans));
        if let (Some(trace_id), Some(rule)) = (trace_id, &kept_by) {
            self.decisions.record_kept(trace_id, rule);
        }
        spans
            .into_iter()
            .map(|mut span| {
                let root = is_local_root(&span);
                match &kept_by {
                    Some(rule) => {
                        if root {
                            span.attributes.push(KeyValue::new(KEPT_BY, rule.clone()));
                        }
                        (span, true)
                    }
                    None if root && self.summary => {
                        span.attributes.push(KeyValue::new(SUMMARY, true));
                        (span, true)
                    }
                    None => (span, false),
                }
            })
            .collect()
    }

    /// Decides the oldest held traces as the head sampler did (dropped) until within bounds.
    fn evict(&self, held: &mut OpenTraces, out: &mut Decided) {
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
            out.extend(spans.into_iter().map(|span| (span, false)));
        }
    }

    fn hand_on(&self, decided: Decided) {
        for (mut span, sampled) in decided {
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
    }

    fn forward(&self, span: SpanData) {
        if let Some((last, others)) = self.inner.split_last() {
            for processor in others {
                processor.on_end(span.clone());
            }
            last.on_end(span);
        }
    }
}

impl SpanProcessor for KeepProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        use opentelemetry::trace::Span as _;
        let context = span.span_context();
        if !context.is_sampled() {
            self.held().started(context.trace_id());
        }
        for processor in &self.inner {
            processor.on_start(span, cx);
        }
    }

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            return self.forward(span);
        }
        let mut decided = Decided::new();
        {
            let mut held = self.held();
            if let Some(spans) = held.ended(span, true) {
                decided = self.decide(spans);
            }
            self.evict(&mut held, &mut decided);
        }
        self.hand_on(decided);
    }

    fn force_flush(&self) -> OTelSdkResult {
        for processor in &self.inner {
            processor.force_flush()?;
        }
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        // Whatever is still undecided goes as the head sampler decided it.
        let undecided: Decided =
            self.held().drain().into_iter().flatten().map(|span| (span, false)).collect();
        self.hand_on(undecided);
        let mut result = Ok(());
        for processor in &self.inner {
            if let Err(error) = processor.shutdown_with_timeout(timeout) {
                result = Err(error);
            }
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        for processor in &mut self.inner {
            processor.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests;
