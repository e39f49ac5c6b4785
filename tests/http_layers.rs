//! The HTTP layers over real sockets on 127.0.0.1: a real axum server, a real hyper client.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::response::sse::{Event, Sse};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::Context;
use opentelemetry_sdk::trace::SdkTracer;
use support::{attr, Spans};
use tokentrace::http::{ClientLayer, ClientService, ServerLayer, SpanNameStyle};
use tower::{Service, ServiceBuilder, ServiceExt};

type TracedClient = ClientService<Client<HttpConnector, Empty<Bytes>>, SdkTracer>;

fn client(tracer: SdkTracer) -> TracedClient {
    let hyper = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    ServiceBuilder::new().layer(ClientLayer::with_tracer(tracer)).service(hyper)
}

fn plain_client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>()
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn get_request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> http::Request<Empty<Bytes>> {
    let mut builder = http::Request::get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Empty::new()).unwrap()
}

/// The headers a handler saw, recorded for assertions.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<http::HeaderMap>>>);

impl Seen {
    fn record(&self, headers: &http::HeaderMap) {
        self.0.lock().unwrap().push(headers.clone());
    }
    fn all(&self) -> Vec<http::HeaderMap> {
        self.0.lock().unwrap().clone()
    }
}

fn recording_app(seen: Seen) -> Router {
    Router::new().route(
        "/echo",
        get(move |request: Request| {
            let seen = seen.clone();
            async move {
                seen.record(request.headers());
                "ok"
            }
        }),
    )
}

