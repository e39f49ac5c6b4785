//! The caller's side: one NATS message per request, the replies on an inbox of its own.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use async_nats::{HeaderMap, HeaderName, HeaderValue, StatusCode, Subject, Subscriber};
use bytes::Bytes;
use futures_core::Stream;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::flow::{grant_subject, kept_subject, WINDOW_HEADER};
use super::subject;
use crate::decisions;
use crate::rpc::flow::{ReceiveWindow, DEFAULT_STREAM_WINDOW};
use crate::rpc::metadata::{check_entry_count, Metadata};
use crate::rpc::tcp::Frame;
use crate::rpc::{Request, RpcError};

/// How long a caller waits without any word from the worker (an item or a heartbeat) before
/// failing the stream: a few of the worker's heartbeat intervals
/// ([`DEFAULT_HEARTBEAT`](super::DEFAULT_HEARTBEAT)).
pub const DEFAULT_SILENCE_LIMIT: Duration = Duration::from_secs(5);

/// A worker RPC client over NATS: each request is published on `{subject}.{endpoint}`, where
/// the workers serving `subject` share the load in a queue group
/// ([`nats::Listener`](super::Listener)). Cheap to clone.
///
/// It is a `tower::Service<rpc::Request<Bytes>>`, like [`tcp::Client`](crate::rpc::tcp::Client):
/// wrap it in [`rpc::ClientLayer`](crate::rpc::ClientLayer). The request's metadata travels as
/// NATS headers; the response items come back in order on an inbox of the request's own.
///
/// Failures are errors, never a hang or a short stream: no worker on the subject is
/// [`RpcError::Unavailable`]; a worker that dies or goes silent for longer than the
/// [silence limit](Client::silence_limit) is [`RpcError::ConnectionLost`], as is a reply lost
/// on the way (each carries a sequence number); a request over the server's `max_payload` is
/// [`RpcError::FrameTooLarge`] before it is sent. Dropping a [`ResponseStream`] before its end
/// stops the worker's handler.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use bytes::Bytes;
/// use futures_util::StreamExt;
/// use tokentrace::rpc::{self, nats, Request};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// let connection = nats::async_nats::connect("nats://127.0.0.1:4222").await?;
/// let client = ServiceBuilder::new()
///     .layer(rpc::ClientLayer::default())
///     .service(nats::Client::new(connection, "tokentrace.backend")?);
/// let mut tokens = client.oneshot(Request::new("generate", Bytes::from_static(b"hi"))).await?;
/// while let Some(token) = tokens.next().await {
///     println!("{:?}", token?);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    nats: async_nats::Client,
    subject: Arc<str>,
    silence_limit: Duration,
    stream_window: u32,
}

impl Client {
    /// A client for the workers serving `subject`; fails when `subject` is not a literal NATS
    /// subject (an empty or wildcard token, whitespace).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use tokentrace::rpc::nats;
    ///
    /// let connection = nats::async_nats::connect("nats://127.0.0.1:4222").await?;
    /// let client = nats::Client::new(connection.clone(), "tokentrace.backend")?;
    /// assert_eq!(client.subject(), "tokentrace.backend");
    /// assert!(nats::Client::new(connection, "tokentrace.*").is_err());
    /// # Ok(()) }
    /// ```
    pub fn new(nats: async_nats::Client, subject: impl Into<String>) -> io::Result<Self> {
        let subject = subject.into();
        subject::check_config(&subject)?;
        Ok(Self {
            nats,
            subject: subject.into(),
            silence_limit: DEFAULT_SILENCE_LIMIT,
            stream_window: DEFAULT_STREAM_WINDOW,
        })
    }

