//! The one abstraction extraction and injection are written against.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::names;
use super::traceparent::TraceParent;

/// Something that carries propagation fields: HTTP headers, RPC metadata.
///
/// Names are compared case-insensitively; tokentrace always passes them in lowercase.
/// Implemented for [`http::HeaderMap`] and for the worker RPC `Metadata`.
///
/// ```
/// use http::HeaderMap;
/// use tokentrace::propagation::Carrier;
///
/// let mut headers = HeaderMap::new();
/// headers.set("x-request-id", "abc");
/// headers.append("x-request-id", "def".parse().unwrap());
/// assert_eq!(Carrier::get_all(&headers, "x-request-id").collect::<Vec<_>>(), [&b"abc"[..], b"def"]);
/// Carrier::remove_all(&mut headers, "x-request-id");
/// assert!(headers.is_empty());
/// ```
pub trait Carrier {
    /// Every value of `name`, in the order received.
    ///
    /// ```
    /// use tokentrace::propagation::Carrier;
    /// use tokentrace::rpc::Metadata;
    ///
    /// let metadata: Metadata =
    ///     [("tracestate", "a=1"), ("x-request-id", "r"), ("Tracestate", "b=2")].into_iter().collect();
    /// assert_eq!(metadata.get_all("tracestate").collect::<Vec<_>>(), [&b"a=1"[..], b"b=2"]);
    /// ```
    fn get_all(&self, name: &'static str) -> impl Iterator<Item = &[u8]>;

    /// Sets `name` to the single value `value`, replacing any earlier values. A value the
    /// carrier cannot hold is skipped, never stored altered (tokentrace only sets values it
    /// built or validated, all visible ASCII).
    ///
    /// ```
    /// use tokentrace::propagation::Carrier;
    /// use tokentrace::rpc::Metadata;
    ///
    /// let mut metadata: Metadata = [("x-request-id", "a"), ("x-request-id", "b")].into_iter().collect();
    /// metadata.set("x-request-id", "c");
    /// assert_eq!(metadata.values("x-request-id").collect::<Vec<_>>(), ["c"]);
    /// ```
    fn set(&mut self, name: &'static str, value: &str);

    /// Removes every value of `name`.
    ///
    /// ```
    /// use http::HeaderMap;
    /// use tokentrace::propagation::Carrier;
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.append("traceparent", "a".parse().unwrap());
    /// headers.append("traceparent", "b".parse().unwrap());
    /// headers.remove_all("traceparent");
    /// assert!(headers.get("traceparent").is_none());
    /// ```
    fn remove_all(&mut self, name: &'static str);

    /// The value of `name` when it appears exactly once; `None` when absent or repeated.
    ///
    /// ```
    /// use http::HeaderMap;
    /// use tokentrace::propagation::Carrier;
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.append("x-request-id", "a".parse().unwrap());
    /// assert_eq!(headers.get_single("x-request-id"), Some(&b"a"[..]));
    /// headers.append("x-request-id", "b".parse().unwrap());
    /// assert_eq!(headers.get_single("x-request-id"), None); // repeated: trust neither
    /// ```
    fn get_single(&self, name: &'static str) -> Option<&[u8]> {
        let mut values = self.get_all(name);
        let first = values.next()?;
        values.next().is_none().then_some(first)
    }

    /// Sets the one `traceparent`, replacing any. A carrier may store the value it knows to be
    /// valid without checking it again (`HeaderMap` does).
    ///
    /// ```
    /// use http::HeaderMap;
    /// use tokentrace::propagation::{Carrier, TraceParent};
    ///
    /// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap();
    /// let mut headers = HeaderMap::new();
    /// headers.set_traceparent(&tp);
    /// assert_eq!(headers["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    /// ```
    fn set_traceparent(&mut self, traceparent: &TraceParent) {
        // Only lowercase hex digits and '-' are written: always ASCII.
        if let Ok(text) = std::str::from_utf8(&traceparent.to_bytes()) {
            self.set(names::TRACEPARENT, text);
        }
    }
}

/// The propagated names as prebuilt `HeaderName`s: a lookup by `&str` would parse and
/// lowercase the name on every call.
fn header_name(name: &'static str) -> HeaderName {
    match name {
        names::TRACEPARENT => const { HeaderName::from_static(names::TRACEPARENT) },
        names::TRACESTATE => const { HeaderName::from_static(names::TRACESTATE) },
        names::X_REQUEST_ID => const { HeaderName::from_static(names::X_REQUEST_ID) },
        names::REQUEST_ID => const { HeaderName::from_static(names::REQUEST_ID) },
        names::BAGGAGE => const { HeaderName::from_static(names::BAGGAGE) },
        other => HeaderName::from_static(other),
    }
}

impl Carrier for HeaderMap {
    fn get_all(&self, name: &'static str) -> impl Iterator<Item = &[u8]> {
        HeaderMap::get_all(self, header_name(name)).into_iter().map(HeaderValue::as_bytes)
    }

    fn set(&mut self, name: &'static str, value: &str) {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.insert(header_name(name), value);
        }
    }

    fn remove_all(&mut self, name: &'static str) {
        // `remove` drops every value of the name.
        self.remove(header_name(name));
    }
}
