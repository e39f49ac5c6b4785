//! W3C Baggage: a strict parser and writer, and its place in the OpenTelemetry `Context`.
//!
//! Inbound, the list-members that parse and fit the limits are kept in order, as received; the
//! request's `Context` gets them as an `opentelemetry::baggage::Baggage` for user code, and
//! remembers the header text. Outbound, while the context's `Baggage` is still the one received,
//! that text is written back byte for byte (repeated keys, properties and all); once user code
//! replaced it, the new `Baggage` is written.

mod context;
mod list;
mod recorded;
#[cfg(test)]
mod tests;

pub use context::{extract_baggage, inject_baggage};
pub use list::{format_baggage, BaggageList, Member, MAX_BAGGAGE_BYTES, MAX_BAGGAGE_MEMBERS};
pub use recorded::{RecordedBaggage, MAX_RECORDED_BAGGAGE_KEYS, MAX_RECORDED_BAGGAGE_VALUE_BYTES};
