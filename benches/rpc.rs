//! Worker RPC: the per-call overhead of `rpc::ClientLayer` + `rpc::ServerLayer` over the bare
//! service (in process, no transport), and items/s over loopback TCP for 1 and 64 concurrent
//! streams, traced and untraced, in one run; gRPC (tonic, through the HTTP layers): per unary
//! call and items/s of a 256-message server stream, traced and untraced; NATS (a real
//! `nats-server` on loopback, skipped with a message where none is installed): the same two
//! rows. Large items (1 MiB on TCP, 1 MB on NATS, 64 to a stream, in MiB/s or MB/s), traced
//! and untraced, and with the default flow-control windows against windows made unlimited.
//! Spans go through a batch processor into a discarding exporter. Each traced/untraced
//! pair is also run interleaved (alternating rounds), whose median ratio drift between the two
//! criterion measurements cannot move.
//!
//! Run: `cargo bench --bench rpc`; the latest figures are in `BENCHMARKS.md`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokentrace::rpc::{self, tcp, Request, RpcError};
use tower::{Service, ServiceBuilder, ServiceExt};

mod support;
#[cfg(feature = "nats")]
#[path = "../tests/support/system.rs"]
mod system;

type Items = BoxStream<'static, Result<Bytes, RpcError>>;

/// A handler streaming `count` 16-byte items.
fn handler(
    count: usize,
) -> impl Service<Request<Bytes>, Response = Items, Error = RpcError, Future = impl Send> + Clone + Send + 'static
{
    tower::service_fn(move |_request: Request<Bytes>| async move {
        Ok::<Items, RpcError>(
            stream::iter((0..count).map(|_| Ok(Bytes::from_static(b"0123456789abcdef")))).boxed(),
        )
    })
}

/// A handler streaming `count` items of `size` bytes (one buffer, shared).
fn large_handler(
    count: usize,
    size: usize,
) -> impl Service<Request<Bytes>, Response = Items, Error = RpcError, Future = impl Send> + Clone + Send + 'static
{
    let item = Bytes::from(vec![7u8; size]);
    tower::service_fn(move |_request: Request<Bytes>| {
        let item = item.clone();
        async move { Ok::<Items, RpcError>(stream::iter((0..count).map(move |_| Ok(item.clone()))).boxed()) }
    })
}

/// Items per stream of the large-item rows, and their size on each transport (NATS's
/// `max_payload` is 1 MiB, frame header included).
const LARGE_ITEMS: usize = 64;
const TCP_LARGE_ITEM: usize = 1 << 20;
const NATS_LARGE_ITEM: usize = 1_000_000;

async fn drain<S: futures_util::Stream<Item = Result<Bytes, RpcError>> + Unpin>(mut items: S) -> usize {
    let mut n = 0;
    while let Some(item) = items.next().await {
        black_box(item.unwrap());
        n += 1;
    }
    n
}

const LAYERS: &str = "rpc_layers";

fn layers(c: &mut Criterion, runtime: &tokio::runtime::Runtime, provider: &SdkTracerProvider) {
    let mut group = c.benchmark_group(LAYERS);
    let bare = handler(1);
    group.bench_function("bare", |b| {
        b.iter(|| {
            runtime.block_on(async {
                drain(bare.clone().oneshot(Request::new("generate", Bytes::new())).await.unwrap()).await
            })
        })
    });
    let traced = ServiceBuilder::new()
        .layer(rpc::ClientLayer::with_tracer(provider.tracer("frontend")))
        .layer(rpc::ServerLayer::with_tracer(provider.tracer("worker")).component("backend"))
        .service(handler(1));
    group.bench_function("traced", |b| {
        b.iter(|| {
            runtime.block_on(async {
                drain(traced.clone().oneshot(Request::new("generate", Bytes::new())).await.unwrap()).await
            })
        })
    });
    group.finish();
}

const ITEMS_PER_STREAM: usize = 1000;

