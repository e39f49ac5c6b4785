//! The W3C `traceparent` header, parsed strictly and without allocation.

use std::fmt;
use std::str::FromStr;

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState as OtelTraceState};

use super::hex;
use super::trace_state::TraceState;

/// Length of a version-`00` `traceparent`: `vv-<32 hex>-<16 hex>-ff`.
const LEN: usize = 55;

/// A parsed W3C Trace Context (Level 2) `traceparent`.
///
/// Parsing is strict: exact field widths, lowercase hex only, version `ff` refused, version `00`
/// with exactly four fields, a higher version with optional extra `-`-separated fields after the
/// flags, all-zero trace or parent ids refused. Spaces and tabs around the value are trimmed.
/// Only the flags this version knows are kept (`sampled` = `0x01`, `random` = `0x02`); the
/// others must not be propagated.
///
/// Parsing allocates nothing.
///
/// ```
/// use tokentrace::propagation::TraceParent;
///
/// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03".parse()?;
/// assert!(tp.is_sampled());
/// assert!(tp.is_random());
/// assert_eq!(tp.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03");
/// assert!("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".parse::<TraceParent>().is_err());
/// # Ok::<(), tokentrace::propagation::TraceParentError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceParent {
    version: u8,
    trace_id: TraceId,
    parent_id: SpanId,
    flags: TraceFlags,
}

/// Why a `traceparent` value was refused. A refused value means: start a new trace.
///
/// ```
/// use tokentrace::propagation::{TraceParent, TraceParentError};
///
/// let err = "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse::<TraceParent>();
/// assert_eq!(err, Err(TraceParentError::Version));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceParentError {
    /// Shorter than 55 characters, or longer for version `00`.
    Length,
    /// Not two lowercase hex digits, or the forbidden version `ff`.
    Version,
    /// A `-` is missing where the format puts one.
    Delimiter,
    /// The trace id is not 32 lowercase hex digits, or is all zeros.
    TraceId,
    /// The parent id is not 16 lowercase hex digits, or is all zeros.
    ParentId,
    /// The flags are not two lowercase hex digits.
    Flags,
    /// What follows the flags of a future version is not `-` plus visible characters.
    Trailing,
}

impl fmt::Display for TraceParentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Length => "traceparent has the wrong length",
            Self::Version => "traceparent version is not two lowercase hex digits other than ff",
            Self::Delimiter => "traceparent fields are not separated by '-'",
            Self::TraceId => "traceparent trace-id is not 32 lowercase hex digits, or is all zeros",
            Self::ParentId => "traceparent parent-id is not 16 lowercase hex digits, or is all zeros",
            Self::Flags => "traceparent trace-flags are not two lowercase hex digits",
            Self::Trailing => "traceparent has invalid data after the trace-flags",
        })
    }
}

impl std::error::Error for TraceParentError {}

/// Flag bits defined by Trace Context Level 2.
const KNOWN_FLAGS: u8 = 0x01 | 0x02;

/// The `random` trace flag (Level 2): the trace id's rightmost 7 bytes are random.
///
/// ```
/// use opentelemetry::trace::TraceFlags;
/// use tokentrace::propagation::{TraceParent, RANDOM_FLAG};
///
/// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03".parse().unwrap();
/// assert_eq!(tp.flags().to_u8() & RANDOM_FLAG, RANDOM_FLAG);
/// assert_eq!(tp.flags() & TraceFlags::SAMPLED, TraceFlags::SAMPLED);
/// ```
pub const RANDOM_FLAG: u8 = 0x02;

impl TraceParent {
    /// A version-`00` traceparent. Unknown flag bits are cleared.
    ///
    /// ```
    /// use opentelemetry::trace::{SpanId, TraceFlags, TraceId};
    /// use tokentrace::propagation::TraceParent;
    ///
    /// let tp = TraceParent::new(TraceId::from(1u128), SpanId::from(2u64), TraceFlags::SAMPLED);
    /// assert_eq!(tp.to_string(), "00-00000000000000000000000000000001-0000000000000002-01");
    /// ```
    pub fn new(trace_id: TraceId, parent_id: SpanId, flags: TraceFlags) -> Self {
        Self { version: 0, trace_id, parent_id, flags: TraceFlags::new(flags.to_u8() & KNOWN_FLAGS) }
    }

