//! The W3C `tracestate` header: vendor entries travelling with the trace.

use std::borrow::Cow;
use std::fmt;

use opentelemetry::trace::TraceState as OtelTraceState;

/// Most list members a `tracestate` may carry; more discards the whole header.
///
/// ```
/// use tokentrace::propagation::{TraceState, MAX_MEMBERS};
///
/// let members = |n: usize| (0..n).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
/// assert_eq!(TraceState::from_headers([members(MAX_MEMBERS).as_bytes()]).unwrap().len(), 32);
/// assert!(TraceState::from_headers([members(MAX_MEMBERS + 1).as_bytes()]).is_err());
/// ```
pub const MAX_MEMBERS: usize = 32;
/// Length we keep a sent `tracestate` within (the spec asks vendors to propagate at least this).
///
/// ```
/// use http::HeaderMap;
/// use tokentrace::propagation::{inject_trace, TraceParent, TraceState, MAX_HEADER_LEN};
///
/// // 20 members of 40 characters: 819 characters received, fewer than 512 sent on.
/// let received = (0..20).map(|i| format!("vendor{i:02}={}", "x".repeat(31))).collect::<Vec<_>>().join(",");
/// let state = TraceState::from_headers([received.as_bytes()]).unwrap();
/// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap();
/// let mut headers = HeaderMap::new();
/// inject_trace(&mut headers, &tp, &state);
/// assert!(headers["tracestate"].len() <= MAX_HEADER_LEN);
/// assert!(headers["tracestate"].to_str().unwrap().starts_with("vendor00="));
/// ```
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
/// assert_eq!(TraceState::from_headers([&b"a=1,@b=2"[..]]), Err(TraceStateError::Key));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceStateError {
    /// A list member has no `=`, an empty or over-long key, or a character keys may not hold.
    Key,
    /// A value is empty, over 256 characters, ends in a space or holds `,`, `=` or a
    /// non-printable character.
    Value,
    /// More than 32 list members.
    TooManyMembers,
}

impl fmt::Display for TraceStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Key => "tracestate has a member with an invalid key",
            Self::Value => "tracestate has a member with an invalid value",
            Self::TooManyMembers => "tracestate has more than 32 members",
        })
    }
}

impl std::error::Error for TraceStateError {}

impl TraceState {
    /// The empty state (nothing is sent for it).
    ///
    /// ```
    /// use tokentrace::propagation::TraceState;
    /// assert!(TraceState::EMPTY.is_empty());
    /// assert_eq!(TraceState::default(), TraceState::EMPTY);
    /// ```
    pub const EMPTY: TraceState = TraceState { header: String::new(), members: 0 };

