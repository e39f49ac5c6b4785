//! The demo: streamed requests through the running deployment, then each request's trace as
//! a waterfall, read back from the OTLP receiver the components exported to.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde_json::{json, Value};

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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

/// Prints one trace as a tree with a time bar per span.
pub fn print_waterfall(received: &Received, request_id: &str) {
    let spans = trace_of(received, request_id);
    let Some(root) = spans.iter().find(|s| s.span.name == "http-request") else {
        println!("request {request_id}: no trace received");
        return;
    };
    let start = spans.iter().map(|s| s.span.start_time_unix_nano).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.span.end_time_unix_nano).max().unwrap_or(start).max(start + 1);
    let logs = received.logs().iter().filter(|l| l.record.trace_id == root.span.trace_id).count();
    println!();
    println!(
        "request {request_id}  trace {}  {:.1} ms  ({} spans, {} services, {logs} log records)",
        hex(&root.span.trace_id),
        ms(end - start),
        spans.len(),
        spans.iter().map(|s| s.service.as_str()).collect::<std::collections::BTreeSet<_>>().len()
    );
    let mut children: HashMap<Vec<u8>, Vec<&ReceivedSpan>> = HashMap::new();
    for span in &spans {
        children.entry(span.span.parent_span_id.clone()).or_default().push(span);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s.span.start_time_unix_nano);
    }
    print_span(root, "", true, true, &children, start, end);
}

fn print_span(
    span: &ReceivedSpan,
    prefix: &str,
    last: bool,
    root: bool,
    children: &HashMap<Vec<u8>, Vec<&ReceivedSpan>>,
    start: u64,
    end: u64,
) {
    const WIDTH: usize = 32;
    let s = &span.span;
    let (from, to) =
        (s.start_time_unix_nano.saturating_sub(start), s.end_time_unix_nano.saturating_sub(start));
    let scale = |t: u64| ((t as f64 / (end - start) as f64) * WIDTH as f64).round() as usize;
    let (a, b) = (scale(from).min(WIDTH), scale(to).clamp(scale(from) + 1, WIDTH.max(scale(from) + 1)));
    let bar: String = (0..WIDTH).map(|i| if i >= a && i < b { '█' } else { '·' }).collect();
    let branch = if root {
        ""
    } else if last {
        "└─ "
    } else {
        "├─ "
    };
    let label = format!("{prefix}{branch}{}", s.name);
    let mut notes = Vec::new();
    let attr = |key: &str| string_value(&s.attributes, key);
    if let Some(tokens) = attr("gen_ai.usage.output_tokens") {
        notes.push(format!("{tokens} tokens"));
    }
    if let Some(ttft) = attr("ttft_ms").and_then(|v| v.parse::<f64>().ok()) {
        notes.push(format!("ttft {ttft:.1} ms"));
    }
    if let (Some(p50), Some(p99)) = (
        attr("itl_p50_ms").and_then(|v| v.parse::<f64>().ok()),
        attr("itl_p99_ms").and_then(|v| v.parse::<f64>().ok()),
    ) {
        notes.push(format!("itl p50 {p50:.1} / p99 {p99:.1} ms"));
    }
    if let Some(bytes) = attr("kv.bytes") {
        notes.push(format!("{bytes} B"));
    }
    if attr("cancelled").as_deref() == Some("true") {
        notes.push("cancelled".into());
    }
    if s.status.as_ref().is_some_and(|st| st.code == StatusCode::Error as i32) {
        notes.push(format!("ERROR {}", s.status.as_ref().map(|st| st.message.as_str()).unwrap_or_default()));
    }
    if !s.links.is_empty() {
        notes.push("linked to prefill".into());
    }
    println!("  {label:<34} {:<22} {:>8.1} ms  {bar}  {}", span.service, ms(to - from), notes.join(", "));
    let child_prefix =
        if root { String::new() } else { format!("{prefix}{}", if last { "   " } else { "│  " }) };
    if let Some(kids) = children.get(&s.span_id) {
        for (i, kid) in kids.iter().enumerate() {
            print_span(kid, &child_prefix, i + 1 == kids.len(), false, children, start, end);
        }
    }
}
