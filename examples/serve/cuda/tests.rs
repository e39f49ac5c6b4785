//! The CUDA engine against the CPU engine. Always: the kernels compile with NVRTC (the CUDA
//! toolkit's, or NVIDIA's `nvidia-cuda-nvrtc` wheel on `LD_LIBRARY_PATH`, as `.ci/run` sets up),
//! and the whole forward pass runs on the kernels' CPU emulation (`emulator.rs`) for a small
//! random llama of the real model's structure (grouped queries, a tied output projection), and
//! for the real model when it is cached.
//! With `-- --ignored` on a machine with a GPU and the model: the real model on the device
//! (`gpu_check.sh` skips the `emulated_` tests there, which need g++).

use std::io::Cursor;
use std::time::Instant;

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device as CandleDevice, Tensor};

use super::emulator::Emulator;
use super::*;
use crate::model::{chat_prompt, fetch, ModelEngine, ModelTokenizer};
use crate::sampling::argmax;

/// A llama of 2 layers, width 96, 6 query heads sharing 2 KV heads of 16, a feed-forward of
/// 160, 300 tokens, a context of 40; weights from a fixed seed, the output tied to the
/// embeddings (as in SmolLM2). Written as a GGUF file and read back by the CPU engine's loader.
fn small_llama() -> Llama {
    let (layers, dim, heads, kv_heads, hidden, vocab) = (2usize, 96usize, 6u32, 2u32, 160usize, 300usize);
    let head_dim = dim / heads as usize;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut tensor = |shape: &[usize], scale: f32, offset: f32| {
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                offset + scale * ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            })
            .collect();
        let tensor = Tensor::from_vec(values, shape, &CandleDevice::Cpu).unwrap();
        QTensor::quantize(&tensor, GgmlDType::F32).unwrap()
    };
    let mut tensors = vec![("token_embd.weight".to_owned(), tensor(&[vocab, dim], 2.0, 0.0))];
    tensors.push(("output_norm.weight".to_owned(), tensor(&[dim], 0.2, 1.0)));
    let kv_width = kv_heads as usize * head_dim;
    for l in 0..layers {
        let name = |part: &str| format!("blk.{l}.{part}.weight");
        for (part, shape) in [
            ("attn_q", [dim, dim]),
            ("attn_k", [kv_width, dim]),
            ("attn_v", [kv_width, dim]),
            ("attn_output", [dim, dim]),
            ("ffn_gate", [hidden, dim]),
            ("ffn_up", [hidden, dim]),
            ("ffn_down", [dim, hidden]),
        ] {
            tensors.push((name(part), tensor(&shape, 0.4, 0.0)));
        }
        tensors.push((name("attn_norm"), tensor(&[dim], 0.2, 1.0)));
        tensors.push((name("ffn_norm"), tensor(&[dim], 0.2, 1.0)));
    }
    let metadata = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(layers as u32)),
        ("llama.embedding_length", Value::U32(dim as u32)),
        ("llama.feed_forward_length", Value::U32(hidden as u32)),
        ("llama.attention.head_count", Value::U32(heads)),
        ("llama.attention.head_count_kv", Value::U32(kv_heads)),
        ("llama.context_length", Value::U32(40)),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
    ];
    let mut file = Cursor::new(Vec::new());
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
    file.set_position(0);
    let content = Content::read(&mut file).unwrap();
    Llama::load(&content, &mut file).unwrap()
}

/// The CUDA engine on the emulated device, prompts in chunks of `chunk` and products on at most
/// `blocks` blocks, beside the CPU engine on the same weights.
fn emulated(chunk: usize, blocks: usize) -> (CudaEngine<Emulator>, ModelEngine) {
    let llama = small_llama();
    let engine = CudaEngine::with_limits(Emulator::new(), &llama, "small (emulated)".into(), chunk, blocks)
        .unwrap_or_else(|e| panic!("{e}"));
    (engine, ModelEngine::new(llama, "small (cpu)".into()))
}

