//! The worker RPC layers and TCP transport over real loopback sockets.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::Context;
use support::handlers::{counting_handler, read_in_order, sized_items, Items};
use support::{attr, Spans};
use tokentrace::rpc::{self, tcp, Request, RpcError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{ServiceBuilder, ServiceExt};

async fn listen() -> (TcpListener, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_over_one_connection_stay_in_order_without_cross_talk() {
    let (listener, addr) = listen().await;
    tokio::spawn(tcp::serve(listener, counting_handler(50, Duration::ZERO, Duration::ZERO, Arc::default())));
    let client = tcp::Client::connect(addr).await.unwrap();

    let mut tasks = Vec::new();
    for n in 0..256 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let items = client.oneshot(Request::new("generate", Bytes::from(format!("s{n}")))).await.unwrap();
            let items: Vec<_> =
                items.map(|item| String::from_utf8(item.unwrap().to_vec()).unwrap()).collect().await;
            let expected: Vec<_> = (0..50).map(|i| format!("s{n}:{i}")).collect();
            assert_eq!(items, expected, "stream {n}");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn dropping_the_response_stream_cancels_the_handler() {
    let (listener, addr) = listen().await;
    let dropped = Arc::new(AtomicBool::new(false));
    tokio::spawn(tcp::serve(
        listener,
        counting_handler(
            usize::MAX,
            Duration::from_millis(5),
            Duration::from_millis(5),
            Arc::clone(&dropped),
        ),
    ));
    let client = tcp::Client::connect(addr).await.unwrap();
    let mut items = client.clone().oneshot(Request::new("generate", Bytes::from_static(b"c"))).await.unwrap();
    assert_eq!(items.next().await.unwrap().unwrap(), "c:0");
    drop(items);
    for _ in 0..200 {
        if dropped.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(dropped.load(Ordering::SeqCst), "the server dropped the handler's stream");
    // The connection still works.
    let items: Vec<_> = client
        .oneshot(Request::new("generate", Bytes::from_static(b"d")))
        .await
        .unwrap()
        .take(1)
        .collect()
        .await;
    assert_eq!(items[0].as_ref().unwrap(), "d:0");
}

#[tokio::test]
async fn oversized_frames_are_refused_without_crashing_either_side() {
    let (listener, addr) = listen().await;
    tokio::spawn(
        tcp::Server::new(counting_handler(1, Duration::ZERO, Duration::ZERO, Arc::default()))
            .max_frame_len(1024)
            .serve_with_shutdown(listener, std::future::pending()),
    );

    // The client refuses to send a frame over its own limit, before writing anything.
    let client = tcp::Client::builder().max_frame_len(1024).connect(addr).await.unwrap();
    let error =
        client.clone().oneshot(Request::new("generate", Bytes::from(vec![b'x'; 4096]))).await.unwrap_err();
    assert!(matches!(error, RpcError::FrameTooLarge { size, max: 1024 } if size > 4096), "{error}");

    // A peer announcing a 1 GiB frame is cut off from its header alone...
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut reply)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&reply).contains("exceeds the 1024-byte limit"));

    // ...and the server keeps serving everyone else.
    let items: Vec<_> =
        client.oneshot(Request::new("generate", Bytes::from_static(b"ok"))).await.unwrap().collect().await;
    assert_eq!(items[0].as_ref().unwrap(), "ok:0");
}

#[tokio::test]
async fn malformed_frames_are_refused_and_the_server_survives() {
    let (listener, addr) = listen().await;
    tokio::spawn(tcp::serve(listener, counting_handler(1, Duration::ZERO, Duration::ZERO, Arc::default())));
    for garbage in [
        &[0, 0, 0, 3, 1, 2, 3][..],
        &[0, 0, 0, 9, 99, 0, 0, 0, 0, 0, 0, 0, 1],
        &[0, 0, 0, 12, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0],
    ] {
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(garbage).await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut reply)).await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&reply).contains("malformed frame"), "{garbage:?} -> {reply:?}");
    }
    let client = tcp::Client::connect(addr).await.unwrap();
    let items: Vec<_> =
        client.oneshot(Request::new("generate", Bytes::from_static(b"ok"))).await.unwrap().collect().await;
    assert_eq!(items[0].as_ref().unwrap(), "ok:0");
}

