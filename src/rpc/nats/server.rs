//! The worker's side: a queue subscription on `{subject}.>` ([`Listener`]), one handler task
//! per request ([`Server`]).

use std::future::{poll_fn, Future};
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Message, Subject, Subscriber};
use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tower_service::Service;

use super::flow::{caller_subjects, WINDOW_HEADER};
use super::subject;
use crate::decisions;
use crate::rpc::flow::{SendWindow, StreamWindows};
use crate::rpc::handlers::Handlers;
use crate::rpc::metadata::{check_entry_count, Metadata};
use crate::rpc::tcp::Frame;
use crate::rpc::{Request, RpcError};

/// How often a worker tells each caller it is still at work on its request, items or not.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);

/// Serves `service` to the callers of the listener's subject (see [`Server`]) until the NATS
/// client closes.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use bytes::Bytes;
/// use tokentrace::rpc::{self, nats, Request, RpcError};
/// use tower::ServiceBuilder;
///
/// let connection = nats::async_nats::connect("nats://127.0.0.1:4222").await?;
/// let echo = tower::service_fn(|request: Request<Bytes>| async move {
///     Ok::<_, RpcError>(futures_util::stream::iter([Ok::<_, RpcError>(request.payload)]))
/// });
/// let worker = ServiceBuilder::new().layer(rpc::ServerLayer::default().component("backend")).service(echo);
/// let listener = nats::Listener::bind(connection, "tokentrace.backend").await?;
/// nats::serve(listener, worker).await?;
/// # Ok(()) }
/// ```
pub async fn serve<S, St>(listener: Listener, service: S) -> io::Result<()>
where
    S: Service<Request<Bytes>, Response = St> + Clone + Send + 'static,
    S::Error: std::fmt::Display + Send,
    S::Future: Send,
    St: Stream<Item = Result<Bytes, RpcError>> + Send + 'static,
{
    Server::new(service).serve_with_shutdown(listener, std::future::pending()).await
}

/// A worker's subscription to its service subject: the requests published on
/// `{subject}.{endpoint}`, for any endpoint, taken in a queue group (by default named `subject`)
/// so that every worker serving the subject, on any machine that reaches the NATS cluster,
/// shares the load, each request going to one of them.
///
/// Once [`bind`](Listener::bind) returns, the NATS server knows the subscription: a request
/// published from then on reaches this worker or another of its group.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use tokentrace::rpc::nats::{async_nats, Listener};
///
/// let connection = async_nats::connect("nats://127.0.0.1:4222").await.map_err(std::io::Error::other)?;
/// let listener = Listener::bind(connection, "tokentrace.backend").await?;
/// assert_eq!(listener.subject(), "tokentrace.backend");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Listener {
    nats: async_nats::Client,
    subject: String,
    requests: Subscriber,
    /// Replies carry `{gone_prefix}.{stream}` as their reply subject: NATS answers there with
    /// "no responders" once the caller's inbox has no subscriber any more.
    gone_prefix: String,
    gone: Subscriber,
    /// Callers grant flow-control windows on `{gone_prefix}.{stream}.window` (a subject a
    /// worker that predates flow control does not hear, so it never takes a grant for a
    /// cancel) and send keep notices on `{gone_prefix}.{stream}.kept`.
    callers: Subscriber,
}

impl Listener {
    /// Subscribes to `{subject}.>` in the queue group `subject`. Fails when `subject` is not a
    /// literal NATS subject or the NATS server cannot be reached.
    ///
    /// ```no_run
    /// # async fn demo(connection: tokentrace::rpc::nats::async_nats::Client) {
    /// use tokentrace::rpc::nats::Listener;
    /// let refused = Listener::bind(connection, "tokentrace.*").await.unwrap_err();
    /// assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
    /// # }
    /// ```
    pub async fn bind(nats: async_nats::Client, subject: impl Into<String>) -> io::Result<Self> {
        let subject = subject.into();
        let group = subject.clone();
        Self::bind_in_group(nats, subject, group).await
    }

