//! The CUDA engine: the same model as `CpuEngine`, with the KV cache on the device and real
//! kernels for prefill (KV rows) and decode (attention and output projection). cudarc loads
//! the driver and NVRTC at run time, so this builds anywhere; where they are missing, the
//! engine refuses to start with a clear error instead of panicking.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use crate::engine::{kv_bytes, kv_floats, Engine, EngineError, KvState, Weights, DIM, MAX_SEQ, VOCAB};

/// CUDA C, compiled once at start by NVRTC.
const KERNELS: &str = r#"
#define DIM 64
#define VOCAB 95
#define MAX_SEQ 4096
#define THREADS 128

// One block per token, one thread per hidden unit: the token's embedding rotated by position.
extern "C" __global__ void kv_rows(const unsigned int* tokens, unsigned int count, unsigned int first_position,
                                   const float* embed, float* kv) {
    unsigned int t = blockIdx.x;
    unsigned int i = threadIdx.x;
    if (t >= count || i >= DIM) return;
    unsigned int token = tokens[t] % VOCAB;
    unsigned int position = first_position + t;
    float phase = (float)position * (1.0f + (float)i) * 0.01f;
    float a = embed[token * DIM + i];
    float b = embed[token * DIM + (i + 1) % DIM];
    kv[(size_t)position * DIM + i] = a * cosf(phase) + b * sinf(phase);
}

// One block of THREADS threads: attention of the last token's embedding over the cached rows,
// then the output projection into VOCAB logits.
extern "C" __global__ void next_logits(const float* kv, unsigned int count, unsigned int last,
                                       const float* embed, const float* out, float* logits) {
    __shared__ float scores[MAX_SEQ];
    __shared__ float context[DIM];
    __shared__ float reduce[THREADS];
    const float* q = embed + (last % VOCAB) * DIM;
    unsigned int tid = threadIdx.x;
    float scale = rsqrtf((float)DIM);

    for (unsigned int r = tid; r < count; r += THREADS) {
        float s = 0.0f;
        for (int i = 0; i < DIM; i++) s += kv[(size_t)r * DIM + i] * q[i];
        scores[r] = s * scale;
    }
    __syncthreads();

    // NVRTC has no <math.h>, so no INFINITY: -inf by its bit pattern.
    float m = __int_as_float(0xff800000);
    for (unsigned int r = tid; r < count; r += THREADS) m = fmaxf(m, scores[r]);
    reduce[tid] = m;
    __syncthreads();
    for (unsigned int s = THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) reduce[tid] = fmaxf(reduce[tid], reduce[tid + s]);
        __syncthreads();
    }
    float max = reduce[0];
    __syncthreads();

    float sum = 0.0f;
    for (unsigned int r = tid; r < count; r += THREADS) {
        float e = expf(scores[r] - max);
        scores[r] = e;
        sum += e;
    }
    reduce[tid] = sum;
    __syncthreads();
    for (unsigned int s = THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) reduce[tid] += reduce[tid + s];
        __syncthreads();
    }
    float total = reduce[0];

    if (tid < DIM) {
        float c = 0.0f;
        for (unsigned int r = 0; r < count; r++) c += scores[r] * kv[(size_t)r * DIM + tid];
        context[tid] = c / total;
    }
    __syncthreads();

    if (tid < VOCAB) {
        const float* w = out + tid * DIM;
        float l = 0.0f;
        for (int i = 0; i < DIM; i++) l += w[i] * (context[i] + q[i]);
        logits[tid] = l;
    }
}
"#;

fn cuda_error(what: &str, error: impl std::fmt::Debug) -> EngineError {
    EngineError(format!("CUDA {what} failed: {error:?}"))
}

pub struct CudaEngine {
    stream: Arc<CudaStream>,
    kv_rows: CudaFunction,
    next_logits: CudaFunction,
    embed: CudaSlice<f32>,
    out: CudaSlice<f32>,
    /// Launches and copies of one step go together.
    launch: Mutex<()>,
    _context: Arc<CudaContext>,
}

pub struct CudaKv {
    rows: CudaSlice<f32>,
    len: usize,
    stream: Arc<CudaStream>,
}

impl KvState for CudaKv {
    fn len(&self) -> usize {
        self.len
    }

    fn to_bytes(&self) -> Result<Vec<u8>, EngineError> {
        let rows = self
            .stream
            .clone_dtoh(&self.rows.slice(0..self.len * DIM))
            .map_err(|e| cuda_error("copy to host", e))?;
        Ok(kv_bytes(&rows))
    }
}

