//! A worker: serves `generate` (aggregated or decode role) and `prefill` (prefill role) over
//! traced worker RPC (TCP or NATS), with phase spans and token statistics on every request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use futures_util::StreamExt;
use tokentrace::inference::{FinishReason, Phases, StatsTarget, StreamOptions, TokenStream};
use tokentrace::metrics::WorkerMetrics;
use tokentrace::opentelemetry::trace::SpanContext;
use tokentrace::propagation::TraceParent;
use tokentrace::rpc::{self, Request, RpcError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceBuilder;

use crate::engine::{Engine, KvState};
use crate::protocol::{GenerateRequest, PrefillHeader, TokenItem, GENERATE, KV_CHUNK, PREFILL};
use crate::sampling::Sampler;
use crate::transport::{Bound, Items, Peer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Aggregated,
    Prefill,
    Decode,
}

impl Role {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "agg" => Some(Self::Aggregated),
            "prefill" => Some(Self::Prefill),
            "decode" => Some(Self::Decode),
            _ => None,
        }
    }

    pub fn component(self) -> &'static str {
        match self {
            Self::Aggregated => "backend",
            Self::Prefill => "prefill",
            Self::Decode => "decode",
        }
    }
}

pub struct WorkerConfig {
    pub role: Role,
    pub step: Duration,
    pub slots: usize,
    pub instance_id: i64,
    /// Where a decode worker finds its prefill workers.
    pub prefill: Option<Peer>,
    pub name: String,
    /// Phase durations and KV bytes, served on the worker's metrics port.
    pub metrics: WorkerMetrics,
}

struct Worker<E: Engine> {
    engine: Arc<E>,
    phases: Phases,
    slots: Arc<Semaphore>,
    config: WorkerConfig,
}

/// Serves `engine` where `bound` takes requests until `shutdown` completes.
pub async fn serve<E: Engine>(
    engine: E,
    config: WorkerConfig,
    bound: Bound,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let component = config.role.component();
    let instance_id = config.instance_id;
    let worker = Arc::new(Worker {
        engine: Arc::new(engine),
        phases: Phases::default().record_metrics(config.metrics.clone()),
        slots: Arc::new(Semaphore::new(config.slots)),
        config,
    });
    let handler = tower::service_fn(move |request: Request<Bytes>| {
        let worker = Arc::clone(&worker);
        async move { worker.handle(request).await }
    });
    let service = ServiceBuilder::new()
        .layer(rpc::ServerLayer::default().component(component).instance_id(instance_id))
        .service(handler);
    bound.serve(service, shutdown).await
}

fn failed(message: impl Into<String>) -> RpcError {
    RpcError::Remote(message.into())
}

/// Runs engine work (a forward pass, a GPU call) on tokio's blocking pool, off the threads that
/// run the async tasks, so one request's compute never stalls another's stream. A request
/// dropped meanwhile stops after the step in flight: its result is discarded.
async fn compute<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, RpcError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| failed(format!("engine task failed: {e}")))
}

impl<E: Engine> Worker<E> {
    async fn handle(self: Arc<Self>, request: Request<Bytes>) -> Result<Items, RpcError> {
        let generate = GenerateRequest::parse(&request.payload).map_err(failed)?;
        tracing::info!(
            endpoint = request.endpoint(),
            engine = self.engine.name(),
            max_tokens = generate.max_tokens,
            "request received"
        );
        match (request.endpoint(), self.config.role) {
            (GENERATE, Role::Aggregated) => self.generate_local(generate).await,
            (GENERATE, Role::Decode) => self.generate_disaggregated(generate).await,
            (PREFILL, Role::Prefill) => self.prefill_for_decode(generate).await,
            (endpoint, _) => Err(RpcError::UnknownEndpoint(endpoint.to_owned())),
        }
    }

    /// Waits for an engine slot (held until the request's stream ends), traced as `queue`.
    async fn admit(&self) -> Result<OwnedSemaphorePermit, RpcError> {
        let queue = self.phases.queue();
        let permit =
            Arc::clone(&self.slots).acquire_owned().await.map_err(|_| failed("worker is shutting down"))?;
        queue.end();
        Ok(permit)
    }

    /// Takes the prompt out of `request` (the rest of it is what decoding needs), if it leaves
    /// room in the engine's context for at least one token.
    fn take_prompt(&self, request: &mut GenerateRequest) -> Result<Vec<u32>, RpcError> {
        let context = self.engine.context();
        if request.tokens.len() >= context {
            return Err(failed(format!(
                "a prompt of {} tokens leaves no room in the model's context of {context}",
                request.tokens.len()
            )));
        }
        Ok(std::mem::take(&mut request.tokens))
    }

    async fn generate_local(self: Arc<Self>, mut request: GenerateRequest) -> Result<Items, RpcError> {
        let prompt = self.take_prompt(&mut request)?;
        let prompt_tokens = prompt.len() as u64;
        let permit = self.admit().await?;
        let mut sampler = Sampler::new(request.temperature, request.top_p, request.seed);
        let prefill = self.phases.prefill(prompt_tokens);
        let engine = Arc::clone(&self.engine);
        let (kv, first) = match compute(move || engine.prefill(&prompt)).await? {
            Ok((kv, logits)) => (kv, sampler.pick(&logits)),
            Err(error) => {
                prefill.fail("engine", error.to_string());
                return Err(failed(error.to_string()));
            }
        };
        prefill.end();
        Ok(self.decode(request, prompt_tokens, kv, first, sampler, None, permit))
    }