#[tokio::test]
async fn a_server_dying_mid_stream_fails_every_in_flight_stream() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(tcp::serve(
        listener,
        counting_handler(usize::MAX, Duration::from_millis(5), Duration::from_millis(5), Arc::default()),
    ));
    let client = tcp::Client::connect(addr).await.unwrap();
    let mut streams = Vec::new();
    for n in 0..4 {
        let mut items =
            client.clone().oneshot(Request::new("generate", Bytes::from(format!("{n}")))).await.unwrap();
        assert!(items.next().await.unwrap().is_ok());
        streams.push(items);
    }
    server.abort(); // the worker process dies: its connections close
    for mut items in streams {
        let error = loop {
            match tokio::time::timeout(Duration::from_secs(5), items.next()).await.unwrap() {
                Some(Ok(_)) => continue,
                Some(Err(error)) => break error,
                None => panic!("stream ended without an error"),
            }
        };
        // Either the dying server's last word or the closed connection: never silence.
        assert!(matches!(error, RpcError::ConnectionLost(_) | RpcError::Remote(_)), "{error}");
        assert!(items.next().await.is_none());
    }
    let error = client.oneshot(Request::new("generate", Bytes::new())).await.unwrap_err();
    assert!(matches!(error, RpcError::ConnectionLost(_)));
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_streams_finish() {
    let (listener, addr) = listen().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tcp::Server::new(counting_handler(
            20,
            Duration::from_millis(10),
            Duration::from_millis(10),
            Arc::default(),
        ))
        .serve_with_shutdown(listener, async {
            let _ = stopped.await;
        }),
    );
    let client = tcp::Client::connect(addr).await.unwrap();
    let mut items = client.clone().oneshot(Request::new("generate", Bytes::from_static(b"g"))).await.unwrap();
    assert!(items.next().await.unwrap().is_ok());
    stop.send(()).unwrap();
    let rest: Vec<_> = items.collect().await;
    assert_eq!(rest.len(), 19);
    assert!(rest.iter().all(Result::is_ok));
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

