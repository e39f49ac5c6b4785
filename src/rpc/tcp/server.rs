//! The server side: serve a `tower::Service` of RPC requests on a TCP listener.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use opentelemetry::trace::TraceId;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tower_service::Service;

use super::codec::{FrameCodec, DEFAULT_MAX_FRAME_LEN};
use super::frame::{Frame, WIRE_VERSION};
use super::writer::{send_soon, write_frames, WRITE_QUEUE};
use crate::decisions;
use crate::rpc::flow::{SendWindow, StreamWindows};
use crate::rpc::handlers::Handlers;
use crate::rpc::{Request, RpcError};

/// Serves `service` on `listener` until the listener fails; see [`Server`] for the limit and
/// graceful shutdown.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use bytes::Bytes;
/// use tokentrace::rpc::{tcp, Request, RpcError};
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9000").await?;
/// let echo = tower::service_fn(|request: Request<Bytes>| async move {
///     Ok::<_, RpcError>(futures_util::stream::iter([Ok::<_, RpcError>(request.payload)]))
/// });
/// tcp::serve(listener, echo).await
/// # }
/// ```
pub async fn serve<S, St>(listener: TcpListener, service: S) -> io::Result<()>
where
    S: Service<Request<Bytes>, Response = St> + Clone + Send + 'static,
    S::Error: std::fmt::Display + Send,
    S::Future: Send,
    St: Stream<Item = Result<Bytes, RpcError>> + Send + 'static,
{
    Server::new(service).serve_with_shutdown(listener, std::future::pending()).await
}

