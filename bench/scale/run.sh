#!/usr/bin/env bash
# Control plane at fleet scale (issue 16): the release `pier dev --no-agent`, default settings,
# pinned to core 0, against N simulated agents speaking pier's agent protocol
# (crates/pier-testkit/src/sim, run by the scale_sim example on core 1). Deploys every service
# at once, rolls all of them to a new image, silences a tenth of the nodes, and prints every
# figure: placement and health times, rolling update time, failover time, live nodes ever
# marked down, API latency, idle CPU and memory of the server.
#
# Usage: bench/scale/run.sh [NODES] [SERVICES] [TASKS_PER_SERVICE]   (default 500 50 100)
#        env MIN_HEALTHY_TIME=3s TIMEOUT_S=900
set -euo pipefail
NODES=${1:-500}
SERVICES=${2:-50}
TASKS=${3:-100}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/.target}
(cd "$ROOT" && cargo build --release -q -p pier --bin pier && cargo build --release -q -p pier-testkit --example scale_sim)
PIER="$CARGO_TARGET_DIR/release/pier"
SIM="$CARGO_TARGET_DIR/release/examples/scale_sim"

# Each simulated node holds a watch and a heartbeat connection open.
ulimit -n "$(ulimit -Hn)"   # as many as this shell may open
TMP=$(mktemp -d /tmp/pier-scale.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
HTTP=$(free_port)
taskset -c 0 "$PIER" dev --no-agent --data-dir "$TMP/data" --http-port "$HTTP" --raft-port "$(free_port)" \
    --registry-port "$(free_port)" --gateway-port "$(free_port)" --https-port "$(free_port)" \
    --dns-port "$(free_port)" 2>"$TMP/dev.log" &
PIDS+=($!); DEV_PID=$!
for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$HTTP/api/v1/status" >/dev/null && break
    sleep 0.1
done
echo "pier dev (release, pid $DEV_PID) on core 0; $NODES simulated nodes on core 1"
taskset -c 1 "$SIM" --server "http://127.0.0.1:$HTTP" --nodes "$NODES" --services "$SERVICES" \
    --tasks "$TASKS" --min-healthy-time "${MIN_HEALTHY_TIME:-3s}" --server-pid "$DEV_PID" \
    --timeout-s "${TIMEOUT_S:-900}"
