//! W3C Baggage: the spec's own examples and edge cases, and baggage through the HTTP and RPC
//! layers over real loopback sockets.

mod support;

use std::net::SocketAddr;

use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::baggage::{Baggage, BaggageExt};
use opentelemetry::context::FutureExt as _;
use opentelemetry::{Context, KeyValue, StringValue};
use support::{attr, Spans};
use tokentrace::http::{ClientLayer, ServerLayer};
use tokentrace::propagation::{
    extract_baggage, format_baggage, inject_baggage, BaggageList, Propagators, MAX_BAGGAGE_BYTES,
};
use tokentrace::rpc::{self, Metadata};
use tower::{ServiceBuilder, ServiceExt};

fn list(headers: &[&str]) -> BaggageList {
    BaggageList::from_headers(headers.iter().map(|h| h.as_bytes()))
}

/// `(key, decoded value, properties)`.
type Triple = (String, String, String);

/// The kept members, as triples.
fn members(list: &BaggageList) -> Vec<Triple> {
    list.members().map(|m| (m.key().to_owned(), m.value().into_owned(), m.properties().to_owned())).collect()
}

fn triple(key: &str, value: &str, properties: &str) -> Triple {
    (key.to_owned(), value.to_owned(), properties.to_owned())
}

#[test]
fn the_specs_examples_parse() {
    // https://www.w3.org/TR/baggage/#examples-of-http-headers
    let cases: [(&str, Vec<Triple>); 4] = [
        ("key1=value1,key2=value2", vec![triple("key1", "value1", ""), triple("key2", "value2", "")]),
        ("key1 = value1, key2 = value2", vec![triple("key1", "value1", ""), triple("key2", "value2", "")]),
        (
            "key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue",
            vec![
                triple("key1", "value1", "property1;property2"),
                triple("key2", "value2", ""),
                triple("key3", "value3", "propertyKey=propertyValue"),
            ],
        ),
        (
            "userId=alice,serverNode=DF%2028,isProduction=false",
            vec![
                triple("userId", "alice", ""),
                triple("serverNode", "DF 28", ""),
                triple("isProduction", "false", ""),
            ],
        ),
    ];
    for (header, expected) in cases {
        let parsed = list(&[header]);
        assert_eq!(members(&parsed), expected, "{header}");
        assert_eq!(parsed.header(), header, "forwarded as received: {header}");
        assert_eq!(parsed.dropped(), 0);
    }
}

#[test]
fn optional_whitespace_is_allowed_around_every_separator() {
    let header = " \tk1 \t= \tv1 \t; \tp1 \t= \tx \t; p2 \t, k2=v2\t";
    let parsed = list(&[header]);
    assert_eq!(members(&parsed), [triple("k1", "v1", "p1 \t= \tx \t; p2"), triple("k2", "v2", "")]);
    assert_eq!(parsed.header(), header.trim_matches([' ', '\t']));
}

#[test]
fn values_are_percent_decoded_and_written_back_encoded() {
    let parsed = list(&["a=%E2%82%AC%20%2C%3B%25,b=%ff"]);
    assert_eq!(members(&parsed), [triple("a", "€ ,;%", ""), triple("b", "\u{FFFD}", "")]);
    let mut baggage = Baggage::new();
    baggage.insert("a", "€ ,;%\"\\=");
    let header = format_baggage(&baggage);
    assert_eq!(header, "a=%E2%82%AC%20%2C%3B%25%22%5C=");
    assert_eq!(members(&list(&[&header])), [triple("a", "€ ,;%\"\\=", "")]);
}

#[test]
fn empty_and_malformed_members_are_dropped_alone() {
    let cases: [(&str, &str, usize); 9] = [
        (",a=1,", "a=1", 0),
        ("a=1,,,b=2", "a=1,b=2", 0),
        ("a=1,noequals,b=2", "a=1,b=2", 1),
        ("a=1,=empty-key,b=2", "a=1,b=2", 1),
        ("a=1,k(=v,b=2", "a=1,b=2", 1),
        ("a=1,k=v\u{7f},b=2", "a=1,b=2", 1),
        ("a=1,k=%2,b=2", "a=1,b=2", 1),
        ("a=1,k=v;,b=2", "a=1,b=2", 1),
        ("a=1,k=v;p=\"q\",b=2", "a=1,b=2", 1),
    ];
    for (header, kept, dropped) in cases {
        let parsed = list(&[header]);
        assert_eq!((parsed.header(), parsed.dropped()), (kept, dropped), "{header:?}");
    }
    // An empty value is a value.
    assert_eq!(members(&list(&["k="])), [triple("k", "", "")]);
}

