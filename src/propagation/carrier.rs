//! The one abstraction extraction and injection are written against.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::context::names;

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
/// assert_eq!(headers.get_all("x-request-id").iter().count(), 2);
/// assert_eq!(Carrier::get_all(&headers, "x-request-id").collect::<Vec<_>>(), [&b"abc"[..], b"def"]);
/// Carrier::remove_all(&mut headers, "x-request-id");
/// assert!(headers.is_empty());
/// ```
pub trait Carrier {
    /// Every value of `name`, in the order received.
    fn get_all(&self, name: &'static str) -> impl Iterator<Item = &[u8]>;

    /// Sets `name` to the single value `value`, replacing any earlier values.
    fn set(&mut self, name: &'static str, value: &str);

    /// Removes every value of `name`.
    fn remove_all(&mut self, name: &'static str);

    /// The value of `name` when it appears exactly once; `None` when absent or repeated.
    fn get_single(&self, name: &'static str) -> Option<&[u8]> {
        let mut values = self.get_all(name);
        let first = values.next()?;
        values.next().is_none().then_some(first)
    }
}

/// The propagated names as prebuilt `HeaderName`s: a lookup by `&str` would parse and
/// lowercase the name on every call, which costs as much as parsing the traceparent itself.
fn header_name(name: &'static str) -> HeaderName {
    match name {
        names::TRACEPARENT => const { HeaderName::from_static(names::TRACEPARENT) },
        names::TRACESTATE => const { HeaderName::from_static(names::TRACESTATE) },
        names::X_REQUEST_ID => const { HeaderName::from_static(names::X_REQUEST_ID) },
        names::REQUEST_ID => const { HeaderName::from_static(names::REQUEST_ID) },
        other => HeaderName::from_static(other),
    }
}

impl Carrier for HeaderMap {
    fn get_all(&self, name: &'static str) -> impl Iterator<Item = &[u8]> {
        HeaderMap::get_all(self, header_name(name)).iter().map(HeaderValue::as_bytes)
    }

    fn set(&mut self, name: &'static str, value: &str) {
        // tokentrace only sets values it produced or validated (visible ASCII); a value a header
        // cannot hold is skipped rather than corrupted.
        if let Ok(value) = HeaderValue::from_str(value) {
            self.insert(header_name(name), value);
        }
    }

    fn remove_all(&mut self, name: &'static str) {
        // `remove` drops every value of the name.
        self.remove(header_name(name));
    }
}