fn tcp_throughput(c: &mut Criterion, runtime: &tokio::runtime::Runtime, provider: &SdkTracerProvider) {
    let (untraced_addr, traced_addr) = runtime.block_on(async {
        let untraced = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let traced = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = (untraced.local_addr().unwrap(), traced.local_addr().unwrap());
        tokio::spawn(tcp::serve(untraced, handler(ITEMS_PER_STREAM)));
        let worker = ServiceBuilder::new()
            .layer(rpc::ServerLayer::with_tracer(provider.tracer("worker")).component("backend"))
            .service(handler(ITEMS_PER_STREAM));
        tokio::spawn(tcp::serve(traced, worker));
        addrs
    });
    for streams in [1usize, 64] {
        let group_name = format!("rpc_tcp/{streams}_streams");
        let untraced = runtime.block_on(tcp::Client::connect(untraced_addr)).unwrap();
        let traced = ServiceBuilder::new()
            .layer(rpc::ClientLayer::with_tracer(provider.tracer("frontend")))
            .service(runtime.block_on(tcp::Client::connect(traced_addr)).unwrap());
        compare(
            c,
            Pair {
                group: &group_name,
                per_iteration: streams * ITEMS_PER_STREAM,
                unit: "items",
                ..Pair::default()
            },
            if streams == 1 { 32 } else { 1 },
            || runtime.block_on(calls_at_once(&untraced, streams, ITEMS_PER_STREAM)),
            || runtime.block_on(calls_at_once(&traced, streams, ITEMS_PER_STREAM)),
        );
    }
    tcp_large_items(c, runtime, provider);
}

/// One stream of [`LARGE_ITEMS`] 1 MiB items (a KV cache's size), in MiB/s: traced against
/// untraced, and the default flow-control windows against windows made unlimited (1 GiB).
fn tcp_large_items(c: &mut Criterion, runtime: &tokio::runtime::Runtime, provider: &SdkTracerProvider) {
    let (untraced_addr, traced_addr) = runtime.block_on(async {
        let untraced = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let traced = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = (untraced.local_addr().unwrap(), traced.local_addr().unwrap());
        tokio::spawn(tcp::serve(untraced, large_handler(LARGE_ITEMS, TCP_LARGE_ITEM)));
        let worker = ServiceBuilder::new()
            .layer(rpc::ServerLayer::with_tracer(provider.tracer("worker")).component("backend"))
            .service(large_handler(LARGE_ITEMS, TCP_LARGE_ITEM));
        tokio::spawn(tcp::serve(traced, worker));
        addrs
    });
    let windowed = runtime.block_on(tcp::Client::connect(untraced_addr)).unwrap();
    let unlimited = runtime
        .block_on(
            tcp::Client::builder().stream_window(1 << 30).connection_window(1 << 30).connect(untraced_addr),
        )
        .unwrap();
    let traced = ServiceBuilder::new()
        .layer(rpc::ClientLayer::with_tracer(provider.tracer("frontend")))
        .service(runtime.block_on(tcp::Client::connect(traced_addr)).unwrap());
    let mib = (LARGE_ITEMS * TCP_LARGE_ITEM) >> 20;
    compare(
        c,
        Pair { group: "rpc_tcp/large_items", per_iteration: mib, unit: "MiB", ..Pair::default() },
        4,
        || runtime.block_on(calls_at_once(&windowed, 1, LARGE_ITEMS)),
        || runtime.block_on(calls_at_once(&traced, 1, LARGE_ITEMS)),
    );
    compare(
        c,
        Pair {
            group: "rpc_tcp/large_items_windows",
            per_iteration: mib,
            unit: "MiB",
            sides: ("unlimited", "windowed"),
            ..Pair::default()
        },
        4,
        || runtime.block_on(calls_at_once(&unlimited, 1, LARGE_ITEMS)),
        || runtime.block_on(calls_at_once(&windowed, 1, LARGE_ITEMS)),
    );
}

/// `grpc.health.v1.Health` (tonic-health's generated service): `check` answers at once,
/// `watch` streams [`GRPC_STREAM_ITEMS`] messages.
#[derive(Clone)]
struct BenchHealth;

