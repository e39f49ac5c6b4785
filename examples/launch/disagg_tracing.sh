#!/usr/bin/env bash
# Disaggregated deployment with tracing: a frontend, a decode worker and a prefill worker, each
# its own process. The decode worker runs the prefill remotely and receives the KV data over the
# traced RPC transport. With ENGINE=cuda, decode runs on GPU 0 and prefill on GPU 1
# (DECODE_DEVICE and PREFILL_DEVICE choose others: PREFILL_DEVICE=0 on a machine with one GPU).
#
#   examples/launch/disagg_tracing.sh
#   ENGINE=cuda examples/launch/disagg_tracing.sh
#   ENGINE=cuda PREFILL_DEVICE=0 examples/launch/disagg_tracing.sh
#   NATS_URL=nats://127.0.0.1:4222 examples/launch/disagg_tracing.sh   # over NATS (nats-server running)
source "$(dirname "$0")/common.sh"
DECODE_PORT="${DECODE_PORT:-9000}"
PREFILL_PORT="${PREFILL_PORT:-9001}"
DECODE_METRICS_PORT="${DECODE_METRICS_PORT:-9100}"
PREFILL_METRICS_PORT="${PREFILL_METRICS_PORT:-9101}"
DECODE_DEVICE="${DECODE_DEVICE:-0}"
PREFILL_DEVICE="${PREFILL_DEVICE:-1}"

start dynamo-worker-prefill worker --role prefill --listen "127.0.0.1:$PREFILL_PORT" --engine "$ENGINE" --device "$PREFILL_DEVICE" \
  --metrics-listen "0.0.0.0:$PREFILL_METRICS_PORT"
worker_ready "$PREFILL_PORT" "$PREFILL_METRICS_PORT"
start dynamo-worker-decode worker --role decode --listen "127.0.0.1:$DECODE_PORT" --metrics-listen "0.0.0.0:$DECODE_METRICS_PORT" \
  --prefill "$(peer "127.0.0.1:$PREFILL_PORT" tokentrace.prefill)" --engine "$ENGINE" --device "$DECODE_DEVICE"
worker_ready "$DECODE_PORT" "$DECODE_METRICS_PORT"
start dynamo-frontend frontend --listen "0.0.0.0:$FRONTEND_PORT" --worker "$(peer "127.0.0.1:$DECODE_PORT" tokentrace.decode)" --engine "$ENGINE"
ready "$FRONTEND_PORT"
print_curl disagg-try-1 "$DECODE_METRICS_PORT" "$PREFILL_METRICS_PORT"
wait_all
