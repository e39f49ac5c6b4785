//! `x-request-id` and `request-id`: the ids operators search traces and logs by.

use std::fmt;
use std::str::FromStr;

use http::HeaderValue;

use super::hex;

/// Longest `x-request-id` we accept.
///
/// ```
/// use tokentrace::propagation::{RequestId, RequestIdError, MAX_REQUEST_ID_LEN};
///
/// assert!(RequestId::parse(&[b'a'; MAX_REQUEST_ID_LEN]).is_ok());
/// assert_eq!(RequestId::parse(&[b'a'; MAX_REQUEST_ID_LEN + 1]), Err(RequestIdError::Length));
/// ```
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A safe `x-request-id`: 1–128 characters from `[A-Za-z0-9._:@/+=-]`.
///
/// An inbound value outside that set (control characters, quotes, spaces, over-long) is not
/// trusted: [`RequestId::from_inbound`] replaces it with a generated id, and the rejected value is
/// never kept, so it cannot reach a log line. Cloning is cheap (a reference count).
///
/// ```
/// use tokentrace::propagation::RequestId;
///
/// let id = RequestId::from_inbound(Some(b"req-42"));
/// assert_eq!(id.as_str(), "req-42");
/// assert!(!id.is_generated());
///
/// let id = RequestId::from_inbound(Some(b"\"; DROP TABLE\n"));
/// assert!(id.is_generated());
/// assert_eq!(id.as_str().len(), 36); // a UUID v4
/// ```
///
/// Two ids are equal when their text is; [`RequestId::is_generated`] only says where this one
/// came from.
#[derive(Clone)]
pub struct RequestId {
    value: HeaderValue,
    generated: bool,
}

/// Why an `x-request-id` value was refused.
///
/// ```
/// use tokentrace::propagation::{RequestId, RequestIdError};
///
/// assert_eq!("a b".parse::<RequestId>(), Err(RequestIdError::Character));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestIdError {
    /// Empty, or longer than 128 characters.
    Length,
    /// A character outside `[A-Za-z0-9._:@/+=-]`.
    Character,
}

impl fmt::Display for RequestIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Length => "request id is empty or longer than 128 characters",
            Self::Character => "request id has a character outside [A-Za-z0-9._:@/+=-]",
        })
    }
}

impl std::error::Error for RequestIdError {}

const fn request_id_table() -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0usize;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"._:@/+=-";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}
const REQUEST_ID_CHARS: [bool; 256] = request_id_table();

fn validate(value: &[u8]) -> Result<(), RequestIdError> {
    if value.is_empty() || value.len() > MAX_REQUEST_ID_LEN {
        return Err(RequestIdError::Length);
    }
    if !value.iter().all(|&b| REQUEST_ID_CHARS[b as usize]) {
        return Err(RequestIdError::Character);
    }
    Ok(())
}

impl RequestId {
    /// Validates an inbound value.
    ///
    /// ```
    /// use tokentrace::propagation::RequestId;
    ///
    /// assert!(RequestId::parse(b"a:b@c/d+e=f.g_h-i").is_ok());
    /// assert!(RequestId::parse(&[b'a'; 129]).is_err());
    /// ```
    pub fn parse(value: &[u8]) -> Result<Self, RequestIdError> {
        validate(value)?;
        // Every accepted byte is visible ASCII, which a header value always accepts.
        let value = HeaderValue::from_bytes(value).map_err(|_| RequestIdError::Character)?;
        Ok(Self { value, generated: false })
    }

    /// The inbound value when valid, else a generated one (absent, or refused).
    ///
    /// ```
    /// use tokentrace::propagation::RequestId;
    ///
    /// assert_eq!(RequestId::from_inbound(Some(b"req-42")).as_str(), "req-42");
    /// let replaced = RequestId::from_inbound(Some(b"<script>"));
    /// assert!(replaced.is_generated() && replaced.as_str().len() == 36);
    /// assert!(RequestId::from_inbound(None).is_generated());
    /// ```
    pub fn from_inbound(value: Option<&[u8]>) -> Self {
        value.and_then(|v| Self::parse(v).ok()).unwrap_or_else(Self::generate)
    }

    /// A new random id, formatted as a UUID v4.
    ///
    /// ```
    /// use tokentrace::propagation::{RequestId, RequestUuid};
    ///
    /// let id = RequestId::generate();
    /// assert!(id.is_generated());
    /// assert!(id.as_str().parse::<RequestUuid>().is_ok());
    /// ```
    pub fn generate() -> Self {
        let text = RequestUuid::new_v4().to_bytes();
        Self {
            value: HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("0")),
            generated: true,
        }
    }

    /// The id (always safe to log and to send).
    ///
    /// ```
    /// use tokentrace::propagation::RequestId;
    /// let id: RequestId = "tenant-7/req-42".parse().unwrap();
    /// assert_eq!(id.as_str(), "tenant-7/req-42");
    /// ```
    pub fn as_str(&self) -> &str {
        // Only `[A-Za-z0-9._:@/+=-]` is ever stored; `from_utf8` checks ASCII a word at a time,
        // where `HeaderValue::to_str` checks byte by byte.
        std::str::from_utf8(self.value.as_bytes()).unwrap_or_default()
    }

    /// The id as a header value, for echoing without a copy.
    ///
    /// ```
    /// use http::{HeaderMap, HeaderValue};
    /// use tokentrace::propagation::RequestId;
    ///
    /// let id: RequestId = "req-42".parse().unwrap();
    /// let mut response_headers = HeaderMap::new();
    /// response_headers.insert("x-request-id", id.header_value().clone());
    /// assert_eq!(response_headers["x-request-id"], HeaderValue::from_static("req-42"));
    /// ```
    pub fn header_value(&self) -> &HeaderValue {
        &self.value
    }

    /// Whether this id was generated here rather than received.
    ///
    /// ```
    /// use tokentrace::propagation::RequestId;
    /// assert!(!"req-42".parse::<RequestId>().unwrap().is_generated());
    /// assert!(RequestId::generate().is_generated());
    /// ```
    pub fn is_generated(&self) -> bool {
        self.generated
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Eq for RequestId {}

impl std::hash::Hash for RequestId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.value.hash(state);
    }
}