#[tokio::test]
async fn parent_and_child_across_a_real_server_and_client() {
    let spans = Spans::new();
    let addr =
        serve(recording_app(Seen::default()).layer(ServerLayer::with_tracer(spans.tracer("server")))).await;
    let mut client = client(spans.tracer("client"));

    let root = spans.tracer("test").start("root");
    let cx = Context::current_with_span(root);
    // The call is made while the root's context is current, as in a traced handler.
    let response = async { client.ready().await.unwrap().call(get_request(addr, "/echo", &[])).await }
        .with_context(cx.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    cx.span().end();

    let spans = spans.wait_for_async("three spans", |s| s.len() == 3).await;
    let server = spans.iter().find(|s| s.span_kind == SpanKind::Server).unwrap();
    let client = spans.iter().find(|s| s.span_kind == SpanKind::Client).unwrap();
    let root = spans.iter().find(|s| s.name == "root").unwrap();
    assert_eq!(server.name, "http-request");
    assert_eq!(client.name, "GET");
    assert_eq!(server.span_context.trace_id(), root.span_context.trace_id());
    assert_eq!(client.parent_span_id, root.span_context.span_id());
    assert_eq!(server.parent_span_id, client.span_context.span_id());
    assert!(server.parent_span_is_remote);
    assert_eq!(attr(server, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(server, "url.path").as_deref(), Some("/echo"));
    assert_eq!(attr(server, "http.route").as_deref(), Some("/echo"));
    assert_eq!(attr(server, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(server, "server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(attr(server, "network.protocol.version").as_deref(), Some("1.1"));
    assert_eq!(attr(client, "http.response.status_code").as_deref(), Some("200"));
    // The same request ids on both sides.
    assert!(attr(server, "x_request_id").is_some());
    assert_eq!(attr(server, "x_request_id"), attr(client, "x_request_id"));
    assert_eq!(attr(server, "request_id").map(|id| id.len()), Some(36));
    assert_eq!(attr(server, "request_id"), attr(client, "request_id"));
}

/// A handler reads the request ids and the request's context as typed extensions, through the
/// crate's own `opentelemetry` re-export.
#[tokio::test]
async fn handlers_take_request_ids_and_the_context_as_extensions() {
    use axum::Extension;
    use tokentrace::propagation::RequestIds;

    let spans = Spans::new();
    let app = Router::new()
        .route(
            "/ids",
            get(
                |Extension(ids): Extension<RequestIds>,
                 Extension(cx): Extension<tokentrace::opentelemetry::Context>,
                 headers: http::HeaderMap| async move {
                    assert_eq!(
                        RequestIds::current().as_ref(),
                        Some(&ids),
                        "one set of ids below the handler"
                    );
                    assert_eq!(RequestIds::extract(&headers), ids, "the request's headers agree");
                    format!("{} {} {}", ids.x_request_id, ids.request_id, cx.span().span_context().trace_id())
                },
            ),
        )
        .layer(ServerLayer::with_tracer(spans.tracer("server")));
    let addr = serve(app).await;
    let mut client = client(spans.tracer("client"));
    let request = get_request(
        addr,
        "/ids",
        &[
            ("x-request-id", "ext-1"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ],
    );
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = std::str::from_utf8(&body).unwrap().to_owned();
    let spans = spans.wait_for_async("two spans", |s| s.len() == 2).await;
    let server = spans.iter().find(|s| s.span_kind == SpanKind::Server).unwrap();
    let request_id = attr(server, "request_id").unwrap();
    assert_eq!(body, format!("ext-1 {request_id} {}", server.span_context.trace_id()));
}

/// Ids the layer generates (none sent, or refused ones) are written into the request's headers,
/// so a handler that reads the headers sees the ids the layer stored, echoes and records.
#[tokio::test]
async fn generated_request_ids_reach_the_request_headers() {
    use tokentrace::propagation::RequestIds;
    use tower::Layer;

    let handler = tower::service_fn(|request: http::Request<String>| async move {
        let stored = request.extensions().get::<RequestIds>().cloned().expect("stored by the layer");
        assert_eq!(RequestIds::extract(request.headers()), stored, "headers and extension agree");
        assert_eq!(request.headers().get_all("x-request-id").iter().count(), 1);
        assert_eq!(request.headers().get_all("request-id").iter().count(), 1);
        Ok::<_, std::convert::Infallible>(http::Response::new(stored.x_request_id.to_string()))
    });
    let spans = Spans::new();
    let service = ServerLayer::with_tracer(spans.tracer("server")).layer(handler);
    let requests = [
        http::Request::new(String::new()),
        http::Request::builder()
            .header("x-request-id", "has space")
            .header("request-id", "not-a-uuid")
            .header("request-id", "123e4567-e89b-42d3-a456-426614174000")
            .body(String::new())
            .unwrap(),
    ];
    for request in requests {
        let response = service.clone().oneshot(request).await.unwrap();
        let echoed = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(echoed.as_bytes(), &body[..], "the echoed id is the one the handler saw");
        assert_eq!(echoed.len(), 36, "generated");
    }
}

#[tokio::test]
async fn three_outbound_calls_carry_three_parent_ids_and_one_trace_id() {
    let spans = Spans::new();
    let downstream_seen = Seen::default();
    let downstream = serve(
        recording_app(downstream_seen.clone()).layer(ServerLayer::with_tracer(spans.tracer("downstream"))),
    )
    .await;
    let outbound = client(spans.tracer("frontend-client"));
    let frontend = Router::new()
        .route(
            "/fanout",
            get(move || {
                let mut outbound = outbound.clone();
                async move {
                    for _ in 0..3 {
                        let response = outbound
                            .ready()
                            .await
                            .unwrap()
                            .call(get_request(
                                downstream,
                                "/echo",
                                &[("traceparent", "00-11111111111111111111111111111111-2222222222222222-01")],
                            ))
                            .await
                            .unwrap();
                        response.into_body().collect().await.unwrap();
                    }
                    "done"
                }
            }),
        )
        .layer(ServerLayer::with_tracer(spans.tracer("frontend")));
    let frontend = serve(frontend).await;

    let response =
        plain_client().request(get_request(frontend, "/fanout", &[("x-request-id", "fan-1")])).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "fan-1");
    response.into_body().collect().await.unwrap();

    let spans = spans.wait_for_async("1 + 3 + 3 spans", |s| s.len() == 7).await;
    let front = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Server && attr(s, "url.path").as_deref() == Some("/fanout"))
        .unwrap();
    let client_ids: Vec<_> =
        spans.iter().filter(|s| s.span_kind == SpanKind::Client).map(|s| s.span_context.span_id()).collect();
    assert_eq!(client_ids.len(), 3);

    let seen = downstream_seen.all();
    assert_eq!(seen.len(), 3);
    let mut parents = Vec::new();
    for headers in &seen {
        assert_eq!(headers.get_all("traceparent").iter().count(), 1, "exactly one traceparent");
        let tp: tokentrace::propagation::TraceParent =
            headers["traceparent"].to_str().unwrap().parse().unwrap();
        assert_eq!(tp.trace_id(), front.span_context.trace_id(), "the stale header was replaced");
        assert!(client_ids.contains(&tp.parent_id()));
        assert_eq!(headers["x-request-id"], "fan-1");
        assert_eq!(headers["request-id"].len(), 36);
        parents.push(tp.parent_id().to_string());
    }
    parents.sort();
    parents.dedup();
    assert_eq!(parents.len(), 3, "three distinct parent ids");
}

#[tokio::test]
async fn x_request_id_is_kept_generated_replaced_and_echoed() {
    let spans = Spans::new();
    let seen = Seen::default();
    let addr =
        serve(recording_app(seen.clone()).layer(ServerLayer::with_tracer(spans.tracer("server")))).await;
    let client = plain_client();

    let kept = client.request(get_request(addr, "/echo", &[("x-request-id", "abc-123")])).await.unwrap();
    assert_eq!(kept.headers()["x-request-id"], "abc-123");

    let generated = client.request(get_request(addr, "/echo", &[])).await.unwrap();
    let generated_id = generated.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated_id.len(), 36);

    let hostile = "<script>alert(1)</script>";
    let replaced = client.request(get_request(addr, "/echo", &[("x-request-id", hostile)])).await.unwrap();
    let replaced_id = replaced.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(replaced_id, hostile);
    assert_eq!(replaced_id.len(), 36);

    let too_long = "a".repeat(129);
    let replaced = client.request(get_request(addr, "/echo", &[("x-request-id", &too_long)])).await.unwrap();
    assert_eq!(replaced.headers()["x-request-id"].len(), 36);

    let spans = spans.wait_for_async("four server spans", |s| s.len() == 4).await;
    let ids: Vec<_> = spans.iter().filter_map(|s| attr(s, "x_request_id")).collect();
    assert!(ids.contains(&"abc-123".to_owned()));
    assert!(ids.contains(&generated_id));
    assert!(ids.contains(&replaced_id));
    assert!(!ids.iter().any(|id| id.contains('<')), "hostile value never recorded");
}

fn sse_app(chunks: usize, delay: Duration) -> Router {
    Router::new().route(
        "/stream",
        get(move || async move {
            let events = futures_util::stream::unfold(0, move |i| async move {
                if i == chunks {
                    return None;
                }
                tokio::time::sleep(delay).await;
                Some((Ok::<_, Infallible>(Event::default().data(format!("token {i}"))), i + 1))
            });
            Sse::new(events)
        }),
    )
}

#[tokio::test]
async fn the_server_span_covers_the_whole_sse_stream() {
    let spans = Spans::new();
    let chunks = 8;
    let delay = Duration::from_millis(25);
    let addr = serve(sse_app(chunks, delay).layer(ServerLayer::with_tracer(spans.tracer("server")))).await;

    let response = plain_client().request(get_request(addr, "/stream", &[])).await.unwrap();
    // Headers are here; the span must still be open (a span ended with the headers would have
    // been exported before they were sent).
    assert!(spans.finished().is_empty(), "span ended when headers were sent");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&body).matches("data: token").count(), chunks);

    let spans = spans.wait_for_async("server span", |s| s.len() == 1).await;
    let span = &spans[0];
    let duration = span.end_time.duration_since(span.start_time).unwrap();
    assert!(
        duration >= delay * chunks as u32,
        "span lasted {duration:?}, stream took at least {:?}",
        delay * chunks as u32
    );
    assert_eq!(attr(span, "cancelled"), None);
    assert_eq!(span.status, Status::Unset);
}

#[tokio::test]
async fn a_client_disconnect_mid_stream_ends_the_span_as_cancelled() {
    let spans = Spans::new();
    let addr = serve(
        sse_app(1000, Duration::from_millis(5)).layer(ServerLayer::with_tracer(spans.tracer("server"))),
    )
    .await;

    let response = plain_client().request(get_request(addr, "/stream", &[])).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body); // the client goes away mid-stream

    let spans = spans.wait_for_async("cancelled server span", |s| s.len() == 1).await;
    assert_eq!(attr(&spans[0], "cancelled").as_deref(), Some("true"));
    assert!(matches!(spans[0].status, Status::Error { .. }));
}

