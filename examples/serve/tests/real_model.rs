//! The deployment serving the real model (SmolLM2-135M-Instruct on the CPU), over real processes:
//! aggregated and disaggregated give the same greedy answer, the KV transfer carries the cache's
//! real size, and bad requests get clear 4xx answers. Needs the model in the cache: `.ci/run`
//! fetches it and requires these (`TOKENTRACE_REQUIRE_MODEL`); without it they say they skipped.

mod common;
#[allow(dead_code)]
#[path = "../demo/driver.rs"]
mod demo;
#[allow(dead_code)]
#[path = "../model/fetch.rs"]
mod fetch;
#[allow(dead_code)]
#[path = "../demo/launcher.rs"]
mod launcher;
#[path = "../demo/receiver.rs"]
mod receiver;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

/// The cached model, or `None` (said) where it is not and not required.
fn model_path() -> Option<String> {
    match fetch::cached() {
        Some(path) => Some(path.display().to_string()),
        None => {
            assert!(
                std::env::var_os("TOKENTRACE_REQUIRE_MODEL").is_none(),
                "TOKENTRACE_REQUIRE_MODEL is set but the model is not in {}",
                fetch::cache_dir().display()
            );
            eprintln!("skipped: the model is not in {} (`serve fetch-model`)", fetch::cache_dir().display());
            None
        }
    }
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = demo::http_client().request(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn capital_of_france() -> Value {
    json!({
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 24,
        "temperature": 0,
    })
}

/// The engine flags of every component.
fn engine(model: &str) -> [&str; 4] {
    ["--engine", "cpu", "--model", model]
}

/// A worker of the real model: `serve worker <args>` with the engine flags.
fn worker(name: &'static str, args: &[&str], model: &str, env: Vec<(String, String)>) -> launcher::Component {
    spawn(name, &[&["worker"][..], args, &engine(model)].concat(), env)
}

fn frontend(worker: &str, model: &str, env: Vec<(String, String)>) -> launcher::Component {
    let args = [
        &[
            "frontend",
            "--listen",
            "127.0.0.1:0",
            "--worker",
            worker,
            "--served-model-name",
            "SmolLM2-135M-Instruct",
        ][..],
        &engine(model),
    ]
    .concat();
    spawn("frontend", &args, env)
}

/// Greedy, the answer the model's reference gives (see the engine's own tests), with real
/// token counts; then the same question disaggregated: the same answer, and a KV transfer of
/// layers × 2 × KV heads × head size × prompt tokens × 4 bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_and_disaggregated_give_the_same_answer_with_the_real_kv_cache() {
    let Some(model) = model_path() else { return };
    let receiver = receiver::grpc().await;
    let agg = worker("worker", &["--role", "agg"], &model, export_env(&receiver, "dynamo-worker-vllm"));
    let agg_frontend = frontend(&agg.addr, &model, export_env(&receiver, "dynamo-frontend"));
    let (status, answer) =
        post(agg_frontend.addr.parse().unwrap(), "/v1/chat/completions", capital_of_france()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], "The capital of France is Paris.");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    // The templated prompt: the default system message, the question, the assistant's turn.
    assert_eq!(answer["usage"]["prompt_tokens"], 37);
    assert_eq!(answer["usage"]["completion_tokens"], 8, "seven tokens of text and <|im_end|>");
    stop(vec![agg_frontend, agg]).await;

    let prefill =
        worker("prefill", &["--role", "prefill"], &model, export_env(&receiver, "dynamo-worker-prefill"));
    let decode = worker(
        "decode",
        &["--role", "decode", "--prefill", &prefill.addr],
        &model,
        export_env(&receiver, "dynamo-worker-decode"),
    );
    let disagg_frontend = frontend(&decode.addr, &model, export_env(&receiver, "dynamo-frontend"));
    let (status, disaggregated) =
        post(disagg_frontend.addr.parse().unwrap(), "/v1/chat/completions", capital_of_france()).await;
    assert_eq!(status, 200, "{disaggregated}");
    assert_eq!(disaggregated["choices"], answer["choices"], "the same answer");
    assert_eq!(disaggregated["usage"], answer["usage"]);
    stop(vec![disagg_frontend, decode, prefill]).await;

    receiver
        .received
        .wait_for("the KV transfer's span", |r| r.spans().iter().any(|s| s.span.name == "kv_transfer"))
        .await;
    let spans = receiver.received.spans();
    let transfer = spans.iter().find(|s| s.span.name == "kv_transfer").unwrap();
    let (layers, kv_heads, head_size, prompt_tokens) = (30, 3, 64, 37);
    assert_eq!(
        attr(transfer, "kv.bytes"),
        Some((layers * 2 * kv_heads * head_size * prompt_tokens * 4).to_string())
    );
    receiver.stop().await;
}

