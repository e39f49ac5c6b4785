//! [`RequestIds`]: the two ids of one request, as received or generated.

use super::carrier::Carrier;
use super::names::{REQUEST_ID, X_REQUEST_ID};
use super::request_id::{RequestId, RequestUuid};
use crate::rate_limit::RateLimitedWarning;

/// The two request ids of one request: `x-request-id` (searchable, caller-chosen when safe)
/// and `request-id` (a UUID).
///
/// A server layer ([`http::ServerLayer`](crate::http::ServerLayer),
/// [`rpc::ServerLayer`](crate::rpc::ServerLayer)) keeps each inbound id that is valid, generates
/// the others, writes both into the request's own headers (or metadata) so every reader agrees,
/// and stores them for the request; the client layers inject them, so one id follows the request
/// through every service. Two ways to read them, one for each place:
///
/// - in an axum handler, `Extension<RequestIds>`;
/// - in code below the handler (an engine, a log line, a spawned task that carries the
///   request's context), [`RequestIds::current`].
///
/// ```
/// use axum::{routing::get, Extension, Router};
/// use tokentrace::{http::ServerLayer, propagation::RequestIds};
///
/// async fn handler(Extension(ids): Extension<RequestIds>) -> String {
///     assert_eq!(RequestIds::current().as_ref(), Some(&ids)); // the same ids below the handler
///     format!("request {}", ids.x_request_id)
/// }
/// let app: Router = Router::new().route("/", get(handler)).layer(ServerLayer::default());
/// # let _ = app;
/// ```
///
/// [`RequestIds::extract`] and [`RequestIds::inject`] are the layers' own plumbing, public for a
/// custom transport or layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestIds {
    /// `x-request-id`.
    pub x_request_id: RequestId,
    /// `request-id`.
    pub request_id: RequestUuid,
}

static INVALID_REQUEST_ID: RateLimitedWarning = RateLimitedWarning::new();

/// The inbound `request-id` when it is a single valid UUID, else a new one (with a
/// rate-limited warning that never includes the refused value, when one was sent).
fn request_uuid<'a>(mut inbound: impl Iterator<Item = &'a [u8]>) -> RequestUuid {
    let Some(first) = inbound.next() else {
        return RequestUuid::new_v4();
    };
    let single = inbound.next().is_none();
    match RequestUuid::parse(first) {
        Ok(uuid) if single => uuid,
        _ => {
            if INVALID_REQUEST_ID.should_emit() {
                tracing::warn!(target: "tokentrace", "inbound request-id is not a single UUID; generated a new one");
            }
            RequestUuid::new_v4()
        }
    }
}

impl RequestIds {
    /// Reads both ids, generating each one that is absent, repeated or invalid. A refused
    /// `request-id` gives a rate-limited warning that never includes the refused value.
    ///
    /// Plumbing for a custom layer: a handler behind a server layer takes
    /// `Extension<RequestIds>` instead, which agrees with the request's headers.
    ///
    /// ```
    /// use http::HeaderMap;
    /// use tokentrace::propagation::RequestIds;
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.insert("x-request-id", "has a space".parse().unwrap()); // refused: replaced
    /// headers.insert("request-id", "123e4567-e89b-42d3-a456-426614174000".parse().unwrap());
    /// let ids = RequestIds::extract(&headers);
    /// assert!(ids.x_request_id.is_generated());
    /// assert_eq!(ids.request_id.to_string(), "123e4567-e89b-42d3-a456-426614174000");
    /// ```
    pub fn extract<C: Carrier + ?Sized>(carrier: &C) -> Self {
        Self {
            x_request_id: RequestId::from_inbound(carrier.get_single(X_REQUEST_ID)),
            request_id: request_uuid(carrier.get_all(REQUEST_ID)),
        }
    }