#[tokio::test]
async fn server_errors_mark_the_span() {
    let spans = Spans::new();
    let app = Router::new()
        .route("/boom", get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "overloaded") }))
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .layer(ServerLayer::with_tracer(spans.tracer("server")));
    let addr = serve(app).await;
    let client = plain_client();
    let boom = client.request(get_request(addr, "/boom", &[])).await.unwrap();
    assert_eq!(boom.status(), StatusCode::SERVICE_UNAVAILABLE);
    boom.into_body().collect().await.unwrap();
    client.request(get_request(addr, "/missing", &[])).await.unwrap().into_body().collect().await.unwrap();

    let spans = spans.wait_for_async("two spans", |s| s.len() == 2).await;
    let boom = spans.iter().find(|s| attr(s, "url.path").as_deref() == Some("/boom")).unwrap();
    assert!(matches!(boom.status, Status::Error { .. }));
    assert_eq!(attr(boom, "error.type").as_deref(), Some("503"));
    let missing = spans.iter().find(|s| attr(s, "url.path").as_deref() == Some("/missing")).unwrap();
    assert_eq!(missing.status, Status::Unset, "4xx is not a server error");
}

#[tokio::test]
async fn filtered_requests_get_no_span_but_keep_their_request_id() {
    let spans = Spans::new();
    let app = Router::new()
        // The handler of an untraced route still runs in the request's context: it answers the
        // request id it sees there.
        .route(
            "/health",
            get(|| async {
                tokentrace::propagation::RequestIds::current()
                    .map(|ids| ids.x_request_id.as_str().to_owned())
                    .unwrap_or_default()
            }),
        )
        .route("/v1/models", get(|| async { "[]" }))
        .layer(ServerLayer::with_tracer(spans.tracer("server")).filter(|_, uri| uri.path() != "/health"));
    let addr = serve(app).await;
    let client = plain_client();
    let health = client.request(get_request(addr, "/health", &[("x-request-id", "probe")])).await.unwrap();
    assert_eq!(health.headers()["x-request-id"], "probe");
    assert_eq!(health.into_body().collect().await.unwrap().to_bytes(), "probe");
    client.request(get_request(addr, "/v1/models", &[])).await.unwrap().into_body().collect().await.unwrap();
    // The /health response had ended before /v1/models was sent: a span of it would be here.
    spans.wait_for_async("the /v1/models span", |s| !s.is_empty()).await;
    let spans = spans.finished();
    assert_eq!(spans.len(), 1);
    assert_eq!(attr(&spans[0], "url.path").as_deref(), Some("/v1/models"));
}

