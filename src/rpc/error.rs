//! [`RpcError`]: how a worker RPC fails, on any transport.

use std::fmt;

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
