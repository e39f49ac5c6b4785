//! The client side: many concurrent request streams over one TCP connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use opentelemetry::trace::TraceId;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::mpsc;
use tower_service::Service;

use super::codec::{FrameCodec, DEFAULT_MAX_FRAME_LEN};
use super::frame::{Frame, WIRE_VERSION};
use super::writer::{send_soon, write_frames, WRITE_QUEUE};
use crate::decisions;
use crate::rpc::flow::{ReceiveWindow, DEFAULT_CONNECTION_WINDOW, DEFAULT_STREAM_WINDOW};
use crate::rpc::{Request, RpcError};

/// A stream's items as the connection's reader hands them over: unbounded here, bounded in
/// bytes by the window the server respects, so the reader never waits on one stream.
type ItemSender = mpsc::UnboundedSender<Result<Bytes, RpcError>>;

/// A stream waiting for its items: where they go, and the trace its request continues (a
/// worker that kept that trace says so at the stream's end).
#[derive(Debug)]
struct OpenStream {
    items: ItemSender,
    trace: Option<TraceId>,
}

/// What the reader task and the client handles share.
#[derive(Debug, Default)]
struct Streams {
    open: HashMap<u64, OpenStream>,
    /// Set once the connection is gone: every later call fails with it.
    failed: Option<RpcError>,
}

#[derive(Debug)]
struct Shared {
    streams: Mutex<Streams>,
    next_stream: AtomicU64,
    codec: FrameCodec,
    peer: SocketAddr,
    /// The window granted to each stream.
    stream_window: u32,
    /// The connection's window, over every stream's items.
    connection: ReceiveWindow,
    /// The connection's write queue, for the grants of items nobody will read; weak, so the
    /// connection closes once the clients and streams are gone.
    outgoing: mpsc::WeakSender<Bytes>,
    /// Tells the server that this process kept a trace it was called for (with keep rules).
    callee: decisions::Callee,
}

impl Shared {
    fn streams(&self) -> MutexGuard<'_, Streams> {
        // A panic elsewhere while holding the lock leaves the map consistent (single-step
        // updates), so a poisoned lock is still usable.
        self.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The consumer took (or dropped) an item of `len` bytes of the connection's window.
    fn took(&self, len: usize, outgoing: &mpsc::Sender<Bytes>) {
        if let Some(increment) = self.connection.took(len) {
            self.grant(0, increment, outgoing);
        }
    }

    /// Grants the server `increment` more bytes on `stream` (0: the connection).
    fn grant(&self, stream: u64, increment: u32, outgoing: &mpsc::Sender<Bytes>) {
        if let Ok(frame) = self.codec.encode_to_bytes(&Frame::Window { stream, increment }) {
            send_soon(outgoing, frame);
        }
    }

    /// Fails every open stream and all later calls.
    fn fail_all(&self, error: RpcError) {
        let mut streams = self.streams();
        for (_, OpenStream { items: sender, .. }) in streams.open.drain() {
            let _ = sender.send(Err(error.clone()));
        }
        streams.failed.get_or_insert(error);
    }
}

/// A worker RPC client over one TCP connection, multiplexing any number of concurrent
/// request streams. Cheap to clone (clones share the connection).
///
/// It is a `tower::Service<rpc::Request<Bytes>>`: wrap it in
/// [`rpc::ClientLayer`](crate::rpc::ClientLayer), and in tower's timeout, retry or balance.
/// Dropping a [`ResponseStream`] before its end cancels the request on the server. When the
/// connection is lost every in-flight stream ends with [`RpcError::ConnectionLost`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use bytes::Bytes;
/// use futures_util::StreamExt;
/// use tokentrace::rpc::{tcp, Request};
/// use tower::ServiceExt;
///
/// let client = tcp::Client::connect("127.0.0.1:9000").await?;
/// let mut tokens = client.oneshot(Request::new("generate", Bytes::from_static(b"hi"))).await?;
/// while let Some(token) = tokens.next().await {
///     println!("{:?}", token?);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Bytes>,
}

