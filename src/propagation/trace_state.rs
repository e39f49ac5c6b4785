//! The W3C `tracestate` header: vendor entries travelling with the trace.

use std::borrow::Cow;
use std::fmt;

use opentelemetry::trace::TraceState as OtelTraceState;

use super::traceparent::trim_ows;

/// Most list members a `tracestate` may carry; more discards the whole header.
pub const MAX_MEMBERS: usize = 32;
/// Length we keep a sent `tracestate` within (the spec asks vendors to propagate at least this).
pub const MAX_HEADER_LEN: usize = 512;
/// Entries longer than this are the first dropped when a sent header must shrink.
const LONG_MEMBER: usize = 128;
const MAX_KEY_LEN: usize = 256;
const MAX_VALUE_LEN: usize = 256;

/// A validated `tracestate`: its members in order, normalised to `k1=v1,k2=v2`.
///
/// Held as one string, so a 32-member state costs one allocation, and an empty one none.
///
/// ```
/// use tokentrace::propagation::TraceState;
///
/// let state = TraceState::from_headers([&b"rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"[..], b""])?;
/// assert_eq!(state.len(), 2);
/// assert_eq!(state.get("congo"), Some("t61rcWkgMzE"));
/// assert_eq!(state.header(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
///
/// let state = state.with_entry("ours", "1")?;
/// assert_eq!(state.header(), "ours=1,rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
/// # Ok::<(), tokentrace::propagation::TraceStateError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TraceState {
    header: String,
    members: u8,
}

/// Why a `tracestate` was discarded (the whole header goes, per the spec).
///
/// ```
/// use tokentrace::propagation::{TraceState, TraceStateError};
///
/// assert_eq!(TraceState::from_headers([&b"a=1,a=2"[..]]), Err(TraceStateError::DuplicateKey));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceStateError {
    /// A list member has no `=`, an empty or over-long key, or a character keys may not hold.
    Key,
    /// A value is empty, over 256 characters, ends in a space or holds `,`, `=` or a
    /// non-printable character.
    Value,
    /// The same key appears twice.
    DuplicateKey,
    /// More than 32 list members.
    TooManyMembers,
}

impl fmt::Display for TraceStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Key => "tracestate has a member with an invalid key",
            Self::Value => "tracestate has a member with an invalid value",
            Self::DuplicateKey => "tracestate has a duplicated key",
            Self::TooManyMembers => "tracestate has more than 32 members",
        })
    }
}

impl std::error::Error for TraceStateError {}

impl TraceState {
    /// The empty state (nothing is sent for it).
    pub const EMPTY: TraceState = TraceState { header: String::new(), members: 0 };