    /// Parses a header value given as bytes (a non-ASCII value is simply invalid).
    ///
    /// ```
    /// use tokentrace::propagation::TraceParent;
    ///
    /// let tp = TraceParent::parse(b" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\t")?;
    /// assert!(!tp.is_sampled());
    /// # Ok::<(), tokentrace::propagation::TraceParentError>(())
    /// ```
    pub fn parse(value: &[u8]) -> Result<Self, TraceParentError> {
        let value = trim_ows(value);
        if value.len() < LEN {
            return Err(TraceParentError::Length);
        }
        let version = hex::decode::<1>(&value[0..2]).ok_or(TraceParentError::Version)?[0];
        if version == 0xff {
            return Err(TraceParentError::Version);
        }
        if version == 0 && value.len() != LEN {
            return Err(TraceParentError::Length);
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return Err(TraceParentError::Delimiter);
        }
        let trace_id =
            hex::decode_u128(&value[3..35]).filter(|id| *id != 0).ok_or(TraceParentError::TraceId)?;
        let parent_id =
            hex::decode_u64(&value[36..52]).filter(|id| *id != 0).ok_or(TraceParentError::ParentId)?;
        let flags = hex::decode::<1>(&value[53..55]).ok_or(TraceParentError::Flags)?[0];
        if value.len() > LEN {
            // A future version may append fields: they must start with '-'. A comma (two
            // headers joined) or whitespace makes the value invalid.
            let rest = &value[LEN..];
            if rest[0] != b'-' || !rest.iter().all(|&b| b.is_ascii_graphic() && b != b',') {
                return Err(TraceParentError::Trailing);
            }
        }
        Ok(Self {
            version,
            trace_id: TraceId::from(trace_id),
            parent_id: SpanId::from(parent_id),
            flags: TraceFlags::new(flags & KNOWN_FLAGS),
        })
    }

    /// The version it was received with (`0` for those we create).
    ///
    /// ```
    /// use tokentrace::propagation::TraceParent;
    ///
    /// // A later version is accepted (its extra fields ignored); what we send on is version 00.
    /// let tp: TraceParent = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra".parse().unwrap();
    /// assert_eq!(tp.version(), 1);
    /// assert_eq!(tp.with_parent_id(tp.parent_id()).version(), 0);
    /// ```
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The trace id (never all zeros).
    ///
    /// ```
    /// use tokentrace::propagation::TraceParent;
    /// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap();
    /// assert_eq!(tp.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    /// ```
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The parent (span) id (never all zeros).
    ///
    /// ```
    /// use tokentrace::propagation::TraceParent;
    /// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap();
    /// assert_eq!(tp.parent_id().to_string(), "00f067aa0ba902b7");
    /// ```
    pub fn parent_id(&self) -> SpanId {
        self.parent_id
    }

    /// The known trace flags (`sampled`, `random`).
    ///
    /// ```
    /// use opentelemetry::trace::TraceFlags;
    /// use tokentrace::propagation::TraceParent;
    ///
    /// // Unknown flag bits are not kept (and so never sent on).
    /// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff".parse().unwrap();
    /// assert_eq!(tp.flags(), TraceFlags::new(0x03));
    /// ```
    pub fn flags(&self) -> TraceFlags {
        self.flags
    }

    /// Whether the caller sampled this trace.
    ///
    /// ```
    /// use tokentrace::propagation::TraceParent;
    /// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap();
    /// assert!(tp.is_sampled());
    /// ```
    pub fn is_sampled(&self) -> bool {
        self.flags.is_sampled()
    }

    /// Whether the caller declares the trace id random (Level 2 `random` flag).
    ///
    /// ```
    /// use tokentrace::propagation::TraceParent;
    /// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03".parse().unwrap();
    /// assert!(tp.is_random() && tp.is_sampled());
    /// ```
    pub fn is_random(&self) -> bool {
        self.flags.to_u8() & RANDOM_FLAG != 0
    }

