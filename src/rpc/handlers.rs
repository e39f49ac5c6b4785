//! The request handlers a server runs at once, for every transport: spawned, cancelled by the
//! caller's stream id, and forgotten as they finish.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{AbortHandle, Id, JoinSet};

/// The handler tasks of one connection (TCP) or one subscription (NATS), by stream and by task.
/// Only the owning loop touches it: an entry leaves when that loop reaps its finished task, so
/// a handler that ends before its entry is made leaves nothing behind.
#[derive(Debug, Default)]
pub(crate) struct Handlers {
    tasks: JoinSet<()>,
    by_stream: HashMap<u64, AbortHandle>,
    by_task: HashMap<Id, u64>,
}

impl Handlers {
    /// Runs `handler` for `stream`. A caller that reuses a stream id loses its hold on the
    /// older handler (it still runs to its end and is reaped).
    pub(crate) fn spawn(&mut self, stream: u64, handler: impl Future<Output = ()> + Send + 'static) {
        let task = self.tasks.spawn(handler);
        self.by_task.insert(task.id(), stream);
        self.by_stream.insert(stream, task);
    }

    /// Aborts the handler of `stream`, if it still runs.
    pub(crate) fn cancel(&mut self, stream: u64) {
        if let Some(handler) = self.by_stream.remove(&stream) {
            handler.abort();
        }
    }

    /// Waits for a handler to finish and forgets it; pending forever while none runs, so it can
    /// sit in a `select!` beside the loop's other work.
    pub(crate) async fn reap_one(&mut self) {
        match self.tasks.join_next_with_id().await {
            Some(joined) => self.forget(joined.map_or_else(|error| error.id(), |(task, ())| task)),
            None => std::future::pending().await,
        }
    }

    fn forget(&mut self, task: Id) {
        if let Some(stream) = self.by_task.remove(&task) {
            if self.by_stream.get(&stream).is_some_and(|handler| handler.id() == task) {
                self.by_stream.remove(&stream);
            }
        }
    }

    /// Whether no handler runs.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))] // the NATS server's graceful drain
    pub(crate) fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Lets every handler run to its end (graceful shutdown).
    pub(crate) async fn finish(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    /// Aborts every handler and waits until they are gone.
    pub(crate) async fn abort(mut self) {
        self.tasks.shutdown().await;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_stream.len().max(self.by_task.len()).max(self.tasks.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Handlers that end at once, most before their entry is made: after 100,000 of them the
    /// bookkeeping is empty.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handlers_that_end_before_their_entry_leave_nothing_behind() {
        let mut handlers = Handlers::default();
        for stream in 0..100_000u64 {
            handlers.spawn(stream, async {});
            while let Some(joined) = handlers.tasks.try_join_next_with_id() {
                handlers.forget(joined.map_or_else(|error| error.id(), |(task, ())| task));
            }
        }
        while !handlers.tasks.is_empty() {
            handlers.reap_one().await;
        }
        assert_eq!(handlers.len(), 0);

        // A cancelled handler leaves nothing either, nor does a reused stream id.
        handlers.spawn(1, tokio::time::sleep(Duration::from_millis(20)));
        handlers.spawn(1, std::future::pending::<()>());
        handlers.cancel(1);
        while !handlers.tasks.is_empty() {
            handlers.reap_one().await;
        }
        assert_eq!(handlers.len(), 0);
    }
}
