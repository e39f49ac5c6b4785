//! One trace as a text waterfall: the span tree, a time bar and the inference figures per
//! span. The console exporter (`OTEL_TRACES_EXPORTER=console`) and the example's demo print
//! with it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::SystemTime;

use opentelemetry::trace::{SpanId, TraceId};

/// One finished span, as the waterfall needs it.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use opentelemetry::trace::{SpanId, TraceId};
/// use tokentrace::telemetry::WaterfallSpan;
///
/// let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let span = WaterfallSpan {
///     trace_id: TraceId::from(1u128),
///     span_id: SpanId::from(1u64),
///     parent_span_id: SpanId::INVALID,
///     name: "http-request".into(),
///     service: "dynamo-frontend".into(),
///     start,
///     end: start + Duration::from_millis(20),
///     attributes: vec![("x_request_id".into(), "req-1".into())],
///     error: None,
///     links: 0,
/// };
/// assert_eq!(span.attribute("x_request_id"), Some("req-1"));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct WaterfallSpan {
    /// The trace.
    pub trace_id: TraceId,
    /// The span.
    pub span_id: SpanId,
    /// Its parent (`SpanId::INVALID` for a root).
    pub parent_span_id: SpanId,
    /// The span name.
    pub name: String,
    /// The `service.name` of the process that recorded it.
    pub service: String,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its attributes, as text.
    pub attributes: Vec<(String, String)>,
    /// The error description, when its status is an error.
    pub error: Option<String>,
    /// How many spans it links to.
    pub links: usize,
}

impl WaterfallSpan {
    /// The value of attribute `key`.
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// # use opentelemetry::trace::{SpanId, TraceId};
    /// # use tokentrace::telemetry::WaterfallSpan;
    /// # let span = WaterfallSpan { trace_id: TraceId::from(1u128), span_id: SpanId::from(1u64),
    /// #     parent_span_id: SpanId::INVALID, name: "decode".into(), service: "worker".into(),
    /// #     start: SystemTime::UNIX_EPOCH, end: SystemTime::UNIX_EPOCH,
    /// #     attributes: vec![("ttft_ms".into(), "12.5".into())], error: None, links: 0 };
    /// assert_eq!(span.attribute("ttft_ms"), Some("12.5"));
    /// assert_eq!(span.attribute("absent"), None);
    /// ```
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn parsed(&self, key: &str) -> Option<f64> {
        self.attribute(key)?.parse().ok()
    }
}

/// Width of the time bar, in characters.
const BAR_WIDTH: usize = 32;

/// Renders the spans of one trace: a header line (the root's `x_request_id`, the trace id, the
/// duration, how many spans and services, and `log_records` when given), then one line per
/// span in tree order with its service, duration, time bar and figures (tokens, TTFT, ITL
/// p50/p99, KV bytes, cancelled, error, links). Spans whose parent is not among `spans` are
/// roots; several roots are drawn one after the other.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use opentelemetry::trace::{SpanId, TraceId};
/// use tokentrace::telemetry::{render_waterfall, WaterfallSpan};
///
/// let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let span = |id: u64, parent: u64, name: &str, from: u64, to: u64, attributes: &[(&str, &str)]| WaterfallSpan {
///     trace_id: TraceId::from(0xabcu128),
///     span_id: SpanId::from(id),
///     parent_span_id: SpanId::from(parent),
///     name: name.into(),
///     service: "svc".into(),
///     start: t0 + Duration::from_millis(from),
///     end: t0 + Duration::from_millis(to),
///     attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
///     error: None,
///     links: 0,
/// };
/// let text = render_waterfall(
///     &[
///         span(1, 0, "http-request", 0, 32, &[("x_request_id", "req-1"), ("ttft_ms", "8")]),
///         span(2, 1, "generate", 8, 24, &[]),
///     ],
///     None,
/// );
/// let lines: Vec<&str> = text.lines().collect();
/// assert_eq!(lines[0], "request req-1  trace 00000000000000000000000000000abc  32.0 ms  (2 spans, 1 services)");
/// assert!(lines[1].starts_with("  http-request"));
/// assert!(lines[1].ends_with("████████████████████████████████  ttft 8.0 ms"));
/// assert!(lines[2].starts_with("  └─ generate"));
/// assert!(lines[2].ends_with("········████████████████········"));
/// ```
pub fn render_waterfall(spans: &[WaterfallSpan], log_records: Option<usize>) -> String {
    let mut out = String::new();
    let Some(first) = spans.first() else { return out };
    let ids: HashSet<SpanId> = spans.iter().map(|s| s.span_id).collect();
    let mut children: HashMap<SpanId, Vec<&WaterfallSpan>> = HashMap::new();
    let mut roots = Vec::new();
    for span in spans {
        if ids.contains(&span.parent_span_id) {
            children.entry(span.parent_span_id).or_default().push(span);
        } else {
            roots.push(span);
        }
    }
    for list in children.values_mut().chain([&mut roots]) {
        list.sort_by_key(|s| s.start);
    }
    let start = spans.iter().map(|s| s.start).min().unwrap_or(first.start);
    let end = spans.iter().map(|s| s.end).max().unwrap_or(start);
    let total = nanos_between(start, end).max(1);

    let request = roots.iter().find_map(|root| root.attribute("x_request_id"));
    match request {
        Some(id) => write!(out, "request {id}  trace {}", first.trace_id),
        None => write!(out, "trace {}", first.trace_id),
    }
    .ok();
    let services = spans.iter().map(|s| s.service.as_str()).collect::<BTreeSet<_>>().len();
    write!(out, "  {:.1} ms  ({} spans, {services} services", ms(total), spans.len()).ok();
    match log_records {
        Some(logs) => out.push_str(&format!(", {logs} log records)\n")),
        None => out.push_str(")\n"),
    }
    let frame = Frame { children: &children, start, total };
    for root in roots {
        frame.line(&mut out, root, "", true, true);
    }
    out
}

