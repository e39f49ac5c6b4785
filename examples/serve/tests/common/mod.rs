//! What the tests of the bundled example share: the `serve` processes they start, the
//! environment that exports to the test's receiver, and questions about the spans received.

// Each test crate uses its own share of these.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::Full;

use crate::demo;
use crate::launcher::Component;
use crate::receiver::{self, string_value, ReceivedSpan};

/// The `serve` binary cargo built for these tests.
pub fn serve_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_serve"))
}

pub fn export_env(receiver: &receiver::Receiver, service: &str) -> Vec<(String, String)> {
    [
        ("OTEL_EXPORT_ENABLED", "true".to_owned()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint()),
        ("OTEL_SERVICE_NAME", service.to_owned()),
        ("DYN_LOG", "info".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Starts `serve <args>`. A worker or frontend runs the toy engine unless `args` name one: most
/// tests need its speed, not the real model (which `real_model.rs` runs).
pub fn spawn(name: &'static str, args: &[&str], env: Vec<(String, String)>) -> Component {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if matches!(args[0].as_str(), "worker" | "frontend") && !args.iter().any(|a| a == "--engine") {
        args.extend(["--engine".to_owned(), "toy".to_owned()]);
    }
    Component::spawn_program(&serve_exe(), name, &args, &env, true).unwrap()
}

/// An aggregated worker (`step_ms` per token) and a frontend in front of it.
pub fn aggregated(receiver: &receiver::Receiver, step_ms: &str) -> (Component, Component, SocketAddr) {
    let worker = spawn(
        "worker",
        &["worker", "--role", "agg", "--step-ms", step_ms],
        export_env(receiver, "dynamo-worker-vllm"),
    );
    let frontend = spawn(
        "frontend",
        &["frontend", "--listen", "127.0.0.1:0", "--worker", &worker.addr],
        export_env(receiver, "dynamo-frontend"),
    );
    let addr = frontend.addr.parse().unwrap();
    (worker, frontend, addr)
}

/// Stops components (which flushes their telemetry) off the async runtime.
pub async fn stop(components: Vec<Component>) {
    tokio::task::spawn_blocking(move || components.into_iter().for_each(Component::stop)).await.unwrap();
}

pub fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.span.name == name).collect()
}

/// Whether the trace of `request_id` has a span of each of `names` yet.
pub fn has_spans(received: &receiver::Received, request_id: &str, names: &[&str]) -> bool {
    let spans = demo::trace_of(received, request_id);
    names.iter().all(|name| spans.iter().any(|s| s.span.name == *name))
}

pub fn one<'a>(spans: &'a [ReceivedSpan], name: &str, service: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = named(spans, name).into_iter().filter(|s| s.service == service).collect();
    assert_eq!(
        found.len(),
        1,
        "one {name} in {service}; have {:?}",
        spans.iter().map(|s| (&s.span.name, &s.service)).collect::<Vec<_>>()
    );
    found[0]
}

pub fn assert_child(parent: &ReceivedSpan, child: &ReceivedSpan) {
    assert_eq!(
        child.span.parent_span_id, parent.span.span_id,
        "{} is a child of {}",
        child.span.name, parent.span.name
    );
    assert_eq!(child.span.trace_id, parent.span.trace_id);
}

pub fn attr(span: &ReceivedSpan, key: &str) -> Option<String> {
    string_value(&span.span.attributes, key)
}

/// Starts a streamed request and returns its response body, headers read.
pub async fn open_stream(addr: SocketAddr, id: &str, max_tokens: u32) -> hyper::body::Incoming {
    let client = demo::http_client();
    let body = serde_json::json!({"messages": [{"role": "user", "content": "go"}], "max_tokens": max_tokens, "stream": true});
    let request = http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-request-id", id)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body()
}

/// Runs OpenAI's official Python client (`openai_client.py <base url> <args>`) against the
/// frontend at `frontend`, and requires it to pass; without the `openai` package it says it
/// skipped, unless `TOKENTRACE_REQUIRE_OPENAI` is set (CI). `components` stop once it has run.
pub async fn run_openai_client(frontend: &str, args: &[&str], components: Vec<Component>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let base_url = format!("http://{frontend}/v1");
    let output = tokio::process::Command::new("python3")
        .args([script, &base_url])
        .args(args)
        .output()
        .await
        .expect("python3 runs");
    stop(components).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(77) {
        assert!(
            std::env::var_os("TOKENTRACE_REQUIRE_OPENAI").is_none(),
            "TOKENTRACE_REQUIRE_OPENAI is set but {stderr}"
        );
        eprintln!("skipped: {stderr}");
        return;
    }
    assert!(output.status.success(), "{stderr}{}", String::from_utf8_lossy(&output.stdout));
}