    /// Fresh ids, for a request that starts here.
    ///
    /// ```
    /// use tokentrace::propagation::RequestIds;
    ///
    /// let (a, b) = (RequestIds::generate(), RequestIds::generate());
    /// assert!(a.x_request_id.is_generated());
    /// assert_ne!(a, b);
    /// ```
    pub fn generate() -> Self {
        Self { x_request_id: RequestId::generate(), request_id: RequestUuid::new_v4() }
    }

    /// Sets `x-request-id` and `request-id`, replacing any present.
    ///
    /// ```
    /// use tokentrace::propagation::RequestIds;
    /// use tokentrace::rpc::Metadata;
    ///
    /// let mut metadata = Metadata::new();
    /// metadata.append("x-request-id", "stale");
    /// let ids = RequestIds::generate();
    /// ids.inject(&mut metadata);
    /// assert_eq!(metadata.get("x-request-id"), Some(ids.x_request_id.as_str()));
    /// assert_eq!(metadata.get("request-id"), Some(ids.request_id.to_string().as_str()));
    /// ```
    pub fn inject<C: Carrier + ?Sized>(&self, carrier: &mut C) {
        carrier.set(X_REQUEST_ID, self.x_request_id.as_str());
        // Hex digits and dashes: always ASCII.
        if let Ok(text) = std::str::from_utf8(&self.request_id.to_bytes()) {
            carrier.set(REQUEST_ID, text);
        }
    }

    /// Reads both ids from an inbound request, as [`RequestIds::extract`], and writes back each
    /// one that was not received as it is kept, so the request's own headers (or metadata) agree
    /// with what the server layer stores.
    pub(crate) fn receive<C: Carrier + ?Sized>(carrier: &mut C) -> Self {
        let ids = Self::extract(carrier);
        if ids.x_request_id.is_generated() {
            carrier.set(X_REQUEST_ID, ids.x_request_id.as_str());
        }
        if carrier.get_single(REQUEST_ID).map(RequestUuid::parse) != Some(Ok(ids.request_id)) {
            carrier.set(REQUEST_ID, &ids.request_id.to_hyphenated());
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    const UUID: &str = "123e4567-e89b-42d3-a456-426614174000";

    /// `(name, value)` pairs as a header map, padded past the one-pass limit when `large`.
    fn headers(pairs: &[(&'static str, &str)], large: bool) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        for i in 0..if large { 20 } else { 0 } {
            map.insert(http::HeaderName::try_from(format!("x-filler-{i}")).unwrap(), "1".parse().unwrap());
        }
        map
    }

    /// Each id is kept when it arrives once and valid, else generated; the same on small and
    /// large header maps.
    #[test]
    fn extraction_keeps_single_valid_ids_only() {
        /// Headers, then the `x-request-id` and `request-id` expected to be kept.
        type Case = (&'static [(&'static str, &'static str)], Option<&'static str>, Option<&'static str>);
        let cases: [Case; 7] = [
            (&[], None, None),
            (&[("x-request-id", "abc-1")], Some("abc-1"), None),
            (&[("x-request-id", "abc-1"), ("x-request-id", "abc-2")], None, None),
            (&[("x-request-id", "bad id")], None, None),
            (&[("request-id", UUID)], None, Some(UUID)),
            (&[("request-id", UUID), ("request-id", UUID)], None, None),
            (&[("request-id", "not-a-uuid"), ("x-request-id", "k")], Some("k"), None),
        ];
        for (pairs, x_request_id, request_id) in cases {
            for large in [false, true] {
                let ids = RequestIds::extract(&headers(pairs, large));
                let kept = (!ids.x_request_id.is_generated()).then(|| ids.x_request_id.as_str());
                assert_eq!(kept, x_request_id, "{pairs:?} large={large}");
                match request_id.map(|id| id.parse::<RequestUuid>().unwrap()) {
                    Some(parsed) => assert_eq!(ids.request_id, parsed, "{pairs:?} large={large}"),
                    None => assert_eq!(ids.request_id.as_u128() >> 76 & 0xf, 4, "generated v4: {pairs:?}"),
                }
            }
        }
    }
}
