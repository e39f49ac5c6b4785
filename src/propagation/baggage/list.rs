//! The `baggage` header: a strict parser and a writer.

use std::borrow::Cow;

use opentelemetry::baggage::Baggage;
use opentelemetry::{Key, StringValue};

use crate::propagation::hex;

/// The most list-members a `baggage` header keeps (the spec's minimum to propagate).
///
/// ```
/// use tokentrace::propagation::{BaggageList, MAX_BAGGAGE_MEMBERS};
///
/// let header: Vec<String> = (0..70).map(|i| format!("k{i}=v")).collect();
/// let list = BaggageList::from_headers([header.join(",").as_bytes()]);
/// assert_eq!(list.len(), MAX_BAGGAGE_MEMBERS);
/// assert_eq!(list.dropped(), 6); // whole members, from the end
/// ```
pub const MAX_BAGGAGE_MEMBERS: usize = 64;

/// The longest `baggage` header kept or written, in bytes (the spec's minimum to propagate).
///
/// ```
/// use tokentrace::propagation::{BaggageList, MAX_BAGGAGE_BYTES};
///
/// let big = format!("a={},b=2", "x".repeat(MAX_BAGGAGE_BYTES));
/// let list = BaggageList::from_headers([big.as_bytes()]);
/// assert_eq!(list.header(), "b=2"); // the member that does not fit is dropped whole
/// ```
pub const MAX_BAGGAGE_BYTES: usize = 8192;

/// The list-members of inbound `baggage` headers that parse and fit the limits, in order.
///
/// A malformed member (not `key=value` with an RFC 7230 token key, a value of baggage octets
/// and well-formed `%XX` escapes, and properties of the same shape) is dropped alone; members
/// beyond [`MAX_BAGGAGE_MEMBERS`] or [`MAX_BAGGAGE_BYTES`] are dropped whole, never cut. Several
/// headers combine in order.
///
/// ```
/// use tokentrace::propagation::BaggageList;
///
/// let list = BaggageList::from_headers([&b"tenant=acme , lora=sql%20v2;ttl=60"[..], b"bad key=1,priority=high"]);
/// assert_eq!(list.header(), "tenant=acme , lora=sql%20v2;ttl=60,priority=high");
/// assert_eq!(list.dropped(), 1);
/// let members: Vec<_> = list.members().map(|m| (m.key(), m.value().into_owned(), m.properties())).collect();
/// assert_eq!(members, [
///     ("tenant", "acme".to_string(), ""),
///     ("lora", "sql v2".to_string(), "ttl=60"),
///     ("priority", "high".to_string(), ""),
/// ]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaggageList {
    header: String,
    len: usize,
    dropped: usize,
}

impl BaggageList {
    /// The header text, taken.
    pub(super) fn into_header(self) -> String {
        self.header
    }

