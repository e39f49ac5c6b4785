//! The caller's trace context as received, and the injection of a span's: written once
//! against [`Carrier`].

use opentelemetry::trace::{TraceContextExt, TraceId, TraceState as OtelTraceState};
use opentelemetry::Context;

use super::carrier::Carrier;
use super::names::{TRACEPARENT, TRACESTATE};
use super::trace_state::TraceState;
use super::traceparent::TraceParent;

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
    /// assert_eq!(cx.get::<RequestIds>(), Some(&ids)); // what `cx` held is kept
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
