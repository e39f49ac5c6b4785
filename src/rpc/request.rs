//! The worker RPC envelope and its errors.

use std::borrow::Cow;
use std::fmt;

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

/// Why an RPC (or one item of its response stream) failed.
///
/// ```
/// use tokentrace::rpc::RpcError;
/// let error = RpcError::FrameTooLarge { size: 10_000_000, max: 8_388_608 };
/// assert_eq!(error.to_string(), "frame of 10000000 bytes exceeds the 8388608-byte limit");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RpcError {
    /// The connection broke (or was closed) while the request was in flight.
    ConnectionLost(String),
    /// A frame, sent or received, is larger than the configured limit.
    FrameTooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A frame could not be decoded.
    Malformed(String),
    /// The handler failed; its message, as it sent it.
    Remote(String),
    /// No handler serves this endpoint.
    UnknownEndpoint(String),
    /// The client is shut down or was never connected.
    Closed,
    /// No worker serves the request's address (NATS: no subscriber on its subject).
    Unavailable(String),
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConnectionLost(why) => write!(f, "connection lost: {why}"),
            Self::FrameTooLarge { size, max } => {
                write!(f, "frame of {size} bytes exceeds the {max}-byte limit")
            }
            Self::Malformed(why) => write!(f, "malformed frame: {why}"),
            Self::Remote(message) => write!(f, "remote error: {message}"),
            Self::UnknownEndpoint(endpoint) => write!(f, "unknown endpoint {endpoint:?}"),
            Self::Closed => f.write_str("rpc client is closed"),
            Self::Unavailable(address) => write!(f, "no worker serves {address}"),
        }
    }
}

impl std::error::Error for RpcError {}

impl RpcError {
    /// A short, bounded name for the `error.type` attribute.
    ///
    /// ```
    /// use tokentrace::rpc::RpcError;
    /// assert_eq!(RpcError::Closed.kind(), "closed");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ConnectionLost(_) => "connection_lost",
            Self::FrameTooLarge { .. } => "frame_too_large",
            Self::Malformed(_) => "malformed",
            Self::Remote(_) => "remote",
            Self::UnknownEndpoint(_) => "unknown_endpoint",
            Self::Closed => "closed",
            Self::Unavailable(_) => "unavailable",
        }
    }
}
