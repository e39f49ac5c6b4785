//! End to end: streamed chat completions over real loopback HTTP (the example's frontend) and
//! RPC (its worker, CPU engine), at concurrency 1, 16 and 64, tracing off (the no-op tracer)
//! against tracing on (100% sampled, exported over OTLP/gRPC to a receiver in this process),
//! instrumented but not exported, and 1% head sampling with keep rules (exported to a receiver
//! of its own, whose share of the spans is printed), one after the other in one run, on the
//! same deployment: the example's layers start each span with the global tracer provider, which
//! each measurement installs first. Reports tokens/s and client-side TTFT p50/p99, in two regimes:
//! `step 0 ms`, where the 2-core machine is saturated by HTTP, RPC and the engine, so every
//! cycle tracing takes shows (the worst case), and `step 5 ms`, a GPU-like inter-token latency.
//!
//! Run: `cargo bench --bench pipeline` (about a minute); the latest figures are in
//! `BENCHMARKS.md`.

#[allow(dead_code)]
#[path = "../examples/serve/demo/driver.rs"]
mod demo;
#[allow(dead_code)]
#[path = "../examples/serve/engine.rs"]
mod engine;
#[allow(dead_code)]
#[path = "../examples/serve/frontend.rs"]
mod frontend;
#[allow(dead_code)]
#[path = "../examples/serve/model/mod.rs"]
mod model;
#[allow(dead_code)]
#[path = "../examples/serve/protocol.rs"]
mod protocol;
#[path = "../examples/serve/demo/receiver.rs"]
mod receiver;
#[allow(dead_code)]
#[path = "../examples/serve/sampling.rs"]
mod sampling;
#[allow(dead_code)]
#[path = "../examples/serve/transport.rs"]
mod transport;
#[allow(dead_code)]
#[path = "../examples/serve/worker.rs"]
mod worker;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use opentelemetry::trace::noop::NoopTracerProvider;
use tokentrace::telemetry::{Telemetry, TelemetryConfig};

mod support;

const MAX_TOKENS: u32 = 32;

/// Installs one mode's tracer provider as the global one.
type Install = Box<dyn Fn()>;
const MEASURE: Duration = Duration::from_secs(3);

/// Starts a worker and a frontend whose layers take their tracers from the current global
/// provider, and sends one request so every lazily built layer exists.
async fn deployment(step: Duration) -> SocketAddr {
    start(engine::CpuEngine::new(), frontend::Preprocessor::Toy, step).await
}