impl CudaEngine {
    /// Opens `device`, compiles the kernels and uploads the weights.
    pub fn new(device: usize) -> Result<Self, EngineError> {
        // SAFETY: only tries to load the driver library (running its initialisers, as any
        // program using CUDA does); nothing is called through it here.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(EngineError(
                "no CUDA driver found (libcuda.so): run with --engine cpu, or on a machine with an NVIDIA driver".into(),
            ));
        }
        // SAFETY: as above, for NVRTC.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(EngineError(
                "NVRTC (libnvrtc.so) not found: install the CUDA toolkit's runtime compiler".into(),
            ));
        }
        let count = CudaContext::device_count().map_err(|e| cuda_error("device count", e))?;
        if device >= count.max(0) as usize {
            return Err(EngineError(format!(
                "--device {device} does not exist: {count} CUDA device(s) found"
            )));
        }
        let context = CudaContext::new(device).map_err(|e| cuda_error("context", e))?;
        let stream = context.default_stream();
        let ptx = cudarc::nvrtc::compile_ptx(KERNELS).map_err(|e| cuda_error("kernel compilation", e))?;
        let module = context.load_module(ptx).map_err(|e| cuda_error("module load", e))?;
        let kv_rows = module.load_function("kv_rows").map_err(|e| cuda_error("kernel lookup", e))?;
        let next_logits = module.load_function("next_logits").map_err(|e| cuda_error("kernel lookup", e))?;
        let weights = Weights::new();
        let embed = stream.clone_htod(&weights.embed).map_err(|e| cuda_error("weight upload", e))?;
        let out = stream.clone_htod(&weights.out).map_err(|e| cuda_error("weight upload", e))?;
        Ok(Self { stream, kv_rows, next_logits, embed, out, launch: Mutex::new(()), _context: context })
    }

    fn new_kv(&self) -> Result<CudaKv, EngineError> {
        let rows =
            self.stream.alloc_zeros::<f32>(MAX_SEQ * DIM).map_err(|e| cuda_error("KV allocation", e))?;
        Ok(CudaKv { rows, len: 0, stream: Arc::clone(&self.stream) })
    }

    /// Appends KV rows for `tokens`.
    fn push(&self, kv: &mut CudaKv, tokens: &[u32]) -> Result<(), EngineError> {
        if kv.len + tokens.len() > MAX_SEQ {
            return Err(EngineError(format!("sequence longer than {MAX_SEQ} tokens")));
        }
        let _step = self.launch.lock().map_err(|_| EngineError("engine lock poisoned".into()))?;
        let device_tokens = self.stream.clone_htod(tokens).map_err(|e| cuda_error("token upload", e))?;
        let (count, first) = (tokens.len() as u32, kv.len as u32);
        let config =
            LaunchConfig { grid_dim: (count, 1, 1), block_dim: (DIM as u32, 1, 1), shared_mem_bytes: 0 };
        let mut launch = self.stream.launch_builder(&self.kv_rows);
        launch.arg(&device_tokens).arg(&count).arg(&first).arg(&self.embed).arg(&mut kv.rows);
        // SAFETY: the arguments match the kernel's signature in order and type; `kv.rows` holds
        // MAX_SEQ rows and `first + count <= MAX_SEQ` was checked above; `tokens` has `count`
        // entries.
        unsafe { launch.launch(config) }.map_err(|e| cuda_error("kv_rows launch", e))?;
        kv.len += tokens.len();
        Ok(())
    }

    /// The logits after the cached rows, for the query `last`.
    fn logits(&self, kv: &CudaKv, last: u32) -> Result<Vec<f32>, EngineError> {
        let _step = self.launch.lock().map_err(|_| EngineError("engine lock poisoned".into()))?;
        let mut logits =
            self.stream.alloc_zeros::<f32>(VOCAB).map_err(|e| cuda_error("logits allocation", e))?;
        let count = kv.len as u32;
        let config = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        let mut launch = self.stream.launch_builder(&self.next_logits);
        launch.arg(&kv.rows).arg(&count).arg(&last).arg(&self.embed).arg(&self.out).arg(&mut logits);
        // SAFETY: arguments match the kernel's signature; `count <= MAX_SEQ`, the size of the
        // kernel's shared score buffer; `logits` holds VOCAB floats; the block has the 128
        // threads the kernel's reductions assume.
        unsafe { launch.launch(config) }.map_err(|e| cuda_error("next_logits launch", e))?;
        self.stream.clone_dtoh(&logits).map_err(|e| cuda_error("logits copy", e))
    }
}

impl Engine for CudaEngine {
    type Kv = CudaKv;

    fn name(&self) -> &str {
        "cuda (the toy model)"
    }

    fn context(&self) -> usize {
        MAX_SEQ
    }

    fn prefill(&self, prompt: &[u32]) -> Result<(CudaKv, Vec<f32>), EngineError> {
        let last = *prompt.last().ok_or_else(|| EngineError("empty prompt".into()))?;
        let mut kv = self.new_kv()?;
        self.push(&mut kv, prompt)?;
        let logits = self.logits(&kv, last)?;
        Ok((kv, logits))
    }

    fn decode_step(&self, kv: &mut CudaKv, last: u32) -> Result<Vec<f32>, EngineError> {
        self.push(kv, &[last])?;
        self.logits(kv, last)
    }

