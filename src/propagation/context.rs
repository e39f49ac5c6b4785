//! Extraction and injection of the propagated fields, written once against [`Carrier`].

use opentelemetry::trace::{Link, TraceContextExt, TraceId, TraceState as OtelTraceState};
use opentelemetry::Context;
use std::borrow::Cow;
use std::time::Instant;

use super::baggage::extract_baggage;
use super::carrier::Carrier;
use super::names::{REQUEST_ID, TRACEPARENT, TRACESTATE, X_REQUEST_ID};
use super::propagator::Propagators;
use super::request_id::{RequestId, RequestUuid};
use super::trace_state::TraceState;
use super::traceparent::TraceParent;
use crate::rate_limit::RateLimitedWarning;

/// The caller's trace context, as received.
///
/// ```
/// use http::HeaderMap;
/// use tokentrace::propagation::RemoteContext;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
/// headers.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
/// let remote = RemoteContext::extract(&headers).expect("valid");
/// assert_eq!(remote.tracestate.get("congo"), Some("t61rcWkgMzE"));
///
/// headers.append("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
/// assert!(RemoteContext::extract(&headers).is_none()); // two traceparents: new trace
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteContext {
    /// The caller's span.
    pub traceparent: TraceParent,
    /// Vendor entries; empty when absent or invalid.
    pub tracestate: TraceState,
}

impl RemoteContext {
    /// Reads `traceparent` and `tracestate`. `None` means "start a new trace": no
    /// `traceparent`, more than one, or an invalid one (and `tracestate` is then ignored too).
    /// An invalid `tracestate` alone is dropped and the trace continues.
    ///
    /// ```
    /// use tokentrace::propagation::RemoteContext;
    /// use tokentrace::rpc::Metadata;
    ///
    /// // Any carrier: here the worker RPC metadata.
    /// let mut metadata = Metadata::new();
    /// assert!(RemoteContext::extract(&metadata).is_none()); // nothing received: a new trace
    /// metadata.append("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    /// metadata.append("tracestate", "not a valid list ,,=");
    /// let remote = RemoteContext::extract(&metadata).expect("valid traceparent");
    /// assert!(remote.traceparent.is_sampled());
    /// assert!(remote.tracestate.is_empty()); // the invalid tracestate alone is dropped
    /// ```
    pub fn extract<C: Carrier + ?Sized>(carrier: &C) -> Option<Self> {
        let traceparent = TraceParent::parse(carrier.get_single(TRACEPARENT)?).ok()?;
        let tracestate = TraceState::from_headers(carrier.get_all(TRACESTATE)).unwrap_or_default();
        Some(Self { traceparent, tracestate })
    }

    /// The OpenTelemetry context with this remote span as parent (the full [`TraceState`] and
    /// the Level 2 `random` flag are kept in the context for tokentrace's own injection).
    ///
    /// ```
    /// use opentelemetry::trace::TraceContextExt;
    /// use tokentrace::propagation::RemoteContext;
    ///
    /// let remote = RemoteContext {
    ///     traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
    ///     tracestate: Default::default(),
    /// };
    /// let cx = remote.to_context();
    /// let parent = cx.span().span_context().clone();
    /// assert!(parent.is_remote() && parent.is_sampled());
    /// assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
    /// ```
    pub fn to_context(&self) -> Context {
        self.attach_to(&Context::new())
    }

    /// Like [`RemoteContext::to_context`], on top of `cx`.
    ///
    /// ```
    /// use opentelemetry::trace::TraceContextExt;
    /// use opentelemetry::Context;
    /// use tokentrace::propagation::{RemoteContext, RequestIds};
    ///
    /// let remote = RemoteContext {
    ///     traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
    ///     tracestate: Default::default(),
    /// };
    /// let ids = RequestIds::generate();
    /// let cx = remote.attach_to(&Context::new().with_value(ids.clone()));
    /// assert!(cx.has_active_span());
    /// assert_eq!(RequestIds::from_context(&cx), Some(&ids)); // what `cx` held is kept
    /// ```
    pub fn attach_to(&self, cx: &Context) -> Context {
        let cx = match self.tracestate.to_otel() {
            Some(state) => cx.with_remote_span_context(self.traceparent.span_context_with(state)),
            // A Level 2 key OpenTelemetry refuses: the span context carries no state, and the
            // full state rides beside it for tokentrace's own injection.
            None => cx
                .with_remote_span_context(self.traceparent.span_context_with(OtelTraceState::NONE))
                .with_value(PropagatedTraceState {
                    trace_id: self.traceparent.trace_id(),
                    state: self.tracestate.clone(),
                }),
        };
        if self.traceparent.is_random() {
            cx.with_value(RandomTraceId(self.traceparent.trace_id()))
        } else {
            cx
        }
    }
}

