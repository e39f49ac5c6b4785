#!/usr/bin/env bash
# Aggregated deployment with tracing: a frontend and one worker, each its own process, exporting
# traces and logs over OTLP and writing JSON Lines logs. Start the observability stack first
# (examples/deploy: `docker compose up -d`), or point OTEL_EXPORTER_OTLP_TRACES_ENDPOINT elsewhere.
#
#   examples/launch/agg_tracing.sh                 # CPU engine
#   ENGINE=cuda examples/launch/agg_tracing.sh     # CUDA engine on GPU 0 (builds with --features cuda)
#   ENGINE=cuda DEVICE=1 examples/launch/agg_tracing.sh
#   NATS_URL=nats://127.0.0.1:4222 examples/launch/agg_tracing.sh   # over NATS (nats-server running)
source "$(dirname "$0")/common.sh"
WORKER_PORT="${WORKER_PORT:-9000}"
WORKER_METRICS_PORT="${WORKER_METRICS_PORT:-9100}"
DEVICE="${DEVICE:-0}"

start dynamo-worker-vllm worker --role agg --listen "127.0.0.1:$WORKER_PORT" --engine "$ENGINE" --device "$DEVICE" \
  --metrics-listen "0.0.0.0:$WORKER_METRICS_PORT"
worker_ready "$WORKER_PORT" "$WORKER_METRICS_PORT"
start dynamo-frontend frontend --listen "0.0.0.0:$FRONTEND_PORT" --worker "$(peer "127.0.0.1:$WORKER_PORT" tokentrace.backend)" --engine "$ENGINE"
ready "$FRONTEND_PORT"
print_curl agg-try-1 "$WORKER_METRICS_PORT"
wait_all
