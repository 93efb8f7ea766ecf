#!/usr/bin/env bash
# Instructions per proxied request in pier's gateway, counted by callgrind:
# reproducible on a loaded machine, unlike requests/s. Starts the bench
# backend and bench_gateway (under valgrind), warms up, zeroes the counters,
# runs wrk for DURATION, dumps, and divides the gateway's instructions by
# the requests wrk completed (kernel time is not counted).
#
# Usage: bench/gateway/callgrind.sh [OUT_PREFIX]   (env: DURATION=10s CONNS=16, GATEWAY_ARGS
# for bench_gateway, e.g. "--access-log /tmp/a.log"; RUST_LOG=pier_gateway::access=info for the
# access log as tracing events, written to OUT_PREFIX.stdout). Every thread's instructions count.
# Needs: valgrind, wrk, python3. Leaves OUT_PREFIX.<pid>.1 for callgrind_annotate.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNS=${CONNS:-16}
OUT=${1:-/tmp/pier-gw-callgrind}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/.target}
(cd "$ROOT" && cargo build --release -q -p pier-gateway --example bench_gateway --example bench_backend)
EX="$CARGO_TARGET_DIR/release/examples"

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BP=$(free_port); GP=$(free_port)

"$EX/bench_backend" --listen "127.0.0.1:$BP" & PIDS+=($!)
valgrind --tool=callgrind --callgrind-out-file="$OUT.%p" \
    "$EX/bench_gateway" --listen "127.0.0.1:$GP" --backend "127.0.0.1:$BP" --threads 1 ${GATEWAY_ARGS:-} \
    >"$OUT.stdout" 2>"$OUT.log" &
VG=$!; PIDS+=($VG)
for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$GP") 2>/dev/null && break; sleep 0.1; done

wrk -t1 -c"$CONNS" -d3s "http://127.0.0.1:$GP/" >/dev/null
callgrind_control -z "$VG" >/dev/null 2>&1
out=$(wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$GP/")
callgrind_control -d "$VG" >/dev/null 2>&1
n=$(awk '/requests in/ {print $1}' <<<"$out")
ir=$(callgrind_annotate "$OUT.$VG.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "requests=$n instructions=$ir per_request=$((ir / n)) profile=$OUT.$VG.1"
