#!/usr/bin/env python3
"""Soak the aggregated demo deployment and report each process's memory after every round.

Starts an OTLP/HTTP sink (it acknowledges and counts every export), `serve agg` exporting every
span to it, then drives rounds of chat completions at a fixed concurrency through the frontend,
reading the frontend's and the worker's resident memory and thread count between rounds. Memory
that keeps climbing after the first rounds (the warm-up) is a leak or an unbounded cache.

    cargo build --release -p serve
    python3 examples/launch/soak.py --rounds 12 --requests 5000 --concurrency 64

Only loopback addresses are used; every loop is bounded by --rounds and --requests.
"""

import argparse
import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time


class Sink(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), SinkHandler)
        self.exports = 0
        self.bytes = 0
        self.lock = threading.Lock()


class SinkHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with self.server.lock:
            self.server.exports += 1
            self.server.bytes += len(body)
        # An empty protobuf message is a full success (no partial_success).
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def children_named(parent, role):
    """The pid of the child of `parent` whose command line names `role` (frontend or worker)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == parent and len(argv) > 1 and argv[1] == role.encode():
            return int(pid)
    return None


def memory(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return int(fields["VmRSS"][0]) // 1024, int(fields["Threads"][0])


def drive(port, requests, concurrency, round_no, failures):
    body = json.dumps({
        "model": "tokentrace-demo",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 4,
    })
    counter = iter(range(requests))
    lock = threading.Lock()

    def worker():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                break
            headers = {"content-type": "application/json", "x-request-id": f"soak-{round_no}-{n}"}
            try:
                connection.request("POST", "/v1/chat/completions", body, headers)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(response.status)
            except (OSError, http.client.HTTPException) as error:
                failures.append(str(error))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--port", type=int, default=18000)
    parser.add_argument("--serve", default="target/release/serve")
    args = parser.parse_args()

    sink = Sink()
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    env = dict(os.environ)
    env.update({
        "OTEL_EXPORT_ENABLED": "true",
        "OTEL_EXPORT_LOGS_ENABLED": "false",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}",
    })
    deployment = subprocess.Popen(
        [args.serve, "agg", "--engine", "toy", "--listen", f"127.0.0.1:{args.port}", "--step-ms", "0"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        deadline = time.time() + 60
        frontend = worker = None
        while time.time() < deadline and not (frontend and worker):
            time.sleep(0.2)
            frontend = children_named(deployment.pid, "frontend")
            worker = children_named(deployment.pid, "worker")
        if not (frontend and worker):
            sys.exit("the deployment did not start")
        for _ in range(100):
            try:
                connection = http.client.HTTPConnection("127.0.0.1", args.port, timeout=5)
                connection.request("GET", "/health")
                connection.getresponse().read()
                break
            except OSError:
                time.sleep(0.2)
        print("round  requests  seconds  failures  frontend MiB (threads)  worker MiB (threads)  exports")
        failures = []
        for round_no in range(1, args.rounds + 1):
            started = time.time()
            drive(args.port, args.requests, args.concurrency, round_no, failures)
            elapsed = time.time() - started
            time.sleep(1.0)  # the batch processors' scheduled export
            (f_mib, f_threads), (w_mib, w_threads) = memory(frontend), memory(worker)
            print(f"{round_no:5}  {args.requests:8}  {elapsed:7.1f}  {len(failures):8}  "
                  f"{f_mib:12} ({f_threads:3})  {w_mib:12} ({w_threads:3})  {sink.exports:7}", flush=True)
        sys.exit(1 if failures else 0)
    finally:
        deployment.stdin.close()
        try:
            deployment.wait(timeout=30)
        except subprocess.TimeoutExpired:
            deployment.kill()


if __name__ == "__main__":
    main()
