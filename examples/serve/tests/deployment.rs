//! The bundled example as a user runs it: real `serve` processes (the binary `cargo test`
//! builds for this package), exporting over OTLP/gRPC to a real receiver; one trace per request across
//! every service, logs correlated, a client that goes away, a worker that dies.

// The example's own modules: the tests drive the deployment with the same code as the demo.
mod common;
#[allow(dead_code)]
#[path = "../demo/driver.rs"]
mod demo;
#[allow(dead_code)]
#[path = "../demo/launcher.rs"]
mod launcher;
#[path = "../demo/receiver.rs"]
mod receiver;
#[path = "../../../tests/support/system.rs"]
mod system;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

const SERVER: i32 = SpanKind::Server as i32;
const CLIENT: i32 = SpanKind::Client as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_requests_are_one_trace_across_processes_with_correlated_logs() {
    let receiver = receiver::grpc().await;
    let (worker, frontend, addr) = aggregated(&receiver, "2");
    let ids = ["agg-1".to_owned(), "agg-2".to_owned()];
    for id in &ids {
        let answer = demo::stream_chat(addr, id, "hello tracing", 8).await.unwrap();
        assert_eq!(answer.tokens, 8);
    }
    // Without `stream`, one JSON answer.
    let request = http::Request::post(format!("http://{addr}/v1/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(r#"{"prompt":"hello","max_tokens":4}"#)))
        .unwrap();
    let response = demo::http_client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"].as_str().unwrap().chars().count(), 4);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 4);
    let models = demo::http_client().get(format!("http://{addr}/v1/models").parse().unwrap()).await.unwrap();
    let models: serde_json::Value =
        serde_json::from_slice(&models.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(models["data"][0]["id"], "tokentrace-demo");
    stop(vec![frontend, worker]).await;
    demo::wait_for_traces(&receiver.received, &ids, 6).await;

    for id in &ids {
        let spans = demo::trace_of(&receiver.received, id);
        assert_eq!(spans.len(), 6, "{id}: {:?}", spans.iter().map(|s| &s.span.name).collect::<Vec<_>>());
        let http = one(&spans, "http-request", "dynamo-frontend");
        let client = one(&spans, "generate", "dynamo-frontend");
        let handle = one(&spans, "handle_payload", "dynamo-worker-vllm");
        assert_eq!((http.span.kind, client.span.kind, handle.span.kind), (SERVER, CLIENT, SERVER));
        assert_child(http, client);
        assert_child(client, handle);
        for phase in ["queue", "prefill", "decode"] {
            assert_child(handle, one(&spans, phase, "dynamo-worker-vllm"));
        }
        assert_eq!(attr(http, "x_request_id").as_deref(), Some(id.as_str()));
        assert_eq!(
            attr(handle, "x_request_id").as_deref(),
            Some(id.as_str()),
            "searchable on the worker too"
        );
        assert_eq!(attr(http, "http.route").as_deref(), Some("/v1/chat/completions"));
        let decode = one(&spans, "decode", "dynamo-worker-vllm");
        assert_eq!(attr(decode, "gen_ai.usage.output_tokens").as_deref(), Some("8"));
        assert_eq!(attr(decode, "gen_ai.request.model").as_deref(), Some("tokentrace-demo"));
        assert!(attr(decode, "itl_p99_ms").is_some());
        assert_eq!(
            attr(http, "gen_ai.usage.output_tokens").as_deref(),
            Some("8"),
            "the frontend's own TTFT/ITL"
        );
        assert!(attr(http, "ttft_ms").unwrap().parse::<f64>().unwrap() > 0.0);

        let services: std::collections::BTreeSet<_> = receiver
            .received
            .logs()
            .into_iter()
            .filter(|l| l.record.trace_id == http.span.trace_id)
            .map(|l| l.service)
            .collect();
        assert!(
            services.contains("dynamo-frontend") && services.contains("dynamo-worker-vllm"),
            "logs of both services carry the trace id: {services:?}"
        );
    }
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disaggregated_requests_trace_prefill_kv_transfer_and_decode() {
    let receiver = receiver::grpc().await;
    let prefill = spawn(
        "prefill",
        &["worker", "--role", "prefill", "--step-ms", "2"],
        export_env(&receiver, "dynamo-worker-prefill"),
    );
    let decode = spawn(
        "decode",
        &["worker", "--role", "decode", "--step-ms", "2", "--prefill", &prefill.addr],
        export_env(&receiver, "dynamo-worker-decode"),
    );
    let frontend = spawn(
        "frontend",
        &["frontend", "--listen", "127.0.0.1:0", "--worker", &decode.addr],
        export_env(&receiver, "dynamo-frontend"),
    );
    let addr: SocketAddr = frontend.addr.parse().unwrap();
    let ids = ["disagg-1".to_owned()];
    let answer =
        demo::stream_chat(addr, &ids[0], "a longer prompt so the KV transfer has some bytes in it", 6)
            .await
            .unwrap();
    assert_eq!(answer.tokens, 6);
    stop(vec![frontend, decode, prefill]).await;
    demo::wait_for_traces(&receiver.received, &ids, 10).await;

    let spans = demo::trace_of(&receiver.received, &ids[0]);
    assert_eq!(spans.len(), 10, "{:?}", spans.iter().map(|s| (&s.span.name, &s.service)).collect::<Vec<_>>());
    let http = one(&spans, "http-request", "dynamo-frontend");
    let client = one(&spans, "generate", "dynamo-frontend");
    let decode_handle = one(&spans, "handle_payload", "dynamo-worker-decode");
    let remote_prefill = one(&spans, "remote_prefill", "dynamo-worker-decode");
    let prefill_handle = one(&spans, "handle_payload", "dynamo-worker-prefill");
    let prefill_phase = one(&spans, "prefill", "dynamo-worker-prefill");
    let transfer = one(&spans, "kv_transfer", "dynamo-worker-decode");
    let decode_phase = one(&spans, "decode", "dynamo-worker-decode");
    assert_child(http, client);
    assert_child(client, decode_handle);
    assert_child(decode_handle, remote_prefill);
    assert_child(remote_prefill, prefill_handle);
    assert_child(prefill_handle, prefill_phase);
    assert_child(decode_handle, transfer);
    assert_child(decode_handle, decode_phase);
    let prompt_rows = "a longer prompt so the KV transfer has some bytes in it".len();
    assert_eq!(attr(transfer, "kv.bytes"), Some((prompt_rows * 64 * 4).to_string()));
    assert_eq!(decode_phase.span.links.len(), 1, "decode links to prefill");
    assert_eq!(decode_phase.span.links[0].span_id, prefill_phase.span.span_id);
    assert_eq!(attr(prefill_handle, "x_request_id").as_deref(), Some("disagg-1"));
    receiver.stop().await;
}

/// 64 list-members in 8 KB: the spec's minimum, with whitespace, properties and escapes.
fn full_baggage() -> String {
    let mut members: Vec<String> = (0..61).map(|i| format!("key{i:02}={}", "v".repeat(120))).collect();
    members.push("tenant = acme".to_owned());
    members.push("lora=sql%20v2;ttl=60;sensitive".to_owned());
    members.push("priority=high".to_owned());
    let header = members.join(",");
    assert!(header.len() <= 8192, "{}", header.len());
    header
}

/// Client → frontend → decode worker → its outbound call to prefill: the decode worker's call
/// passes through a proxy of the test's (real `rpc::tcp` both ways) that records the metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baggage_of_64_members_in_8_kb_reaches_a_workers_outbound_call_unchanged() {
    use tokentrace::rpc::{tcp, Request};
    use tower::ServiceExt;

    let prefill = spawn("prefill", &["worker", "--role", "prefill", "--step-ms", "1"], Vec::new());
    let upstream = tcp::Client::connect(prefill.addr.parse::<SocketAddr>().unwrap()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap().to_string();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(tcp::serve(
        listener,
        tower::service_fn(move |request: Request<Bytes>| {
            let baggage: Vec<String> = request.metadata.values("baggage").map(str::to_owned).collect();
            let _ = seen_tx.send(baggage);
            upstream.clone().oneshot(request)
        }),
    ));
    let decode =
        spawn("decode", &["worker", "--role", "decode", "--step-ms", "1", "--prefill", &proxy], Vec::new());
    let frontend =
        spawn("frontend", &["frontend", "--listen", "127.0.0.1:0", "--worker", &decode.addr], Vec::new());

    let sent = full_baggage();
    let body = serde_json::json!({
        "model": "tokentrace-demo",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 3,
    });
    let request = http::Request::post(format!("http://{}/v1/chat/completions", frontend.addr))
        .header("content-type", "application/json")
        .header("baggage", &sent)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = demo::http_client().request(request).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.into_body().collect().await.unwrap();

    let received = tokio::time::timeout(Duration::from_secs(10), seen.recv()).await.unwrap().unwrap();
    assert_eq!(received, [sent], "exactly one baggage header, byte for byte");
    stop(vec![frontend, decode, prefill]).await;
}

/// OpenAI's official Python client against the frontend: models, chat, streamed chat with
/// `include_usage`, completions and a 400 (`openai_client.py` says what it checks). Without the
/// `openai` package the test says it skipped, unless `TOKENTRACE_REQUIRE_OPENAI` is set (CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_reads_usage_and_request_ids() {
    let worker = spawn("worker", &["worker", "--role", "agg", "--step-ms", "1"], Vec::new());
    let frontend = spawn(
        "frontend",
        &[
            "frontend",
            "--listen",
            "127.0.0.1:0",
            "--worker",
            &worker.addr,
            "--served-model-name",
            "demo-model",
        ],
        Vec::new(),
    );
    let addr = frontend.addr.clone();
    run_openai_client(&addr, &["demo-model"], vec![frontend, worker]).await;
}

/// A GET to Prometheus's HTTP API, parsed.
async fn prometheus_api(prometheus: u16, path_and_query: &str) -> serde_json::Value {
    let uri: http::Uri = format!("http://127.0.0.1:{prometheus}{path_and_query}").parse().unwrap();
    let request = http::Request::get(uri).body(Full::new(Bytes::new())).unwrap();
    match demo::http_client().request(request).await {
        Ok(response) => {
            let body = response.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice(&body).unwrap_or_default()
        }
        Err(_) => serde_json::Value::Null,
    }
}

/// A real Prometheus (Debian's `prometheus`, exemplar storage on) scrapes the example's
/// frontend: after N requests its query API counts N, and its exemplar API returns trace ids
/// of traces the OTLP receiver got with those requests' `x_request_id`. Without Prometheus the
/// test says it skipped, unless `TOKENTRACE_REQUIRE_PROMETHEUS` is set (CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_frontend_and_its_exemplars_open_the_traces() {
    if !system::installed("prometheus", "prometheus", "TOKENTRACE_REQUIRE_PROMETHEUS") {
        return;
    }
    let receiver = receiver::grpc().await;
    let (worker, frontend, addr) = aggregated(&receiver, "1");
    let dir = std::env::temp_dir().join(format!("tokentrace-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: frontend\n    static_configs:\n      - targets: [\"{addr}\"]\n"
        ),
    )
    .unwrap();
    let port = system::free_port();
    let _prometheus = system::KillOnDrop(
        std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--enable-feature=exemplar-storage")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );

    let ids: Vec<String> = (0..5).map(|i| format!("prom-{i}")).collect();
    for id in &ids {
        demo::stream_chat(addr, id, "hello metrics", 4).await.unwrap();
    }
    let count = |result: &serde_json::Value| -> Option<f64> {
        result["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let query = "/api/v1/query?query=sum(dynamo_frontend_time_to_first_token_seconds_count)";
    let mut counted = None;
    for _ in 0..120 {
        counted = count(&prometheus_api(port, query).await);
        if counted == Some(ids.len() as f64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(counted, Some(ids.len() as f64), "Prometheus counted every request's TTFT");
    let itl = count(
        &prometheus_api(port, "/api/v1/query?query=sum(dynamo_frontend_inter_token_latency_seconds_count)")
            .await,
    );
    assert_eq!(itl, Some((ids.len() * 3) as f64), "every gap of every stream");

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let exemplars = prometheus_api(
        port,
        &format!(
            "/api/v1/query_exemplars?query=dynamo_frontend_time_to_first_token_seconds_bucket&start={}&end={}",
            now - 600,
            now + 60
        ),
    )
    .await;
    let trace_ids: Vec<String> = exemplars["data"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
        .filter_map(|exemplar| exemplar["labels"]["trace_id"].as_str().map(str::to_owned))
        .collect();
    assert!(!trace_ids.is_empty(), "Prometheus stored exemplars: {exemplars}");

    stop(vec![frontend, worker]).await;
    demo::wait_for_traces(&receiver.received, &ids, 6).await;
    let traces: std::collections::HashSet<String> = ids
        .iter()
        .filter_map(|id| {
            demo::trace_of(&receiver.received, id).first().map(|span| span.span.trace_id.clone())
        })
        .map(|bytes| bytes.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    assert_eq!(traces.len(), ids.len());
    for trace_id in &trace_ids {
        assert!(traces.contains(trace_id), "exemplar {trace_id} opens a trace of one of the requests");
    }
    receiver.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_cancels_the_whole_chain() {
    let receiver = receiver::grpc().await;
    let (worker, frontend, addr) = aggregated(&receiver, "20");
    let mut body = open_stream(addr, "gone-1", 500).await;
    for _ in 0..3 {
        body.frame().await.unwrap().unwrap();
    }
    drop(body); // the client goes away
                // Judged while the frontend still runs and holds its connection to the worker: the worker's
                // spans can only end early if the cancel crossed the RPC hop (uncancelled, its 500 tokens
                // take 10 s, past the wait's deadline).
    receiver
        .received
        .wait_for("the worker's spans", |r| has_spans(r, "gone-1", &["handle_payload", "decode"]))
        .await;
    let spans = demo::trace_of(&receiver.received, "gone-1");
    stop(vec![frontend, worker]).await;
    let http = one(&spans, "http-request", "dynamo-frontend");
    let decode = one(&spans, "decode", "dynamo-worker-vllm");
    let handle = one(&spans, "handle_payload", "dynamo-worker-vllm");
    assert_eq!(attr(http, "cancelled").as_deref(), Some("true"));
    assert_eq!(attr(handle, "outcome").as_deref(), Some("cancelled"), "the cancel crossed the RPC hop");
    assert_eq!(attr(decode, "cancelled").as_deref(), Some("true"));
    let produced: u64 = attr(decode, "gen_ai.usage.output_tokens").unwrap().parse().unwrap();
    // Three tokens read, then the cancel: a second's worth of 20 ms steps at the very most.
    assert!(produced < 60, "the worker stopped soon after the client left ({produced} tokens)");
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_gives_an_error_and_the_frontend_survives() {
    let receiver = receiver::grpc().await;
    let (worker, frontend, addr) = aggregated(&receiver, "20");
    let streaming = tokio::spawn(async move { demo::stream_chat(addr, "killed-1", "go", 500).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::spawn_blocking(move || worker.kill()).await.unwrap();
    let error = streaming.await.unwrap().unwrap_err();
    assert!(error.contains("stream failed") && error.contains("connection lost"), "{error}");

    // The frontend is still up, and says the worker is unavailable.
    let client = demo::http_client();
    let health = client.get(format!("http://{addr}/health").parse().unwrap()).await.unwrap();
    assert_eq!(health.status(), 200);
    let request = http::Request::post(format!("http://{addr}/v1/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(r#"{"prompt":"again","max_tokens":2}"#)))
        .unwrap();
    let again = client.request(request).await.unwrap();
    assert_eq!(again.status(), 503);

    stop(vec![frontend]).await;
    receiver
        .received
        .wait_for("the frontend's spans", |r| has_spans(r, "killed-1", &["http-request", "generate"]))
        .await;
    let spans = demo::trace_of(&receiver.received, "killed-1");
    let http = one(&spans, "http-request", "dynamo-frontend");
    let client_span = one(&spans, "generate", "dynamo-frontend");
    assert_eq!(
        http.span.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32),
        "the trace shows the failure"
    );
    assert_eq!(attr(http, "error.type").as_deref(), Some("connection_lost"));
    assert_eq!(attr(client_span, "outcome").as_deref(), Some("error"));
    receiver.stop().await;
}

/// Over NATS, against a real nats-server: two workers in one queue group share the frontend's
/// requests, each request one trace across the processes; after one worker leaves gracefully,
/// the other, killed mid-stream, is an error the trace shows, within the silence limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_nats_two_workers_share_the_load_and_a_killed_one_is_an_error() {
    let Some(nats) = system::NatsServer::start() else { return };
    let receiver = receiver::grpc().await;
    let over_nats = ["--transport", "nats", "--nats-url", &nats.url, "--nats-silence-ms", "500"];
    let worker = |id: &str| {
        let args =
            [&["worker", "--role", "agg", "--step-ms", "20", "--instance-id", id][..], &over_nats].concat();
        spawn("worker", &args, export_env(&receiver, "dynamo-worker-vllm"))
    };
    let (first, second) = (worker("1"), worker("2"));
    assert_eq!(first.addr, "tokentrace.backend", "a NATS worker reports its subject");
    let frontend_args = [&["frontend", "--listen", "127.0.0.1:0"][..], &over_nats].concat();
    let frontend = spawn("frontend", &frontend_args, export_env(&receiver, "dynamo-frontend"));
    let addr: SocketAddr = frontend.addr.parse().unwrap();

    let ids: Vec<String> = (0..16).map(|i| format!("nats-{i}")).collect();
    for id in &ids {
        assert_eq!(demo::stream_chat(addr, id, "hello nats", 2).await.unwrap().tokens, 2);
    }
    // The second worker leaves: it unsubscribes, finishes, and flushes its spans.
    stop(vec![second]).await;
    let mut body = open_stream(addr, "nats-killed", 500).await;
    for _ in 0..3 {
        body.frame().await.unwrap().unwrap();
    }
    tokio::task::spawn_blocking(move || first.kill()).await.unwrap();
    let rest =
        tokio::time::timeout(Duration::from_secs(10), body.collect()).await.expect("the stream never hangs");
    let rest = String::from_utf8(rest.unwrap().to_bytes().to_vec()).unwrap();
    // Detected by the configured silence limit (500 ms), not by a default or a later timeout.
    assert!(rest.contains("event: error") && rest.contains("no word from the worker"), "{rest}");
    assert!(rest.contains("for 500ms"), "the silence limit set on the command line: {rest}");

    stop(vec![frontend]).await;
    receiver
        .received
        .wait_for("the frontend's spans", |r| {
            ids.iter()
                .chain(["nats-killed".to_owned()].iter())
                .all(|id| has_spans(r, id, &["http-request", "generate"]))
        })
        .await;
    // The second worker's spans were flushed as it left; the first's died with it.
    let mut by_second = 0;
    for id in &ids {
        let spans = demo::trace_of(&receiver.received, id);
        let client = one(&spans, "generate", "dynamo-frontend");
        assert_child(one(&spans, "http-request", "dynamo-frontend"), client);
        if let Some(handle) = named(&spans, "handle_payload").first() {
            assert_eq!(attr(handle, "instance_id").as_deref(), Some("2"));
            assert_child(client, handle);
            by_second += 1;
        }
    }
    assert!((1..ids.len()).contains(&by_second), "both workers served: the second took {by_second} of 16");
    let spans = demo::trace_of(&receiver.received, "nats-killed");
    let http = one(&spans, "http-request", "dynamo-frontend");
    assert_eq!(http.span.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));
    assert_eq!(attr(http, "error.type").as_deref(), Some("connection_lost"));
    assert_eq!(attr(one(&spans, "generate", "dynamo-frontend"), "outcome").as_deref(), Some("error"));
    receiver.stop().await;
}

fn yaml_documents(path: &str) -> Vec<serde_yaml::Value> {
    parse_yaml_documents(
        &std::fs::read_to_string(format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap(),
    )
}

/// Every document of a multi-document YAML text.
fn parse_yaml_documents(text: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect()
}

fn env_of(container: &serde_yaml::Value) -> std::collections::HashMap<String, String> {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

#[test]
fn kubernetes_manifests_parse_and_set_the_tracing_variables() {
    const COLLECTOR: &str = "http://otel-collector.observability.svc.cluster.local:4317";
    for (dir, services) in [
        ("examples/deploy/k8s/agg", vec!["dynamo-frontend", "dynamo-worker-vllm"]),
        (
            "examples/deploy/k8s/disagg",
            vec!["dynamo-frontend", "dynamo-worker-decode", "dynamo-worker-prefill"],
        ),
    ] {
        let kustomization = &yaml_documents(&format!("{dir}/kustomization.yaml"))[0];
        let file = format!("{dir}/{}", kustomization["resources"][0].as_str().unwrap());
        let deployments: Vec<_> =
            yaml_documents(&file).into_iter().filter(|d| d["kind"] == "Deployment").collect();
        let mut seen = Vec::new();
        for deployment in &deployments {
            let container = &deployment["spec"]["template"]["spec"]["containers"][0];
            let env = env_of(container);
            assert_eq!(env["OTEL_EXPORT_ENABLED"], "true", "{file}");
            assert_eq!(env["DYN_LOGGING_JSONL"], "true", "{file}");
            assert_eq!(
                env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"], COLLECTOR,
                "{file}: to the collector, not Tempo"
            );
            assert_eq!(container["imagePullPolicy"], "IfNotPresent", "{file}");
            assert!(
                container["readinessProbe"].is_mapping() && container["livenessProbe"].is_mapping(),
                "{file}"
            );
            assert!(container["resources"]["requests"]["cpu"].is_string(), "{file}");
            assert!(container["resources"]["limits"]["memory"].is_string(), "{file}");
            seen.push(env["OTEL_SERVICE_NAME"].clone());
        }
        seen.sort();
        assert_eq!(seen, services, "{file}");
    }

    // The collector the workloads export to, and where it sends each signal.
    let collector: Vec<_> = yaml_documents("examples/deploy/k8s/otel-collector.yaml");
    let config: serde_yaml::Value =
        serde_yaml::from_str(collector[0]["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(config["exporters"]["otlp/tempo"]["endpoint"], "tempo:4317");
    assert_eq!(config["service"]["pipelines"]["logs"]["exporters"][0], "otlphttp/loki");
    let service = collector.iter().find(|d| d["kind"] == "Service").unwrap();
    assert_eq!(service["metadata"]["name"], "otel-collector");
    assert_eq!(service["metadata"]["namespace"], "observability");

    // The CUDA overlays: each worker of the base gets a GPU, the CUDA image and the CUDA engine,
    // and the frontend tokenizes for that engine.
    for (overlay, workers) in [
        ("examples/deploy/k8s/cuda-agg", vec!["dynamo-worker-vllm"]),
        ("examples/deploy/k8s/cuda-disagg", vec!["dynamo-worker-decode", "dynamo-worker-prefill"]),
    ] {
        let (kustomization, patches) = overlay_of(overlay);
        let base = kustomization["resources"][0].as_str().unwrap();
        assert!(
            std::path::Path::new(&format!(
                "{}/../../{overlay}/{base}/kustomization.yaml",
                env!("CARGO_MANIFEST_DIR")
            ))
            .exists(),
            "{overlay}"
        );
        let mut patched: Vec<String> = Vec::new();
        for patch in &patches {
            let container = &patch["spec"]["template"]["spec"]["containers"][0];
            if patch["metadata"]["name"] == "dynamo-frontend" {
                assert_eq!(arg(&args_of(container), "--engine"), Some("cuda"), "{overlay}");
                continue;
            }
            assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], 1, "{overlay}");
            assert_eq!(container["image"], "tokentrace-serve:cuda", "{overlay}");
            assert_eq!(arg(&args_of(container), "--engine"), Some("cuda"), "{overlay}");
            patched.push(patch["metadata"]["name"].as_str().unwrap().to_owned());
        }
        patched.sort();
        assert_eq!(patched, workers, "{overlay}");
    }
}

/// The value after `flag` in a container's args.
fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.windows(2).find(|w| w[0] == flag).map(|w| w[1].as_str())
}

fn args_of(container: &serde_yaml::Value) -> Vec<String> {
    container["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect()
}

/// A kustomize overlay's `kustomization.yaml` and the documents of its patches, in order.
fn overlay_of(overlay: &str) -> (serde_yaml::Value, Vec<serde_yaml::Value>) {
    let kustomization = yaml_documents(&format!("{overlay}/kustomization.yaml")).remove(0);
    let patches = kustomization["patches"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|patch| yaml_documents(&format!("{overlay}/{}", patch["path"].as_str().unwrap())).remove(0))
        .collect();
    (kustomization, patches)
}

/// The NATS overlays: every component's args are accepted by the binary itself and name one
/// another consistently (the frontend calls the subject its workers serve, a decode worker the
/// prefill workers' subject, everyone the `nats` Service); a worker's probes watch the metrics
/// port it opens once it serves. Where `kubectl` is installed, the overlays are also rendered
/// as `kubectl apply -k` would, and the result checked: each patch merged into its base
/// container (not added as a second one), the workers scaled out, NATS deployed.
#[test]
fn kubernetes_nats_overlays_put_every_hop_on_nats() {
    let nats = yaml_documents("examples/deploy/k8s/nats/nats.yaml");
    let service = nats.iter().find(|d| d["kind"] == "Service").unwrap();
    let nats_url = format!(
        "nats://{}:{}",
        service["metadata"]["name"].as_str().unwrap(),
        service["spec"]["ports"][0]["port"].as_u64().unwrap()
    );
    assert_eq!(nats_url, "nats://nats:4222");

    for (overlay, base, frontend_calls) in [
        ("examples/deploy/k8s/nats-agg", "../agg", "tokentrace.backend"),
        ("examples/deploy/k8s/nats-disagg", "../disagg", "tokentrace.decode"),
    ] {
        let (kustomization, patches) = overlay_of(overlay);
        let resources: Vec<&str> =
            kustomization["resources"].as_sequence().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        assert_eq!(resources, [base, "../nats"], "{overlay}");
        for patch in &patches {
            let container = &patch["spec"]["template"]["spec"]["containers"][0];
            let args = args_of(container);
            let parsed = std::process::Command::new(serve_exe()).args(&args).arg("--help").output().unwrap();
            assert!(
                parsed.status.success(),
                "{overlay}: serve rejects {args:?}: {}",
                String::from_utf8_lossy(&parsed.stderr)
            );
            assert_eq!(arg(&args, "--transport"), Some("nats"), "{overlay}: {args:?}");
            assert_eq!(arg(&args, "--nats-url"), Some(nats_url.as_str()), "{overlay}: {args:?}");
            match args[0].as_str() {
                "frontend" => assert_eq!(arg(&args, "--worker"), Some(frontend_calls), "{overlay}"),
                "worker" => {
                    let metrics_port = arg(&args, "--metrics-listen").unwrap().rsplit(':').next().unwrap();
                    for probe in ["readinessProbe", "livenessProbe"] {
                        assert_eq!(
                            container[probe]["tcpSocket"]["port"].as_u64().map(|p| p.to_string()).as_deref(),
                            Some(metrics_port),
                            "{overlay}: {probe} watches the port opened once the worker serves"
                        );
                    }
                    assert!(patch["spec"]["replicas"].as_u64() >= Some(2), "{overlay}: scaled out");
                    if arg(&args, "--role") == Some("decode") {
                        assert_eq!(arg(&args, "--prefill"), Some("tokentrace.prefill"), "{overlay}");
                    }
                }
                other => panic!("{overlay}: unexpected command {other}"),
            }
        }

        let root = format!("{}/../../{overlay}", env!("CARGO_MANIFEST_DIR"));
        let rendered = match std::process::Command::new("kubectl").args(["kustomize", &root]).output() {
            Ok(output) => output,
            Err(error) => {
                eprintln!("skipped rendering {overlay}: kubectl not found ({error})");
                continue;
            }
        };
        assert!(rendered.status.success(), "{overlay}: {}", String::from_utf8_lossy(&rendered.stderr));
        let documents = parse_yaml_documents(std::str::from_utf8(&rendered.stdout).unwrap());
        let deployments: Vec<_> = documents.iter().filter(|d| d["kind"] == "Deployment").collect();
        assert!(deployments.iter().any(|d| d["metadata"]["name"] == "nats"), "{overlay}");
        for deployment in deployments.iter().filter(|d| d["metadata"]["name"] != "nats") {
            let name = deployment["metadata"]["name"].as_str().unwrap();
            let containers = deployment["spec"]["template"]["spec"]["containers"].as_sequence().unwrap();
            assert_eq!(containers.len(), 1, "{overlay}: {name}'s patch names its base container");
            assert_eq!(arg(&args_of(&containers[0]), "--transport"), Some("nats"), "{overlay}: {name}");
            assert_eq!(env_of(&containers[0])["OTEL_SERVICE_NAME"], name, "{overlay}: tracing env kept");
            if name != "dynamo-frontend" {
                assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2), "{overlay}: {name}");
            }
        }
    }
}

#[test]
fn the_compose_stack_and_its_configs_parse_and_connect() {
    let compose = &yaml_documents("examples/deploy/docker-compose.yml")[0];
    for service in ["otel-collector", "tempo", "loki", "prometheus", "grafana", "nats"] {
        assert!(compose["services"][service].is_mapping(), "service {service}");
    }
    assert_eq!(compose["services"]["nats"]["ports"][0], "4222:4222", "the launch scripts' NATS_URL");
    let ports: Vec<_> = compose["services"]["otel-collector"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert!(ports.contains(&"4317:4317".to_owned()) && ports.contains(&"4318:4318".to_owned()));
    let grafana = &compose["services"]["grafana"];
    assert_eq!(grafana["environment"]["GF_SECURITY_ADMIN_USER"], "dynamo");
    assert_eq!(grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"], "dynamo");
    assert!(grafana["ports"][0].as_str().unwrap().starts_with("3000:"));

    let collector = &yaml_documents("examples/deploy/otel-collector-config.yaml")[0];
    assert_eq!(collector["exporters"]["otlp/tempo"]["endpoint"], "tempo:4317");
    let reader =
        &collector["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"];
    assert_eq!(reader["port"], 8888, "the collector's metrics in the `readers` form");
    assert_eq!(collector["service"]["pipelines"]["logs"]["exporters"][0], "otlphttp/loki");

    let datasources = &yaml_documents("examples/deploy/grafana/provisioning/datasources/datasources.yaml")[0];
    let sources = datasources["datasources"].as_sequence().unwrap();
    let tempo = sources.iter().find(|d| d["type"] == "tempo").unwrap();
    let loki = sources.iter().find(|d| d["type"] == "loki").unwrap();
    assert_eq!(tempo["jsonData"]["tracesToLogsV2"]["datasourceUid"], loki["uid"], "traces link to logs");
    assert!(
        loki["jsonData"]["derivedFields"]
            .as_sequence()
            .unwrap()
            .iter()
            .all(|f| f["datasourceUid"] == tempo["uid"]),
        "logs link to traces"
    );

    // Metrics: Prometheus stores exemplars, and an exemplar's trace_id opens Tempo.
    let prometheus_args: Vec<&str> = compose["services"]["prometheus"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(prometheus_args.contains(&"--enable-feature=exemplar-storage"));
    let prometheus = sources.iter().find(|d| d["type"] == "prometheus").unwrap();
    let destination = &prometheus["jsonData"]["exemplarTraceIdDestinations"][0];
    assert_eq!((&destination["name"], &destination["datasourceUid"]), (&"trace_id".into(), &tempo["uid"]));
}

/// The provisioned dashboard: loaded by its provider, every query names a metric the frontend
/// serves, and the latency panels show exemplars.
#[test]
fn the_grafana_dashboard_queries_the_frontends_metrics_with_exemplars() {
    let provider = &yaml_documents("examples/deploy/grafana/provisioning/dashboards/dashboards.yaml")[0];
    assert_eq!(provider["providers"][0]["options"]["path"], "/etc/grafana/provisioning/dashboards");
    let path = format!(
        "{}/../../examples/deploy/grafana/provisioning/dashboards/tokentrace-frontend.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();

    let metrics = tokentrace::metrics::FrontendMetrics::new();
    let cx = tokentrace::opentelemetry::Context::new();
    let request = metrics.start(&cx, "m", "chat_completions", true);
    let tokens = tokentrace::inference::TokenStream::new(
        futures_util::stream::iter([Ok::<_, String>(demo_token()), Ok(demo_token())]),
        tokentrace::inference::StatsTarget::Detached,
        tokentrace::inference::StreamOptions::new(),
    )
    .record_metrics(request);
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(futures_util::StreamExt::count(tokens));
    let served = metrics.render(tokentrace::metrics::Format::Prometheus);

    let panels = dashboard["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for title in ["Time to first token", "Inter-token latency", "Request duration", "Throughput", "In flight"]
    {
        assert!(titles.contains(&title), "{title} panel: {titles:?}");
    }
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let metric = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .find(|word| word.starts_with("dynamo_frontend_"))
                .unwrap_or_else(|| panic!("{expr}"));
            assert!(served.contains(&format!("\n{metric}{{")), "{metric} is served");
            if panel["title"].as_str().is_some_and(|t| t.contains("latency") || t.contains("first token")) {
                assert_eq!(target["exemplar"], true, "{expr}");
            }
        }
    }
}

/// One generated token of the example's protocol.
fn demo_token() -> impl tokentrace::inference::TokenChunk {
    struct Token;
    impl tokentrace::inference::TokenChunk for Token {
        fn token_count(&self) -> u32 {
            1
        }
    }
    Token
}

/// `promtool check config` (Debian's `prometheus` package) on the stack's Prometheus config.
/// Without promtool the test says it skipped, unless `TOKENTRACE_REQUIRE_PROMETHEUS` is set (CI).
#[test]
fn the_prometheus_config_passes_promtool() {
    let config = format!("{}/../../examples/deploy/prometheus.yml", env!("CARGO_MANIFEST_DIR"));
    if !system::installed("promtool", "prometheus", "TOKENTRACE_REQUIRE_PROMETHEUS") {
        return;
    }
    let output = std::process::Command::new("promtool").args(["check", "config", &config]).output().unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_launch_scripts_are_valid_bash_and_name_the_components() {
    let read = |script: &str| {
        let path = format!("{}/../../{script}", env!("CARGO_MANIFEST_DIR"));
        let status = std::process::Command::new("bash").args(["-n", &path]).status().unwrap();
        assert!(status.success(), "{script} has a syntax error");
        std::fs::read_to_string(&path).unwrap()
    };
    let common = read("examples/launch/common.sh");
    for needle in [
        "DYN_LOGGING_JSONL=true",
        "OTEL_EXPORT_ENABLED=true",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT:-http://localhost:4317",
        "curl",
        "OTEL_SERVICE_NAME=\"$name\"",
    ] {
        assert!(common.contains(needle), "common.sh lacks {needle}");
    }
    for (script, names) in [
        ("examples/launch/agg_tracing.sh", vec!["dynamo-frontend", "dynamo-worker-vllm"]),
        (
            "examples/launch/disagg_tracing.sh",
            vec!["dynamo-frontend", "dynamo-worker-decode", "dynamo-worker-prefill"],
        ),
    ] {
        let text = read(script);
        assert!(text.contains("source \"$(dirname \"$0\")/common.sh\""), "{script} sources common.sh");
        for name in names {
            assert!(text.contains(&format!("start {name} ")), "{script} lacks {name}");
        }
    }
}

/// The prepared GPU check (`examples/launch/gpu_check.sh`) runs end to end here with
/// `ENGINE=toy`, so a session that has a GPU only has to run it; and the demo explains a worker
/// that cannot start (here: the CUDA engine without a driver, or without `--features cuda`).
#[test]
fn the_gpu_check_script_runs_on_the_cpu_engine_and_failures_explain_themselves() {
    let script = format!("{}/../launch/gpu_check.sh", env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new("bash")
        .arg(&script)
        .arg(serve_exe())
        .env("ENGINE", "toy")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for line in ["ok    agg-toy", "ok    disagg-toy", "agg-toy: 3 traced requests", "skip  text comparison"] {
        assert!(stdout.contains(line), "no `{line}` in:\n{stdout}");
    }

    let refused =
        std::process::Command::new(serve_exe()).args(["agg", "--demo", "--engine", "cuda"]).output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("worker exited before it was ready") && stderr.contains("CUDA"),
        "the worker's own reason is shown: {stderr}"
    );
}

/// A running launch script, stopped like Ctrl-C would (SIGTERM: its trap stops every component,
/// which flushes its telemetry), also when a test fails half-way.
struct LaunchScript(Option<std::process::Child>);

impl LaunchScript {
    fn stop(&mut self) {
        if let Some(mut script) = self.0.take() {
            let _ = std::process::Command::new("kill").args(["-TERM", &script.id().to_string()]).status();
            let _ = script.wait();
        }
    }
}

impl Drop for LaunchScript {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port free on 127.0.0.1 right now (the launch scripts take fixed ports).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disaggregated_launch_script_serves_one_trace_with_correlated_logs() {
    launch_disaggregated(None).await;
}

/// The same script with `NATS_URL` set: the components call each other over NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disaggregated_launch_script_over_nats_serves_one_trace_with_correlated_logs() {
    let Some(nats) = system::NatsServer::start() else { return };
    launch_disaggregated(Some(&nats.url)).await;
}

async fn launch_disaggregated(nats_url: Option<&str>) {
    let receiver = receiver::grpc().await;
    let [frontend, decode, prefill] = [system::free_port(), system::free_port(), system::free_port()];
    let [decode_metrics, prefill_metrics] = [system::free_port(), system::free_port()];
    let logs = std::env::temp_dir().join(format!("tokentrace-launch-{}.log", std::process::id()));
    let log_file = std::fs::File::create(&logs).unwrap();
    // SERVE: the binary `cargo test` built, so the script does not build one itself.
    let mut script = LaunchScript(Some(
        std::process::Command::new("bash")
            .arg(format!("{}/../launch/disagg_tracing.sh", env!("CARGO_MANIFEST_DIR")))
            .env("SERVE", serve_exe())
            .env("ENGINE", "toy")
            .env("FRONTEND_PORT", frontend.to_string())
            .env("DECODE_PORT", decode.to_string())
            .env("PREFILL_PORT", prefill.to_string())
            .env("DECODE_METRICS_PORT", decode_metrics.to_string())
            .env("PREFILL_METRICS_PORT", prefill_metrics.to_string())
            .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint())
            .envs(nats_url.map(|url| ("NATS_URL", url)))
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap(),
    ));
    let addr: SocketAddr = format!("127.0.0.1:{frontend}").parse().unwrap();
    let health = format!("http://{addr}/health").parse::<http::Uri>().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while demo::http_client().get(health.clone()).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the frontend never answered: {}",
            std::fs::read_to_string(&logs).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids = ["launch-1".to_owned()];
    let answer = demo::stream_chat(addr, &ids[0], "hello from the launch script", 4).await.unwrap();
    assert_eq!(answer.tokens, 4);
    // Over NATS the workers listen on no port: the decode worker names its peer by subject.
    let peer =
        if nats_url.is_some() { "tokentrace.prefill".to_owned() } else { format!("127.0.0.1:{prefill}") };
    // Each worker serves its metrics where the script says.
    for (port, phase) in [(decode_metrics, "decode"), (prefill_metrics, "prefill")] {
        let uri: http::Uri = format!("http://127.0.0.1:{port}/metrics").parse().unwrap();
        let response = demo::http_client().get(uri).await.unwrap();
        let text = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.lines().any(|line| line.starts_with("tokentrace_worker_phase_duration_seconds_count{")
                && line.contains(&format!("phase=\"{phase}\""))
                && line.ends_with(" 1")),
            "{phase} worker metrics: {text}"
        );
    }

    tokio::task::spawn_blocking(move || script.stop()).await.unwrap();
    demo::wait_for_traces(&receiver.received, &ids, 10).await;

    let spans = demo::trace_of(&receiver.received, &ids[0]);
    let services: std::collections::BTreeSet<_> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        ["dynamo-frontend", "dynamo-worker-decode", "dynamo-worker-prefill"],
        "the service names the script sets"
    );
    assert_eq!(spans.len(), 10, "{:?}", spans.iter().map(|s| (&s.span.name, &s.service)).collect::<Vec<_>>());
    assert_eq!(attr(one(&spans, "remote_prefill", "dynamo-worker-decode"), "server.address"), Some(peer));
    // JSON Lines logs (DYN_LOGGING_JSONL=true), from all three processes, carry the trace id:
    // the frontend's, the decode worker's (endpoint `generate`) and the prefill worker's
    // (endpoint `remote_prefill`).
    let trace_id: String = spans[0].span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&logs)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line: &serde_json::Value| line["x_request_id"] == "launch-1")
        .collect();
    let from = |file: &str, endpoint: Option<&str>| {
        lines.iter().any(|line| {
            line["file"].as_str().is_some_and(|f| f.ends_with(file))
                && endpoint.is_none_or(|endpoint| line["endpoint"] == endpoint)
        })
    };
    assert!(from("frontend.rs", None), "a frontend line: {lines:?}");
    assert!(from("worker.rs", Some("generate")), "a decode worker line: {lines:?}");
    assert!(from("worker.rs", Some("remote_prefill")), "a prefill worker line: {lines:?}");
    assert!(lines.iter().all(|line| line["trace_id"] == trace_id.as_str()), "{lines:?}");
    let _ = std::fs::remove_file(&logs);
    receiver.stop().await;
}

#[test]
fn a_launch_script_whose_worker_cannot_start_stops_with_its_message() {
    let [frontend, worker] = [system::free_port(), system::free_port()];
    let output = std::process::Command::new("bash")
        .arg(format!("{}/../launch/agg_tracing.sh", env!("CARGO_MANIFEST_DIR")))
        .env("SERVE", serve_exe())
        .env("ENGINE", "abacus")
        .env("FRONTEND_PORT", frontend.to_string())
        .env("WORKER_PORT", worker.to_string())
        .env("WORKER_METRICS_PORT", system::free_port().to_string())
        .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("invalid value 'abacus' for '--engine <ENGINE>'"), "{stderr}");
    assert!(stderr.contains(&format!("a component exited before listening on port {worker}")), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("curl"),
        "no curl offered for a broken deployment"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", frontend)).is_err(), "no frontend was started");
}