#[tokio::test]
async fn a_public_endpoint_starts_a_new_trace_linked_to_the_caller() {
    let spans = Spans::new();
    let app = recording_app(Seen::default()).layer(
        ServerLayer::with_tracer(spans.tracer("server"))
            .public_endpoint()
            .span_name(SpanNameStyle::MethodAndRoute),
    );
    let addr = serve(app).await;
    let inbound = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    plain_client().request(get_request(addr, "/echo", &[("traceparent", inbound)])).await.unwrap();

    let spans = spans.wait_for_async("one span", |s| s.len() == 1).await;
    let span = &spans[0];
    assert_eq!(span.name, "GET /echo");
    assert_ne!(span.span_context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span.parent_span_id, opentelemetry::trace::SpanId::INVALID, "a root span");
    assert_eq!(span.links.links.len(), 1);
    assert_eq!(span.links.links[0].span_context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span.links.links[0].span_context.span_id().to_string(), "00f067aa0ba902b7");
    // The caller's "not sampled" was not obeyed: the span was recorded and exported.
}

#[tokio::test]
async fn an_unsampled_parent_stays_unsampled_downstream() {
    let spans = Spans::new();
    let downstream_seen = Seen::default();
    let downstream = serve(
        recording_app(downstream_seen.clone()).layer(ServerLayer::with_tracer(spans.tracer("downstream"))),
    )
    .await;
    let outbound = client(spans.tracer("client"));
    let frontend = Router::new()
        .route(
            "/call",
            get(move || {
                let outbound = outbound.clone();
                async move {
                    let response = outbound.oneshot(get_request(downstream, "/echo", &[])).await.unwrap();
                    response.into_body().collect().await.unwrap();
                    "done"
                }
            }),
        )
        .layer(ServerLayer::with_tracer(spans.tracer("frontend")));
    let frontend = serve(frontend).await;

    let inbound = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let response =
        plain_client().request(get_request(frontend, "/call", &[("traceparent", inbound)])).await.unwrap();
    response.into_body().collect().await.unwrap();

    // Every span of the request ended (and a simple exporter exported it) before its body did.
    assert!(spans.finished().is_empty(), "nothing exported for an unsampled trace");
    let seen = downstream_seen.all();
    assert_eq!(seen.len(), 1);
    let traceparent = seen[0]["traceparent"].to_str().unwrap();
    assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(traceparent.ends_with("-00"), "{traceparent}");
    assert!(!traceparent.contains("00f067aa0ba902b7"), "a new span id for the hop");
}