#[tokio::test]
async fn the_trace_is_continuous_across_a_real_tcp_hop() {
    let spans = Spans::new();
    let (listener, addr) = listen().await;
    let worker = ServiceBuilder::new()
        .layer(rpc::ServerLayer::with_tracer(spans.tracer("worker")).component("backend").instance_id(3))
        .service(counting_handler(5, Duration::ZERO, Duration::ZERO, Arc::default()));
    tokio::spawn(tcp::serve(listener, worker));
    let client = ServiceBuilder::new()
        .layer(
            rpc::ClientLayer::with_tracer(spans.tracer("frontend"))
                .server_address(addr.to_string())
                .instance_id(3),
        )
        // A hop that took two seconds: the send time the client layer wrote, moved back.
        .map_request(|mut request: Request<Bytes>| {
            let sent: u64 = request.metadata.get(rpc::SEND_TIMESTAMP).unwrap().parse().unwrap();
            let earlier = (sent - 2_000_000_000).to_string();
            tokentrace::propagation::Carrier::set(&mut request.metadata, rpc::SEND_TIMESTAMP, &earlier);
            request
        })
        .service(tcp::Client::connect(addr).await.unwrap());

    let root = Context::current_with_span(spans.tracer("test").start("http-request"));
    let items: Vec<_> = async {
        client
            .oneshot(Request::new("generate", Bytes::from_static(b"t")))
            .await
            .unwrap()
            .collect::<Vec<_>>()
            .await
    }
    .with_context(root.clone())
    .await;
    assert_eq!(items.len(), 5);
    root.span().end();

    let spans = spans.wait_for_async("root, client and handle_payload", |s| s.len() == 3).await;
    let root = spans.iter().find(|s| s.name == "http-request").unwrap();
    let client = spans.iter().find(|s| s.span_kind == SpanKind::Client).unwrap();
    let server = spans.iter().find(|s| s.name == "handle_payload").unwrap();
    assert_eq!(client.name, "generate");
    assert_eq!(client.parent_span_id, root.span_context.span_id());
    assert_eq!(server.parent_span_id, client.span_context.span_id());
    assert_eq!(server.span_context.trace_id(), root.span_context.trace_id());
    assert_eq!(server.span_kind, SpanKind::Server);
    assert_eq!(attr(server, "component").as_deref(), Some("backend"));
    assert_eq!(attr(server, "instance_id").as_deref(), Some("3"));
    assert_eq!(attr(server, "endpoint").as_deref(), Some("generate"));
    assert_eq!(attr(server, "x_request_id"), attr(client, "x_request_id"));
    // Two seconds plus the loopback hop, in milliseconds.
    let transit_ms: f64 = attr(server, "network.transit_ms").unwrap().parse().unwrap();
    assert!((2_000.0..3_000.0).contains(&transit_ms), "transit {transit_ms} ms");
    assert_eq!(attr(client, "outcome").as_deref(), Some("ok"));
    assert_eq!(attr(client, "rpc.response.items").as_deref(), Some("5"));
    assert_eq!(attr(client, "server.address"), Some(addr.to_string()));
    assert_eq!(attr(client, "attempt").as_deref(), Some("1"));
}

#[tokio::test]
async fn a_dropped_traced_stream_is_recorded_as_cancelled_on_both_sides() {
    let spans = Spans::new();
    let (listener, addr) = listen().await;
    let worker = ServiceBuilder::new().layer(rpc::ServerLayer::with_tracer(spans.tracer("worker"))).service(
        counting_handler(usize::MAX, Duration::from_millis(5), Duration::from_millis(5), Arc::default()),
    );
    tokio::spawn(tcp::serve(listener, worker));
    let client = ServiceBuilder::new()
        .layer(rpc::ClientLayer::with_tracer(spans.tracer("frontend")))
        .service(tcp::Client::connect(addr).await.unwrap());
    let mut items = client.oneshot(Request::new("generate", Bytes::from_static(b"x"))).await.unwrap();
    items.next().await.unwrap().unwrap();
    drop(items);
    let spans = spans.wait_for_async("both spans", |s| s.len() == 2).await;
    for span in &spans {
        assert_eq!(attr(span, "outcome").as_deref(), Some("cancelled"), "{}", span.name);
        assert_eq!(attr(span, "cancelled").as_deref(), Some("true"));
    }
}

