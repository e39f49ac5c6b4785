//! The model's own tokenizer, built from its GGUF file: GPT-2's byte-level BPE over the file's
//! vocabulary and merges, digits split one by one first (the `smollm` pre-tokenizer), and the
//! file's control tokens (`<|im_start|>`, `<|im_end|>`, ...) as special tokens. The chat template
//! is the file's (ChatML, with a default system message when a conversation has none).

use candle_core::quantized::gguf_file::Content;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::engine::EngineError;

/// GGUF's token type of a control token.
const CONTROL: i32 = 3;

/// The system message the file's template adds when a conversation has none.
const DEFAULT_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

pub struct ModelTokenizer {
    tokenizer: Tokenizer,
    /// `<|im_end|>` and the end-of-text token: generation stops at either.
    pub stop_tokens: Vec<u32>,
    /// The model's context, in tokens.
    pub context: usize,
}

impl ModelTokenizer {
    /// The tokenizer of the GGUF file at `path` (its metadata only is read).
    pub fn load(path: &std::path::Path) -> Result<Self, EngineError> {
        Self::from_gguf(&super::open_gguf(path)?.0)
    }

    /// The tokenizer the GGUF metadata describes; an error names what is missing or unsupported.
    pub fn from_gguf(content: &Content) -> Result<Self, EngineError> {
        let meta = |key: &str| {
            content.metadata.get(key).ok_or_else(|| EngineError(format!("the model file has no {key}")))
        };
        let text = |key: &str| -> Result<String, EngineError> {
            meta(key)?.to_string().cloned().map_err(|e| EngineError(format!("{key}: {e}")))
        };
        let list = |key: &str| {
            meta(key)?
                .to_vec()
                .map(|values| values.as_slice())
                .map_err(|e| EngineError(format!("{key}: {e}")))
        };
        if text("tokenizer.ggml.model")? != "gpt2" {
            return Err(EngineError("only byte-level BPE (gpt2) tokenizers are supported".into()));
        }
        let pre = text("tokenizer.ggml.pre").unwrap_or_default();
        let tokens: Vec<String> = list("tokenizer.ggml.tokens")?
            .iter()
            .map(|t| t.to_string().cloned())
            .collect::<Result<_, _>>()
            .map_err(|e| EngineError(format!("tokenizer.ggml.tokens: {e}")))?;
        let types: Vec<i32> = match list("tokenizer.ggml.token_type") {
            Ok(types) => types.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
            Err(_) => vec![1; tokens.len()],
        };
        let merges = list("tokenizer.ggml.merges")?
            .iter()
            .map(|merge| {
                let merge =
                    merge.to_string().map_err(|e| EngineError(format!("tokenizer.ggml.merges: {e}")))?;
                let (left, right) = merge
                    .split_once(' ')
                    .ok_or_else(|| EngineError(format!("tokenizer.ggml.merges: {merge:?} is not a pair")))?;
                Ok((left.to_owned(), right.to_owned()))
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(id, token)| (token.clone(), id as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| EngineError(format!("the model's BPE: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
            // SmolLM's: digits one by one, then GPT-2's byte-level split.
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            _ => byte_level.into(),
        };
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
        tokenizer.with_decoder(Some(byte_level));
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, kind)| **kind == CONTROL)
            .map(|(token, _)| AddedToken::from(token.clone(), true))
            .collect();
        tokenizer
            .add_special_tokens(special)
            .map_err(|e| EngineError(format!("the model's special tokens: {e}")))?;
        let id = |key: &str| meta(key).ok().and_then(|v| v.to_u32().ok());
        let mut stop_tokens: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .filter_map(|token| tokenizer.token_to_id(token))
            .chain(id("tokenizer.ggml.eos_token_id"))
            .collect();
        stop_tokens.sort_unstable();
        stop_tokens.dedup();
        let context = id("llama.context_length").unwrap_or(2048) as usize;
        Ok(Self { tokenizer, stop_tokens, context })
    }

    /// Token ids of `text`, special tokens recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let encoding =
            self.tokenizer.encode_fast(text, false).map_err(|e| EngineError(format!("tokenize: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids` (special tokens left out).
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.tokenizer.decode(ids, true).map_err(|e| EngineError(format!("detokenize: {e}")))
    }
}

/// A conversation in the model's chat template (ChatML), ready for the assistant's turn.
pub fn chat_prompt<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut prompt = String::new();
    for (n, (role, content)) in messages.into_iter().enumerate() {
        if n == 0 && role != "system" {
            prompt.push_str(&format!("<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"));
        }
        prompt.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
    }
    prompt.push_str("<|im_start|>assistant\n");
    prompt
}

/// Text decoded token by token: each token's text once it forms whole characters (a byte-level
/// BPE token may end inside a UTF-8 sequence).
pub struct Detokenizer {
    ids: Vec<u32>,
    /// Bytes of text already handed out.
    sent: usize,
}

impl Detokenizer {
    pub fn new() -> Self {
        Self { ids: Vec::new(), sent: 0 }
    }

    /// The new text `id` completes (empty while a character is unfinished).
    pub fn push(&mut self, tokenizer: &ModelTokenizer, id: u32) -> Result<String, EngineError> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids)?;
        if text.ends_with('\u{fffd}') || text.len() < self.sent {
            return Ok(String::new());
        }
        let new = text.get(self.sent..).unwrap_or_default().to_owned();
        self.sent = text.len();
        Ok(new)
    }
}
