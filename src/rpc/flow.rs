//! Flow control for streamed replies, for every transport: a receiver grants a window of bytes
//! per stream (and per connection), the sender has at most that much in flight, and the
//! receiver grants more as its consumer takes items. A stream nobody reads then holds one window
//! at each end and holds up no other stream.
//!
//! An item costs its payload's length, but never more than the window: an item larger than the
//! window still goes through, alone (it waits until nothing else is in flight).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Semaphore;

/// Bytes of items one stream may have in flight before its receiver grants more: enough for a
/// fast consumer of megabyte items (a KV cache) to stream without waiting on each grant.
pub(crate) const DEFAULT_STREAM_WINDOW: u32 = 4 << 20;

/// Bytes of items one connection may have in flight, over all its streams.
pub(crate) const DEFAULT_CONNECTION_WINDOW: u32 = 64 << 20;

/// The largest window: 1 GiB (a grant then always fits its `u32`).
pub(crate) const MAX_WINDOW: u32 = 1 << 30;

/// What an item of `len` bytes costs against a window of `window` bytes.
pub(crate) fn cost(len: usize, window: u32) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX).min(window)
}

/// The sender's side of a window.
#[derive(Debug)]
pub(crate) struct SendWindow {
    size: u32,
    available: Semaphore,
    /// The total granted so far (the initial window included), for receivers that grant in
    /// totals ([`SendWindow::grant_total`]).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))] // NATS grants in totals
    granted: AtomicU64,
}

impl SendWindow {
    pub(crate) fn new(size: u32) -> Self {
        let size = size.clamp(1, MAX_WINDOW);
        Self { size, available: Semaphore::new(size as usize), granted: AtomicU64::new(u64::from(size)) }
    }

    /// Waits until an item of `len` bytes may be sent, and takes its cost.
    pub(crate) async fn reserve(&self, len: usize) {
        let cost = cost(len, self.size);
        if cost == 0 {
            return;
        }
        // The semaphore is never closed.
        if let Ok(permits) = self.available.acquire_many(cost).await {
            permits.forget();
        }
    }

    /// The receiver granted `increment` bytes: never more than the window in all, whatever it
    /// says, so a peer that grants too much cannot make this side hold more.
    pub(crate) fn grant(&self, increment: u32) {
        let room = self.size as usize - self.available.available_permits().min(self.size as usize);
        self.available.add_permits((increment as usize).min(room));
    }

    /// The receiver has granted `total` bytes since the stream began: what a transport that may
    /// lose a grant sends (the next grant makes a lost one good).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))] // NATS grants in totals
    pub(crate) fn grant_total(&self, total: u64) {
        let before = self.granted.fetch_max(total, Ordering::AcqRel);
        if total > before {
            self.grant(u32::try_from(total - before).unwrap_or(u32::MAX));
        }
    }

    /// Bytes sent and not yet granted back.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> u32 {
        self.size - self.available.available_permits().min(self.size as usize) as u32
    }
}

/// The send windows of a server's open streams, by stream id: granted to as grants arrive,
/// forgotten as each stream's handler ends.
#[derive(Clone, Debug, Default)]
pub(crate) struct StreamWindows {
    open: Arc<Mutex<HashMap<u64, Arc<SendWindow>>>>,
}

impl StreamWindows {
    fn open_streams(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<SendWindow>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new stream's window of `size` bytes.
    pub(crate) fn open(&self, stream: u64, size: u32) -> Arc<SendWindow> {
        let window = Arc::new(SendWindow::new(size));
        self.open_streams().insert(stream, Arc::clone(&window));
        window
    }

    /// The stream's window, while it is open.
    pub(crate) fn get(&self, stream: u64) -> Option<Arc<SendWindow>> {
        self.open_streams().get(&stream).cloned()
    }

    /// The stream ended: grants for it are nothing to act on.
    pub(crate) fn close(&self, stream: u64) {
        self.open_streams().remove(&stream);
    }
}

/// The receiver's side of a window: counts what its consumer took, and says when to grant it
/// back, in grants of at least a part of the window so they stay few.
#[derive(Debug)]
pub(crate) struct ReceiveWindow {
    size: u32,
    /// Grant once this much is taken.
    threshold: u32,
    /// Taken and not yet granted: below `threshold` between calls.
    taken: Mutex<u32>,
}

impl ReceiveWindow {
    /// A stream's window: granted back half a window at a time, so its sender never runs dry.
    pub(crate) fn new(size: u32) -> Self {
        let size = size.clamp(1, MAX_WINDOW);
        Self { size, threshold: size.div_ceil(2), taken: Mutex::new(0) }
    }

    /// A connection's window: granted back a sixteenth at a time, so the bytes its stalled
    /// streams took but cannot yet give back (each under its own stream's threshold) keep at
    /// most a sixteenth of it from the streams that flow.
    pub(crate) fn for_connection(size: u32) -> Self {
        let size = size.clamp(1, MAX_WINDOW);
        Self { size, threshold: size.div_ceil(16), taken: Mutex::new(0) }
    }

    /// The window's size.
    pub(crate) fn size(&self) -> u32 {
        self.size
    }

    /// The consumer took (or dropped) an item of `len` bytes: the increment to grant now, if
    /// any. Shared by a connection's streams: every byte taken is granted exactly once.
    pub(crate) fn took(&self, len: usize) -> Option<u32> {
        let mut taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        *taken += cost(len, self.size);
        (*taken >= self.threshold).then(|| std::mem::take(&mut *taken))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_sender_waits_for_grants_and_an_oversized_item_goes_alone() {
        let window = Arc::new(SendWindow::new(100));
        window.reserve(60).await;
        window.reserve(40).await;
        assert_eq!(window.in_flight(), 100);
        let waiting = tokio::spawn({
            let window = Arc::clone(&window);
            async move { window.reserve(1_000).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a full window makes the sender wait");
        window.grant(60);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "an oversized item waits for the whole window");
        window.grant(40);
        waiting.await.unwrap();
        assert_eq!(window.in_flight(), 100, "it cost the whole window, not its size");
        window.grant(u32::MAX);
        assert_eq!(window.in_flight(), 0, "a grant never lifts the window above its size");
        let totals = SendWindow::new(100);
        totals.reserve(100).await;
        totals.grant_total(130);
        totals.grant_total(120);
        assert_eq!(totals.in_flight(), 70, "a total grants what it adds to the largest before");
        totals.grant_total(200);
        assert_eq!(totals.in_flight(), 0);
        window.reserve(0).await;
    }

    #[test]
    fn a_receiver_grants_every_byte_once_in_half_windows() {
        let window = ReceiveWindow::new(100);
        assert_eq!(window.took(30), None);
        assert_eq!(window.took(30), Some(60));
        assert_eq!(window.took(10_000), Some(100), "an item costs at most the window");
        let granted: u32 = (0..1_000).filter_map(|_| window.took(7)).sum();
        assert_eq!(granted + *window.taken.lock().unwrap(), 7_000);
        let connection = ReceiveWindow::for_connection(1_600);
        assert_eq!(connection.took(99), None);
        assert_eq!(connection.took(1), Some(100), "a connection grants a sixteenth at a time");
    }
}