    /// Parses the values of every `baggage` header, in order.
    ///
    /// ```
    /// use tokentrace::propagation::BaggageList;
    ///
    /// let list = BaggageList::from_headers([&b"a=1"[..], b"a=2"]);
    /// assert_eq!(list.header(), "a=1,a=2"); // a repeated key is kept, in order
    /// assert!(BaggageList::from_headers([&b""[..]]).is_empty());
    /// ```
    pub fn from_headers<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        Self::parse_with(values, |_| {})
    }

    /// Like [`BaggageList::from_headers`], handing each kept member to `kept` as it is parsed:
    /// one pass for the list and whatever is built from its members.
    pub(super) fn parse_with<'a>(
        values: impl IntoIterator<Item = &'a [u8]>,
        mut kept: impl FnMut(Member<'_>),
    ) -> Self {
        let mut list = Self::default();
        for value in values {
            list.push_header(value, &mut kept);
        }
        list
    }

    /// Appends the members of one header value. A value whose members are all kept is kept as
    /// received (with its inner whitespace), so an unchanged header forwards byte for byte.
    fn push_header(&mut self, value: &[u8], kept: &mut impl FnMut(Member<'_>)) {
        let value_start = self.header.len();
        let members_before = self.len;
        let mut intact = true;
        for raw in value.split(|&b| b == b',') {
            let raw = trim_ows(raw);
            let Some((text, member)) = Member::parse_bytes(raw) else {
                intact = false;
                // An empty member (`a=1,,b=2`) is no member at all: nothing is lost.
                self.dropped += usize::from(!raw.is_empty());
                continue;
            };
            let separator = usize::from(!self.header.is_empty());
            if self.len == MAX_BAGGAGE_MEMBERS
                || self.header.len() + separator + text.len() > MAX_BAGGAGE_BYTES
            {
                intact = false;
                self.dropped += 1;
                continue;
            }
            if separator == 1 {
                self.header.push(',');
            }
            self.header.push_str(text);
            self.len += 1;
            kept(member);
        }
        let whole = trim_ows(value);
        let separator = usize::from(value_start > 0);
        if intact && self.len > members_before && value_start + separator + whole.len() <= MAX_BAGGAGE_BYTES {
            // Every member kept and ASCII: the value, inner whitespace included, replaces them.
            self.header.truncate(value_start);
            if separator == 1 {
                self.header.push(',');
            }
            self.header.push_str(std::str::from_utf8(whole).unwrap_or_default());
        }
    }

    /// The header as it is forwarded: the kept members, as received.
    ///
    /// ```
    /// use tokentrace::propagation::BaggageList;
    /// assert_eq!(BaggageList::from_headers([&b"k=v;p"[..]]).header(), "k=v;p");
    /// ```
    pub fn header(&self) -> &str {
        &self.header
    }

    /// How many members were kept.
    ///
    /// ```
    /// use tokentrace::propagation::BaggageList;
    /// assert_eq!(BaggageList::from_headers([&b"a=1,b=2"[..]]).len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no member was kept.
    ///
    /// ```
    /// use tokentrace::propagation::BaggageList;
    /// assert!(BaggageList::from_headers([&b"=novalue"[..]]).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many members were dropped: malformed, or beyond the limits.
    ///
    /// ```
    /// use tokentrace::propagation::BaggageList;
    /// assert_eq!(BaggageList::from_headers([&b"a=1,b=%zz,c"[..]]).dropped(), 2);
    /// ```
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// The kept members, in order.
    ///
    /// ```
    /// use tokentrace::propagation::BaggageList;
    ///
    /// let list = BaggageList::from_headers([&b"user=J%C3%B6rg"[..]]);
    /// assert_eq!(list.members().next().unwrap().value(), "Jörg");
    /// ```
    pub fn members(&self) -> impl Iterator<Item = Member<'_>> {
        self.header.split(',').filter_map(|raw| Member::parse(trim_ows_str(raw)))
    }

    /// The members as OpenTelemetry `Baggage` (values decoded, properties as received). A
    /// repeated key holds its last value, as with OpenTelemetry's own propagator.
    ///
    /// ```
    /// use opentelemetry::StringValue;
    /// use tokentrace::propagation::BaggageList;
    ///
    /// let baggage = BaggageList::from_headers([&b"a=1,a=2,b=x%2Cy"[..]]).to_baggage();
    /// assert_eq!(baggage.get("a"), Some(&StringValue::from("2")));
    /// assert_eq!(baggage.get("b"), Some(&StringValue::from("x,y")));
    /// ```
    pub fn to_baggage(&self) -> Baggage {
        let mut baggage = Baggage::new();
        self.members().for_each(|member| member.insert_into(&mut baggage));
        baggage
    }
}

/// One list-member: `key=value` and its properties.
///
/// ```
/// use tokentrace::propagation::BaggageList;
///
/// let list = BaggageList::from_headers([&b"k = a%2Fb ; p1 ; p2=x"[..]]);
/// let member = list.members().next().unwrap();
/// assert_eq!((member.key(), &*member.value(), member.properties()), ("k", "a/b", "p1 ; p2=x"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    key: &'a str,
    raw_value: &'a str,
    properties: &'a str,
}

