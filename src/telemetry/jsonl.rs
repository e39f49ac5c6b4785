//! JSON Lines logs on stderr, carrying the trace and request ids of the current context.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, Layer};

use crate::propagation::RequestIds;

/// Keys the line itself uses; an event field of the same name is written as `field.<name>`.
const RESERVED: [&str; 11] = [
    "time",
    "level",
    "target",
    "file",
    "line",
    "message",
    "trace_id",
    "span_id",
    "x_request_id",
    "request_id",
    "span",
];

/// Writes each event as one JSON object per line:
/// `time` (RFC 3339, microseconds, `Z`), `level`, `target`, `file`, `line`, `message`,
/// `trace_id`, `span_id`, `x_request_id`, `request_id` (from the current OpenTelemetry context,
/// which tokentrace's layers attach), then the event's own fields. Every string is escaped, so
/// hostile content cannot break a line or forge a field.
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
///
/// let (writer, lines) = tokentrace::telemetry::JsonLines::capture();
/// let subscriber = tracing_subscriber::registry().with(writer);
/// tracing::subscriber::with_default(subscriber, || tracing::info!(tokens = 3, "done \"quoted\""));
/// let line = lines.lock().unwrap()[0].clone();
/// assert!(line.contains(r#""message":"done \"quoted\"""#));
/// assert!(line.contains(r#""tokens":3"#));
/// ```
#[derive(Debug)]
pub struct JsonLines {
    sink: Sink,
}

#[derive(Debug)]
enum Sink {
    Stderr,
    Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>),
}

impl JsonLines {
    /// Lines to standard error.
    ///
    /// ```
    /// use tracing_subscriber::layer::SubscriberExt;
    ///
    /// let subscriber = tracing_subscriber::registry().with(tokentrace::telemetry::JsonLines::stderr());
    /// tracing::subscriber::with_default(subscriber, || tracing::info!("one JSON object on stderr"));
    /// ```
    pub fn stderr() -> Self {
        Self { sink: Sink::Stderr }
    }

    /// Lines into memory (for tests), and the vector they land in.
    ///
    /// ```
    /// use tracing_subscriber::layer::SubscriberExt;
    ///
    /// let (writer, lines) = tokentrace::telemetry::JsonLines::capture();
    /// let subscriber = tracing_subscriber::registry().with(writer);
    /// tracing::subscriber::with_default(subscriber, || {
    ///     tracing::warn!(target: "worker", "a\nsecond line?");
    /// });
    /// let lines = lines.lock().unwrap();
    /// assert_eq!(lines.len(), 1); // the newline is escaped, not written
    /// assert!(lines[0].contains(r#""level":"WARN""#) && lines[0].contains(r#""target":"worker""#));
    /// ```
    pub fn capture() -> (Self, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let lines = std::sync::Arc::default();
        (Self { sink: Sink::Capture(std::sync::Arc::clone(&lines)) }, lines)
    }
}

impl<S: Subscriber> Layer<S> for JsonLines {
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        let line = format_line(event, SystemTime::now());
        match &self.sink {
            Sink::Stderr => {
                // One write per line, under the lock, so concurrent lines never interleave.
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
            Sink::Capture(lines) => {
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line.trim_end().to_owned());
                }
            }
        }
    }
}

fn format_line(event: &Event<'_>, now: SystemTime) -> String {
    let metadata = event.metadata();
    let mut line = String::with_capacity(256);
    line.push_str("{\"time\":\"");
    write_rfc3339(&mut line, now);
    line.push_str("\",\"level\":\"");
    line.push_str(metadata.level().as_str());
    line.push_str("\",\"target\":");
    push_json_string(&mut line, metadata.target());
    if let Some(file) = metadata.file() {
        line.push_str(",\"file\":");
        push_json_string(&mut line, file);
    }
    if let Some(number) = metadata.line() {
        let _ = write!(line, ",\"line\":{number}");
    }
    let mut fields = Fields { message: None, rest: String::new() };
    event.record(&mut fields);
    line.push_str(",\"message\":");
    push_json_string(&mut line, fields.message.as_deref().unwrap_or(""));
    Context::map_current(|cx| {
        let span = cx.span();
        let span_context = span.span_context();
        if span_context.is_valid() {
            let _ = write!(
                line,
                ",\"trace_id\":\"{}\",\"span_id\":\"{}\"",
                span_context.trace_id(),
                span_context.span_id()
            );
        }
        if let Some(ids) = RequestIds::from_context(cx) {
            line.push_str(",\"x_request_id\":");
            push_json_string(&mut line, ids.x_request_id.as_str());
            let _ = write!(line, ",\"request_id\":\"{}\"", ids.request_id);
        }
    });
    line.push_str(&fields.rest);
    line.push_str("}\n");
    line
}

/// Collects an event's fields as JSON members.
struct Fields {
    message: Option<String>,
    rest: String,
}

impl Fields {
    fn key(&mut self, field: &Field) {
        self.rest.push(',');
        let name = field.name();
        if RESERVED.contains(&name) {
            push_json_string(&mut self.rest, &format!("field.{name}"));
        } else {
            push_json_string(&mut self.rest, name);
        }
        self.rest.push(':');
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
            return;
        }
        self.key(field);
        push_json_string(&mut self.rest, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.record_str(field, &text);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.rest, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.rest, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let _ = write!(self.rest, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.key(field);
            let _ = write!(self.rest, "{value}");
        } else {
            // JSON has no NaN or infinity.
            self.record_str(field, &value.to_string());
        }
    }
}

/// Appends `value` as a JSON string literal: quotes, backslashes and every control character
/// escaped (U+2028/U+2029 too, for JavaScript consumers).
pub(crate) fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub(crate) fn write_rfc3339(out: &mut String, time: SystemTime) {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since_epoch.subsec_micros()
    );
}

/// Days since 1970-01-01 to (year, month, day), by Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339() {
        let mut out = String::new();
        write_rfc3339(&mut out, UNIX_EPOCH + Duration::from_micros(1_795_808_062_123_456));
        assert_eq!(out, "2026-11-27T19:34:22.123456Z");
        out.clear();
        write_rfc3339(&mut out, UNIX_EPOCH + Duration::from_secs(951_782_400)); // leap day
        assert_eq!(out, "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn escaping() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd\u{1}\u{2028}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001\u2028é""#);
    }
}
