//! Keep rules over an in-memory exporter: what is exported, marked how, within what bounds.

use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceState, Tracer,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor};

use super::*;
use crate::telemetry::probability::{ConsistentRatio, ParentBased};

const ROOMY: KeepLimits = KeepLimits { spans: 10_000, bytes: 64 << 20, grace: Duration::ZERO };
/// Room, and a grace time no test outlasts.
const PATIENT: KeepLimits = KeepLimits { grace: Duration::from_secs(600), ..ROOMY };

struct Setup {
    provider: SdkTracerProvider,
    exporter: InMemorySpanExporter,
    overflows: Arc<AtomicU64>,
    decisions: Arc<dyn Decisions>,
}

fn setup(rules: &str, ratio: f64, summary: bool, limits: KeepLimits) -> Setup {
    let exporter = InMemorySpanExporter::default();
    let processor = KeepProcessor::new(
        KeepRules::parse(rules).unwrap(),
        summary,
        limits,
        vec![Box::new(SimpleSpanProcessor::new(exporter.clone()))],
    );
    let overflows = processor.overflows();
    let decisions = processor.decisions();
    let sampler = RecordAll(Box::new(ParentBased::new(Box::new(ConsistentRatio::new(ratio)))));
    let provider = SdkTracerProvider::builder().with_sampler(sampler).with_span_processor(processor).build();
    Setup { provider, exporter, overflows, decisions }
}

impl Setup {
    /// A request: a root with one child carrying `attributes`, the child failed when `failed`.
    fn request(&self, attributes: Vec<KeyValue>, failed: bool) {
        let tracer = self.provider.tracer("t");
        let cx = Context::new().with_span(tracer.start("http-request"));
        let mut child = tracer.start_with_context("decode", &cx);
        child.set_attributes(attributes);
        if failed {
            child.set_status(Status::error("engine failed"));
        }
        child.end();
        cx.span().end();
    }

    /// A worker's part of a request its caller in another process made, the caller having
    /// said it will tell its decision: a server span with a remote parent and one child;
    /// returns the trace.
    fn served(&self, failed: bool) -> TraceId {
        self.served_for(failed, true)
    }

    fn served_for(&self, failed: bool, caller_will_tell: bool) -> TraceId {
        let tracer = self.provider.tracer("t");
        let caller = SpanContext::new(
            TraceId::from(fastrand::u128(1..)),
            SpanId::from(7u64),
            TraceFlags::default(),
            true,
            TraceState::NONE,
        );
        if caller_will_tell {
            self.decisions.caller_will_tell(caller.trace_id());
        }
        let cx = Context::new().with_remote_span_context(caller.clone());
        let cx = cx.with_span(tracer.start_with_context("handle_payload", &cx));
        let mut child = tracer.start_with_context("decode", &cx);
        if failed {
            child.set_status(Status::error("engine failed"));
        }
        child.end();
        cx.span().end();
        caller.trace_id()
    }

    fn exported(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().unwrap()
    }
}

fn kept_by(span: &SpanData) -> Option<String> {
    attribute(span, KEPT_BY).map(|value| value.as_str().into_owned())
}

#[test]
fn an_ordinary_request_is_dropped_and_a_failed_one_kept_whole() {
    let setup = setup("error,cancelled,ttft>500ms", 0.0, false, ROOMY);
    setup.request(vec![KeyValue::new("ttft_ms", 20.0)], false);
    assert!(setup.exported().is_empty(), "nothing matched: dropped");

    setup.request(vec![], true);
    let spans = setup.exported();
    assert_eq!(spans.len(), 2, "the whole trace");
    assert!(spans.iter().all(|span| span.span_context.is_sampled()), "exported as sampled");
    let root = spans.iter().find(|span| span.name == "http-request").unwrap();
    assert_eq!(kept_by(root).as_deref(), Some("error"));
    assert_eq!(
        kept_by(spans.iter().find(|span| span.name == "decode").unwrap()),
        None,
        "only local roots say why"
    );
    assert_eq!(root.span_context.trace_state().header(), "", "a trace kept by a rule claims no probability");
}

