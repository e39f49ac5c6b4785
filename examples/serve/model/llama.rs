//! A llama-family transformer on candle's CPU tensors, its weights dequantized to f32 when
//! loaded (candle's quantized CPU kernels give wrong answers on this model's Q4_1 matrices;
//! f32 is both right and faster here). RMSNorm, rotary positions on adjacent pairs (the GGUF
//! conversion permutes the query and key rows for it), grouped-query attention with a KV cache,
//! a SwiGLU feed-forward, and the output projection tied to the embeddings when the file has
//! none of its own.

use std::io::{Read, Seek};

use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, IndexOp, Tensor, D};

use crate::engine::EngineError;

/// The shape of the model, from the file's `llama.*` metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub layers: usize,
    pub dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub context: usize,
    pub rope_base: f32,
    pub eps: f64,
}

pub(crate) struct Layer {
    pub(crate) attn_norm: Tensor,
    /// Projections, transposed for `x · W`: (in, out).
    pub(crate) wq: Tensor,
    pub(crate) wk: Tensor,
    pub(crate) wv: Tensor,
    pub(crate) wo: Tensor,
    pub(crate) ffn_norm: Tensor,
    pub(crate) gate: Tensor,
    pub(crate) up: Tensor,
    pub(crate) down: Tensor,
}

pub struct Llama {
    pub config: Config,
    /// (vocab, dim): rows looked up by token.
    pub(crate) embed: Tensor,
    /// (dim, vocab): the output projection.
    pub(crate) output: Tensor,
    pub(crate) norm: Tensor,
    pub(crate) layers: Vec<Layer>,
    /// (context, head_dim / 2): the rotary angles' cosines and sines.
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
}

/// One sequence's keys and values, per layer (kv_heads, tokens, head_dim), f32.
#[derive(Clone)]
pub struct Cache {
    pub keys: Vec<Tensor>,
    pub values: Vec<Tensor>,
    pub len: usize,
}

fn error(what: &str) -> impl Fn(candle_core::Error) -> EngineError + '_ {
    move |e| EngineError(format!("{what}: {e}"))
}

impl Llama {
    /// Loads the model `content` describes from `reader`, every weight dequantized to f32.
    pub fn load<R: Read + Seek>(content: &Content, reader: &mut R) -> Result<Self, EngineError> {
        let meta = |key: &str| {
            content.metadata.get(key).ok_or_else(|| EngineError(format!("the model file has no {key}")))
        };
        let count = |key: &str| -> Result<usize, EngineError> {
            Ok(meta(key)?.to_u32().map_err(error(key))? as usize)
        };
        let arch = meta("general.architecture")?.to_string().map_err(error("general.architecture"))?;
        if arch != "llama" {
            return Err(EngineError(format!("a {arch} model: only the llama family is supported")));
        }
        let (dim, heads) = (count("llama.embedding_length")?, count("llama.attention.head_count")?);
        let kv_heads = count("llama.attention.head_count_kv").unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || dim % heads != 0 || heads % kv_heads != 0 {
            return Err(EngineError(format!(
                "unsupported attention shape: {heads} heads, {kv_heads} KV heads, width {dim}"
            )));
        }
        let config = Config {
            layers: count("llama.block_count")?,
            dim,
            heads,
            kv_heads,
            head_dim: dim / heads,
            context: count("llama.context_length")?,
            rope_base: meta("llama.rope.freq_base")
                .and_then(|v| v.to_f32().map_err(error("rope base")))
                .unwrap_or(10_000.0),
            eps: meta("llama.attention.layer_norm_rms_epsilon")?.to_f32().map_err(error("rms epsilon"))?
                as f64,
        };
        let device = Device::Cpu;
        let mut tensor = |name: &str, transposed: bool| load(content, reader, name, transposed);
        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let name = |part: &str| format!("blk.{l}.{part}.weight");
            layers.push(Layer {
                wq: tensor(&name("attn_q"), true)?,
                wk: tensor(&name("attn_k"), true)?,
                wv: tensor(&name("attn_v"), true)?,
                wo: tensor(&name("attn_output"), true)?,
                gate: tensor(&name("ffn_gate"), true)?,
                up: tensor(&name("ffn_up"), true)?,
                down: tensor(&name("ffn_down"), true)?,
                attn_norm: tensor(&name("attn_norm"), false)?,
                ffn_norm: tensor(&name("ffn_norm"), false)?,
            });
        }
        let embed = tensor("token_embd.weight", false)?;
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => tensor("output.weight", true)?,
            false => embed.t().and_then(|t| t.contiguous()).map_err(error("tied output"))?,
        };
        let norm = tensor("output_norm.weight", false)?;
        let half = config.head_dim / 2;
        let inv_freq: Vec<f32> =
            (0..half).map(|i| 1.0 / config.rope_base.powf(2.0 * i as f32 / config.head_dim as f32)).collect();
        let angles: Vec<f32> =
            (0..config.context).flat_map(|p| inv_freq.iter().map(move |f| p as f32 * f)).collect();
        let angles = Tensor::from_vec(angles, (config.context, half), &device).map_err(error("rope"))?;
        let (cos, sin) = (angles.cos().map_err(error("rope"))?, angles.sin().map_err(error("rope"))?);
        Ok(Self { config, embed, output, norm, layers, cos, sin })
    }

    /// An empty cache for one sequence.
    pub fn cache(&self) -> Result<Cache, EngineError> {
        let c = &self.config;
        let empty =
            Tensor::zeros((c.kv_heads, 0, c.head_dim), DType::F32, &Device::Cpu).map_err(error("cache"))?;
        Ok(Cache { keys: vec![empty.clone(); c.layers], values: vec![empty; c.layers], len: 0 })
    }

    /// Runs `tokens` after what `cache` holds, appends them to it, and returns the logits of
    /// the last one.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache) -> Result<Vec<f32>, EngineError> {
        self.forward_tensors(tokens, cache).map_err(error("forward"))
    }

    fn forward_tensors(&self, tokens: &[u32], cache: &mut Cache) -> candle_core::Result<Vec<f32>> {
        let c = &self.config;
        let (t, start) = (tokens.len(), cache.len);
        if t == 0 || start + t > c.context {
            candle_core::bail!("{} tokens after {start} exceed the context of {}", t, c.context);
        }
        let device = Device::Cpu;
        let ids = Tensor::new(tokens, &device)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        let cos = self.cos.narrow(0, start, t)?;
        let sin = self.sin.narrow(0, start, t)?;
        let mask = (t > 1).then(|| causal_mask(t, start + t, start)).transpose()?;
        let repeat = c.heads / c.kv_heads;
        for (layer, (keys, values)) in
            self.layers.iter().zip(cache.keys.iter_mut().zip(cache.values.iter_mut()))
        {
            let h = rms_norm(&x, &layer.attn_norm, c.eps)?;
            let heads = |w: &Tensor, n: usize| -> candle_core::Result<Tensor> {
                h.matmul(w)?.reshape((t, n, c.head_dim))?.transpose(0, 1)?.contiguous()
            };
            let q = rope(&heads(&layer.wq, c.heads)?, &cos, &sin)?;
            let k = rope(&heads(&layer.wk, c.kv_heads)?, &cos, &sin)?;
            let v = heads(&layer.wv, c.kv_heads)?;
            *keys = Tensor::cat(&[&*keys, &k], 1)?;
            *values = Tensor::cat(&[&*values, &v], 1)?;
            let (k, v) = (repeat_kv(keys, repeat)?, repeat_kv(values, repeat)?);
            let scores = (q.matmul(&k.t()?)? / (c.head_dim as f64).sqrt())?;
            let scores = match &mask {
                Some(mask) => scores.broadcast_add(mask)?,
                None => scores,
            };
            let attention = softmax_last(&scores)?.matmul(&v)?;
            let attention = attention.transpose(0, 1)?.reshape((t, c.dim))?;
            x = (x + attention.matmul(&layer.wo)?)?;
            let h = rms_norm(&x, &layer.ffn_norm, c.eps)?;
            let gated = (h.matmul(&layer.gate)?.silu()? * h.matmul(&layer.up)?)?;
            x = (x + gated.matmul(&layer.down)?)?;
        }
        cache.len += t;
        let last = rms_norm(&x.i(t - 1..t)?, &self.norm, c.eps)?;
        last.matmul(&self.output)?.squeeze(0)?.to_vec1()
    }
}

