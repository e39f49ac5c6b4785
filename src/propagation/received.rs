//! What a server layer keeps for the request it received: its ids, when it arrived, the RPC
//! endpoint; one value in the request's `Context`, read back by the code the request runs.

use std::borrow::Cow;
use std::time::Instant;

use opentelemetry::Context;

use super::carrier::Carrier;
use super::request_ids::RequestIds;

/// What a server layer stores in the request's context: the request ids and when the request
/// arrived (where TTFT is measured from). One context value for both, as each value costs a
/// copy of the context's map.
#[derive(Debug)]
struct ReceivedRequest {
    ids: RequestIds,
    arrival: Instant,
    /// The RPC endpoint it called, for the worker's metrics.
    endpoint: Option<Cow<'static, str>>,
}

/// `cx` holding the ids of a request that arrived at `arrival` (on `endpoint`, for an RPC).
pub(crate) fn with_received_request(
    cx: &Context,
    ids: RequestIds,
    arrival: Instant,
    endpoint: Option<Cow<'static, str>>,
) -> Context {
    cx.with_value(ReceivedRequest { ids, arrival, endpoint })
}

/// The RPC endpoint of the request of `cx`, if an RPC server layer received it.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) fn request_endpoint(cx: &Context) -> Option<&Cow<'static, str>> {
    cx.get::<ReceivedRequest>()?.endpoint.as_ref()
}

/// When the request of `cx` arrived at this service's server layer, if one received it.
pub(crate) fn request_arrival(cx: &Context) -> Option<Instant> {
    cx.get::<ReceivedRequest>().map(|received| received.arrival)
}

impl RequestIds {
    /// The ids an outbound call carries: those of `cx` (stored by a server layer), else the ones
    /// already on the outbound request `carrier`, each generated where absent or invalid.
    pub(crate) fn for_outbound<C: Carrier + ?Sized>(cx: &Context, carrier: &C) -> Self {
        match Self::from_context(cx) {
            Some(ids) => ids.clone(),
            None => Self::extract(carrier),
        }
    }

    /// The ids stored in `cx` by a server layer (or put there as a value), if any.
    pub(crate) fn from_context(cx: &Context) -> Option<&Self> {
        match cx.get::<ReceivedRequest>() {
            Some(received) => Some(&received.ids),
            None => cx.get::<Self>(),
        }
    }

    /// The ids of the current context, if a server layer stored some: for code below a handler
    /// (or below an RPC handler, which has no extensions). The server layers attach the request's
    /// context while its handler, response body or stream is polled; a task spawned elsewhere (an
    /// engine thread) sees it once it attaches the context it was handed
    /// (`let _guard = cx.attach();`).
    ///
    /// ```
    /// use opentelemetry::Context;
    /// use tokentrace::propagation::RequestIds;
    ///
    /// let ids = RequestIds::generate();
    /// let _attached = Context::current_with_value(ids.clone()).attach();
    /// assert_eq!(RequestIds::current(), Some(ids));
    /// ```
    pub fn current() -> Option<Self> {
        Context::map_current(|cx| Self::from_context(cx).cloned())
    }
}
