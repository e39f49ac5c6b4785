//! The frontend: an OpenAI-compatible HTTP API (axum, traced by `http::ServerLayer`) that
//! calls a worker over traced worker RPC (TCP or NATS) and streams its tokens back as SSE.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use tokentrace::inference::{StatsTarget, StreamOptions, TokenStream};
use tokentrace::metrics::FrontendMetrics;
use tokentrace::opentelemetry::trace::{Status, TraceContextExt};
use tokentrace::opentelemetry::Context;
use tokentrace::propagation::RequestIds;
use tokentrace::rpc::{Request, RpcError};

use crate::engine::{detokenize, tokenize};
use crate::model::{chat_prompt, Detokenizer, ModelTokenizer};
use crate::protocol::{GenerateRequest, TokenItem, GENERATE};
use crate::transport::Peer;

pub struct Frontend {
    /// The worker (TCP address) or workers (NATS subject) that generate.
    worker: Peer,
    model: String,
    metrics: FrontendMetrics,
    preprocessor: Preprocessor,
}

/// What turns a request into the workers' token ids and their tokens back into text, as an
/// inference server's frontend does: the real model's tokenizer and chat template, or the toy
/// engine's one token per character.
pub enum Preprocessor {
    Toy,
    Model(Box<ModelTokenizer>),
}

impl Preprocessor {
    /// The prompt's token ids: a chat's messages through the chat template, a completion's
    /// prompt as it is.
    fn tokens(&self, body: &Value, api: Api) -> Result<Vec<u32>, String> {
        let required = "a non-empty prompt (or messages) is required";
        let tokens = match (self, api) {
            (Self::Toy, _) => tokenize(&prompt_of(body, api).filter(|p| !p.is_empty()).ok_or(required)?),
            (Self::Model(tokenizer), Api::Completions) => tokenizer
                .encode(body["prompt"].as_str().filter(|p| !p.is_empty()).ok_or(required)?)
                .map_err(|e| e.to_string())?,
            (Self::Model(tokenizer), Api::Chat) => {
                let messages = body["messages"].as_array().filter(|m| !m.is_empty()).ok_or(required)?;
                let messages: Vec<(&str, &str)> = messages
                    .iter()
                    .map(|m| match (m["role"].as_str(), m["content"].as_str()) {
                        (Some(role), Some(content)) => Ok((role, content)),
                        _ => Err("each message needs a role and a text content".to_owned()),
                    })
                    .collect::<Result<_, _>>()?;
                tokenizer.encode(&chat_prompt(messages)).map_err(|e| e.to_string())?
            }
        };
        if tokens.is_empty() {
            return Err(required.into());
        }
        // The model's context comes from its file; the toy has none, and its workers enforce its
        // limit themselves.
        if let Self::Model(tokenizer) = self {
            let context = tokenizer.context;
            if tokens.len() >= context {
                return Err(format!(
                    "the prompt is {} tokens: the model's context is {context}",
                    tokens.len()
                ));
            }
        }
        Ok(tokens)
    }

    /// Tokens that end an answer.
    fn stop_tokens(&self) -> Vec<u32> {
        match self {
            Self::Toy => Vec::new(),
            Self::Model(tokenizer) => tokenizer.stop_tokens.clone(),
        }
    }
}

/// Fills each token's text in, in order, and ends the answer at the first of `stops` (OpenAI's
/// `stop` sequences) with `finish_reason: stop`, the sequence left out. Text that may be the
/// start of a stop sequence is held back until the next token settles it.
fn with_text<S>(
    tokens: S,
    frontend: Arc<Frontend>,
    stops: Vec<String>,
) -> impl Stream<Item = Result<TokenItem, RpcError>>
where
    S: Stream<Item = Result<TokenItem, RpcError>>,
{
    let mut detokenizer = Detokenizer::new();
    let mut pending = String::new();
    let mut stopped = false;
    tokens.scan((), move |(), item| {
        let item = if stopped {
            None
        } else {
            Some(item.and_then(|mut token| {
                let text = match &frontend.preprocessor {
                    Preprocessor::Toy => detokenize(token.token).to_string(),
                    Preprocessor::Model(tokenizer) => detokenizer
                        .push(tokenizer, token.token)
                        .map_err(|e| RpcError::Malformed(e.to_string()))?,
                };
                pending.push_str(&text);
                let stop_at = stops.iter().filter_map(|stop| pending.find(stop.as_str())).min();
                let ready = match stop_at {
                    Some(at) => {
                        stopped = true;
                        token.finish_reason = Some(tokentrace::inference::FinishReason::Stop);
                        at
                    }
                    None if token.finish_reason.is_some() => pending.len(),
                    None => pending.len() - held_back(&pending, &stops),
                };
                token.text = pending[..ready].to_owned();
                pending.drain(..if stopped { pending.len() } else { ready });
                Ok(token)
            }))
        };
        std::future::ready(item)
    })
}

