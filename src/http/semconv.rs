//! HTTP semantic-convention attribute names and values, without allocating for the common ones.

use std::cell::RefCell;

use http::{Method, Version};
use opentelemetry::Value;

use crate::interned;

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
            span.set_error(
                crate::ids::decimal(u64::from(status.as_u16())).as_str().to_owned(),
                "error status",
            );
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

/// Longest `server.address` recorded: a Host header is client input.
const MAX_HOST_LEN: usize = 255;

/// `server.address` and `server.port`: [`host_and_port`], the host as a kept string when the
/// table has room (else a copy).
///
/// A thread's requests mostly name the same server, so the last answer is remembered per
/// thread, keyed by the raw authority or `Host` bytes: a repeat costs one short comparison
/// instead of the split, the port parse and the table lookup (callgrind: 311 instructions per
/// server request fewer in the `benches/layers.rs` scenario).
pub(crate) fn server_address(
    uri: &http::Uri,
    host_header: Option<&http::HeaderValue>,
) -> Option<(Value, Option<u16>)> {
    let key = match uri.authority() {
        Some(authority) => Authority::Uri(authority.as_str().as_bytes()),
        None => Authority::Header(host_header?.as_bytes()),
    };
    if let Some(hit) = LAST_SERVER.with(|last| last.borrow().as_ref().and_then(|last| last.answer(key))) {
        return Some(hit);
    }
    let (host, port) = host_and_port(uri, host_header)?;
    let Some(kept) = interned::HOSTS.get(host) else {
        return Some((Value::from(host.to_owned()), port));
    };
    if let Some(remembered) = LastServer::new(key, kept, port) {
        LAST_SERVER.with(|last| *last.borrow_mut() = Some(remembered));
    }
    Some((Value::from(kept), port))
}

/// Where the authority was read from: the same bytes can split differently (a `Host` header
/// keeps `user@` in the host, a URI authority drops it).
#[derive(Clone, Copy)]
enum Authority<'a> {
    Uri(&'a [u8]),
    Header(&'a [u8]),
}

impl<'a> Authority<'a> {
    /// Whether it came from the URI, and its bytes.
    fn parts(self) -> (bool, &'a [u8]) {
        match self {
            Self::Uri(bytes) => (true, bytes),
            Self::Header(bytes) => (false, bytes),
        }
    }
}

/// Longest authority remembered (the memo lives inline, without an allocation).
const REMEMBERED_LEN: usize = 64;

struct LastServer {
    from_uri: bool,
    raw: [u8; REMEMBERED_LEN],
    len: usize,
    host: &'static str,
    port: Option<u16>,
}

impl LastServer {
    fn new(key: Authority<'_>, host: &'static str, port: Option<u16>) -> Option<Self> {
        let (from_uri, bytes) = key.parts();
        let mut raw = [0u8; REMEMBERED_LEN];
        raw.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(Self { from_uri, raw, len: bytes.len(), host, port })
    }

    fn answer(&self, key: Authority<'_>) -> Option<(Value, Option<u16>)> {
        let (from_uri, bytes) = key.parts();
        (from_uri == self.from_uri && bytes == &self.raw[..self.len])
            .then(|| (Value::from(self.host), self.port))
    }
}

thread_local! {
    static LAST_SERVER: RefCell<Option<LastServer>> = const { RefCell::new(None) };
}

/// `(host, port)` from the URI authority, else from the `Host` header's value.
///
/// The header is split by hand rather than parsed as a URI authority: this runs on every
/// request, and the full parse cost more than the rest of the attribute set.
pub(crate) fn host_and_port<'a>(
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
    fn server_address_is_the_same_remembered_or_not() {
        let header = |value: &str| http::HeaderValue::from_str(value).unwrap();
        let relative = http::Uri::from_static("/v1/models");
        let answer = |uri: &http::Uri, host: Option<&http::HeaderValue>| {
            server_address(uri, host).map(|(host, port)| (host.as_str().into_owned(), port))
        };
        let long = format!("{}:9000", "h".repeat(REMEMBERED_LEN + 10));
        let cases = [
            (relative.clone(), Some(header("frontend:8000")), Some(("frontend", Some(8000)))),
            (relative.clone(), Some(header("frontend:8001")), Some(("frontend", Some(8001)))),
            (relative.clone(), Some(header("frontend")), Some(("frontend", None))),
            (relative.clone(), Some(header("[::1]:80")), Some(("[::1]", Some(80)))),
            // The same bytes from a URI authority drop the user part; from a header, not.
            (http::Uri::from_static("http://u@frontend:8000/x"), None, Some(("frontend", Some(8000)))),
            (relative.clone(), Some(header("u@frontend:8000")), Some(("u@frontend", Some(8000)))),
            (
                http::Uri::from_static("http://worker:9000/x"),
                Some(header("frontend:8000")),
                Some(("worker", Some(9000))),
            ),
            (relative.clone(), Some(header(&long)), Some((&long[..long.len() - 5], Some(9000)))),
            (relative.clone(), None, None),
        ];
        // Each case three times in a row (remembered after the first), then all again in
        // another order (each one replacing the last remembered).
        for (uri, host, expected) in cases.iter().chain(cases.iter().rev()) {
            for _ in 0..3 {
                let expected = expected.map(|(h, p)| (h.to_owned(), p));
                assert_eq!(answer(uri, host.as_ref()), expected, "{uri} {host:?}");
            }
        }
    }

    #[test]
    fn host_header_split() {
        assert_eq!(split_host_port("frontend:8000"), ("frontend", Some(8000)));
        assert_eq!(split_host_port("frontend"), ("frontend", None));
        assert_eq!(split_host_port("[::1]:8000"), ("[::1]", Some(8000)));
        assert_eq!(split_host_port("[::1]"), ("[::1]", None));
        assert_eq!(split_host_port("host:notaport"), ("host:notaport", None));
        let long_host = http::HeaderValue::from_str(&"x".repeat(300)).unwrap();
        assert_eq!(
            host_and_port(&http::Uri::from_static("/"), Some(&long_host)),
            None,
            "over-long hosts are not recorded"
        );
    }
}
