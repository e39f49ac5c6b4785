//! Which baggage values a server layer copies into its span: only the keys it was told.

use opentelemetry::baggage::BaggageExt;
use opentelemetry::{Context, Key, KeyValue};

use super::list::is_token;

/// The most baggage keys a layer copies into span attributes.
///
/// ```
/// use tokentrace::propagation::{RecordedBaggage, MAX_RECORDED_BAGGAGE_KEYS};
/// let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
/// assert_eq!(RecordedBaggage::new(keys).keys().count(), MAX_RECORDED_BAGGAGE_KEYS);
/// ```
pub const MAX_RECORDED_BAGGAGE_KEYS: usize = 8;

/// The longest baggage value copied into a span attribute, in bytes; a longer one is cut at a
/// character boundary.
///
/// ```
/// use tokentrace::propagation::MAX_RECORDED_BAGGAGE_VALUE_BYTES;
/// assert_eq!(MAX_RECORDED_BAGGAGE_VALUE_BYTES, 256);
/// ```
pub const MAX_RECORDED_BAGGAGE_VALUE_BYTES: usize = 256;

/// The baggage keys a server layer copies into its span, as `baggage.<key>` attributes. No
/// other baggage value ever reaches a span or a log line: baggage may carry what the caller
/// did not mean to be stored.
///
/// ```
/// use opentelemetry::baggage::BaggageExt;
/// use opentelemetry::{Context, KeyValue};
/// use tokentrace::propagation::RecordedBaggage;
///
/// let recorded = RecordedBaggage::new(["tenant"]);
/// let cx = Context::new().with_baggage([KeyValue::new("tenant", "acme"), KeyValue::new("secret", "x")]);
/// assert_eq!(recorded.attributes(&cx), [KeyValue::new("baggage.tenant", "acme")]);
/// ```
#[derive(Clone, Debug, Default)]
pub struct RecordedBaggage {
    /// `(key, attribute name)`, built once.
    keys: std::sync::Arc<[(String, Key)]>,
}

impl RecordedBaggage {
    /// Records `keys` (the first [`MAX_RECORDED_BAGGAGE_KEYS`]; keys that are not tokens are
    /// skipped).
    ///
    /// ```
    /// use tokentrace::propagation::RecordedBaggage;
    /// assert_eq!(RecordedBaggage::new(["tenant", "not a key"]).keys().collect::<Vec<_>>(), ["tenant"]);
    /// ```
    pub fn new<I>(keys: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let keys = keys
            .into_iter()
            .map(Into::into)
            .filter(|key| is_token(key))
            .take(MAX_RECORDED_BAGGAGE_KEYS)
            .map(|key| {
                let attribute = Key::from(format!("baggage.{key}"));
                (key, attribute)
            })
            .collect();
        Self { keys }
    }

    /// The recorded keys.
    ///
    /// ```
    /// use tokentrace::propagation::RecordedBaggage;
    /// assert_eq!(RecordedBaggage::default().keys().count(), 0);
    /// ```
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(key, _)| key.as_str())
    }

    /// The attributes for the recorded keys present in the baggage of `cx`.
    ///
    /// ```
    /// use opentelemetry::baggage::BaggageExt;
    /// use opentelemetry::{Context, KeyValue};
    /// use tokentrace::propagation::RecordedBaggage;
    ///
    /// let long = "é".repeat(200); // 400 bytes
    /// let cx = Context::new().with_baggage([KeyValue::new("note", long)]);
    /// let attributes = RecordedBaggage::new(["note", "absent"]).attributes(&cx);
    /// assert_eq!(attributes.len(), 1);
    /// assert_eq!(attributes[0].value.as_str().len(), 256);
    /// ```
    pub fn attributes(&self, cx: &Context) -> Vec<KeyValue> {
        if self.keys.is_empty() {
            return Vec::new();
        }
        let baggage = cx.baggage();
        self.keys
            .iter()
            .filter_map(|(key, attribute)| {
                let value = baggage.get(key)?.as_str();
                let mut end = value.len().min(MAX_RECORDED_BAGGAGE_VALUE_BYTES);
                while !value.is_char_boundary(end) {
                    end -= 1;
                }
                Some(KeyValue::new(attribute.clone(), value[..end].to_owned()))
            })
            .collect()
    }
}
