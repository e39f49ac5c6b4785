//! The frontend metrics: what a request records in each way it can end, exemplars only for
//! sampled requests, the model label's bound, and both exposition formats read back by an
//! independent parser (Prometheus's `promtool`, when installed).

#[path = "support/system.rs"]
mod system;

use futures_util::StreamExt;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use tokentrace::inference::{FinishReason, StatsTarget, StreamOptions, TokenChunk, TokenStream};
use tokentrace::metrics::{Format, FrontendMetrics, MAX_MODELS, OVERFLOW_MODEL};

struct Token {
    last: bool,
}

impl TokenChunk for Token {
    fn token_count(&self) -> u32 {
        1
    }
    fn finish_reason(&self) -> Option<FinishReason> {
        self.last.then_some(FinishReason::Stop)
    }
}

fn tokens(count: usize) -> impl futures_util::Stream<Item = Token> {
    futures_util::stream::iter((0..count).map(move |i| Token { last: i + 1 == count }))
}

fn context(sampled: bool) -> Context {
    let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
    let span = SpanContext::new(
        TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128),
        SpanId::from(0x00f0_67aa_0ba9_02b7_u64),
        flags,
        false,
        TraceState::NONE,
    );
    Context::new().with_remote_span_context(span)
}

/// The value of the sample line that starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|line| line.starts_with(prefix))?.rsplit(' ').next()?.parse().ok()
}

#[tokio::test]
async fn each_ending_is_counted_with_its_status_and_every_gap_reaches_itl() {
    let metrics = FrontendMetrics::new();
    // Success: 8 tokens, 7 gaps.
    let request = metrics.start(&context(true), "m", "chat_completions", true).input_tokens(5);
    TokenStream::new(tokens(8), StatsTarget::Detached, StreamOptions::new())
        .record_metrics(request)
        .count()
        .await;
    // Cancelled: dropped after 2 tokens.
    let request = metrics.start(&context(true), "m", "chat_completions", true);
    let mut stream =
        TokenStream::new(tokens(8), StatsTarget::Detached, StreamOptions::new()).record_metrics(request);
    stream.next().await;
    stream.next().await;
    drop(stream);
    // Error: the engine failed after one token.
    let request = metrics.start(&context(true), "m", "chat_completions", true);
    let items = futures_util::stream::iter([Ok(Token { last: false }), Err("engine failed")]);
    TokenStream::new(items, StatsTarget::Detached, StreamOptions::new())
        .record_metrics(request)
        .count()
        .await;
    // Failed before any token, and a request whose future was dropped before its stream.
    metrics.start(&context(true), "m", "completions", false).failed();
    drop(metrics.start(&context(true), "m", "completions", false));

    let text = metrics.render(Format::Prometheus);
    let requests = |endpoint: &str, kind: &str, status: &str| {
        sample(
            &text,
            &format!(
                r#"dynamo_frontend_requests_total{{model="m",endpoint="{endpoint}",request_type="{kind}",status="{status}"}}"#
            ),
        )
    };
    assert_eq!(requests("chat_completions", "stream", "success"), Some(1.0), "{text}");
    assert_eq!(requests("chat_completions", "stream", "cancelled"), Some(1.0));
    assert_eq!(requests("chat_completions", "stream", "error"), Some(1.0));
    assert_eq!(requests("completions", "unary", "error"), Some(1.0));
    assert_eq!(requests("completions", "unary", "cancelled"), Some(1.0));
    // TTFT: the three streams that produced a token; none for the two that never streamed.
    assert_eq!(sample(&text, r#"dynamo_frontend_time_to_first_token_seconds_count{model="m"}"#), Some(3.0));
    // ITL: 7 gaps + 1 gap (cancelled after 2) + 0 (the error chunk carries no token).
    assert_eq!(sample(&text, r#"dynamo_frontend_inter_token_latency_seconds_count{model="m"}"#), Some(8.0));
    assert_eq!(sample(&text, r#"dynamo_frontend_request_duration_seconds_count{model="m"}"#), Some(5.0));
    assert_eq!(sample(&text, r#"dynamo_frontend_input_sequence_tokens_sum{model="m"}"#), Some(5.0));
    assert_eq!(
        sample(&text, r#"dynamo_frontend_output_sequence_tokens_sum{model="m"}"#),
        Some(8.0 + 2.0 + 1.0)
    );
    assert_eq!(sample(&text, r#"dynamo_frontend_inflight_requests{model="m"}"#), Some(0.0));
    assert_eq!(sample(&text, "dynamo_frontend_disconnected_clients"), Some(2.0));
}

#[tokio::test]
async fn only_sampled_requests_carry_their_trace_as_exemplar() {
    for sampled in [true, false] {
        let metrics = FrontendMetrics::new();
        let request = metrics.start(&context(sampled), "m", "chat_completions", true);
        TokenStream::new(tokens(4), StatsTarget::Detached, StreamOptions::new())
            .record_metrics(request)
            .count()
            .await;
        let text = metrics.render(Format::OpenMetrics);
        let exemplars: Vec<&str> = text.lines().filter(|line| line.contains(" # {")).collect();
        if sampled {
            for name in
                ["time_to_first_token", "inter_token_latency", "request_duration", "output_sequence_tokens"]
            {
                assert!(
                    exemplars.iter().any(|line| line.contains(name)
                        && line.contains(
                            r#"trace_id="4bf92f3577b34da6a3ce929d0e0e4736",span_id="00f067aa0ba902b7""#
                        )),
                    "{name}: {text}"
                );
            }
        } else {
            assert!(exemplars.is_empty(), "{exemplars:?}");
        }
        assert!(!metrics.render(Format::Prometheus).contains(" # {"), "no exemplars in Prometheus text");
    }
}

#[test]
fn the_model_label_is_bounded_and_the_rest_counted_as_overflow() {
    let metrics = FrontendMetrics::new();
    for i in 0..100_000 {
        metrics.start(&Context::new(), &format!("model-{i}"), "completions", false).failed();
    }
    metrics.start(&Context::new(), "bad\"name\n{x}", "completions", false).failed();
    let text = metrics.render(Format::Prometheus);
    let models: std::collections::HashSet<&str> = text
        .lines()
        .filter(|line| line.starts_with("dynamo_frontend_requests_total{"))
        .filter_map(|line| line.split("model=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(models.len(), MAX_MODELS + 1, "the kept models and the overflow value");
    assert!(models.contains(OVERFLOW_MODEL));
    assert_eq!(
        sample(&text, "tokentrace_metrics_label_overflow_total"),
        Some((100_000 - MAX_MODELS + 1) as f64),
        "the sanitised hostile name overflowed too"
    );
    assert!(!text.contains("bad\""), "a hostile model name never reaches the text");
}

#[tokio::test]
async fn promtool_parses_the_prometheus_text() {
    let metrics = FrontendMetrics::new();
    let request = metrics.start(&context(true), "m", "chat_completions", true);
    TokenStream::new(tokens(3), StatsTarget::Detached, StreamOptions::new())
        .record_metrics(request)
        .count()
        .await;
    metrics.start(&context(true), "m", "completions", false).failed();
    let text = metrics.render(Format::Prometheus);
    if !system::installed("promtool", "prometheus", "TOKENTRACE_REQUIRE_PROMETHEUS") {
        return;
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}\n{text}", String::from_utf8_lossy(&output.stderr));
}
