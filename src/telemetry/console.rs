//! `OTEL_TRACES_EXPORTER=console`: each finished trace of this process, printed on stderr as a
//! waterfall, or as one JSON object when JSON Lines logs share the stream: one tree per trace,
//! once every span of it that this process started has ended (a frontend and its workers in
//! one process, or a cancelled request whose spans end in any order, still print one tree).

use std::fmt::Write as _;
use std::io::Write as _;
#[cfg(test)]
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use opentelemetry::trace::{Span as _, Status};
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;

use super::jsonl::{push_json_string, write_rfc3339};
use super::open_traces::OpenTraces;
use super::waterfall::{render_waterfall, WaterfallSpan};

/// Spans held while their trace still has open spans here; beyond this, the oldest trace is
/// printed as it is, so a span that never ends cannot grow memory without bound.
const MAX_PENDING_SPANS: usize = 4096;

/// How a finished trace is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// The waterfall, for people.
    Text,
    /// One JSON object per trace, one line, beside JSON Lines logs.
    Json,
}

/// Where it is written.
#[derive(Clone, Debug)]
pub(crate) enum Sink {
    Stderr,
    #[cfg(test)]
    Capture(Arc<Mutex<Vec<String>>>),
}

/// Counts each trace's open spans as they start and end, groups the ended ones by trace, and
/// writes a trace when its last open span here ends. It writes on the thread that ended that
/// span: a console is for development, not for a request path under load.
#[derive(Debug)]
pub(crate) struct ConsoleProcessor {
    format: Format,
    sink: Sink,
    service: String,
    pending: Mutex<OpenTraces>,
}

impl ConsoleProcessor {
    pub(crate) fn new(format: Format, sink: Sink) -> Self {
        Self { format, sink, service: String::new(), pending: Mutex::default() }
    }

    fn write(&self, spans: Vec<SpanData>) {
        let spans: Vec<WaterfallSpan> = spans.into_iter().map(|span| self.waterfall_span(span)).collect();
        let text = match self.format {
            Format::Text => render_waterfall(&spans, None),
            Format::Json => json_trace(&spans),
        };
        match &self.sink {
            // One write under the lock: a trace never interleaves with log lines.
            Sink::Stderr => {
                let _ = std::io::stderr().lock().write_all(text.as_bytes());
            }
            #[cfg(test)]
            Sink::Capture(out) => out.lock().unwrap_or_else(PoisonError::into_inner).push(text),
        }
    }

    fn waterfall_span(&self, span: SpanData) -> WaterfallSpan {
        WaterfallSpan {
            trace_id: span.span_context.trace_id(),
            span_id: span.span_context.span_id(),
            parent_span_id: span.parent_span_id,
            name: span.name.into_owned(),
            service: self.service.clone(),
            start: span.start_time,
            end: span.end_time,
            attributes: span
                .attributes
                .into_iter()
                .map(|kv| (kv.key.as_str().to_owned(), kv.value.as_str().into_owned()))
                .collect(),
            error: match span.status {
                Status::Error { description } => Some(description.into_owned()),
                _ => None,
            },
            links: span.links.links.len(),
        }
    }

    /// Prints every trace still held (at shutdown).
    fn flush_all(&self) {
        let traces = self.pending().drain();
        traces.into_iter().filter(|spans| !spans.is_empty()).for_each(|spans| self.write(spans));
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, OpenTraces> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SpanProcessor for ConsoleProcessor {
    fn on_start(&self, span: &mut Span, _cx: &Context) {
        self.pending().started(span.span_context().trace_id());
    }

    fn on_end(&self, span: SpanData) {
        let ready: Vec<Vec<SpanData>> = {
            let mut pending = self.pending();
            // Only sampled spans are printed; the others count down their trace's open spans.
            let sampled = span.span_context.is_sampled();
            let mut ready: Vec<_> = pending.ended(span, sampled).into_iter().collect();
            ready.extend(pending.evict_while(|spans, _| spans > MAX_PENDING_SPANS));
            ready
        };
        ready.into_iter().filter(|spans| !spans.is_empty()).for_each(|spans| self.write(spans));
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
        self.flush_all();
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.service = resource
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .map(|value| value.as_str().into_owned())
            .unwrap_or_default();
    }
}

/// `{"time","level","target","message","trace_id","x_request_id","duration_ms","spans":[...]}`
/// on one line, each span with its name, service, ids, start offset, duration and attributes.
fn json_trace(spans: &[WaterfallSpan]) -> String {
    let mut out = String::with_capacity(256 * spans.len());
    out.push_str("{\"time\":\"");
    write_rfc3339(&mut out, SystemTime::now());
    out.push_str("\",\"level\":\"INFO\",\"target\":\"tokentrace::console\",\"message\":\"trace\"");
    let start = spans.iter().map(|s| s.start).min().unwrap_or(SystemTime::UNIX_EPOCH);
    let end = spans.iter().map(|s| s.end).max().unwrap_or(start);
    let offset_ms = |t: SystemTime| t.duration_since(start).map_or(0.0, |d| d.as_secs_f64() * 1e3);
    if let Some(first) = spans.first() {
        write!(out, ",\"trace_id\":\"{}\"", first.trace_id).ok();
    }
    let ids: std::collections::HashSet<_> = spans.iter().map(|s| s.span_id).collect();
    if let Some(id) =
        spans.iter().filter(|s| !ids.contains(&s.parent_span_id)).find_map(|s| s.attribute("x_request_id"))
    {
        out.push_str(",\"x_request_id\":");
        push_json_string(&mut out, id);
    }
    write!(out, ",\"duration_ms\":{:.3},\"spans\":[", offset_ms(end)).ok();
    for (i, span) in spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        push_json_string(&mut out, &span.name);
        out.push_str(",\"service\":");
        push_json_string(&mut out, &span.service);
        write!(
            out,
            ",\"span_id\":\"{}\",\"parent_span_id\":\"{}\",\"start_ms\":{:.3},\"duration_ms\":{:.3}",
            span.span_id,
            span.parent_span_id,
            offset_ms(span.start),
            offset_ms(span.end) - offset_ms(span.start)
        )
        .ok();
        if let Some(error) = &span.error {
            out.push_str(",\"error\":");
            push_json_string(&mut out, error);
        }
        out.push_str(",\"attributes\":{");
        for (j, (key, value)) in span.attributes.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            push_json_string(&mut out, key);
            out.push(':');
            push_json_string(&mut out, value);
        }
        out.push_str("}}");
    }
    out.push_str("]}\n");
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{Span, TraceContextExt, Tracer, TracerProvider};
    use opentelemetry::{Context, KeyValue};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;