    /// The decode phase: the first token at once, then one per step, as a traced token stream.
    /// A stop token ends it (`stop`, sent with no text), as do `max_tokens` and a full context
    /// (`length`).
    #[allow(clippy::too_many_arguments)]
    fn decode(
        self: Arc<Self>,
        request: GenerateRequest,
        prompt_tokens: u64,
        kv: E::Kv,
        first: u32,
        sampler: Sampler,
        prefill: Option<SpanContext>,
        permit: OwnedSemaphorePermit,
    ) -> Items {
        let decode = self.phases.decode(prefill);
        let options = StreamOptions::new().model(request.model.clone()).input_tokens(prompt_tokens);
        let (max_tokens, stop_tokens) = (request.max_tokens, Arc::new(request.stop_tokens));
        let step = self.config.step;
        let engine = Arc::clone(&self.engine);
        let context = engine.context();
        let tokens = stream::unfold(Some((kv, first, 0u32, sampler)), move |state| {
            let (engine, stop_tokens) = (Arc::clone(&engine), Arc::clone(&stop_tokens));
            // The slot stays taken while the stream lives.
            let _slot = &permit;
            async move {
                let (mut kv, token, produced, mut sampler) = state?;
                if produced > 0 && !step.is_zero() {
                    tokio::time::sleep(step).await;
                }
                let produced = produced + 1;
                let finish = if stop_tokens.contains(&token) {
                    Some(FinishReason::Stop)
                } else if produced == max_tokens || kv.len() + 1 >= context {
                    Some(FinishReason::Length)
                } else {
                    None
                };
                let item = TokenItem { token, text: String::new(), finish_reason: finish };
                let next = if finish.is_some() {
                    None
                } else {
                    let step = compute(move || {
                        let logits = engine.decode_step(&mut kv, token);
                        (kv, logits)
                    });
                    match step.await {
                        Ok((kv, Ok(logits))) => Some((kv, sampler.pick(&logits), produced, sampler)),
                        Ok((_, Err(error))) => return Some((Err(failed(error.to_string())), None)),
                        Err(error) => return Some((Err(error), None)),
                    }
                };
                Some((Ok::<_, RpcError>(item), next))
            }
        });
        TokenStream::new(tokens, StatsTarget::Phase(decode), options)
            .map(|item| item.map(|token| token.to_bytes()))
            .boxed()
    }

    /// Prefill role: prefill, then send the first token and the KV cache to the decode worker.
    async fn prefill_for_decode(self: Arc<Self>, mut request: GenerateRequest) -> Result<Items, RpcError> {
        let prompt = self.take_prompt(&mut request)?;
        let prompt_tokens = prompt.len() as u64;
        let _slot = self.admit().await?;
        let mut sampler = Sampler::new(request.temperature, request.top_p, request.seed);
        let prefill = self.phases.prefill(prompt_tokens);
        let engine = Arc::clone(&self.engine);
        let result =
            compute(move || engine.prefill(&prompt).and_then(|(kv, logits)| Ok((kv.to_bytes()?, logits))))
                .await?;
        let (kv, first) = match result {
            Ok((kv, logits)) => (kv, sampler.pick(&logits)),
            Err(error) => {
                prefill.fail("engine", error.to_string());
                return Err(failed(error.to_string()));
            }
        };
        let header = PrefillHeader {
            first_token: first,
            kv_bytes: kv.len() as u64,
            prompt_tokens,
            traceparent: TraceParent::from_span_context(&prefill.span_context()).map(|tp| tp.to_string()),
        };
        prefill.end();
        let kv = Bytes::from(kv);
        let chunks: Vec<Result<Bytes, RpcError>> = std::iter::once(Ok(header.to_bytes()))
            .chain((0..kv.len()).step_by(KV_CHUNK).map(|at| Ok(kv.slice(at..(at + KV_CHUNK).min(kv.len())))))
            .collect();
        Ok(stream::iter(chunks).boxed())
    }

    /// Decode role: remote prefill on the prefill worker, KV transfer, then decode here.
    async fn generate_disaggregated(self: Arc<Self>, request: GenerateRequest) -> Result<Items, RpcError> {
        let prefill = self.config.prefill.as_ref().ok_or_else(|| failed("decode worker has no --prefill"))?;
        let mut items = prefill.call(Request::new(PREFILL, request.to_bytes())).await?;
        let header = match items.next().await {
            Some(Ok(header)) => PrefillHeader::parse(&header).map_err(failed)?,
            Some(Err(error)) => return Err(error),
            None => return Err(failed("prefill worker sent nothing")),
        };
        let transfer = self.phases.kv_transfer(header.kv_bytes, prefill.target(), &self.config.name);
        let mut kv = Vec::with_capacity(header.kv_bytes as usize);
        while let Some(chunk) = items.next().await {
            match chunk {
                Ok(chunk) => kv.extend_from_slice(&chunk),
                Err(error) => {
                    transfer.fail("transfer", error.to_string());
                    prefill.failed(&error).await;
                    return Err(error);
                }
            }
        }
        if kv.len() as u64 != header.kv_bytes {
            let message = format!("KV transfer incomplete: {} of {} bytes", kv.len(), header.kv_bytes);
            transfer.fail("transfer", message.clone());
            return Err(failed(message));
        }
        transfer.end();
        let engine = Arc::clone(&self.engine);
        let kv = compute(move || engine.kv_from_bytes(&kv)).await?.map_err(|e| failed(e.to_string()))?;
        let prefill_span = header
            .traceparent
            .as_deref()
            .and_then(|tp| tp.parse::<TraceParent>().ok())
            .map(|tp| tp.to_span_context(&Default::default()));
        let permit = self.admit().await?;
        // The prefill worker drew the first token from the same seed: continue after it.
        let mut sampler = Sampler::new(request.temperature, request.top_p, request.seed);
        sampler.advance();
        Ok(self.decode(request, header.prompt_tokens, kv, header.first_token, sampler, prefill_span, permit))
    }
}
