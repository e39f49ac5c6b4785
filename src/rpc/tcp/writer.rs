//! The socket writer both ends share: frames from a bounded queue, written without copying.

use std::io::{self, IoSlice};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// Frames queued for one connection's socket. Bounded: when the peer stops reading, the
/// socket's buffers fill, this queue fills, and whoever produces frames waits.
pub(super) const WRITE_QUEUE: usize = 256;

/// Most frames gathered into one vectored write.
const FRAMES_PER_WRITE: usize = 64;

/// Writes queued frames until every sender is gone, then shuts the socket's write side. Frames
/// already queued together go out in one vectored write, each straight from its own buffer:
/// a frame's bytes are copied once, when it is encoded.
pub(super) async fn write_frames(
    mut writer: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Bytes>,
) -> io::Result<()> {
    let mut frames: Vec<Bytes> = Vec::with_capacity(FRAMES_PER_WRITE);
    while let Some(frame) = queue.recv().await {
        frames.push(frame);
        while frames.len() < FRAMES_PER_WRITE {
            match queue.try_recv() {
                Ok(frame) => frames.push(frame),
                Err(_) => break,
            }
        }
        write_all(&mut writer, &mut frames).await?;
    }
    writer.shutdown().await
}

/// Writes every frame, whatever the socket takes per call; leaves `frames` empty.
async fn write_all(writer: &mut OwnedWriteHalf, frames: &mut Vec<Bytes>) -> io::Result<()> {
    let mut first = 0;
    while first < frames.len() {
        let slices: Vec<IoSlice<'_>> = frames[first..].iter().map(|frame| IoSlice::new(frame)).collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let frame = &mut frames[first];
            let taken = written.min(frame.len());
            frame.advance(taken);
            written -= taken;
            if frame.is_empty() {
                first += 1;
            }
        }
    }
    frames.clear();
    Ok(())
}

/// Queues `item` from a context that cannot wait (a `Drop`, a lock held): at once when there
/// is room, else from a task, so a full queue never loses an end-of-stream frame, a cancel or
/// a stream's final error while its receiver lives.
pub(super) fn send_soon<T: Send + 'static>(queue: &mpsc::Sender<T>, item: T) {
    if let Err(mpsc::error::TrySendError::Full(item)) = queue.try_send(item) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let queue = queue.clone();
            runtime.spawn(async move { queue.send(item).await });
        }
    }
}
