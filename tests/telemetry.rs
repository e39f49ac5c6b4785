//! Telemetry from the environment against a real OTLP receiver (gRPC and HTTP/protobuf, built
//! from the official protobuf definitions), JSON Lines, and a collector that is down.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{TraceContextExt, Tracer};
use opentelemetry::Context;
use support::otlp;
use tokentrace::propagation::RequestIds;
use tokentrace::telemetry::{JsonLines, Telemetry, TelemetryConfig, TelemetryError};
use tracing_subscriber::layer::SubscriberExt;

fn config(vars: &[(&str, &str)]) -> TelemetryConfig {
    TelemetryConfig::from_vars("test-service", vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .unwrap()
}

/// Writes one span with one log line inside it; returns the span's ids.
fn span_with_a_log(telemetry: &Telemetry) -> (Vec<u8>, Vec<u8>) {
    let tracer = telemetry.tracer("test");
    tracing::subscriber::with_default(telemetry.subscriber(), || {
        let cx = Context::current_with_span(tracer.start("handle_payload"));
        let span_context = cx.span().span_context().clone();
        {
            let _attached = cx.clone().attach();
            tracing::info!(answer = 42, "inside the span");
        }
        cx.span().end();
        (span_context.trace_id().to_bytes().to_vec(), span_context.span_id().to_bytes().to_vec())
    })
}

async fn shutdown(telemetry: Telemetry) -> tokentrace::telemetry::Lost {
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap()
}

async fn spans_and_logs_arrive(receiver: otlp::Receiver, vars: &[(&str, &str)]) {
    let telemetry = Telemetry::build(config(vars)).unwrap();
    let (trace_id, span_id) = span_with_a_log(&telemetry);
    let lost = shutdown(telemetry).await;
    assert_eq!(lost, Default::default());

    let received = receiver.received.clone();
    received.wait_for("a span and a log", |r| !r.spans().is_empty() && !r.logs().is_empty()).await;
    let spans = received.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].service, "test-service");
    assert_eq!(spans[0].span.name, "handle_payload");
    assert_eq!(spans[0].span.trace_id, trace_id);
    let logs = received.logs();
    let log = logs
        .iter()
        .find(|l| format!("{:?}", l.record.body).contains("inside the span"))
        .expect("our log line");
    assert_eq!(log.service, "test-service");
    assert_eq!(log.record.trace_id, trace_id, "the log carries the trace id of its span");
    assert_eq!(log.record.span_id, span_id, "and the span id");
    assert_eq!(otlp::string_value(&log.record.attributes, "answer").as_deref(), Some("42"));
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_logs_arrive_over_grpc_with_their_trace_ids() {
    let receiver = otlp::grpc().await;
    let endpoint = receiver.endpoint();
    spans_and_logs_arrive(
        receiver,
        &[("OTEL_EXPORT_ENABLED", "true"), ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_logs_arrive_over_http_protobuf() {
    let receiver = otlp::http().await;
    let endpoint = receiver.endpoint();
    spans_and_logs_arrive(
        receiver,
        &[
            ("OTEL_EXPORT_ENABLED", "1"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_can_stay_local_while_traces_are_exported() {
    let receiver = otlp::grpc().await;
    let endpoint = receiver.endpoint();
    let telemetry = Telemetry::build(config(&[
        ("OTEL_EXPORT_ENABLED", "true"),
        ("OTEL_EXPORT_LOGS_ENABLED", "false"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint),
    ]))
    .unwrap();
    span_with_a_log(&telemetry);
    shutdown(telemetry).await;
    receiver.received.wait_for("the span", |r| !r.spans().is_empty()).await;
    assert!(receiver.received.logs().is_empty());
    receiver.stop().await;
}

/// Telemetry exporting traces to `endpoint` over gRPC, with a short export timeout.
fn exporting_traces_to(endpoint: &str) -> Telemetry {
    Telemetry::build(config(&[
        ("OTEL_EXPORT_ENABLED", "true"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
    ]))
    .unwrap()
}

/// An axum app traced with `telemetry`'s tracer, on 127.0.0.1.
async fn traced_app(telemetry: &Telemetry) -> std::net::SocketAddr {
    let app = axum::Router::new()
        .route("/v1/models", get(|| async { "[]" }))
        .layer(tokentrace::http::ServerLayer::with_tracer(telemetry.tracer("frontend")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn send_requests(addr: std::net::SocketAddr, count: usize) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    for _ in 0..count {
        let response = client.get(format!("http://{addr}/v1/models").parse().unwrap()).await.unwrap();
        assert_eq!(response.status(), 200, "the service keeps answering");
        response.into_body().collect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_at_start_never_fails_requests_and_every_loss_is_counted() {
    // Nothing listens on this port: connections are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let endpoint = format!("http://{closed}");
    let telemetry = exporting_traces_to(&endpoint);
    let addr = traced_app(&telemetry).await;
    let started = Instant::now();
    // More spans than the export queue holds: memory stays bounded by the queue.
    send_requests(addr, 3000).await;
    let serving = started.elapsed();
    // Shutdown returns (its own timeout gives up on the refused collector) and accounts for all.
    let lost = shutdown(telemetry).await;
    assert_eq!(lost.spans, 3000, "every span is accounted for as lost (served 3000 in {serving:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_going_down_mid_run_is_survived_and_reported() {
    let receiver = otlp::grpc().await;
    let endpoint = receiver.endpoint();
    let telemetry = exporting_traces_to(&endpoint);
    let addr = traced_app(&telemetry).await;
    send_requests(addr, 100).await;
    let received = receiver.received.clone();
    received.wait_for("the first 100 spans", |r| r.spans().len() == 100).await;
    receiver.stop().await;

    send_requests(addr, 200).await;
    let lost = shutdown(telemetry).await;
    assert_eq!(received.spans().len(), 100);
    assert_eq!(lost.spans, 200);
}

#[test]
fn jsonl_lines_are_valid_json_with_ids_even_for_hostile_content() {
    let (layer, lines) = JsonLines::capture();
    let subscriber = tracing_subscriber::registry().with(layer);
    let spans = support::Spans::new();
    let hostile = "\"}\n{\"level\":\"FORGED\"}\u{0}\u{1b}[31m\\\u{2028}";
    tracing::subscriber::with_default(subscriber, || {
        tracing::warn!(field = hostile, "outside any span: {hostile}");
        let ids = RequestIds::extract(&{
            let mut headers = http::HeaderMap::new();
            headers.insert("x-request-id", "req-7".parse().unwrap());
            headers
        });
        let cx = Context::current_with_span(spans.tracer("t").start("s")).with_value(ids);
        let _attached = cx.clone().attach();
        tracing::info!(
            time = "not the time",
            message2 = hostile,
            count = 3u64,
            ratio = f64::NAN,
            ok = true,
            "inside {hostile}"
        );
    });
    let lines = lines.lock().unwrap().clone();
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert!(!line.contains('\n'), "one line per event");
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let time = value["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.len() == "2026-11-27T19:34:22.123456Z".len(), "{time}");
        assert!(value["message"].as_str().unwrap().contains(hostile), "message kept exactly");
        assert_ne!(value["level"], "FORGED");
        assert!(value["file"].as_str().unwrap().ends_with("telemetry.rs"));
        assert!(value["line"].as_u64().is_some());
    }
    let outside: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert!(outside.get("trace_id").is_none());
    assert_eq!(outside["field"], hostile);
    let inside: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    let trace_id = inside["trace_id"].as_str().unwrap();
    let span_id = inside["span_id"].as_str().unwrap();
    assert!(trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(span_id.len() == 16 && span_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(inside["x_request_id"], "req-7");
    assert_eq!(inside["request_id"].as_str().unwrap().len(), 36);
    assert_eq!(inside["field.time"], "not the time", "a field cannot overwrite the line's own keys");
    assert_eq!(inside["count"], 3);
    assert_eq!(inside["ratio"], "NaN");
    assert_eq!(inside["ok"], true);
}

#[test]
fn environment_values_are_validated_and_errors_name_the_variable() {
    let bad = [
        ("OTEL_EXPORT_ENABLED", "maybe"),
        ("OTEL_EXPORT_LOGS_ENABLED", "2"),
        ("DYN_LOGGING_JSONL", "jsonl"),
        ("DYN_LOG", "info,=="),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "localhost:4317"),
        ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "ftp://collector"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization"),
        ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "bad header=1"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment=%zz"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ("OTEL_PROPAGATORS", "tracecontext,b3"),
    ];
    for (variable, value) in bad {
        let error = TelemetryConfig::from_vars("svc", [(variable, value)]).unwrap_err();
        assert_eq!(error.variable(), variable, "{variable}={value:?} gave {error}");
    }

    let config = TelemetryConfig::from_vars(
        "svc",
        [
            ("OTEL_SERVICE_NAME", "dynamo-worker-decode"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,team=a%20b"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://tempo:4318/v1/traces"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20x"),
            ("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "250"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("DYN_LOG", "warn,tokentrace=debug"),
        ],
    )
    .unwrap();
    assert_eq!(config.service_name, "dynamo-worker-decode");
    assert_eq!(
        config.resource_attributes,
        [("deployment.environment".into(), "prod".into()), ("team".into(), "a b".into())]
    );
    assert_eq!(config.traces.endpoint, "http://tempo:4318/v1/traces");
    assert_eq!(config.logs.endpoint, "http://tempo:4318/v1/logs", "logs follow traces, on their own path");
    assert_eq!(config.traces.headers, [("authorization".into(), "Bearer x".into())]);
    assert_eq!(config.logs.timeout, Duration::from_millis(250));
    assert_eq!(config.traces.timeout, Duration::from_secs(10));
    assert!(!config.export_traces && !config.export_logs, "export is opt-in");
    assert_eq!(
        config.sampler,
        tokentrace::telemetry::SamplerConfig::ParentBased(Box::new(
            tokentrace::telemetry::SamplerConfig::TraceIdRatio(0.25)
        ))
    );

    let defaults = TelemetryConfig::from_vars("svc", Vec::<(String, String)>::new()).unwrap();
    assert_eq!(defaults.traces.endpoint, "http://localhost:4317");
    assert_eq!(defaults.logs.endpoint, "http://localhost:4317");
    assert_eq!(defaults.log_filter, "info");
}

/// Runs one scenario of `init` (which installs process-wide state) in a child process with its
/// own environment, and returns its stderr.
fn run_scenario(scenario: &str, env: &[(&str, &str)]) -> String {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", "scenario_child", "--nocapture", "--test-threads=1"]);
    command.env("TOKENTRACE_TEST_SCENARIO", scenario);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "scenario {scenario} failed:\n{stderr}\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

/// The child side of the `init` scenarios. Run directly (no scenario variable), it has
/// nothing to do.
/// Runs one scenario (see [`run_scenario`]) exporting to a real OTLP receiver started for it,
/// with `env` besides the receiver's endpoint; returns the receiver.
async fn run_scenario_exporting(
    scenario: &'static str,
    env: &'static [(&'static str, &'static str)],
) -> otlp::Receiver {
    let receiver = otlp::grpc().await;
    let endpoint = receiver.endpoint();
    tokio::task::spawn_blocking(move || {
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.push(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint));
        run_scenario(scenario, &env)
    })
    .await
    .unwrap();
    receiver
}

#[test]
fn scenario_child() {
    let Ok(scenario) = std::env::var("TOKENTRACE_TEST_SCENARIO") else { return };
    match scenario.as_str() {
        "jsonl" => {
            let guard = tokentrace::telemetry::init("dynamo-frontend").expect("init");
            let tracer = opentelemetry::global::tracer("child");
            let cx = Context::current_with_span(tracer.start("http-request"));
            let _attached = cx.clone().attach();
            tracing::info!(user_input = "\"}\n{\"x\":1}", "hostile \u{7} content");
            assert!(matches!(tokentrace::telemetry::init("again"), Err(TelemetryError::AlreadyInitialized)));
            drop(guard);
        }
        "default-layers" => {
            use tower::ServiceExt;

            let app = || {
                axum::Router::new()
                    .route("/v1/models", get(|| async { "[]" }))
                    .layer(tokentrace::http::ServerLayer::default())
            };
            let built_before = app();
            let guard = tokentrace::telemetry::init("dynamo-frontend").expect("init");
            let built_after = app();
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                for (app, id) in [(built_before, "built-before-init"), (built_after, "built-after-init")] {
                    let request = http::Request::get("/v1/models")
                        .header("x-request-id", id)
                        .body(axum::body::Body::empty())
                        .unwrap();
                    let response = app.oneshot(request).await.unwrap();
                    assert_eq!(response.headers()["x-request-id"], id);
                    response.into_body().collect().await.unwrap();
                }
            });
            drop(guard); // flushes to the collector
        }
        "keep-overflow" => {
            let guard = tokentrace::telemetry::init("dynamo-frontend").expect("init");
            let tracer = opentelemetry::global::tracer("child");
            // Requests whose roots stay open, each with an ended child: more than the two spans
            // the keep rules may hold.
            let roots: Vec<Context> = (0..5)
                .map(|_| {
                    let cx = Context::new().with_span(tracer.start("http-request"));
                    opentelemetry::trace::Span::end(&mut tracer.start_with_context("decode", &cx));
                    cx
                })
                .collect();
            assert_eq!(guard.losses().keep_overflows, 3);
            drop(roots);
            drop(guard); // flushes the metrics
        }
        "console" => {
            let guard = tokentrace::telemetry::init("dynamo-frontend").expect("init");
            let tracer = opentelemetry::global::tracer("child");
            let mut root = tracer.start("http-request");
            opentelemetry::trace::Span::set_attribute(
                &mut root,
                opentelemetry::KeyValue::new("x_request_id", "console-1"),
            );
            let cx = Context::current_with_span(root);
            {
                let _attached = cx.clone().attach();
                tracing::info!("inside the request");
                let child = tracer.start("decode");
                drop(child);
            }
            cx.span().end();
            drop(guard); // prints what the batch processor holds
        }
        "otlp-metrics" => {
            use futures_util::StreamExt;
            use tokentrace::inference::{StatsTarget, StreamOptions, TokenChunk, TokenStream};
            struct Token;
            impl TokenChunk for Token {
                fn token_count(&self) -> u32 {
                    1
                }
            }
            let guard = tokentrace::telemetry::init("dynamo-frontend").expect("init");
            // Built after init here; the instruments bind at the first request either way.
            let metrics = tokentrace::metrics::FrontendMetrics::new();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let request = metrics.start(&Context::new(), "llama", "chat_completions", true);
                let tokens = futures_util::stream::iter([Token, Token, Token]).then(|token| async {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    token
                });
                let tokens = TokenStream::new(Box::pin(tokens), StatsTarget::Detached, StreamOptions::new())
                    .record_metrics(request);
                tokens.count().await;
                metrics.start(&Context::new(), "llama", "completions", false).failed();
            });
            drop(guard); // the last collection is exported at shutdown
        }
        "init-in-runtimes" => {
            // Whatever `init` is given, inside either kind of runtime: an error or a guard that
            // drops cleanly there, never a panic.
            let kind = std::env::var("TOKENTRACE_TEST_RUNTIME").unwrap();
            let runtime = match kind.as_str() {
                "multi-thread" => {
                    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()
                }
                _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
            };
            runtime.unwrap().block_on(async {
                match tokentrace::telemetry::init("svc") {
                    Err(error) => eprintln!("{kind}: init refused: {error}"),
                    Ok(guard) => {
                        tracing::info!("exported to nowhere");
                        eprintln!("{kind}: init ok");
                        drop(guard);
                    }
                }
            });
        }
        "bad-env" => match tokentrace::telemetry::init("svc") {
            Err(error) => eprintln!("init refused: {error}"),
            Ok(_) => panic!("a bad sampler was accepted"),
        },
        other => panic!("unknown scenario {other}"),
    }
}

#[test]
fn init_installs_jsonl_logs_with_trace_ids_in_a_fresh_process() {
    let stderr = run_scenario("jsonl", &[("DYN_LOGGING_JSONL", "true"), ("DYN_LOG", "info")]);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let ours = lines
        .iter()
        .find(|l| l["message"] == "hostile \u{7} content")
        .unwrap_or_else(|| panic!("no line in {stderr}"));
    assert_eq!(ours["user_input"], "\"}\n{\"x\":1}");
    assert_eq!(ours["trace_id"].as_str().unwrap().len(), 32);
    assert_eq!(ours["level"], "INFO");
}

/// Layers built with `default()` export through the provider `init` installed, whether they
/// were built before `init` or after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_built_before_or_after_init_export_through_its_provider() {
    let receiver = run_scenario_exporting(
        "default-layers",
        &[("OTEL_EXPORT_ENABLED", "true"), ("OTEL_EXPORT_LOGS_ENABLED", "false")],
    )
    .await;
    let received = receiver.received.clone();
    received.wait_for("both server spans", |r| r.spans().len() >= 2).await;
    let spans = received.spans();
    let mut ids: Vec<_> =
        spans.iter().map(|s| otlp::string_value(&s.span.attributes, "x_request_id").unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["built-after-init", "built-before-init"]);
    for span in &spans {
        assert_eq!(span.service, "dynamo-frontend");
        assert_eq!(span.span.name, "http-request");
    }
    receiver.stop().await;
}

#[test]
fn the_console_exporter_prints_each_trace_without_a_collector() {
    let stderr = run_scenario("console", &[("OTEL_TRACES_EXPORTER", "console")]);
    let header =
        stderr.lines().position(|line| line.starts_with("request console-1  trace ")).expect(&stderr);
    let lines: Vec<&str> = stderr.lines().skip(header).take(3).collect();
    assert!(lines[0].ends_with("(2 spans, 1 services)"), "{stderr}");
    assert!(lines[1].starts_with("  http-request ") && lines[1].contains(" dynamo-frontend "), "{stderr}");
    assert!(lines[2].starts_with("  └─ decode "), "{stderr}");

    // With JSON Lines on the same stream, every line is one JSON object.
    let stderr = run_scenario("console", &[("OTEL_TRACES_EXPORTER", "console"), ("DYN_LOGGING_JSONL", "1")]);
    let objects: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let trace = objects.iter().find(|o| o["message"] == "trace").expect(&stderr);
    assert_eq!(trace["x_request_id"], "console-1");
    assert_eq!(trace["spans"].as_array().unwrap().len(), 2);
    let log = objects.iter().find(|o| o["message"] == "inside the request").expect(&stderr);
    assert_eq!(log["trace_id"], trace["trace_id"], "the log line and the trace agree");

    let refused = TelemetryConfig::from_vars("svc", [("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
    assert_eq!(refused.variable(), "OTEL_TRACES_EXPORTER");
    let none =
        TelemetryConfig::from_vars("svc", [("OTEL_EXPORT_ENABLED", "1"), ("OTEL_TRACES_EXPORTER", "none")])
            .unwrap();
    assert!(!none.export_traces && !none.console_traces);
    let both = TelemetryConfig::from_vars(
        "svc",
        [("OTEL_EXPORT_ENABLED", "1"), ("OTEL_TRACES_EXPORTER", "otlp,console")],
    )
    .unwrap();
    assert!(both.export_traces && both.console_traces);
}

/// Keep rules that overflow their bound count each request decided early, in `Lost` and as the
/// `tokentrace.traces.keep.overflows` metric at a real OTLP receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_rule_overflows_are_counted_and_exported_as_a_metric() {
    let receiver = run_scenario_exporting(
        "keep-overflow",
        &[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
            ("TOKENTRACE_TRACES_KEEP", "error"),
            ("TOKENTRACE_TRACES_KEEP_MAX_SPANS", "2"),
        ],
    )
    .await;
    let received = receiver.received.clone();
    received
        .wait_for("the overflow counter", |r| {
            r.metric_names().iter().any(|(_, name)| name == "tokentrace.traces.keep.overflows")
        })
        .await;
    receiver.stop().await;
}

/// `OTEL_METRICS_EXPORTER=otlp`: the frontend's measures reach a real OTLP receiver under the
/// GenAI semantic-convention names; the metrics endpoint defaults to the traces endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_metrics_carry_the_gen_ai_names() {
    let receiver = run_scenario_exporting(
        "otlp-metrics",
        &[("OTEL_METRICS_EXPORTER", "otlp"), ("OTEL_METRIC_EXPORT_INTERVAL", "200")],
    )
    .await;
    let received = receiver.received.clone();
    received.wait_for("the GenAI metrics", |r| r.metric_names().len() >= 3).await;
    let mut names: Vec<(String, String)> = received.metric_names();
    names.sort();
    names.dedup();
    let names: Vec<&str> = names
        .iter()
        .map(|(service, name)| {
            assert_eq!(service, "dynamo-frontend");
            name.as_str()
        })
        .collect();
    assert_eq!(
        names,
        [
            "gen_ai.server.request.duration",
            "gen_ai.server.time_per_output_token",
            "gen_ai.server.time_to_first_token"
        ]
    );
    receiver.stop().await;

    let refused = TelemetryConfig::from_vars("svc", [("OTEL_METRICS_EXPORTER", "prometheus")]).unwrap_err();
    assert_eq!(refused.variable(), "OTEL_METRICS_EXPORTER");
    let config = config(&[
        ("OTEL_METRICS_EXPORTER", "otlp"),
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4317"),
    ]);
    assert!(config.export_metrics && config.metrics.endpoint == "http://m:4317");
}

#[test]
fn init_never_panics_inside_a_runtime_whatever_it_is_given() {
    let malformed = std::env::temp_dir().join(format!("tokentrace-malformed-{}.pem", std::process::id()));
    std::fs::write(&malformed, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        .unwrap();
    let malformed = malformed.display().to_string();
    for kind in ["multi-thread", "current-thread"] {
        // An unreachable https endpoint, over each protocol: init succeeds, export fails later.
        for protocol in ["grpc", "http/protobuf"] {
            let stderr = run_scenario(
                "init-in-runtimes",
                &[
                    ("TOKENTRACE_TEST_RUNTIME", kind),
                    ("OTEL_EXPORT_ENABLED", "true"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://127.0.0.1:9"),
                ],
            );
            assert!(stderr.contains(&format!("{kind}: init ok")), "{protocol}: {stderr}");
        }
        // A missing CA file and a malformed certificate: errors naming the variable.
        for (variable, value) in [
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/no/such/ca.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &malformed),
        ] {
            let stderr = run_scenario(
                "init-in-runtimes",
                &[
                    ("TOKENTRACE_TEST_RUNTIME", kind),
                    ("OTEL_EXPORT_ENABLED", "true"),
                    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://127.0.0.1:9"),
                    (variable, value),
                    ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/no/such/key.pem"),
                ],
            );
            assert!(
                stderr.contains(&format!("{kind}: init refused: telemetry configuration: {variable}: ")),
                "{kind} {variable}: {stderr}"
            );
        }
    }
    let _ = std::fs::remove_file(&malformed);
}

#[test]
fn init_with_a_bad_variable_is_an_error_naming_it_not_a_panic() {
    let stderr = run_scenario("bad-env", &[("OTEL_TRACES_SAMPLER", "bogus")]);
    assert!(stderr.contains("init refused: telemetry configuration: OTEL_TRACES_SAMPLER:"), "{stderr}");
}

/// `parentbased_traceidratio` samples consistently: a root kept at 0.5 writes `ot=th:8` into the
/// trace state its outbound calls carry (a dropped one writes none); a child follows a sampled
/// caller and forwards the caller's threshold and other `ot` keys unchanged.
#[tokio::test]
async fn a_ratio_sampler_writes_its_threshold_and_children_keep_the_callers() {
    use tokentrace::propagation::inject_context;
    use tower::{Layer, ServiceExt};

    let config = TelemetryConfig::from_vars(
        "svc",
        [("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.5")],
    )
    .unwrap();
    let telemetry = Telemetry::build(config).unwrap();
    let handler = tower::service_fn(|_: http::Request<String>| async {
        let mut outbound = http::HeaderMap::new();
        inject_context(&mut outbound, &Context::current());
        let traceparent = outbound["traceparent"].to_str().unwrap().to_owned();
        let tracestate =
            outbound.get("tracestate").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        Ok::<_, std::convert::Infallible>(http::Response::new(format!("{traceparent} {tracestate}")))
    });
    let service = tokentrace::http::ServerLayer::with_tracer(telemetry.tracer("frontend")).layer(handler);
    let call = |headers: &[(&'static str, &str)]| {
        let mut request = http::Request::new(String::new());
        for (name, value) in headers {
            request.headers_mut().insert(*name, value.parse().unwrap());
        }
        let service = service.clone();
        async move {
            let response = service.oneshot(request).await.unwrap();
            http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes()
        }
    };
    let mut kept = 0;
    for _ in 0..400 {
        let body = String::from_utf8(call(&[]).await.to_vec()).unwrap();
        let (traceparent, tracestate) = body.split_once(' ').unwrap();
        if traceparent.ends_with("-01") || traceparent.ends_with("-03") {
            kept += 1;
            assert_eq!(tracestate, "ot=th:8", "{body}");
        } else {
            assert_eq!(tracestate, "", "a dropped trace claims no probability: {body}");
        }
    }
    assert!((120..=280).contains(&kept), "about half of 400 roots kept: {kept}");

    let body = call(&[
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tracestate", "ot=th:c;rv:ffffffffffffff;k:v,congo=t61rcWkgMzE"),
    ])
    .await;
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(body.ends_with("-01 ot=th:c;rv:ffffffffffffff;k:v,congo=t61rcWkgMzE"), "{body}");
}

/// `TOKENTRACE_TRACES_KEEP` and its companions: parsed, or an error naming the variable.
#[test]
fn keep_rules_come_from_the_environment_and_bad_ones_name_their_variable() {
    use tokentrace::telemetry::KeepRules;
    let config = TelemetryConfig::from_vars(
        "svc",
        [
            ("TOKENTRACE_TRACES_KEEP", "error,cancelled,ttft>500ms,duration>30s,itl_p99>200ms"),
            ("TOKENTRACE_TRACES_SUMMARY", "true"),
            ("TOKENTRACE_TRACES_KEEP_MAX_SPANS", "5000"),
        ],
    )
    .unwrap();
    let rules = config.keep.unwrap();
    assert_eq!(
        rules,
        KeepRules::parse("error, cancelled, ttft>0.5s, duration>30000ms, itl_p99>200ms").unwrap()
    );
    assert!(config.keep_summary);
    assert_eq!((config.keep_max_spans, config.keep_max_bytes), (5000, 128 << 20));
    let defaults = TelemetryConfig::from_vars("svc", Vec::<(String, String)>::new()).unwrap();
    assert_eq!(defaults.keep, None, "head sampling only");
    for (variable, value) in [
        ("TOKENTRACE_TRACES_KEEP", "slow"),
        ("TOKENTRACE_TRACES_KEEP", "ttft>soon"),
        ("TOKENTRACE_TRACES_KEEP", "latency>1s"),
        ("TOKENTRACE_TRACES_SUMMARY", "maybe"),
        ("TOKENTRACE_TRACES_KEEP_MAX_BYTES", "0"),
    ] {
        let error = TelemetryConfig::from_vars("svc", [(variable, value)]).unwrap_err();
        assert_eq!(error.variable(), variable, "{value}: {error}");
    }
}