    /// Subscribes to `{subject}.>` in the queue group `group`. Workers in different groups on
    /// the same subject each get every request.
    ///
    /// ```no_run
    /// # async fn demo(connection: tokentrace::rpc::nats::async_nats::Client) -> std::io::Result<()> {
    /// use tokentrace::rpc::nats::Listener;
    /// let canary = Listener::bind_in_group(connection, "tokentrace.backend", "backend-canary").await?;
    /// # Ok(()) }
    /// ```
    pub async fn bind_in_group(
        nats: async_nats::Client,
        subject: impl Into<String>,
        group: impl Into<String>,
    ) -> io::Result<Self> {
        let subject = subject.into();
        subject::check_config(&subject)?;
        let requests = nats
            .queue_subscribe(format!("{subject}.>"), group.into())
            .await
            .map_err(|error| io::Error::other(format!("cannot subscribe to {subject}.>: {error}")))?;
        let gone_prefix = nats.new_inbox();
        let gone = nats
            .subscribe(format!("{gone_prefix}.*"))
            .await
            .map_err(|error| io::Error::other(format!("cannot subscribe to a NATS inbox: {error}")))?;
        let callers = nats
            .subscribe(caller_subjects(&gone_prefix))
            .await
            .map_err(|error| io::Error::other(format!("cannot subscribe to a NATS inbox: {error}")))?;
        // The round trip makes sure the server has both subscriptions.
        nats.flush()
            .await
            .map_err(|error| io::Error::other(format!("cannot reach the NATS server: {error}")))?;
        Ok(Self { nats, subject, requests, gone_prefix, gone, callers })
    }