const GRPC_STREAM_ITEMS: usize = 256;

/// Concurrent unary calls per iteration of the unary rows.
const GRPC_UNARY_CALLS: usize = 64;

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for BenchHealth {
    async fn check(
        &self,
        _request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(tonic_health::pb::HealthCheckResponse { status: 1 }))
    }

    type WatchStream = BoxStream<'static, Result<tonic_health::pb::HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let items = (0..GRPC_STREAM_ITEMS).map(|_| Ok(tonic_health::pb::HealthCheckResponse { status: 1 }));
        Ok(tonic::Response::new(stream::iter(items).boxed()))
    }
}

/// A tonic server on loopback, traced or not, and a channel to it.
async fn grpc_channel(traced: Option<&SdkTracerProvider>) -> tonic::transport::Channel {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Tokens are small writes: no Nagle delay, as a serving deployment sets.
    let incoming = stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(socket, _)| {
            let _ = socket.set_nodelay(true);
            socket
        });
        Some((accepted, listener))
    });
    let service = tonic_health::pb::health_server::HealthServer::new(BenchHealth);
    match traced {
        Some(provider) => {
            let layer = tokentrace::http::ServerLayer::with_tracer(provider.tracer("worker"));
            let server = tonic::transport::Server::builder().layer(layer).add_service(service);
            tokio::spawn(server.serve_with_incoming(incoming));
        }
        None => {
            tokio::spawn(
                tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming),
            );
        }
    }
    tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

fn grpc(c: &mut Criterion, runtime: &tokio::runtime::Runtime, provider: &SdkTracerProvider) {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let untraced = HealthClient::new(runtime.block_on(grpc_channel(None)));
    let traced = HealthClient::new(
        ServiceBuilder::new()
            .layer(tokentrace::http::ClientLayer::with_tracer(provider.tracer("frontend")))
            .service(runtime.block_on(grpc_channel(Some(provider)))),
    );
    fn request() -> tonic::Request<HealthCheckRequest> {
        tonic::Request::new(HealthCheckRequest { service: String::new() })
    }

    // 64 unary calls at once per iteration, so the figure is the calls' cost rather than the
    // wake-up latency of one call at a time. (Macros: the two clients are different types.)
    macro_rules! unary_calls {
        ($client:expr) => {
            runtime.block_on(async {
                let calls = (0..GRPC_UNARY_CALLS).map(|_| {
                    let mut client = $client.clone();
                    tokio::spawn(async move { client.check(request()).await.unwrap() })
                });
                for call in calls.collect::<Vec<_>>() {
                    call.await.unwrap();
                }
            })
        };
    }
    macro_rules! one_stream {
        ($client:expr) => {
            runtime.block_on(async {
                let items = $client.clone().watch(request()).await.unwrap().into_inner();
                assert_eq!(items.count().await, GRPC_STREAM_ITEMS);
            })
        };
    }
    let unary =
        Pair { group: "rpc_grpc/unary", per_iteration: GRPC_UNARY_CALLS, unit: "calls", ..Pair::default() };
    compare(c, unary, 8, || unary_calls!(untraced), || unary_calls!(traced));
    let stream = Pair {
        group: "rpc_grpc/stream_256",
        per_iteration: GRPC_STREAM_ITEMS,
        unit: "items",
        ..Pair::default()
    };
    compare(c, stream, 32, || one_stream!(untraced), || one_stream!(traced));
}

/// `calls` concurrent calls through `client`, each drained, `items` expected from each.
async fn calls_at_once<C, St>(client: &C, calls: usize, items: usize)
where
    C: Service<Request<Bytes>, Response = St> + Clone + Send + 'static,
    C::Error: std::fmt::Debug + Send,
    C::Future: Send,
    St: futures_util::Stream<Item = Result<Bytes, RpcError>> + Unpin + Send + 'static,
{
    let calls: Vec<_> = (0..calls)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                drain(client.oneshot(Request::new("generate", Bytes::new())).await.unwrap()).await
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), items);
    }
}

