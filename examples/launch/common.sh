# Sourced by agg_tracing.sh and disagg_tracing.sh: the tracing environment, the build (or SERVE), and
# stopping every component on exit. Each component is started with `start NAME ARGS...`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

export DYN_LOGGING_JSONL=true
export OTEL_EXPORT_ENABLED=true
export OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="${OTEL_EXPORTER_OTLP_TRACES_ENDPOINT:-http://localhost:4317}"
ENGINE="${ENGINE:-cpu}"
FRONTEND_PORT="${FRONTEND_PORT:-8000}"

# SERVE=path runs a binary built elsewhere (a GPU machine without a Rust toolchain); otherwise
# the example is built here, with the CUDA engine when ENGINE=cuda.
if [ -n "${SERVE:-}" ]; then
  serve="$SERVE"
else
  features=()
  if [ "$ENGINE" = cuda ]; then features=(--features cuda); fi
  cargo build --release --example serve "${features[@]}"
  serve=target/release/examples/serve
fi

pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# start SERVICE_NAME ARGS...: runs `serve ARGS...` in the background as OTEL_SERVICE_NAME.
start() {
  local name=$1
  shift
  OTEL_SERVICE_NAME="$name" "$serve" "$@" &
  pids+=($!)
}

# print_curl REQUEST_ID: what to try, and where to look.
print_curl() {
  cat <<CURL

Traces and logs go to $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT. Try:

curl -N http://localhost:$FRONTEND_PORT/v1/chat/completions -H 'content-type: application/json' \\
  -H 'x-request-id: $1' \\
  -d '{"model":"tokentrace-demo","messages":[{"role":"user","content":"hello"}],"max_tokens":32,"stream":true}'

then search Tempo for { span.x_request_id = "$1" }. Ctrl-C stops everything.
CURL
}