/// What every line of one waterfall shares.
struct Frame<'a> {
    children: &'a HashMap<SpanId, Vec<&'a WaterfallSpan>>,
    start: SystemTime,
    total: u64,
}

impl Frame<'_> {
    fn line(&self, out: &mut String, span: &WaterfallSpan, prefix: &str, last: bool, root: bool) {
        let from = nanos_between(self.start, span.start);
        let to = nanos_between(self.start, span.end).max(from);
        let scale = |t: u64| ((t as f64 / self.total as f64) * BAR_WIDTH as f64).round() as usize;
        let bar_start = scale(from).min(BAR_WIDTH - 1);
        let bar_end = scale(to).clamp(bar_start + 1, BAR_WIDTH);
        let bar: String =
            (0..BAR_WIDTH).map(|i| if (bar_start..bar_end).contains(&i) { '█' } else { '·' }).collect();
        let branch = match (root, last) {
            (true, _) => "",
            (false, true) => "└─ ",
            (false, false) => "├─ ",
        };
        let label = format!("{prefix}{branch}{}", span.name);
        let line = format!(
            "  {label:<34} {:<22} {:>8.1} ms  {bar}  {}",
            span.service,
            ms(to - from),
            notes(span).join(", ")
        );
        out.push_str(line.trim_end());
        out.push('\n');
        let child_prefix = match (root, last) {
            (true, _) => String::new(),
            (false, true) => format!("{prefix}   "),
            (false, false) => format!("{prefix}│  "),
        };
        if let Some(kids) = self.children.get(&span.span_id) {
            for (i, kid) in kids.iter().enumerate() {
                self.line(out, kid, &child_prefix, i + 1 == kids.len(), false);
            }
        }
    }
}

/// The figures a line shows after its bar.
fn notes(span: &WaterfallSpan) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(tokens) = span.attribute("gen_ai.usage.output_tokens") {
        notes.push(format!("{tokens} tokens"));
    }
    if let Some(ttft) = span.parsed("ttft_ms") {
        notes.push(format!("ttft {ttft:.1} ms"));
    }
    if let (Some(p50), Some(p99)) = (span.parsed("itl_p50_ms"), span.parsed("itl_p99_ms")) {
        notes.push(format!("itl p50 {p50:.1} / p99 {p99:.1} ms"));
    }
    if let Some(bytes) = span.attribute("kv.bytes") {
        notes.push(format!("{bytes} B"));
    }
    if span.attribute("cancelled") == Some("true") {
        notes.push("cancelled".into());
    }
    if let Some(error) = &span.error {
        notes.push(format!("ERROR {error}"));
    }
    if span.links > 0 {
        notes.push(format!("{} link{}", span.links, if span.links == 1 { "" } else { "s" }));
    }
    notes
}

fn nanos_between(from: SystemTime, to: SystemTime) -> u64 {
    to.duration_since(from).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_known_disaggregated_trace_renders_line_by_line() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let span =
            |id: u64, parent: u64, name: &str, service: &str, ms: (u64, u64), attributes: &[(&str, &str)]| {
                WaterfallSpan {
                    trace_id: TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128),
                    span_id: SpanId::from(id),
                    parent_span_id: SpanId::from(parent),
                    name: name.into(),
                    service: service.into(),
                    start: t0 + Duration::from_millis(ms.0),
                    end: t0 + Duration::from_millis(ms.1),
                    attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    error: None,
                    links: 0,
                }
            };
        let mut decode = span(
            6,
            3,
            "decode",
            "dynamo-worker-decode",
            (24, 64),
            &[
                ("gen_ai.usage.output_tokens", "4"),
                ("ttft_ms", "20"),
                ("itl_p50_ms", "10"),
                ("itl_p99_ms", "12.25"),
            ],
        );
        decode.links = 1;
        let mut failed = span(7, 1, "audit", "dynamo-frontend", (60, 64), &[("cancelled", "true")]);
        failed.error = Some("client went away".into());
        let spans = [
            decode,
            span(1, 0, "http-request", "dynamo-frontend", (0, 64), &[("x_request_id", "req-42")]),
            span(2, 1, "generate", "dynamo-frontend", (2, 64), &[]),
            span(3, 2, "handle_payload", "dynamo-worker-decode", (4, 64), &[]),
            span(4, 3, "remote_prefill", "dynamo-worker-decode", (4, 16), &[]),
            span(5, 3, "kv_transfer", "dynamo-worker-decode", (16, 24), &[("kv.bytes", "4096")]),
            failed,
        ];
        let expected = "\
request req-42  trace 4bf92f3577b34da6a3ce929d0e0e4736  64.0 ms  (7 spans, 2 services, 3 log records)
  http-request                       dynamo-frontend            64.0 ms  ████████████████████████████████
  ├─ generate                        dynamo-frontend            62.0 ms  ·███████████████████████████████
  │  └─ handle_payload               dynamo-worker-decode       60.0 ms  ··██████████████████████████████
  │     ├─ remote_prefill            dynamo-worker-decode       12.0 ms  ··██████························
  │     ├─ kv_transfer               dynamo-worker-decode        8.0 ms  ········████····················  4096 B
  │     └─ decode                    dynamo-worker-decode       40.0 ms  ············████████████████████  4 tokens, ttft 20.0 ms, itl p50 10.0 / p99 12.2 ms, 1 link
  └─ audit                           dynamo-frontend             4.0 ms  ······························██  cancelled, ERROR client went away
";
        assert_eq!(render_waterfall(&spans, Some(3)), expected);
        assert_eq!(render_waterfall(&[], None), "");
    }
}
