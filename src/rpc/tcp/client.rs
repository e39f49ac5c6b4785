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
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::mpsc;
use tower_service::Service;

use super::codec::{FrameCodec, DEFAULT_MAX_FRAME_LEN};
use super::frame::Frame;
use super::writer::{send_soon, write_frames, WRITE_QUEUE};
use crate::rpc::{Request, RpcError};

type ItemSender = mpsc::Sender<Result<Bytes, RpcError>>;

/// Items buffered per stream. Bounded: a caller that stops reading its stream makes the
/// connection's reader wait, so the server's writes wait too, instead of memory growing (the
/// connection's other streams wait with it).
const STREAM_QUEUE: usize = 64;

/// What the reader task and the client handles share.
#[derive(Debug, Default)]
struct Streams {
    open: HashMap<u64, ItemSender>,
    /// Set once the connection is gone: every later call fails with it.
    failed: Option<RpcError>,
}

#[derive(Debug)]
struct Shared {
    streams: Mutex<Streams>,
    next_stream: AtomicU64,
    codec: FrameCodec,
    peer: SocketAddr,
}

impl Shared {
    fn streams(&self) -> MutexGuard<'_, Streams> {
        // A panic elsewhere while holding the lock leaves the map consistent (single-step
        // updates), so a poisoned lock is still usable.
        self.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fails every open stream and all later calls.
    fn fail_all(&self, error: RpcError) {
        let mut streams = self.streams();
        for (_, sender) in streams.open.drain() {
            send_soon(&sender, Err(error.clone()));
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
    /// Connects with the default frame limit (8 MiB).
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
        Self::connect_with_limit(addr, DEFAULT_MAX_FRAME_LEN).await
    }

    /// Connects, refusing frames (sent or received) over `max_frame_len` bytes.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use bytes::Bytes;
    /// use tokentrace::rpc::{tcp, Request, RpcError};
    ///
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let client = tcp::Client::connect_with_limit(listener.local_addr()?, 1024).await?;
    /// let too_big = Request::new("generate", Bytes::from(vec![0u8; 4096]));
    /// assert!(matches!(client.send(too_big).await, Err(RpcError::FrameTooLarge { max: 1024, .. })));
    /// # Ok::<(), std::io::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn connect_with_limit(addr: impl ToSocketAddrs, max_frame_len: usize) -> io::Result<Self> {
        let socket = TcpStream::connect(addr).await?;
        socket.set_nodelay(true)?;
        let peer = socket.peer_addr()?;
        let (reader, writer) = socket.into_split();
        let shared = Arc::new(Shared {
            streams: Mutex::new(Streams::default()),
            next_stream: AtomicU64::new(1),
            codec: FrameCodec::new(max_frame_len),
            peer,
        });
        let (outgoing, queue) = mpsc::channel(WRITE_QUEUE);
        let writing = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Err(error) = write_frames(writer, queue).await {
                writing
                    .fail_all(RpcError::ConnectionLost(format!("write to {} failed: {error}", writing.peer)));
            }
        });
        tokio::spawn(read_frames(reader, Arc::clone(&shared)));
        Ok(Self { shared, outgoing })
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
        let frame = Frame::Request {
            stream,
            endpoint: request.endpoint().to_owned(),
            metadata: request.metadata,
            payload: request.payload,
        };
        let bytes = self.shared.codec.encode_to_bytes(&frame)?;
        let (sender, items) = mpsc::channel(STREAM_QUEUE);
        {
            let mut streams = self.shared.streams();
            if let Some(error) = &streams.failed {
                return Err(error.clone());
            }
            streams.open.insert(stream, sender);
        }
        let response = ResponseStream {
            stream,
            items,
            shared: Arc::clone(&self.shared),
            outgoing: self.outgoing.clone(),
            done: false,
        };
        Ok((bytes, response))
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
    items: mpsc::Receiver<Result<Bytes, RpcError>>,
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
        // The reader drops the sender at the end of the stream and after an error.
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
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
    }
}

/// Reads frames and routes them to their streams until the connection ends.
async fn read_frames(mut reader: OwnedReadHalf, shared: Arc<Shared>) {
    let mut codec = FrameCodec::new(shared.codec.max_frame_len());
    let mut buffer = BytesMut::with_capacity(8 * 1024);
    let error = loop {
        match codec.decode(&mut buffer) {
            Ok(Some(frame)) => route(&shared, frame).await,
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

/// Hands a frame to its stream, waiting while the stream's queue is full (backpressure).
async fn route(shared: &Shared, frame: Frame) {
    match frame {
        Frame::Item { stream, payload } => {
            let sender = shared.streams().open.get(&stream).cloned();
            if let Some(sender) = sender {
                // A receiver that is gone (the caller dropped its stream) is not an error.
                let _ = sender.send(Ok(payload)).await;
            }
        }
        Frame::End { stream } => {
            shared.streams().open.remove(&stream);
        }
        Frame::Error { stream, message } => {
            let sender = shared.streams().open.remove(&stream);
            if let Some(sender) = sender {
                let _ = sender.send(Err(RpcError::Remote(message))).await;
            }
        }
        // A TCP server never sends these; ignore rather than trust them.
        Frame::Request { .. } | Frame::Cancel { .. } | Frame::Heartbeat { .. } => {}
    }
}