    /// How long a stream waits without a word from its worker before it fails with
    /// [`RpcError::ConnectionLost`] (default [`DEFAULT_SILENCE_LIMIT`]). Keep it a few times the
    /// workers' [heartbeat](super::Server::heartbeat): a failure is reported between one and two
    /// limits after the worker's last word.
    ///
    /// ```no_run
    /// # async fn demo(connection: tokentrace::rpc::nats::async_nats::Client) -> std::io::Result<()> {
    /// use std::time::Duration;
    /// let client = tokentrace::rpc::nats::Client::new(connection, "tokentrace.backend")?
    ///     .silence_limit(Duration::from_secs(2));
    /// # Ok(()) }
    /// ```
    pub fn silence_limit(mut self, limit: Duration) -> Self {
        self.silence_limit = limit;
        self
    }

    /// Bytes of items a stream's worker may have sent and its consumer not yet taken (default
    /// 4 MiB; at least 1, at most 1 GiB): a stream nobody reads holds at most this much, in the
    /// worker's hands rather than in NATS's or this client's buffers, and holds up no other.
    /// An item larger than the window still goes through, alone.
    ///
    /// ```no_run
    /// # async fn demo(connection: tokentrace::rpc::nats::async_nats::Client) -> std::io::Result<()> {
    /// let client = tokentrace::rpc::nats::Client::new(connection, "tokentrace.backend")?
    ///     .stream_window(8 << 20);
    /// # Ok(()) }
    /// ```
    pub fn stream_window(mut self, bytes: u32) -> Self {
        self.stream_window = ReceiveWindow::new(bytes).size();
        self
    }

    /// The subject of the workers this client calls.
    ///
    /// ```no_run
    /// # fn demo(connection: tokentrace::rpc::nats::async_nats::Client) -> std::io::Result<()> {
    /// let client = tokentrace::rpc::nats::Client::new(connection, "dynamo.backend")?;
    /// assert_eq!(client.subject(), "dynamo.backend");
    /// # Ok(()) }
    /// ```
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Publishes the request on `{subject}.{endpoint}` and returns its response items.
    ///
    /// ```no_run
    /// # async fn demo(connection: tokentrace::rpc::nats::async_nats::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use futures_util::TryStreamExt;
    /// use tokentrace::rpc::{nats, Request, RpcError};
    ///
    /// let client = nats::Client::new(connection, "tokentrace.backend")?;
    /// match client.send(Request::new("generate", bytes::Bytes::from_static(b"hi"))).await {
    ///     Ok(items) => println!("{:?}", items.try_collect::<Vec<_>>().await?),
    ///     Err(RpcError::Unavailable(subject)) => eprintln!("no worker on {subject}"),
    ///     Err(error) => return Err(error.into()),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, request: Request<Bytes>) -> Result<ResponseStream, RpcError> {
        let endpoint = request.endpoint();
        subject::check(endpoint, "endpoint").map_err(RpcError::Malformed)?;
        let subject = format!("{}.{endpoint}", self.subject);
        let mut metadata = request.metadata;
        let trace = decisions::trace_of(&metadata);
        if trace.is_some() {
            // This process has keep rules: the worker waits for its decision.
            metadata.append(decisions::WILL_TELL, decisions::WILL_TELL_VALUE);
        }
        // The caller's window rides with the metadata, as one more header.
        let (headers, headers_len) = headers_of(&metadata, self.stream_window)?;
        let size = headers_len + request.payload.len();
        let max = self.nats.max_payload();
        if size > max {
            return Err(RpcError::FrameTooLarge { size, max });
        }
        let inbox = self.nats.new_inbox();
        // Subscribed before the request leaves, on the same connection: no reply can be missed.
        let replies = self.nats.subscribe(inbox.clone()).await.map_err(|error| {
            RpcError::ConnectionLost(format!("cannot subscribe to the reply inbox: {error}"))
        })?;
        self.nats
            .publish_with_reply_and_headers(subject.clone(), inbox, headers, request.payload)
            .await
            .map_err(|error| RpcError::ConnectionLost(format!("cannot publish on {subject}: {error}")))?;
        Ok(ResponseStream {
            replies,
            nats: self.nats.clone(),
            window: ReceiveWindow::new(self.stream_window),
            granted: u64::from(self.stream_window),
            grants_to: None,
            trace,
            subject,
            next_sequence: 0,
            silence_limit: self.silence_limit,
            silence_check: Box::pin(tokio::time::sleep(self.silence_limit)),
            heard: false,
            done: false,
        })
    }
}