    fn kv_from_bytes(&self, bytes: &[u8]) -> Result<CudaKv, EngineError> {
        if !bytes.len().is_multiple_of(DIM * 4) || bytes.len() / 4 > MAX_SEQ * DIM {
            return Err(EngineError(format!(
                "KV transfer of {} bytes is not whole rows within {MAX_SEQ}",
                bytes.len()
            )));
        }
        let host = kv_floats(bytes);
        let mut kv = self.new_kv()?;
        let mut head = kv.rows.slice_mut(0..host.len());
        self.stream.memcpy_htod(&host, &mut head).map_err(|e| cuda_error("KV upload", e))?;
        kv.len = host.len() / DIM;
        Ok(kv)
    }
}

#[cfg(test)]
mod tests {
    //! `cargo test -p serve --features cuda --bin serve`: the kernels must compile with NVRTC (the
    //! CUDA toolkit's, or NVIDIA's `nvidia-cuda-nvrtc` wheel on `LD_LIBRARY_PATH`; `.ci/run`
    //! fetches it), and, with `-- --ignored` on a machine with a GPU, the engine must compute
    //! what the CPU engine computes.
    use super::*;
    use crate::engine::{kv_row, logits, tokenize, CpuEngine};
    use crate::sampling::argmax;

    fn nvrtc() {
        // SAFETY: only loads the library, as the engine itself does.
        assert!(
            unsafe { cudarc::nvrtc::sys::is_culib_present() },
            "libnvrtc.so is not loadable: install the CUDA toolkit, or `pip download nvidia-cuda-nvrtc==13.0.*` \
             and put its nvidia/cu13/lib on LD_LIBRARY_PATH (as .ci/run does)"
        );
    }

    #[test]
    fn kernels_compile_with_nvrtc() {
        nvrtc();
        let ptx = cudarc::nvrtc::compile_ptx(KERNELS).unwrap_or_else(|e| panic!("{e:?}"));
        let ptx = ptx.to_src();
        for kernel in ["kv_rows", "next_logits"] {
            assert!(ptx.contains(&format!(".entry {kernel}(")), "no entry {kernel} in the PTX:\n{ptx}");
        }
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-4 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    #[ignore = "needs a CUDA device: run with -- --ignored where there is one"]
    fn cuda_engine_computes_what_the_cpu_engine_computes() {
        let cuda = CudaEngine::new(0).unwrap_or_else(|e| panic!("{e}"));
        let weights = Weights::new();
        let prompt = tokenize("Tell me about tracing LLM inference across a frontend and workers.");
        let (mut kv, first) = cuda.prefill(&prompt).unwrap();
        let first = argmax(&first);

        // KV rows: the kernel against the CPU's rows, one by one.
        let device_rows = kv.to_bytes().unwrap();
        let mut host_rows = vec![0f32; prompt.len() * DIM];
        for (position, &token) in prompt.iter().enumerate() {
            kv_row(&weights, token, position, &mut host_rows[position * DIM..(position + 1) * DIM]);
        }
        let device_rows = kv_floats(&device_rows);
        assert_eq!(device_rows.len(), host_rows.len());
        for (i, (d, h)) in device_rows.iter().zip(&host_rows).enumerate() {
            assert!(close(*d, *h), "KV value {i}: device {d}, host {h}");
        }

        // Logits after the prompt, and the first token.
        let last = *prompt.last().unwrap();
        let device_logits = cuda.logits(&kv, last).unwrap();
        let host_logits = logits(&weights, &host_rows, Weights::row(&weights.embed, last));
        for (t, (d, h)) in device_logits.iter().zip(&host_logits).enumerate() {
            assert!(close(*d, *h), "logit {t}: device {d}, host {h}");
        }
        assert_eq!(first, argmax(&host_logits));

        // Decode: the device's tokens against the CPU engine fed the same tokens, step by step
        // (so that one near tie cannot make the rest of the comparison meaningless).
        let cpu = CpuEngine::new();
        let (mut cpu_kv, _) = cpu.prefill(&prompt).unwrap();
        let (mut token, mut agreed) = (first, 0);
        for _ in 0..64 {
            let device_next = argmax(&cuda.decode_step(&mut kv, token).unwrap());
            let cpu_next = argmax(&cpu.decode_step(&mut cpu_kv, token).unwrap());
            agreed += usize::from(device_next == cpu_next);
            token = device_next;
        }
        eprintln!("{agreed} of 64 decode steps agreed with the CPU engine");
        assert!(agreed >= 62, "only {agreed} of 64 decode steps agreed with the CPU engine");

        // A KV transfer (disaggregated serving) continues where it left off.
        let moved = cuda.kv_from_bytes(&kv.to_bytes().unwrap()).unwrap();
        assert_eq!(moved.len(), kv.len());
        assert_eq!(cuda.logits(&moved, token).unwrap(), cuda.logits(&kv, token).unwrap());
    }

    #[test]
    #[ignore = "needs a CUDA device: run with -- --ignored where there is one"]
    fn a_missing_device_is_refused_clearly() {
        let error = CudaEngine::new(4096).err().expect("device 4096 opened");
        assert!(error.to_string().contains("--device 4096 does not exist"), "{error}");
    }
}