/// How many bytes at the end of `text` could begin one of `stops`.
fn held_back(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|stop| {
            (1..stop.len()).rev().filter(|n| stop.is_char_boundary(*n)).find(|n| text.ends_with(&stop[..*n]))
        })
        .max()
        .unwrap_or(0)
}

/// OpenAI's `stop`: a string or up to four.
fn stops_of(body: &Value) -> Result<Vec<String>, String> {
    let stops: Vec<String> = match &body["stop"] {
        Value::Null => Vec::new(),
        Value::String(stop) => vec![stop.clone()],
        Value::Array(stops) => stops
            .iter()
            .map(|s| s.as_str().map(str::to_owned).ok_or("stop must be a string or a list of strings"))
            .collect::<Result<_, _>>()?,
        _ => return Err("stop must be a string or a list of strings".into()),
    };
    if stops.len() > 4 || stops.iter().any(String::is_empty) {
        return Err("stop takes up to 4 non-empty sequences".into());
    }
    Ok(stops)
}

#[derive(Clone, Copy)]
enum Api {
    Chat,
    Completions,
}

/// The frontend: the OpenAI routes, traced, and `GET /metrics` (Dynamo's `dynamo_frontend_*`
/// metrics, with trace exemplars), untraced. A `public_endpoint` trusts no caller's trace context
/// ([`ServerLayer::public_endpoint`](tokentrace::http::ServerLayer::public_endpoint)).
pub fn app(
    worker: Peer,
    model: String,
    metrics: FrontendMetrics,
    public_endpoint: bool,
    preprocessor: Preprocessor,
) -> Router {
    let layer = tokentrace::http::ServerLayer::default().filter(|_, uri| uri.path() != "/health");
    let layer = if public_endpoint { layer.public_endpoint() } else { layer };
    let routes = metrics.router();
    let frontend = Arc::new(Frontend { worker, model, metrics, preprocessor });
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .with_state(frontend)
        .layer(layer)
        .merge(routes)
}

async fn models(State(frontend): State<Arc<Frontend>>) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": frontend.model, "object": "model", "owned_by": "tokentrace"}]}),
    )
}

async fn chat(
    state: State<Arc<Frontend>>,
    ids: Extension<RequestIds>,
    cx: Extension<Context>,
    body: Json<Value>,
) -> Response {
    complete(state, ids, cx, body, Api::Chat).await
}

async fn completions(
    state: State<Arc<Frontend>>,
    ids: Extension<RequestIds>,
    cx: Extension<Context>,
    body: Json<Value>,
) -> Response {
    complete(state, ids, cx, body, Api::Completions).await
}

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": {"message": message.into(), "type": kind}}))).into_response()
}

fn prompt_of(body: &Value, api: Api) -> Option<String> {
    match api {
        Api::Completions => body["prompt"].as_str().map(str::to_owned),
        Api::Chat => {
            let messages = body["messages"].as_array()?;
            Some(messages.iter().filter_map(|m| m["content"].as_str()).collect::<Vec<_>>().join("\n"))
        }
    }
}

