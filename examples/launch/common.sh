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
  cargo build --release -p serve "${features[@]}"
  serve=target/release/serve
fi

# NATS_URL=nats://host:4222: the components call each other over NATS, workers serving subjects
# there (any number of them may share one), instead of over tokentrace's TCP transport between
# the ports below.
TRANSPORT=()
if [ -n "${NATS_URL:-}" ]; then TRANSPORT=(--transport nats --nats-url "$NATS_URL"); fi

# peer ADDRESS SUBJECT: how a caller names its worker on this transport.
peer() {
  if [ -n "${NATS_URL:-}" ]; then echo "$2"; else echo "$1"; fi
}

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
  OTEL_SERVICE_NAME="$name" "$serve" "$@" ${TRANSPORT[@]+"${TRANSPORT[@]}"} &
  pids+=($!)
}

# ready PORT: waits until the component started last listens on 127.0.0.1:PORT, so the next one
# (and the printed curl) finds it; a CUDA worker compiles its kernels first. If it exits
# instead, everything stops with its message above.
ready() {
  local port=$1 pid=${pids[${#pids[@]} - 1]}
  for _ in $(seq 1 600); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "a component exited before listening on port $port (its message is above); stopping" >&2
      exit 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on port $port after 60 s; stopping" >&2
  exit 1
}

# worker_ready PORT METRICS_PORT: waits for the worker started last: its RPC port over TCP; over
# NATS, its metrics port, which it opens once it serves its subject.
worker_ready() {
  ready "$(peer "$1" "$2")"
}

# wait_all: until Ctrl-C, or until one component exits: then everything stops, with its status.
# (bash before 4.3, such as macOS's 3.2, has no `wait -n`: there it waits for all of them.)
wait_all() {
  local status=0
  if ((BASH_VERSINFO[0] > 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] >= 3))); then
    wait -n || status=$?
  else
    wait || status=$?
  fi
  exit "$status"
}

# print_curl REQUEST_ID WORKER_METRICS_PORT...: what to try, and where to look.
print_curl() {
  local id="$1" ports="" port
  shift
  for port in "$@"; do ports="$ports http://localhost:$port/metrics"; done
  set -- "$id"
  cat <<CURL

Traces and logs go to $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; workers are reached over ${NATS_URL:-TCP}. Try:

curl -N http://localhost:$FRONTEND_PORT/v1/chat/completions -H 'content-type: application/json' \\
  -H 'x-request-id: $1' \\
  -d '{"model":"tokentrace-demo","messages":[{"role":"user","content":"hello"}],"max_tokens":32,"stream":true}'

then search Tempo for { span.x_request_id = "$1" }. Metrics, with trace exemplars: the frontend's
(TTFT, ITL, duration) at http://localhost:$FRONTEND_PORT/metrics, the workers' (phase durations,
KV bytes) at$ports; the stack's Prometheus scrapes them, and Grafana's "tokentrace frontend"
dashboard opens a request's trace from an exemplar. Ctrl-C stops everything.
CURL
}
