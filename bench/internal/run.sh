#!/usr/bin/env bash
# `*.internal` benchmark (issue 15's goal): what the node gateway adds to a call from one
# container to another service, against calling the instance's address directly, in one run.
#
# The release `pier dev` (default settings: node gateway and DNS on its own pier network's
# bridge address) runs two services from one FROM-scratch image: `api`, pier-gateway's small
# keep-alive HTTP backend (bench_backend), and `web`, a busybox that sleeps. wrk runs inside
# web's network namespace (nsenter into the container's netns: the same route, addresses and
# DNS view as a process of that container) and calls, interleaved round by round,
#   direct    http://<api container address>:8080/       (what api.service.consul resolves to)
#   internal  http://api.internal/  (the node gateway on the bridge address, Host: api.internal)
# For each connection count in CONNS it prints every round's calls/s and p50/p99, the medians,
# and the p50 the node gateway adds (goal: < 0.2 ms).
#
# Usage: bench/internal/run.sh      (env: ROUNDS=5 DURATION=10s CONNS="1 16")
# Needs: docker, wrk, nsenter (util-linux), ldd, curl, jq, python3; builds the release `pier`
# and the bench_backend example.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-1 16}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/.target}

for tool in docker wrk nsenter ldd curl jq python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk util-linux curl jq)" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "missing /bin/busybox (apt-get install busybox-static)" >&2; exit 1; }

(cd "$ROOT" && cargo build --release -q -p pier --bin pier && cargo build --release -q -p pier-gateway --example bench_backend)
PIER="$CARGO_TARGET_DIR/release/pier"
BACKEND="$CARGO_TARGET_DIR/release/examples/bench_backend"

TMP=$(mktemp -d /tmp/pier-internal-bench.XXXXXX)
LABEL="pier.bench.run=$$"
NETWORK="pier-bench-$$"
DEV_PID=""
cleanup() {
    set +e
    [ -n "$DEV_PID" ] && { kill "$DEV_PID" 2>/dev/null; wait "$DEV_PID" 2>/dev/null; }
    docker ps -aq --filter "label=$LABEL" | xargs -r docker rm -f >/dev/null 2>&1
    docker network ls -q --filter "label=$LABEL" | xargs -r docker network rm >/dev/null 2>&1
    docker images --format '{{.Repository}}:{{.Tag}}' | grep "^127.0.0.1:$REG_PORT/bench-" | xargs -r docker rmi -f >/dev/null 2>&1
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
HTTP_PORT=$(free_port); REG_PORT=$(free_port)
export PIER_ADDR="http://127.0.0.1:$HTTP_PORT"

"$PIER" dev --data-dir "$TMP/dev" --http-port "$HTTP_PORT" --raft-port "$(free_port)" \
    --registry-port "$REG_PORT" --gateway-port "$(free_port)" --https-port "$(free_port)" \
    --dns-port "$(free_port)" --network "$NETWORK" --container-label "$LABEL" \
    --secrets-dir "$TMP/secrets" 2>"$TMP/dev.log" &
DEV_PID=$!
for _ in $(seq 1 300); do curl -fs "$PIER_ADDR/api/v1/status" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "$PIER_ADDR/api/v1/status" >/dev/null || { tail -20 "$TMP/dev.log" >&2; exit 1; }

# One image: bench_backend with the shared libraries it links (copied from this host) and a
# static busybox for the caller.
ctx="$TMP/image"
mkdir -p "$ctx/bin"
cp "$BACKEND" "$ctx/bin/bench_backend"
cp /bin/busybox "$ctx/bin/busybox"
for lib in $(ldd "$BACKEND" | grep -o '/[^ ]*'); do
    mkdir -p "$ctx$(dirname "$lib")"
    cp -L "$lib" "$ctx$lib"
done
printf 'FROM scratch\nCOPY . /\n' >"$ctx/Dockerfile"
IMAGE="127.0.0.1:$REG_PORT/bench-internal:v1"
docker build -q -t "$IMAGE" "$ctx" >/dev/null
docker push -q "$IMAGE" >/dev/null

cat >"$TMP/api.toml" <<TOML
name = "api"
image = "$IMAGE"
command = ["/bin/bench_backend", "--listen", "0.0.0.0:8080"]
port = 8080
cpu = 1000                # a whole core: the default 100 millicores would measure CFS throttling
TOML
cat >"$TMP/web.toml" <<TOML
name = "web"
image = "$IMAGE"
command = ["/bin/busybox", "sleep", "1000000"]
needs = ["api"]
TOML
"$PIER" deploy "$TMP/api.toml" >/dev/null
"$PIER" deploy "$TMP/web.toml" >/dev/null

container() { docker ps -q --filter "label=$LABEL" --filter "label=pier.service=$1" | head -1; }
WEB_PID=$(docker inspect -f '{{.State.Pid}}' "$(container web)")
API_IP=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$NETWORK\").IPAddress}}" "$(container api)")
GATEWAY_IP=$(docker network inspect -f '{{(index .IPAM.Config 0).Gateway}}' "$NETWORK")
in_web() { nsenter -t "$WEB_PID" -n "$@"; }

