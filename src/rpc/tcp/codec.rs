//! Frames in and out of a byte stream, through tokio-util's length-delimited codec.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use super::frame::Frame;
use crate::rpc::error::RpcError;

/// Default largest frame: 8 MiB; what `Client::connect` and `Server::new` use unless told
/// otherwise.
///
/// ```
/// assert_eq!(tokentrace::rpc::tcp::DEFAULT_MAX_FRAME_LEN, 8 * 1024 * 1024);
/// ```
pub const DEFAULT_MAX_FRAME_LEN: usize = 8 * 1024 * 1024;

/// Splits a byte stream into [`Frame`]s, refusing any frame over the size limit before
/// allocating room for it.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    max_frame_len: usize,
    /// The inner codec has consumed a length header and waits for the body.
    in_body: bool,
}

impl FrameCodec {
    /// A codec refusing frames over `max_frame_len` bytes.
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
    pub fn encode_to_bytes(&self, frame: &Frame) -> Result<Bytes, RpcError> {
        let mut out = BytesMut::new();
        self.encode(frame, &mut out)?;
        Ok(out.freeze())
    }

    /// The size limit.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }
}
