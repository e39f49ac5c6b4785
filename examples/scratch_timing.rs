use http::HeaderMap;
use std::hint::black_box;
use std::time::Instant;
use tokentrace::propagation::*;
fn time(name: &str, f: impl Fn()) {
    for _ in 0..100000 {
        f();
    }
    let n = 2_000_000;
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    println!("{name}: {:.1} ns", t.elapsed().as_nanos() as f64 / n as f64);
}
fn main() {
    let mut headers = HeaderMap::new();
    headers.insert("host", "frontend:8000".parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("accept", "text/event-stream".parse().unwrap());
    headers.insert("user-agent", "bench/1.0".parse().unwrap());
    headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
    let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    time("parse", || {
        black_box(TraceParent::parse(black_box(tp)).ok());
    });
    time("get_single", || {
        black_box(Carrier::get_single(black_box(&headers), "traceparent"));
    });
    time("get tracestate", || {
        black_box(Carrier::get_all(black_box(&headers), "tracestate").next());
    });
    time("headermap get str", || {
        black_box(black_box(&headers).get("traceparent"));
    });
    time("extract", || {
        black_box(RemoteContext::extract(black_box(&headers)));
    });
    let st: String = (0..32).map(|i| format!("vendor{i}=value{i}")).collect::<Vec<_>>().join(",");
    time("tracestate32", || {
        black_box(TraceState::from_headers([black_box(st.as_bytes())]).ok());
    });
}