/// The request's metadata as NATS headers, and their size on the wire (what `max_payload`
/// counts besides the payload).
fn headers_of(metadata: &Metadata, window: u32) -> Result<(HeaderMap, usize), RpcError> {
    check_entry_count(metadata.len())?;
    let mut headers = HeaderMap::new();
    // "NATS/1.0\r\n", then "name: value\r\n" per entry, then "\r\n".
    let mut len = 12;
    let window = window.to_string();
    let entries = metadata.iter().chain([(WINDOW_HEADER, window.as_str())]);
    for (name, value) in entries {
        let header = HeaderName::try_from(name)
            .map_err(|_| RpcError::Malformed(format!("metadata name {name:?} is not a valid NATS header")))?;
        let value: HeaderValue = value
            .parse()
            .map_err(|_| RpcError::Malformed(format!("metadata value of {name:?} holds a line break")))?;
        len += name.len() + value.as_str().len() + 4;
        headers.append(header, value);
    }
    Ok((headers, len))
}

impl Service<Request<Bytes>> for Client {
    type Response = ResponseStream;
    type Error = RpcError;
    type Future = Pin<Box<dyn Future<Output = Result<ResponseStream, RpcError>> + Send>>;

    /// Always ready: while the NATS connection is down, async-nats queues and reconnects.
    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let client = self.clone();
        Box::pin(async move { client.send(request).await })
    }
}

/// The response items of one NATS request. Dropping it before its end unsubscribes its inbox;
/// the worker's next reply then finds no one and its handler stops.
///
/// ```no_run
/// # async fn demo(client: tokentrace::rpc::nats::Client) -> Result<(), tokentrace::rpc::RpcError> {
/// use futures_util::StreamExt;
/// use tokentrace::rpc::Request;
///
/// let mut items = client.send(Request::new("generate", bytes::Bytes::new())).await?;
/// let first = items.next().await; // then drop: the worker's handler is cancelled
/// drop(items);
/// # let _ = first; Ok(()) }
/// ```
#[derive(Debug)]
pub struct ResponseStream {
    replies: Subscriber,
    nats: async_nats::Client,
    /// The stream's window: what its consumer took is granted back to the worker.
    window: ReceiveWindow,
    /// The total granted so far (the initial window included), as grants carry it.
    granted: u64,
    /// Where the worker takes this stream's grants, from its first reply.
    grants_to: Option<Subject>,
    /// The trace the request continues (a worker that kept it says so at the end).
    trace: Option<opentelemetry::trace::TraceId>,
    subject: String,
    next_sequence: u64,
    silence_limit: Duration,
    /// Fires every `silence_limit`; the stream fails when nothing was heard since the last time.
    /// A flag per message instead of a timer reset keeps the per-item cost to one store.
    silence_check: Pin<Box<Sleep>>,
    heard: bool,
    done: bool,
}

/// What one reply message means for the caller.
enum Reply {
    Item(Result<Bytes, RpcError>),
    Heartbeat,
    End,
}