impl<'a> Member<'a> {
    /// [`Member::parse`] on bytes, with the member's text (all ASCII when valid).
    fn parse_bytes(raw: &'a [u8]) -> Option<(&'a str, Self)> {
        let text = std::str::from_utf8(raw).ok()?;
        Some((text, Self::parse(text)?))
    }

    /// Adds this member to `baggage`: the value decoded, the properties as received.
    pub(super) fn insert_into(self, baggage: &mut Baggage) {
        // Within the limits of `Baggage` (64 members, 8192 bytes), as every list is.
        let _ = baggage.insert_with_metadata(
            Key::from(self.key.to_owned()),
            StringValue::from(self.value().into_owned()),
            self.properties,
        );
    }

    /// Parses one list-member without its surrounding whitespace; `None` when malformed.
    fn parse(text: &'a str) -> Option<Self> {
        // One pass over the value, which is most of the bytes: the key ends at the first `=`,
        // the value at the first byte that is not a value byte, which must be `;` or the end.
        let (key, rest) = text.split_once('=')?;
        let key = trim_ows_str(key);
        let rest = rest.trim_start_matches([' ', '\t']);
        let (raw_value, after) = rest.split_at(value_len(rest.as_bytes()));
        let after = after.trim_start_matches([' ', '\t']);
        let properties = match after.strip_prefix(';') {
            Some(properties) => Some(trim_ows_str(properties)).filter(|p| valid_properties(p))?,
            None if after.is_empty() => "",
            None => return None,
        };
        is_token(key).then_some(Self { key, raw_value, properties })
    }

    /// The key.
    ///
    /// ```
    /// # use tokentrace::propagation::BaggageList;
    /// let list = BaggageList::from_headers([&b"tenant=acme"[..]]);
    /// assert_eq!(list.members().next().unwrap().key(), "tenant");
    /// ```
    pub fn key(&self) -> &'a str {
        self.key
    }

    /// The value, percent-decoded; bytes that do not decode to UTF-8 become U+FFFD, as the
    /// spec says.
    ///
    /// ```
    /// # use tokentrace::propagation::BaggageList;
    /// let list = BaggageList::from_headers([&b"a=%FF%41"[..]]);
    /// assert_eq!(list.members().next().unwrap().value(), "\u{FFFD}A");
    /// ```
    pub fn value(&self) -> Cow<'a, str> {
        if !self.raw_value.contains('%') {
            return Cow::Borrowed(self.raw_value);
        }
        let decoded = hex::percent_decode(self.raw_value.as_bytes(), false).unwrap_or_default();
        Cow::Owned(String::from_utf8_lossy(&decoded).into_owned())
    }

    /// The properties after the first `;`, as received (`""` when none).
    ///
    /// ```
    /// # use tokentrace::propagation::BaggageList;
    /// let list = BaggageList::from_headers([&b"a=1;ttl=60;sensitive"[..]]);
    /// assert_eq!(list.members().next().unwrap().properties(), "ttl=60;sensitive");
    /// ```
    pub fn properties(&self) -> &'a str {
        self.properties
    }
}

/// `property *( OWS ";" OWS property )`, each `key` or `key OWS "=" OWS value`, without
/// surrounding whitespace.
fn valid_properties(properties: &str) -> bool {
    properties == trim_ows_str(properties)
        && properties.split(';').all(|property| {
            let property = trim_ows_str(property);
            match property.split_once('=') {
                Some(_) => key_value(property).is_some(),
                None => is_token(property),
            }
        })
}

/// `key OWS "=" OWS value`, with a token key and a value of baggage octets and `%XX` escapes.
fn key_value(text: &str) -> Option<(&str, &str)> {
    let (key, value) = text.split_once('=')?;
    let (key, value) = (trim_ows_str(key), trim_ows_str(value));
    (is_token(key) && is_value(value)).then_some((key, value))
}

