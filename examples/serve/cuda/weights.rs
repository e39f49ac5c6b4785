//! The model's weights as the kernels read them, from the CPU engine's loaded model (so both
//! engines compute with the same f32 values).

use candle_core::Tensor;

use crate::engine::EngineError;
use crate::model::Llama;

/// The model's weights in host memory, laid out for a device (see [`HostWeights::of`]).
pub struct HostWeights {
    pub layers: Vec<HostLayer>,
    /// (vocab, dim): rows looked up by token.
    pub embed: Vec<f32>,
    /// The final RMSNorm's weights.
    pub norm: Vec<f32>,
    /// (vocab, dim): the output projection (the embeddings again when the file ties them).
    pub output: Vec<f32>,
    pub vocab: usize,
    /// The feed-forward's width.
    pub hidden: usize,
    /// (context, head_dim / 2): the rotary angles' cosines and sines.
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

/// One layer's weights, matrices (out, in).
pub struct HostLayer {
    pub attn_norm: Vec<f32>,
    /// (heads + 2 · kv_heads) · head_dim rows: queries, then keys, then values.
    pub qkv: Vec<f32>,
    pub wo: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    /// 2 · hidden rows: the gate's, then the up projection's.
    pub gate_up: Vec<f32>,
    pub down: Vec<f32>,
}

impl HostWeights {
    /// The weights as a device's kernels read them: every matrix (out, in) row-major, the
    /// query, key and value projections stacked into one, the gate and up projections into
    /// another; the rotary tables (context, head_dim / 2).
    pub fn of(llama: &Llama) -> Result<Self, EngineError> {
        let vec = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>());
        // The CPU keeps (in, out) for `x · W`: transposed back, and stacked by output rows.
        let rows = |parts: &[&Tensor]| -> candle_core::Result<Vec<f32>> {
            let parts = parts.iter().map(|p| p.t()?.contiguous()).collect::<candle_core::Result<Vec<_>>>()?;
            vec(&Tensor::cat(&parts, 0)?)
        };
        let weights = || -> candle_core::Result<HostWeights> {
            Ok(HostWeights {
                layers: llama
                    .layers
                    .iter()
                    .map(|l| {
                        Ok(HostLayer {
                            attn_norm: vec(&l.attn_norm)?,
                            qkv: rows(&[&l.wq, &l.wk, &l.wv])?,
                            wo: rows(&[&l.wo])?,
                            ffn_norm: vec(&l.ffn_norm)?,
                            gate_up: rows(&[&l.gate, &l.up])?,
                            down: rows(&[&l.down])?,
                        })
                    })
                    .collect::<candle_core::Result<_>>()?,
                embed: vec(&llama.embed)?,
                norm: vec(&llama.norm)?,
                output: rows(&[&llama.output])?,
                vocab: llama.embed.dim(0)?,
                hidden: llama.layers.first().map_or(Ok(0), |l| l.gate.dim(1))?,
                cos: vec(&llama.cos)?,
                sin: vec(&llama.sin)?,
            })
        };
        weights().map_err(|e| EngineError(format!("weights for the device: {e}")))
    }
}
