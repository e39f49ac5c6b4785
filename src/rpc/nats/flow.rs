//! What a caller tells a worker about a stream after sending its request: flow control (the
//! windows themselves are `rpc::flow`'s), and keep decisions.
//!
//! A caller grants its stream's window in the request's [`WINDOW_HEADER`]; a worker that sees
//! none is talking to a caller older than flow control and refuses the request, saying so. The
//! caller grants more on [`grant_subject`] of the worker's watch subject (the reply subject of
//! every reply), as a `window` frame whose u64 is the total granted since the stream began, so
//! that a grant NATS loses is made good by the next one (the caller repeats its last grant at
//! each heartbeat).
//!
//! A caller whose keep rules keep a trace sends a `kept` frame on [`kept_subject`] of the watch
//! subject of each stream it opened for that trace, and the worker keeps its part too.

/// The request header carrying the caller's window, in bytes.
pub(super) const WINDOW_HEADER: &str = "tokentrace-window";

/// Where a caller grants a stream's window: a token below the stream's watch subject, which a
/// worker that predates flow control does not subscribe to (it would take a grant for a cancel).
pub(super) fn grant_subject(watch: &str) -> String {
    format!("{watch}.window")
}

/// Where a caller says it kept the trace of a stream it opened.
pub(super) fn kept_subject(watch: &str) -> String {
    format!("{watch}.kept")
}

/// What a worker subscribes to for both: every token below any of its watch subjects.
pub(super) fn caller_subjects(watch_prefix: &str) -> String {
    format!("{watch_prefix}.*.*")
}