    /// Combines the `tracestate` header values of one request, in order.
    ///
    /// Whitespace around members is trimmed; empty members and headers are ignored. Any
    /// invalid member, a duplicated key or more than 32 members is an error: the caller then
    /// drops the whole state.
    ///
    /// ```
    /// use tokentrace::propagation::TraceState;
    ///
    /// let state = TraceState::from_headers([&b"a=1,,"[..], b" b=2 "])?;
    /// assert_eq!(state.header(), "a=1,b=2");
    /// assert!(TraceState::from_headers([&b"@foo=1"[..]]).is_err());
    /// # Ok::<(), tokentrace::propagation::TraceStateError>(())
    /// ```
    pub fn from_headers<'a, I>(values: I) -> Result<Self, TraceStateError>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        // Key spans of the members seen so far, to find duplicates without allocating.
        let mut keys: [&[u8]; MAX_MEMBERS] = [&[]; MAX_MEMBERS];
        let mut members = 0usize;
        let mut header = String::new();
        for value in values {
            for member in value.split(|&b| b == b',') {
                let member = trim_ows(member);
                if member.is_empty() {
                    continue;
                }
                let (key, _) = split_member(member)?;
                if members == MAX_MEMBERS {
                    return Err(TraceStateError::TooManyMembers);
                }
                if keys[..members].contains(&key) {
                    return Err(TraceStateError::DuplicateKey);
                }
                keys[members] = key;
                members += 1;
                if !header.is_empty() {
                    header.push(',');
                }
                // `split_member` accepted only ASCII, so this cannot fail.
                header.push_str(std::str::from_utf8(member).map_err(|_| TraceStateError::Value)?);
            }
        }
        Ok(Self { header, members: members as u8 })
    }

    /// The state as a header value (`""` when empty).
    pub fn header(&self) -> &str {
        &self.header
    }

    /// Number of list members.
    pub fn len(&self) -> usize {
        usize::from(self.members)
    }

    /// Whether there are no members (then no `tracestate` header is sent).
    pub fn is_empty(&self) -> bool {
        self.members == 0
    }

    /// The members in order, as `(key, value)`.
    ///
    /// ```
    /// use tokentrace::propagation::TraceState;
    ///
    /// let state = TraceState::from_headers([&b"a=1,b=2"[..]]).unwrap();
    /// assert_eq!(state.iter().collect::<Vec<_>>(), [("a", "1"), ("b", "2")]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.header.split(',').filter(|member| !member.is_empty()).filter_map(|member| member.split_once('='))
    }

    /// The value for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// A new state with `key=value` first and any older entry for `key` removed, kept within
    /// 32 members and 512 characters (entries over 128 characters go first, then from the end),
    /// as the spec asks of a vendor that updates the header.
    ///
    /// ```
    /// use tokentrace::propagation::TraceState;
    ///
    /// let state = TraceState::from_headers([&b"a=1,b=2"[..]]).unwrap().with_entry("b", "3").unwrap();
    /// assert_eq!(state.header(), "b=3,a=1");
    /// ```
    pub fn with_entry(&self, key: &str, value: &str) -> Result<Self, TraceStateError> {
        let mut member = String::with_capacity(key.len() + value.len() + 1);
        member.push_str(key);
        member.push('=');
        member.push_str(value);
        let (new_key, _) = split_member(member.as_bytes())?;
        if new_key.len() != key.len() {
            // The key itself contained '=': not a valid key.
            return Err(TraceStateError::Key);
        }
        let mut entries: Vec<&str> = Vec::with_capacity(self.len() + 1);
        entries.push(&member);
        entries.extend(
            self.header
                .split(',')
                .filter(|m| !m.is_empty() && m.split_once('=').map(|(k, _)| k) != Some(key)),
        );
        Ok(Self::from_entries(shrink_to_limits(entries)))
    }

    /// The state kept within 32 members and 512 characters by the spec's rule (entries over
    /// 128 characters first, then from the end): what is sent. Borrows when nothing is dropped.
    ///
    /// ```
    /// use tokentrace::propagation::TraceState;
    ///
    /// let big = "x".repeat(250);
    /// let header = format!("a=1,big1={big},big2={big},b=2");
    /// let state = TraceState::from_headers([header.as_bytes()]).unwrap();
    /// assert_eq!(state.within_limits().header(), "a=1,big1=".to_owned() + &big + ",b=2");
    /// ```
    pub fn within_limits(&self) -> Cow<'_, Self> {
        if self.header.len() <= MAX_HEADER_LEN && self.len() <= MAX_MEMBERS {
            return Cow::Borrowed(self);
        }
        let entries = self.header.split(',').filter(|m| !m.is_empty()).collect();
        Cow::Owned(Self::from_entries(shrink_to_limits(entries)))
    }

    fn from_entries(entries: Vec<&str>) -> Self {
        Self { header: entries.join(","), members: entries.len() as u8 }
    }

    /// Converts into OpenTelemetry's `TraceState`.
    ///
    /// `None` where OpenTelemetry's older key rules refuse a Level 2 key (for example
    /// `foo@@bar`).
    ///
    /// ```
    /// use tokentrace::propagation::TraceState;
    ///
    /// let state = TraceState::from_headers([&b"a=1,foo@@bar=2"[..]]).unwrap();
    /// assert!(state.to_otel().is_none());
    /// ```
    pub fn to_otel(&self) -> Option<OtelTraceState> {
        if self.is_empty() {
            return Some(OtelTraceState::NONE);
        }
        OtelTraceState::from_key_value(self.iter()).ok()
    }

    /// Validates OpenTelemetry's `TraceState` by the W3C rules (it checks values loosely).
    ///
    /// ```
    /// use opentelemetry::trace::TraceState as OtelTraceState;
    /// use tokentrace::propagation::TraceState;
    ///
    /// let otel = OtelTraceState::from_key_value([("a", "1")]).unwrap();
    /// assert_eq!(TraceState::from_otel(&otel).unwrap().header(), "a=1");
    /// ```
    pub fn from_otel(state: &OtelTraceState) -> Result<Self, TraceStateError> {
        let header = state.header();
        Self::from_headers([header.as_bytes()])
    }
}

/// Drops members until the header is within 32 members and 512 characters.
fn shrink_to_limits(mut entries: Vec<&str>) -> Vec<&str> {
    let total = |entries: &[&str]| -> usize {
        entries.iter().map(|m| m.len()).sum::<usize>() + entries.len().saturating_sub(1)
    };
    entries.truncate(MAX_MEMBERS);
    while total(&entries) > MAX_HEADER_LEN {
        match entries.iter().rposition(|m| m.len() > LONG_MEMBER) {
            Some(long) => {
                entries.remove(long);
            }
            None => {
                entries.pop();
            }
        }
    }
    entries
}

/// Byte classes for keys: first character, and the others.
const fn key_table(rest: bool) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = b'a';
    while b <= b'z' {
        table[b as usize] = true;
        b += 1;
    }
    let mut b = b'0';
    while b <= b'9' {
        table[b as usize] = true;
        b += 1;
    }
    if rest {
        table[b'_' as usize] = true;
        table[b'-' as usize] = true;
        table[b'*' as usize] = true;
        table[b'/' as usize] = true;
        table[b'@' as usize] = true;
    }
    table
}
const KEY_FIRST: [bool; 256] = key_table(false);
const KEY_REST: [bool; 256] = key_table(true);

/// Splits and validates one trimmed, non-empty list member.
fn split_member(member: &[u8]) -> Result<(&[u8], &[u8]), TraceStateError> {
    let eq = member.iter().position(|&b| b == b'=').ok_or(TraceStateError::Key)?;
    let (key, value) = (&member[..eq], &member[eq + 1..]);
    let valid_key = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && KEY_FIRST[key[0] as usize]
        && key[1..].iter().all(|&b| KEY_REST[b as usize]);
    if !valid_key {
        return Err(TraceStateError::Key);
    }
    let valid_value = !value.is_empty()
        && value.len() <= MAX_VALUE_LEN
        && value.last() != Some(&b' ')
        && value.iter().all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=');
    if !valid_value {
        return Err(TraceStateError::Value);
    }
    Ok((key, value))
}
