#!/usr/bin/env bash
# Gateway benchmark: requests/s and p50/p99 latency of pier's gateway against
# nginx and HAProxy as equivalent keep-alive reverse proxies, plus the backend
# called directly. The proxy under test is pinned to core 0; wrk and the
# backend share core 1. Each target gets a short warm-up, then ROUNDS rounds
# of `wrk -t1 -c64 -d${DURATION} --latency` are interleaved across targets
# and the median round (by requests/s) is reported.
#
# Usage: bench/gateway/run.sh            (env: ROUNDS=3 DURATION=10s CONNS=64)
# Needs: wrk, nginx (nginx-light), haproxy, taskset; builds the examples.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/.target}

for tool in wrk nginx haproxy taskset python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk nginx-light haproxy)" >&2; exit 1; }
done

(cd "$ROOT" && cargo build --release -q -p pier-gateway --example bench_gateway --example bench_backend --example route_add_latency)
EX="$CARGO_TARGET_DIR/release/examples"

TMP=$(mktemp -d /tmp/pier-gw-bench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listens on $1" >&2; exit 1
}

BACKEND_PORT=$(free_port); PIER_PORT=$(free_port); NGINX_PORT=$(free_port); HAPROXY_PORT=$(free_port)

taskset -c 1 "$EX/bench_backend" --listen "127.0.0.1:$BACKEND_PORT" &
PIDS+=($!); BACKEND_PID=$!

cat >"$TMP/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx-body;
    proxy_temp_path $TMP/nginx-proxy;
    fastcgi_temp_path $TMP/nginx-fastcgi;
    uwsgi_temp_path $TMP/nginx-uwsgi;
    scgi_temp_path $TMP/nginx-scgi;
    keepalive_requests 1000000;
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGINX
taskset -c 0 nginx -c "$TMP/nginx.conf" -p "$TMP" &
PIDS+=($!); NGINX_PID=$!

cat >"$TMP/haproxy.cfg" <<HAPROXY
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend be
backend be
    server s1 127.0.0.1:$BACKEND_PORT
HAPROXY
taskset -c 0 haproxy -f "$TMP/haproxy.cfg" -db &
PIDS+=($!); HAPROXY_PID=$!

taskset -c 0 "$EX/bench_gateway" --listen "127.0.0.1:$PIER_PORT" --backend "127.0.0.1:$BACKEND_PORT" --threads 1 2>"$TMP/pier.log" &
PIDS+=($!); PIER_PID=$!

for p in $BACKEND_PORT $PIER_PORT $NGINX_PORT $HAPROXY_PORT; do wait_port "$p"; done

declare -A PORT=([direct]=$BACKEND_PORT [pier]=$PIER_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT)
# The process whose CPU time counts for each target (nginx: with its worker).
declare -A PROC=([direct]=$BACKEND_PID [pier]=$PIER_PID [nginx]=$NGINX_PID [haproxy]=$HAPROXY_PID)

# Nanoseconds on CPU of a process, its threads and its children, from
# schedstat. When wrk and the backend saturate their core, every proxy
# reaches about the same requests/s; CPU per request still tells which proxy
# does the same work for less.
cpu_ns() {
    local total=0 p f ns rest
    for p in "$1" $(pgrep -P "$1" || true); do
        for f in /proc/"$p"/task/*/schedstat; do
            read -r ns rest <"$f" 2>/dev/null || continue
            total=$((total + ns))
        done
    done
    echo "$total"
}
TARGETS=(direct pier nginx haproxy)

# wrk prints latency with a unit; normalise to ms.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else { printf "%s", v } }'
}

run_wrk() { # target duration -> "rps p50_ms p99_ms non2xx_or_errors cpu_us_per_request core_busy_%"
    local out before after t0 t1
    before=$(cpu_ns "${PROC[$1]}"); t0=$(date +%s%N)
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$2" --latency "http://127.0.0.1:${PORT[$1]}/")
    after=$(cpu_ns "${PROC[$1]}"); t1=$(date +%s%N)
    local rps p50 p99 bad n cpu busy
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    bad=$(awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$out")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    cpu=$(awk -v c=$((after - before)) -v n="$n" 'BEGIN { printf "%.2f", c / 1000 / n }')
    busy=$(awk -v c=$((after - before)) -v w=$((t1 - t0)) 'BEGIN { printf "%.0f", 100 * c / w }')
    echo "$rps $p50 $p99 $bad $cpu $busy"
}

echo "# warm-up" >&2
for t in "${TARGETS[@]}"; do run_wrk "$t" 2s >/dev/null; done

declare -A RESULTS
for r in $(seq 1 "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
        res=$(run_wrk "$t" "$DURATION")
        echo "round $r $t: $res" >&2
        RESULTS[$t]+="$res"$'\n'
    done
done

median() { # lines "rps p50 p99 bad cpu busy" -> the line with the median rps
    sort -n -k1,1 <<<"$1" | sed '/^$/d' | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'
}

echo
echo "wrk -t1 -c$CONNS -d$DURATION --latency, proxy on core 0, wrk+backend on core 1, median of $ROUNDS rounds"
printf '%-8s %12s %10s %10s %8s %12s %8s\n' target req/s p50_ms p99_ms errors cpu_us/req busy_%
declare -A RPS P50 P99
for t in "${TARGETS[@]}"; do
    read -r rps p50 p99 bad cpu busy <<<"$(median "${RESULTS[$t]}")"
    RPS[$t]=$rps; P50[$t]=$p50; P99[$t]=$p99
    printf '%-8s %12s %10s %10s %8s %12s %8s\n' "$t" "$rps" "$p50" "$p99" "$bad" "$cpu" "$busy"
done
echo "(cpu_us/req and busy_%: the target process's own CPU; for direct that is the backend on the shared core)"
echo
for other in nginx haproxy; do
    awk -v a="${RPS[pier]}" -v b="${RPS[$other]}" -v pa="${P99[pier]}" -v pb="${P99[$other]}" -v o="$other" \
        'BEGIN { printf "pier/%s: rps %.2fx, p99 %.2fx (lower is better)\n", o, a / b, pa / pb }'
done
# The machine may be shared: a ratio within one round (targets run back to
# back) is steadier than a ratio of medians taken from different rounds.
for other in nginx haproxy; do
    ratios=$(paste -d' ' <(sed '/^$/d' <<<"${RESULTS[pier]}") <(sed '/^$/d' <<<"${RESULTS[$other]}") |
        awk '{ printf "%.2f\n", $1 / $(NF / 2 + 1) }')
    med=$(sort -n <<<"$ratios" | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}')
    echo "pier/$other rps per round: $(tr '\n' ' ' <<<"$ratios")(median ${med}x)"
    cpus=$(paste -d' ' <(sed '/^$/d' <<<"${RESULTS[pier]}") <(sed '/^$/d' <<<"${RESULTS[$other]}") |
        awk '{ printf "%.2f\n", $5 / $(NF - 1) }')
    med=$(sort -n <<<"$cpus" | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}')
    echo "pier/$other CPU per request per round: $(tr '\n' ' ' <<<"$cpus")(median ${med}x, lower is better)"
done
for t in pier nginx haproxy; do
    awk -v p="${P50[$t]}" -v d="${P50[direct]}" -v t="$t" 'BEGIN { printf "%s adds %.3f ms at p50 over direct\n", t, p - d }'
done

echo
"$EX/route_add_latency" --tries 100
