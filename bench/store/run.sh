#!/usr/bin/env bash
# Key/value write throughput and p99 latency over HTTP, pier vs etcd, 1 and 3
# members on loopback, fsync on for both, same load generator (wrk + Lua) at
# the same concurrency, in one run. Then leader-failover time for pier.
#
#   bench/store/run.sh [DURATION_S] [CONNECTIONS]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
duration="${1:-10}"
conns="${2:-32}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
command -v etcd >/dev/null || { echo "needs etcd (apt-get install etcd-server)"; exit 1; }

# PIER=/path/to/pier skips the build (e.g. to compare two builds).
if [ -z "${PIER:-}" ]; then
  (cd "$root" && cargo build --release -q -p pier)
fi
pier="${PIER:-$CARGO_TARGET_DIR/release/pier}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for f in "$work"/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

wait_http() { for _ in $(seq 1 200); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "no answer from $1"; return 1; }

# wrk prints "Requests/sec: N" and, with --latency, "99% Xms".
run_wrk() { # url script
  wrk -t2 -c"$conns" -d"${duration}s" --latency -s "$2" "$1" 2>"$work/wrk.err" > "$work/wrk.out"
  if [ -s "$work/wrk.err" ]; then echo "  errors: $(sort "$work/wrk.err" | uniq -c | head -3)"; fi
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")
  p99=$(awk '$1=="99%" {print $2}' "$work/wrk.out")
  p50=$(awk '$1=="50%" {print $2}' "$work/wrk.out")
  echo "$rps $p50 $p99"
}

start_pier_cluster() { # n base_port
  local n=$1 base=$2 join=""
  for i in $(seq 1 "$n"); do join="$join,127.0.0.1:$((base + 10 + i))"; done
  join="${join#,}"
  for i in $(seq 1 "$n"); do
    "$pier" server --insecure --data-dir "$work/pier$n-$i" --node-name "s$i" --bind 127.0.0.1 \
      --raft-port $((base + 10 + i)) --http-port $((base + i)) --bootstrap-expect "$n" \
      $( [ "$n" -gt 1 ] && echo "--join $join" ) >"$work/pier$n-$i.log" 2>&1 &
    pids+=($!)
    echo "$!" > "$work/pier$n-$i.pid"
  done
  for i in $(seq 1 "$n"); do wait_http "http://127.0.0.1:$((base + i))/api/v1/status"; done
  for _ in $(seq 1 200); do
    curl -fsS "http://127.0.0.1:$((base + 1))/api/v1/status" | grep -q '"leader":{' && return 0; sleep 0.05
  done
}

leader_port() { # base n -> http port of the leader
  curl -fsS "http://127.0.0.1:$(( $1 + 1 ))/api/v1/status" | python3 -c 'import sys,json; print(json.load(sys.stdin)["leader"]["http_addr"].split(":")[1])'
}

start_etcd_cluster() { # n base_port
  local n=$1 base=$2 initial=""
  for i in $(seq 1 "$n"); do initial="$initial,e$i=http://127.0.0.1:$((base + 10 + i))"; done
  initial="${initial#,}"
  for i in $(seq 1 "$n"); do
    etcd --name "e$i" --data-dir "$work/etcd$n-$i" \
      --listen-client-urls "http://127.0.0.1:$((base + i))" --advertise-client-urls "http://127.0.0.1:$((base + i))" \
      --listen-peer-urls "http://127.0.0.1:$((base + 10 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
      --initial-cluster "$initial" --initial-cluster-state new --log-level error >"$work/etcd$n-$i.log" 2>&1 &
    pids+=($!)
  done
  for i in $(seq 1 "$n"); do wait_http "http://127.0.0.1:$((base + i))/health"; done
}

if [ -z "${FAILOVER_ONLY:-}" ]; then
echo "pier $( "$pier" --version ) vs $(etcd --version | head -1); wrk -t2 -c$conns -d${duration}s, 64-byte values, fresh key per write"
printf "%-22s %12s %10s %10s\n" "setup" "writes/s" "p50" "p99"
declare -A result
for n in 1 3; do
  start_pier_cluster "$n" $((21000 + n * 100))
  lp=$(leader_port $((21000 + n * 100)) "$n")
  read -r rps p50 p99 < <(run_wrk "http://127.0.0.1:$lp" "$here/pier_put.lua")
  printf "%-22s %12s %10s %10s\n" "pier $n-node (leader)" "$rps" "$p50" "$p99"; result[pier$n]=$rps
  start_etcd_cluster "$n" $((22000 + n * 100))
  read -r rps p50 p99 < <(run_wrk "http://127.0.0.1:$((22000 + n * 100 + 1))" "$here/etcd_put.lua")
  printf "%-22s %12s %10s %10s\n" "etcd $n-node" "$rps" "$p50" "$p99"; result[etcd$n]=$rps
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; pids=()
  sleep 0.5
done
for n in 1 3; do
  python3 -c "print('ratio pier/etcd $n-node writes/s: %.2f' % (${result[pier$n]}/${result[etcd$n]}))"
done

echo
fi
sleep 1
echo "leader failover: kill -9 of the leader -> next acknowledged write (10 tries)"
start_pier_cluster 3 23000
python3 "$here/failover.py" "$pier" "$work" 23000 10
