//! What ending a span costs the request thread: what `telemetry::init` installs (the SDK's batch
//! processor with tokentrace's loss counting, exporting OTLP/gRPC to a receiver in this process)
//! against the OpenTelemetry SDK's `BatchSpanProcessor` alone (into a discarding exporter), with spans ended 20 µs
//! and 100 µs apart — the export thread goes idle between spans, as under light or moderate load.
//! Only `Span::end` is timed (it hands the span to the processor).
//!
//! Run: `cargo bench --bench export`; the latest figures are in `BENCHMARKS.md`.

use std::time::{Duration, Instant};

use criterion::Criterion;
use opentelemetry::trace::{Span, Tracer, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;

mod support;

#[path = "../examples/serve/demo/receiver.rs"]
mod receiver;

const GROUP: &str = "span_end";
const GAPS_US: [u64; 2] = [20, 100];

/// Busy-waits `gap`: sleeping would hand the core to the export thread and change the scene.
fn spin(gap: Duration) {
    let started = Instant::now();
    while started.elapsed() < gap {
        std::hint::spin_loop();
    }
}

fn bench_end<T: Tracer>(c: &mut Criterion, name: &str, tracer: &T) {
    let mut group = c.benchmark_group(GROUP);
    for gap_us in GAPS_US {
        let gap = Duration::from_micros(gap_us);
        group.bench_function(format!("{name}/{gap_us}us"), |b| {
            b.iter_custom(|iters| {
                let mut ending = Duration::ZERO;
                for _ in 0..iters {
                    spin(gap);
                    let mut span = tracer.start("http-request");
                    let started = Instant::now();
                    span.end();
                    ending += started.elapsed();
                }
                ending
            })
        });
    }
    group.finish();
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that excludes us means: do nothing.
    if std::env::args().skip(1).any(|a| !a.starts_with("--") && !"export".contains(a.as_str())) {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let receiver = runtime.block_on(receiver::grpc());
    let telemetry = support::exporting_traces_to(receiver.endpoint(), &[]);
    let sdk = SdkTracerProvider::builder().with_batch_exporter(support::DiscardExporter).build();

    let mut c = support::criterion()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_end(&mut c, "sdk_batch_processor", &sdk.tracer("bench"));
    bench_end(&mut c, "tokentrace", &telemetry.tracer("bench"));
    c.final_summary();
    for gap_us in GAPS_US {
        support::print_speedup(
            GROUP,
            &format!("tokentrace/{gap_us}us"),
            &format!("sdk_batch_processor/{gap_us}us"),
        );
    }
    let lost = telemetry.shutdown();
    println!("tokentrace: {} spans lost (queue full or export failed)", lost.spans);
    let _ = sdk.shutdown();
}
