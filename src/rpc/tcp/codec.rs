//! Frames in and out of a byte stream, through tokio-util's length-delimited codec.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use super::frame::Frame;
use crate::rpc::request::RpcError;

/// Default largest frame: 8 MiB.
///
/// ```
/// use tokentrace::rpc::tcp::{FrameCodec, DEFAULT_MAX_FRAME_LEN};
/// // What `Client::connect` and `Server::new` use unless told otherwise.
/// assert_eq!(FrameCodec::new(DEFAULT_MAX_FRAME_LEN).max_frame_len(), 8 * 1024 * 1024);
/// ```
pub const DEFAULT_MAX_FRAME_LEN: usize = 8 * 1024 * 1024;

/// Splits a byte stream into [`Frame`]s, refusing any frame over the size limit before
/// allocating room for it.
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use tokentrace::rpc::tcp::{Frame, FrameCodec};
///
/// let mut codec = FrameCodec::new(1024);
/// let mut wire = BytesMut::new();
/// codec.encode(&Frame::End { stream: 1 }, &mut wire).unwrap();
/// assert_eq!(codec.decode(&mut wire).unwrap(), Some(Frame::End { stream: 1 }));
///
/// let mut huge = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
/// assert!(codec.decode(&mut huge).is_err()); // refused from the header alone
/// ```
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    max_frame_len: usize,
    /// The inner codec has consumed a length header and waits for the body.
    in_body: bool,
}

impl FrameCodec {
    /// A codec refusing frames over `max_frame_len` bytes.
    ///
    /// ```
    /// use tokentrace::rpc::tcp::{FrameCodec, DEFAULT_MAX_FRAME_LEN};
    /// assert_eq!(FrameCodec::new(DEFAULT_MAX_FRAME_LEN).max_frame_len(), 8 << 20);
    /// ```
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            inner: LengthDelimitedCodec::builder().max_frame_length(max_frame_len).new_codec(),
            max_frame_len,
            in_body: false,
        }
    }

    /// The next whole frame in `buffer`, if there is one.
    ///
    /// A frame that arrives in pieces is returned once whole:
    ///
    /// ```
    /// use bytes::{Bytes, BytesMut};
    /// use tokentrace::rpc::tcp::{Frame, FrameCodec};
    ///
    /// let mut codec = FrameCodec::new(1024);
    /// let frame = Frame::Item { stream: 3, payload: Bytes::from_static(b"token") };
    /// let wire = codec.encode_to_bytes(&frame).unwrap();
    ///
    /// let mut buffer = BytesMut::new();
    /// buffer.extend_from_slice(&wire[..6]);
    /// assert_eq!(codec.decode(&mut buffer).unwrap(), None); // not yet
    /// buffer.extend_from_slice(&wire[6..]);
    /// assert_eq!(codec.decode(&mut buffer).unwrap(), Some(frame));
    /// assert!(buffer.is_empty());
    /// ```
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Frame>, RpcError> {
        // Read the announced size first (the inner codec would refuse it too, without saying
        // the size). Once the inner codec has taken a header, the buffer starts with the body.
        let header = if self.in_body { None } else { buffer.get(..4) };
        if let Some(header) = header {
            let size = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if size > self.max_frame_len {
                return Err(RpcError::FrameTooLarge { size, max: self.max_frame_len });
            }
        }
        let took_header = header.is_some();
        match self.inner.decode(buffer) {
            Ok(Some(body)) => {
                self.in_body = false;
                Frame::decode(body.freeze()).map(Some)
            }
            Ok(None) => {
                self.in_body |= took_header;
                Ok(None)
            }
            Err(error) => Err(RpcError::Malformed(error.to_string())),
        }
    }

    /// Appends `frame`, length prefix included, to `out`; refuses a frame over the limit.
    ///
    /// ```
    /// use bytes::{Bytes, BytesMut};
    /// use tokentrace::rpc::tcp::{Frame, FrameCodec};
    /// use tokentrace::rpc::RpcError;
    ///
    /// let codec = FrameCodec::new(64);
    /// let mut out = BytesMut::new();
    /// codec.encode(&Frame::End { stream: 1 }, &mut out).unwrap();
    /// let written = out.len();
    /// let big = Frame::Item { stream: 1, payload: Bytes::from(vec![0u8; 100]) };
    /// assert!(matches!(codec.encode(&big, &mut out), Err(RpcError::FrameTooLarge { .. })));
    /// assert_eq!(out.len(), written); // nothing of the refused frame was left in `out`
    /// ```
    pub fn encode(&self, frame: &Frame, out: &mut BytesMut) -> Result<(), RpcError> {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        frame.encode(out).inspect_err(|_| out.truncate(start))?;
        let size = out.len() - start - 4;
        if size > self.max_frame_len {
            out.truncate(start);
            return Err(RpcError::FrameTooLarge { size, max: self.max_frame_len });
        }
        out[start..start + 4].copy_from_slice(&(size as u32).to_be_bytes());
        Ok(())
    }

    /// `frame` encoded on its own, ready to write.
    ///
    /// ```
    /// use tokentrace::rpc::tcp::{Frame, FrameCodec};
    ///
    /// let wire = FrameCodec::new(1024).encode_to_bytes(&Frame::Cancel { stream: 9 }).unwrap();
    /// let body_len = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
    /// assert_eq!(body_len, wire.len() - 4); // the length prefix, then the body
    /// ```
    pub fn encode_to_bytes(&self, frame: &Frame) -> Result<Bytes, RpcError> {
        let mut out = BytesMut::new();
        self.encode(frame, &mut out)?;
        Ok(out.freeze())
    }

    /// The size limit.
    ///
    /// ```
    /// use tokentrace::rpc::tcp::FrameCodec;
    /// assert_eq!(FrameCodec::new(4096).max_frame_len(), 4096);
    /// ```
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }
}