/// A trace whose id is random (the Level 2 `random` flag): received with the flag, or started
/// by one of tokentrace's server layers. Every outbound `traceparent` of the trace carries the
/// flag, also where OpenTelemetry's SDK drops it (the children of an unsampled span).
#[derive(Clone, Copy, Debug)]
struct RandomTraceId(TraceId);

/// `cx`, marked as holding a trace whose id is random: for a root span that a server layer
/// started, whose id came from the SDK's random id generator.
pub(crate) fn mark_random_trace(cx: Context) -> Context {
    let trace_id = cx.span().span_context().trace_id();
    if trace_id == TraceId::INVALID {
        cx
    } else {
        cx.with_value(RandomTraceId(trace_id))
    }
}

/// The `tracestate` received for a trace, kept beside the span in the context when
/// OpenTelemetry's own `TraceState` refuses one of its Level 2 keys, so it is forwarded
/// unchanged. Used only while the current span belongs to the same trace.
#[derive(Clone, Debug)]
struct PropagatedTraceState {
    trace_id: TraceId,
    state: TraceState,
}

/// Removes inbound trace headers and injects exactly one `traceparent` and, when non-empty,
/// one `tracestate` (kept within the spec's limits).
///
/// ```
/// use http::HeaderMap;
/// use tokentrace::propagation::{inject_trace, TraceParent, TraceState};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("traceparent", "stale".parse().unwrap());
/// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap();
/// inject_trace(&mut headers, &tp, &TraceState::EMPTY);
/// assert_eq!(headers["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// assert!(headers.get("tracestate").is_none());
/// ```
pub fn inject_trace<C: Carrier + ?Sized>(
    carrier: &mut C,
    traceparent: &TraceParent,
    tracestate: &TraceState,
) {
    carrier.remove_all(TRACESTATE);
    carrier.set_traceparent(traceparent);
    let tracestate = tracestate.within_limits();
    if !tracestate.is_empty() {
        carrier.set(TRACESTATE, tracestate.header());
    }
}

/// Injects what the [installed](Propagators::installed) propagators carry for `cx`: its span
/// (with its trace state) as exactly one `traceparent`, and its baggage as exactly one
/// `baggage`. When `cx` has no valid span, any trace headers are removed so nothing stale
/// travels on. This is what the client layers call.
///
/// ```
/// use http::HeaderMap;
/// use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
/// use opentelemetry::Context;
/// use tokentrace::propagation::inject_context;
///
/// let sc = SpanContext::new(TraceId::from(1u128), SpanId::from(2u64), TraceFlags::SAMPLED, false, TraceState::NONE);
/// let mut headers = HeaderMap::new();
/// inject_context(&mut headers, &Context::new().with_remote_span_context(sc));
/// assert_eq!(headers["traceparent"], "00-00000000000000000000000000000001-0000000000000002-01");
/// ```
pub fn inject_context<C: Carrier + ?Sized>(carrier: &mut C, cx: &Context) {
    Propagators::installed().inject_into(carrier, cx);
}

/// What a server layer continues from: the caller's context as parent (trace and baggage, as
/// the installed propagators say), or a new root.
pub(crate) struct Inbound {
    pub(crate) parent: Context,
    /// The caller's span, for a public endpoint that starts its own trace.
    pub(crate) link: Option<Link>,
    /// Whether the server span starts a new trace.
    pub(crate) root: bool,
}

