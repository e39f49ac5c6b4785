//! Keep rules over real processes and sockets: at head-sampling ratios of 0 and 1%, every
//! long, cancelled and failed request arrives whole (spans from every process), decided where a
//! rule matched and carried up and down the calls, over TCP and over NATS; nothing else does.

mod common;
#[allow(dead_code)]
#[path = "../demo/driver.rs"]
mod demo;
#[allow(dead_code)]
#[path = "../demo/launcher.rs"]
mod launcher;
#[path = "../demo/receiver.rs"]
mod receiver;
#[path = "../../../tests/support/system.rs"]
mod system;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use common::*;
use http_body_util::BodyExt;
use launcher::Component;
use receiver::ReceivedSpan;

/// The environment of a process exporting to `receiver` with keep `rules` at head ratio `ratio`.
fn keep_env(receiver: &receiver::Receiver, service: &str, ratio: &str, rules: &str) -> Vec<(String, String)> {
    let mut env = export_env(receiver, service);
    env.extend(
        [
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", ratio),
            ("TOKENTRACE_TRACES_KEEP", rules),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    env
}

/// A deployment of the example: a frontend and an aggregated worker, or a frontend, a decode
/// worker and a prefill worker; over TCP, or over NATS at `nats_url`.
struct Deployment {
    components: Vec<Component>,
    frontend: SocketAddr,
    /// Every service that takes part in each request.
    services: Vec<&'static str>,
}

impl Deployment {
    /// Starts it, each process with the environment `env(service)`; tokens every 20 ms.
    fn start(
        disaggregated: bool,
        nats_url: Option<&str>,
        env: impl Fn(&str) -> Vec<(String, String)>,
    ) -> Self {
        let over_nats: Vec<&str> = match nats_url {
            Some(url) => vec!["--transport", "nats", "--nats-url", url],
            None => Vec::new(),
        };
        let worker = |name, role: &str, service: &'static str, extra: &[&str]| {
            let args = [&["worker", "--role", role, "--step-ms", "20"][..], extra, &over_nats].concat();
            spawn(name, &args, env(service))
        };
        let mut components = Vec::new();
        let mut services = vec!["dynamo-frontend"];
        let serving = if disaggregated {
            let prefill = worker("prefill", "prefill", "dynamo-worker-prefill", &[]);
            let decode = worker("decode", "decode", "dynamo-worker-decode", &["--prefill", &prefill.addr]);
            let addr = decode.addr.clone();
            components.extend([prefill, decode]);
            services.extend(["dynamo-worker-prefill", "dynamo-worker-decode"]);
            addr
        } else {
            let agg = worker("worker", "agg", "dynamo-worker-vllm", &[]);
            let addr = agg.addr.clone();
            components.push(agg);
            services.push("dynamo-worker-vllm");
            addr
        };
        let args = [&["frontend", "--listen", "127.0.0.1:0", "--worker", &serving][..], &over_nats].concat();
        let frontend = spawn("frontend", &args, env("dynamo-frontend"));
        let addr = frontend.addr.parse().unwrap();
        components.push(frontend);
        Self { components, frontend: addr, services }
    }

    /// Stops every process, which flushes what each still holds.
    async fn stop(&mut self) {
        stop(std::mem::take(&mut self.components)).await;
    }

    /// Whether `spans` (one trace) has a local root from every process of the deployment.
    fn whole(&self, spans: &[ReceivedSpan]) -> bool {
        self.services.iter().all(|service| {
            spans.iter().any(|s| s.service == *service && (s.span.parent_span_id.is_empty() || is_server(s)))
        })
    }
}

fn is_server(span: &ReceivedSpan) -> bool {
    span.span.kind == opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32
}

/// The transports to run on: TCP, and NATS where a nats-server is installed.
fn transports(nats: &Option<system::NatsServer>) -> Vec<Option<String>> {
    let mut transports = vec![None];
    transports.extend(nats.as_ref().map(|nats| Some(nats.url.clone())));
    transports
}

/// Cancels a streamed request after its first frames.
async fn cancel_after_a_few_tokens(frontend: SocketAddr, request_id: &str) {
    let mut body = open_stream(frontend, request_id, 500).await;
    for _ in 0..3 {
        body.frame().await.unwrap().unwrap();
    }
}

/// Head sampling at 0 with keep rules (`duration>200ms,cancelled`), over real processes: short
/// requests leave no span at the receiver; long and cancelled ones arrive as whole traces, from
/// both processes, their local roots saying which rule kept them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_rules_keep_long_and_cancelled_requests_whole_at_a_ratio_of_zero() {
    let receiver = receiver::grpc().await;
    let keep = |service| {
        let mut env = export_env(&receiver, service);
        env.extend(
            [
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0"),
                ("TOKENTRACE_TRACES_KEEP", "duration>200ms,cancelled"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        env
    };
    let worker = spawn("worker", &["worker", "--role", "agg", "--step-ms", "20"], keep("dynamo-worker-vllm"));
    let frontend = spawn(
        "frontend",
        &["frontend", "--listen", "127.0.0.1:0", "--worker", &worker.addr],
        keep("dynamo-frontend"),
    );
    let addr: SocketAddr = frontend.addr.parse().unwrap();
    for n in 0..4 {
        demo::stream_chat(addr, &format!("short-{n}"), "hi", 2).await.unwrap(); // ~40 ms
    }
    demo::stream_chat(addr, "long-1", "hi", 20).await.unwrap(); // ~400 ms
    cancel_after_a_few_tokens(addr, "gone-2").await;
    receiver
        .received
        .wait_for("the cancelled request's worker spans", |r| {
            has_spans(r, "gone-2", &["handle_payload", "decode"])
        })
        .await;
    stop(vec![frontend, worker]).await;
    demo::wait_for_traces(&receiver.received, &["long-1".to_owned()], 6).await;

    for (id, rule) in [("long-1", "duration>200ms"), ("gone-2", "cancelled")] {
        let spans = demo::trace_of(&receiver.received, id);
        let names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
        for name in ["http-request", "handle_payload", "decode"] {
            assert!(names.contains(&name), "{id}: {names:?}");
        }
        assert_eq!(
            attr(one(&spans, "http-request", "dynamo-frontend"), "tokentrace.kept_by").as_deref(),
            Some(rule)
        );
        assert_eq!(
            attr(one(&spans, "handle_payload", "dynamo-worker-vllm"), "tokentrace.kept_by").as_deref(),
            Some(rule)
        );
    }
    for n in 0..4 {
        assert!(
            demo::trace_of(&receiver.received, &format!("short-{n}")).is_empty(),
            "short-{n} was dropped"
        );
    }
    let traces: std::collections::HashSet<Vec<u8>> =
        receiver.received.spans().into_iter().map(|s| s.span.trace_id.clone()).collect();
    assert_eq!(traces.len(), 2, "only the two kept traces arrived");
    receiver.stop().await;
}

/// A decision travels up and down the calls of a disaggregated request, through every hop, over
/// TCP and over NATS: where only the workers have the rule a long request matches
/// (`duration>200ms`; the frontend keeps on `error` alone), the decode worker's decision reaches
/// the frontend in its reply and the prefill worker, finished long before, in a notice; where
/// only the frontend has it, its notice reaches the decode worker, whose own notice reaches the
/// prefill worker. Either way the long request arrives whole, every local root marked with the
/// rule, and the short one not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_decision_reaches_every_process_of_the_trace() {
    let nats = system::NatsServer::start();
    for nats_url in transports(&nats) {
        for (workers, frontend) in [("duration>200ms", "error"), ("error", "duration>200ms")] {
            let receiver = receiver::grpc().await;
            let mut deployment = Deployment::start(true, nats_url.as_deref(), |service| {
                let rules = if service == "dynamo-frontend" { frontend } else { workers };
                keep_env(&receiver, service, "0", rules)
            });
            demo::stream_chat(deployment.frontend, "short-1", "hi", 2).await.unwrap();
            demo::stream_chat(deployment.frontend, "long-2", "hi", 20).await.unwrap();
            demo::wait_for_traces(&receiver.received, &["long-2".to_owned()], 10).await;
            let spans = demo::trace_of(&receiver.received, "long-2");
            let case = format!("{nats_url:?}, workers {workers}, frontend {frontend}");
            let names: Vec<_> = spans.iter().map(|s| (&s.span.name, &s.service)).collect();
            assert_eq!(spans.len(), 10, "{case}: whole: {names:?}");
            for (name, service) in [
                ("http-request", "dynamo-frontend"),
                ("handle_payload", "dynamo-worker-decode"),
                ("handle_payload", "dynamo-worker-prefill"),
            ] {
                let root = one(&spans, name, service);
                assert_eq!(
                    attr(root, "tokentrace.kept_by").as_deref(),
                    Some("duration>200ms"),
                    "{case}: {service}"
                );
            }
            deployment.stop().await;
            assert!(demo::trace_of(&receiver.received, "short-1").is_empty(), "{case}");
            receiver.stop().await;
        }
    }
}

/// The mix at 1% head sampling with `error,cancelled,duration>300ms` in every process,
/// aggregated and disaggregated, over TCP and NATS: ordinary requests, long ones, ones the
/// client cancels and ones that fail at a worker (a prompt longer than the engine's context).
/// Every long, cancelled and failed request arrives whole, marked with its rule; every trace
/// that arrives is whole (no split traces); the ordinary ones that arrive are the head sampler's
/// (its `th` in their tracestate, no rule), about 1% of them; nothing else arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_one_percent_every_long_cancelled_and_failed_request_arrives_whole() {
    const ORDINARY: usize = 40;
    let nats = system::NatsServer::start();
    let too_long = "x".repeat(5000);
    for nats_url in transports(&nats) {
        for disaggregated in [false, true] {
            let receiver = receiver::grpc().await;
            let mut deployment = Deployment::start(disaggregated, nats_url.as_deref(), |service| {
                keep_env(&receiver, service, "0.01", "error,cancelled,duration>300ms")
            });
            let case = format!("{nats_url:?}, disaggregated {disaggregated}");
            let addr = deployment.frontend;
            for n in 0..ORDINARY {
                demo::stream_chat(addr, &format!("ordinary-{n}"), "hi", 2).await.unwrap();
            }
            demo::stream_chat(addr, "long", "hi", 20).await.unwrap();
            cancel_after_a_few_tokens(addr, "cancelled").await;
            let failed = demo::stream_chat(addr, "failed", &too_long, 2).await;
            assert!(failed.is_err(), "{case}: {failed:?}");
            let expected = [("long", "duration>300ms"), ("cancelled", "cancelled"), ("failed", "error")];
            let ids: Vec<String> = expected.iter().map(|(id, _)| id.to_string()).collect();
            demo::wait_for_traces(&receiver.received, &ids, 3).await;
            deployment.stop().await;

            for (id, rule) in expected {
                let spans = demo::trace_of(&receiver.received, id);
                assert!(deployment.whole(&spans), "{case}: {id} whole: {:?}", names(&spans));
                let http = one(&spans, "http-request", "dynamo-frontend");
                // One in a hundred is the head sampler's anyway, and says so instead.
                let kept_by = attr(http, "tokentrace.kept_by");
                assert!(kept_by.as_deref() == Some(rule) || head_sampled(http), "{case}: {id}: {kept_by:?}");
            }
            let mut traces: HashMap<Vec<u8>, Vec<ReceivedSpan>> = HashMap::new();
            for span in receiver.received.spans() {
                traces.entry(span.span.trace_id.clone()).or_default().push(span);
            }
            let mut ordinary = 0;
            for spans in traces.values() {
                assert!(deployment.whole(spans), "{case}: a split trace: {:?}", names(spans));
                let http = one(spans, "http-request", "dynamo-frontend");
                let id = attr(http, "x_request_id").unwrap_or_default();
                if id.starts_with("ordinary-") {
                    ordinary += 1;
                    assert_eq!(attr(http, "tokentrace.kept_by"), None, "{case}: {id}");
                    assert!(head_sampled(http), "{case}: {id} head-sampled");
                } else {
                    assert!(ids.contains(&id), "{case}: nothing else arrives: {id}");
                }
            }
            // 1% of 40: none most runs; 4 or more would be a 1-in-1000 event.
            assert!(ordinary <= 3, "{case}: {ordinary} of {ORDINARY} ordinary requests arrived");
            let distinct: HashSet<String> = traces
                .values()
                .filter_map(|spans| attr(one(spans, "http-request", "dynamo-frontend"), "x_request_id"))
                .collect();
            assert_eq!(distinct.len(), traces.len(), "{case}: one trace per request");
            receiver.stop().await;
        }
    }
}

/// Whether the head sampler sampled the trace of `span` (its threshold in the tracestate).
fn head_sampled(span: &ReceivedSpan) -> bool {
    span.span.trace_state.contains("th:")
}

fn names(spans: &[ReceivedSpan]) -> Vec<(&str, &str)> {
    spans.iter().map(|s| (s.span.name.as_str(), s.service.as_str())).collect()
}

/// Summary mode at ratio 0 with `duration>300ms`: every ordinary request still arrives, as its
/// local roots alone (one per process, marked `tokentrace.summary`), found by its request id;
/// the long one arrives whole, unmarked as a summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_summary_mode_every_request_is_found_by_its_id() {
    let receiver = receiver::grpc().await;
    let mut deployment = Deployment::start(false, None, |service| {
        let mut env = keep_env(&receiver, service, "0", "duration>300ms");
        env.push(("TOKENTRACE_TRACES_SUMMARY".to_owned(), "true".to_owned()));
        env
    });
    for n in 0..5 {
        demo::stream_chat(deployment.frontend, &format!("ordinary-{n}"), "hi", 2).await.unwrap();
    }
    demo::stream_chat(deployment.frontend, "long", "hi", 20).await.unwrap();
    deployment.stop().await; // the worker's summaries wait for its caller until then
    let mut ids: Vec<String> = (0..5).map(|n| format!("ordinary-{n}")).collect();
    ids.push("long".to_owned());
    demo::wait_for_traces(&receiver.received, &ids, 2).await;
    for id in &ids[..5] {
        let spans = demo::trace_of(&receiver.received, id);
        let mut roots = names(&spans);
        roots.sort();
        assert_eq!(
            roots,
            [("handle_payload", "dynamo-worker-vllm"), ("http-request", "dynamo-frontend")],
            "{id}"
        );
        for span in &spans {
            assert_eq!(attr(span, "tokentrace.summary").as_deref(), Some("true"), "{id}");
        }
        assert_eq!(
            attr(one(&spans, "handle_payload", "dynamo-worker-vllm"), "x_request_id").as_deref(),
            Some(id.as_str())
        );
    }
    let long = demo::trace_of(&receiver.received, "long");
    assert_eq!(long.len(), 6, "whole: {:?}", names(&long));
    assert!(long.iter().all(|span| attr(span, "tokentrace.summary").is_none()));
    receiver.stop().await;
}
