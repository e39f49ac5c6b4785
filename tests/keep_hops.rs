//! Keep decisions across HTTP and gRPC hops between two real processes, each with its own
//! `telemetry::init` and keep rules, exporting to a real OTLP receiver: a caller (a hyper
//! client or a tonic channel under the client layer) and a callee (an axum router or a tonic
//! server under the server layer). Head sampling is off (ratio 0), so only what a rule kept
//! arrives; a rule that matches on one side only must bring the other side's part too.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, Tracer};
use opentelemetry::Context;
use support::otlp::{self, string_value, ReceivedSpan};
use tokentrace::http::{ClientLayer, ServerLayer};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower::ServiceBuilder;

/// Answers every check SERVING.
struct Serving;

#[tonic::async_trait]
impl Health for Serving {
    async fn check(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(HealthCheckResponse { status: 1 }))
    }

    type WatchStream = futures_util::stream::Empty<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not here"))
    }
}

/// Starts this test binary as one side of a hop (see [`scenario_child`]).
fn side(scenario: &str, env: &[(&str, &str)]) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "scenario_child", "--nocapture", "--test-threads=1"])
        .env("TOKENTRACE_TEST_SCENARIO", scenario)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(if scenario == "callee" { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn keep_env<'a>(endpoint: &'a str, service: &'a str, rules: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("OTEL_EXPORT_ENABLED", "true"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint),
        ("OTEL_SERVICE_NAME", service),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ("TOKENTRACE_TRACES_KEEP", rules),
    ]
}

