//! Flow control over NATS: where each side says what (the windows themselves are
//! `rpc::flow`'s).
//!
//! A caller grants its stream's window in the request's [`WINDOW_HEADER`]; a worker that sees
//! none is talking to a caller older than flow control and refuses the request, saying so. The
//! caller grants more on [`grant_subject`] of the worker's watch subject (the reply subject of
//! every reply), as a `window` frame whose u64 is the total granted since the stream began, so
//! that a grant NATS loses is made good by the next one (the caller repeats its last grant at
//! each heartbeat).

/// The request header carrying the caller's window, in bytes.
pub(super) const WINDOW_HEADER: &str = "tokentrace-window";

/// Where a caller grants a stream's window: a token below the stream's watch subject, which a
/// worker that predates flow control does not subscribe to (it would take a grant for a cancel).
pub(super) fn grant_subject(watch: &str) -> String {
    format!("{watch}.window")
}
