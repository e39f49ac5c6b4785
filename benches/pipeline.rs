//! End to end: streamed chat completions over real loopback HTTP (the example's frontend) and
//! RPC (its worker, CPU engine), at concurrency 1, 16 and 64, tracing off (the no-op tracer)
//! against tracing on (100% sampled, exported over OTLP/gRPC to a receiver in this process),
//! interleaved in one run. Reports tokens/s and client-side TTFT p50/p99, in two regimes:
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
#[path = "../examples/serve/protocol.rs"]
mod protocol;
#[path = "../examples/serve/demo/receiver.rs"]
mod receiver;
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
const MEASURE: Duration = Duration::from_secs(3);

/// Starts a worker and a frontend whose layers take their tracers from the current global
/// provider, and sends one request so every lazily built layer exists.
async fn deployment(step: Duration) -> SocketAddr {
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
    tokio::spawn(worker::serve(engine::CpuEngine::new(), config, bound, std::future::pending()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = transport::Transport::Tcp.peer(worker_addr.to_string()).await.unwrap();
    let app = frontend::app(peer, "bench".into(), tokentrace::metrics::FrontendMetrics::new(), false);
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
        r#"{{"model":"bench","messages":[{{"role":"user","content":"measure the pipeline"}}],"max_tokens":{MAX_TOKENS},"stream":true}}"#
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
    let deadline = Instant::now() + MEASURE;
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
        opentelemetry::global::set_tracer_provider(NoopTracerProvider::new());
        let mut untraced = Vec::new();
        for step in steps {
            untraced.push(deployment(step).await);
        }

        let telemetry = support::exporting_traces_to(receiver.endpoint());
        opentelemetry::global::set_tracer_provider(telemetry.tracer_provider().clone());
        let mut traced = Vec::new();
        for step in steps {
            traced.push(deployment(step).await);
        }
        // Instrumented and sampled, but exported nowhere: separates the layers' own cost from
        // the export's (conversion, gRPC, and the receiver decoding on the same two cores).
        let unexported = Telemetry::build(TelemetryConfig::from_vars("bench", Vec::<(String, String)>::new()).unwrap()).unwrap();
        opentelemetry::global::set_tracer_provider(unexported.tracer_provider().clone());
        let mut instrumented = Vec::new();
        for step in steps {
            instrumented.push(deployment(step).await);
        }

        println!("| step | concurrency | tracing | requests | tokens/s | TTFT p50 ms | TTFT p99 ms |");
        println!("|---:|---:|---|---:|---:|---:|---:|");
        let mut ratios = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            for concurrency in [1, 16, 64] {
                let off = measure(untraced[index], concurrency).await;
                let on = measure(traced[index], concurrency).await;
                let silent = measure(instrumented[index], concurrency).await;
                for (label, run) in [("off", &off), ("on", &on), ("on, not exported", &silent)] {
                    println!(
                        "| {} ms | {concurrency} | {label} | {} | {:.0} | {:.2} | {:.2} |",
                        step.as_millis(),
                        run.requests,
                        run.tokens_per_s,
                        run.ttft_p50_ms,
                        run.ttft_p99_ms
                    );
                }
                ratios.push((step.as_millis(), concurrency, on.tokens_per_s / off.tokens_per_s, silent.tokens_per_s / off.tokens_per_s));
            }
        }
        for (step, concurrency, ratio, unexported) in ratios {
            println!(
                "ratio pipeline/step{step}ms/c{concurrency}: traced/untraced tokens/s = {ratio:.3} (instrumented, not exported: {unexported:.3})"
            );
        }
        let lost = tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();
        println!("spans received: {}, lost: {}", receiver.received.spans().len(), lost.spans);
        receiver.stop().await;
    });
}
