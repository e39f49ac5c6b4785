#!/usr/bin/env bash
# The CUDA engine's check on a machine with a GPU, in one short run (no toolchain needed there).
#
# Build where Rust is:   cargo build --release -p serve --features cuda
#                        cargo test --release -p serve --features cuda --bin serve --no-run  (optional:
#                        it prints the path of the engine's test binary)
# Run where the GPU is:  bash examples/launch/gpu_check.sh target/release/serve [TESTS]
#
# With TESTS, the engine's own tests run first, the device ones included: the kernels compile,
# and the KV rows and logits match the CPU engine's within 1e-4, and 64 decode steps agree.
#
# It runs the aggregated and the disaggregated demo on the CUDA engine (every worker on device 0,
# so one GPU is enough), each exporting its traces to the demo's in-process OTLP receiver and
# printing them, then the aggregated demo on the toy engine on the CPU, and compares the
# generated text: both run the same toy model (the CUDA engine does not run the real model yet),
# so they should agree (a float reduction order can flip a near tie; the comparison is reported,
# not asserted). ENGINE=toy runs the whole script on the CPU, to check the script itself where
# there is no GPU.
set -euo pipefail

SERVE="${1:-target/release/serve}"
TESTS="${2:-}"
ENGINE="${ENGINE:-cuda}"
OUT="${OUT:-$(mktemp -d)}"
[[ -x "$SERVE" ]] || { echo "no serve binary at $SERVE (build it with --features cuda)" >&2; exit 2; }

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

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
  "$TESTS" --include-ignored >"$OUT/engine-tests.log" 2>&1 || { echo "FAIL  engine tests:"; tail -30 "$OUT/engine-tests.log"; exit 1; }
  echo "ok    engine tests: $(grep -o '[0-9]* passed.*ignored' "$OUT/engine-tests.log")"
fi

run "agg-$ENGINE" agg --demo --engine "$ENGINE"
run "disagg-$ENGINE" disagg --demo --engine "$ENGINE"
[[ "$ENGINE" == toy ]] || run agg-toy agg --demo --engine toy

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
done
if [[ "$ENGINE" == toy ]]; then
  echo "skip  text comparison: both sides would be the CPU engine"
elif diff <(texts "$OUT/agg-$ENGINE.log") <(texts "$OUT/agg-toy.log") >/dev/null; then
  echo "same  text from the $ENGINE and toy engines"
else
  echo "note  the $ENGINE and toy engines generated different text:"
  diff <(texts "$OUT/agg-$ENGINE.log") <(texts "$OUT/agg-toy.log") || true
fi
cat "$OUT/agg-$ENGINE.log"
echo "logs in $OUT"