/// A tensor of the file, dequantized to f32; a matrix (out, in) `transposed` to (in, out).
fn load<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    name: &str,
    transposed: bool,
) -> Result<Tensor, EngineError> {
    let device = Device::Cpu;
    let tensor = content.tensor(reader, name, &device).and_then(|q| q.dequantize(&device));
    let tensor = match transposed {
        true => tensor.and_then(|t| t.t()?.contiguous()),
        false => tensor,
    };
    tensor.map_err(|e| EngineError(format!("tensor {name}: {e}")))
}

fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let scale = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
    x.broadcast_div(&scale)?.broadcast_mul(weight)
}

/// Rotates each adjacent pair of `x` (heads, tokens, head_dim) by its position's angle.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let (heads, t, d) = x.dims3()?;
    let pairs = x.reshape((heads, t, d / 2, 2))?;
    let (even, odd) = (pairs.narrow(3, 0, 1)?, pairs.narrow(3, 1, 1)?);
    let (cos, sin) = (cos.reshape((1, t, d / 2, 1))?, sin.reshape((1, t, d / 2, 1))?);
    let rotated_even = (even.broadcast_mul(&cos)? - odd.broadcast_mul(&sin)?)?;
    let rotated_odd = (even.broadcast_mul(&sin)? + odd.broadcast_mul(&cos)?)?;
    Tensor::cat(&[rotated_even, rotated_odd], 3)?.reshape((heads, t, d))
}

/// Each KV head repeated for the query heads that share it: (kv_heads · repeat, tokens, head_dim).
fn repeat_kv(x: &Tensor, repeat: usize) -> candle_core::Result<Tensor> {
    if repeat == 1 {
        return Ok(x.clone());
    }
    let (kv_heads, t, d) = x.dims3()?;
    x.unsqueeze(1)?.broadcast_as((kv_heads, repeat, t, d))?.reshape((kv_heads * repeat, t, d))
}

fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
    shifted.broadcast_div(&shifted.sum_keepdim(D::Minus1)?)
}

/// (tokens, keys): 0 where query `i` (at `start + i`) may see key `j`, else -inf.
fn causal_mask(t: usize, keys: usize, start: usize) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..keys).map(move |j| if j <= start + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(mask, (t, keys), &Device::Cpu)
}