/// The server layer's stream keeps the request's context attached for every poll, also after an
/// error item (the handler may go on), while the span records the first error only.
#[tokio::test]
async fn the_handler_stream_runs_in_the_request_context_after_an_error_item() {
    use tokentrace::propagation::RequestIds;

    let spans = Spans::new();
    // Each item reports the request id and span the handler's stream sees while it is polled.
    let handler = tower::service_fn(|_: Request<Bytes>| async {
        let items = stream::unfold(0, |i| async move {
            if i == 3 {
                return None;
            }
            let seen = format!(
                "{}/{}",
                RequestIds::current().map(|ids| ids.x_request_id.as_str().to_owned()).unwrap_or_default(),
                Context::current().span().span_context().span_id()
            );
            let item = if i == 1 { Err(RpcError::Remote(seen)) } else { Ok(Bytes::from(seen)) };
            Some((item, i + 1))
        });
        Ok::<Items, RpcError>(items.boxed())
    });
    let server =
        ServiceBuilder::new().layer(rpc::ServerLayer::with_tracer(spans.tracer("worker"))).service(handler);
    let mut request = Request::new("generate", Bytes::new());
    request.metadata.append("x-request-id", "req-err-1");
    let seen: Vec<String> = server
        .oneshot(request)
        .await
        .unwrap()
        .map(|item| match item {
            Ok(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
            Err(RpcError::Remote(seen)) => seen,
            Err(other) => panic!("unexpected {other}"),
        })
        .collect()
        .await;

    let spans = spans.wait_for_async("the handler's span", |s| s.len() == 1).await;
    let span = &spans[0];
    let expected = format!("req-err-1/{}", span.span_context.span_id());
    assert_eq!(
        seen,
        [expected.clone(), expected.clone(), expected],
        "same context before and after the error"
    );
    assert_eq!(attr(span, "outcome").as_deref(), Some("error"));
    assert_eq!(attr(span, "rpc.response.items").as_deref(), Some("1"), "counted up to the first error");
    assert_eq!(attr(span, "error.type").as_deref(), Some("remote"));
    assert_eq!(attr(span, "cancelled"), None, "an error, not a cancellation, though the stream went on");
}

/// The process's resident memory, in bytes (Linux).
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 4096
}

/// A server streaming 1 GiB to a client that reads nothing: the bounded queues make the server
/// wait instead of buffering, so neither end grows (both run in this process: the bound holds
/// for the two together), and dropping the stream stops the server's work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_makes_the_server_wait_in_bounded_memory() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 16 * 1024; // 1 GiB in all
    let produced = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let (listener, addr) = listen().await;
    let (counter, flag) = (Arc::clone(&produced), Arc::clone(&dropped));
    tokio::spawn(tcp::serve(
        listener,
        tower::service_fn(move |_request: Request<Bytes>| {
            let (counter, flag) = (Arc::clone(&counter), Arc::clone(&flag));
            async move {
                struct OnDrop(Arc<AtomicBool>);
                impl Drop for OnDrop {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::SeqCst);
                    }
                }
                let chunk = Bytes::from(vec![7u8; CHUNK]);
                let guard = OnDrop(flag);
                let items = stream::iter(0..CHUNKS).map(move |_| {
                    let _ = &guard;
                    counter.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, RpcError>(chunk.clone())
                });
                Ok::<Items, RpcError>(items.boxed())
            }
        }),
    ));
    let client = tcp::Client::builder().max_frame_len(2 * CHUNK).connect(addr).await.unwrap();
    let before = resident_bytes();
    let mut items = client.send(Request::new("generate", Bytes::new())).await.unwrap();
    assert_eq!(items.next().await.unwrap().unwrap().len(), CHUNK);
    // Read nothing more while the server tries to send the rest.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = resident_bytes().saturating_sub(before);
    let sent = produced.load(Ordering::Relaxed);
    assert!(sent < CHUNKS / 4, "the server kept producing: {sent} of {CHUNKS} chunks");
    assert!(grown < 64 << 20, "memory grew by {} MiB", grown >> 20);
    drop(items);
    for _ in 0..200 {
        if dropped.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server's handler was not dropped after the client dropped its stream");
}

/// A caller stops reading stream A after one 1 MiB item; stream B of 64 such items on the same
/// connection still completes; the worker made no more of A than its window allows; A, read
/// again, delivers every item in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_holds_up_no_other_stream_and_resumes_in_order() {
    const MIB: usize = 1 << 20;
    let produced = Arc::default();
    let (listener, addr) = listen().await;
    tokio::spawn(tcp::serve(listener, sized_items(Arc::clone(&produced))));
    let window = 4 * MIB as u32;
    let client = tcp::Client::builder().stream_window(window).connect(addr).await.unwrap();

    let mut a = client.send(Request::new("generate", Bytes::from(format!("128:{MIB}")))).await.unwrap();
    assert_eq!(a.next().await.unwrap().unwrap().len(), MIB);
    let mut b = client.send(Request::new("generate", Bytes::from(format!("64:{MIB}")))).await.unwrap();
    read_in_order(&mut b, 0, 64).await;

    // Read one, granted four more (its window), and one more waiting for the window.
    let made_of_a = produced.lock().unwrap()[0].load(Ordering::SeqCst);
    assert!(
        made_of_a <= 1 + window as usize / MIB + 1,
        "the worker made {made_of_a} items of the stalled stream"
    );
    read_in_order(&mut a, 1, 128).await;
}