impl FromStr for RequestId {
    type Err = RequestIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestId").field(&self.as_str()).finish()
    }
}

/// The `request-id` header: a UUID (any version), written lowercase and hyphenated.
///
/// ```
/// use tokentrace::propagation::RequestUuid;
///
/// let id: RequestUuid = "123E4567-E89B-12D3-A456-426614174000".parse().unwrap();
/// assert_eq!(id.to_string(), "123e4567-e89b-12d3-a456-426614174000");
/// assert!("123e4567e89b12d3a456426614174000".parse::<RequestUuid>().is_err());
/// assert_eq!(RequestUuid::new_v4().to_string().as_bytes()[14], b'4');
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RequestUuid(u128);

/// A `request-id` that is not a hyphenated UUID.
///
/// ```
/// use tokentrace::propagation::RequestUuid;
///
/// assert!(RequestUuid::parse(b"not-a-uuid").is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestUuidError;

impl fmt::Display for RequestUuidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request-id is not a UUID (8-4-4-4-12 hex digits)")
    }
}

impl std::error::Error for RequestUuidError {}

/// Where the groups of a hyphenated UUID start and end.
const UUID_GROUPS: [(usize, usize); 5] = [(0, 8), (9, 13), (14, 18), (19, 23), (24, 36)];

impl RequestUuid {
    /// A random (version 4, RFC 9562 variant) UUID.
    ///
    /// ```
    /// use tokentrace::propagation::RequestUuid;
    ///
    /// let id = RequestUuid::new_v4();
    /// assert_eq!((id.as_u128() >> 76) & 0xf, 4); // version
    /// assert_eq!((id.as_u128() >> 62) & 0x3, 2); // variant
    /// assert_ne!(id, RequestUuid::new_v4());
    /// ```
    pub fn new_v4() -> Self {
        let bits = fastrand::u128(..);
        let bits = (bits & !(0xf << 76)) | (0x4 << 76); // version 4
        let bits = (bits & !(0x3 << 62)) | (0x2 << 62); // variant 10
        Self(bits)
    }

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hex digits of either case).
    ///
    /// ```
    /// use tokentrace::propagation::RequestUuid;
    ///
    /// let id = RequestUuid::parse(b"123E4567-e89b-12d3-a456-426614174000").unwrap();
    /// assert_eq!(id.as_u128(), 0x123e4567_e89b_12d3_a456_426614174000);
    /// assert!(RequestUuid::parse(b"123e4567-e89b-12d3-a456-42661417400g").is_err());
    /// ```
    pub fn parse(value: &[u8]) -> Result<Self, RequestUuidError> {
        if value.len() != 36 || [8, 13, 18, 23].iter().any(|&i| value[i] != b'-') {
            return Err(RequestUuidError);
        }
        let mut digits = [0u8; 32];
        let mut at = 0;
        for (start, end) in UUID_GROUPS {
            for &b in &value[start..end] {
                digits[at] = b.to_ascii_lowercase();
                at += 1;
            }
        }
        hex::decode::<16>(&digits).map(|bytes| Self(u128::from_be_bytes(bytes))).ok_or(RequestUuidError)
    }

    /// The 128 bits.
    ///
    /// ```
    /// use tokentrace::propagation::RequestUuid;
    /// let id: RequestUuid = "00000000-0000-0000-0000-00000000002a".parse().unwrap();
    /// assert_eq!(id.as_u128(), 42);
    /// ```
    pub fn as_u128(&self) -> u128 {
        self.0
    }

    /// The hyphenated lowercase form as a `String`, without going through `fmt`.
    ///
    /// ```
    /// use tokentrace::propagation::RequestUuid;
    /// let id = RequestUuid::new_v4();
    /// assert_eq!(id.to_hyphenated(), id.to_string());
    /// ```
    pub fn to_hyphenated(&self) -> String {
        // Only ASCII hex digits and dashes are written.
        String::from_utf8(self.to_bytes().to_vec()).unwrap_or_default()
    }

    /// The 36 ASCII bytes of the hyphenated lowercase form.
    ///
    /// ```
    /// use tokentrace::propagation::RequestUuid;
    /// let id = RequestUuid::parse(b"F47AC10B-58CC-4372-A567-0E02B2C3D479").unwrap();
    /// assert_eq!(id.as_u128(), 0xf47ac10b_58cc_4372_a567_0e02b2c3d479);
    /// assert_eq!(&id.to_bytes(), b"f47ac10b-58cc-4372-a567-0e02b2c3d479");
    /// ```
    pub fn to_bytes(&self) -> [u8; 36] {
        // Eight digits at a time (SWAR): this runs for every request without a `request-id`.
        let mut digits = [0u8; 32];
        digits[..16].copy_from_slice(&hex::encode_u64((self.0 >> 64) as u64));
        digits[16..].copy_from_slice(&hex::encode_u64(self.0 as u64));
        let mut out = [b'-'; 36];
        let mut at = 0;
        for (start, end) in UUID_GROUPS {
            out[start..end].copy_from_slice(&digits[at..at + end - start]);
            at += end - start;
        }
        out
    }
}

impl FromStr for RequestUuid {
    type Err = RequestUuidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

impl fmt::Display for RequestUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.to_bytes()).map_err(|_| fmt::Error)?)
    }
}