#[cfg(feature = "nats")]
fn nats(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    provider: &SdkTracerProvider,
) -> Option<system::NatsServer> {
    use tokentrace::rpc::nats::{self, async_nats};
    /// Items per stream of the stream row, calls per iteration of the unary row.
    const NATS_STREAM_ITEMS: usize = 256;
    const NATS_UNARY_CALLS: usize = 64;

    let server = system::NatsServer::start()?;
    let connect = || runtime.block_on(async_nats::connect(&server.url)).unwrap();
    // Each worker on a connection of its own, as a worker process would be.
    let serve = |subject: &str, items: usize, traced: bool| {
        let listener = runtime.block_on(nats::Listener::bind(connect(), subject)).unwrap();
        let _guard = runtime.enter();
        if traced {
            let worker = ServiceBuilder::new()
                .layer(rpc::ServerLayer::with_tracer(provider.tracer("worker")).component("backend"))
                .service(handler(items));
            tokio::spawn(nats::serve(listener, worker));
        } else {
            tokio::spawn(nats::serve(listener, handler(items)));
        }
    };
    for (row, items, calls) in [("unary", 1, NATS_UNARY_CALLS), ("stream_256", NATS_STREAM_ITEMS, 1)] {
        let (untraced_subject, traced_subject) =
            (format!("bench.{row}.untraced"), format!("bench.{row}.traced"));
        serve(&untraced_subject, items, false);
        serve(&traced_subject, items, true);
        let untraced = nats::Client::new(connect(), untraced_subject).unwrap();
        let traced = ServiceBuilder::new()
            .layer(rpc::ClientLayer::with_tracer(provider.tracer("frontend")))
            .service(nats::Client::new(connect(), traced_subject).unwrap());
        let (per_iteration, unit) = if calls == 1 { (items, "items") } else { (calls, "calls") };
        // The broker is a third process on the same cores: longer runs average its scheduling out.
        let group = format!("rpc_nats/{row}");
        compare(
            c,
            Pair {
                group: &group,
                per_iteration,
                unit,
                measurement_time: Some(Duration::from_secs(10)),
                ..Pair::default()
            },
            if calls == 1 { 16 } else { 4 },
            || runtime.block_on(calls_at_once(&untraced, calls, items)),
            || runtime.block_on(calls_at_once(&traced, calls, items)),
        );
    }
    // One stream of items near the payload limit, in MB/s: traced against untraced, and the
    // default window against one made unlimited (1 GiB).
    let serve_large = |subject: &str, traced: bool| {
        let listener = runtime.block_on(nats::Listener::bind(connect(), subject)).unwrap();
        let _guard = runtime.enter();
        let handler = large_handler(LARGE_ITEMS, NATS_LARGE_ITEM);
        if traced {
            let worker = ServiceBuilder::new()
                .layer(rpc::ServerLayer::with_tracer(provider.tracer("worker")).component("backend"))
                .service(handler);
            tokio::spawn(nats::serve(listener, worker));
        } else {
            tokio::spawn(nats::serve(listener, handler));
        }
    };
    serve_large("bench.large.untraced", false);
    serve_large("bench.large.traced", true);
    let windowed = nats::Client::new(connect(), "bench.large.untraced").unwrap();
    let unlimited = nats::Client::new(connect(), "bench.large.untraced").unwrap().stream_window(1 << 30);
    let traced = ServiceBuilder::new()
        .layer(rpc::ClientLayer::with_tracer(provider.tracer("frontend")))
        .service(nats::Client::new(connect(), "bench.large.traced").unwrap());
    let mb = LARGE_ITEMS * NATS_LARGE_ITEM / 1_000_000;
    let large = |group, sides| Pair {
        group,
        per_iteration: mb,
        unit: "MB",
        measurement_time: Some(Duration::from_secs(10)),
        sides,
    };
    compare(
        c,
        large("rpc_nats/large_items", ("untraced", "traced")),
        4,
        || runtime.block_on(calls_at_once(&windowed, 1, LARGE_ITEMS)),
        || runtime.block_on(calls_at_once(&traced, 1, LARGE_ITEMS)),
    );
    compare(
        c,
        large("rpc_nats/large_items_windows", ("unlimited", "windowed")),
        4,
        || runtime.block_on(calls_at_once(&unlimited, 1, LARGE_ITEMS)),
        || runtime.block_on(calls_at_once(&windowed, 1, LARGE_ITEMS)),
    );
    Some(server)
}