#[test]
fn each_rule_names_itself() {
    let cases: [(&str, Vec<KeyValue>, Option<&str>); 5] = [
        ("ttft>500ms", vec![KeyValue::new("ttft_ms", 600.0)], Some("ttft>500ms")),
        ("ttft>500ms", vec![KeyValue::new("ttft_ms", 400.0)], None),
        ("itl_p99>0.2s", vec![KeyValue::new("itl_p99_ms", 250.0)], Some("itl_p99>200ms")),
        ("cancelled", vec![KeyValue::new("cancelled", true)], Some("cancelled")),
        ("error", vec![KeyValue::new("cancelled", true)], None),
    ];
    for (rules, attributes, expected) in cases {
        let setup = setup(rules, 0.0, false, ROOMY);
        setup.request(attributes, false);
        let roots: Vec<Option<String>> =
            setup.exported().iter().filter(|span| span.name == "http-request").map(kept_by).collect();
        match expected {
            Some(rule) => assert_eq!(roots, [Some(rule.to_owned())], "{rules}"),
            None => assert!(roots.is_empty(), "{rules}: {roots:?}"),
        }
    }
    let setup = setup("duration>10ms", 0.0, false, ROOMY);
    let tracer = setup.provider.tracer("t");
    let mut long = tracer.start("long");
    std::thread::sleep(Duration::from_millis(15));
    long.end();
    assert_eq!(kept_by(&setup.exported()[0]).as_deref(), Some("duration>10ms"));
}

#[test]
fn head_sampled_traces_go_out_at_once_unmarked() {
    let setup = setup("error", 1.0, false, ROOMY);
    let tracer = setup.provider.tracer("t");
    let cx = Context::new().with_span(tracer.start("http-request"));
    tracer.start_with_context("decode", &cx).end();
    assert_eq!(setup.exported().len(), 1, "not held while its root is open");
    cx.span().end();
    let spans = setup.exported();
    assert_eq!(spans.len(), 2);
    assert!(spans.iter().all(|span| kept_by(span).is_none()));
    assert_eq!(spans[1].span_context.trace_state().header(), "ot=th:0");
}

/// A frontend and its worker in one process: the worker's part (a remote parent) ends first;
/// the decision waits for the frontend's root, whose TTFT matches, and keeps both parts.
#[test]
fn the_decision_waits_for_every_span_of_the_trace_in_the_process() {
    let setup = setup("ttft>100ms", 0.0, false, ROOMY);
    let tracer = setup.provider.tracer("t");
    let frontend = Context::new().with_span(tracer.start("http-request"));
    let remote = SpanContext::new(
        frontend.span().span_context().trace_id(),
        SpanId::from(7u64),
        TraceFlags::default(),
        true,
        TraceState::NONE,
    );
    let worker = Context::new().with_remote_span_context(remote);
    tracer.start_with_context("handle_payload", &worker).end();
    assert!(setup.exported().is_empty(), "undecided while the frontend's span is open");
    frontend.span().set_attribute(KeyValue::new("ttft_ms", 150.0));
    frontend.span().end();
    let spans = setup.exported();
    assert_eq!(spans.len(), 2);
    assert!(
        spans.iter().all(|span| kept_by(span).as_deref() == Some("ttft>100ms")),
        "both local roots marked"
    );
}

#[test]
fn in_summary_mode_a_dropped_request_keeps_its_root_alone() {
    let setup = setup("error", 0.0, true, ROOMY);
    setup.request(vec![KeyValue::new("x_request_id", "req-1")], false);
    let spans = setup.exported();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name, "http-request");
    assert_eq!(attribute(&spans[0], SUMMARY), Some(&Value::Bool(true)));
    setup.request(vec![], true);
    assert_eq!(setup.exported().len(), 3, "a kept request still comes whole");
}

/// Twenty requests whose roots stay open, with room for ten spans: the oldest are decided as
/// the head sampler decided them (dropped) and counted; no more than the bound is ever held.
#[test]
fn held_spans_stay_within_their_bounds() {
    let small = setup("error", 0.0, false, KeepLimits { spans: 10, ..ROOMY });
    let tracer = small.provider.tracer("t");
    let mut roots = Vec::new();
    for _ in 0..20 {
        let cx = Context::new().with_span(tracer.start("http-request"));
        let mut child = tracer.start_with_context("decode", &cx);
        child.set_status(Status::error("failed"));
        child.end();
        roots.push(cx);
    }
    assert_eq!(small.overflows.load(Ordering::Relaxed), 10);
    for cx in roots {
        cx.span().end();
    }
    // The ten whose children were dropped early end alone (no error): dropped; the other ten kept.
    assert_eq!(small.exported().len(), 20);
    let bytes =
        setup("error", 0.0, false, KeepLimits { bytes: 4 * std::mem::size_of::<SpanData>(), ..ROOMY });
    for _ in 0..10 {
        let cx = Context::new().with_span(bytes.provider.tracer("t").start("open"));
        bytes.provider.tracer("t").start_with_context("child", &cx).end();
        std::mem::forget(cx);
    }
    assert!(bytes.overflows.load(Ordering::Relaxed) >= 6, "the byte bound evicts too");
}

