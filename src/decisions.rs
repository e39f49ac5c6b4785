//! Keep decisions that travel between processes, both ways along the calls of a trace:
//!
//! - **up**: a worker whose keep rules kept a request's trace says so at the end of its reply,
//!   and its caller keeps its own part too, whatever its own rules say;
//! - **down**: a caller that keeps a trace tells every peer it called for that trace (a notice
//!   the transport sends after the call); a peer keeps its part if it still holds it (in its
//!   grace buffer, or not yet ended). A caller announces it will send notices with
//!   [`WILL_TELL`] in the request's metadata or headers: only such a request's part waits for
//!   one after it ended, so a caller without keep rules costs its callee nothing.
//!
//! Global, as the tracer provider is: the transports are built without a handle to the
//! telemetry that `telemetry::init` sets up, and the two meet only at a trace id. The keep
//! rules' span processor implements [`Decisions`]; with no keep rules nothing is installed and
//! the transports skip all of this at the cost of one read lock per call.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use opentelemetry::trace::TraceId;

use crate::propagation::{names::TRACEPARENT, Carrier, TraceParent};

/// The metadata entry (or header) by which a caller with keep rules announces that it will
/// tell the callee if it keeps the request's trace.
pub(crate) const WILL_TELL: &str = "tokentrace-keep";
/// Its value.
pub(crate) const WILL_TELL_VALUE: &str = "notify";

/// Tells one peer this process called that the trace it served was kept, by a rule: a
/// transport makes one per connection (TCP) or per worker (NATS), and sends the notice
/// without waiting (it may run inside a span's end).
#[derive(Clone)]
pub(crate) struct Callee(#[cfg_attr(not(feature = "telemetry"), allow(dead_code))] Arc<Tell>);

type Tell = dyn Fn(TraceId, &str) + Send + Sync;

impl Callee {
    pub(crate) fn new(tell: impl Fn(TraceId, &str) + Send + Sync + 'static) -> Self {
        Self(Arc::new(tell))
    }

    /// Tells the peer that `trace_id` was kept by `rule`.
    #[cfg_attr(not(feature = "telemetry"), allow(dead_code))]
    pub(crate) fn tell(&self, trace_id: TraceId, rule: &str) {
        (self.0)(trace_id, rule);
    }

    /// Whether both tell the same peer.
    #[cfg_attr(not(feature = "telemetry"), allow(dead_code))]
    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Callee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Callee")
    }
}

/// What the keep rules of a process decide, and hear from its peers.
pub(crate) trait Decisions: Send + Sync + fmt::Debug {
    /// The rule that kept `trace_id` here, if one did.
    fn kept(&self, trace_id: TraceId) -> Option<Arc<str>>;
    /// A peer (caller or callee) kept `trace_id` by `rule`: keep this process's part too.
    fn told(&self, trace_id: TraceId, rule: &str);
    /// This process called `callee` for `trace_id`: tell it if the trace is kept here.
    fn calling(&self, trace_id: TraceId, callee: &Callee);
    /// The caller of this process's part of `trace_id` will tell if it keeps the trace: hold
    /// the part a grace time after it ends.
    fn caller_will_tell(&self, trace_id: TraceId);
}

static INSTALLED: RwLock<Option<Arc<dyn Decisions>>> = RwLock::new(None);

fn installed() -> Option<Arc<dyn Decisions>> {
    INSTALLED.read().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Makes `decisions` the process's (by `telemetry::init`).
#[cfg_attr(not(feature = "telemetry"), allow(dead_code))]
pub(crate) fn install(decisions: Arc<dyn Decisions>) {
    *INSTALLED.write().unwrap_or_else(PoisonError::into_inner) = Some(decisions);
}

/// Whether decisions are installed: the transports skip their work when none are.
pub(crate) fn active() -> bool {
    INSTALLED.read().unwrap_or_else(PoisonError::into_inner).is_some()
}

/// The trace a request's metadata (or headers) continues, if it carries a valid `traceparent`
/// and decisions are installed to carry (else the parse is skipped: it is on every call).
pub(crate) fn trace_of<C: Carrier + ?Sized>(carrier: &C) -> Option<TraceId> {
    if !active() {
        return None;
    }
    let traceparent = TraceParent::parse(carrier.get_single(TRACEPARENT)?).ok()?;
    Some(traceparent.trace_id())
}

/// The trace of a request this process serves (as [`trace_of`]), noting whether its caller
/// announced it will tell its decision.
pub(crate) fn served<C: Carrier + ?Sized>(carrier: &C) -> Option<TraceId> {
    let trace_id = trace_of(carrier)?;
    serving(trace_id, carrier);
    Some(trace_id)
}

/// This process serves its part of `trace_id` for a request whose metadata (or headers) is
/// `carrier`: notes whether its caller announced it will tell its decision.
pub(crate) fn serving<C: Carrier + ?Sized>(trace_id: TraceId, carrier: &C) {
    if carrier.get_single(WILL_TELL) == Some(WILL_TELL_VALUE.as_bytes()) {
        if let Some(decisions) = installed() {
            decisions.caller_will_tell(trace_id);
        }
    }
}

/// The rule that kept `trace_id` here, if the installed keep rules kept it.
pub(crate) fn kept_here(trace_id: Option<TraceId>) -> Option<Arc<str>> {
    installed()?.kept(trace_id?)
}

/// A peer kept `trace_id` by `rule`: tell the installed keep rules, if any.
pub(crate) fn kept_by_peer(trace_id: Option<TraceId>, rule: &str) {
    if let (Some(decisions), Some(trace_id)) = (installed(), trace_id) {
        decisions.told(trace_id, rule);
    }
}

/// This process calls `callee` for `trace_id`: it hears if the trace is kept here.
pub(crate) fn calling(trace_id: Option<TraceId>, callee: &Callee) {
    if let (Some(decisions), Some(trace_id)) = (installed(), trace_id) {
        decisions.calling(trace_id, callee);
    }
}
