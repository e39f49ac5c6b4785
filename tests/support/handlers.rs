//! Worker RPC handlers for the transports' tests: numbered items at a chosen pace, and a flag
//! raised when the handler's stream is dropped (cancelled); items of a chosen size, counted as
//! the handler makes them (flow control).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use tokentrace::rpc::{Request, RpcError};

pub type Items = stream::BoxStream<'static, Result<Bytes, RpcError>>;

/// Yields `count` items `"<payload>:<i>"`, the first after `first_delay`, the others after
/// `delay` each; flags `dropped` when the handler's stream is dropped.
pub fn counting_handler(
    count: usize,
    first_delay: Duration,
    delay: Duration,
    dropped: Arc<AtomicBool>,
) -> impl tower::Service<Request<Bytes>, Response = Items, Error = RpcError, Future = impl Send>
       + Clone
       + Send
       + 'static {
    tower::service_fn(move |request: Request<Bytes>| {
        let dropped = Arc::clone(&dropped);
        async move {
            let prefix = String::from_utf8(request.payload.to_vec()).unwrap();
            struct OnDrop(Arc<AtomicBool>);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let guard = OnDrop(dropped);
            let items = stream::unfold((0, guard), move |(i, guard)| {
                let prefix = prefix.clone();
                async move {
                    if i == count {
                        return None;
                    }
                    let wait = if i == 0 { first_delay } else { delay };
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    Some((Ok(Bytes::from(format!("{prefix}:{i}"))), (i + 1, guard)))
                }
            });
            Ok::<Items, RpcError>(items.boxed())
        }
    })
}

/// A handler streaming `{count}` items of `{size}` bytes (the payload says `count:size`), each
/// beginning with its index; `produced[n]` counts the items request `n` (in call order) made.
pub fn sized_items(
    produced: Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicUsize>>>>,
) -> impl tower::Service<Request<Bytes>, Response = Items, Error = RpcError, Future = impl Send>
       + Clone
       + Send
       + 'static {
    use std::sync::atomic::AtomicUsize;
    tower::service_fn(move |request: Request<Bytes>| {
        let text = String::from_utf8(request.payload.to_vec()).unwrap();
        let (count, size) = text.split_once(':').unwrap();
        let (count, size): (u32, usize) = (count.parse().unwrap(), size.parse().unwrap());
        let counter = Arc::new(AtomicUsize::new(0));
        produced.lock().unwrap().push(Arc::clone(&counter));
        let items = stream::iter(0..count).map(move |index| {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut item = vec![0u8; size];
            item[..4].copy_from_slice(&index.to_be_bytes());
            Ok::<_, RpcError>(Bytes::from(item))
        });
        std::future::ready(Ok::<Items, RpcError>(items.boxed()))
    })
}

/// Reads `stream` to its end, checking every item's index continues from `next`.
pub async fn read_in_order(
    items: &mut (impl futures_util::Stream<Item = Result<Bytes, RpcError>> + Unpin),
    mut next: u32,
    count: u32,
) {
    while let Some(item) = tokio::time::timeout(Duration::from_secs(60), items.next()).await.expect("no hang")
    {
        let item = item.unwrap();
        assert_eq!(u32::from_be_bytes(item[..4].try_into().unwrap()), next, "in order");
        next += 1;
    }
    assert_eq!(next, count, "every item delivered");
}
