#!/usr/bin/env bash
# What the access log costs the gateway: bench_gateway pinned to core 0 (one thread),
# wrk -t1 -c64 and the backend on core 1, three ways, interleaved for ROUNDS rounds:
#   off     no access log
#   tracing the old path: one `tracing` event per request, fmt subscriber, unbuffered stderr
#           redirected to a file (what `pier gateway` did before the writer)
#   writer  the access log writer thread, combined format, to a file (the new default)
# Prints each round's requests/s and p99, and the writer/tracing ratios.
# Needs: wrk, taskset; builds the examples.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
ROUNDS="${ROUNDS:-3}"; DURATION="${DURATION:-8s}"; CONNS="${CONNS:-64}"
(cd "$ROOT" && cargo build --release -q -p pier-gateway --example bench_gateway --example bench_backend)
EX="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples"
TMP="$(mktemp -d)"; PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND="$(port)"
taskset -c 1 "$EX/bench_backend" --listen "127.0.0.1:$BACKEND" & PIDS+=($!)
start() { # name port
  case "$1" in
    off) taskset -c 0 "$EX/bench_gateway" --listen "127.0.0.1:$2" --backend "127.0.0.1:$BACKEND" --threads 1 2>"$TMP/off.err" & ;;
    tracing) RUST_LOG=pier_gateway::access=info taskset -c 0 "$EX/bench_gateway" --listen "127.0.0.1:$2" --backend "127.0.0.1:$BACKEND" --threads 1 >"$TMP/tracing.log" 2>&1 & ;;
    writer) taskset -c 0 "$EX/bench_gateway" --listen "127.0.0.1:$2" --backend "127.0.0.1:$BACKEND" --threads 1 --access-log "$TMP/writer.log" 2>"$TMP/writer.err" & ;;
  esac
  PIDS+=($!)
}
declare -A PORT
for t in off tracing writer; do PORT[$t]="$(port)"; start "$t" "${PORT[$t]}"; done
sleep 1
for t in off tracing writer; do taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:${PORT[$t]}/" >/dev/null; done
declare -A RPS P99
for r in $(seq 1 "$ROUNDS"); do
  for t in ${ORDER:-off tracing writer}; do
    out="$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:${PORT[$t]}/")"
    rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
    p99="$(awk '$1=="99%" {print $2}' <<<"$out")"
    RPS[$t,$r]="$rps"; P99[$t,$r]="$p99"
    echo "round $r $t: $rps req/s, p99 $p99"
  done
  python3 -c "print(f'round $r writer/tracing {${RPS[writer,$r]}/${RPS[tracing,$r]}:.2f}x, writer/off {${RPS[writer,$r]}/${RPS[off,$r]}:.2f}x, tracing/off {${RPS[tracing,$r]}/${RPS[off,$r]}:.2f}x')"
done
sleep 1.2  # the writer flushes at least every second
echo "load average: $(cut -d" " -f1-3 /proc/loadavg)"
echo "lines: tracing $(grep -c 'pier_gateway::access' "$TMP/tracing.log"), writer $(wc -l <"$TMP/writer.log")"