/// Bad requests: a clear 4xx each, and the deployment keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_answers_and_the_worker_keeps_serving() {
    let Some(model) = model_path() else { return };
    let worker = worker("worker", &["--role", "agg"], &model, Vec::new());
    let frontend = frontend(&worker.addr, &model, Vec::new());
    let addr: SocketAddr = frontend.addr.parse().unwrap();
    let long = "word ".repeat(9000);
    let cases = [
        (json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}), 404, "does not exist"),
        (json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}), 400, "max_tokens"),
        (json!({"messages": [{"role": "user", "content": long}]}), 400, "context is 8192"),
        (json!({"messages": []}), 400, "messages"),
        (json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 3}), 400, "temperature"),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}),
            400,
            "stop",
        ),
    ];
    for (body, expected, says) in cases {
        let (status, answer) = post(addr, "/v1/chat/completions", body.clone()).await;
        assert_eq!(status, expected, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{body}: {message}");
    }
    let (status, answer) = post(addr, "/v1/chat/completions", capital_of_france()).await;
    assert_eq!(status, 200, "still serving: {answer}");
    // A stop sequence ends the answer before it ("The capital of France is Paris." greedy).
    let mut with_stop = capital_of_france();
    with_stop["stop"] = json!([" is", "Lyon"]);
    let (status, answer) = post(addr, "/v1/chat/completions", with_stop).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], "The capital of France");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    stop(vec![frontend, worker]).await;
}

/// OpenAI's official Python client against the real model (`openai_client.py` with `real`):
/// models, chat, a real answer at temperature 0, streamed chat with `include_usage`,
/// completions, a 400. Skipped without the `openai` package unless `TOKENTRACE_REQUIRE_OPENAI`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_against_the_real_model() {
    let Some(model) = model_path() else { return };
    let worker = worker("worker", &["--role", "agg"], &model, Vec::new());
    let frontend = frontend(&worker.addr, &model, Vec::new());
    let addr = frontend.addr.clone();
    run_openai_client(&addr, &["SmolLM2-135M-Instruct", "real"], vec![frontend, worker]).await;
}

/// A request cancelled mid-generation frees its slot for the next one: on a worker that runs one
/// sequence at a time, a long count is dropped by its client after a few tokens, then another
/// request is sent. The first request's decode ends cancelled, long before its 400 tokens, and
/// the second one's wait for the slot (`queue`) ends only after it: the slot went from one to
/// the other at the cancellation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_frees_its_slot_for_the_next() {
    let Some(model) = model_path() else { return };
    let receiver = receiver::grpc().await;
    let worker = worker(
        "worker",
        &["--role", "agg", "--slots", "1"],
        &model,
        export_env(&receiver, "dynamo-worker-vllm"),
    );
    let frontend = frontend(&worker.addr, &model, export_env(&receiver, "dynamo-frontend"));
    let addr: SocketAddr = frontend.addr.parse().unwrap();
    let count = json!({
        "model": "SmolLM2-135M-Instruct", "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 400,
        "temperature": 0, "stream": true,
    });
    let request = http::Request::post(format!("http://{addr}/v1/completions"))
        .header("content-type", "application/json")
        .header("x-request-id", "long-count")
        .body(Full::new(Bytes::from(count.to_string())))
        .unwrap();
    let mut body = demo::http_client().request(request).await.unwrap().into_body();
    for _ in 0..3 {
        body.frame().await.unwrap().unwrap();
    }
    drop(body);
    let (status, answer) = post(addr, "/v1/chat/completions", capital_of_france()).await;
    assert_eq!(status, 200, "{answer}");
    stop(vec![frontend, worker]).await;

    receiver
        .received
        .wait_for("both requests' worker spans", |r| {
            r.spans().iter().filter(|s| s.span.name == "queue").count() == 2
        })
        .await;
    let spans = receiver.received.spans();
    let long = demo::trace_of(&receiver.received, "long-count");
    let decode = long.iter().find(|s| s.span.name == "decode").expect("the long request's decode");
    assert_eq!(attr(decode, "cancelled").as_deref(), Some("true"));
    let produced: u64 = attr(decode, "gen_ai.usage.output_tokens").and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(produced < 400, "cancelled after {produced} tokens");
    let second_queue = spans
        .iter()
        .filter(|s| s.span.name == "queue")
        .find(|s| s.span.trace_id != decode.span.trace_id)
        .expect("the second request's queue");
    assert!(
        second_queue.span.end_time_unix_nano >= decode.span.end_time_unix_nano,
        "the second request got the slot when the first let it go"
    );
    receiver.stop().await;
}
