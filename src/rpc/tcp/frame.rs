//! The wire format of the TCP transport.
//!
//! Every frame travels inside a length-delimited envelope (tokio-util's
//! `LengthDelimitedCodec`: a 4-byte big-endian length, then the body). The body:
//!
//! ```text
//! kind: u8 | stream id: u64 BE | rest by kind
//!   1 request: endpoint (u16 len + UTF-8) | metadata count (u16) | per entry: name (u16 len +
//!              UTF-8), value (u16 len + UTF-8) | payload (the remaining bytes)
//!   2 item:    payload (the remaining bytes)
//!   3 end:     the keep rule that kept the trace at the sender (UTF-8, the remaining bytes;
//!              none: nothing)
//!   4 error:   message (UTF-8, the remaining bytes)
//!   5 cancel:  nothing
//!   6 heartbeat: nothing (the sender is alive; NATS replies use it, TCP peers ignore it)
//!   7 hello:   version (u16) | stream window (u32) | connection window (u32); stream id 0
//!   8 window:  increment (u32): the receiver grants this many more bytes of items on the
//!              stream (stream id 0: on the connection)
//!   9 kept:    trace id (16 bytes) | keep rule (UTF-8, the remaining bytes); stream id 0: the
//!              client's keep rules kept a trace it called the server for
//! ```
//!
//! A TCP client opens with `hello`, [`WIRE_VERSION`] and the flow-control windows it grants;
//! a server refuses any other first frame with an error frame that says why, and a server that
//! predates `hello` answers with an error on stream 0 that the client reports as such.
//!
//! The NATS transport sends its replies as these same bodies, one per message (NATS delimits
//! them); there the inbox names the stream, so the u64 carries the frame's sequence number.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::rpc::error::RpcError;
use crate::rpc::metadata::{check_entry_count, Metadata};

/// Longest endpoint name, metadata name or metadata value, in bytes: a request with a longer
/// one is refused before it is sent.
///
/// ```
/// assert_eq!(tokentrace::rpc::tcp::MAX_FIELD_LEN, 65_535);
/// ```
pub const MAX_FIELD_LEN: usize = u16::MAX as usize;

const REQUEST: u8 = 1;
const ITEM: u8 = 2;
const END: u8 = 3;
const ERROR: u8 = 4;
const CANCEL: u8 = 5;
const HEARTBEAT: u8 = 6;
const HELLO: u8 = 7;
const WINDOW: u8 = 8;
const KEPT: u8 = 9;

/// The version of the wire format a client announces in its `hello`: 2, the first with
/// flow control (version 1 had no `hello`).
pub(crate) const WIRE_VERSION: u16 = 2;

/// One frame of the TCP transport.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// Opens stream `stream` with a request.
    Request {
        /// Stream id, chosen by the client.
        stream: u64,
        /// Endpoint name.
        endpoint: String,
        /// Request metadata.
        metadata: Metadata,
        /// Request payload.
        payload: Bytes,
    },
    /// One response item.
    Item {
        /// Stream id.
        stream: u64,
        /// Item payload.
        payload: Bytes,
    },
    /// The response stream ended.
    End {
        /// Stream id.
        stream: u64,
        /// The keep rule that kept the request's trace at the worker, if one did: the caller
        /// keeps its part of the trace too.
        kept_by: Option<String>,
    },
    /// The response stream failed.
    Error {
        /// Stream id.
        stream: u64,
        /// What went wrong.
        message: String,
    },
    /// The client no longer wants stream `stream`.
    Cancel {
        /// Stream id.
        stream: u64,
    },
    /// The sender is alive and still working on stream `stream`.
    Heartbeat {
        /// Stream id.
        stream: u64,
    },
    /// A client's first frame: its wire version and the windows it grants.
    Hello {
        /// [`WIRE_VERSION`] of the sender.
        version: u16,
        /// Bytes of items a stream may have in flight before the client grants more.
        stream_window: u32,
        /// Bytes of items the connection may have in flight before the client grants more.
        connection_window: u32,
    },
    /// The receiver took items: `increment` more bytes may be sent on `stream` (0: the
    /// connection).
    Window {
        /// Stream id, or 0 for the connection.
        stream: u64,
        /// Bytes granted.
        increment: u32,
    },
    /// The client kept a trace (by its keep rules, or because a peer did) that it called the
    /// server for: the server keeps its part too.
    Kept {
        /// The trace, as its 16 bytes.
        trace_id: [u8; 16],
        /// The rule that kept it.
        rule: String,
    },
}