/// Paths with parameters, routes and many distinct `Host` values are recorded exactly.
#[tokio::test]
async fn paths_routes_and_many_hosts_are_recorded_exactly() {
    const HOSTS: usize = 100;
    let spans = Spans::new();
    let app = Router::new()
        .route("/v1/models/{id}", get(|| async { "{}" }))
        .route("/v1/models", get(|| async { "[]" }))
        .layer(ServerLayer::with_tracer(spans.tracer("server")).span_name(SpanNameStyle::MethodAndRoute));
    let addr = serve(app).await;
    let client = plain_client();
    for i in 0..HOSTS {
        let host = format!("frontend-{i}.example:8{i:03}");
        let path = if i % 2 == 0 { format!("/v1/models/model-{i}") } else { "/v1/models".to_owned() };
        let response = client.request(get_request(addr, &path, &[("host", &host)])).await.unwrap();
        response.into_body().collect().await.unwrap();
    }

    let spans = spans.wait_for_async("a span per request", |s| s.len() == HOSTS).await;
    for i in 0..HOSTS {
        let address = format!("frontend-{i}.example");
        let span = spans
            .iter()
            .find(|s| attr(s, "server.address").as_deref() == Some(address.as_str()))
            .unwrap_or_else(|| panic!("no span with server.address {address}"));
        assert_eq!(attr(span, "server.port"), Some(format!("{}", 8000 + i)));
        if i % 2 == 0 {
            assert_eq!(attr(span, "url.path"), Some(format!("/v1/models/model-{i}")));
            assert_eq!(attr(span, "http.route").as_deref(), Some("/v1/models/{id}"));
            assert_eq!(span.name, "GET /v1/models/{id}");
        } else {
            assert_eq!(attr(span, "url.path").as_deref(), Some("/v1/models"));
            assert_eq!(attr(span, "http.route").as_deref(), Some("/v1/models"));
            assert_eq!(span.name, "GET /v1/models");
        }
    }
}

/// Trace Context Level 2: the `random` flag received stays on every outbound `traceparent` of
/// the trace (also under an unsampled parent, where the SDK drops it), a trace started here
/// sets it, and a caller's trace without it never gains it.
#[tokio::test]
async fn the_random_flag_is_kept_and_set_on_new_traces() {
    use tokentrace::propagation::inject_context;

    let spans = Spans::new();
    let app = Router::new()
        .route(
            "/outbound",
            get(|| async {
                let mut headers = http::HeaderMap::new();
                inject_context(&mut headers, &Context::current());
                headers["traceparent"].to_str().unwrap().to_owned()
            }),
        )
        .layer(ServerLayer::with_tracer(spans.tracer("server")));
    let addr = serve(app).await;
    let client = plain_client();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    for (inbound_flags, outbound_flags) in
        [(None, "03"), (Some("02"), "02"), (Some("03"), "03"), (Some("01"), "01"), (Some("00"), "00")]
    {
        let inbound = inbound_flags.map(|flags| format!("00-{trace}-00f067aa0ba902b7-{flags}"));
        let headers: Vec<(&str, &str)> = inbound.iter().map(|tp| ("traceparent", tp.as_str())).collect();
        let response = client.request(get_request(addr, "/outbound", &headers)).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let outbound = std::str::from_utf8(&body).unwrap();
        assert!(outbound.ends_with(&format!("-{outbound_flags}")), "{inbound:?} -> {outbound}");
        if inbound.is_some() {
            assert!(outbound.contains(trace), "the caller's trace continues: {outbound}");
        }
    }
}

/// A handler that calls a "worker" (50 ms) before its token stream starts, and streams three
/// tokens wrapped in `TokenStream` with no explicit start.
fn slow_first_token_app() -> Router {
    use tokentrace::inference::{StatsTarget, StreamOptions, TokenChunk, TokenStream};
    struct Token;
    impl TokenChunk for Token {
        fn token_count(&self) -> u32 {
            1
        }
    }
    Router::new().route(
        "/stream",
        get(|axum::Extension(cx): axum::Extension<Context>| async move {
            tokio::time::sleep(Duration::from_millis(50)).await; // the worker call
            let tokens = TokenStream::new(
                futures_util::stream::iter([Token, Token, Token]),
                StatsTarget::Span(cx),
                StreamOptions::new(),
            );
            Sse::new(futures_util::StreamExt::map(tokens, |_| {
                Ok::<_, Infallible>(Event::default().data("t"))
            }))
        }),
    )
}

#[tokio::test]
async fn ttft_counts_from_the_requests_arrival_at_the_server_layer() {
    let spans = Spans::new();
    let addr = serve(slow_first_token_app().layer(ServerLayer::with_tracer(spans.tracer("server")))).await;
    let response = plain_client().request(get_request(addr, "/stream", &[])).await.unwrap();
    response.into_body().collect().await.unwrap();
    let spans = spans.wait_for_async("server span", |s| s.len() == 1).await;
    let ttft: f64 = attr(&spans[0], "ttft_ms").expect("ttft recorded").parse().unwrap();
    assert!(ttft >= 50.0, "TTFT {ttft} ms leaves out the 50 ms before the stream");
    assert!(ttft < 5_000.0, "{ttft}");
}