/// A worker's part of a request that no rule here matches waits; the caller's notice keeps
/// it whole, marked with the caller's rule; a notice for a trace that was never seen is
/// remembered for when it comes.
#[test]
fn a_finished_part_waits_for_its_callers_decision() {
    let setup = setup("error", 0.0, false, PATIENT);
    let trace = setup.served(false);
    assert!(setup.exported().is_empty(), "undecided: waiting");
    setup.decisions.told(trace, "duration>30000ms");
    let spans = setup.exported();
    assert_eq!(spans.len(), 2, "the whole part");
    let root = spans.iter().find(|span| span.name == "handle_payload").unwrap();
    assert_eq!(kept_by(root).as_deref(), Some("duration>30000ms"));
    assert_eq!(setup.decisions.kept(trace).as_deref(), Some("duration>30000ms"));
    setup.decisions.told(trace, "cancelled");
    assert_eq!(setup.exported().len(), 2, "a second notice changes nothing");
}

#[test]
fn a_part_whose_caller_will_not_tell_is_dropped_at_once() {
    let setup = setup("error", 0.0, true, PATIENT);
    setup.served_for(false, false);
    assert_eq!(setup.exported().len(), 1, "its summary, at once");
    setup.served_for(true, false);
    assert_eq!(setup.exported().len(), 3, "a part a rule keeps, at once");
}

#[test]
fn past_its_grace_time_a_waiting_part_is_dropped() {
    let setup = setup("error", 0.0, true, KeepLimits { grace: Duration::from_millis(20), ..ROOMY });
    let trace = setup.served(false);
    assert!(setup.exported().is_empty(), "no summary while the caller may still keep it");
    std::thread::sleep(Duration::from_millis(30));
    setup.served(false); // any span's end tidies
    let spans = setup.exported();
    assert_eq!(spans.len(), 1, "the first part, past its grace, reduced to its summary");
    assert_eq!(spans[0].span_context.trace_id(), trace);
    assert_eq!(attribute(&spans[0], SUMMARY), Some(&Value::Bool(true)));
    setup.decisions.told(trace, "error");
    assert_eq!(setup.exported().len(), 1, "too late: nothing more");
}

#[test]
fn waiting_parts_count_against_the_bounds() {
    let setup = setup("error", 0.0, false, KeepLimits { spans: 4, ..PATIENT });
    let traces: Vec<TraceId> = (0..4).map(|_| setup.served(false)).collect();
    assert_eq!(setup.overflows.load(Ordering::Relaxed), 2, "two parts of two spans fit");
    setup.decisions.told(traces[0], "error");
    assert!(setup.exported().is_empty(), "the oldest was dropped to make room");
    setup.decisions.told(traces[3], "error");
    assert_eq!(setup.exported().len(), 2);
}

/// A trace kept here is told to every peer called for it, once each, with the rule; a call made
/// after the decision hears at once.
#[test]
fn the_peers_called_for_a_kept_trace_hear_it() {
    let setup = setup("error", 0.0, false, ROOMY);
    let heard = Arc::new(Mutex::new(Vec::new()));
    let callee = |name: &'static str| {
        let heard = Arc::clone(&heard);
        crate::decisions::Callee::new(move |trace, rule| {
            heard.lock().unwrap().push((name, trace, rule.to_owned()))
        })
    };
    let (prefill, decode) = (callee("prefill"), callee("decode"));
    let tracer = setup.provider.tracer("t");
    let cx = Context::new().with_span(tracer.start("http-request"));
    let trace = cx.span().span_context().trace_id();
    setup.decisions.calling(trace, &prefill);
    setup.decisions.calling(trace, &decode);
    setup.decisions.calling(trace, &decode);
    cx.span().set_status(Status::error("worker failed"));
    cx.span().end();
    let told = |name| (name, trace, "error".to_owned());
    assert_eq!(*heard.lock().unwrap(), [told("prefill"), told("decode")]);
    setup.decisions.calling(trace, &callee("retry"));
    assert_eq!(heard.lock().unwrap().last(), Some(&told("retry")));

    let dropped = Context::new().with_span(tracer.start("http-request"));
    setup.decisions.calling(dropped.span().span_context().trace_id(), &prefill);
    dropped.span().end();
    assert_eq!(heard.lock().unwrap().len(), 3, "a dropped trace tells no one");
}