/// A hundred stalled streams on one connection: the worker makes no more of each than its
/// window, and another stream still flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_streams_hold_at_most_their_windows() {
    const ITEM: usize = 16 << 10;
    const WINDOW: u32 = 64 << 10;
    let produced = Arc::default();
    let (listener, addr) = listen().await;
    tokio::spawn(tcp::serve(listener, sized_items(Arc::clone(&produced))));
    let client = tcp::Client::builder()
        .stream_window(WINDOW)
        .connection_window(128 * WINDOW)
        .connect(addr)
        .await
        .unwrap();
    let mut stalled = Vec::new();
    for _ in 0..100 {
        let mut items =
            client.send(Request::new("generate", Bytes::from(format!("1000:{ITEM}")))).await.unwrap();
        items.next().await.unwrap().unwrap();
        stalled.push(items);
    }
    let mut flowing =
        client.send(Request::new("generate", Bytes::from(format!("200:{ITEM}")))).await.unwrap();
    read_in_order(&mut flowing, 0, 200).await;
    let per_stream = 1 + WINDOW as usize / ITEM + 1;
    let made: Vec<usize> = produced.lock().unwrap()[..100].iter().map(|n| n.load(Ordering::SeqCst)).collect();
    assert!(made.iter().all(|&n| n <= per_stream), "items made per stalled stream: {made:?}");
    drop(stalled);
}

/// A client that predates `hello` is told why the worker refuses it; a worker that predates it
/// (it answers an unknown frame kind with an error on stream 0 and closes) is reported as such.
#[tokio::test]
async fn a_peer_of_an_older_wire_version_gets_a_clear_error() {
    let (listener, addr) = listen().await;
    tokio::spawn(tcp::serve(listener, counting_handler(1, Duration::ZERO, Duration::ZERO, Arc::default())));
    // A version-1 request: kind 1, stream 1, endpoint "g", no metadata, no payload.
    let body = [&[1u8][..], &1u64.to_be_bytes(), &[0, 1, b'g', 0, 0]].concat();
    let mut old_client = TcpStream::connect(addr).await.unwrap();
    old_client.write_all(&[&(body.len() as u32).to_be_bytes()[..], &body].concat()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), old_client.read_to_end(&mut reply)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&reply).contains("sent no hello"), "{}", String::from_utf8_lossy(&reply));

    let (old_worker, addr) = listen().await;
    tokio::spawn(async move {
        let (mut socket, _) = old_worker.accept().await.unwrap();
        let mut hello = [0u8; 4 + 9 + 10];
        socket.read_exact(&mut hello).await.unwrap();
        let message = b"malformed frame: unknown frame kind 7";
        let body = [&[4u8][..], &0u64.to_be_bytes(), message].concat();
        socket.write_all(&[&(body.len() as u32).to_be_bytes()[..], &body].concat()).await.unwrap();
    });
    let client = tcp::Client::connect(addr).await.unwrap();
    let error = loop {
        match client.send(Request::new("generate", Bytes::new())).await {
            Ok(mut items) => match items.next().await {
                Some(Err(error)) => break error,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Err(error) => break error,
        }
    };
    let text = error.to_string();
    assert!(text.contains("refused the connection") && text.contains("older than wire version 2"), "{text}");
}
