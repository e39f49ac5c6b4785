#!/usr/bin/env bash
# The CUDA engine's check on a machine with a GPU, in one short run (no toolchain needed there).
#
# Build where Rust is:   cargo build --release -p serve --features cuda
#                        cargo test --release -p serve --features cuda --bin serve --no-run
#                        (the second prints the path of the engine's test binary)
# Run where the GPU is:  bash examples/launch/gpu_check.sh target/release/serve TESTS
#
# The model (SmolLM2-135M-Instruct, 98 MB) must be there: in the cache (TOKENTRACE_MODEL_DIR or
# ~/.cache/tokentrace/models), or as pieces in MODEL_PARTS=DIR (`split -b 48M` of the cached
# file, for a machine that takes files in smaller pieces), joined here and checked against the
# model's SHA-256.
#
# 1. With TESTS, the engine's own tests, the device ones included: the kernels compile; on three
#    chat prompts the CUDA engine's logits are within 1e-3 (of their scale) of the CPU engine's
#    and its greedy answer is the same; a CPU prefill decodes on the GPU and the other way round;
#    decode tokens/s at batch 1 against the CPU engine's (at least 10x) and the weights' traffic
#    in GB/s.
# 2. The aggregated and the disaggregated demo on the CUDA engine (every worker on device 0, so
#    one GPU is enough; traces printed by the demo's in-process OTLP receiver), and the aggregated
#    demo on the CPU engine: greedy, so the same text (a near tie could flip one token; the
#    comparison is reported, not asserted).
# 3. A device that does not exist is refused clearly.
#
# ENGINE=toy runs parts 2 and 3's commands on the CPU with the toy model, to check the script
# itself where there is no GPU.
set -euo pipefail

SERVE="${1:-target/release/serve}"
TESTS="${2:-}"
ENGINE="${ENGINE:-cuda}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
[[ -x "$SERVE" ]] || { echo "no serve binary at $SERVE (build it with --features cuda)" >&2; exit 2; }

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

if [[ -n "${MODEL_PARTS:-}" ]]; then
  export TOKENTRACE_MODEL_DIR="${TOKENTRACE_MODEL_DIR:-$OUT/models}"
  mkdir -p "$TOKENTRACE_MODEL_DIR"
  model="$TOKENTRACE_MODEL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
  cat "$MODEL_PARTS"/* >"$model"
  echo "$MODEL_SHA256  $model" | sha256sum --check --quiet || { echo "FAIL  the joined model's SHA-256" >&2; exit 1; }
  echo "ok    model joined from $MODEL_PARTS and checked"
fi

# The engine loads libcuda and libnvrtc at run time. A toolkit outside the loader's path (the
# usual /usr/local/cuda, or NVIDIA's pip wheels) is added to LD_LIBRARY_PATH, so the check
# does not fail on where the toolkit happens to be installed.
if [[ "$ENGINE" == cuda ]] && ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so'; then
  for dir in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64 /usr/local/lib/python3*/dist-packages/nvidia/cu*/lib /opt/*/.venv/lib/python3*/site-packages/nvidia/cu*/lib; do
    if compgen -G "$dir/libnvrtc.so*" >/dev/null; then
      export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      echo "      libnvrtc from $dir"
      break
    fi
  done
fi

run() { # name, args...
  local name="$1"; shift
  local start=$SECONDS
  if "$SERVE" "$@" >"$OUT/$name.log" 2>&1; then
    echo "ok    $name ($((SECONDS - start)) s)"
  else
    echo "FAIL  $name (exit $?), last lines:"; tail -20 "$OUT/$name.log"; exit 1
  fi
}

if [[ -n "$TESTS" ]]; then
  TOKENTRACE_REQUIRE_MODEL=1 "$TESTS" --include-ignored --skip emulated_ --test-threads 1 --nocapture >"$OUT/engine-tests.log" 2>&1 \
    || { echo "FAIL  engine tests:"; tail -40 "$OUT/engine-tests.log"; exit 1; }
  echo "ok    engine tests: $(grep -o '[0-9]* passed.*ignored' "$OUT/engine-tests.log")"
  grep -E '^(engine: |"|decode at batch 1)' "$OUT/engine-tests.log" | sed 's/^/      /'
fi

run "agg-$ENGINE" agg --demo --engine "$ENGINE"
run "disagg-$ENGINE" disagg --demo --engine "$ENGINE"
[[ "$ENGINE" == toy ]] || run agg-cpu agg --demo --engine cpu

# A device that does not exist is refused with a clear message, before the worker binds.
if [[ "$ENGINE" == cuda ]]; then
  if refusal=$(timeout 60 "$SERVE" worker --role agg --listen 127.0.0.1:0 --engine cuda --device 4096 2>&1); then
    echo "FAIL  --device 4096 was accepted"; exit 1
  fi
  grep -q 'does not exist' <<<"$refusal" || { echo "FAIL  --device 4096: $refusal"; exit 1; }
  echo "ok    --device 4096 refused: $(grep -o -- '--device 4096 does not exist.*' <<<"$refusal")"
fi

# Each demo prints one line per request: `  demo-N: 24 tokens in X ms: "text"`.
texts() { grep -E '^  demo-[0-9]+: ' "$1" | sed -E 's/ in [0-9.]+ ms//'; }
for log in "agg-$ENGINE" "disagg-$ENGINE"; do
  spans=$(grep -cE '^request demo-[0-9]+ .*\([0-9]+ spans' "$OUT/$log.log" || true)
  echo "      $log: $spans traced requests"
  [[ "$spans" -ge 3 ]] || { echo "FAIL  $log printed no trace waterfall" >&2; exit 1; }
  grep -E '^(TTFT|ITL|  (TTFT|ITL))' "$OUT/$log.log" | sed "s/^/      $log: /" || true
done
if [[ "$ENGINE" == toy ]]; then
  echo "skip  text comparison: there is no second engine to compare with"
elif diff <(texts "$OUT/agg-$ENGINE.log") <(texts "$OUT/agg-cpu.log") >/dev/null; then
  echo "same  text from the $ENGINE and cpu engines"
else
  echo "note  the $ENGINE and cpu engines generated different text:"
  diff <(texts "$OUT/agg-$ENGINE.log") <(texts "$OUT/agg-cpu.log") || true
fi
cat "$OUT/agg-$ENGINE.log"
echo "logs in $OUT"
