//! How the components reach each other: tokentrace's TCP transport, from one address to another,
//! or NATS, where any number of workers serve one subject in a queue group. Either way the
//! calls go through the same `rpc::ClientLayer` and `rpc::ServerLayer`.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use tokentrace::rpc::nats::{self, async_nats};
use tokentrace::rpc::{self, tcp, Request, RpcError, TracedStream};
use tokio::sync::Mutex;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};

/// The items of one call, whatever the transport.
pub type Items = BoxStream<'static, Result<Bytes, RpcError>>;

type Traced = rpc::ClientService<BoxCloneSyncService<Request<Bytes>, Items, RpcError>>;

/// How a component reaches its peers.
#[derive(Clone, Debug)]
pub enum Transport {
    /// tokentrace's own transport: one TCP connection from caller to worker address.
    Tcp,
    /// NATS: workers share a subject in a queue group; callers need only the NATS URL.
    Nats {
        url: String,
        /// How long a call waits without a word from its worker before it fails.
        silence_limit: Duration,
    },
}

impl Transport {
    async fn connect_nats(url: &str) -> Result<async_nats::Client, String> {
        async_nats::connect(url)
            .await
            .map_err(|e| format!("cannot reach NATS at {url}: {e} (is nats-server running there?)"))
    }

    /// A traced client of `target`: a worker's address (TCP) or the subject its workers serve
    /// (NATS).
    pub async fn peer(&self, target: String) -> Result<Peer, String> {
        let nats = match self {
            Self::Tcp => None,
            Self::Nats { url, silence_limit } => Some((Self::connect_nats(url).await?, *silence_limit)),
        };
        Ok(Peer { target, nats, client: Mutex::new(None) })
    }

    /// Starts taking requests at `address` (TCP) or on `subject` (NATS), and prints
    /// `READY <where>` for the launcher.
    pub async fn bind(&self, address: &str, subject: &str) -> Result<Bound, String> {
        let bound = match self {
            Self::Tcp => Bound::Tcp(bind_tcp(address).await?),
            Self::Nats { url, .. } => {
                let listener = nats::Listener::bind(Self::connect_nats(url).await?, subject)
                    .await
                    .map_err(|e| format!("cannot serve {subject} on NATS: {e}"))?;
                println!("READY {subject}");
                Bound::Nats(Box::new(listener))
            }
        };
        Ok(bound)
    }
}

/// Listens on `address` and prints `READY <address>` for the launcher.
pub async fn bind_tcp(address: &str) -> Result<tokio::net::TcpListener, String> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("READY {local}");
    Ok(listener)
}

/// Where a worker takes its requests.
pub enum Bound {
    Tcp(tokio::net::TcpListener),
    Nats(Box<nats::Listener>),
}

impl Bound {
    /// Serves `service` until `shutdown` completes, then lets in-flight requests finish.
    pub async fn serve<S, St>(self, service: S, shutdown: impl Future<Output = ()>) -> std::io::Result<()>
    where
        S: Service<Request<Bytes>, Response = St> + Clone + Send + 'static,
        S::Error: std::fmt::Display + Send,
        S::Future: Send,
        St: Stream<Item = Result<Bytes, RpcError>> + Send + 'static,
    {
        match self {
            Self::Tcp(listener) => tcp::Server::new(service).serve_with_shutdown(listener, shutdown).await,
            Self::Nats(listener) => nats::Server::new(service).serve_with_shutdown(*listener, shutdown).await,
        }
    }
}

/// A traced RPC client of one peer, connected on first use; after a call or stream fails with
/// a lost connection, the next call connects again.
pub struct Peer {
    target: String,
    /// The NATS connection (it reconnects by itself) and silence limit, over NATS.
    nats: Option<(async_nats::Client, Duration)>,
    client: Mutex<Option<Traced>>,
}

impl Peer {
    /// The worker address or subject this peer calls.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Calls `request`, traced.
    pub async fn call(&self, request: Request<Bytes>) -> Result<TracedStream<Items>, RpcError> {
        let result = match self.client().await {
            Ok(client) => client.oneshot(request).await,
            Err(error) => Err(error),
        };
        if let Err(error) = &result {
            self.failed(error).await;
        }
        result
    }

    /// Tells the peer a stream failed: a lost connection is opened again on the next call.
    pub async fn failed(&self, error: &RpcError) {
        if matches!(error, RpcError::ConnectionLost(_) | RpcError::Closed) {
            *self.client.lock().await = None;
        }
    }

    async fn client(&self) -> Result<Traced, RpcError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let connection = match &self.nats {
            None => {
                let client = tcp::Client::connect(&self.target).await.map_err(|e| {
                    RpcError::ConnectionLost(format!("cannot reach worker {}: {e}", self.target))
                })?;
                BoxCloneSyncService::new(client.map_response(StreamExt::boxed))
            }
            Some((nats, silence_limit)) => {
                let client = nats::Client::new(nats.clone(), self.target.clone())
                    .map_err(|e| RpcError::Malformed(e.to_string()))?
                    .silence_limit(*silence_limit);
                BoxCloneSyncService::new(client.map_response(StreamExt::boxed))
            }
        };
        let client = ServiceBuilder::new()
            .layer(rpc::ClientLayer::default().server_address(self.target.clone()))
            .service(connection);
        *slot = Some(client.clone());
        Ok(client)
    }
}