/// A pair of variants: its criterion group, what one iteration moves, which sides it compares
/// (untraced and traced unless said), and (for a noisy row) a longer measurement than the run's
/// default.
struct Pair<'a> {
    group: &'a str,
    per_iteration: usize,
    unit: &'a str,
    measurement_time: Option<Duration>,
    /// The baseline's name, then the candidate's.
    sides: (&'a str, &'a str),
}

impl Default for Pair<'_> {
    fn default() -> Self {
        Self { group: "", per_iteration: 0, unit: "", measurement_time: None, sides: ("untraced", "traced") }
    }
}

/// Measures a pair with criterion, baseline then candidate, and prints both rates, their ratio
/// and what the candidate adds per unit; then runs it interleaved, `batch` calls a side per
/// round, and prints that ratio. Nothing of it runs where the command line's filter leaves the
/// pair out.
fn compare(
    c: &mut Criterion,
    pair: Pair<'_>,
    batch: usize,
    mut baseline: impl FnMut(),
    mut candidate: impl FnMut(),
) {
    let (baseline_name, candidate_name) = pair.sides;
    let mut group = c.benchmark_group(pair.group);
    group.throughput(Throughput::Elements(pair.per_iteration as u64));
    if let Some(time) = pair.measurement_time {
        group.measurement_time(time);
    }
    let mut measured = false;
    group.bench_function(baseline_name, |b| {
        measured = true;
        b.iter(&mut baseline)
    });
    group.bench_function(candidate_name, |b| {
        measured = true;
        b.iter(&mut candidate)
    });
    group.finish();
    if !measured {
        return;
    }
    let (group, unit) = (pair.group, pair.unit);
    if let (Some(base), Some(cand)) =
        (support::mean_ns(group, baseline_name), support::mean_ns(group, candidate_name))
    {
        let rate = |ns: f64| scaled(pair.per_iteration as f64 / ns * 1e9);
        println!(
            "throughput {group}: {baseline_name} {} {unit}/s, {candidate_name} {} {unit}/s -> {candidate_name}/{baseline_name} {:.3}, {candidate_name} adds {:.0} ns per {}",
            rate(base),
            rate(cand),
            base / cand,
            (cand - base) / pair.per_iteration as f64,
            unit.trim_end_matches('s')
        );
    }
    support::print_interleaved(group, pair.sides, batch, baseline, candidate);
}

/// A rate with its SI prefix: `1.234 M`, `56.7 k`, `890`.
fn scaled(per_second: f64) -> String {
    match per_second {
        r if r >= 1e6 => format!("{:.3} M", r / 1e6),
        r if r >= 1e3 => format!("{:.1} k", r / 1e3),
        r => format!("{r:.0}"),
    }
}

fn main() {
    let provider = SdkTracerProvider::builder().with_batch_exporter(support::DiscardExporter).build();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut c = support::criterion()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    layers(&mut c, &runtime, &provider);
    tcp_throughput(&mut c, &runtime, &provider);
    grpc(&mut c, &runtime, &provider);
    #[cfg(feature = "nats")]
    let _nats_server = nats(&mut c, &runtime, &provider);
    c.final_summary();
    if let (Some(bare), Some(traced)) = (support::mean_ns(LAYERS, "bare"), support::mean_ns(LAYERS, "traced"))
    {
        println!(
            "overhead {LAYERS}: client+server layers +{:.0} ns per call over the bare service ({bare:.0} ns)",
            traced - bare
        );
    }
    let _ = provider.shutdown();
}
