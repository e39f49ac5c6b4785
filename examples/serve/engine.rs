//! Engines: what a worker runs. The real model (`crate::model`, SmolLM2 on the CPU) and a toy:
//! a tiny deterministic "model" that does real work per token, on the CPU or on a CUDA device,
//! for tests that need speed. The workers only see the `Engine` trait; the frontend tokenizes.

use std::fmt;

/// Width of the model's hidden state.
pub const DIM: usize = 64;
/// Tokens are the printable ASCII characters.
pub const VOCAB: usize = 95;
/// Longest sequence (prompt + output) a request may reach.
pub const MAX_SEQ: usize = 4096;

/// Prompt text to tokens (one per printable byte; others become spaces).
pub fn tokenize(text: &str) -> Vec<u32> {
    text.bytes().map(|b| if (32..127).contains(&b) { u32::from(b - 32) } else { 0 }).collect()
}

/// A token back to its character.
pub fn detokenize(token: u32) -> char {
    char::from(32 + (token as u8 % VOCAB as u8))
}

#[derive(Debug)]
pub struct EngineError(pub String);

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EngineError {}

/// The per-request state an engine keeps between steps (its KV cache).
pub trait KvState: Send {
    /// Tokens cached so far.
    fn len(&self) -> usize;
    /// The cache as bytes, for the prefill → decode transfer.
    fn to_bytes(&self) -> Result<Vec<u8>, EngineError>;
}

/// What a worker runs: prefill a prompt, then decode one token at a time; the worker picks each
/// token from the logits (greedy or sampled).
pub trait Engine: Send + Sync + 'static {
    type Kv: KvState;

    fn name(&self) -> &str;

    /// The longest sequence (prompt and output) it runs.
    fn context(&self) -> usize;

    /// Caches the prompt and returns its state and the logits of the first token to generate.
    fn prefill(&self, prompt: &[u32]) -> Result<(Self::Kv, Vec<f32>), EngineError>;

    /// Caches `last` and returns the logits of the next token.
    fn decode_step(&self, kv: &mut Self::Kv, last: u32) -> Result<Vec<f32>, EngineError>;

    /// Rebuilds a cache sent by a prefill worker.
    fn kv_from_bytes(&self, bytes: &[u8]) -> Result<Self::Kv, EngineError>;
}

/// Deterministic weights: the same on every worker, CPU or GPU, so a prefill on one and a
/// decode on another agree.
pub struct Weights {
    /// `VOCAB` rows of `DIM`: token embeddings.
    pub embed: Vec<f32>,
    /// `VOCAB` rows of `DIM`: output projection.
    pub out: Vec<f32>,
}

impl Weights {
    pub fn new() -> Self {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        Self {
            embed: (0..VOCAB * DIM).map(|_| next()).collect(),
            out: (0..VOCAB * DIM).map(|_| next()).collect(),
        }
    }

    /// The row of `table` for `token`.
    pub fn row(table: &[f32], token: u32) -> &[f32] {
        let t = token as usize % VOCAB;
        &table[t * DIM..(t + 1) * DIM]
    }
}

/// The reference engine, on the CPU: attention over the cached rows, then an output
/// projection and an argmax. A few hundred thousand floating-point operations per token.
pub struct CpuEngine {
    weights: Weights,
}

impl CpuEngine {
    pub fn new() -> Self {
        Self { weights: Weights::new() }
    }
}

pub struct CpuKv {
    rows: Vec<f32>,
}

impl KvState for CpuKv {
    fn len(&self) -> usize {
        self.rows.len() / DIM
    }

    fn to_bytes(&self) -> Result<Vec<u8>, EngineError> {
        Ok(kv_bytes(&self.rows))
    }
}

/// KV rows as transferred between workers: little-endian `f32`s.
pub fn kv_bytes(rows: &[f32]) -> Vec<u8> {
    rows.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The rows of a KV transfer (`bytes` holds whole `f32`s; a trailing partial one is ignored).
pub fn kv_floats(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// The row cached for `token` at `position`: its embedding, rotated by position.
pub fn kv_row(weights: &Weights, token: u32, position: usize, out: &mut [f32]) {
    let embed = Weights::row(&weights.embed, token);
    for (i, value) in out.iter_mut().enumerate() {
        let phase = (position as f32) * (1.0 + i as f32) * 0.01;
        *value = embed[i] * phase.cos() + embed[(i + 1) % DIM] * phase.sin();
    }
}

/// Attention of `query` over `rows`, plus the output projection: the logits.
pub fn logits(weights: &Weights, rows: &[f32], query: &[f32]) -> [f32; VOCAB] {
    let count = rows.len() / DIM;
    let scale = 1.0 / (DIM as f32).sqrt();
    let scores: Vec<f32> = (0..count)
        .map(|r| rows[r * DIM..(r + 1) * DIM].iter().zip(query).map(|(a, b)| a * b).sum::<f32>() * scale)
        .collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights_sum: f32 = scores.iter().map(|s| (s - max).exp()).sum();
    let mut context = [0f32; DIM];
    for (r, score) in scores.iter().enumerate() {
        let p = (score - max).exp() / weights_sum;
        for (c, v) in context.iter_mut().zip(&rows[r * DIM..(r + 1) * DIM]) {
            *c += p * v;
        }
    }
    let mut out = [0f32; VOCAB];
    for (token, logit) in out.iter_mut().enumerate() {
        let w = Weights::row(&weights.out, token as u32);
        *logit = w.iter().zip(context.iter().zip(query)).map(|(w, (c, q))| w * (c + q)).sum();
    }
    out
}

impl CpuEngine {
    fn push(&self, kv: &mut CpuKv, token: u32) -> Result<(), EngineError> {
        if kv.len() >= MAX_SEQ {
            return Err(EngineError(format!("sequence longer than {MAX_SEQ} tokens")));
        }
        let position = kv.len();
        let start = kv.rows.len();
        kv.rows.resize(start + DIM, 0.0);
        kv_row(&self.weights, token, position, &mut kv.rows[start..]);
        Ok(())
    }

    fn next(&self, kv: &CpuKv, last: u32) -> Vec<f32> {
        logits(&self.weights, &kv.rows, Weights::row(&self.weights.embed, last)).to_vec()
    }
}

impl Engine for CpuEngine {
    type Kv = CpuKv;

    fn name(&self) -> &str {
        "toy"
    }

    fn context(&self) -> usize {
        MAX_SEQ
    }

    fn prefill(&self, prompt: &[u32]) -> Result<(CpuKv, Vec<f32>), EngineError> {
        if prompt.is_empty() {
            return Err(EngineError("empty prompt".into()));
        }
        let mut kv = CpuKv { rows: Vec::with_capacity((prompt.len() + 256) * DIM) };
        for &token in prompt {
            self.push(&mut kv, token)?;
        }
        let first = self.next(&kv, prompt[prompt.len() - 1]);
        Ok((kv, first))
    }

    fn decode_step(&self, kv: &mut CpuKv, last: u32) -> Result<Vec<f32>, EngineError> {
        self.push(kv, last)?;
        Ok(self.next(kv, last))
    }

    fn kv_from_bytes(&self, bytes: &[u8]) -> Result<CpuKv, EngineError> {
        if !bytes.len().is_multiple_of(DIM * 4) {
            return Err(EngineError(format!("KV transfer of {} bytes is not whole rows", bytes.len())));
        }
        Ok(CpuKv { rows: kv_floats(bytes) })
    }
}
