#!/usr/bin/env bash
# Aggregated deployment with tracing: a frontend and one worker, each its own process, exporting
# traces and logs over OTLP and writing JSON Lines logs. Start the observability stack first
# (examples/deploy: `docker compose up -d`), or point OTEL_EXPORTER_OTLP_TRACES_ENDPOINT elsewhere.
#
#   examples/launch/agg_tracing.sh                 # CPU engine
#   ENGINE=cuda examples/launch/agg_tracing.sh     # CUDA engine on GPU 0 (builds with --features cuda)
set -euo pipefail
cd "$(dirname "$0")/../.."

export DYN_LOGGING_JSONL=true
export OTEL_EXPORT_ENABLED=true
export OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="${OTEL_EXPORTER_OTLP_TRACES_ENDPOINT:-http://localhost:4317}"
ENGINE="${ENGINE:-cpu}"
FRONTEND_PORT="${FRONTEND_PORT:-8000}"
WORKER_PORT="${WORKER_PORT:-9000}"

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

OTEL_SERVICE_NAME=dynamo-worker-vllm "$serve" worker --role agg --listen "127.0.0.1:$WORKER_PORT" \
  --engine "$ENGINE" --device 0 &
pids+=($!)
OTEL_SERVICE_NAME=dynamo-frontend "$serve" frontend --listen "0.0.0.0:$FRONTEND_PORT" \
  --worker "127.0.0.1:$WORKER_PORT" &
pids+=($!)

cat <<CURL

Traces and logs go to $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT. Try:

curl -N http://localhost:$FRONTEND_PORT/v1/chat/completions -H 'content-type: application/json' \\
  -H 'x-request-id: agg-try-1' \\
  -d '{"model":"tokentrace-demo","messages":[{"role":"user","content":"hello"}],"max_tokens":32,"stream":true}'

then search Tempo for { span.x_request_id = "agg-try-1" }. Ctrl-C stops everything.
CURL
wait
