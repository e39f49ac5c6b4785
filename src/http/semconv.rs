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
/// Dynamo's attribute name for the request id.
pub(crate) const X_REQUEST_ID: &str = "x_request_id";
pub(crate) const REQUEST_ID: &str = "request_id";

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

/// `(host, port)` from the URI authority, else from the `Host` header.
pub(crate) fn host_and_port(uri: &http::Uri, headers: &http::HeaderMap) -> Option<(String, Option<u16>)> {
    let parsed;
    let authority = match uri.authority() {
        Some(authority) => authority,
        None => {
            parsed = headers.get(http::header::HOST)?.to_str().ok()?.parse::<http::uri::Authority>().ok()?;
            &parsed
        }
    };
    Some((authority.host().to_owned(), authority.port_u16()))
}
