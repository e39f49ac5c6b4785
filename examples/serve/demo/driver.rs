//! The demo: streamed requests through the running deployment, then each request's trace as
//! a waterfall, read back from the OTLP receiver the components exported to.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde_json::{json, Value};
use tokentrace::opentelemetry::trace::{SpanId, TraceId};
use tokentrace::telemetry::{render_waterfall, WaterfallSpan};

use super::receiver::{string_value, Received, ReceivedSpan};

pub const PROMPTS: [&str; 3] = [
    "Explain distributed tracing in one sentence.",
    "What is time to first token?",
    "Why does inter-token latency matter for streaming?",
];

/// What one streamed request returned.
#[derive(Debug)]
pub struct Answer {
    pub request_id: String,
    pub tokens: usize,
    pub text: String,
    pub elapsed: Duration,
}

/// An HTTP/1 client with `TCP_NODELAY`: without it, a request's body waits for the delayed
/// ACK of its headers (40 ms on Linux), which would swamp every latency measured here.
pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Sends one streamed chat completion and reads its SSE stream to the end.
pub async fn stream_chat(
    frontend: SocketAddr,
    request_id: &str,
    prompt: &str,
    max_tokens: u32,
) -> Result<Answer, String> {
    let client = http_client();
    let body = json!({
        "model": "tokentrace-demo",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        // Greedy: the same question gives the same answer on every engine and deployment.
        "temperature": 0,
        "stream": true,
    });
    let request = http::Request::post(format!("http://{frontend}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-request-id", request_id)
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let response = client.request(request).await.map_err(|e| format!("request failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("frontend answered {}", response.status()));
    }
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let body = String::from_utf8_lossy(&body);
    let mut answer = Answer {
        request_id: request_id.to_owned(),
        tokens: 0,
        text: String::new(),
        elapsed: started.elapsed(),
    };
    for data in body.lines().filter_map(|line| line.strip_prefix("data: ")) {
        if data == "[DONE]" {
            return Ok(answer);
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| format!("bad chunk {data:?}: {e}"))?;
        if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str() {
            answer.text.push_str(text);
            answer.tokens += 1;
        }
        if chunk.get("error").is_some() {
            return Err(format!("stream failed: {data}"));
        }
    }
    Err("the stream ended without [DONE]".into())
}

/// The spans of the trace whose `http-request` span carries `request_id`.
pub fn trace_of(received: &Received, request_id: &str) -> Vec<ReceivedSpan> {
    let spans = received.spans();
    let Some(root) = spans.iter().find(|s| {
        s.span.name == "http-request"
            && string_value(&s.span.attributes, "x_request_id").as_deref() == Some(request_id)
    }) else {
        return Vec::new();
    };
    let trace_id = root.span.trace_id.clone();
    spans.into_iter().filter(|s| s.span.trace_id == trace_id).collect()
}

/// Waits until the traces of all `request_ids` have at least `spans_each` spans and nothing
/// new has arrived for a moment.
pub async fn wait_for_traces(received: &Received, request_ids: &[String], spans_each: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = 0;
    let mut stable_since = Instant::now();
    while Instant::now() < deadline {
        let total = received.spans().len();
        if total != last {
            last = total;
            stable_since = Instant::now();
        }
        let complete = request_ids.iter().all(|id| trace_of(received, id).len() >= spans_each);
        if complete && stable_since.elapsed() > Duration::from_millis(300) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A received span in the form tokentrace's waterfall renderer takes.
fn waterfall_span(span: &ReceivedSpan) -> WaterfallSpan {
    let s = &span.span;
    let id = |bytes: &[u8]| bytes.try_into().map(SpanId::from_bytes).unwrap_or(SpanId::INVALID);
    let at = |nanos: u64| SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos);
    WaterfallSpan {
        trace_id: s.trace_id.as_slice().try_into().map(TraceId::from_bytes).unwrap_or(TraceId::INVALID),
        span_id: id(&s.span_id),
        parent_span_id: id(&s.parent_span_id),
        name: s.name.clone(),
        service: span.service.clone(),
        start: at(s.start_time_unix_nano),
        end: at(s.end_time_unix_nano),
        attributes: s
            .attributes
            .iter()
            .filter_map(|kv| Some((kv.key.clone(), string_value(std::slice::from_ref(kv), &kv.key)?)))
            .collect(),
        error: s
            .status
            .as_ref()
            .filter(|status| status.code == StatusCode::Error as i32)
            .map(|status| status.message.clone()),
        links: s.links.len(),
    }
}

/// Prints one trace as a tree with a time bar per span (tokentrace's renderer, the one
/// `OTEL_TRACES_EXPORTER=console` uses), with the number of log records it correlates.
pub fn print_waterfall(received: &Received, request_id: &str) {
    let spans = trace_of(received, request_id);
    let Some(root) = spans.iter().find(|s| s.span.name == "http-request") else {
        println!("request {request_id}: no trace received");
        return;
    };
    let logs = received.logs().iter().filter(|l| l.record.trace_id == root.span.trace_id).count();
    let spans: Vec<WaterfallSpan> = spans.iter().map(waterfall_span).collect();
    println!();
    print!("{}", render_waterfall(&spans, Some(logs)));
}

/// The frontend's `/metrics`, as OpenMetrics text (with exemplars).
pub async fn read_metrics(frontend: SocketAddr) -> Result<String, String> {
    let request = http::Request::get(format!("http://{frontend}/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = http_client().request(request).await.map_err(|e| e.to_string())?;
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// One histogram of an OpenMetrics text: cumulative `(le, count)` buckets and the exemplars
/// `(le, trace id)`, summed over its label sets.
#[derive(Default)]
struct ScrapedHistogram {
    buckets: Vec<(f64, f64)>,
    exemplars: Vec<(String, String)>,
}

fn scrape(text: &str, name: &str) -> ScrapedHistogram {
    let mut histogram = ScrapedHistogram::default();
    let prefix = format!("{name}_bucket{{");
    for line in text.lines().filter(|line| line.starts_with(&prefix)) {
        let (sample, exemplar) = line.split_once(" # ").map_or((line, None), |(s, e)| (s, Some(e)));
        let Some(le) = sample.split("le=\"").nth(1).and_then(|rest| rest.split('"').next()) else { continue };
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
        let count: f64 = sample.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        match histogram.buckets.iter_mut().find(|(b, _)| *b == bound) {
            Some(slot) => slot.1 += count,
            None => histogram.buckets.push((bound, count)),
        }
        if let Some(trace) =
            exemplar.and_then(|e| e.split("trace_id=\"").nth(1)).and_then(|r| r.split('"').next())
        {
            histogram.exemplars.push((le.to_owned(), trace.to_owned()));
        }
    }
    histogram.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    histogram
}

impl ScrapedHistogram {
    fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |(_, count)| *count)
    }

    /// The `q` quantile, interpolated within its bucket as Prometheus's `histogram_quantile`.
    fn quantile(&self, q: f64) -> Option<f64> {
        let rank = q * self.count();
        let mut lower = (0.0, 0.0);
        for &(bound, count) in &self.buckets {
            if count >= rank && count > 0.0 {
                if bound.is_infinite() {
                    return Some(lower.0);
                }
                let within = (rank - lower.1) / (count - lower.1).max(f64::MIN_POSITIVE);
                return Some(lower.0 + (bound - lower.0) * within);
            }
            lower = (bound, count);
        }
        None
    }
}

/// Prints TTFT and ITL percentiles read back from the frontend's metrics, and one exemplar
/// with the request whose waterfall it opens.
pub fn print_metrics(text: &str, received: &Received, request_ids: &[String]) {
    println!();
    println!("metrics, read back from the frontend's /metrics:");
    for (label, name, what) in [
        ("TTFT", "dynamo_frontend_time_to_first_token_seconds", "requests"),
        ("ITL ", "dynamo_frontend_inter_token_latency_seconds", "gaps"),
    ] {
        let histogram = scrape(text, name);
        let ms = |q: f64| histogram.quantile(q).map_or("-".to_owned(), |s| format!("{:.1} ms", s * 1e3));
        println!("  {label} p50 {:>9}  p99 {:>9}  ({} {what})", ms(0.5), ms(0.99), histogram.count());
    }
    let exemplars = scrape(text, "dynamo_frontend_time_to_first_token_seconds").exemplars;
    let traces: Vec<(String, &String)> = request_ids
        .iter()
        .filter_map(|id| Some((hex(&trace_of(received, id).first()?.span.trace_id), id)))
        .collect();
    match exemplars
        .iter()
        .find_map(|(le, trace)| Some((le, trace, traces.iter().find(|(t, _)| t == trace)?.1)))
    {
        Some((le, trace, id)) => {
            println!("  exemplar: TTFT bucket le={le} -> trace {trace} (request {id}, above)")
        }
        None => println!("  exemplar: none matches a trace printed above"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