/// A configurable TCP RPC server.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// # let service = tower::service_fn(|request: tokentrace::rpc::Request<bytes::Bytes>| async move {
/// #     Ok::<_, tokentrace::rpc::RpcError>(futures_util::stream::iter([Ok(request.payload)]))
/// # });
/// use tokentrace::rpc::tcp::Server;
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let server = tokio::spawn(Server::new(service).max_frame_len(1 << 20).serve_with_shutdown(listener, async {
///     let _ = stopped.await;
/// }));
/// // ... later: stop accepting, let in-flight streams finish, then return.
/// let _ = stop.send(());
/// server.await.unwrap()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Server<S> {
    service: S,
    max_frame_len: usize,
}

impl<S, St> Server<S>
where
    S: Service<Request<Bytes>, Response = St> + Clone + Send + 'static,
    S::Error: std::fmt::Display + Send,
    S::Future: Send,
    St: Stream<Item = Result<Bytes, RpcError>> + Send + 'static,
{
    /// A server with the default frame limit (8 MiB).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use tokentrace::rpc::{tcp::Server, Request, RpcError};
    ///
    /// let echo = tower::service_fn(|request: Request<Bytes>| async move {
    ///     Ok::<_, RpcError>(futures_util::stream::iter([Ok::<_, RpcError>(request.payload)]))
    /// });
    /// let server = Server::new(echo);
    /// # let _ = server;
    /// ```
    pub fn new(service: S) -> Self {
        Self { service, max_frame_len: DEFAULT_MAX_FRAME_LEN }
    }

    /// Refuses frames (received or sent) over `max_frame_len` bytes.
    ///
    /// A request over the limit is refused before it is read whole; the client sees the
    /// connection end:
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use bytes::Bytes;
    /// use futures_util::StreamExt;
    /// use tokentrace::rpc::{tcp, Request, RpcError};
    ///
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let addr = listener.local_addr()?;
    /// let echo = tower::service_fn(|request: Request<Bytes>| async move {
    ///     Ok::<_, RpcError>(futures_util::stream::iter([Ok::<_, RpcError>(request.payload)]))
    /// });
    /// let server = tcp::Server::new(echo).max_frame_len(1024);
    /// tokio::spawn(server.serve_with_shutdown(listener, std::future::pending()));
    ///
    /// let client = tcp::Client::connect(addr).await?; // the client's own limit is 8 MiB
    /// let mut items = client.send(Request::new("echo", Bytes::from(vec![0u8; 4096]))).await.unwrap();
    /// assert!(matches!(items.next().await, Some(Err(RpcError::ConnectionLost(_)))));
    /// # Ok::<(), std::io::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn max_frame_len(mut self, max_frame_len: usize) -> Self {
        self.max_frame_len = max_frame_len;
        self
    }

    /// Serves until `shutdown` completes; then stops accepting, lets every in-flight stream
    /// finish, closes the connections and returns.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use bytes::Bytes;
    /// use futures_util::TryStreamExt;
    /// use tokentrace::rpc::{tcp, Request, RpcError};
    ///
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let addr = listener.local_addr()?;
    /// let echo = tower::service_fn(|request: Request<Bytes>| async move {
    ///     Ok::<_, RpcError>(futures_util::stream::iter([Ok::<_, RpcError>(request.payload)]))
    /// });
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let server = tokio::spawn(tcp::Server::new(echo).serve_with_shutdown(listener, async {
    ///     let _ = stopped.await;
    /// }));
    ///
    /// let client = tcp::Client::connect(addr).await?;
    /// let items = client.send(Request::new("echo", Bytes::from_static(b"hi"))).await.unwrap();
    /// assert_eq!(items.try_collect::<Vec<_>>().await.unwrap(), ["hi"]);
    ///
    /// let _ = stop.send(());
    /// server.await.unwrap()?; // returns once every connection is closed
    /// assert!(tcp::Client::connect(addr).await.is_err());
    /// # Ok::<(), std::io::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn serve_with_shutdown(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let (stop, stopping) = watch::channel(false);
        let mut connections = JoinSet::new();
        let mut shutdown = pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (socket, _) = match accepted {
                        Ok(accepted) => accepted,
                        // Per-connection failures (reset before accept, out of descriptors)
                        // must not take the server down.
                        Err(error) => {
                            tracing::warn!(target: "tokentrace", %error, "rpc accept failed");
                            continue;
                        }
                    };
                    connections.spawn(serve_connection(socket, self.service.clone(), self.max_frame_len, stopping.clone()));
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        let _ = stop.send(true);
        while connections.join_next().await.is_some() {}
        Ok(())
    }
}

async fn serve_connection<S, St>(
    socket: TcpStream,
    service: S,
    max_frame_len: usize,
    mut stopping: watch::Receiver<bool>,
) where
    S: Service<Request<Bytes>, Response = St> + Clone + Send + 'static,
    S::Error: std::fmt::Display + Send,
    S::Future: Send,
    St: Stream<Item = Result<Bytes, RpcError>> + Send + 'static,
{
    let _ = socket.set_nodelay(true);
    let peer = socket.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "unknown peer".into());
    let (mut reader, writer) = socket.into_split();
    let (outgoing, queue) = mpsc::channel(WRITE_QUEUE);
    let writer = tokio::spawn(write_frames(writer, queue));
    let codec = Arc::new(FrameCodec::new(max_frame_len));
    let mut decoder = FrameCodec::new(max_frame_len);
    let mut handlers = Handlers::default();
    let mut buffer = BytesMut::with_capacity(8 * 1024);
    // The client's `hello` comes first: the wire version and the windows it grants.
    let windows = match hello(next_frame(&mut reader, &mut decoder, &mut buffer).await) {
        Ok(windows) => windows,
        Err(refusal) => {
            // Tell the client why (on the stream it opened, if any), then close.
            if let Some((stream, message)) = refusal {
                tracing::warn!(target: "tokentrace", peer, message, "refusing rpc connection");
                if let Ok(frame) = codec.encode_to_bytes(&Frame::Error { stream, message }) {
                    send_soon(&outgoing, frame);
                }
            }
            drop(outgoing);
            let _ = writer.await;
            return;
        }
    };

    let graceful = loop {
        tokio::select! {
            frame = next_frame(&mut reader, &mut decoder, &mut buffer) => match frame {
                Ok(Some(Frame::Request { stream, endpoint, metadata, payload })) => {
                    let mut request = Request::new(endpoint, payload);
                    request.metadata = metadata;
                    let sender = Sender {
                        stream,
                        outgoing: outgoing.clone(),
                        codec: Arc::clone(&codec),
                        window: windows.streams.open(stream, windows.stream_size),
                        windows: windows.clone(),
                    };
                    handlers.spawn(stream, handle(request, service.clone(), sender));
                }
                Ok(Some(Frame::Cancel { stream })) => handlers.cancel(stream),
                Ok(Some(Frame::Window { stream, increment })) => windows.grant(stream, increment),
                Ok(Some(Frame::Kept { trace_id, rule })) => {
                    decisions::kept_by_peer(Some(TraceId::from_bytes(trace_id)), &rule);
                }
                // A client never sends these; ignore rather than trust them.
                Ok(Some(_)) => {}
                Ok(None) => break false,
                Err(error) => {
                    // The byte stream can no longer be trusted: tell the client why, then close.
                    tracing::warn!(target: "tokentrace", %error, peer, "closing rpc connection");
                    if let Ok(frame) = codec.encode_to_bytes(&Frame::Error { stream: 0, message: error.to_string() }) {
                        send_soon(&outgoing, frame);
                    }
                    break false;
                }
            },
            () = handlers.reap_one() => {}
            _ = stopping.wait_for(|stop| *stop) => break true,
        }
    };
    if graceful {
        // Stop reading new requests; finish the ones in flight.
        handlers.finish().await;
    } else {
        // The client is gone (or misbehaved): drop its handlers.
        handlers.abort().await;
    }
    drop(outgoing);
    let _ = writer.await;
}

/// Reads until one whole frame is buffered. Cancel-safe: bytes read stay in `buffer`.
async fn next_frame(
    reader: &mut OwnedReadHalf,
    decoder: &mut FrameCodec,
    buffer: &mut BytesMut,
) -> Result<Option<Frame>, RpcError> {
    loop {
        if let Some(frame) = decoder.decode(buffer)? {
            return Ok(Some(frame));
        }
        match reader.read_buf(buffer).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(error) => return Err(RpcError::ConnectionLost(error.to_string())),
        }
    }
}

/// The connection's windows from the client's first frame, or why it is refused: the stream
/// and message to answer with (none when the client left without a word).
fn hello(first: Result<Option<Frame>, RpcError>) -> Result<Windows, Option<(u64, String)>> {
    match first {
        Ok(Some(Frame::Hello { version: WIRE_VERSION, stream_window, connection_window })) => {
            Ok(Windows::new(stream_window, connection_window))
        }
        Ok(Some(Frame::Hello { version, .. })) => Err(Some((
            0,
            format!("wire version {version} is not this worker's ({WIRE_VERSION}): upgrade one side"),
        ))),
        Ok(Some(other)) => Err(Some((
            other.stream(),
            format!(
                "the client sent no hello: it speaks an older wire version than this worker's \
                 ({WIRE_VERSION}); upgrade the client"
            ),
        ))),
        Ok(None) => Err(None),
        Err(error) => Err(Some((0, error.to_string()))),
    }
}

/// The windows of one connection: the connection's, and each open stream's.
#[derive(Clone, Debug)]
struct Windows {
    stream_size: u32,
    connection: Arc<SendWindow>,
    streams: StreamWindows,
}

impl Windows {
    fn new(stream_window: u32, connection_window: u32) -> Self {
        Self {
            stream_size: stream_window,
            connection: Arc::new(SendWindow::new(connection_window)),
            streams: StreamWindows::default(),
        }
    }

    /// The client granted `increment` more bytes on `stream` (0: the connection).
    fn grant(&self, stream: u64, increment: u32) {
        if stream == 0 {
            self.connection.grant(increment);
        } else if let Some(window) = self.streams.get(stream) {
            window.grant(increment);
        }
    }
}

/// What a handler sends its stream's frames through; ends the stream with an error if the
/// handler stops (or is dropped) before its end, and forgets the stream's window.
struct Sender {
    stream: u64,
    outgoing: mpsc::Sender<Bytes>,
    codec: Arc<FrameCodec>,
    window: Arc<SendWindow>,
    windows: Windows,
}

impl Sender {
    async fn send(&self, frame: &Frame) -> Result<(), RpcError> {
        let bytes = self.codec.encode_to_bytes(frame)?;
        self.outgoing
            .send(bytes)
            .await
            .map_err(|_| RpcError::ConnectionLost("connection writer stopped".into()))
    }

    /// Sends an item once it fits the stream's window and the connection's.
    async fn send_item(&self, payload: Bytes) -> Result<(), RpcError> {
        self.window.reserve(payload.len()).await;
        self.windows.connection.reserve(payload.len()).await;
        self.send(&Frame::Item { stream: self.stream, payload }).await
    }
}

/// Ends a stream whichever way its handler finishes.
struct StreamGuard {
    sender: Sender,
    finished: bool,
}

impl StreamGuard {
    async fn fail(&mut self, message: String) {
        self.finished = true;
        let _ = self.sender.send(&Frame::Error { stream: self.sender.stream, message }).await;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.sender.windows.streams.close(self.sender.stream);
        if !self.finished {
            let frame =
                Frame::Error { stream: self.sender.stream, message: "handler stopped before its end".into() };
            if let Ok(bytes) = self.sender.codec.encode_to_bytes(&frame) {
                send_soon(&self.sender.outgoing, bytes);
            }
        }
    }
}

/// Runs one request: calls the service, then sends its items (each within the windows) and
/// the end, or the error.
async fn handle<S, St>(request: Request<Bytes>, mut service: S, sender: Sender)
where
    S: Service<Request<Bytes>, Response = St>,
    S::Error: std::fmt::Display,
    St: Stream<Item = Result<Bytes, RpcError>>,
{
    let stream = sender.stream;
    let trace = decisions::served(&request.metadata);
    let mut guard = StreamGuard { sender, finished: false };
    if let Err(error) = poll_fn(|cx| service.poll_ready(cx)).await {
        return guard.fail(error.to_string()).await;
    }
    let items = match service.call(request).await {
        Ok(items) => items,
        Err(error) => return guard.fail(error.to_string()).await,
    };
    let mut items = pin!(items);
    while let Some(item) = poll_fn(|cx| items.as_mut().poll_next(cx)).await {
        match item {
            Ok(payload) => match guard.sender.send_item(payload).await {
                Ok(()) => {}
                Err(error @ RpcError::FrameTooLarge { .. }) => return guard.fail(error.to_string()).await,
                // The connection is gone: nobody to tell.
                Err(_) => return guard.finished = true,
            },
            Err(error) => return guard.fail(error.to_string()).await,
        }
    }
    guard.finished = true;
    // The handler's spans have ended: if keep rules kept its trace here, the caller hears it.
    let kept_by = decisions::kept_here(trace).map(|rule| rule.to_string());
    let _ = guard.sender.send(&Frame::End { stream, kept_by }).await;
}