/// The largest difference between two sets of logits, relative to their scale.
fn distance(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().chain(b).fold(1f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

fn assert_close(what: &str, a: &[f32], b: &[f32], tolerance: f32) {
    let d = distance(a, b);
    assert!(d <= tolerance, "{what}: logits differ by {d} of their scale (tolerance {tolerance})");
    assert_eq!(argmax(a), argmax(b), "{what}: a different most likely token");
}

const PROMPT: [u32; 8] = [17, 4, 250, 99, 3, 3, 281, 0];

#[test]
fn emulated_forward_pass_computes_what_the_cpu_engine_computes() {
    // Chunks of 3: the prompt of 8 goes through the layers as 3 + 3 + 2; 5 blocks of 4 warps
    // take the output's 300 rows 20 at a time.
    let (gpu, cpu) = emulated(3, 5);
    let (mut gpu_kv, gpu_logits) = gpu.prefill(&PROMPT).unwrap();
    let (mut cpu_kv, cpu_logits) = cpu.prefill(&PROMPT).unwrap();
    assert_close("prefill", &gpu_logits, &cpu_logits, 1e-5);
    assert_eq!(gpu_kv.len(), PROMPT.len());

    // The caches, as transferred: the same layout and the same values.
    let (gpu_bytes, cpu_bytes) = (gpu_kv.to_bytes().unwrap(), cpu_kv.to_bytes().unwrap());
    assert_eq!(gpu_bytes.len(), cpu_bytes.len());
    assert!(distance(&kv_floats(&gpu_bytes), &kv_floats(&cpu_bytes)) <= 1e-5, "the KV caches differ");

    // Decode, both fed the same tokens (the GPU's picks).
    let mut token = argmax(&gpu_logits);
    for step in 0..6 {
        let gpu_logits = gpu.decode_step(&mut gpu_kv, token).unwrap();
        let cpu_logits = cpu.decode_step(&mut cpu_kv, token).unwrap();
        assert_close(&format!("decode step {step}"), &gpu_logits, &cpu_logits, 1e-5);
        token = argmax(&gpu_logits);
    }
}

/// A prefill on the CPU engine decoded on the CUDA engine, and the other way round: the first
/// token the same, and the next step's logits within `tolerance` of a CPU-only decode's.
fn assert_transfers_both_ways<D: Device>(
    gpu: &CudaEngine<D>,
    cpu: &ModelEngine,
    prompt: &[u32],
    tolerance: f32,
) {
    let (cpu_kv, cpu_first) = cpu.prefill(prompt).unwrap();
    let (gpu_kv, gpu_first) = gpu.prefill(prompt).unwrap();
    let token = argmax(&cpu_first);
    assert_eq!(token, argmax(&gpu_first));

    let mut cpu_to_gpu = gpu.kv_from_bytes(&cpu_kv.to_bytes().unwrap()).unwrap();
    let mut gpu_to_cpu = cpu.kv_from_bytes(&gpu_kv.to_bytes().unwrap()).unwrap();
    let mut cpu_only = cpu_kv;
    let expected = cpu.decode_step(&mut cpu_only, token).unwrap();
    let moved = gpu.decode_step(&mut cpu_to_gpu, token).unwrap();
    assert_close("CPU prefill, CUDA engine's decode", &moved, &expected, tolerance);
    let back = cpu.decode_step(&mut gpu_to_cpu, token).unwrap();
    assert_close("CUDA engine's prefill, CPU decode", &back, &expected, tolerance);
    assert_eq!(cpu_to_gpu.len(), prompt.len() + 1);
}

#[test]
fn emulated_prefill_on_either_engine_decodes_on_the_other() {
    let (gpu, cpu) = emulated(CHUNK, MATVEC_BLOCKS);
    assert_transfers_both_ways(&gpu, &cpu, &PROMPT, 1e-5);
}

#[test]
fn emulated_engine_refuses_what_it_cannot_run_clearly() {
    let (gpu, _) = emulated(CHUNK, MATVEC_BLOCKS);
    let error = |result: Result<(), EngineError>| result.expect_err("accepted").to_string();
    let message = error(gpu.prefill(&[1, 300]).map(drop));
    assert!(message.contains("token 300 is outside the vocabulary of 300"), "{message}");
    let message = error(gpu.prefill(&[5; 41]).map(drop));
    assert!(message.contains("exceed the context of 40"), "{message}");
    let message = error(gpu.prefill(&[]).map(drop));
    assert!(message.contains("empty prompt"), "{message}");
    let (mut kv, _) = gpu.prefill(&[5; 40]).unwrap();
    let message = error(gpu.decode_step(&mut kv, 5).map(drop));
    assert!(message.contains("1 tokens after 40 exceed the context of 40"), "{message}");
    let message = error(gpu.kv_from_bytes(&[0; 100]).map(drop));
    assert!(message.contains("not whole tokens"), "{message}");
}

/// The emulation is strict where a GPU is undefined: a barrier that only some threads reach is
/// an error, not a hang or a silently right answer (so the comparisons above mean the kernels'
/// barriers are where every thread reaches them).
#[test]
fn emulated_barrier_that_some_threads_skip_is_refused() {
    let llama = small_llama();
    let mut device = Emulator::new();
    let source = kernel_source(40, 160).replace(
        "__syncthreads();  // the rotated keys",
        "if (threadIdx.x < 32) __syncthreads();  // the rotated keys",
    );
    device.load_kernels(&source).unwrap();
    let mut engine =
        CudaEngine::with_limits(Emulator::new(), &llama, "small".into(), CHUNK, MATVEC_BLOCKS).unwrap();
    engine.device = Arc::new(device);
    let error = engine.prefill(&PROMPT).map(drop).expect_err("a divergent barrier was run");
    assert!(error.to_string().contains("rope_store") && error.to_string().contains("barrier"), "{error}");
}

/// The real model's shapes (a context of 8192, 49152 tokens, heads of 64 in groups of 3) on the
/// emulation: a short prompt's logits and one decode step's, as the CPU engine's.
#[test]
fn emulated_real_model_computes_what_the_cpu_engine_computes() {
    let Some(path) = crate::model::tests::cached_model() else { return };
    let llama = crate::model::load_llama(&path).unwrap();
    let gpu = CudaEngine::new(Emulator::new(), &llama, "emulated".into()).unwrap_or_else(|e| panic!("{e}"));
    let cpu = ModelEngine::new(llama, "cpu".into());
    // "<|im_start|>user\nHi"
    let prompt = [1, 4093, 198, 26843];
    let (mut gpu_kv, gpu_logits) = gpu.prefill(&prompt).unwrap();
    let (mut cpu_kv, cpu_logits) = cpu.prefill(&prompt).unwrap();
    eprintln!("prefill: logits within {:.2e} of their scale", distance(&gpu_logits, &cpu_logits));
    assert_close("prefill", &gpu_logits, &cpu_logits, 1e-4);
    let token = argmax(&cpu_logits);
    let (g, c) = (gpu.decode_step(&mut gpu_kv, token).unwrap(), cpu.decode_step(&mut cpu_kv, token).unwrap());
    eprintln!("decode: logits within {:.2e} of their scale", distance(&g, &c));
    assert_close("decode", &g, &c, 1e-4);
}

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
    // SmolLM2-135M's context and feed-forward width.
    let ptx = cudarc::nvrtc::compile_ptx(kernel_source(8192, 1536)).unwrap_or_else(|e| panic!("{e:?}"));
    let ptx = ptx.to_src();
    for kernel in Kernel::ALL {
        assert!(
            ptx.contains(&format!(".entry {}(", kernel.name())),
            "no entry {} in the PTX:\n{ptx}",
            kernel.name()
        );
    }
}

/// The real model: the CPU engine and the CUDA engine on device 0, loaded from the cached file.
fn real_engines() -> (CudaEngine, ModelEngine, ModelTokenizer) {
    let path = fetch::cached().expect("the model is cached (`serve fetch-model`, or TOKENTRACE_MODEL_DIR)");
    let cuda = Cuda::open(0).unwrap_or_else(|e| panic!("{e}"));
    let gpu = CudaEngine::load(cuda, &path).unwrap_or_else(|e| panic!("{e}"));
    let cpu = ModelEngine::load(&path).unwrap();
    (gpu, cpu, ModelTokenizer::load(&path).unwrap())
}

/// On the device: logits of three chat prompts within 1e-3 of their scale of the CPU engine's
/// (f32 on both; sums in another order), the same greedy answer, transfers both ways.
#[test]
#[ignore = "needs a CUDA device and the model: run with -- --ignored where there are"]
fn the_cuda_engine_runs_the_real_model_as_the_cpu_engine_does() {
    let (gpu, cpu, tokenizer) = real_engines();
    eprintln!("engine: {}", gpu.name());
    for question in [
        "What is the capital of France?",
        "Name the three primary colors.",
        "Write a haiku about distributed tracing.",
    ] {
        let prompt = tokenizer.encode(&chat_prompt([("user", question)])).unwrap();
        let (mut gpu_kv, gpu_logits) = gpu.prefill(&prompt).unwrap();
        let (mut cpu_kv, cpu_logits) = cpu.prefill(&prompt).unwrap();
        let mut worst = distance(&gpu_logits, &cpu_logits);
        assert_close(question, &gpu_logits, &cpu_logits, 1e-3);
        let (mut gpu_answer, mut cpu_answer) = (vec![argmax(&gpu_logits)], vec![argmax(&cpu_logits)]);
        while gpu_answer.len() < 32 && !tokenizer.stop_tokens.contains(gpu_answer.last().unwrap()) {
            let g = gpu.decode_step(&mut gpu_kv, *gpu_answer.last().unwrap()).unwrap();
            let c = cpu.decode_step(&mut cpu_kv, *cpu_answer.last().unwrap()).unwrap();
            worst = worst.max(distance(&g, &c));
            gpu_answer.push(argmax(&g));
            cpu_answer.push(argmax(&c));
        }
        let text = tokenizer.decode(&gpu_answer).unwrap();
        eprintln!("{question:?} -> {text:?} (logits within {worst:.2e} of their scale)");
        assert_eq!(gpu_answer, cpu_answer, "{question:?}: the engines answer differently");
        assert!(worst <= 1e-3, "{question:?}: logits differ by {worst} of their scale");

        assert_transfers_both_ways(&gpu, &cpu, &prompt, 1e-3);
    }
}

/// Decode tokens/s at batch 1 on the device and on the CPU, and the weights' traffic against
/// the device's bandwidth (weights bytes × tokens/s). Printed, for the README and BENCHMARKS.md.
#[test]
#[ignore = "needs a CUDA device and the model: run with -- --ignored where there are"]
fn decode_speed_on_the_device() {
    let (gpu, cpu, _) = real_engines();
    let prompt: Vec<u32> = (0..100).map(|i| 1000 + i * 7).collect();
    let (mut kv, logits) = gpu.prefill(&prompt).unwrap();
    let mut token = argmax(&logits);
    for _ in 0..16 {
        token = argmax(&gpu.decode_step(&mut kv, token).unwrap());
    }
    let steps = 512;
    let start = Instant::now();
    for _ in 0..steps {
        token = argmax(&gpu.decode_step(&mut kv, token).unwrap());
    }
    let gpu_rate = steps as f64 / start.elapsed().as_secs_f64();

    let (mut kv, logits) = cpu.prefill(&prompt).unwrap();
    let mut token = argmax(&logits);
    let cpu_steps = 32;
    let start = Instant::now();
    for _ in 0..cpu_steps {
        token = argmax(&cpu.decode_step(&mut kv, token).unwrap());
    }
    let cpu_rate = cpu_steps as f64 / start.elapsed().as_secs_f64();

    // Every matrix and norm is read once per token (the embeddings only a row).
    let floats: usize = gpu
        .layers
        .iter()
        .map(|l| {
            [&l.attn_norm, &l.qkv, &l.wo, &l.ffn_norm, &l.gate_up, &l.down]
                .map(|b| gpu.device.len(b))
                .iter()
                .sum::<usize>()
        })
        .sum::<usize>()
        + gpu.device.len(&gpu.output)
        + gpu.device.len(&gpu.norm);
    let bytes = (floats * 4) as f64;
    eprintln!(
        "decode at batch 1: {gpu_rate:.0} tokens/s on {} ({:.1}x the CPU engine's {cpu_rate:.1} tokens/s here); \
         weights {:.0} MB read per token: {:.0} GB/s",
        gpu.name(),
        gpu_rate / cpu_rate,
        bytes / 1e6,
        bytes * gpu_rate / 1e9
    );
    assert!(
        gpu_rate >= 10.0 * cpu_rate,
        "decode is {gpu_rate:.0} tokens/s, under 10x the CPU's {cpu_rate:.1}"
    );
}

#[test]
#[ignore = "needs a CUDA device: run with -- --ignored where there is one"]
fn a_missing_device_is_refused_clearly() {
    let error = Cuda::open(4096).map(drop).expect_err("device 4096 opened");
    assert!(error.to_string().contains("--device 4096 does not exist"), "{error}");
}