/// Byte classes, one table lookup per byte.
const TOKEN: u8 = 1;
/// A baggage octet written as is: visible ASCII but `"` `,` `;` `\` and `%`.
const PLAIN: u8 = 2;
const CLASSES: [u8; 256] = {
    let mut classes = [0; 256];
    let mut b = b'!';
    while b <= b'~' {
        if !matches!(b, b'"' | b',' | b';' | b'\\' | b'%') {
            classes[b as usize] |= PLAIN;
        }
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            )
        {
            classes[b as usize] |= TOKEN;
        }
        b += 1;
    }
    classes
};

fn class(b: u8, class: u8) -> bool {
    CLASSES[usize::from(b)] & class != 0
}

/// An RFC 7230 token: one or more of ``!#$%&'*+-.^_`|~``, digits and letters.
pub(super) fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| class(b, TOKEN))
}

/// Baggage octets (visible ASCII but `"` `,` `;` `\`), where every `%` starts a `%XX` escape.
fn is_value(text: &str) -> bool {
    value_len(text.as_bytes()) == text.len()
}

/// The length of the longest prefix of `bytes` that is a value (see [`is_value`]).
fn value_len(bytes: &[u8]) -> usize {
    let mut i = 0;
    while i < bytes.len() {
        if class(bytes[i], PLAIN) {
            i += 1;
        } else if bytes[i] == b'%' && hex::escaped_byte(&bytes[i + 1..]).is_some() {
            i += 3;
        } else {
            break;
        }
    }
    i
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !is_ows(b)).map_or(start, |end| end + 1);
    &bytes[start..end]
}

fn trim_ows_str(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
}

/// Writes `baggage` as a header: values percent-encoded, members in the map's order, within
/// [`MAX_BAGGAGE_MEMBERS`] and [`MAX_BAGGAGE_BYTES`] (members that do not fit are left out
/// whole). Properties that are not valid property syntax are left out; the member stays.
///
/// ```
/// use opentelemetry::baggage::Baggage;
/// use tokentrace::propagation::{format_baggage, BaggageList};
///
/// let mut baggage = Baggage::new();
/// baggage.insert_with_metadata("user", "Jörg, 2", "ttl=60");
/// let header = format_baggage(&baggage);
/// assert_eq!(header, "user=J%C3%B6rg%2C%202;ttl=60");
/// assert_eq!(BaggageList::from_headers([header.as_bytes()]).members().next().unwrap().value(), "Jörg, 2");
/// ```
pub fn format_baggage(baggage: &Baggage) -> String {
    let mut header = String::new();
    let mut member = String::new();
    let mut written = 0;
    for (key, (value, metadata)) in baggage {
        if written == MAX_BAGGAGE_MEMBERS {
            break;
        }
        if !is_token(key.as_str()) {
            continue;
        }
        member.clear();
        member.push_str(key.as_str());
        member.push('=');
        percent_encode(value.as_str(), &mut member);
        let properties = metadata.as_str();
        if !properties.is_empty() && valid_properties(properties) {
            member.push(';');
            member.push_str(properties);
        }
        let separator = usize::from(!header.is_empty());
        if header.len() + separator + member.len() > MAX_BAGGAGE_BYTES {
            continue;
        }
        if separator == 1 {
            header.push(',');
        }
        header.push_str(&member);
        written += 1;
    }
    header
}

/// Every byte that is not a baggage octet, and `%` itself, as `%XX`.
fn percent_encode(value: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut plain_from = 0;
    for (i, b) in value.bytes().enumerate() {
        if class(b, PLAIN) {
            continue;
        }
        // A non-empty run of plain bytes is ASCII, so it starts and ends on char boundaries.
        if plain_from < i {
            out.push_str(&value[plain_from..i]);
        }
        out.extend(['%', char::from(HEX[usize::from(b >> 4)]), char::from(HEX[usize::from(b & 15)])]);
        plain_from = i + 1;
    }
    if plain_from < value.len() {
        out.push_str(&value[plain_from..]);
    }
}