impl ResponseStream {
    fn read(&mut self, message: async_nats::Message) -> Reply {
        if self.grants_to.is_none() {
            if let Some(watch) = message.reply.as_deref() {
                self.grants_to = Some(Subject::from(grant_subject(watch)));
                if self.trace.is_some() {
                    decisions::calling(self.trace, &kept_notice(&self.nats, kept_subject(watch)));
                }
            }
        }
        if let Some(status) = message.status {
            return Reply::Item(Err(if status == StatusCode::NO_RESPONDERS {
                RpcError::Unavailable(self.subject.clone())
            } else {
                let detail = message.description.unwrap_or_default();
                RpcError::ConnectionLost(format!("NATS status {status} {detail} on {}", self.subject))
            }));
        }
        let frame = match Frame::decode(message.payload) {
            Ok(frame) => frame,
            Err(error) => return Reply::Item(Err(error)),
        };
        if frame.stream() != self.next_sequence {
            let (expected, got) = (self.next_sequence, frame.stream());
            let why = if got > expected {
                format!(
                    "{} replies from {} were lost (the caller read too slowly)",
                    got - expected,
                    self.subject
                )
            } else {
                format!(
                    "reply #{got} from {} came again after #{expected} (two workers answered?)",
                    self.subject
                )
            };
            return Reply::Item(Err(RpcError::ConnectionLost(why)));
        }
        self.next_sequence += 1;
        match frame {
            Frame::Item { payload, .. } => Reply::Item(Ok(payload)),
            Frame::Heartbeat { .. } => Reply::Heartbeat,
            Frame::End { kept_by, .. } => {
                if let Some(rule) = kept_by {
                    decisions::kept_by_peer(self.trace, &rule);
                }
                Reply::End
            }
            Frame::Error { message, .. } => Reply::Item(Err(RpcError::Remote(message))),
            other => Reply::Item(Err(RpcError::Malformed(format!("a worker does not reply with {other:?}")))),
        }
    }
}

/// Tells the worker serving a stream (on `to`, below its watch subject) that this process kept
/// the stream's trace.
fn kept_notice(nats: &async_nats::Client, to: String) -> decisions::Callee {
    let (nats, to) = (nats.clone(), Subject::from(to));
    let runtime = tokio::runtime::Handle::try_current().ok();
    decisions::Callee::new(move |trace_id, rule| {
        let frame = Frame::Kept { trace_id: trace_id.to_bytes(), rule: rule.to_owned() };
        let mut body = bytes::BytesMut::new();
        if let (Some(runtime), Ok(())) = (&runtime, frame.encode(&mut body)) {
            let (nats, to) = (nats.clone(), to.clone());
            runtime.spawn(async move { nats.publish(to, body.freeze()).await });
        }
    })
}

impl ResponseStream {
    /// Tells the worker the total granted so far (publishing is async: on a task of its own).
    fn send_grant(&self) {
        let (Some(to), Ok(runtime)) = (self.grants_to.clone(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let mut body = bytes::BytesMut::new();
        if (Frame::Window { stream: self.granted, increment: 0 }).encode(&mut body).is_ok() {
            let nats = self.nats.clone();
            runtime.spawn(async move { nats.publish(to, body.freeze()).await });
        }
    }
}

impl Stream for ResponseStream {
    type Item = Result<Bytes, RpcError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.replies).poll_next(cx) {
                Poll::Ready(Some(message)) => {
                    this.heard = true;
                    match this.read(message) {
                        Reply::Heartbeat => {
                            // The last grant again, in case NATS lost it: a worker held by its
                            // window beats until the grant comes.
                            if this.granted > u64::from(this.window.size()) {
                                this.send_grant();
                            }
                            continue;
                        }
                        Reply::Item(Ok(item)) => {
                            if let Some(increment) = this.window.took(item.len()) {
                                this.granted += u64::from(increment);
                                this.send_grant();
                            }
                            return Poll::Ready(Some(Ok(item)));
                        }
                        Reply::Item(Err(error)) => {
                            this.done = true;
                            return Poll::Ready(Some(Err(error)));
                        }
                        Reply::End => {
                            this.done = true;
                            return Poll::Ready(None);
                        }
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let why = format!("the NATS connection closed before {} replied in full", this.subject);
                    return Poll::Ready(Some(Err(RpcError::ConnectionLost(why))));
                }
                Poll::Pending => break,
            }
        }
        while this.silence_check.as_mut().poll(cx).is_ready() {
            if !this.heard {
                this.done = true;
                let why = format!("no word from the worker on {} for {:?}", this.subject, this.silence_limit);
                return Poll::Ready(Some(Err(RpcError::ConnectionLost(why))));
            }
            this.heard = false;
            let next = Instant::now() + this.silence_limit;
            this.silence_check.as_mut().reset(next);
        }
        Poll::Pending
    }
}
