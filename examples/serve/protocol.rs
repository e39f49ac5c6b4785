//! What travels between frontend and workers: JSON requests, JSON token items, and for
//! disaggregated serving a JSON header followed by raw KV bytes.

use bytes::Bytes;
use serde_json::{json, Value};
use tokentrace::inference::{FinishReason, TokenChunk};

/// Endpoint a frontend (or a decode worker) calls for tokens.
pub const GENERATE: &str = "generate";
/// Endpoint a decode worker calls on a prefill worker.
pub const PREFILL: &str = "remote_prefill";
/// KV bytes per transfer item.
pub const KV_CHUNK: usize = 64 * 1024;

/// What a frontend asks a worker for: the prompt's token ids (the frontend applied the chat
/// template and tokenized), how many tokens at most, how to pick them, and which tokens end the
/// answer.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub tokens: Vec<u32>,
    pub max_tokens: u32,
    pub model: String,
    /// 0: greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    /// Tokens that end the answer (`finish_reason: stop`), not sent themselves.
    pub stop_tokens: Vec<u32>,
}

impl GenerateRequest {
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(
            json!({
                "tokens": self.tokens, "max_tokens": self.max_tokens, "model": self.model,
                "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                "stop_tokens": self.stop_tokens,
            })
            .to_string(),
        )
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("bad request: {e}"))?;
        let ids = |key: &str| -> Result<Vec<u32>, String> {
            value[key]
                .as_array()
                .map(|ids| ids.iter().map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok())).collect())
                .unwrap_or(Some(Vec::new()))
                .ok_or_else(|| format!("bad request: {key} must be token ids"))
        };
        let tokens = ids("tokens")?;
        if tokens.is_empty() {
            return Err("bad request: no prompt tokens".into());
        }
        Ok(Self {
            tokens,
            max_tokens: value["max_tokens"].as_u64().unwrap_or(16).clamp(1, 8192) as u32,
            model: value["model"].as_str().unwrap_or_default().to_owned(),
            temperature: value["temperature"].as_f64().unwrap_or(0.0) as f32,
            top_p: value["top_p"].as_f64().unwrap_or(1.0) as f32,
            seed: value["seed"].as_u64(),
            stop_tokens: ids("stop_tokens")?,
        })
    }
}

/// One generated token, as it travels to the frontend.
#[derive(Clone, Debug)]
pub struct TokenItem {
    pub token: u32,
    /// Filled in by the frontend, which turns tokens into text; not on the wire.
    pub text: String,
    pub finish_reason: Option<FinishReason>,
}

impl TokenItem {
    pub fn to_bytes(&self) -> Bytes {
        let finish = self.finish_reason.map(FinishReason::as_str);
        Bytes::from(json!({"token": self.token, "finish_reason": finish}).to_string())
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("bad token item: {e}"))?;
        Ok(Self {
            token: value["token"].as_u64().ok_or("bad token item: no token")? as u32,
            text: String::new(),
            finish_reason: match value["finish_reason"].as_str() {
                Some("stop") => Some(FinishReason::Stop),
                Some("length") => Some(FinishReason::Length),
                Some(_) => Some(FinishReason::Error),
                None => None,
            },
        })
    }
}

impl TokenChunk for TokenItem {
    fn token_count(&self) -> u32 {
        1
    }

    fn finish_reason(&self) -> Option<FinishReason> {
        self.finish_reason
    }
}

/// The first item a prefill worker sends: the first token, how many KV bytes follow, and the
/// prefill span (for the decode span's link).
#[derive(Clone, Debug)]
pub struct PrefillHeader {
    pub first_token: u32,
    pub kv_bytes: u64,
    pub prompt_tokens: u64,
    pub traceparent: Option<String>,
}

impl PrefillHeader {
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(
            json!({
                "first_token": self.first_token,
                "kv_bytes": self.kv_bytes,
                "prompt_tokens": self.prompt_tokens,
                "traceparent": self.traceparent,
            })
            .to_string(),
        )
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("bad prefill header: {e}"))?;
        Ok(Self {
            first_token: value["first_token"].as_u64().ok_or("bad prefill header")? as u32,
            kv_bytes: value["kv_bytes"].as_u64().ok_or("bad prefill header")?,
            prompt_tokens: value["prompt_tokens"].as_u64().unwrap_or(0),
            traceparent: value["traceparent"].as_str().map(str::to_owned),
        })
    }
}
