//! The worker RPC layers over NATS, against a real `nats-server` (Debian's package) started on
//! a free loopback port. Without it each test says it skipped, unless `TOKENTRACE_REQUIRE_NATS`
//! is set (CI).
#![cfg(feature = "nats")]

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::Context;
use support::handlers::{counting_handler, read_in_order, sized_items};
use support::system::{KillOnDrop, NatsServer};
use support::{attr, Spans};
use tokentrace::rpc::nats::{self, async_nats};
use tokentrace::rpc::{self, Request, RpcError};
use tower::{ServiceBuilder, ServiceExt};

const SUBJECT: &str = "tokentrace.backend";

async fn connect(server: &NatsServer) -> async_nats::Client {
    async_nats::connect(&server.url).await.unwrap()
}

/// A worker's subscription on `subject`, on a connection of its own: requests reach it once
/// this returns.
async fn bind(server: &NatsServer, subject: &str) -> nats::Listener {
    nats::Listener::bind(connect(server).await, subject).await.unwrap()
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_crosses_a_real_nats_hop_with_exactly_one_traceparent_header() {
    let Some(server) = NatsServer::start() else { return };
    let spans = Spans::new();
    let worker = ServiceBuilder::new()
        .layer(rpc::ServerLayer::with_tracer(spans.tracer("worker")).component("backend").instance_id(3))
        .service(counting_handler(5, Duration::ZERO, Duration::ZERO, Arc::default()));
    tokio::spawn(nats::serve(bind(&server, SUBJECT).await, worker));
    // A plain subscriber sees every request as it crossed the wire.
    let spy_connection = connect(&server).await;
    let mut spy = spy_connection.subscribe(format!("{SUBJECT}.>")).await.unwrap();
    spy_connection.flush().await.unwrap();

    let nats_client = nats::Client::new(connect(&server).await, SUBJECT).unwrap();
    let client = ServiceBuilder::new()
        .layer(rpc::ClientLayer::with_tracer(spans.tracer("frontend")).server_address(SUBJECT))
        .service(nats_client);
    let root = Context::current_with_span(spans.tracer("test").start("http-request"));
    let items: Vec<_> = async {
        let mut request = Request::new("generate", Bytes::from_static(b"t"));
        request.metadata.append("tenant", "acme");
        client.oneshot(request).await.unwrap().collect::<Vec<_>>().await
    }
    .with_context(root.clone())
    .await;
    let items: Vec<_> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(items, ["t:0", "t:1", "t:2", "t:3", "t:4"]);
    root.span().end();

    let trace_id = root.span().span_context().trace_id();
    let spans = spans
        .wait_for_async("root, client and handle_payload", |s| {
            s.iter().filter(|s| s.span_context.trace_id() == trace_id).count() == 3
        })
        .await;
    let spans: Vec<_> = spans.into_iter().filter(|s| s.span_context.trace_id() == trace_id).collect();
    let root = spans.iter().find(|s| s.name == "http-request").unwrap();
    let client = spans.iter().find(|s| s.span_kind == SpanKind::Client).unwrap();
    let server = spans.iter().find(|s| s.parent_span_id == client.span_context.span_id()).unwrap();
    assert_eq!(client.name, "generate");
    assert_eq!(client.parent_span_id, root.span_context.span_id());
    assert_eq!(server.name, "handle_payload");
    assert_eq!(server.span_context.trace_id(), root.span_context.trace_id());
    assert_eq!(attr(server, "component").as_deref(), Some("backend"));
    assert_eq!(attr(server, "endpoint").as_deref(), Some("generate"));
    assert_eq!(attr(server, "x_request_id"), attr(client, "x_request_id"));
    assert_eq!(attr(client, "outcome").as_deref(), Some("ok"));
    assert_eq!(attr(server, "outcome").as_deref(), Some("ok"));
    assert_eq!(attr(client, "rpc.response.items").as_deref(), Some("5"));
    assert_eq!(attr(client, "server.address").as_deref(), Some(SUBJECT));

    // On the wire: exactly one traceparent, and the other metadata as headers.
    let mut traced = None;
    while traced.is_none() {
        let message = tokio::time::timeout(Duration::from_secs(5), spy.next()).await.unwrap().unwrap();
        traced = message.headers.filter(|headers| headers.get("traceparent").is_some());
    }
    let headers = traced.unwrap();
    assert_eq!(headers.get_all("traceparent").count(), 1);
    let traceparent = headers.get("traceparent").unwrap().as_str();
    assert_eq!(&traceparent[3..35], client.span_context.trace_id().to_string());
    assert_eq!(&traceparent[36..52], client.span_context.span_id().to_string());
    assert_eq!(headers.get("x-request-id").map(|v| v.as_str().to_owned()), attr(client, "x_request_id"));
    assert_eq!(headers.get("tenant").map(|v| v.as_str()), Some("acme"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_in_one_queue_group_share_the_load() {
    let Some(server) = NatsServer::start() else { return };
    let served: [Arc<AtomicUsize>; 2] = Default::default();
    for count in &served {
        let count = Arc::clone(count);
        let handler = tower::service_fn(move |request: Request<Bytes>| {
            count.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, RpcError>(stream::iter([Ok::<_, RpcError>(request.payload)])) }
        });
        tokio::spawn(nats::serve(bind(&server, SUBJECT).await, handler));
    }
    let client = nats::Client::new(connect(&server).await, SUBJECT).unwrap();
    // Both workers subscribe as soon as their tasks run; until then the other one takes all.
    let mut sent = 0;
    while sent < 400 && served.iter().any(|count| count.load(Ordering::SeqCst) < 10) {
        let payload = Bytes::from(format!("r{sent}"));
        let items: Vec<_> = client.send(Request::new("echo", payload.clone())).await.unwrap().collect().await;
        assert_eq!(items, [Ok(payload)]);
        sent += 1;
    }
    let counts = served.each_ref().map(|count| count.load(Ordering::SeqCst));
    assert_eq!(counts[0] + counts[1], sent, "each request served once: {counts:?}");
    assert!(counts.iter().all(|&count| count >= 10), "both workers took requests: {counts:?} of {sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_no_worker_serves_is_unavailable_at_once() {
    let Some(server) = NatsServer::start() else { return };
    let client = nats::Client::new(connect(&server).await, "tokentrace.nobody").unwrap();
    let started = Instant::now();
    let mut items = client.send(Request::new("generate", Bytes::new())).await.unwrap();
    let error = items.next().await.unwrap().unwrap_err();
    assert_eq!(error, RpcError::Unavailable("tokentrace.nobody.generate".into()));
    assert_eq!(error.to_string(), "no worker serves tokentrace.nobody.generate");
    assert!(items.next().await.is_none(), "the stream ends after its error");
    assert!(started.elapsed() < nats::DEFAULT_SILENCE_LIMIT, "NATS said so; no timeout was needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subjects_and_endpoints_are_refused_with_their_reason() {
    let Some(server) = NatsServer::start() else { return };
    let connection = connect(&server).await;
    for bad in ["tokentrace.*", "tokentrace.>", "tokentrace..backend", "token trace", ""] {
        let error = nats::Client::new(connection.clone(), bad).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
        assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
    }
    let refused = nats::Listener::bind(connection.clone(), "tokentrace.*").await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);

    let client = nats::Client::new(connection, SUBJECT).unwrap();
    for endpoint in ["gen erate", "gen.*", ""] {
        let error = client.send(Request::new(endpoint, Bytes::new())).await.unwrap_err();
        assert!(
            matches!(&error, RpcError::Malformed(why) if why.contains(&format!("{endpoint:?}"))),
            "{error}"
        );
    }
    let mut request = Request::new("generate", Bytes::new());
    request.metadata.append("x-request-id", "line\r\nbreak");
    assert!(matches!(client.send(request).await, Err(RpcError::Malformed(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_over_max_payload_are_refused_never_truncated() {
    let Some(server) = NatsServer::start_with("max_payload: 4096") else { return };
    let handler = tower::service_fn(|request: Request<Bytes>| async move {
        // Replies with an item as large as the number the request asks for.
        let size: usize = std::str::from_utf8(&request.payload).unwrap().parse().unwrap();
        Ok::<_, RpcError>(stream::iter([Ok::<_, RpcError>(Bytes::from(vec![b'x'; size]))]))
    });
    tokio::spawn(nats::serve(bind(&server, SUBJECT).await, handler));
    let client = nats::Client::new(connect(&server).await, SUBJECT).unwrap();
    let fits = client.send(Request::new("generate", Bytes::from_static(b"4000"))).await.unwrap();
    let items: Vec<_> = fits.collect().await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].as_ref().unwrap().len(), 4000);

    // A request too large for the server is refused before it is sent.
    let too_big = Request::new("generate", Bytes::from(vec![b'1'; 5000]));
    let error = client.send(too_big).await.unwrap_err();
    // The payload and the flow-control window's header: "NATS/1.0", "tokentrace-window: 4194304".
    assert_eq!(error, RpcError::FrameTooLarge { size: 5000 + 12 + 17 + 7 + 4, max: 4096 });
    // Headers count too.
    let mut with_headers = Request::new("generate", Bytes::from(vec![b'1'; 4000]));
    with_headers.metadata.append("tenant", "t".repeat(100));
    assert!(matches!(client.send(with_headers).await, Err(RpcError::FrameTooLarge { max: 4096, .. })));

    // An item too large: the caller gets the worker's error, not a cut item.
    let mut items = client.send(Request::new("generate", Bytes::from_static(b"5000"))).await.unwrap();
    let error = items.next().await.unwrap().unwrap_err();
    assert_eq!(error, RpcError::Remote("frame of 5009 bytes exceeds the 4096-byte limit".into()));
    assert!(items.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_stops_the_worker_and_both_spans_say_cancelled() {
    let Some(server) = NatsServer::start() else { return };
    let spans = Spans::new();
    let dropped = Arc::new(AtomicBool::new(false));
    let worker = ServiceBuilder::new().layer(rpc::ServerLayer::with_tracer(spans.tracer("worker"))).service(
        counting_handler(usize::MAX, Duration::ZERO, Duration::from_millis(5), Arc::clone(&dropped)),
    );
    let server_task = nats::Server::new(worker).heartbeat(Duration::from_millis(100));
    tokio::spawn(server_task.serve_with_shutdown(bind(&server, SUBJECT).await, std::future::pending()));
    let client = ServiceBuilder::new()
        .layer(rpc::ClientLayer::with_tracer(spans.tracer("frontend")))
        .service(nats::Client::new(connect(&server).await, SUBJECT).unwrap());
    let mut items = client.oneshot(Request::new("generate", Bytes::from_static(b"x"))).await.unwrap();
    assert_eq!(items.next().await.unwrap().unwrap(), "x:0");
    drop(items);
    wait_until("the worker dropped the handler's stream", || dropped.load(Ordering::SeqCst)).await;
    let spans = spans.wait_for_async("both spans", |s| s.len() == 2).await;
    for span in &spans {
        assert_eq!(attr(span, "outcome").as_deref(), Some("cancelled"), "{}", span.name);
    }

    // A caller gone while the handler has nothing to send yet (a long prefill): the next
    // heartbeat finds no one, and the handler stops.
    dropped.store(false, Ordering::SeqCst);
    let slow = counting_handler(1, Duration::from_secs(60), Duration::ZERO, Arc::clone(&dropped));
    tokio::spawn(
        nats::Server::new(slow)
            .heartbeat(Duration::from_millis(100))
            .serve_with_shutdown(bind(&server, "tokentrace.slow").await, std::future::pending()),
    );
    let slow_client = nats::Client::new(connect(&server).await, "tokentrace.slow").unwrap();
    let mut items = slow_client.send(Request::new("prefill", Bytes::from_static(b"p"))).await.unwrap();
    let first = tokio::time::timeout(Duration::from_millis(300), items.next()).await;
    // No reply yet: the handler is at work (heartbeats keep the stream alive); then the caller goes.
    assert!(first.is_err(), "unexpected {first:?}");
    drop(items);
    wait_until("the idle handler of a gone caller stopped", || dropped.load(Ordering::SeqCst)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_streams_then_leaves_the_group() {
    let Some(server) = NatsServer::start() else { return };
    let handler = counting_handler(20, Duration::ZERO, Duration::from_millis(10), Arc::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving =
        tokio::spawn(nats::Server::new(handler).serve_with_shutdown(bind(&server, SUBJECT).await, async {
            let _ = stopped.await;
        }));
    let client = nats::Client::new(connect(&server).await, SUBJECT).unwrap();
    let mut items = client.send(Request::new("generate", Bytes::from_static(b"g"))).await.unwrap();
    assert_eq!(items.next().await.unwrap().unwrap(), "g:0");
    stop.send(()).unwrap();
    let rest: Vec<_> = items.map(Result::unwrap).collect().await;
    assert_eq!(rest.len(), 19, "the in-flight stream finished");
    tokio::time::timeout(Duration::from_secs(5), serving).await.unwrap().unwrap().unwrap();
    let mut after = client.send(Request::new("generate", Bytes::from_static(b"h"))).await.unwrap();
    assert!(matches!(after.next().await, Some(Err(RpcError::Unavailable(_)))));
}

/// Not a test on its own: the worker process that the test below starts (this same binary) and
/// kills. Without its environment variable it returns at once.
#[test]
fn nats_worker_process() {
    let Ok(url) = std::env::var("TOKENTRACE_TEST_NATS_WORKER") else { return };
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let listener = nats::Listener::bind(async_nats::connect(url).await.unwrap(), SUBJECT).await.unwrap();
        println!("READY");
        let handler = counting_handler(usize::MAX, Duration::ZERO, Duration::from_millis(10), Arc::default());
        nats::Server::new(handler)
            .heartbeat(Duration::from_millis(100))
            .serve_with_shutdown(listener, std::future::pending())
            .await
            .unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_is_an_error_within_the_silence_limit_with_every_span_ended() {
    let Some(server) = NatsServer::start() else { return };
    let mut worker = KillOnDrop(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "nats_worker_process", "--nocapture", "--test-threads=1"])
            .env("TOKENTRACE_TEST_NATS_WORKER", &server.url)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = std::io::BufReader::new(worker.0.stdout.take().unwrap());
    let ready = tokio::task::spawn_blocking(move || {
        use std::io::BufRead as _;
        stdout.lines().map_while(Result::ok).any(|line| line.ends_with("READY"))
    });
    assert!(ready.await.unwrap(), "the worker process subscribed");
    let spans = Spans::new();
    let silence_limit = Duration::from_millis(500);
    let nats_client =
        nats::Client::new(connect(&server).await, SUBJECT).unwrap().silence_limit(silence_limit);
    let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let tasks_before = tasks();
    let client = ServiceBuilder::new()
        .layer(rpc::ClientLayer::with_tracer(spans.tracer("frontend")))
        .service(nats_client);

    let mut items = client.oneshot(Request::new("generate", Bytes::from_static(b"k"))).await.unwrap();
    for i in 0..3 {
        assert_eq!(items.next().await.unwrap().unwrap(), format!("k:{i}"));
    }
    worker.0.kill().unwrap();
    let killed = Instant::now();
    let drain = async {
        let mut last = None;
        while let Some(item) = items.next().await {
            last = Some(item);
        }
        last
    };
    let last = tokio::time::timeout(Duration::from_secs(10), drain).await.expect("the caller never hangs");
    let waited = killed.elapsed();
    let error = last.expect("an error ends the stream").unwrap_err();
    assert!(
        matches!(&error, RpcError::ConnectionLost(why) if why.contains("no word from the worker")),
        "{error}"
    );
    assert!(waited < silence_limit * 2 + Duration::from_millis(500), "reported after {waited:?}");
    drop(items);

    let spans = spans.wait_for_async("the client span", |s| s.len() == 1).await;
    assert_eq!(attr(&spans[0], "outcome").as_deref(), Some("error"));
    assert!(matches!(spans[0].status, Status::Error { .. }), "{:?}", spans[0].status);
    wait_until("the stream's tasks are gone", || tasks() <= tasks_before).await;
}

/// NATS drops messages for a subscriber that falls too far behind; the caller must see that as
/// an error, never as a stream that silently skips items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_lost_to_a_slow_caller_are_an_error_never_a_gap() {
    let Some(server) = NatsServer::start() else { return };
    // 2000 items at once, then one more a while later: by then the caller reads again.
    let handler = tower::service_fn(|_request: Request<Bytes>| async move {
        let burst = stream::iter((0..2_000).map(|i| Ok(Bytes::from(format!("s:{i}")))));
        let late = stream::once(async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            Ok(Bytes::from_static(b"late"))
        });
        Ok::<_, RpcError>(burst.chain(late).boxed())
    });
    tokio::spawn(nats::serve(bind(&server, SUBJECT).await, handler));
    // A connection whose subscriptions hold 16 messages at most.
    let small =
        async_nats::ConnectOptions::new().subscription_capacity(16).connect(&server.url).await.unwrap();
    let client = nats::Client::new(small, SUBJECT).unwrap();
    let mut items = client.send(Request::new("generate", Bytes::from_static(b"s"))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // the burst overflows meanwhile
    let mut received = 0;
    let error = loop {
        match items.next().await {
            Some(Ok(item)) => {
                assert_eq!(item, format!("s:{received}"), "in order, none skipped");
                received += 1;
            }
            Some(Err(error)) => break error,
            None => panic!("the stream ended after {received} of 2000 items without an error"),
        }
    };
    assert!(received < 2_000);
    assert!(matches!(&error, RpcError::ConnectionLost(why) if why.contains("were lost")), "{error}");
}

/// A caller stops reading stream A after one item near NATS's payload limit, for longer than
/// its silence limit; stream B of 64 such items on the same client still completes; the worker
/// made no more of A than its window allows (its items wait at the worker, not in NATS or the
/// client's buffers); A, read again, delivers every item in order without a silence error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_waits_at_the_worker_and_holds_up_no_other() {
    let Some(server) = NatsServer::start() else { return };
    let item = 1_000_000; // NATS's max_payload is 1 MiB (1,048,576 bytes)
    let window = 4 * item as u32;
    let produced = Arc::default();
    let listener = bind(&server, SUBJECT).await;
    let worker = nats::Server::new(sized_items(Arc::clone(&produced))).heartbeat(Duration::from_millis(100));
    tokio::spawn(worker.serve_with_shutdown(listener, std::future::pending()));
    let client = nats::Client::new(connect(&server).await, SUBJECT)
        .unwrap()
        .stream_window(window)
        .silence_limit(Duration::from_millis(300));

    let mut a = client.send(Request::new("generate", Bytes::from(format!("64:{item}")))).await.unwrap();
    assert_eq!(a.next().await.unwrap().unwrap().len(), item);
    let mut b = client.send(Request::new("generate", Bytes::from(format!("64:{item}")))).await.unwrap();
    read_in_order(&mut b, 0, 64).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // twice the silence limit, A unread

    let made_of_a = produced.lock().unwrap()[0].load(Ordering::SeqCst);
    assert!(
        made_of_a <= 1 + window as usize / item + 1,
        "the worker made {made_of_a} items of the stalled stream"
    );
    read_in_order(&mut a, 1, 64).await;
}

/// A caller older than flow control (no window header) is told so by the worker.
#[tokio::test]
async fn a_caller_without_a_window_is_refused_with_the_reason() {
    let Some(server) = NatsServer::start() else { return };
    tokio::spawn(nats::serve(
        bind(&server, SUBJECT).await,
        counting_handler(1, Duration::ZERO, Duration::ZERO, Arc::default()),
    ));
    let nats = connect(&server).await;
    let inbox = nats.new_inbox();
    let mut replies = nats.subscribe(inbox.clone()).await.unwrap();
    nats.publish_with_reply(format!("{SUBJECT}.generate"), inbox, Bytes::new()).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), replies.next()).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&reply.payload);
    assert!(text.contains("tokentrace-window") && text.contains("upgrade the caller"), "{text}");
}
