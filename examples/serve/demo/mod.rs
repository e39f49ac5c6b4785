//! The demo's plumbing, apart from the parts a user copies (`frontend`, `worker`, `transport`,
//! `engine`): launching each component as a process of this binary, driving requests through
//! them, and reading their traces back from an embedded OTLP receiver.

mod driver;
mod launcher;
pub mod receiver;

use launcher::Component;

use crate::DeploymentArgs;

/// Runs an aggregated or disaggregated deployment as child processes: with `--demo`, streams
/// a few requests, prints each one's trace and the metrics, and exits; else serves until Ctrl-C.
/// Starts the components as child processes; with `--demo`, drives requests and prints traces.
pub async fn deployment(disaggregated: bool, args: &DeploymentArgs) -> Result<(), String> {
    let demo = args.demo;
    let quiet = demo && !args.verbose;
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
    let step = args.step_ms.unwrap_or(args.engine.default_step_ms()).to_string();
    let engine = args.model.to_args(args.engine)?;
    let worker_args = |role: &str| -> Vec<String> {
        let mut worker = ["worker", "--role", role, "--listen", "127.0.0.1:0", "--step-ms", &step]
            .map(str::to_owned)
            .to_vec();
        worker.extend(engine.iter().cloned());
        worker.extend(args.transport.to_args());
        worker
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
    let listen = if demo { "127.0.0.1:0" } else { args.listen.as_str() };
    let mut frontend_args =
        ["frontend", "--listen", listen, "--worker", &worker_addr].map(str::to_owned).to_vec();
    frontend_args.extend(engine.iter().cloned());
    frontend_args.extend(args.transport.to_args());
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
    let (requests, max_tokens) = (args.requests, args.max_tokens);
    let mut ids = Vec::new();
    let mut failures = 0;
    println!(
        "{} deployment: frontend {} -> worker {worker_addr}",
        if disaggregated { "disaggregated" } else { "aggregated" },
        frontend.addr
    );
    for n in 0..requests {
        let id = format!("demo-{}", n + 1);
        match driver::stream_chat(frontend_addr, &id, driver::PROMPTS[n % driver::PROMPTS.len()], max_tokens)
            .await
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
    let metrics = driver::read_metrics(frontend_addr).await;
    // Stopping the components flushes their telemetry.
    let stop = tokio::task::spawn_blocking(move || {
        frontend.stop();
        workers.into_iter().for_each(Component::stop);
    });
    let _ = stop.await;
    let spans_each = if disaggregated { 10 } else { 6 };
    driver::wait_for_traces(&receiver.received, &ids, spans_each).await;
    for id in &ids {
        driver::print_waterfall(&receiver.received, id);
    }
    match &metrics {
        Ok(text) => driver::print_metrics(text, &receiver.received, &ids),
        Err(error) => println!("metrics: could not read the frontend's /metrics: {error}"),
    }
    let incomplete: Vec<_> =
        ids.iter().filter(|id| driver::trace_of(&receiver.received, id).len() < spans_each).collect();
    receiver.stop().await;
    match (failures, incomplete.is_empty()) {
        (0, true) => Ok(()),
        (0, false) => Err(format!("incomplete traces for {incomplete:?}")),
        (n, _) => Err(format!("{n} of {requests} requests failed")),
    }
}