/// One hop: the callee serves until the caller has made its call and exited, then stops
/// (flushing what it holds); returns the spans received.
async fn hop(transport: &str, caller_rules: &str, callee_rules: &str) -> Vec<ReceivedSpan> {
    let receiver = otlp::grpc().await;
    let endpoint = receiver.endpoint();
    let mut callee = side("callee", &keep_env(&endpoint, "callee", callee_rules));
    // The test harness writes its own lines first; the rest is drained so the callee never
    // writes into a closed pipe.
    let mut stdout = BufReader::new(callee.stdout.take().unwrap());
    let ready = loop {
        let mut line = String::new();
        assert_ne!(stdout.read_line(&mut line).unwrap(), 0, "the callee exited before it was ready");
        // On the harness's "test scenario_child ... " line.
        if let Some(at) = line.find("READY ") {
            break line[at + "READY ".len()..].trim().to_owned();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let addresses: Vec<&str> = ready.split(' ').collect();
    let target = if transport == "grpc" { addresses[1] } else { addresses[0] };
    let mut env = keep_env(&endpoint, "caller", caller_rules);
    env.extend([("HOP_TRANSPORT", transport), ("HOP_TARGET", target)]);
    let caller = side("caller", &env);
    let waited = tokio::task::spawn_blocking(move || {
        let status = caller.wait_with_output().unwrap().status;
        drop(callee.stdin.take()); // the callee stops when its stdin closes
        (status, callee.wait().unwrap())
    })
    .await
    .unwrap();
    assert!(waited.0.success() && waited.1.success(), "{waited:?}");
    // Both flushed at exit: what arrived is all that will.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let spans = receiver.received.spans();
    receiver.stop().await;
    spans
}

fn is_root(span: &ReceivedSpan, service: &str) -> bool {
    span.service == service && span.span.parent_span_id.is_empty()
}

/// Up: only the callee's rule matches (every request it serves lasts more than 0 ms); its
/// decision comes back in the response's trailers, and the caller keeps its part too. Down:
/// only the caller's rule matches (its request outlasts 100 ms, well after the call); its
/// notice reaches the callee, which held its finished part. Neither: nothing arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_decisions_cross_http_and_grpc_hops_both_ways() {
    for transport in ["http", "grpc"] {
        for (direction, caller_rules, callee_rules, rule) in [
            ("up", "error", "duration>0ms", Some("duration>0ms")),
            ("down", "duration>100ms", "error", Some("duration>100ms")),
            ("neither", "error", "error", None),
        ] {
            let spans = hop(transport, caller_rules, callee_rules).await;
            let case = format!("{transport} {direction}");
            let names: Vec<_> = spans.iter().map(|s| (&s.service, &s.span.name)).collect();
            let Some(rule) = rule else {
                assert!(spans.is_empty(), "{case}: nothing kept, nothing sent: {names:?}");
                continue;
            };
            assert_eq!(
                spans.len(),
                3,
                "{case}: the caller's root and client span, the callee's server span: {names:?}"
            );
            let traces: std::collections::HashSet<_> = spans.iter().map(|s| &s.span.trace_id).collect();
            assert_eq!(traces.len(), 1, "{case}: one trace");
            let root = spans.iter().find(|s| is_root(s, "caller")).expect("the caller's root");
            let server = spans.iter().find(|s| s.service == "callee").expect("the callee's part");
            for local_root in [root, server] {
                assert_eq!(
                    string_value(&local_root.span.attributes, "tokentrace.kept_by").as_deref(),
                    Some(rule),
                    "{case}: {}",
                    local_root.service
                );
            }
        }
    }
}

/// The two sides, run in a child process of this test binary by [`side`].
#[test]
fn scenario_child() {
    let Ok(scenario) = std::env::var("TOKENTRACE_TEST_SCENARIO") else { return };
    let guard = tokentrace::telemetry::init("hop").expect("init");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    match scenario.as_str() {
        "callee" => runtime.block_on(callee()),
        "caller" => runtime.block_on(caller()),
        other => panic!("unknown scenario {other}"),
    }
    drop(runtime);
    drop(guard); // flushes to the receiver
}

/// Serves `POST /work` (three chunks, a few ms apart) and gRPC health checks until stdin closes.
async fn callee() {
    use axum::routing::post;
    let work = || async {
        let chunks = futures_util::stream::unfold(0, |n| async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            (n < 3).then(|| (Ok::<_, std::convert::Infallible>(format!("chunk {n}\n")), n + 1))
        });
        axum::body::Body::from_stream(chunks)
    };
    let app = axum::Router::new().route("/work", post(work)).layer(ServerLayer::default());
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(http, app).await });
    let incoming = futures_util::stream::unfold(grpc, |listener| async move {
        Some((listener.accept().await.map(|(socket, _)| socket), listener))
    });
    let server = tonic::transport::Server::builder()
        .layer(ServerLayer::default())
        .add_service(HealthServer::new(Serving));
    tokio::spawn(server.serve_with_incoming(incoming));
    println!("READY {http_addr} {grpc_addr}");
    std::io::stdout().flush().unwrap();
    tokio::task::spawn_blocking(|| std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new()))
        .await
        .unwrap()
        .unwrap();
}

/// One request under a root span `job` that lasts 150 ms, the call made at its start; then
/// time for a notice to leave.
async fn caller() {
    let target: SocketAddr = std::env::var("HOP_TARGET").unwrap().parse().unwrap();
    let tracer = opentelemetry::global::tracer("caller");
    let cx = Context::new().with_span(tracer.start("job"));
    match std::env::var("HOP_TRANSPORT").unwrap().as_str() {
        "http" => {
            use http_body_util::{BodyExt, Empty};
            let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Empty<bytes::Bytes>>();
            let mut client = ServiceBuilder::new().layer(ClientLayer::default()).service(client);
            let request = http::Request::post(format!("http://{target}/work")).body(Empty::new()).unwrap();
            let response = {
                let _attached = cx.clone().attach();
                tower::Service::call(&mut client, request)
            }
            .await
            .unwrap();
            assert_eq!(response.status(), 200);
            response.into_body().collect().await.unwrap();
        }
        _ => {
            let channel = tonic::transport::Channel::from_shared(format!("http://{target}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client =
                HealthClient::new(ServiceBuilder::new().layer(ClientLayer::default()).service(channel));
            let request = tonic::Request::new(HealthCheckRequest { service: String::new() });
            let call = opentelemetry::trace::FutureExt::with_context(client.check(request), cx.clone());
            call.await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    cx.span().end();
    tokio::time::sleep(Duration::from_millis(200)).await;
}
