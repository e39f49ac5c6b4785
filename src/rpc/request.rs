//! The worker RPC envelope.

use std::borrow::Cow;

use super::metadata::Metadata;

/// A worker RPC request: the endpoint to call, metadata (trace context, request ids) and a
/// payload.
///
/// ```
/// use bytes::Bytes;
/// use tokentrace::rpc::Request;
///
/// let request = Request::new("generate", Bytes::from_static(b"{\"prompt\":\"hi\"}"));
/// assert_eq!(request.endpoint(), "generate");
/// assert_eq!(request.attempt(), 1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<T> {
    endpoint: Cow<'static, str>,
    attempt: u32,
    /// Propagated fields: `traceparent`, `tracestate`, `x-request-id`, `request-id`, ...
    pub metadata: Metadata,
    /// What the endpoint works on.
    pub payload: T,
}

impl<T> Request<T> {
    /// A first attempt at `endpoint` with empty metadata.
    ///
    /// ```
    /// use tokentrace::rpc::Request;
    ///
    /// let request = Request::new(format!("generate/{}", 2), vec![1u32, 2, 3]);
    /// assert_eq!(request.endpoint(), "generate/2");
    /// assert!(request.metadata.is_empty());
    /// ```
    pub fn new(endpoint: impl Into<Cow<'static, str>>, payload: T) -> Self {
        Self { endpoint: endpoint.into(), attempt: 1, metadata: Metadata::new(), payload }
    }

    /// A request rebuilt from the parts a transport carried: what a transport's server side
    /// hands the handler (behind [`ServerLayer`](super::ServerLayer)).
    ///
    /// ```
    /// use tokentrace::rpc::{Metadata, Request};
    ///
    /// let metadata: Metadata = [("x-request-id", "req-1")].into_iter().collect();
    /// let request = Request::from_parts("generate", 2, metadata, "payload");
    /// assert_eq!((request.endpoint(), request.attempt()), ("generate", 2));
    /// assert_eq!(request.metadata.get("x-request-id"), Some("req-1"));
    /// ```
    pub fn from_parts(
        endpoint: impl Into<Cow<'static, str>>,
        attempt: u32,
        metadata: Metadata,
        payload: T,
    ) -> Self {
        Self { endpoint: endpoint.into(), attempt, metadata, payload }
    }

    /// The endpoint name as span names and attributes take it: no copy when it is static.
    pub(crate) fn endpoint_name(&self) -> Cow<'static, str> {
        self.endpoint.clone()
    }

    /// The endpoint name.
    ///
    /// ```
    /// use tokentrace::rpc::Request;
    /// assert_eq!(Request::new("prefill", ()).endpoint(), "prefill");
    /// ```
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Which attempt this is (1 for the first); a retry policy bumps it with
    /// [`Request::with_attempt`] and the client span records it.
    ///
    /// ```
    /// use tokentrace::rpc::Request;
    /// let request = Request::new("generate", ());
    /// assert_eq!(request.attempt(), 1);
    /// assert_eq!(request.with_attempt(2).attempt(), 2);
    /// ```
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The same request as attempt `attempt`.
    ///
    /// ```
    /// use tokentrace::rpc::Request;
    ///
    /// let first = Request::new("generate", "payload");
    /// let retry = first.clone().with_attempt(first.attempt() + 1);
    /// assert_eq!((retry.attempt(), retry.payload), (2, "payload"));
    /// ```
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The same request with another payload.
    ///
    /// ```
    /// use tokentrace::rpc::Request;
    /// let request = Request::new("generate", "text").map(str::len);
    /// assert_eq!(request.payload, 4);
    /// ```
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Request<U> {
        Request {
            endpoint: self.endpoint,
            attempt: self.attempt,
            metadata: self.metadata,
            payload: f(self.payload),
        }
    }
}
