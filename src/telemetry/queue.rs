//! Bounded export queues on their own thread: a request never waits on the collector, memory
//! never grows without bound, and every span or log record lost is counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::rate_limit::RateLimitedWarning;

/// Most items waiting for export; past this they are dropped (and counted).
pub(crate) const QUEUE_CAPACITY: usize = 2048;
/// Most items in one export call.
const MAX_BATCH: usize = 512;
/// How long an item may wait before a partial batch is sent.
const SCHEDULE_DELAY: Duration = Duration::from_secs(1);

enum Message<T> {
    Item(T),
    Flush(SyncSender<()>),
    Shutdown(SyncSender<()>),
}

/// Counts of what never reached the collector.
#[derive(Debug, Default)]
pub(crate) struct Losses {
    /// Dropped because the queue was full.
    pub(crate) queue_full: AtomicU64,
    /// In batches the collector did not accept (down, slow, refused).
    pub(crate) export_failed: AtomicU64,
}

impl Losses {
    pub(crate) fn total(&self) -> u64 {
        self.queue_full.load(Ordering::Relaxed) + self.export_failed.load(Ordering::Relaxed)
    }
}

/// A bounded queue drained by an export thread.
#[derive(Debug)]
pub(crate) struct ExportQueue<T> {
    sender: SyncSender<Message<T>>,
    losses: Arc<Losses>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl<T: Send + 'static> ExportQueue<T> {
    /// Starts the export thread. `export` sends one batch and says whether the collector took it.
    pub(crate) fn start<F>(signal: &'static str, export: F) -> Self
    where
        F: FnMut(Vec<T>) -> Result<(), String> + Send + 'static,
    {
        let (sender, receiver) = mpsc::sync_channel(QUEUE_CAPACITY);
        let losses = Arc::new(Losses::default());
        let worker_losses = Arc::clone(&losses);
        let worker = std::thread::Builder::new()
            .name(format!("tokentrace-export-{signal}"))
            .spawn(move || drain(signal, receiver, export, &worker_losses))
            .ok();
        Self { sender, losses, worker: Mutex::new(worker) }
    }

    /// Queues `item`, or counts it lost when the queue is full. Never blocks.
    pub(crate) fn push(&self, item: T) {
        match self.sender.try_send(Message::Item(item)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.losses.queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn losses(&self) -> &Arc<Losses> {
        &self.losses
    }

    /// Exports what is queued; waits at most `timeout`.
    pub(crate) fn flush(&self, timeout: Duration) -> Result<(), String> {
        self.round_trip(Message::Flush, timeout)
    }

    /// Exports what is queued and stops the thread; waits at most `timeout`.
    pub(crate) fn shutdown(&self, timeout: Duration) -> Result<(), String> {
        let result = self.round_trip(Message::Shutdown, timeout);
        if result.is_ok() {
            if let Some(worker) = self.worker.lock().ok().and_then(|mut w| w.take()) {
                let _ = worker.join();
            }
        }
        result
    }

    fn round_trip(&self, message: fn(SyncSender<()>) -> Message<T>, timeout: Duration) -> Result<(), String> {
        let (done, wait) = mpsc::sync_channel(1);
        let deadline = Instant::now() + timeout;
        // The queue may be full: keep trying until the deadline rather than give up at once.
        let mut message = message(done);
        loop {
            match self.sender.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return Err("the export queue did not accept the request in time".into()),
            }
        }
        wait.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| format!("the export did not finish within {timeout:?}"))
    }
}

fn drain<T, F>(signal: &'static str, receiver: Receiver<Message<T>>, mut export: F, losses: &Losses)
where
    F: FnMut(Vec<T>) -> Result<(), String>,
{
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // One per signal, so a failing log export does not silence the trace export's warning.
    let export_failed = RateLimitedWarning::new();
    let mut send = |batch: &mut Vec<T>| {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        if let Err(error) = export(std::mem::take(batch)) {
            losses.export_failed.fetch_add(count, Ordering::Relaxed);
            // Straight to stderr: a log event here would feed the failing log pipeline.
            if export_failed.should_emit() {
                eprintln!("tokentrace: OTLP {signal} export failed ({error}); dropping data until the collector is back");
            }
        }
    };
    let mut oldest: Option<Instant> = None;
    loop {
        let wait = oldest.map_or(SCHEDULE_DELAY, |t| SCHEDULE_DELAY.saturating_sub(t.elapsed()));
        match receiver.recv_timeout(wait) {
            Ok(Message::Item(item)) => {
                oldest.get_or_insert_with(Instant::now);
                batch.push(item);
                if batch.len() >= MAX_BATCH {
                    send(&mut batch);
                    oldest = None;
                }
            }
            Ok(Message::Flush(done)) => {
                send(&mut batch);
                oldest = None;
                let _ = done.send(());
            }
            Ok(Message::Shutdown(done)) => {
                send(&mut batch);
                let _ = done.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                send(&mut batch);
                oldest = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut batch);
                return;
            }
        }
    }
}
