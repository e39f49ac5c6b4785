#![allow(dead_code)] // each bench uses a part
//! Shared by the criterion benches: read back what criterion measured and print the ratios
//! each bench promises, so every run states them next to its baseline.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// When this bench run began: figures criterion saved before it belong to earlier runs.
static RUN_START: OnceLock<SystemTime> = OnceLock::new();

/// The bench's `Criterion`, to configure further; marks the start of the run, so the ratios
/// printed at its end read only what this run measured (a group the command line's filter
/// left out keeps the figures of an older run on disk).
pub fn criterion() -> criterion::Criterion {
    // A file's modification time comes from the kernel's coarse clock: allow for its tick.
    RUN_START.get_or_init(|| SystemTime::now() - Duration::from_secs(1));
    criterion::Criterion::default()
}

fn criterion_dir() -> PathBuf {
    // Criterion writes below `$CARGO_TARGET_DIR/criterion` (default `target/criterion`).
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("criterion")
}

/// Criterion's directory name for a group or function id.
fn dir_name(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// The mean time, in nanoseconds, of `group/function` from the run that just finished; `None`
/// where this run did not measure it.
pub fn mean_ns(group: &str, function: &str) -> Option<f64> {
    let path = criterion_dir().join(dir_name(group)).join(dir_name(function)).join("new/estimates.json");
    let run_start = RUN_START.get().expect("the bench builds its Criterion with support::criterion()");
    if std::fs::metadata(&path).ok()?.modified().ok()? < *run_start {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    // {"mean":{"confidence_interval":{...},"point_estimate":123.4,...},...}
    let mean = &text[text.find("\"mean\"")?..];
    let value = &mean[mean.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = value.find([',', '}'])?;
    value[..end].trim().parse().ok()
}

/// Prints `candidate` against `baseline` in `group` as a speed-up (`baseline / candidate`).
pub fn print_speedup(group: &str, candidate: &str, baseline: &str) {
    match (mean_ns(group, candidate), mean_ns(group, baseline)) {
        (Some(ours), Some(theirs)) => println!(
            "ratio {group}: {candidate} {ours:.1} ns vs {baseline} {theirs:.1} ns -> {:.2}x faster",
            theirs / ours
        ),
        _ => println!("ratio {group}: {candidate} or {baseline} was not measured in this run (filtered?)"),
    }
}

/// Prints the overheads of `candidate` and `other` over `bare` in `group`, and their ratio
/// (`candidate overhead / other overhead`; below 1 means the candidate costs less).
pub fn print_overhead_ratio(group: &str, bare: &str, candidate: &str, other: &str) {
    match (mean_ns(group, bare), mean_ns(group, candidate), mean_ns(group, other)) {
        (Some(bare_ns), Some(ours), Some(theirs)) => {
            let (ours, theirs) = (ours - bare_ns, theirs - bare_ns);
            println!(
                "overhead {group}: {candidate} +{ours:.0} ns, {other} +{theirs:.0} ns over {bare} -> ratio {:.2}",
                ours / theirs
            );
        }
        _ => println!(
            "overhead {group}: {bare}, {candidate} or {other} was not measured in this run (filtered?)"
        ),
    }
}

/// A span exporter that drops every batch: measures instrumentation, not export.
#[allow(dead_code)]
#[derive(Debug)]
pub struct DiscardExporter;

impl opentelemetry_sdk::trace::SpanExporter for DiscardExporter {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        std::hint::black_box(batch);
        Ok(())
    }
}

/// Prints each candidate's overhead per item over `bare` (`items` per iteration), and how many
/// times cheaper `ours` is than each other candidate.
pub fn print_per_item_overhead(group: &str, bare: &str, ours: &str, others: &[&str], items: u64) {
    let per_item = |name: &str| Some((mean_ns(group, name)? - mean_ns(group, bare)?) / items as f64);
    let Some(our_cost) = per_item(ours) else {
        println!("per-item {group}: {bare} or {ours} was not measured in this run (filtered?)");
        return;
    };
    println!("per-item {group}: {ours} +{our_cost:.2} ns/item over {bare}");
    for other in others {
        match per_item(other) {
            Some(cost) => println!(
                "per-item {group}: {other} +{cost:.2} ns/item -> {ours} is {:.1}x cheaper",
                cost / our_cost
            ),
            None => println!("per-item {group}: {other} was not measured in this run (filtered?)"),
        }
    }
}

/// Installs, process-wide, the `tracing` subscriber the competitors need: `tracing` spans and
/// events become OpenTelemetry spans and span events on `provider`.
pub fn install_tracing_opentelemetry(provider: &opentelemetry_sdk::trace::SdkTracerProvider) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tracing-opentelemetry")));
    tracing::subscriber::set_global_default(subscriber).expect("no other subscriber in a bench");
}

/// Telemetry that exports traces over OTLP/gRPC to `endpoint` (logs stay local), as
/// `telemetry::init` would with those two variables set.
#[cfg(feature = "telemetry")]
pub fn exporting_traces_to(endpoint: String, more: &[(&str, &str)]) -> tokentrace::telemetry::Telemetry {
    use tokentrace::telemetry::{Telemetry, TelemetryConfig};
    let mut vars = vec![
        ("OTEL_EXPORT_ENABLED".to_owned(), "true".to_owned()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".to_owned(), endpoint),
    ];
    vars.extend(more.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Telemetry::build(TelemetryConfig::from_vars("bench", vars).unwrap()).unwrap()
}

/// Runs `baseline` and `candidate` alternately, `ROUNDS` rounds of `batch` calls each (the
/// order swapped every round), and prints the per-round ratio of their times as throughput
/// candidate/baseline (`sides` names them): its median and quartiles. On a noisy machine two criterion measurements
/// taken one after the other can drift apart (another process, the clock speed); within a
/// round both sides see the same conditions.
pub fn print_interleaved(
    group: &str,
    sides: (&str, &str),
    batch: usize,
    mut untraced: impl FnMut(),
    mut traced: impl FnMut(),
) {
    const ROUNDS: usize = 40;
    let time = |f: &mut dyn FnMut()| {
        let start = std::time::Instant::now();
        for _ in 0..batch {
            f();
        }
        start.elapsed().as_secs_f64()
    };
    let mut ratios: Vec<f64> = (0..ROUNDS)
        .map(|round| {
            let (u, t) = if round % 2 == 0 {
                let u = time(&mut untraced);
                (u, time(&mut traced))
            } else {
                let t = time(&mut traced);
                (time(&mut untraced), t)
            };
            u / t
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "interleaved {group}: {}/{} median {:.3} (quartiles {:.3}-{:.3}) over {ROUNDS} rounds of {batch}",
        sides.1,
        sides.0,
        ratios[ROUNDS / 2],
        ratios[ROUNDS / 4],
        ratios[3 * ROUNDS / 4]
    );
}