    /// The same trace context with another parent id: what a client injects after opening its
    /// own span. The result is version `00`, as the spec asks of anything we send.
    ///
    /// ```
    /// use opentelemetry::trace::SpanId;
    /// use tokentrace::propagation::TraceParent;
    ///
    /// let tp: TraceParent = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x".parse().unwrap();
    /// let child = tp.with_parent_id(SpanId::from(7u64));
    /// assert_eq!(child.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000007-01");
    /// ```
    pub fn with_parent_id(&self, parent_id: SpanId) -> Self {
        Self::new(self.trace_id, parent_id, self.flags)
    }

    /// The same trace context with the Level 2 `random` flag set.
    ///
    /// ```
    /// use tokentrace::propagation::TraceParent;
    ///
    /// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap();
    /// assert_eq!(tp.with_random_flag().to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03");
    /// ```
    pub fn with_random_flag(&self) -> Self {
        Self::new(self.trace_id, self.parent_id, TraceFlags::new(self.flags.to_u8() | RANDOM_FLAG))
    }

    /// The 55 ASCII bytes of the header value, built on the stack.
    ///
    /// ```
    /// use tokentrace::propagation::TraceParent;
    ///
    /// let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    /// let tp: TraceParent = text.parse().unwrap();
    /// assert_eq!(&tp.to_bytes()[..], text.as_bytes());
    /// ```
    pub fn to_bytes(&self) -> [u8; LEN] {
        let mut out = [b'-'; LEN];
        hex::encode(&[self.version], &mut out[0..2]);
        let trace_id = u128::from_be_bytes(self.trace_id.to_bytes());
        out[3..19].copy_from_slice(&hex::encode_u64((trace_id >> 64) as u64));
        out[19..35].copy_from_slice(&hex::encode_u64(trace_id as u64));
        out[36..52].copy_from_slice(&hex::encode_u64(u64::from_be_bytes(self.parent_id.to_bytes())));
        hex::encode(&[self.flags.to_u8()], &mut out[53..55]);
        out
    }

    /// The remote `SpanContext` this traceparent describes, carrying `state`.
    ///
    /// OpenTelemetry's `TraceState` checks keys by the older Level 1 vendor rules; a Level 2 key
    /// it refuses (`foo@@bar`, a system part over 14 characters) makes the conversion carry an
    /// empty state. tokentrace's own layers keep propagating the full [`TraceState`].
    ///
    /// ```
    /// use tokentrace::propagation::{TraceParent, TraceState};
    ///
    /// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap();
    /// let state = TraceState::from_headers([&b"congo=t61rcWkgMzE"[..]]).unwrap();
    /// let cx = tp.to_span_context(&state);
    /// assert!(cx.is_remote() && cx.is_sampled());
    /// assert_eq!(cx.trace_state().get("congo"), Some("t61rcWkgMzE"));
    /// assert_eq!(TraceParent::from_span_context(&cx), Some(tp));
    /// ```
    pub fn to_span_context(&self, state: &TraceState) -> SpanContext {
        self.span_context_with(state.to_otel().unwrap_or(OtelTraceState::NONE))
    }

    /// [`TraceParent::to_span_context`] with a state already converted.
    pub(crate) fn span_context_with(self, state: OtelTraceState) -> SpanContext {
        SpanContext::new(self.trace_id, self.parent_id, self.flags, true, state)
    }

    /// The traceparent to send for a span context; `None` when the context is invalid.
    ///
    /// ```
    /// use opentelemetry::trace::SpanContext;
    /// use tokentrace::propagation::TraceParent;
    /// assert_eq!(TraceParent::from_span_context(&SpanContext::empty_context()), None);
    /// ```
    pub fn from_span_context(cx: &SpanContext) -> Option<Self> {
        cx.is_valid().then(|| Self::new(cx.trace_id(), cx.span_id(), cx.trace_flags()))
    }
}

impl FromStr for TraceParent {
    type Err = TraceParentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes();
        // Only ASCII hex digits and '-' are ever written into the buffer.
        f.write_str(std::str::from_utf8(&bytes).map_err(|_| fmt::Error)?)
    }
}

/// Trims the optional whitespace (space, horizontal tab) HTTP allows around a value.
pub(crate) fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}