impl Client {
    /// Connects with the defaults: 8 MiB frames, a 4 MiB window per stream and 64 MiB per
    /// connection (see [`ClientBuilder`]).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use tokentrace::rpc::tcp;
    ///
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let client = tcp::Client::connect(listener.local_addr()?).await?;
    /// assert_eq!(client.peer_addr(), listener.local_addr()?);
    ///
    /// drop(listener); // nothing listens there any more
    /// # let addr = client.peer_addr();
    /// assert!(tcp::Client::connect(addr).await.is_err());
    /// # Ok::<(), std::io::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Self::builder().connect(addr).await
    }

    /// A client with other limits or windows.
    ///
    /// ```
    /// use tokentrace::rpc::tcp;
    /// let builder = tcp::Client::builder().max_frame_len(1 << 20).stream_window(256 << 10);
    /// # let _ = builder;
    /// ```
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            stream_window: DEFAULT_STREAM_WINDOW,
            connection_window: DEFAULT_CONNECTION_WINDOW,
        }
    }

    /// The server's address.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let client = tokentrace::rpc::tcp::Client::connect(listener.local_addr()?).await?;
    /// assert_eq!(client.peer_addr().port(), listener.local_addr()?.port());
    /// # Ok::<(), std::io::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// Opens a stream: sends the request and returns its response items. Waits while the
    /// connection's write queue is full (the server is not reading).
    ///
    /// A worker on loopback that streams its payload back word by word:
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use bytes::Bytes;
    /// use futures_util::{stream, StreamExt, TryStreamExt};
    /// use tokentrace::rpc::{tcp, Request, RpcError};
    ///
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let addr = listener.local_addr()?;
    /// let words = tower::service_fn(|request: Request<Bytes>| async move {
    ///     let words: Vec<Result<Bytes, RpcError>> =
    ///         request.payload.split(|&b| b == b' ').map(|w| Ok(request.payload.slice_ref(w))).collect();
    ///     Ok::<_, RpcError>(stream::iter(words))
    /// });
    /// tokio::spawn(tcp::serve(listener, words));
    ///
    /// let client = tcp::Client::connect(addr).await?;
    /// let items = client.send(Request::new("generate", Bytes::from_static(b"one two three"))).await.unwrap();
    /// let items: Vec<Bytes> = items.try_collect().await.unwrap();
    /// assert_eq!(items, ["one", "two", "three"]);
    /// # Ok::<(), std::io::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn send(&self, request: Request<Bytes>) -> Result<ResponseStream, RpcError> {
        let (bytes, response) = self.open(request)?;
        if self.outgoing.send(bytes).await.is_err() {
            self.shared.streams().open.remove(&response.stream);
            return Err(RpcError::ConnectionLost("the connection's writer has stopped".into()));
        }
        Ok(response)
    }

    /// Registers a new stream for `request`: its encoded frame and its response items.
    fn open(&self, request: Request<Bytes>) -> Result<(Bytes, ResponseStream), RpcError> {
        let stream = self.shared.next_stream.fetch_add(1, Ordering::Relaxed);
        let endpoint = request.endpoint().to_owned();
        let mut metadata = request.metadata;
        let trace = decisions::trace_of(&metadata);
        if trace.is_some() {
            // This process has keep rules: the worker waits for its decision.
            metadata.append(decisions::WILL_TELL, decisions::WILL_TELL_VALUE);
            decisions::calling(trace, &self.shared.callee);
        }
        let frame = Frame::Request { stream, endpoint, metadata, payload: request.payload };
        let bytes = self.shared.codec.encode_to_bytes(&frame)?;
        let (sender, items) = mpsc::unbounded_channel();
        {
            let mut streams = self.shared.streams();
            if let Some(error) = &streams.failed {
                return Err(error.clone());
            }
            streams.open.insert(stream, OpenStream { items: sender, trace });
        }
        let response = ResponseStream {
            stream,
            items,
            window: ReceiveWindow::new(self.shared.stream_window),
            shared: Arc::clone(&self.shared),
            outgoing: self.outgoing.clone(),
            done: false,
        };
        Ok((bytes, response))
    }
}

/// How a [`Client`] connects: its frame limit and the flow-control windows it grants the server.
///
/// The server sends a stream's items only while they fit the stream's window and the
/// connection's; the client grants more as each stream's consumer takes items. A stream nobody
/// reads holds at most its window (an item larger than the window still goes through, alone),
/// and holds up no other stream until the unread streams together fill the connection's window.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use tokentrace::rpc::tcp;
///
/// let client = tcp::Client::builder()
///     .max_frame_len(16 << 20)         // KV-cache chunks of up to 16 MiB
///     .stream_window(32 << 20)         // two of them in flight per stream
///     .connection_window(512 << 20)
///     .connect("127.0.0.1:9000")
///     .await?;
/// # let _ = client; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    max_frame_len: usize,
    stream_window: u32,
    connection_window: u32,
}