    fn provider(format: Format) -> (SdkTracerProvider, Arc<Mutex<Vec<String>>>) {
        let out = Arc::default();
        let processor = ConsoleProcessor::new(format, Sink::Capture(Arc::clone(&out)));
        let provider = SdkTracerProvider::builder()
            .with_resource(Resource::builder_empty().with_service_name("svc").build())
            .with_span_processor(processor)
            .build();
        (provider, out)
    }

    /// A root with two children, the second with a child of its own.
    fn record_trace(provider: &SdkTracerProvider) {
        let tracer = provider.tracer("test");
        let mut root = tracer.start("http-request");
        root.set_attribute(KeyValue::new("x_request_id", "req-7"));
        let cx = Context::new().with_span(root);
        tracer.start_with_context("generate", &cx).end();
        let mut decode = tracer.start_with_context("decode", &cx);
        decode.set_attribute(KeyValue::new("ttft_ms", 12.5));
        let decode_cx = cx.with_span(decode);
        tracer.start_with_context("step", &decode_cx).end();
        decode_cx.span().end();
        cx.span().end();
    }

    #[test]
    fn a_trace_is_printed_once_as_a_tree_when_its_root_ends() {
        let (provider, out) = provider(Format::Text);
        record_trace(&provider);
        let printed = out.lock().unwrap().clone();
        assert_eq!(printed.len(), 1, "one trace, printed once: {printed:?}");
        let lines: Vec<&str> = printed[0].lines().collect();
        assert!(lines[0].starts_with("request req-7  trace "), "{}", lines[0]);
        assert!(lines[0].ends_with("(4 spans, 1 services)"), "{}", lines[0]);
        let labels: Vec<String> = lines[1..].iter().map(|line| line[2..36].trim_end().to_owned()).collect();
        assert_eq!(labels, ["http-request", "├─ generate", "└─ decode", "   └─ step"]);
        assert!(lines[1..].iter().all(|line| line.contains(" svc ")));
        assert!(lines[3].ends_with("ttft 12.5 ms"), "{}", lines[3]);
    }

    /// A frontend and its worker in one process: the worker's `handle_payload` (a remote parent,
    /// through propagation) ends before the frontend's spans, and a cancelled request's phases end
    /// after it; still one tree, printed once, when the last span ends.
    #[test]
    fn local_roots_of_one_trace_in_one_process_print_as_one_tree() {
        let (provider, out) = provider(Format::Text);
        let tracer = provider.tracer("test");
        let root = tracer.start("http-request");
        let cx = Context::new().with_span(root);
        let client = cx.with_span(tracer.start_with_context("generate", &cx));
        let remote = Context::new().with_remote_span_context(client.span().span_context().clone());
        let worker = remote.with_span(tracer.start_with_context("handle_payload", &remote));
        let decode = tracer.start_with_context("decode", &worker);
        worker.span().end();
        assert!(out.lock().unwrap().is_empty(), "the worker's root ended, the trace is still open");
        client.span().end();
        cx.span().end();
        assert!(out.lock().unwrap().is_empty(), "decode is still open");
        drop(decode); // a cancelled stream's phase ends last
        let printed = out.lock().unwrap().clone();
        assert_eq!(printed.len(), 1, "one tree: {printed:?}");
        assert!(printed[0].contains("(4 spans, 1 services)"), "{}", printed[0]);
    }

    #[test]
    fn with_json_lines_a_trace_is_one_json_object_on_one_line() {
        let (provider, out) = provider(Format::Json);
        record_trace(&provider);
        let printed = out.lock().unwrap().clone();
        assert_eq!(printed.len(), 1);
        assert_eq!(printed[0].matches('\n').count(), 1, "one line");
        assert!(printed[0].starts_with("{\"time\":\""));
        assert!(printed[0].contains("\"x_request_id\":\"req-7\""));
        assert_eq!(printed[0].matches("\"name\":").count(), 4);
        assert!(printed[0].contains("\"ttft_ms\":\"12.5\""));
    }

    #[test]
    fn traces_with_a_span_that_never_ends_are_bounded_and_printed_at_shutdown() {
        let (provider, out) = provider(Format::Text);
        let tracer = provider.tracer("test");
        let open_root = tracer.start("never-ends");
        let cx = Context::new().with_span(open_root);
        for _ in 0..MAX_PENDING_SPANS + 10 {
            tracer.start_with_context("child", &cx).end();
        }
        assert_eq!(out.lock().unwrap().len(), 1, "the bound printed the held trace early");
        tracer.start_with_context("late", &cx).end();
        provider.shutdown().unwrap();
        let printed = out.lock().unwrap().clone();
        assert_eq!(printed.len(), 2, "what was held is printed at shutdown");
        drop(cx);
    }
}