# What the container's resolver says, and that both paths answer, before measuring.
resolved=$(docker exec "$(container web)" /bin/busybox nslookup api.internal 2>/dev/null | awk '/^Address/ {a=$NF} END {print a}')
[ "$resolved" = "$GATEWAY_IP" ] || { echo "api.internal resolves to '$resolved' inside web, not the node gateway $GATEWAY_IP" >&2; exit 1; }
in_web curl -fs -o /dev/null "http://$API_IP:8080/" || { echo "api at $API_IP:8080 does not answer from web" >&2; exit 1; }
in_web curl -fs -o /dev/null -H "Host: api.internal" "http://$GATEWAY_IP/" || { echo "http://api.internal/ does not answer from web" >&2; exit 1; }
echo "web (pid $WEB_PID) calls api directly at $API_IP:8080 and through the node gateway at $GATEWAY_IP:80 (api.internal)"

# wrk's latency lines are like "50%  123.45us": in ms.
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }
run_wrk() { # run_wrk CONNS URL [HOST] -> "rps p50_ms p99_ms"
    local out
    if [ -n "${3:-}" ]; then
        out=$(in_web wrk -t1 -c"$1" -d"$DURATION" --latency -H "Host: $3" "$2")
    else
        out=$(in_web wrk -t1 -c"$1" -d"$DURATION" --latency "$2")
    fi
    if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "wrk saw errors: $out" >&2; exit 1; fi
    echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")") $(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
}
median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

for conns in $CONNS; do
    echo "## $conns connection(s), $ROUNDS rounds of $DURATION each, interleaved"
    printf '%-6s %-9s %12s %10s %10s\n' round path calls/s p50_ms p99_ms
    in_web wrk -t1 -c"$conns" -d2s "http://$API_IP:8080/" >/dev/null
    in_web wrk -t1 -c"$conns" -d2s -H "Host: api.internal" "http://$GATEWAY_IP/" >/dev/null
    : >"$TMP/direct"; : >"$TMP/internal"
    for round in $(seq 1 "$ROUNDS"); do
        read -r rps p50 p99 <<<"$(run_wrk "$conns" "http://$API_IP:8080/")"
        printf '%-6s %-9s %12s %10s %10s\n' "$round" direct "$rps" "$p50" "$p99"
        echo "$rps $p50 $p99" >>"$TMP/direct"
        read -r rps p50 p99 <<<"$(run_wrk "$conns" "http://$GATEWAY_IP/" api.internal)"
        printf '%-6s %-9s %12s %10s %10s\n' "$round" internal "$rps" "$p50" "$p99"
        echo "$rps $p50 $p99" >>"$TMP/internal"
    done
    for path in direct internal; do
        printf '%-6s %-9s %12s %10s %10s\n' median "$path" \
            "$(awk '{print $1}' "$TMP/$path" | median)" "$(awk '{print $2}' "$TMP/$path" | median)" \
            "$(awk '{print $3}' "$TMP/$path" | median)"
    done
    added=$(paste "$TMP/direct" "$TMP/internal" | awk '{print $5 - $2}' | median)
    echo "node gateway adds at p50 (median of the rounds' differences): ${added} ms (goal < 0.2 ms)"
done