impl ClientBuilder {
    /// Refuses frames (sent or received) over `max_frame_len` bytes (default 8 MiB).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use bytes::Bytes;
    /// use tokentrace::rpc::{tcp, Request, RpcError};
    ///
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let client = tcp::Client::builder().max_frame_len(1024).connect(listener.local_addr()?).await?;
    /// let too_big = Request::new("generate", Bytes::from(vec![0u8; 4096]));
    /// assert!(matches!(client.send(too_big).await, Err(RpcError::FrameTooLarge { max: 1024, .. })));
    /// # Ok::<(), std::io::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn max_frame_len(mut self, max_frame_len: usize) -> Self {
        self.max_frame_len = max_frame_len;
        self
    }

    /// Bytes of items a stream may have in flight before its consumer takes some (default
    /// 4 MiB; at least 1, at most 1 GiB).
    ///
    /// ```
    /// let builder = tokentrace::rpc::tcp::Client::builder().stream_window(1 << 20);
    /// # let _ = builder;
    /// ```
    pub fn stream_window(mut self, bytes: u32) -> Self {
        self.stream_window = bytes;
        self
    }

    /// Bytes of items the connection may have in flight over all its streams (default 64 MiB;
    /// at least 1, at most 1 GiB).
    ///
    /// ```
    /// let builder = tokentrace::rpc::tcp::Client::builder().connection_window(256 << 20);
    /// # let _ = builder;
    /// ```
    pub fn connection_window(mut self, bytes: u32) -> Self {
        self.connection_window = bytes;
        self
    }

    /// Connects, and opens the connection with the `hello` that carries the wire version and
    /// the windows.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let client = tokentrace::rpc::tcp::Client::builder().connect(listener.local_addr()?).await?;
    /// # let _ = client;
    /// # Ok::<(), std::io::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn connect(self, addr: impl ToSocketAddrs) -> io::Result<Client> {
        let socket = TcpStream::connect(addr).await?;
        socket.set_nodelay(true)?;
        let peer = socket.peer_addr()?;
        let (reader, writer) = socket.into_split();
        let (outgoing, queue) = mpsc::channel(WRITE_QUEUE);
        let connection = ReceiveWindow::for_connection(self.connection_window);
        let stream_window = ReceiveWindow::new(self.stream_window).size();
        let hello =
            Frame::Hello { version: WIRE_VERSION, stream_window, connection_window: connection.size() };
        let codec = FrameCodec::new(self.max_frame_len);
        let hello = codec.encode_to_bytes(&hello).map_err(io::Error::other)?;
        let callee = kept_notice(outgoing.downgrade(), self.max_frame_len);
        let shared = Arc::new(Shared {
            streams: Mutex::new(Streams::default()),
            next_stream: AtomicU64::new(1),
            codec,
            peer,
            stream_window,
            connection,
            outgoing: outgoing.downgrade(),
            callee,
        });
        // The first frame of the connection: the queue is empty, so this never waits.
        send_soon(&outgoing, hello);
        let writing = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Err(error) = write_frames(writer, queue).await {
                writing
                    .fail_all(RpcError::ConnectionLost(format!("write to {} failed: {error}", writing.peer)));
            }
        });
        tokio::spawn(read_frames(reader, Arc::clone(&shared)));
        Ok(Client { shared, outgoing })
    }
}

impl Service<Request<Bytes>> for Client {
    type Response = ResponseStream;
    type Error = RpcError;
    type Future = Pin<Box<dyn Future<Output = Result<ResponseStream, RpcError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        match &self.shared.streams().failed {
            Some(error) => Poll::Ready(Err(error.clone())),
            None => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let client = self.clone();
        Box::pin(async move { client.send(request).await })
    }
}

/// The response items of one request. Dropping it before its end sends a cancel.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use futures_util::StreamExt;
/// use tokentrace::rpc::{tcp, Request};
///
/// let client = tcp::Client::connect("127.0.0.1:9000").await?;
/// let mut items = client.send(Request::new("generate", bytes::Bytes::new())).await?;
/// let first = items.next().await; // then drop: the server's handler is cancelled
/// drop(items);
/// # let _ = first; Ok(()) }
/// ```
#[derive(Debug)]
pub struct ResponseStream {
    stream: u64,
    items: mpsc::UnboundedReceiver<Result<Bytes, RpcError>>,
    /// The stream's window: what its consumer took is granted back to the server.
    window: ReceiveWindow,
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Bytes>,
    done: bool,
}