    /// Combines the `tracestate` header values of one request, in order.
    ///
    /// Whitespace around members is trimmed; empty members and headers are ignored; a key that
    /// appears again (in the same header or a later one) is dropped there, the first member with
    /// it kept. Any invalid member or more than 32 members is an error: the caller then drops the
    /// whole state.
    ///
    /// ```
    /// use tokentrace::propagation::TraceState;
    ///
    /// let state = TraceState::from_headers([&b"a=1,,"[..], b" b=2 ,a=3"])?;
    /// assert_eq!(state.header(), "a=1,b=2"); // the later `a` is dropped
    /// assert!(TraceState::from_headers([&b"@foo=1"[..]]).is_err());
    /// # Ok::<(), tokentrace::propagation::TraceStateError>(())
    /// ```
    pub fn from_headers<'a, I>(values: I) -> Result<Self, TraceStateError>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        // One pass per byte, validating as it goes. Keys seen so far are remembered as
        // (cheap fingerprint, position in `header`), so the duplicate check compares integers
        // and bytes only when two fingerprints agree.
        let mut values = values.into_iter().peekable();
        if values.peek().is_none() {
            // No header at all, the common case: skip setting up the key table.
            return Ok(Self::EMPTY);
        }
        // Fingerprints apart from positions, so "any equal fingerprint?" is a plain
        // (vectorisable) search over 32-bit integers.
        let mut fingerprints = [0u32; MAX_MEMBERS];
        let mut spans = [(0u16, 0u16); MAX_MEMBERS];
        let mut members = 0usize;
        let mut header: Vec<u8> = Vec::new();
        for value in values {
            let mut rest = value;
            while let Some((key_len, member, after)) = next_member(rest)? {
                rest = after;
                let key = &member[..key_len];
                let fingerprint = fingerprint(key);
                let duplicate = fingerprints[..members].contains(&fingerprint)
                    && fingerprints[..members].iter().zip(&spans[..members]).any(|(&f, &(start, len))| {
                        f == fingerprint
                            && &header[usize::from(start)..usize::from(start) + usize::from(len)] == key
                    });
                if duplicate {
                    // Level 2: a repeated key is discarded, the list kept (the first one wins).
                    continue;
                }
                if members == MAX_MEMBERS {
                    return Err(TraceStateError::TooManyMembers);
                }
                if header.is_empty() {
                    // One allocation in the usual case of a single tracestate header.
                    header.reserve(value.len());
                } else {
                    header.push(b',');
                }
                // 32 members of at most 514 bytes each: offsets fit in u16.
                fingerprints[members] = fingerprint;
                spans[members] = (header.len() as u16, key_len as u16);
                members += 1;
                header.extend_from_slice(member);
            }
        }
        // Every byte kept was checked to be printable ASCII.
        let header = String::from_utf8(header).map_err(|_| TraceStateError::Value)?;
        Ok(Self { header, members: members as u8 })
    }

    /// The state as a header value (`""` when empty).
    ///
    /// ```
    /// use tokentrace::propagation::TraceState;
    ///
    /// let state = TraceState::from_headers([&b"congo=t61rcWkgMzE"[..], b"rojo=00f067aa0ba902b7"]).unwrap();
    /// assert_eq!(state.header(), "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"); // one header, in order
    /// assert_eq!(TraceState::EMPTY.header(), "");
    /// ```
    pub fn header(&self) -> &str {
        &self.header
    }

    /// Number of list members.
    ///
    /// ```
    /// use tokentrace::propagation::TraceState;
    /// let state = TraceState::from_headers([&b"a=1, ,b=2"[..]]).unwrap();
    /// assert_eq!(state.len(), 2); // empty members are not counted
    /// ```
    pub fn len(&self) -> usize {
        usize::from(self.members)
    }

    /// Whether there are no members (then no `tracestate` header is sent).
    ///
    /// ```
    /// use tokentrace::propagation::TraceState;
    /// assert!(TraceState::from_headers([&b" , "[..]]).unwrap().is_empty());
    /// assert!(!TraceState::from_headers([&b"a=1"[..]]).unwrap().is_empty());
    /// ```
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
        self.members().filter_map(key_value)
    }

    /// The members of the header, which is kept canonical (`key=value` joined by single
    /// commas). A plain byte search rather than `str::split`, whose searcher is set up per
    /// call: `to_otel` walks every member on each extract into a `Context`, which the
    /// `propagation` budget holds to the SDK's speed.
    fn members(&self) -> impl Iterator<Item = &str> {
        let header = self.header.as_str();
        let mut start = 0;
        std::iter::from_fn(move || {
            let rest = header.get(start..).filter(|rest| !rest.is_empty())?;
            let len = rest.bytes().position(|b| b == b',').unwrap_or(rest.len());
            start += len + 1;
            Some(&rest[..len])
        })
    }

    /// The value for `key`, if present.
    ///
    /// ```
    /// use tokentrace::propagation::TraceState;
    ///
    /// let state = TraceState::from_headers([&b"tenant@vendor=x,congo=t61rcWkgMzE"[..]]).unwrap();
    /// assert_eq!(state.get("tenant@vendor"), Some("x"));
    /// assert_eq!(state.get("rojo"), None);
    /// ```
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
        match next_member(member.as_bytes())? {
            Some((key_len, whole, rest))
                if key_len == key.len() && whole.len() == member.len() && rest.is_empty() => {}
            _ => return Err(TraceStateError::Key),
        }
        let mut entries: Vec<&str> = Vec::with_capacity(self.len() + 1);
        entries.push(&member);
        entries.extend(self.members().filter(|m| key_value(m).map(|(k, _)| k) != Some(key)));
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
        let entries = self.members().collect();
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
        if *state == OtelTraceState::NONE {
            return Ok(Self::EMPTY);
        }
        let header = state.header();
        Self::from_headers([header.as_bytes()])
    }
}

