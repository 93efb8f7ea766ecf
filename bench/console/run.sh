#!/usr/bin/env bash
# Render time of every console page with 200 services and 2,000 tasks in the store.
# Starts its own `pier dev --no-agent` on free ports, registers 20 fake nodes in 3 zones
# (kept alive by heartbeats from this script), deploys 200 services of 10 tasks each (an
# image outside pier's registry, so nothing is pulled: the tasks stay pending, which is all
# a page needs), then requests each page N times and prints p50 / p99 / max in ms.
# Usage: bench/console/run.sh [path/to/pier] [N]
set -euo pipefail
PIER="${1:-${CARGO_TARGET_DIR:-target}/release/pier}"
N="${2:-200}"
dir="$(mktemp -d)"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP=$(port)
"$PIER" dev --no-agent --data-dir "$dir/data" --http-port "$HTTP" --raft-port "$(port)" \
  --registry-port "$(port)" --gateway-port "$(port)" --https-port "$(port)" --dns-port "$(port)" >"$dir/dev.log" 2>&1 &
DEV=$!
HB=""
cleanup() { [ -n "$HB" ] && kill "$HB" 2>/dev/null; kill "$DEV" 2>/dev/null; wait "$DEV" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
API="http://127.0.0.1:$HTTP"
for _ in $(seq 1 100); do curl -fs "$API/api/v1/status" >/dev/null && break; sleep 0.1; done

for i in $(seq 1 20); do
  zone=$(( i % 3 ))
  curl -fs -X PUT "$API/api/v1/nodes/n$i" -H 'content-type: application/json' -d \
    "{\"zone\":\"z$zone\",\"agent_addr\":\"127.0.0.1:1\",\"host_ip\":\"127.0.0.1\",\"cpu_millis\":10000000,\"memory_mb\":100000000}" >/dev/null
done
( while true; do for i in $(seq 1 20); do curl -fs -X PUT "$API/api/v1/nodes/n$i/alive" >/dev/null || true; done; sleep 1; done ) &
HB=$!

for s in $(seq 1 200); do
  file=$(printf 'name = "svc%03d"\nimage = "example.invalid/app:1"\ncount = 10\nport = 8080\n' "$s")
  python3 -c 'import json,sys; print(json.dumps({"file": sys.argv[1]}))' "$file" |
    curl -fs -X POST "$API/api/v1/services" -H 'content-type: application/json' -d @- >/dev/null
done
for _ in $(seq 1 300); do
  tasks=$(curl -fs "$API/api/v1/services" | python3 -c 'import json,sys; print(sum(s["desired"] for s in json.load(sys.stdin)))')
  placed=$(curl -fs "$API/api/v1/nodes" | python3 -c 'import json,sys; print(sum(n["tasks"] for n in json.load(sys.stdin)))')
  [ "$placed" -ge 2000 ] && break
  sleep 0.2
done
echo "services: 200, desired tasks: $tasks, placed tasks: $placed"

dep=$(curl -fs "$API/api/v1/services/svc001" | python3 -c 'import json,sys; d=json.load(sys.stdin).get("deployment") or {}; print(d.get("id", "none"))')
printf '%-28s %8s %8s %8s %8s\n' page p50_ms p99_ms max_ms bytes
# The console's pages, then (for comparison) the API reads the overview is made of.
for page in "" services services/svc100 "deployments/$dep" nodes pipelines registry catalog kv \
            ../api/v1/services ../api/v1/nodes ../api/v1/status ../v1/health/state/critical; do
  url="$API/ui/$page"
  curl -s "$url" -o /dev/null   # warm
  size=$(curl -s "$url" | wc -c)
  for _ in $(seq 1 "$N"); do curl -s -o /dev/null -w '%{time_total}\n' "$url"; done |
    sort -n | awk -v n="$N" -v page="$(echo "/ui/$page" | sed 's|^/ui/\.\./|/|')" -v size="$size" '
      { t[NR] = $1 * 1000 }
      END { printf "%-28s %8.1f %8.1f %8.1f %8d\n", page, t[int(n*0.5)], t[int(n*0.99)], t[n], size }'
done
