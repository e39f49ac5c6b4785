//! RPC metadata: a small, ordered, case-insensitive string map.

use crate::propagation::Carrier;
use crate::rpc::error::RpcError;

/// Most entries a [`Metadata`] accepts from the wire: every transport refuses a request with
/// more, sending and receiving.
///
/// ```
/// assert_eq!(tokentrace::rpc::MAX_METADATA_ENTRIES, 64);
/// ```
pub const MAX_METADATA_ENTRIES: usize = 64;

/// Refuses `count` metadata entries when there are more than [`MAX_METADATA_ENTRIES`]: every
/// transport checks with this, sending and receiving.
pub(crate) fn check_entry_count(count: usize) -> Result<(), RpcError> {
    if count > MAX_METADATA_ENTRIES {
        return Err(RpcError::Malformed(format!(
            "{count} metadata entries, at most {MAX_METADATA_ENTRIES} allowed"
        )));
    }
    Ok(())
}

/// The metadata of a worker RPC request: what HTTP headers are to HTTP.
///
/// Names are stored lowercase and compared case-insensitively; a name may repeat (as HTTP
/// headers may), so a duplicated `traceparent` is seen as such. A handful of entries is the
/// norm, so a vector beats a map.
///
/// ```
/// use tokentrace::propagation::Carrier;
/// use tokentrace::rpc::Metadata;
///
/// let mut metadata = Metadata::new();
/// metadata.append("X-Request-Id", "abc");
/// assert_eq!(metadata.get("x-request-id"), Some("abc"));
/// metadata.set("x-request-id", "def"); // Carrier::set replaces
/// assert_eq!(metadata.len(), 1);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<(String, String)>,
}

impl Metadata {
    /// Empty metadata.
    ///
    /// ```
    /// use tokentrace::rpc::Metadata;
    /// assert!(Metadata::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `name: value` (the name is lowercased), keeping earlier values of `name`.
    ///
    /// ```
    /// use tokentrace::rpc::Metadata;
    ///
    /// let mut metadata = Metadata::new();
    /// metadata.append("Tracestate", "a=1");
    /// metadata.append("tracestate", "b=2");
    /// assert_eq!(metadata.iter().collect::<Vec<_>>(), [("tracestate", "a=1"), ("tracestate", "b=2")]);
    /// ```
    pub fn append(&mut self, name: &str, value: impl Into<String>) {
        self.entries.push((name.to_ascii_lowercase(), value.into()));
    }

    /// The first value of `name`.
    ///
    /// ```
    /// use tokentrace::rpc::Metadata;
    ///
    /// let metadata: Metadata = [("x-request-id", "first"), ("X-Request-Id", "second")].into_iter().collect();
    /// assert_eq!(metadata.get("X-REQUEST-ID"), Some("first"));
    /// assert_eq!(metadata.get("request-id"), None);
    /// ```
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    ///
    /// ```
    /// use tokentrace::rpc::Metadata;
    /// let metadata: Metadata = [("tracestate", "a=1"), ("TraceState", "b=2")].into_iter().collect();
    /// assert_eq!(metadata.values("tracestate").collect::<Vec<_>>(), ["a=1", "b=2"]);
    /// ```
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Removes every value of `name`.
    ///
    /// ```
    /// use tokentrace::rpc::Metadata;
    ///
    /// let mut metadata: Metadata =
    ///     [("traceparent", "a"), ("x-request-id", "r"), ("Traceparent", "b")].into_iter().collect();
    /// metadata.remove("traceparent");
    /// assert_eq!(metadata.iter().collect::<Vec<_>>(), [("x-request-id", "r")]);
    /// ```
    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// The entries, in order.
    ///
    /// ```
    /// use tokentrace::rpc::Metadata;
    ///
    /// let metadata: Metadata = [("X-Request-Id", "r1"), ("tenant", "acme")].into_iter().collect();
    /// let names: Vec<&str> = metadata.iter().map(|(name, _)| name).collect();
    /// assert_eq!(names, ["x-request-id", "tenant"]); // lowercase, in order
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of entries.
    ///
    /// ```
    /// use tokentrace::rpc::Metadata;
    /// let metadata: Metadata = [("tracestate", "a=1"), ("tracestate", "b=2")].into_iter().collect();
    /// assert_eq!(metadata.len(), 2); // a repeated name counts each time
    /// ```
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    ///
    /// ```
    /// use tokentrace::rpc::Metadata;
    /// let mut metadata = Metadata::new();
    /// assert!(metadata.is_empty());
    /// metadata.append("x-request-id", "r1");
    /// assert!(!metadata.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Carrier for Metadata {
    fn get_all(&self, name: &'static str) -> impl Iterator<Item = &[u8]> {
        self.values(name).map(str::as_bytes)
    }

    fn set(&mut self, name: &'static str, value: &str) {
        match self.entries.iter().position(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some(first) => {
                self.entries[first].1.clear();
                self.entries[first].1.push_str(value);
                // Drop any later duplicates so exactly one value remains.
                let mut index = 0;
                self.entries.retain(|(n, _)| {
                    index += 1;
                    index - 1 == first || !n.eq_ignore_ascii_case(name)
                });
            }
            None => self.entries.push((name.to_owned(), value.to_owned())),
        }
    }

    fn remove_all(&mut self, name: &'static str) {
        self.remove(name);
    }
}

impl<N: AsRef<str>, V: Into<String>> FromIterator<(N, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut metadata = Self::new();
        for (name, value) in iter {
            metadata.append(name.as_ref(), value);
        }
        metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_leaves_exactly_one_value() {
        let mut metadata: Metadata =
            [("a", "1"), ("traceparent", "x"), ("b", "2"), ("TraceParent", "y")].into_iter().collect();
        metadata.set("traceparent", "z");
        assert_eq!(metadata.values("traceparent").collect::<Vec<_>>(), ["z"]);
        assert_eq!(metadata.iter().collect::<Vec<_>>(), [("a", "1"), ("traceparent", "z"), ("b", "2")]);
    }
}