impl Inbound {
    /// Reads `carrier`. A `public_endpoint` trusts nothing it received: the caller's span
    /// becomes a link of a new trace, and its baggage is dropped.
    pub(crate) fn extract<C: Carrier + ?Sized>(carrier: &C, public_endpoint: bool) -> Self {
        let propagators = Propagators::installed();
        let remote = propagators.trace_context().then(|| RemoteContext::extract(carrier)).flatten();
        if public_endpoint {
            let link = remote
                .map(|remote| Link::with_context(remote.traceparent.to_span_context(&remote.tracestate)));
            return Self { parent: Context::new(), link, root: true };
        }
        let root = remote.is_none();
        let parent = remote.map(|remote| remote.to_context()).unwrap_or_default();
        let parent = if propagators.baggage() { extract_baggage(carrier, &parent) } else { parent };
        Self { parent, link: None, root }
    }
}

/// Injects the span of `cx` (with its trace state); when `cx` has no valid span, removes any
/// trace headers so nothing stale travels on.
pub(crate) fn inject_span_context<C: Carrier + ?Sized>(carrier: &mut C, cx: &Context) {
    let span = cx.span();
    let span_context = span.span_context();
    let Some(mut traceparent) = TraceParent::from_span_context(span_context) else {
        carrier.remove_all(TRACEPARENT);
        carrier.remove_all(TRACESTATE);
        return;
    };
    if cx.get::<RandomTraceId>().is_some_and(|random| random.0 == span_context.trace_id()) {
        traceparent = traceparent.with_random_flag();
    }
    match cx.get::<PropagatedTraceState>() {
        Some(kept) if kept.trace_id == span_context.trace_id() => {
            inject_trace(carrier, &traceparent, &kept.state)
        }
        _ => {
            let state = TraceState::from_otel(span_context.trace_state()).unwrap_or_default();
            inject_trace(carrier, &traceparent, &state)
        }
    }
}

/// The two request ids of one request: `x-request-id` (searchable, caller-chosen when safe)
/// and `request-id` (a UUID).
///
/// Stored in the request extensions and in the OpenTelemetry context by the server layers, and
/// injected by the client layers, so one id follows the request through every service.
///
/// ```
/// use http::HeaderMap;
/// use tokentrace::propagation::RequestIds;
///
/// let mut inbound = HeaderMap::new();
/// inbound.insert("x-request-id", "demo-1".parse().unwrap());
/// let ids = RequestIds::extract(&inbound);
/// assert_eq!(ids.x_request_id.as_str(), "demo-1");
///
/// let mut outbound = HeaderMap::new();
/// ids.inject(&mut outbound);
/// assert_eq!(outbound["x-request-id"], "demo-1");
/// assert_eq!(outbound["request-id"].len(), 36);
/// ```
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

    /// The ids an outbound call carries: those of `cx` (stored by a server layer), else the ones
    /// already on the outbound request `carrier`, each generated where absent or invalid.
    pub(crate) fn for_outbound<C: Carrier + ?Sized>(cx: &Context, carrier: &C) -> Self {
        match Self::from_context(cx) {
            Some(ids) => ids.clone(),
            None => Self::extract(carrier),
        }
    }

    /// The ids stored in `cx` by a server layer, if any.
    ///
    /// In a handler behind [`ServerLayer`](crate::http::ServerLayer), `cx` is the
    /// `Extension<opentelemetry::Context>` it stored:
    ///
    /// ```
    /// use axum::{routing::get, Extension, Router};
    /// use opentelemetry::Context;
    /// use tokentrace::{http::ServerLayer, propagation::RequestIds};
    ///
    /// async fn handler(Extension(cx): Extension<Context>) -> String {
    ///     let ids = RequestIds::from_context(&cx).expect("stored by the server layer");
    ///     format!("request {}", ids.x_request_id)
    /// }
    ///
    /// let app: Router = Router::new().route("/", get(handler)).layer(ServerLayer::default());
    /// # let _ = app;
    /// assert_eq!(RequestIds::from_context(&Context::new()), None);
    /// ```
    pub fn from_context(cx: &Context) -> Option<&Self> {
        match cx.get::<ReceivedRequest>() {
            Some(received) => Some(&received.ids),
            None => cx.get::<Self>(),
        }
    }

    /// The ids of the current context, if a server layer stored some.
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
