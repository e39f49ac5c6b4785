//! W3C Trace Context and request ids: parsed strictly, written once against [`Carrier`].
//!
//! - [`TraceParent`] and [`TraceState`]: Trace Context Level 2, exact and allocation-free to
//!   parse (a non-empty `tracestate` costs one string).
//! - [`RemoteContext::extract`] / [`inject_trace`] / [`inject_context`]: what the server and
//!   client layers call, over any [`Carrier`] (HTTP headers, RPC metadata).
//! - [`RequestId`] (`x-request-id`) and [`RequestUuid`] (`request-id`): untrusted input is
//!   replaced, never logged.
//! - [`BaggageList`], [`extract_baggage`] / [`inject_baggage`]: W3C Baggage, into and out of
//!   the `Context` as OpenTelemetry `Baggage`, forwarded byte for byte while unchanged.
//! - [`Propagators`]: which of the two run (`OTEL_PROPAGATORS`), also as an OpenTelemetry
//!   `TextMapPropagator`.
//!
//! ```
//! use http::HeaderMap;
//! use tokentrace::propagation::{inject_trace, RemoteContext};
//! use opentelemetry::trace::SpanId;
//!
//! let mut inbound = HeaderMap::new();
//! inbound.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
//! let remote = RemoteContext::extract(&inbound).unwrap();
//!
//! // A client span of ours, child of the caller's:
//! let outbound_parent = remote.traceparent.with_parent_id(SpanId::from(0x1234u64));
//! let mut outbound = HeaderMap::new();
//! inject_trace(&mut outbound, &outbound_parent, &remote.tracestate);
//! assert_eq!(outbound["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000001234-01");
//! ```

mod baggage;
mod carrier;
mod context;
mod hex;
pub mod names;
mod propagator;
mod received;
mod request_id;
mod request_ids;
mod trace_state;
mod traceparent;

pub use baggage::{
    extract_baggage, format_baggage, inject_baggage, BaggageList, Member, RecordedBaggage, MAX_BAGGAGE_BYTES,
    MAX_BAGGAGE_MEMBERS, MAX_RECORDED_BAGGAGE_KEYS, MAX_RECORDED_BAGGAGE_VALUE_BYTES,
};
pub use carrier::Carrier;
pub(crate) use context::mark_random_trace;
pub use context::{inject_trace, RemoteContext};
#[cfg(feature = "telemetry")]
pub(crate) use hex::percent_decode;
pub(crate) use propagator::Inbound;
pub use propagator::{inject_context, Propagators, UnknownPropagator};
#[cfg(feature = "metrics")]
pub(crate) use received::request_endpoint;
pub(crate) use received::{request_arrival, with_received_request};
pub use request_id::{RequestId, RequestIdError, RequestUuid, RequestUuidError, MAX_REQUEST_ID_LEN};
pub use request_ids::RequestIds;
pub use trace_state::{TraceState, TraceStateError, MAX_HEADER_LEN, MAX_MEMBERS};
pub use traceparent::{TraceParent, TraceParentError, RANDOM_FLAG};