/// A member's key and value (the first `=` divides them; keys hold none).
fn key_value(member: &str) -> Option<(&str, &str)> {
    let equals = member.bytes().position(|b| b == b'=')?;
    Some((&member[..equals], &member[equals + 1..]))
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

/// A cheap fingerprint of a key: its first and last eight bytes and its length, mixed by one
/// multiplication. Distinct keys that share a prefix and suffix pattern (`vendor12`,
/// `vendor22`) still get distinct fingerprints, so equal bytes are compared only rarely.
fn fingerprint(key: &[u8]) -> u32 {
    // Fixed-size loads for keys of 8 bytes and more (no `memcpy` call); shorter keys fold.
    let (head, tail) = match (key.first_chunk::<8>(), key.last_chunk::<8>()) {
        (Some(head), Some(tail)) => (u64::from_le_bytes(*head), u64::from_le_bytes(*tail)),
        _ => {
            let short = key.iter().fold(0u64, |word, &b| (word << 8) | u64::from(b));
            (short, short)
        }
    };
    let mixed = (head ^ tail.rotate_left(29) ^ key.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 32) as u32
}

/// Reads the next list member from a header value: skips whitespace and empty members, then
/// validates `key=value` up to the next `,`.
///
/// Returns `(key length, member without surrounding whitespace, rest from the next `,`)`, or
/// `None` when only whitespace and commas are left. Written with slice searches rather than
/// index loops: they compile to tight scans without a bounds check per byte.
#[allow(clippy::type_complexity)]
fn next_member(value: &[u8]) -> Result<Option<(usize, &[u8], &[u8])>, TraceStateError> {
    let Some(start) = value.iter().position(|b| !matches!(b, b' ' | b'\t' | b',')) else {
        return Ok(None);
    };
    let member = &value[start..];
    if !KEY_FIRST[usize::from(member[0])] {
        return Err(TraceStateError::Key);
    }
    let key_len = 1 + member[1..].iter().position(|&b| !KEY_REST[usize::from(b)]).unwrap_or(member.len() - 1);
    if key_len > MAX_KEY_LEN || member.get(key_len) != Some(&b'=') {
        return Err(TraceStateError::Key);
    }
    let after_key = &member[key_len + 1..];
    let scanned = after_key.iter().position(|&b| !VALUE_CHARS[usize::from(b)]).unwrap_or(after_key.len());
    // Trailing spaces belong to the whitespace around the member, so a value never ends in one.
    let value_len = after_key[..scanned].iter().rposition(|&b| b != b' ').map_or(0, |last| last + 1);
    let after_value = &after_key[scanned..];
    let rest = &after_value
        [after_value.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(after_value.len())..];
    if rest.first().is_some_and(|&b| b != b',') {
        return Err(TraceStateError::Value);
    }
    if value_len == 0 || value_len > MAX_VALUE_LEN {
        return Err(TraceStateError::Value);
    }
    Ok(Some((key_len, &member[..key_len + 1 + value_len], rest)))
}

/// Value characters: 0x20–0x7e except `,` and `=`.
const VALUE_CHARS: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0x20;
    while b <= 0x7e {
        table[b] = b != b',' as usize && b != b'=' as usize;
        b += 1;
    }
    table
};