impl Stream for ResponseStream {
    type Item = Result<Bytes, RpcError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = std::task::ready!(self.items.poll_recv(cx));
        match &item {
            Some(Ok(payload)) => {
                let len = payload.len();
                self.shared.took(len, &self.outgoing);
                if let Some(increment) = self.window.took(len) {
                    self.shared.grant(self.stream, increment, &self.outgoing);
                }
            }
            // The reader drops the sender at the end of the stream and after an error.
            _ => self.done = true,
        }
        Poll::Ready(item)
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        if !self.done && self.shared.streams().open.remove(&self.stream).is_some() {
            if let Ok(cancel) = self.shared.codec.encode_to_bytes(&Frame::Cancel { stream: self.stream }) {
                send_soon(&self.outgoing, cancel);
            }
        }
        // Items received and never read go back to the connection's window; closing first
        // means none can arrive after the drain (the reader then grants them itself).
        self.items.close();
        while let Ok(item) = self.items.try_recv() {
            if let Ok(payload) = item {
                self.shared.took(payload.len(), &self.outgoing);
            }
        }
    }
}

/// Sends the server a `kept` frame for a trace this process kept, while the connection lives.
fn kept_notice(outgoing: mpsc::WeakSender<Bytes>, max_frame_len: usize) -> decisions::Callee {
    let codec = FrameCodec::new(max_frame_len);
    decisions::Callee::new(move |trace_id: TraceId, rule: &str| {
        let frame = Frame::Kept { trace_id: trace_id.to_bytes(), rule: rule.to_owned() };
        if let (Some(outgoing), Ok(frame)) = (outgoing.upgrade(), codec.encode_to_bytes(&frame)) {
            send_soon(&outgoing, frame);
        }
    })
}

/// Reads frames and routes them to their streams until the connection ends.
async fn read_frames(mut reader: OwnedReadHalf, shared: Arc<Shared>) {
    let mut codec = FrameCodec::new(shared.codec.max_frame_len());
    let mut buffer = BytesMut::with_capacity(8 * 1024);
    let error = loop {
        match codec.decode(&mut buffer) {
            Ok(Some(frame)) => route(&shared, frame),
            Ok(None) => match reader.read_buf(&mut buffer).await {
                Ok(0) => break RpcError::ConnectionLost(format!("{} closed the connection", shared.peer)),
                Ok(_) => {}
                Err(error) => {
                    break RpcError::ConnectionLost(format!("read from {} failed: {error}", shared.peer))
                }
            },
            // A bad frame means the byte stream can no longer be trusted.
            Err(error) => {
                break RpcError::ConnectionLost(format!("{} sent a bad frame: {error}", shared.peer))
            }
        }
    };
    shared.fail_all(error);
}

/// Hands a frame to its stream without waiting: the server sends a stream's items only within
/// its window, so a stream nobody reads never holds up the others.
fn route(shared: &Shared, frame: Frame) {
    match frame {
        Frame::Item { stream, payload } => {
            let sender = shared.streams().open.get(&stream).map(|open| open.items.clone());
            let unread = match sender {
                Some(sender) => sender.send(Ok(payload)).err().and_then(|error| error.0.ok()),
                None => Some(payload),
            };
            // Nobody will read it (the caller dropped its stream): its bytes go back at once.
            if let (Some(payload), Some(outgoing)) = (unread, shared.outgoing.upgrade()) {
                shared.took(payload.len(), &outgoing);
            }
        }
        Frame::End { stream, kept_by } => {
            let open = shared.streams().open.remove(&stream);
            if let (Some(open), Some(rule)) = (open, kept_by) {
                decisions::kept_by_peer(open.trace, &rule);
            }
        }
        // Stream 0 is no request's: the server refused the connection (a server that predates
        // flow control refuses the `hello` so), and closes it next.
        Frame::Error { stream: 0, message } => shared.fail_all(RpcError::ConnectionLost(format!(
            "{} refused the connection: {message} (a worker older than wire version {WIRE_VERSION}?)",
            shared.peer
        ))),
        Frame::Error { stream, message } => {
            let sender = shared.streams().open.remove(&stream).map(|open| open.items);
            if let Some(sender) = sender {
                let _ = sender.send(Err(RpcError::Remote(message)));
            }
        }
        // A TCP server never sends these; ignore rather than trust them.
        Frame::Request { .. }
        | Frame::Cancel { .. }
        | Frame::Heartbeat { .. }
        | Frame::Hello { .. }
        | Frame::Window { .. }
        | Frame::Kept { .. } => {}
    }
}