#[test]
fn duplicates_are_kept_in_order_and_headers_combine_in_order() {
    let parsed = list(&["a=1,b=2", "a=3", "c=4 , a=5"]);
    assert_eq!(parsed.header(), "a=1,b=2,a=3,c=4 , a=5");
    assert_eq!(parsed.len(), 5);
    // OpenTelemetry's `Baggage` holds one value per key: the last, as its own propagator does.
    assert_eq!(parsed.to_baggage().get("a"), Some(&StringValue::from("5")));
}

#[test]
fn the_limits_keep_64_members_and_8192_bytes_and_cut_no_member() {
    let at_limit: Vec<String> = (0..64).map(|i| format!("k{i:02}={}", "x".repeat(123))).collect();
    let header = at_limit.join(",");
    assert_eq!(header.len(), 64 * 127 + 63);
    assert!(header.len() <= MAX_BAGGAGE_BYTES);
    assert_eq!(list(&[&header]).header(), header);

    let mut over = at_limit.clone();
    over.push("k64=x".into());
    let parsed = list(&[&over.join(",")]);
    assert_eq!((parsed.header(), parsed.dropped()), (header.as_str(), 1));

    let long = format!("big={}", "y".repeat(MAX_BAGGAGE_BYTES));
    let parsed = list(&["a=1", &long, "b=2"]);
    assert_eq!(parsed.header(), "a=1,b=2");
    assert!(parsed.members().all(|m| m.key() != "big"), "never cut in the middle");

    let mut big = Baggage::new();
    for i in 0..64 {
        big.insert(format!("k{i:02}"), "z".repeat(120));
    }
    let written = format_baggage(&big);
    assert!(written.len() <= MAX_BAGGAGE_BYTES);
    assert_eq!(list(&[&written]).dropped(), 0);
}

#[test]
fn the_rpc_metadata_carries_baggage_like_headers() {
    let metadata: Metadata = [("baggage", "a=1"), ("baggage", "b=2")].into_iter().collect();
    let cx = extract_baggage(&metadata, &Context::new());
    assert_eq!(cx.baggage().len(), 2);
    let mut outbound = Metadata::new();
    outbound.append("baggage", "stale=1");
    inject_baggage(&mut outbound, &cx);
    assert_eq!(outbound.values("baggage").collect::<Vec<_>>(), ["a=1,b=2"]);
}

