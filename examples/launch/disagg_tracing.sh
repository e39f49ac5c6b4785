#!/usr/bin/env bash
# Disaggregated deployment with tracing: a frontend, a decode worker and a prefill worker, each
# its own process. The decode worker runs the prefill remotely and receives the KV data over the
# traced RPC transport. With ENGINE=cuda, decode runs on GPU 0 and prefill on GPU 1.
#
#   examples/launch/disagg_tracing.sh
#   ENGINE=cuda examples/launch/disagg_tracing.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

export DYN_LOGGING_JSONL=true
export OTEL_EXPORT_ENABLED=true
export OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="${OTEL_EXPORTER_OTLP_TRACES_ENDPOINT:-http://localhost:4317}"
ENGINE="${ENGINE:-cpu}"
FRONTEND_PORT="${FRONTEND_PORT:-8000}"
DECODE_PORT="${DECODE_PORT:-9000}"
PREFILL_PORT="${PREFILL_PORT:-9001}"

features=()
if [ "$ENGINE" = cuda ]; then features=(--features cuda); fi
cargo build --release --example serve "${features[@]}"
serve=target/release/examples/serve

pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

OTEL_SERVICE_NAME=dynamo-worker-prefill "$serve" worker --role prefill --listen "127.0.0.1:$PREFILL_PORT" \
  --engine "$ENGINE" --device 1 &
pids+=($!)
OTEL_SERVICE_NAME=dynamo-worker-decode "$serve" worker --role decode --listen "127.0.0.1:$DECODE_PORT" \
  --prefill "127.0.0.1:$PREFILL_PORT" --engine "$ENGINE" --device 0 &
pids+=($!)
OTEL_SERVICE_NAME=dynamo-frontend "$serve" frontend --listen "0.0.0.0:$FRONTEND_PORT" \
  --worker "127.0.0.1:$DECODE_PORT" &
pids+=($!)

cat <<CURL

Traces and logs go to $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT. Try:

curl -N http://localhost:$FRONTEND_PORT/v1/chat/completions -H 'content-type: application/json' \\
  -H 'x-request-id: disagg-try-1' \\
  -d '{"model":"tokentrace-demo","messages":[{"role":"user","content":"hello"}],"max_tokens":32,"stream":true}'

then search Tempo for { span.x_request_id = "disagg-try-1" }, or { name = "kv_transfer" }. Ctrl-C stops everything.
CURL
wait