async fn complete(
    State(frontend): State<Arc<Frontend>>,
    Extension(ids): Extension<RequestIds>,
    Extension(cx): Extension<Context>,
    Json(body): Json<Value>,
    api: Api,
) -> Response {
    let model = body["model"].as_str().unwrap_or(&frontend.model).to_owned();
    if model != frontend.model {
        let message = format!("the model `{model}` does not exist: this server serves `{}`", frontend.model);
        return error(StatusCode::NOT_FOUND, "model_not_found", message);
    }
    let tokens = match frontend.preprocessor.tokens(&body, api) {
        Ok(tokens) => tokens,
        Err(why) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", why),
    };
    let prompt_tokens = tokens.len() as u64;
    let max_tokens = match body["max_completion_tokens"].as_u64().or(body["max_tokens"].as_u64()) {
        Some(0) => {
            return error(StatusCode::BAD_REQUEST, "invalid_request_error", "max_tokens must be at least 1")
        }
        Some(n) => n.min(8192) as u32,
        None => 16,
    };
    let stops = match stops_of(&body) {
        Ok(stops) => stops,
        Err(why) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", why),
    };
    let temperature = body["temperature"].as_f64().unwrap_or(1.0);
    let top_p = body["top_p"].as_f64().unwrap_or(1.0);
    let valid = (0.0..=2.0).contains(&temperature) && top_p > 0.0 && top_p <= 1.0;
    if !valid {
        let why = "temperature must be within [0, 2] and top_p within (0, 1]";
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", why);
    }
    let request = GenerateRequest {
        tokens,
        max_tokens,
        model,
        temperature: temperature as f32,
        top_p: top_p as f32,
        seed: body["seed"].as_u64(),
        stop_tokens: frontend.preprocessor.stop_tokens(),
    };
    let stream_response = body["stream"].as_bool().unwrap_or(false);
    let include_usage = body["stream_options"]["include_usage"].as_bool().unwrap_or(false);
    tracing::info!(
        model = request.model,
        prompt_tokens,
        max_tokens = request.max_tokens,
        stream = stream_response,
        "completion request"
    );

    let endpoint = if matches!(api, Api::Chat) { "chat_completions" } else { "completions" };
    let request_metrics =
        frontend.metrics.start(&cx, &request.model, endpoint, stream_response).input_tokens(prompt_tokens);
    let items = match frontend.worker.call(Request::new(GENERATE, request.to_bytes())).await {
        Ok(items) => items,
        Err(failure) => {
            tracing::error!(error = %failure, "worker call failed");
            request_metrics.failed();
            return error(StatusCode::SERVICE_UNAVAILABLE, "worker_unavailable", failure.to_string());
        }
    };
    let tokens =
        items.map(|item| item.and_then(|bytes| TokenItem::parse(&bytes).map_err(RpcError::Malformed)));
    let tokens = with_text(tokens, Arc::clone(&frontend), stops);
    // TTFT counts from the request's arrival at the server layer.
    let options = StreamOptions::new().model(request.model.clone()).input_tokens(prompt_tokens);
    let tokens =
        TokenStream::new(tokens, StatsTarget::Span(cx.clone()), options).record_metrics(request_metrics);
    let kind = if matches!(api, Api::Chat) { "chatcmpl" } else { "cmpl" };
    let id = format!("{kind}-{}", ids.x_request_id);
    let completion =
        Arc::new(Completion { cx, frontend, id, model: request.model, api, prompt_tokens, include_usage });
    if stream_response {
        Sse::new(sse_events(tokens, completion)).into_response()
    } else {
        collect(tokens, &completion).await
    }
}

/// What answering one completion needs besides its tokens.
struct Completion {
    /// The request's context: its span gets the failure, if any.
    cx: Context,
    frontend: Arc<Frontend>,
    id: String,
    model: String,
    api: Api,
    prompt_tokens: u64,
    /// `stream_options.include_usage`: a last chunk with the usage, before `[DONE]`.
    include_usage: bool,
}

impl Completion {
    /// OpenAI's `usage` object.
    fn usage(&self, completion_tokens: u64) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    /// The final chunk of a stream that asked for its usage: no choices, the usage.
    fn usage_chunk(&self, completion_tokens: u64) -> String {
        let object = if matches!(self.api, Api::Chat) { "chat.completion.chunk" } else { "text_completion" };
        json!({
            "id": self.id, "object": object, "created": created(), "model": self.model,
            "choices": [], "usage": self.usage(completion_tokens),
        })
        .to_string()
    }
}