#[test]
fn the_propagator_set_parses_and_runs_only_what_it_names() {
    use opentelemetry::propagation::TextMapPropagator;
    use std::collections::HashMap;

    assert_eq!(Propagators::parse("tracecontext"), Ok(Propagators::TRACE_CONTEXT));
    assert_eq!(Propagators::parse("baggage,none"), Ok(Propagators::BAGGAGE));
    assert_eq!(Propagators::parse("none"), Ok(Propagators::NONE));
    assert!(Propagators::parse("jaeger").is_err());

    let carrier: HashMap<String, String> = [
        ("traceparent".to_owned(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
        ("baggage".to_owned(), "k=v".to_owned()),
    ]
    .into();
    let only_trace = Propagators::TRACE_CONTEXT.extract(&carrier);
    assert!(only_trace.baggage().is_empty());
    let only_baggage = Propagators::BAGGAGE.extract(&carrier);
    assert_eq!(only_baggage.baggage().len(), 1);
    assert!(Propagators::NONE.fields().next().is_none());
    assert_eq!(Propagators::DEFAULT.fields().collect::<Vec<_>>(), ["traceparent", "tracestate", "baggage"]);

    let mut out = HashMap::new();
    Propagators::BAGGAGE.inject_context(&Propagators::DEFAULT.extract(&carrier), &mut out);
    assert_eq!(out.keys().collect::<Vec<_>>(), ["baggage"]);
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A server that answers with the `baggage` headers it received, one per line.
async fn baggage_echo() -> SocketAddr {
    serve(Router::new().route(
        "/",
        get(|headers: http::HeaderMap| async move {
            headers
                .get_all("baggage")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
                .join("\n")
        }),
    ))
    .await
}

async fn get_text(url: String, headers: &[(&str, &str)]) -> String {
    let mut request = http::Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = client.request(request.body(Empty::new()).unwrap()).await.unwrap();
    String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// A frontend whose handler reads the baggage, adds to it when asked, and calls `echo`
/// through the client layer; answers what `echo` saw.
async fn frontend(layer: ServerLayer, echo: SocketAddr) -> SocketAddr {
    let handler = move |Extension(cx): Extension<Context>, headers: http::HeaderMap| async move {
        let tenant = cx.baggage().get("tenant").map(|v| v.to_string()).unwrap_or_default();
        let cx = if headers.contains_key("x-add") {
            let mut baggage: Baggage = cx
                .baggage()
                .iter()
                .map(|(k, (v, m))| {
                    opentelemetry::baggage::KeyValueMetadata::new(k.clone(), v.clone(), m.clone())
                })
                .collect();
            baggage.insert("added", "yes");
            cx.with_baggage(baggage)
        } else {
            cx
        };
        let hyper = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let client = ServiceBuilder::new().layer(ClientLayer::default()).service(hyper);
        let request = http::Request::get(format!("http://{echo}/")).body(Empty::new()).unwrap();
        let response = client.oneshot(request).with_context(cx).await.unwrap();
        let seen = response.into_body().collect().await.unwrap().to_bytes();
        format!("tenant={tenant}\n{}", String::from_utf8_lossy(&seen))
    };
    serve(Router::new().route("/", get(handler)).layer(layer)).await
}

#[tokio::test]
async fn the_server_layer_puts_baggage_in_the_context_and_the_client_layer_forwards_it() {
    let echo = baggage_echo().await;
    let addr = frontend(ServerLayer::default(), echo).await;
    let sent = "tenant=acme , lora=sql%20v2;ttl=60";

    let answer = get_text(format!("http://{addr}/"), &[("baggage", sent), ("baggage", "tenant=other")]).await;
    assert_eq!(answer, format!("tenant=other\n{sent},tenant=other"), "one header, as received, in order");

    let answer = get_text(format!("http://{addr}/"), &[("baggage", sent), ("x-add", "1")]).await;
    let (tenant, forwarded) = answer.split_once('\n').unwrap();
    assert_eq!(tenant, "tenant=acme");
    assert!(!forwarded.contains('\n'), "exactly one baggage header: {forwarded:?}");
    let mut forwarded_members: Vec<_> = forwarded.split(',').collect();
    forwarded_members.sort_unstable();
    assert_eq!(forwarded_members, ["added=yes", "lora=sql%20v2;ttl=60", "tenant=acme"], "written anew");

    assert_eq!(get_text(format!("http://{addr}/"), &[]).await, "tenant=\n", "none received, none sent");
}

#[tokio::test]
async fn a_public_endpoint_drops_inbound_baggage() {
    let echo = baggage_echo().await;
    let addr = frontend(ServerLayer::default().public_endpoint(), echo).await;
    assert_eq!(get_text(format!("http://{addr}/"), &[("baggage", "tenant=acme")]).await, "tenant=\n");
}

#[tokio::test]
async fn only_allow_listed_baggage_keys_reach_the_span() {
    let spans = Spans::new();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(ServerLayer::with_tracer(spans.tracer("server")).record_baggage(["tenant"]));
    let addr = serve(app).await;
    get_text(format!("http://{addr}/"), &[("baggage", "tenant=acme,secret=hunter2")]).await;
    let spans = spans.wait_for_async("one span", |s| s.len() == 1).await;
    assert_eq!(attr(&spans[0], "baggage.tenant").as_deref(), Some("acme"));
    assert!(
        spans[0].attributes.iter().all(|kv| !kv.value.as_str().contains("hunter2")),
        "a value not allow-listed is never recorded"
    );
}

#[tokio::test]
async fn the_rpc_layers_carry_baggage_from_client_to_server() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let server = ServiceBuilder::new().layer(rpc::ServerLayer::default().record_baggage(["tenant"])).service(
        tower::service_fn(move |request: rpc::Request<Bytes>| {
            let tenant = Context::current().baggage().get("tenant").map(|v| v.to_string());
            let _ = seen_tx
                .send((tenant, request.metadata.values("baggage").map(str::to_owned).collect::<Vec<_>>()));
            async { Ok::<_, rpc::RpcError>(futures_util::stream::empty::<Result<Bytes, rpc::RpcError>>()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(rpc::tcp::serve(listener, server));
    let client = rpc::tcp::Client::connect(addr).await.unwrap();
    let client = ServiceBuilder::new().layer(rpc::ClientLayer::default()).service(client);

    let cx = Context::new().with_baggage([KeyValue::new("tenant", "acme")]);
    let request = rpc::Request::new("generate", Bytes::from_static(b"x"));
    let _items = client.oneshot(request).with_context(cx).await.unwrap();
    let (tenant, headers) = seen.recv().await.unwrap();
    assert_eq!(tenant.as_deref(), Some("acme"));
    assert_eq!(headers, ["tenant=acme"]);
}
