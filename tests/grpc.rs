//! gRPC through the HTTP layers: a real tonic server and client over HTTP/2 on loopback, with a
//! generated service (tonic-health's `grpc.health.v1.Health`, implemented here so each call
//! can answer any status or stream any number of messages).

mod support;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::trace::SpanData;
use support::{attr, Spans};
use tokentrace::http::{ClientLayer, ServerLayer};
use tonic::transport::{Channel, Server};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower::ServiceBuilder;

/// `check("ok")` answers SERVING; `check("<code>")` fails with that status code.
/// `watch("gated")` streams 3 messages, waits for the gate, then 2 more; `watch("forever")`
/// streams until the caller goes away, which it flags.
#[derive(Clone, Default)]
struct TestHealth {
    watch_dropped: Arc<AtomicBool>,
    /// `watch("gated")` sends 3 messages, waits for this, then sends 2 more.
    gate: Arc<tokio::sync::Notify>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Health for TestHealth {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        match request.into_inner().service.as_str() {
            "ok" => Ok(tonic::Response::new(HealthCheckResponse { status: 1 })),
            code => Err(tonic::Status::new(tonic::Code::from(code.parse::<i32>().unwrap()), "as asked")),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<WatchStream>, tonic::Status> {
        struct OnDrop(Arc<AtomicBool>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let gated = request.into_inner().service == "gated";
        let count = if gated { 5 } else { usize::MAX };
        let guard = OnDrop(Arc::clone(&self.watch_dropped));
        let gate = Arc::clone(&self.gate);
        let stream = futures_util::stream::unfold((0, guard), move |(i, guard)| {
            let gate = Arc::clone(&gate);
            async move {
                if i == count {
                    return None;
                }
                if gated && i == 3 {
                    gate.notified().await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                Some((Ok(HealthCheckResponse { status: 1 }), (i + 1, guard)))
            }
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// A traced tonic server on loopback, and a traced generated client connected to it.
async fn serve(
    spans: &Spans,
    health: TestHealth,
) -> HealthClient<tokentrace::http::ClientService<Channel, opentelemetry_sdk::trace::SdkTracer>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        Some((listener.accept().await.map(|(socket, _)| socket), listener))
    });
    let server = Server::builder()
        .layer(ServerLayer::with_tracer(spans.tracer("server")))
        .add_service(HealthServer::new(health));
    tokio::spawn(server.serve_with_incoming(incoming));
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    HealthClient::new(
        ServiceBuilder::new().layer(ClientLayer::with_tracer(spans.tracer("client"))).service(channel),
    )
}

fn request(service: &str) -> tonic::Request<HealthCheckRequest> {
    let mut request = tonic::Request::new(HealthCheckRequest { service: service.into() });
    request.metadata_mut().insert("x-request-id", "grpc-1".parse().unwrap());
    request
}

fn side(spans: &[SpanData], kind: SpanKind) -> &SpanData {
    spans.iter().find(|s| s.span_kind == kind).unwrap_or_else(|| panic!("no {kind:?} span in {spans:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_is_one_trace_named_and_attributed_as_grpc() {
    let spans = Spans::new();
    let mut client = serve(&spans, TestHealth::default()).await;
    client.check(request("ok")).await.unwrap();

    let spans = spans.wait_for_async("client and server spans", |s| s.len() == 2).await;
    let (client, server) = (side(&spans, SpanKind::Client), side(&spans, SpanKind::Server));
    for span in [client, server] {
        assert_eq!(span.name, "grpc.health.v1.Health/Check");
        assert_eq!(attr(span, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(attr(span, "rpc.service").as_deref(), Some("grpc.health.v1.Health"));
        assert_eq!(attr(span, "rpc.method").as_deref(), Some("Check"));
        assert_eq!(attr(span, "rpc.grpc.status_code").as_deref(), Some("0"));
        assert_eq!(attr(span, "x_request_id").as_deref(), Some("grpc-1"));
        assert_eq!(span.status, Status::Unset);
    }
    assert_eq!(server.span_context.trace_id(), client.span_context.trace_id());
    assert_eq!(server.parent_span_id, client.span_context.span_id(), "one trace across both sides");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_status_is_an_error_where_the_conventions_say() {
    let server_errors = [2, 4, 12, 13, 14, 15];
    for code in 1..=16 {
        let spans = Spans::new();
        let mut client = serve(&spans, TestHealth::default()).await;
        let status = client.check(request(&code.to_string())).await.unwrap_err();
        assert_eq!(status.code() as i32, code);
        let spans = spans.wait_for_async("client and server spans", |s| s.len() == 2).await;
        let (client, server) = (side(&spans, SpanKind::Client), side(&spans, SpanKind::Server));
        for span in [client, server] {
            assert_eq!(attr(span, "rpc.grpc.status_code"), Some(code.to_string()), "code {code}");
        }
        assert!(matches!(client.status, Status::Error { .. }), "client, code {code}: any code but OK");
        assert_eq!(
            matches!(server.status, Status::Error { .. }),
            server_errors.contains(&code),
            "server, code {code}: {:?}",
            server.status
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_is_spanned_to_its_end() {
    let spans = Spans::new();
    let health = TestHealth::default();
    let gate = Arc::clone(&health.gate);
    let mut client = serve(&spans, health).await;
    let mut stream = client.watch(request("gated")).await.unwrap().into_inner();
    for _ in 0..3 {
        stream.next().await.unwrap().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(spans.finished().is_empty(), "no span ends while the stream runs");
    gate.notify_one();
    let mut rest = 0;
    while let Some(message) = stream.next().await {
        message.unwrap();
        rest += 1;
    }
    assert_eq!(rest, 2);
    let spans = spans.wait_for_async("client and server spans", |s| s.len() == 2).await;
    for span in &spans {
        assert_eq!(span.name, "grpc.health.v1.Health/Watch");
        let lasted = span.end_time.duration_since(span.start_time).unwrap();
        assert!(lasted >= Duration::from_millis(40), "{:?} lasted {lasted:?}", span.span_kind);
        assert_eq!(attr(span, "rpc.grpc.status_code").as_deref(), Some("0"));
        assert_eq!(attr(span, "cancelled"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_ends_both_spans_as_cancelled() {
    let spans = Spans::new();
    let health = TestHealth::default();
    let dropped = Arc::clone(&health.watch_dropped);
    let mut client = serve(&spans, health).await;
    let mut stream = client.watch(request("forever")).await.unwrap().into_inner();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let spans = spans.wait_for_async("client and server spans", |s| s.len() == 2).await;
    for span in &spans {
        assert_eq!(attr(span, "cancelled").as_deref(), Some("true"), "{:?}", span.span_kind);
    }
    for _ in 0..100 {
        if dropped.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server's stream was never dropped");
}
