//! The CUDA engine: the real model on a GPU. The same GGUF file, loaded and dequantized to f32
//! by the CPU engine's loader (so both engines compute with the same weights), uploaded once;
//! then a forward pass of six kernel launches per layer (`kernels.cu`, compiled by NVRTC at
//! start): RMSNorm folded into the query/key/value product, rotary positions and the KV-cache
//! store, attention, the output projection added to the residual, RMSNorm folded into the
//! gated feed-forward's first product, its second added to the residual. A prompt runs in
//! chunks of up to `CHUNK` tokens per launch; a decode step is a chunk of one.
//!
//! A sequence's KV cache lives on the device, (layers, keys then values, KV heads, context,
//! head size) f32; its bytes for a transfer are the CPU engine's (per layer the keys then the
//! values, each (KV heads, tokens, head size), f32 LE), so a prefill on either engine decodes
//! on the other.

mod device;
#[cfg(test)]
mod emulator;
#[cfg(test)]
mod tests;
mod weights;

use std::sync::{Arc, Mutex};

pub use device::{Arg, Cuda, Device, Kernel};

use crate::engine::{kv_bytes, kv_floats, Engine, EngineError, KvState};
use crate::model::Llama;

/// Tokens of a prompt that go through the layers in one launch each.
const CHUNK: usize = 256;
/// Threads of a matrix-vector block: a warp per output row at a time.
const MATVEC_THREADS: u32 = 128;
/// The most matrix-vector blocks per token: enough to fill a large GPU several times over,
/// few enough that the RMSNorm each block folds in stays small beside the rows it reads.
const MATVEC_BLOCKS: usize = 1024;
/// Threads of an attention block (one query head of one token).
const ATTENTION_THREADS: u32 = 128;
/// Threads of the per-token kernels (embedding lookup, rotary positions and cache store).
const TOKEN_THREADS: u32 = 128;
/// The static shared memory a block may use without opting in to more.
const SHARED_BYTES: usize = 48 * 1024;
/// Token ids travel to the device as f32, exact below 2^24.
const MAX_VOCAB: usize = 1 << 24;
/// What `matvec` does with a row's product: stores it, adds it (to the residual stream), or
/// gates it (silu(gate row) · up row).
const STORE: u32 = 0;
const ADD: u32 = 1;
const GATED: u32 = 2;

/// `kernels.cu` as the device compiles it for a model: the attention's score buffer holds the
/// whole context, the matrix-vector products stage inputs up to `max_cols` wide.
pub fn kernel_source(context: usize, max_cols: usize) -> String {
    format!(
        "#define MAX_CONTEXT {context}\n#define MAX_COLS {max_cols}\n#define ATTENTION_THREADS {ATTENTION_THREADS}\n\
         #define STORE {STORE}\n#define ADD {ADD}\n#define GATED {GATED}\n{}",
        include_str!("kernels.cu")
    )
}

/// The model's dimensions, as the kernels take them.
#[derive(Clone, Copy, Debug)]
struct Shape {
    layers: usize,
    dim: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    hidden: usize,
    vocab: usize,
    context: usize,
    eps: f32,
}