fn created() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn chunk(id: &str, model: &str, api: Api, text: &str, finish: Option<&str>) -> String {
    match api {
        Api::Chat => json!({
            "id": id, "object": "chat.completion.chunk", "created": created(), "model": model,
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
        }),
        Api::Completions => json!({
            "id": id, "object": "text_completion", "created": created(), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish}],
        }),
    }
    .to_string()
}

impl Frontend {
    /// A worker's stream failed mid-way. The status line was already sent, so the HTTP span
    /// says it; a lost connection is opened again by the next request.
    async fn stream_failed(&self, cx: &Context, failure: &RpcError) {
        cx.span().set_attribute(tokentrace::opentelemetry::KeyValue::new("error.type", failure.kind()));
        cx.span().set_status(Status::error(failure.to_string()));
        tracing::error!(error = %failure, "token stream failed");
        self.worker.failed(failure).await;
    }
}

fn sse_events<S>(tokens: S, completion: Arc<Completion>) -> impl Stream<Item = Result<Event, Infallible>>
where
    S: Stream<Item = Result<TokenItem, RpcError>> + Send + 'static,
{
    enum State<S> {
        /// Tokens still coming, and how many came.
        Streaming(S, u64),
        /// The usage chunk was sent; `[DONE]` is next.
        Usage,
        Done,
    }
    let tokens = Box::pin(tokens);
    stream::unfold(State::Streaming(tokens, 0), move |state| {
        let completion = Arc::clone(&completion);
        async move {
            let (mut tokens, count) = match state {
                State::Streaming(tokens, count) => (tokens, count),
                State::Usage => return Some((Ok(Event::default().data("[DONE]")), State::Done)),
                State::Done => return None,
            };
            let Completion { cx, frontend, id, model, api, .. } = &*completion;
            match tokens.next().await {
                Some(Ok(token)) => {
                    let finish = token.finish_reason.map(|r| r.as_str());
                    Some((
                        Ok(Event::default().data(chunk(id, model, *api, &token.text, finish))),
                        State::Streaming(tokens, count + 1),
                    ))
                }
                None if completion.include_usage => {
                    Some((Ok(Event::default().data(completion.usage_chunk(count))), State::Usage))
                }
                None => Some((Ok(Event::default().data("[DONE]")), State::Done)),
                Some(Err(failure)) => {
                    frontend.stream_failed(cx, &failure).await;
                    let event = json!({"error": {"message": failure.to_string(), "type": "worker_error"}});
                    Some((Ok(Event::default().event("error").data(event.to_string())), State::Done))
                }
            }
        }
    })
}

async fn collect<S>(tokens: S, completion: &Completion) -> Response
where
    S: Stream<Item = Result<TokenItem, RpcError>>,
{
    let Completion { cx, frontend, id, model, api, .. } = completion;
    let mut tokens = std::pin::pin!(tokens);
    let mut text = String::new();
    let mut count = 0u64;
    let mut finish = None;
    while let Some(item) = tokens.next().await {
        match item {
            Ok(token) => {
                text.push_str(&token.text);
                count += 1;
                finish = token.finish_reason.map(|r| r.as_str());
            }
            Err(failure) => {
                frontend.stream_failed(cx, &failure).await;
                return error(StatusCode::BAD_GATEWAY, "worker_error", failure.to_string());
            }
        }
    }
    let choice = match *api {
        Api::Chat => {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish})
        }
        Api::Completions => json!({"index": 0, "text": text, "finish_reason": finish}),
    };
    let object = if matches!(*api, Api::Chat) { "chat.completion" } else { "text_completion" };
    Json(json!({
        "id": id, "object": object, "created": created(), "model": model,
        "choices": [choice],
        "usage": completion.usage(count),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_that_may_begin_a_stop_sequence_is_held_back() {
        let stops = ["\n\n".to_owned(), "END".to_owned()];
        let held_back = super::held_back;
        assert_eq!(held_back("Paris.\n", &stops), 1);
        assert_eq!(held_back("the EN", &stops), 2);
        assert_eq!(held_back("Paris.", &stops), 0);
        assert_eq!(held_back("é", &["éa".to_owned()]), 2, "whole characters only");
    }
}
