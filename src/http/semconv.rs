//! HTTP semantic-convention attribute names and values, without allocating for the common ones.

use http::{Method, Version};

pub(crate) const HTTP_REQUEST_METHOD: &str = "http.request.method";
pub(crate) const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
pub(crate) const HTTP_ROUTE: &str = "http.route";
pub(crate) const URL_PATH: &str = "url.path";
pub(crate) const URL_SCHEME: &str = "url.scheme";
pub(crate) const URL_FULL: &str = "url.full";
pub(crate) const SERVER_ADDRESS: &str = "server.address";
pub(crate) const SERVER_PORT: &str = "server.port";
pub(crate) const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";

/// Records a response's status code; a status the caller counts as a failure (5xx for a
/// server span, 4xx and 5xx for a client span, as the conventions say) marks the span failed.
pub(crate) fn record_status(
    span: Option<&crate::active_span::ActiveSpan>,
    status: http::StatusCode,
    failed: bool,
) {
    if let Some(span) = span {
        span.set_attribute(opentelemetry::KeyValue::new(
            HTTP_RESPONSE_STATUS_CODE,
            i64::from(status.as_u16()),
        ));
        if failed {
            span.set_error(status.as_str().to_owned(), "error status");
        }
    }
}

/// The method as the conventions spell it; `_OTHER` for methods they do not list (so a client
/// cannot create unbounded attribute values).
pub(crate) fn method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

pub(crate) fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "_OTHER",
    }
}

/// Pushes `server.address`, and `server.port` when known, read from `uri` or else from the
/// `Host` header.
pub(crate) fn push_server_address(
    attributes: &mut Vec<opentelemetry::KeyValue>,
    uri: &http::Uri,
    host_header: Option<&http::HeaderValue>,
) {
    if let Some((host, port)) = server_address(uri, host_header) {
        attributes.push(opentelemetry::KeyValue::new(SERVER_ADDRESS, host.to_owned()));
        if let Some(port) = port {
            attributes.push(opentelemetry::KeyValue::new(SERVER_PORT, i64::from(port)));
        }
    }
}

/// Longest `server.address` recorded: a Host header is client input.
const MAX_HOST_LEN: usize = 255;

/// `server.address` and `server.port`: from the URI authority, else from the `Host` header.
fn server_address<'a>(
    uri: &'a http::Uri,
    host_header: Option<&'a http::HeaderValue>,
) -> Option<(&'a str, Option<u16>)> {
    if let Some(authority) = uri.authority() {
        return Some((authority.host(), authority.port_u16()));
    }
    // A header value holds no control characters; `from_utf8` checks a word at a time.
    let host = std::str::from_utf8(host_header?.as_bytes()).ok()?;
    let (host, port) = split_host_port(host);
    (!host.is_empty() && host.len() <= MAX_HOST_LEN).then_some((host, port))
}

/// `host:port`, `[v6]:port`, `host`, `[v6]`; a port that is not a number is left in the host.
fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => {
                let port = authority[end + 1..].strip_prefix(':').and_then(|p| p.parse().ok());
                (&authority[..=end], port)
            }
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (authority, None),
        },
        None => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_split() {
        assert_eq!(split_host_port("frontend:8000"), ("frontend", Some(8000)));
        assert_eq!(split_host_port("frontend"), ("frontend", None));
        assert_eq!(split_host_port("[::1]:8000"), ("[::1]", Some(8000)));
        assert_eq!(split_host_port("[::1]"), ("[::1]", None));
        assert_eq!(split_host_port("host:notaport"), ("host:notaport", None));
        let long_host = http::HeaderValue::from_str(&"x".repeat(300)).unwrap();
        assert_eq!(
            server_address(&http::Uri::from_static("/"), Some(&long_host)),
            None,
            "over-long hosts are not recorded"
        );
    }
}
