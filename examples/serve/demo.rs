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

use crate::receiver::{string_value, Received, ReceivedSpan};

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