    /// The service subject.
    ///
    /// ```no_run
    /// # async fn demo(connection: tokentrace::rpc::nats::async_nats::Client) -> std::io::Result<()> {
    /// let listener = tokentrace::rpc::nats::Listener::bind(connection, "dynamo.backend").await?;
    /// assert_eq!(listener.subject(), "dynamo.backend");
    /// # Ok(()) }
    /// ```
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// A worker serving RPC requests over NATS, from a [`Listener`].
///
/// Replies go to the caller's inbox in order, each with a sequence number, with heartbeats
/// while the handler works; a caller that is gone (its stream dropped, its process dead) is
/// noticed at the next reply or heartbeat, when NATS finds no one on the inbox, and its handler
/// is stopped.
///
/// ```no_run
/// # async fn demo(listener: tokentrace::rpc::nats::Listener) -> std::io::Result<()> {
/// # let service = tower::service_fn(|request: tokentrace::rpc::Request<bytes::Bytes>| async move {
/// #     Ok::<_, tokentrace::rpc::RpcError>(futures_util::stream::iter([Ok(request.payload)]))
/// # });
/// use std::time::Duration;
/// use tokentrace::rpc::nats::Server;
///
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let server = tokio::spawn(Server::new(service).heartbeat(Duration::from_millis(500)).serve_with_shutdown(
///     listener,
///     async {
///         let _ = stopped.await;
///     },
/// ));
/// // ... later: stop taking requests, finish the ones in flight, then return.
/// let _ = stop.send(());
/// server.await.unwrap()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Server<S> {
    service: S,
    heartbeat: Duration,
}

impl<S, St> Server<S>
where
    S: Service<Request<Bytes>, Response = St> + Clone + Send + 'static,
    S::Error: std::fmt::Display + Send,
    S::Future: Send,
    St: Stream<Item = Result<Bytes, RpcError>> + Send + 'static,
{
    /// A server with the default heartbeat ([`DEFAULT_HEARTBEAT`]).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use tokentrace::rpc::{nats::Server, Request, RpcError};
    ///
    /// let echo = tower::service_fn(|request: Request<Bytes>| async move {
    ///     Ok::<_, RpcError>(futures_util::stream::iter([Ok::<_, RpcError>(request.payload)]))
    /// });
    /// let server = Server::new(echo);
    /// # let _ = server;
    /// ```
    pub fn new(service: S) -> Self {
        Self { service, heartbeat: DEFAULT_HEARTBEAT }
    }

    /// How often each caller hears from its handler when there is no item to send (default
    /// [`DEFAULT_HEARTBEAT`]); keep it a fraction of the callers'
    /// [silence limit](super::Client::silence_limit). It also bounds how long a handler runs
    /// on for a caller that is gone.
    ///
    /// ```
    /// # let service = tower::service_fn(|request: tokentrace::rpc::Request<bytes::Bytes>| async move {
    /// #     Ok::<_, tokentrace::rpc::RpcError>(futures_util::stream::iter([Ok(request.payload)]))
    /// # });
    /// use std::time::Duration;
    /// let server = tokentrace::rpc::nats::Server::new(service).heartbeat(Duration::from_millis(250));
    /// # let _ = server;
    /// ```
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Serves until `shutdown` completes, then stops taking requests (other workers in the
    /// queue group get them), lets every handler finish, flushes its replies and returns.
    ///
    /// ```no_run
    /// # async fn demo(listener: tokentrace::rpc::nats::Listener) -> std::io::Result<()> {
    /// # let service = tower::service_fn(|request: tokentrace::rpc::Request<bytes::Bytes>| async move {
    /// #     Ok::<_, tokentrace::rpc::RpcError>(futures_util::stream::iter([Ok(request.payload)]))
    /// # });
    /// tokentrace::rpc::nats::Server::new(service)
    ///     .serve_with_shutdown(listener, async {
    ///         let _ = tokio::signal::ctrl_c().await;
    ///     })
    ///     .await
    /// # }
    /// ```
    pub async fn serve_with_shutdown(
        self,
        listener: Listener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let Listener { nats, subject, mut requests, gone_prefix, mut gone, mut callers } = listener;
        let windows = StreamWindows::default();
        let endpoint_at = subject.len() + 1;
        let mut handlers = Handlers::default();
        let mut streams = 0u64;
        let mut shutdown = pin!(shutdown);
        loop {
            tokio::select! {
                message = next(&mut requests) => {
                    let Some(message) = message else {
                        // The client was closed or drained: nobody is left to reply through.
                        handlers.abort().await;
                        return Ok(());
                    };
                    let Some(reply_to) = message.reply.clone() else {
                        tracing::warn!(target: "tokentrace", subject = %message.subject, "rpc request without a reply subject dropped");
                        continue;
                    };
                    streams += 1;
                    let request = request_of(message, endpoint_at)
                        .map(|(request, size)| (request, windows.open(streams, size)));
                    let replies = Replies {
                        nats: nats.clone(),
                        to: reply_to,
                        watch: Subject::from(format!("{gone_prefix}.{streams}")),
                        sequence: 0,
                        finished: false,
                        stream: streams,
                        windows: windows.clone(),
                    };
                    handlers.spawn(streams, handle(request, self.service.clone(), replies, self.heartbeat));
                }
                Some(message) = next(&mut gone) => cancel_gone(&mut handlers, &message),
                Some(message) = next(&mut callers) => caller_says(&windows, &message),
                () = handlers.reap_one() => {}
                () = &mut shutdown => break,
            }
        }
        // Other workers in the group take the requests from here on.
        let _ = requests.unsubscribe().await;
        while !handlers.is_empty() {
            tokio::select! {
                () = handlers.reap_one() => {}
                Some(message) = next(&mut gone) => cancel_gone(&mut handlers, &message),
                Some(message) = next(&mut callers) => caller_says(&windows, &message),
            }
        }
        nats.flush()
            .await
            .map_err(|error| io::Error::other(format!("cannot flush the last replies: {error}")))
    }
}

async fn next(subscriber: &mut Subscriber) -> Option<Message> {
    poll_fn(|cx| std::pin::Pin::new(&mut *subscriber).poll_next(cx)).await
}

/// Stops the handler whose caller NATS found gone (a "no responders" on its watch subject).
fn cancel_gone(handlers: &mut Handlers, message: &Message) {
    if let Some(stream) = message.subject.rsplit('.').next().and_then(|token| token.parse().ok()) {
        handlers.cancel(stream);
    }
}

/// A caller's message below a stream's watch subject: a grant on `{prefix}.{stream}.window`
/// (a `window` frame whose u64 is the total the caller has granted since the stream began, so
/// a lost grant is made good by the next), or a keep notice on `{prefix}.{stream}.kept`.
fn caller_says(windows: &StreamWindows, message: &Message) {
    match Frame::decode(message.payload.clone()) {
        Ok(Frame::Window { stream: total, .. }) => {
            let stream = message.subject.rsplit('.').nth(1).and_then(|token| token.parse().ok());
            if let Some(window) = stream.and_then(|stream| windows.get(stream)) {
                window.grant_total(total);
            }
        }
        Ok(Frame::Kept { trace_id, rule }) => {
            decisions::kept_by_peer(Some(opentelemetry::trace::TraceId::from_bytes(trace_id)), &rule);
        }
        // Nothing else comes this way; ignore rather than trust it.
        _ => {}
    }
}

/// The request a message carries: the endpoint from its subject, the metadata from its headers.
/// The request of `message` and the window its caller grants (the `tokentrace-window` header,
/// which only callers that speak flow control send).
fn request_of(message: Message, endpoint_at: usize) -> Result<(Request<Bytes>, u32), RpcError> {
    let endpoint = message.subject.get(endpoint_at..).unwrap_or_default().to_owned();
    let mut request = Request::new(endpoint, message.payload);
    let mut window = None;
    if let Some(headers) = &message.headers {
        window = headers.get(WINDOW_HEADER).and_then(|value| value.as_str().parse().ok());
        request.metadata = metadata_of(headers)?;
    }
    let window = window.ok_or_else(|| {
        RpcError::Malformed(format!(
            "the caller sent no {WINDOW_HEADER} header: it speaks an older tokentrace RPC than this worker \
             (no flow control); upgrade the caller"
        ))
    })?;
    Ok((request, window))
}

fn metadata_of(headers: &async_nats::HeaderMap) -> Result<Metadata, RpcError> {
    let entries = headers.iter().filter(|(name, _)| AsRef::<str>::as_ref(name) != WINDOW_HEADER);
    check_entry_count(entries.clone().map(|(_, values)| values.len()).sum())?;
    let mut metadata = Metadata::new();
    for (name, values) in entries {
        for value in values {
            metadata.append(name.as_ref(), value.as_str());
        }
    }
    Ok(metadata)
}

/// The replies of one request, numbered from 0. However its handler ends (normally, with an
/// error, by panic or by cancellation) the caller gets an end or an error.
struct Replies {
    nats: async_nats::Client,
    to: Subject,
    watch: Subject,
    sequence: u64,
    finished: bool,
    /// The stream's id here, and the windows its window is kept in until it ends.
    stream: u64,
    windows: StreamWindows,
}

impl Replies {
    /// Publishes the next reply; fails when it exceeds the server's `max_payload` or the
    /// client is closed.
    async fn send(&mut self, frame: impl FnOnce(u64) -> Frame) -> Result<(), RpcError> {
        let body = encoded(&frame(self.sequence))?;
        let (size, max) = (body.len(), self.nats.max_payload());
        if size > max {
            return Err(RpcError::FrameTooLarge { size, max });
        }
        self.sequence += 1;
        self.nats
            .publish_with_reply(self.to.clone(), self.watch.clone(), body)
            .await
            .map_err(|error| RpcError::ConnectionLost(format!("cannot publish a reply: {error}")))
    }

    async fn item(&mut self, payload: Bytes) -> Result<(), RpcError> {
        self.send(|stream| Frame::Item { stream, payload }).await
    }

    async fn heartbeat(&mut self) -> Result<(), RpcError> {
        self.send(|stream| Frame::Heartbeat { stream }).await
    }

    /// Ends the stream, saying whether this process's keep rules kept the request's trace.
    async fn end(mut self, trace: Option<opentelemetry::trace::TraceId>) {
        self.finished = true;
        let kept_by = decisions::kept_here(trace).map(|rule| rule.to_string());
        let _ = self.send(|stream| Frame::End { stream, kept_by }).await;
    }

    async fn fail(mut self, message: String) {
        self.finished = true;
        let _ = self.send(|stream| Frame::Error { stream, message }).await;
    }
}

/// A reply's message body: the frame's encoding (one copy of its payload).
fn encoded(frame: &Frame) -> Result<Bytes, RpcError> {
    let mut body = BytesMut::new();
    frame.encode(&mut body)?;
    Ok(body.freeze())
}

impl Drop for Replies {
    fn drop(&mut self) {
        self.windows.close(self.stream);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if self.finished {
            return;
        }
        let frame = Frame::Error { stream: self.sequence, message: "handler stopped before its end".into() };
        if let Ok(body) = encoded(&frame) {
            let (nats, to) = (self.nats.clone(), self.to.clone());
            runtime.spawn(async move { nats.publish(to, body).await });
        }
    }
}

async fn handle<S, St>(
    request: Result<(Request<Bytes>, Arc<SendWindow>), RpcError>,
    mut service: S,
    mut replies: Replies,
    heartbeat: Duration,
) where
    S: Service<Request<Bytes>, Response = St>,
    S::Error: std::fmt::Display,
    St: Stream<Item = Result<Bytes, RpcError>>,
{
    let (request, window) = match request {
        Ok(request_and_window) => request_and_window,
        Err(error) => return replies.fail(error.to_string()).await,
    };
    let trace = decisions::served(&request.metadata);
    let mut beats = interval_at(Instant::now() + heartbeat, heartbeat);
    beats.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let called = async {
        poll_fn(|cx| service.poll_ready(cx)).await?;
        service.call(request).await
    };
    let mut called = pin!(called);
    let items = loop {
        tokio::select! {
            biased;
            items = &mut called => break items,
            _ = beats.tick() => if replies.heartbeat().await.is_err() { return },
        }
    };
    let items = match items {
        Ok(items) => items,
        Err(error) => return replies.fail(error.to_string()).await,
    };
    let mut items = pin!(items);
    loop {
        tokio::select! {
            biased;
            item = poll_fn(|cx| items.as_mut().poll_next(cx)) => match item {
                Some(Ok(payload)) => {
                    // A stream held by its window still beats: it is not a dead worker.
                    let mut reserved = pin!(window.reserve(payload.len()));
                    loop {
                        tokio::select! {
                            biased;
                            () = &mut reserved => break,
                            _ = beats.tick() => if replies.heartbeat().await.is_err() { return },
                        }
                    }
                    match replies.item(payload).await {
                        Ok(()) => {}
                        Err(error @ RpcError::FrameTooLarge { .. }) => return replies.fail(error.to_string()).await,
                        // The client is closed: nobody to tell.
                        Err(_) => return replies.finished = true,
                    }
                }
                Some(Err(error)) => return replies.fail(error.to_string()).await,
                None => return replies.end(trace).await,
            },
            _ = beats.tick() => if replies.heartbeat().await.is_err() { return },
        }
    }
}
