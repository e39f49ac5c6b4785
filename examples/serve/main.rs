//! The tokentrace demo deployment: an OpenAI-compatible frontend and inference workers
//! (aggregated, or disaggregated prefill/decode), every hop traced through tokentrace's
//! layers, each component its own process.
//!
//! ```text
//! cargo run --release --example serve -- agg --demo        # run, trace, print waterfalls, exit
//! cargo run --release --example serve -- disagg --demo
//! cargo run --release --example serve -- agg               # serve on 127.0.0.1:8000, print a curl
//! cargo run --release --example serve -- frontend --listen 0.0.0.0:8000 --worker 127.0.0.1:9000
//! cargo run --release --example serve -- worker --role agg --listen 127.0.0.1:9000 [--engine cuda --device 0]
//! ```

mod demo;
mod engine;
mod frontend;
mod launcher;
mod protocol;
mod receiver;
mod worker;

#[cfg(feature = "cuda")]
mod cuda;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use launcher::Component;
use worker::{Role, WorkerConfig};

const USAGE: &str = "\
usage: serve <command> [options]

commands:
  agg       start a frontend and an aggregated worker (child processes)
  disagg    start a frontend, a prefill worker and a decode worker (child processes)
  frontend  run the HTTP frontend            --worker ADDR [--listen ADDR] [--model NAME]
  worker    run a worker                     --role agg|prefill|decode [--listen ADDR]
                                             [--prefill ADDR] (decode role) [--engine cpu|cuda]
                                             [--device N] [--step-ms N] [--slots N] [--instance-id N]

agg/disagg options:
  --demo             send streamed requests, print each trace as a waterfall, and exit
  --requests N       demo requests (default 3)      --max-tokens N   tokens per request (default 24)
  --listen ADDR      frontend address (default 127.0.0.1:8000; the demo picks a free port)
  --engine cpu|cuda  worker engine (default cpu)    --step-ms N      per-token step time (default 8)
  --verbose          show the components' logs in demo mode

Environment: OTEL_EXPORT_ENABLED, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, DYN_LOGGING_JSONL, DYN_LOG, ...
(see the tokentrace::telemetry docs).";

/// `--key value` options, `--switch` flags and positional words.
struct Args {
    words: Vec<String>,
    options: HashMap<String, String>,
    switches: Vec<String>,
}

const SWITCHES: [&str; 4] = ["demo", "verbose", "exit-on-stdin-close", "help"];

impl Args {
    fn parse(raw: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut args = Args { words: Vec::new(), options: HashMap::new(), switches: Vec::new() };
        let mut raw = raw.peekable();
        while let Some(arg) = raw.next() {
            match arg.strip_prefix("--") {
                Some(name) if SWITCHES.contains(&name) => args.switches.push(name.to_owned()),
                Some(name) => {
                    let value = raw.next().ok_or_else(|| format!("--{name} needs a value"))?;
                    args.options.insert(name.to_owned(), value);
                }
                None => args.words.push(arg),
            }
        }
        Ok(args)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }

    fn required(&self, name: &str) -> Result<&str, String> {
        self.get(name).ok_or_else(|| format!("--{name} is required"))
    }

    fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => text.parse().map_err(|_| format!("--{name}: {text:?} is not a number")),
        }
    }

    fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("{error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.switch("help") || args.words.is_empty() {
        println!("{USAGE}");
        return if args.switch("help") { ExitCode::SUCCESS } else { ExitCode::from(2) };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.words[0].as_str() {
            "agg" => deployment(false, &args).await,
            "disagg" => deployment(true, &args).await,
            "frontend" => run_frontend(&args).await,
            "worker" => run_worker(&args).await,
            other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("serve: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on Ctrl-C, SIGTERM, or (when launched by `agg`/`disagg`) when stdin closes.
async fn shutdown_signal(watch_stdin: bool) {
    let stdin_closed = async {
        if watch_stdin {
            let _ = tokio::task::spawn_blocking(|| {
                let mut sink = Vec::new();
                let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            })
            .await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        #[cfg(unix)]
        if let Ok(mut signal) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            signal.recv().await;
            return;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
        () = stdin_closed => {}
    }
}

async fn bind(args: &Args, default: &str) -> Result<tokio::net::TcpListener, String> {
    let address = args.get("listen").unwrap_or(default);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    // The launcher waits for this line.
    println!("READY {local}");
    Ok(listener)
}

async fn run_frontend(args: &Args) -> Result<(), String> {
    let _telemetry = tokentrace::telemetry::init("dynamo-frontend").map_err(|e| e.to_string())?;
    let worker = args.required("worker")?.to_owned();
    let model = args.get("model").unwrap_or("tokentrace-demo").to_owned();
    let listener = bind(args, "127.0.0.1:8000").await?;
    tracing::info!(worker, "frontend serving");
    // Tokens are small writes: send each at once rather than wait for the peer's ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |socket| {
        let _ = socket.set_nodelay(true);
    });
    axum::serve(listener, frontend::app(worker, model))
        .with_graceful_shutdown(shutdown_signal(args.switch("exit-on-stdin-close")))
        .await
        .map_err(|e| e.to_string())
}

fn service_name(role: Role) -> &'static str {
    match role {
        Role::Aggregated => "dynamo-worker-vllm",
        Role::Prefill => "dynamo-worker-prefill",
        Role::Decode => "dynamo-worker-decode",
    }
}

async fn run_worker(args: &Args) -> Result<(), String> {
    let role = Role::parse(args.required("role")?).ok_or("--role must be agg, prefill or decode")?;
    let _telemetry = tokentrace::telemetry::init(service_name(role)).map_err(|e| e.to_string())?;
    let config = WorkerConfig {
        role,
        step: Duration::from_millis(args.number("step-ms", 8)?),
        slots: args.number("slots", 64)?,
        instance_id: args.number("instance-id", i64::from(std::process::id()))?,
        prefill: args.get("prefill").map(str::to_owned),
        name: format!("{}-{}", role.component(), std::process::id()),
    };
    if role == Role::Decode && config.prefill.is_none() {
        return Err("a decode worker needs --prefill ADDR".into());
    }
    let engine_name = args.get("engine").unwrap_or("cpu");
    let shutdown = shutdown_signal(args.switch("exit-on-stdin-close"));
    match engine_name {
        "cpu" => {
            let listener = bind(args, "127.0.0.1:0").await?;
            tracing::info!(role = role.component(), engine = "cpu", "worker serving");
            worker::serve(engine::CpuEngine::new(), config, listener, shutdown)
                .await
                .map_err(|e| e.to_string())
        }
        "cuda" => run_cuda_worker(args, config, shutdown).await,
        other => Err(format!("--engine must be cpu or cuda, not {other:?}")),
    }
}

#[cfg(feature = "cuda")]
async fn run_cuda_worker(
    args: &Args,
    config: WorkerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let device = args.number("device", 0usize)?;
    // Fails with a clear message when there is no driver or device; checked before binding.
    let engine = cuda::CudaEngine::new(device).map_err(|e| e.to_string())?;
    let listener = bind(args, "127.0.0.1:0").await?;
    tracing::info!(role = config.role.component(), engine = "cuda", device, "worker serving");
    worker::serve(engine, config, listener, shutdown).await.map_err(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
async fn run_cuda_worker(
    _: &Args,
    _: WorkerConfig,
    _: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    Err("this build has no CUDA engine: rebuild with `--features cuda`".into())
}

/// Starts the components as child processes; with `--demo`, drives requests and prints traces.
async fn deployment(disaggregated: bool, args: &Args) -> Result<(), String> {
    let demo = args.switch("demo");
    let quiet = demo && !args.switch("verbose");
    let receiver = if demo { Some(receiver::grpc().await) } else { None };
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(receiver) = &receiver {
        env.push(("OTEL_EXPORT_ENABLED".into(), "true".into()));
        env.push(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(), receiver.endpoint()));
        env.push(("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT".into(), receiver.endpoint()));
        env.push(("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()));
    }
    let with_name = |name: &str| {
        let mut env = env.clone();
        env.push(("OTEL_SERVICE_NAME".into(), name.into()));
        env
    };
    let step = args.get("step-ms").unwrap_or("8").to_owned();
    let engine = args.get("engine").unwrap_or("cpu").to_owned();
    let worker_args = |role: &str| -> Vec<String> {
        ["worker", "--role", role, "--listen", "127.0.0.1:0", "--step-ms", &step, "--engine", &engine]
            .map(str::to_owned)
            .to_vec()
    };

    let mut workers = Vec::new();
    let worker_addr = if disaggregated {
        let prefill = Component::spawn(
            "prefill worker",
            &worker_args("prefill"),
            &with_name("dynamo-worker-prefill"),
            quiet,
        )?;
        let mut decode_args = worker_args("decode");
        decode_args.extend(["--prefill".to_owned(), prefill.addr.clone()]);
        let decode =
            Component::spawn("decode worker", &decode_args, &with_name("dynamo-worker-decode"), quiet)?;
        let addr = decode.addr.clone();
        workers.push(prefill);
        workers.push(decode);
        addr
    } else {
        let worker =
            Component::spawn("worker", &worker_args("agg"), &with_name("dynamo-worker-vllm"), quiet)?;
        let addr = worker.addr.clone();
        workers.push(worker);
        addr
    };
    let listen = if demo { "127.0.0.1:0" } else { args.get("listen").unwrap_or("127.0.0.1:8000") };
    let frontend_args = ["frontend", "--listen", listen, "--worker", &worker_addr].map(str::to_owned);
    let frontend = Component::spawn("frontend", &frontend_args, &with_name("dynamo-frontend"), quiet)?;

    let Some(receiver) = receiver else {
        println!("frontend on http://{} (worker {worker_addr}); try:\n", frontend.addr);
        println!(
            "curl -N http://{}/v1/chat/completions -H 'content-type: application/json' -H 'x-request-id: try-1' \\\n  -d '{{\"model\":\"tokentrace-demo\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}],\"max_tokens\":16,\"stream\":true}}'\n",
            frontend.addr
        );
        println!("Ctrl-C stops everything.");
        let _ = tokio::signal::ctrl_c().await;
        frontend.stop();
        workers.into_iter().for_each(Component::stop);
        return Ok(());
    };

    let frontend_addr = frontend.addr.parse().map_err(|e| format!("bad frontend address: {e}"))?;
    let requests: usize = args.number("requests", 3)?;
    let max_tokens: u32 = args.number("max-tokens", 24)?;
    let mut ids = Vec::new();
    let mut failures = 0;
    println!(
        "{} deployment: frontend {} -> worker {worker_addr}",
        if disaggregated { "disaggregated" } else { "aggregated" },
        frontend.addr
    );
    for n in 0..requests {
        let id = format!("demo-{}", n + 1);
        match demo::stream_chat(frontend_addr, &id, demo::PROMPTS[n % demo::PROMPTS.len()], max_tokens).await
        {
            Ok(answer) => println!(
                "  {}: {} tokens in {:.1} ms: {:?}",
                answer.request_id,
                answer.tokens,
                answer.elapsed.as_secs_f64() * 1e3,
                answer.text
            ),
            Err(error) => {
                failures += 1;
                println!("  {id}: FAILED: {error}");
            }
        }
        ids.push(id);
    }
    // Stopping the components flushes their telemetry.
    let stop = tokio::task::spawn_blocking(move || {
        frontend.stop();
        workers.into_iter().for_each(Component::stop);
    });
    let _ = stop.await;
    let spans_each = if disaggregated { 10 } else { 6 };
    demo::wait_for_traces(&receiver.received, &ids, spans_each).await;
    for id in &ids {
        demo::print_waterfall(&receiver.received, id);
    }
    let incomplete: Vec<_> =
        ids.iter().filter(|id| demo::trace_of(&receiver.received, id).len() < spans_each).collect();
    receiver.stop().await;
    match (failures, incomplete.is_empty()) {
        (0, true) => Ok(()),
        (0, false) => Err(format!("incomplete traces for {incomplete:?}")),
        (n, _) => Err(format!("{n} of {requests} requests failed")),
    }
}