/// A worker running `engine` and a frontend tokenizing with `preprocessor`, as `deployment`.
async fn start<E: engine::Engine>(
    engine: E,
    preprocessor: frontend::Preprocessor,
    step: Duration,
) -> SocketAddr {
    let worker_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker_addr = worker_listener.local_addr().unwrap();
    let config = worker::WorkerConfig {
        role: worker::Role::Aggregated,
        step,
        slots: 256,
        instance_id: 1,
        prefill: None,
        name: "bench-worker".into(),
        metrics: tokentrace::metrics::WorkerMetrics::new("backend"),
    };
    let bound = transport::Bound::Tcp(worker_listener);
    tokio::spawn(worker::serve(engine, config, bound, std::future::pending()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = transport::Transport::Tcp.peer(worker_addr.to_string()).await.unwrap();
    let metrics = tokentrace::metrics::FrontendMetrics::new();
    let app = frontend::app(peer, "bench".into(), metrics, false, preprocessor);
    let listener = axum::serve::ListenerExt::tap_io(listener, |socket| {
        let _ = socket.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    one_request(&demo::http_client(), addr).await;
    addr
}

/// One streamed request: (time to first token, tokens).
async fn one_request(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
) -> (Duration, usize) {
    let body = format!(
        r#"{{"model":"bench","messages":[{{"role":"user","content":"Tell me about the pipeline of a factory."}}],"max_tokens":{MAX_TOKENS},"temperature":0,"stream":true}}"#
    );
    let request = http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let started = Instant::now();
    let mut body = client.request(request).await.unwrap().into_body();
    let mut ttft = None;
    let mut tokens = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            let found = data.windows(10).filter(|w| w == b"\"content\":").count();
            if found > 0 && ttft.is_none() {
                ttft = Some(started.elapsed());
            }
            tokens += found;
        }
    }
    (ttft.unwrap_or_default(), tokens)
}

struct Run {
    tokens_per_s: f64,
    ttft_p50_ms: f64,
    ttft_p99_ms: f64,
    requests: usize,
}

async fn measure(addr: SocketAddr, concurrency: usize) -> Run {
    measure_for(addr, concurrency, MEASURE).await
}

async fn measure_for(addr: SocketAddr, concurrency: usize, time: Duration) -> Run {
    let deadline = Instant::now() + time;
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            tokio::spawn(async move {
                let client = demo::http_client();
                let mut samples = Vec::new();
                while Instant::now() < deadline {
                    samples.push(one_request(&client, addr).await);
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let tokens: usize = samples.iter().map(|(_, t)| t).sum();
    let mut ttfts: Vec<f64> = samples.iter().map(|(t, _)| t.as_secs_f64() * 1e3).collect();
    ttfts.sort_by(f64::total_cmp);
    let quantile = |q: f64| ttfts[((q * ttfts.len() as f64).ceil() as usize).clamp(1, ttfts.len()) - 1];
    Run {
        tokens_per_s: tokens as f64 / elapsed,
        ttft_p50_ms: quantile(0.5),
        ttft_p99_ms: quantile(0.99),
        requests: samples.len(),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that excludes us means: do nothing.
    if std::env::args().skip(1).any(|a| !a.starts_with("--") && !"pipeline".contains(a.as_str())) {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let receiver = receiver::grpc().await;
        let steps = [Duration::ZERO, Duration::from_millis(5)];
        // The example's layers start each span with the global tracer provider installed at that
        // moment, so one deployment per step serves every mode: each measurement installs its
        // mode's provider first.
        let mut deployments = Vec::new();
        for step in steps {
            deployments.push(deployment(step).await);
        }
        let telemetry = support::exporting_traces_to(receiver.endpoint(), &[]);
        // Instrumented and sampled, but exported nowhere: separates the layers' own cost from
        // the export's (conversion, gRPC, and the receiver decoding on the same two cores).
        let unexported = Telemetry::build(TelemetryConfig::from_vars("bench", Vec::<(String, String)>::new()).unwrap()).unwrap();
        // 1% head sampling plus keep rules that an ordinary request does not match: every
        // request recorded and held until it ends, about 1% exported.
        let rules_receiver = receiver::grpc().await;
        let rules = support::exporting_traces_to(
            rules_receiver.endpoint(),
            &[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
                ("TOKENTRACE_TRACES_KEEP", "error,cancelled,ttft>500ms"),
            ],
        );
        let install = |provider: &opentelemetry_sdk::trace::SdkTracerProvider| {
            let provider = provider.clone();
            Box::new(move || opentelemetry::global::set_tracer_provider(provider.clone())) as Install
        };
        let modes: [(&str, Install); 4] = [
            ("off", Box::new(|| opentelemetry::global::set_tracer_provider(NoopTracerProvider::new()))),
            ("on", install(telemetry.tracer_provider())),
            ("on, not exported", install(unexported.tracer_provider())),
            ("1% + keep rules", install(rules.tracer_provider())),
        ];

        println!("| step | concurrency | tracing | requests | tokens/s | TTFT p50 ms | TTFT p99 ms |");
        println!("|---:|---:|---|---:|---:|---:|---:|");
        let mut ratios = Vec::new();
        let mut rules_requests = 0;
        for (index, step) in steps.iter().enumerate() {
            for concurrency in [1, 16, 64] {
                let mut runs = Vec::new();
                for (label, install) in &modes {
                    install();
                    let run = measure(deployments[index], concurrency).await;
                    println!(
                        "| {} ms | {concurrency} | {label} | {} | {:.0} | {:.2} | {:.2} |",
                        step.as_millis(),
                        run.requests,
                        run.tokens_per_s,
                        run.ttft_p50_ms,
                        run.ttft_p99_ms
                    );
                    runs.push(run);
                }
                rules_requests += runs[3].requests;
                let off = runs[0].tokens_per_s;
                ratios.push((step.as_millis(), concurrency, runs[1].tokens_per_s / off, runs[2].tokens_per_s / off, runs[3].tokens_per_s / off));
            }
        }
        opentelemetry::global::set_tracer_provider(NoopTracerProvider::new());
        for (step, concurrency, ratio, unexported, rules) in ratios {
            println!(
                "ratio pipeline/step{step}ms/c{concurrency}: traced/untraced tokens/s = {ratio:.3} (instrumented, not exported: {unexported:.3}; 1% + keep rules: {rules:.3})"
            );
        }
        drop(modes);
        let lost = tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();
        println!("spans received: {}, lost: {}", receiver.received.spans().len(), lost.spans);
        let _ = tokio::task::spawn_blocking(move || rules.shutdown()).await.unwrap();
        // Six spans a request (http-request, the RPC client span, handle_payload, queue,
        // prefill, decode), two processes' worth in one.
        let exported = rules_received(&rules_receiver);
        println!(
            "exported-span fraction, 1% + keep rules: {exported} of {} spans = {:.4}",
            rules_requests * 6,
            exported as f64 / (rules_requests * 6) as f64
        );
        receiver.stop().await;
        rules_receiver.stop().await;
        real_model().await;
    });
}

/// The real model (when it is in the cache): its own prefill and decode speed, then tokens/s
/// and TTFT through the deployment with tracing off and on (exported over OTLP to a receiver
/// here), in interleaved rounds so that both see the same machine.
async fn real_model() {
    let Some(path) = model::fetch::cached() else {
        println!("real model: not in the cache (`cargo run -p serve -- fetch-model`), skipped");
        return;
    };
    let engine = model::ModelEngine::load(&path).unwrap();
    let tokenizer = model::ModelTokenizer::load(&path).unwrap();
    let text = "Tracing follows one request across a frontend and its workers. ".repeat(12);
    let prompt: Vec<u32> = tokenizer.encode(&text).unwrap().into_iter().take(100).collect();
    use engine::Engine as _;
    let started = Instant::now();
    let (mut kv, logits) = engine.prefill(&prompt).unwrap();
    let prefill = started.elapsed();
    let mut token = sampling::argmax(&logits);
    let started = Instant::now();
    for _ in 0..64 {
        token = sampling::argmax(&engine.decode_step(&mut kv, token).unwrap());
    }
    let decode = started.elapsed();
    println!(
        "real model: prefill of {} tokens {:.1} ms ({:.0} tokens/s); decode {:.1} tokens/s (64 steps)",
        prompt.len(),
        prefill.as_secs_f64() * 1e3,
        prompt.len() as f64 / prefill.as_secs_f64(),
        64.0 / decode.as_secs_f64()
    );

    let receiver = receiver::grpc().await;
    let telemetry = support::exporting_traces_to(receiver.endpoint(), &[]);
    let addr = start(engine, frontend::Preprocessor::Model(Box::new(tokenizer)), Duration::ZERO).await;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..4 {
        for traced in if round % 2 == 0 { [false, true] } else { [true, false] } {
            match traced {
                true => opentelemetry::global::set_tracer_provider(telemetry.tracer_provider().clone()),
                false => opentelemetry::global::set_tracer_provider(NoopTracerProvider::new()),
            }
            let run = measure_for(addr, 1, Duration::from_secs(3)).await;
            println!(
                "| real model | round {round} | {} | {} requests | {:.1} tokens/s | TTFT p50 {:.1} ms |",
                if traced { "on" } else { "off" },
                run.requests,
                run.tokens_per_s,
                run.ttft_p50_ms
            );
            if traced { &mut on } else { &mut off }.push(run);
        }
    }
    opentelemetry::global::set_tracer_provider(NoopTracerProvider::new());
    let median = |runs: &[Run], f: fn(&Run) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        (values[1] + values[2]) / 2.0
    };
    println!(
        "ratio pipeline/real model: traced/untraced tokens/s = {:.3}, TTFT p50 = {:.3} (medians of 4 rounds)",
        median(&on, |r| r.tokens_per_s) / median(&off, |r| r.tokens_per_s),
        median(&on, |r| r.ttft_p50_ms) / median(&off, |r| r.ttft_p50_ms)
    );
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();
    receiver.stop().await;
}

fn rules_received(receiver: &receiver::Receiver) -> usize {
    receiver.received.spans().len()
}