impl Frame {
    /// The stream this frame belongs to.
    pub fn stream(&self) -> u64 {
        match self {
            Self::Request { stream, .. }
            | Self::Item { stream, .. }
            | Self::End { stream, .. }
            | Self::Error { stream, .. }
            | Self::Cancel { stream }
            | Self::Heartbeat { stream }
            | Self::Window { stream, .. } => *stream,
            Self::Hello { .. } | Self::Kept { .. } => 0,
        }
    }

    /// Appends the frame body (without the length prefix) to `out`.
    ///
    /// Fails when a field does not fit its 16-bit length or there are too many metadata
    /// entries; nothing is written then.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), RpcError> {
        let start = out.len();
        let result = self.encode_unchecked(out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn encode_unchecked(&self, out: &mut BytesMut) -> Result<(), RpcError> {
        match self {
            Self::Request { stream, endpoint, metadata, payload } => {
                check_entry_count(metadata.len())?;
                out.reserve(1 + 8 + 2 + endpoint.len() + 2 + payload.len() + metadata.len() * 64);
                out.put_u8(REQUEST);
                out.put_u64(*stream);
                put_field(out, endpoint)?;
                out.put_u16(metadata.len() as u16);
                for (name, value) in metadata.iter() {
                    put_field(out, name)?;
                    put_field(out, value)?;
                }
                out.put_slice(payload);
            }
            Self::Item { stream, payload } => {
                out.reserve(9 + payload.len());
                out.put_u8(ITEM);
                out.put_u64(*stream);
                out.put_slice(payload);
            }
            Self::End { stream, kept_by } => {
                out.put_u8(END);
                out.put_u64(*stream);
                out.put_slice(kept_by.as_deref().unwrap_or_default().as_bytes());
            }
            Self::Error { stream, message } => {
                out.put_u8(ERROR);
                out.put_u64(*stream);
                out.put_slice(message.as_bytes());
            }
            Self::Cancel { stream } => {
                out.put_u8(CANCEL);
                out.put_u64(*stream);
            }
            Self::Heartbeat { stream } => {
                out.put_u8(HEARTBEAT);
                out.put_u64(*stream);
            }
            Self::Hello { version, stream_window, connection_window } => {
                out.put_u8(HELLO);
                out.put_u64(0);
                out.put_u16(*version);
                out.put_u32(*stream_window);
                out.put_u32(*connection_window);
            }
            Self::Window { stream, increment } => {
                out.put_u8(WINDOW);
                out.put_u64(*stream);
                out.put_u32(*increment);
            }
            Self::Kept { trace_id, rule } => {
                out.put_u8(KEPT);
                out.put_u64(0);
                out.put_slice(trace_id);
                out.put_slice(rule.as_bytes());
            }
        }
        Ok(())
    }

    /// Decodes a frame body (the length prefix already removed). Payloads are slices of `body`,
    /// not copies. Never panics; every allocation is bounded by `body.len()`.
    pub fn decode(mut body: Bytes) -> Result<Self, RpcError> {
        if body.len() < 9 {
            return Err(RpcError::Malformed(format!(
                "frame of {} bytes is shorter than its header",
                body.len()
            )));
        }
        let kind = body.get_u8();
        let stream = body.get_u64();
        let frame = match kind {
            REQUEST => {
                let endpoint = take_field(&mut body, "endpoint")?;
                let count = usize::from(take_u16(&mut body, "metadata count")?);
                check_entry_count(count)?;
                let mut metadata = Metadata::new();
                for _ in 0..count {
                    let name = take_field(&mut body, "metadata name")?;
                    let value = take_field(&mut body, "metadata value")?;
                    metadata.append(&name, value);
                }
                Self::Request { stream, endpoint, metadata, payload: body }
            }
            ITEM => Self::Item { stream, payload: body },
            END => Self::End {
                stream,
                kept_by: (!body.is_empty())
                    .then(|| String::from_utf8(body.to_vec()))
                    .transpose()
                    .map_err(|_| RpcError::Malformed("keep rule is not UTF-8".into()))?,
            },
            ERROR => Self::Error {
                stream,
                message: String::from_utf8(body.to_vec())
                    .map_err(|_| RpcError::Malformed("error message is not UTF-8".into()))?,
            },
            CANCEL => expect_empty(body, Self::Cancel { stream })?,
            HEARTBEAT => expect_empty(body, Self::Heartbeat { stream })?,
            HELLO if stream == 0 => {
                let version = take_u16(&mut body, "version")?;
                let stream_window = take_u32(&mut body, "stream window")?;
                let connection_window = take_u32(&mut body, "connection window")?;
                expect_empty(body, Self::Hello { version, stream_window, connection_window })?
            }
            HELLO => return Err(RpcError::Malformed("hello on a stream other than 0".into())),
            WINDOW => {
                let increment = take_u32(&mut body, "window increment")?;
                expect_empty(body, Self::Window { stream, increment })?
            }
            KEPT if stream == 0 => {
                if body.len() < 16 {
                    return Err(RpcError::Malformed("frame ends inside the trace id".into()));
                }
                let mut trace_id = [0; 16];
                body.copy_to_slice(&mut trace_id);
                let rule = String::from_utf8(body.to_vec())
                    .map_err(|_| RpcError::Malformed("keep rule is not UTF-8".into()))?;
                Self::Kept { trace_id, rule }
            }
            KEPT => return Err(RpcError::Malformed("kept on a stream other than 0".into())),
            other => return Err(RpcError::Malformed(format!("unknown frame kind {other}"))),
        };
        Ok(frame)
    }
}

fn put_field(out: &mut BytesMut, field: &str) -> Result<(), RpcError> {
    let len = u16::try_from(field.len()).map_err(|_| {
        RpcError::Malformed(format!("field of {} bytes exceeds {MAX_FIELD_LEN}", field.len()))
    })?;
    out.put_u16(len);
    out.put_slice(field.as_bytes());
    Ok(())
}

fn take_u16(body: &mut Bytes, what: &str) -> Result<u16, RpcError> {
    if body.len() < 2 {
        return Err(RpcError::Malformed(format!("frame ends inside the {what}")));
    }
    Ok(body.get_u16())
}

fn take_u32(body: &mut Bytes, what: &str) -> Result<u32, RpcError> {
    if body.len() < 4 {
        return Err(RpcError::Malformed(format!("frame ends inside the {what}")));
    }
    Ok(body.get_u32())
}

fn take_field(body: &mut Bytes, what: &str) -> Result<String, RpcError> {
    let len = usize::from(take_u16(body, what)?);
    if body.len() < len {
        return Err(RpcError::Malformed(format!("frame ends inside the {what}")));
    }
    let bytes = body.split_to(len);
    String::from_utf8(bytes.to_vec()).map_err(|_| RpcError::Malformed(format!("{what} is not UTF-8")))
}

fn expect_empty(body: Bytes, frame: Frame) -> Result<Frame, RpcError> {
    if body.is_empty() {
        Ok(frame)
    } else {
        Err(RpcError::Malformed(format!("{} unexpected bytes after the frame header", body.len())))
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use super::*;

    #[test]
    fn fields_up_to_the_limit_encode_and_longer_ones_are_refused() {
        let request = |value_len: usize| Frame::Request {
            stream: 1,
            endpoint: "generate".into(),
            metadata: [("tenant", "t".repeat(value_len))].into_iter().collect::<Metadata>(),
            payload: Bytes::new(),
        };
        assert!(request(MAX_FIELD_LEN).encode(&mut BytesMut::new()).is_ok());
        assert!(request(MAX_FIELD_LEN + 1).encode(&mut BytesMut::new()).is_err());
    }

    #[test]
    fn more_metadata_entries_than_allowed_are_refused_before_sending() {
        use crate::rpc::MAX_METADATA_ENTRIES;
        let request = |entries: usize| Frame::Request {
            stream: 1,
            endpoint: "generate".into(),
            metadata: (0..entries).map(|i| (format!("k{i}"), "v")).collect(),
            payload: Bytes::new(),
        };
        assert!(request(MAX_METADATA_ENTRIES).encode(&mut BytesMut::new()).is_ok());
        assert!(request(MAX_METADATA_ENTRIES + 1).encode(&mut BytesMut::new()).is_err());
    }
}
