#!/usr/bin/env bash
# Orchestrator benchmarks on the real Docker engine (see README.md beside this file):
#   1. `pier deploy` of 3 replicas, image already on the engine, 1 s health interval,
#      min_healthy_time 1 s: seconds until the command returns success (goal < 3 s).
#   2. A version whose health check fails: from its first failed health check to all
#      traffic on the old version with no bad task left (goal < 10 s).
#   3. `kill -9` of an agent: until its tasks run healthy on the other node (goal < 5 s).
# Usage: bench/orchestrator/run.sh [ROUNDS]   (needs: docker, jq, curl, a built pier)
set -euo pipefail
ROUNDS=${1:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PIER=${PIER:-${CARGO_TARGET_DIR:-$ROOT/target}/release/pier}
[ -x "$PIER" ] || { echo "build first: cargo build --release -p pier (or set PIER)" >&2; exit 1; }
WORK=$(mktemp -d)
RUN=bench$$
HTTP=19500; RAFT=19300; REG=19501
ADDR=http://127.0.0.1:$HTTP
PIDS=()
cleanup() {
  for p in "${PIDS[@]}" $(cat "$WORK/agent-pids" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  ids=$(docker ps -aq --filter label=pier.test.run=$RUN); [ -n "$ids" ] && docker rm -f $ids >/dev/null
  docker rmi -f 127.0.0.1:$REG/bench:v1 127.0.0.1:$REG/bench:bad >/dev/null 2>&1 || true
  if [ -n "${KEEP:-}" ]; then echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
now() { date +%s.%N; }
ms() { date +%s%3N; }

"$PIER" dev --data-dir "$WORK/data" --http-port $HTTP --raft-port $RAFT --registry-port $REG --no-agent \
  --node-down-after 2s >"$WORK/dev.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do curl -sf $ADDR/api/v1/status >/dev/null && break; sleep 0.1; done
# Called in $(...): the PID goes to a file, since a subshell cannot extend PIDS.
agent() { "$PIER" agent --server $ADDR --name "$1" --zone "$2" --registry-port 0 --container-label pier.test=1 \
  --container-label pier.test.run=$RUN >>"$WORK/agent-$1.log" 2>&1 & echo $! >>"$WORK/agent-pids"; echo $!; }
A_PID=$(agent node-a a); B_PID=$(agent node-b b)

build() { # tag variant
  local ctx=$WORK/ctx-$1; mkdir -p $ctx/www; cp /bin/busybox $ctx/; echo "$1" >$ctx/www/index.html
  [ "$2" = ok ] && echo ok >$ctx/www/healthz
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\nCMD ["/bin/busybox","httpd","-f","-p","8080","-h","/www"]\n' >$ctx/Dockerfile
  DOCKER_BUILDKIT=0 docker build -q -t 127.0.0.1:$REG/bench:$1 $ctx >/dev/null 2>&1
  docker push -q 127.0.0.1:$REG/bench:$1 >/dev/null
}
build v1 ok; build bad bad   # both stay on the engine: "image already local"
svc() { cat <<TOML
name = "$1"
image = "127.0.0.1:$REG/bench:$2"
count = ${3:-3}
port = 8080

[health]
http = "/healthz"
interval = "1s"

[deploy]
min_healthy_time = "1s"
drain_delay = "500ms"
${4:-}
TOML
}
passing() { curl -s "$ADDR/v1/health/service/$1?passing" | jq -r "[.[] | select(.Service.Tags | index(\"$2\"))] | length"; }

echo "== 1. deploy 3 replicas (image local, 1 s interval, min_healthy_time 1 s)"
for i in $(seq "$ROUNDS"); do
  svc d$i v1 >"$WORK/d$i.toml"
  t0=$(now); "$PIER" --addr $ADDR deploy "$WORK/d$i.toml" >"$WORK/d$i.out"; t1=$(now)
  printf '  round %d: %.2f s\n' "$i" "$(echo "$t1 - $t0" | bc)"
  "$PIER" --addr $ADDR service rm d$i >/dev/null
done

bad_version() { # label, extra [deploy] line
echo "== 2. bad version ($1): first failed health check -> all traffic on the old version"
for i in $(seq "$ROUNDS"); do
  svc r$i v1 3 "$2" >"$WORK/r$i.toml"; "$PIER" --addr $ADDR deploy "$WORK/r$i.toml" >/dev/null
  svc r$i bad 3 "$2" >"$WORK/r$i-bad.toml"
  "$PIER" --addr $ADDR deploy "$WORK/r$i-bad.toml" >"$WORK/r$i-bad.out" 2>&1 & deploy_pid=$!
  min_old=3
  while kill -0 $deploy_pid 2>/dev/null; do
    n=$(passing r$i rev-1); [ "$n" -lt "$min_old" ] && min_old=$n
    [ "$(passing r$i rev-2)" != 0 ] && { echo "  a bad instance was passing: traffic reached it" >&2; }
    sleep 0.05
  done
  wait $deploy_pid && { echo "  the bad deploy exited 0" >&2; exit 1; }
  # All traffic on the old version: only revision 1 passing, at full count, no bad task left.
  while :; do
    bad_left=$(curl -s $ADDR/api/v1/services/r$i/tasks | jq '[.[] | select(.task.revision==2 and .display_state!="stopped" and .display_state!="failed" and .display_state!="exited")] | length')
    [ "$(passing r$i rev-1)" = 3 ] && [ "$(passing r$i rev-2)" = 0 ] && [ "$bad_left" = 0 ] && break
    sleep 0.05
  done
  t_end=$(ms)
  # The first bad task's first regular health check runs when it starts (and fails).
  t_first=$(curl -s $ADDR/api/v1/services/r$i/tasks | jq '[.[] | select(.task.revision==2) | .status.started_at_ms] | min')
  dep=$(curl -s $ADDR/api/v1/services/r$i | jq -r '.deployment.rollback_of // empty')
  t_failed=$(curl -s $ADDR/api/v1/deployments/$dep | jq '.events[] | select(.message|test("rolled back")) | .at_ms' | head -1)
  printf '  round %d: breaker tripped after %.2f s, rollback complete (only old version passing, no bad task left) after %.2f s; fewest old instances passing meanwhile: %d of 3\n' \
    "$i" "$(echo "($t_failed - $t_first)/1000" | bc -l)" "$(echo "($t_end - $t_first)/1000" | bc -l)" "$min_old"
  "$PIER" --addr $ADDR service rm r$i >/dev/null
  sleep 2
done
}
bad_version "default max_surge 25%" ""
bad_version "max_surge 100%" 'max_surge = "100%"'

echo "== 3. kill -9 of an agent -> its tasks healthy on the other node"
for i in $(seq "$ROUNDS"); do
  svc k$i v1 4 >"$WORK/k$i.toml"
  "$PIER" --addr $ADDR deploy "$WORK/k$i.toml" >/dev/null
  kill -9 "$A_PID"; t0=$(now)
  # Healthy elsewhere: four passing instances, all on node-b (node-a's stay in the catalog
  # until the node monitor marks them critical, so they are excluded).
  while :; do
    n=$(curl -s "$ADDR/v1/health/service/k$i?passing" | jq '[.[] | select(.Node.Node=="node-b")] | length')
    total=$(curl -s "$ADDR/v1/health/service/k$i?passing" | jq 'length')
    [ "$n" = 4 ] && [ "$total" = 4 ] && break
    sleep 0.05
  done
  t1=$(now)
  printf '  round %d: %.2f s\n' "$i" "$(echo "$t1 - $t0" | bc)"
  A_PID=$(agent node-a a)   # it comes back, stops its stale containers
  "$PIER" --addr $ADDR service rm k$i >/dev/null
  sleep 3
done
