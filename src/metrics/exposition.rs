//! The registry as text: OpenMetrics (with exemplars) or the Prometheus text format.

use http::HeaderValue;
use prometheus_client::registry::Registry;

/// An exposition format.
///
/// ```
/// use tokentrace::metrics::Format;
///
/// let accept = http::HeaderValue::from_static("application/openmetrics-text;version=1.0.0,text/plain;q=0.5");
/// assert_eq!(Format::negotiate(Some(&accept)), Format::OpenMetrics);
/// assert_eq!(Format::negotiate(None), Format::Prometheus);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`: with exemplars.
    OpenMetrics,
    /// `text/plain; version=0.0.4`: Prometheus's classic text format, without exemplars.
    Prometheus,
}

impl Format {
    /// [`Format::OpenMetrics`] when the scraper's `Accept` header names
    /// `application/openmetrics-text`, else [`Format::Prometheus`].
    ///
    /// ```
    /// use tokentrace::metrics::Format;
    /// let accept = http::HeaderValue::from_static("text/plain");
    /// assert_eq!(Format::negotiate(Some(&accept)), Format::Prometheus);
    /// ```
    pub fn negotiate(accept: Option<&HeaderValue>) -> Self {
        let asks = accept
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.contains("application/openmetrics-text"));
        if asks {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }

    /// The `Content-Type` of this format.
    ///
    /// ```
    /// use tokentrace::metrics::Format;
    /// assert_eq!(Format::Prometheus.content_type(), "text/plain; version=0.0.4; charset=utf-8");
    /// ```
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Encodes `registry` with prometheus-client's OpenMetrics encoder; for the Prometheus format,
/// drops what that format lacks: exemplars, `# UNIT` and `# EOF`, and names counter metadata
/// after their `_total` samples. (Label values cannot hold ` # {`: the model label is
/// sanitised and the others are ours.)
pub(crate) fn render(registry: &Registry, format: Format) -> String {
    let mut text = String::new();
    // Writing to a `String` cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    if format == Format::OpenMetrics {
        return text;
    }
    let counters: Vec<&str> =
        text.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let metadata = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE "));
        let counter = metadata.and_then(|rest| {
            counters.iter().find(|name| rest.strip_prefix(**name).is_some_and(|tail| tail.starts_with(' ')))
        });
        match (metadata, counter) {
            (Some(rest), Some(name)) => {
                out.push_str(&line[..line.len() - rest.len()]);
                out.push_str(name);
                out.push_str("_total");
                out.push_str(&rest[name.len()..]);
            }
            _ => out.push_str(line.split(" # {").next().unwrap_or(line)),
        }
        out.push('\n');
    }
    out
}

/// A router serving `GET /metrics` with `render`, in the format the `Accept` header asks for.
#[cfg(feature = "axum")]
pub(crate) fn router<S, R>(render: R) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    R: Fn(Format) -> String + Clone + Send + Sync + 'static,
{
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: http::HeaderMap| async move {
            let format = Format::negotiate(headers.get(http::header::ACCEPT));
            ([(http::header::CONTENT_TYPE, format.content_type())], render(format))
        }),
    )
}
