//! A worker RPC handler for the transports' tests: numbered items at a chosen pace, and a flag
//! raised when the handler's stream is dropped (cancelled).

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