impl Shape {
    /// Rows of the stacked query, key and value projection.
    fn qkv_rows(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// What the kernels cannot run, as an error; they take widths in whole float4s, a head in
    /// one attention block, and the context and widest input in a block's shared memory.
    fn check(&self) -> Result<(), EngineError> {
        let unsupported =
            |what: String| Err(EngineError(format!("the CUDA engine cannot run this model: {what}")));
        if !self.dim.is_multiple_of(4) || !self.hidden.is_multiple_of(4) {
            return unsupported(format!("widths {} and {} are not multiples of 4", self.dim, self.hidden));
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim > ATTENTION_THREADS as usize {
            return unsupported(format!("a head size of {}", self.head_dim));
        }
        let attention_bytes = (self.context + ATTENTION_THREADS as usize + 32) * 4;
        if attention_bytes > SHARED_BYTES {
            return unsupported(format!(
                "a context of {} tokens outgrows a block's shared memory",
                self.context
            ));
        }
        if (self.dim.max(self.hidden) + 32) * 4 > SHARED_BYTES {
            return unsupported(format!("a width of {} outgrows a block's shared memory", self.hidden));
        }
        if self.vocab >= MAX_VOCAB {
            return unsupported(format!("a vocabulary of {} tokens", self.vocab));
        }
        Ok(())
    }
}

/// Where a sequence's keys and values sit in its cache buffer.
#[derive(Clone, Copy, Debug)]
struct KvLayout {
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    capacity: usize,
}

impl KvLayout {
    /// The offset of one KV head's rows: layer, keys (0) or values (1), head.
    fn block(&self, layer: usize, values: usize, head: usize) -> usize {
        ((layer * 2 + values) * self.kv_heads + head) * self.capacity * self.head_dim
    }

    fn floats(&self) -> usize {
        self.layers * 2 * self.kv_heads * self.capacity * self.head_dim
    }

    /// The transfer's bytes per token.
    fn bytes_per_token(&self) -> usize {
        self.layers * 2 * self.kv_heads * self.head_dim * 4
    }

    /// Every KV head's block in the transfer's order: layer by layer, keys then values.
    fn blocks(self) -> impl Iterator<Item = usize> {
        (0..self.layers).flat_map(move |l| {
            (0..2).flat_map(move |values| (0..self.kv_heads).map(move |h| self.block(l, values, h)))
        })
    }
}

struct LayerWeights<B> {
    attn_norm: B,
    qkv: B,
    wo: B,
    ffn_norm: B,
    gate_up: B,
    down: B,
}

/// The activations of one chunk; one set, used under the engine's lock.
struct Scratch<B> {
    tokens: B,
    x: B,
    qkv: B,
    attention: B,
    ffn: B,
    logits: B,
}

/// The real model on a `Device`: a CUDA GPU in the worker, the kernels' CPU emulation in tests.
pub struct CudaEngine<D: Device = Cuda> {
    device: Arc<D>,
    shape: Shape,
    layers: Vec<LayerWeights<D::Buffer>>,
    embed: D::Buffer,
    norm: D::Buffer,
    output: D::Buffer,
    cos: D::Buffer,
    sin: D::Buffer,
    /// One forward pass at a time: the device runs one queue, and the activations are shared.
    scratch: Mutex<Scratch<D::Buffer>>,
    chunk: usize,
    matvec_blocks: usize,
    name: String,
}

/// One sequence's KV cache, on the device.
pub struct CudaKv<D: Device> {
    cache: D::Buffer,
    len: usize,
    layout: KvLayout,
    device: Arc<D>,
}

impl<D: Device> KvState for CudaKv<D> {
    fn len(&self) -> usize {
        self.len
    }

    fn to_bytes(&self) -> Result<Vec<u8>, EngineError> {
        let rows = self.len * self.layout.head_dim;
        let mut floats = Vec::with_capacity(self.len * self.layout.bytes_per_token() / 4);
        for block in self.layout.blocks() {
            floats.extend(self.device.read(&self.cache, block..block + rows)?);
        }
        Ok(kv_bytes(&floats))
    }
}

impl<D: Device> CudaEngine<D> {
    /// Uploads `llama`'s weights to `device` and compiles the kernels for its shape.
    pub fn new(device: D, llama: &Llama, name: String) -> Result<Self, EngineError> {
        Self::with_limits(device, llama, name, CHUNK, MATVEC_BLOCKS)
    }

    /// As `new`, prompts in chunks of `chunk` tokens and matrix-vector products on at most
    /// `matvec_blocks` blocks per token.
    fn with_limits(
        mut device: D,
        llama: &Llama,
        name: String,
        chunk: usize,
        matvec_blocks: usize,
    ) -> Result<Self, EngineError> {
        let weights = weights::HostWeights::of(llama)?;
        let c = &llama.config;
        let shape = Shape {
            layers: c.layers,
            dim: c.dim,
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            hidden: weights.hidden,
            vocab: weights.vocab,
            context: c.context,
            eps: c.eps as f32,
        };
        shape.check()?;
        device.load_kernels(&kernel_source(shape.context, shape.dim.max(shape.hidden)))?;
        let layers = weights
            .layers
            .iter()
            .map(|l| {
                Ok(LayerWeights {
                    attn_norm: device.upload(&l.attn_norm)?,
                    qkv: device.upload(&l.qkv)?,
                    wo: device.upload(&l.wo)?,
                    ffn_norm: device.upload(&l.ffn_norm)?,
                    gate_up: device.upload(&l.gate_up)?,
                    down: device.upload(&l.down)?,
                })
            })
            .collect::<Result<_, EngineError>>()?;
        let scratch = Scratch {
            tokens: device.zeros(chunk)?,
            x: device.zeros(chunk * shape.dim)?,
            qkv: device.zeros(chunk * shape.qkv_rows())?,
            attention: device.zeros(chunk * shape.dim)?,
            ffn: device.zeros(chunk * shape.hidden)?,
            logits: device.zeros(shape.vocab)?,
        };
        Ok(Self {
            embed: device.upload(&weights.embed)?,
            norm: device.upload(&weights.norm)?,
            output: device.upload(&weights.output)?,
            cos: device.upload(&weights.cos)?,
            sin: device.upload(&weights.sin)?,
            layers,
            scratch: Mutex::new(scratch),
            device: Arc::new(device),
            shape,
            chunk,
            matvec_blocks,
            name,
        })
    }

    fn layout(&self) -> KvLayout {
        let s = &self.shape;
        KvLayout { layers: s.layers, kv_heads: s.kv_heads, head_dim: s.head_dim, capacity: s.context }
    }

    fn new_kv(&self) -> Result<CudaKv<D>, EngineError> {
        let layout = self.layout();
        Ok(CudaKv {
            cache: self.device.zeros(layout.floats())?,
            len: 0,
            layout,
            device: Arc::clone(&self.device),
        })
    }

    /// Runs `tokens` after what `kv` holds, appends them to it, and returns the logits of the
    /// last one.
    fn forward(&self, kv: &mut CudaKv<D>, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let s = &self.shape;
        if tokens.is_empty() {
            return Err(EngineError("empty prompt".into()));
        }
        if kv.len + tokens.len() > s.context {
            return Err(EngineError(format!(
                "{} tokens after {} exceed the context of {}",
                tokens.len(),
                kv.len,
                s.context
            )));
        }
        if let Some(token) = tokens.iter().find(|&&t| t as usize >= s.vocab) {
            return Err(EngineError(format!("token {token} is outside the vocabulary of {}", s.vocab)));
        }
        let mut scratch = self.scratch.lock().map_err(|_| EngineError("engine lock poisoned".into()))?;
        for chunk in tokens.chunks(self.chunk) {
            self.layers_forward(&mut scratch, kv, chunk)?;
            kv.len += chunk.len();
        }
        let last = (tokens.len() - 1) % self.chunk;
        let scratch = &*scratch;
        self.matvec(
            &self.output,
            s.vocab,
            s.dim,
            (&scratch.x, last * s.dim),
            Some(&self.norm),
            &scratch.logits,
            STORE,
            1,
        )?;
        self.device.read(&scratch.logits, 0..s.vocab)
    }

    /// One chunk through every layer, its keys and values stored in `kv` after its `len`.
    fn layers_forward(
        &self,
        scratch: &mut Scratch<D::Buffer>,
        kv: &CudaKv<D>,
        chunk: &[u32],
    ) -> Result<(), EngineError> {
        let (s, device) = (&self.shape, &*self.device);
        let tokens = chunk.len() as u32;
        let ids: Vec<f32> = chunk.iter().map(|&t| t as f32).collect();
        device.write(&mut scratch.tokens, 0, &ids)?;
        let scratch = &*scratch;
        self.fits(&self.embed, 0, s.vocab * s.dim)?;
        self.fits(&scratch.x, 0, chunk.len() * s.dim)?;
        let args = [
            Arg::Buffer(&scratch.tokens, 0),
            Arg::Buffer(&self.embed, 0),
            Arg::U32(s.dim as u32),
            Arg::Buffer(&scratch.x, 0),
        ];
        // SAFETY: embed(tokens, table, dim, x): `tokens` holds the chunk's ids (each checked
        // below the vocabulary), the table vocab rows of dim, x a row of dim per token.
        unsafe { device.launch(Kernel::Embed, (tokens, 1), TOKEN_THREADS, &args)? };

        for (l, layer) in self.layers.iter().enumerate() {
            let cache = self.layer_cache(kv, l)?;
            self.matvec(
                &layer.qkv,
                s.qkv_rows(),
                s.dim,
                (&scratch.x, 0),
                Some(&layer.attn_norm),
                &scratch.qkv,
                STORE,
                tokens,
            )?;
            self.rope_store(scratch, kv, cache, tokens)?;
            self.attention(scratch, kv, cache, tokens)?;
            self.matvec(&layer.wo, s.dim, s.dim, (&scratch.attention, 0), None, &scratch.x, ADD, tokens)?;
            self.matvec(
                &layer.gate_up,
                s.hidden,
                s.dim,
                (&scratch.x, 0),
                Some(&layer.ffn_norm),
                &scratch.ffn,
                GATED,
                tokens,
            )?;
            self.matvec(&layer.down, s.dim, s.hidden, (&scratch.ffn, 0), None, &scratch.x, ADD, tokens)?;
        }
        Ok(())
    }

    /// An error unless `buffer` holds `len` floats from `offset`: every launch is checked
    /// against what its kernel reaches.
    fn fits(&self, buffer: &D::Buffer, offset: usize, len: usize) -> Result<(), EngineError> {
        let have = self.device.len(buffer);
        match offset.checked_add(len) {
            Some(end) if end <= have => Ok(()),
            _ => Err(EngineError(format!(
                "a launch would reach {offset} + {len} of a buffer of {have} floats"
            ))),
        }
    }

    /// The offsets of `layer`'s keys and values in `kv`'s cache, each checked to hold a layer's
    /// (kv_heads, capacity, head_dim): what `rope_store` and `attention` reach through them.
    fn layer_cache(&self, kv: &CudaKv<D>, layer: usize) -> Result<(usize, usize), EngineError> {
        let (keys, values) = (kv.layout.block(layer, 0, 0), kv.layout.block(layer, 1, 0));
        self.fits(&kv.cache, keys, values - keys)?;
        self.fits(&kv.cache, values, values - keys)?;
        Ok((keys, values))
    }

    /// y = W · x for `tokens` rows of x (`matvec` in kernels.cu).
    #[allow(clippy::too_many_arguments)]
    fn matvec(
        &self,
        w: &D::Buffer,
        rows: usize,
        cols: usize,
        (x, offset): (&D::Buffer, usize),
        norm: Option<&D::Buffer>,
        y: &D::Buffer,
        mode: u32,
        tokens: u32,
    ) -> Result<(), EngineError> {
        let t = tokens as usize;
        self.fits(w, 0, rows * cols * if mode == GATED { 2 } else { 1 })?;
        self.fits(x, offset, t * cols)?;
        self.fits(y, 0, t * rows)?;
        if let Some(norm) = norm {
            self.fits(norm, 0, cols)?;
        }
        let args = [
            Arg::Buffer(w, 0),
            Arg::U32(rows as u32),
            Arg::U32(cols as u32),
            Arg::Buffer(x, offset),
            Arg::U32(norm.is_some().into()),
            Arg::Buffer(norm.unwrap_or(x), 0),
            Arg::F32(self.shape.eps),
            Arg::Buffer(y, 0),
            Arg::U32(mode),
        ];
        let grid = (rows.div_ceil(MATVEC_THREADS as usize / 32).min(self.matvec_blocks) as u32, tokens);
        // SAFETY: matvec(w, rows, cols, x, normed, norm, eps, y, mode), with w, x, y and norm
        // (read only when normed) checked above for what the grid reaches; cols is at most the
        // kernel's MAX_COLS (Shape::check).
        unsafe { self.device.launch(Kernel::Matvec, grid, MATVEC_THREADS, &args) }
    }

    fn rope_store(
        &self,
        scratch: &Scratch<D::Buffer>,
        kv: &CudaKv<D>,
        (keys, values): (usize, usize),
        tokens: u32,
    ) -> Result<(), EngineError> {
        let s = &self.shape;
        let (t, end) = (tokens as usize, kv.len + tokens as usize);
        self.fits(&scratch.qkv, 0, t * s.qkv_rows())?;
        self.fits(&self.cos, 0, end * s.head_dim / 2)?;
        self.fits(&self.sin, 0, end * s.head_dim / 2)?;
        let args = [
            Arg::Buffer(&scratch.qkv, 0),
            Arg::U32(s.heads as u32),
            Arg::U32(s.kv_heads as u32),
            Arg::U32(s.head_dim as u32),
            Arg::Buffer(&self.cos, 0),
            Arg::Buffer(&self.sin, 0),
            Arg::U32(kv.len as u32),
            Arg::Buffer(&kv.cache, keys),
            Arg::Buffer(&kv.cache, values),
            Arg::U32(kv.layout.capacity as u32),
        ];
        // SAFETY: rope_store(qkv, heads, kv_heads, head_dim, cos, sin, start, keys, values,
        // capacity): qkv holds the chunk's rows, the tables its positions, and keys and values
        // a layer's (kv_heads, capacity, head_dim) each (`layer_cache`), with start + tokens
        // within capacity (checked by `forward`).
        unsafe { self.device.launch(Kernel::RopeStore, (tokens, 1), TOKEN_THREADS, &args) }
    }

    fn attention(
        &self,
        scratch: &Scratch<D::Buffer>,
        kv: &CudaKv<D>,
        (keys, values): (usize, usize),
        tokens: u32,
    ) -> Result<(), EngineError> {
        let s = &self.shape;
        let t = tokens as usize;
        self.fits(&scratch.qkv, 0, t * s.qkv_rows())?;
        self.fits(&scratch.attention, 0, t * s.dim)?;
        let args = [
            Arg::Buffer(&scratch.qkv, 0),
            Arg::U32(s.heads as u32),
            Arg::U32(s.kv_heads as u32),
            Arg::U32(s.head_dim as u32),
            Arg::Buffer(&kv.cache, keys),
            Arg::Buffer(&kv.cache, values),
            Arg::U32(kv.layout.capacity as u32),
            Arg::U32(kv.len as u32),
            Arg::Buffer(&scratch.attention, 0),
        ];
        // SAFETY: attention(qkv, heads, kv_heads, head_dim, keys, values, capacity, start, out):
        // as rope_store, with out a row of heads · head_dim (= dim) per token; start + tokens is
        // within the kernel's MAX_CONTEXT (the context, Shape::check).
        unsafe { self.device.launch(Kernel::Attention, (s.heads as u32, tokens), ATTENTION_THREADS, &args) }
    }
}

impl CudaEngine<Cuda> {
    /// Loads the model in `path` onto `device` (opened first, so that a missing driver or device
    /// is found before the model is read).
    pub fn load(device: Cuda, path: &std::path::Path) -> Result<Self, EngineError> {
        let llama = crate::model::load_llama(path)?;
        let name = crate::model::engine_name(path, &format!("cuda: {}", device.device_name()));
        Self::new(device, &llama, name)
    }
}

impl<D: Device> Engine for CudaEngine<D> {
    type Kv = CudaKv<D>;

    fn name(&self) -> &str {
        &self.name
    }

    fn context(&self) -> usize {
        self.shape.context
    }

    fn prefill(&self, prompt: &[u32]) -> Result<(CudaKv<D>, Vec<f32>), EngineError> {
        let mut kv = self.new_kv()?;
        let logits = self.forward(&mut kv, prompt)?;
        Ok((kv, logits))
    }

    fn decode_step(&self, kv: &mut CudaKv<D>, last: u32) -> Result<Vec<f32>, EngineError> {
        self.forward(kv, &[last])
    }

    fn kv_from_bytes(&self, bytes: &[u8]) -> Result<CudaKv<D>, EngineError> {
        let layout = self.layout();
        let tokens =
            crate::model::kv_transfer_tokens(bytes.len(), layout.bytes_per_token(), layout.capacity)?;
        let mut kv = self.new_kv()?;
        kv.len = tokens;
        let floats = kv_floats(bytes);
        let rows = kv.len * layout.head_dim;
        for (block, part) in layout.blocks().zip(floats.chunks_exact(rows)) {
            self.device.write(&mut kv.cache, block, part)?;
        }
        Ok(kv)
    }
}
