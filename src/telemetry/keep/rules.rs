//! The rules of `TOKENTRACE_TRACES_KEEP`, and what they match in the spans of one request.

use std::fmt;
use std::time::Duration;

use opentelemetry::trace::{SpanId, Status};
use opentelemetry::Value;
use opentelemetry_sdk::trace::SpanData;

/// The rules of `TOKENTRACE_TRACES_KEEP`: a trace is kept when any matches.
///
/// ```
/// use std::time::Duration;
/// use tokentrace::telemetry::KeepRules;
///
/// let rules = KeepRules::parse("error, cancelled, ttft>500ms, duration>30s, itl_p99>0.2s")?;
/// assert!(rules.error && rules.cancelled);
/// assert_eq!(rules.ttft, Some(Duration::from_millis(500)));
/// assert_eq!(rules.itl_p99, Some(Duration::from_millis(200)));
/// assert_eq!(rules.to_string(), "error,cancelled,ttft>500ms,duration>30000ms,itl_p99>200ms");
/// assert!(KeepRules::parse("slow").is_err());
/// # Ok::<(), String>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeepRules {
    /// `error`: a span failed (a cancellation is not an error here).
    pub error: bool,
    /// `cancelled`: a span was abandoned before its end (the client left, a stream was dropped).
    pub cancelled: bool,
    /// `ttft>…`: a span's `ttft_ms` exceeds this.
    pub ttft: Option<Duration>,
    /// `duration>…`: a local root span (this process's part of the request) lasted longer.
    pub duration: Option<Duration>,
    /// `itl_p99>…`: a span's `itl_p99_ms` exceeds this.
    pub itl_p99: Option<Duration>,
}

impl KeepRules {
    /// Parses a comma-separated list: `error`, `cancelled`, `ttft>T`, `duration>T`,
    /// `itl_p99>T`, each `T` a number with `ms` or `s`. An unknown rule or a malformed value
    /// is an error that says which.
    ///
    /// ```
    /// use tokentrace::telemetry::KeepRules;
    /// assert_eq!(KeepRules::parse("ttft>1.5s")?.ttft.unwrap().as_millis(), 1500);
    /// assert!(KeepRules::parse("ttft>fast").unwrap_err().contains("ttft>fast"));
    /// # Ok::<(), String>(())
    /// ```
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut rules = Self::default();
        for rule in list.split(',').map(str::trim).filter(|rule| !rule.is_empty()) {
            match rule.split_once('>') {
                None if rule == "error" => rules.error = true,
                None if rule == "cancelled" => rules.cancelled = true,
                Some((name, limit)) => {
                    let limit = Some(duration(limit.trim()).ok_or_else(|| {
                        format!("{rule:?}: the limit must be a number with ms or s, such as 500ms or 2s")
                    })?);
                    match name.trim() {
                        "ttft" => rules.ttft = limit,
                        "duration" => rules.duration = limit,
                        "itl_p99" => rules.itl_p99 = limit,
                        other => {
                            return Err(format!(
                                "unknown rule {other:?} in {rule:?} (known: ttft, duration, itl_p99)"
                            ))
                        }
                    }
                }
                None => {
                    return Err(format!(
                        "unknown rule {rule:?} (known: error, cancelled, ttft>T, duration>T, itl_p99>T)"
                    ))
                }
            }
        }
        if rules == Self::default() {
            return Err("no rule given".into());
        }
        Ok(rules)
    }

    /// The first rule the spans of one trace (in this process) match, as written in the list.
    pub(crate) fn matched(&self, spans: &[SpanData]) -> Option<String> {
        let cancelled =
            |span: &SpanData| attribute(span, "cancelled").is_some_and(|v| *v == Value::Bool(true));
        if self.error
            && spans.iter().any(|span| matches!(span.status, Status::Error { .. }) && !cancelled(span))
        {
            return Some("error".into());
        }
        if self.cancelled && spans.iter().any(cancelled) {
            return Some("cancelled".into());
        }
        let over = |key: &str, limit: Option<Duration>| {
            let limit = limit?;
            spans
                .iter()
                .filter_map(|span| milliseconds(attribute(span, key)?))
                .any(|ms| ms > limit.as_secs_f64() * 1e3)
                .then(|| format!("{}>{}ms", key.trim_end_matches("_ms"), limit.as_millis()))
        };
        if let Some(rule) = over("ttft_ms", self.ttft) {
            return Some(rule);
        }
        if let Some(limit) = self.duration {
            let longest = spans
                .iter()
                .filter(|span| is_local_root(span))
                .filter_map(|span| span.end_time.duration_since(span.start_time).ok())
                .max();
            if longest.is_some_and(|longest| longest > limit) {
                return Some(format!("duration>{}ms", limit.as_millis()));
            }
        }
        over("itl_p99_ms", self.itl_p99)
    }
}

impl fmt::Display for KeepRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rules = Vec::new();
        if self.error {
            rules.push("error".to_owned());
        }
        if self.cancelled {
            rules.push("cancelled".to_owned());
        }
        for (name, limit) in [("ttft", self.ttft), ("duration", self.duration), ("itl_p99", self.itl_p99)] {
            if let Some(limit) = limit {
                rules.push(format!("{name}>{}ms", limit.as_millis()));
            }
        }
        f.write_str(&rules.join(","))
    }
}

/// `500ms`, `2s`, `1.5s`.
pub(crate) fn duration(text: &str) -> Option<Duration> {
    let (number, scale) = match text.strip_suffix("ms") {
        Some(number) => (number, 1e-3),
        None => (text.strip_suffix('s')?, 1.0),
    };
    let value: f64 = number.trim().parse().ok()?;
    (value.is_finite() && value >= 0.0).then(|| Duration::from_secs_f64(value * scale))
}

pub(crate) fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
}

fn milliseconds(value: &Value) -> Option<f64> {
    match value {
        Value::F64(ms) => Some(*ms),
        Value::I64(ms) => Some(*ms as f64),
        _ => None,
    }
}

/// This process's part of the request starts here: no parent, or a parent in another process.
pub(crate) fn is_local_root(span: &SpanData) -> bool {
    span.parent_span_id == SpanId::INVALID || span.parent_span_is_remote
}
