//! Header and metadata names, lowercase.
//!
//! ```
//! use tokentrace::propagation::names;
//! use tokentrace::rpc::Metadata;
//!
//! let metadata: Metadata = [(names::X_REQUEST_ID, "req-42")].into_iter().collect();
//! assert_eq!(metadata.get(names::X_REQUEST_ID), Some("req-42"));
//! ```

/// W3C `traceparent`.
///
/// ```
/// assert_eq!(tokentrace::propagation::names::TRACEPARENT, http::HeaderName::from_static("traceparent"));
/// ```
pub const TRACEPARENT: &str = "traceparent";

/// W3C `tracestate`.
///
/// ```
/// assert_eq!(tokentrace::propagation::names::TRACESTATE, "tracestate");
/// ```
pub const TRACESTATE: &str = "tracestate";

/// The request id operators search by.
///
/// ```
/// use tokentrace::propagation::names::X_REQUEST_ID;
/// let mut headers = http::HeaderMap::new();
/// headers.insert(X_REQUEST_ID, "req-42".parse().unwrap());
/// assert_eq!(headers["X-Request-Id"], "req-42");
/// ```
pub const X_REQUEST_ID: &str = "x-request-id";

/// A UUID request id.
///
/// ```
/// use tokentrace::propagation::{names::REQUEST_ID, RequestIds};
/// let mut headers = http::HeaderMap::new();
/// RequestIds::generate().inject(&mut headers);
/// assert_eq!(headers[REQUEST_ID].len(), 36);
/// ```
pub const REQUEST_ID: &str = "request-id";

/// W3C `baggage`.
///
/// ```
/// assert_eq!(tokentrace::propagation::names::BAGGAGE, "baggage");
/// ```
pub const BAGGAGE: &str = "baggage";
