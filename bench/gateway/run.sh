#!/usr/bin/env bash
# Gateway benchmark (issue 17's goal): the shipped, release `pier gateway`, default settings
# (access log on, to stderr redirected to a file), following a real `pier dev`, against nginx
# and HAProxy configured as equivalent keep-alive reverse proxies, each with its access log
# written to a file, in one run:
#   http   plain HTTP/1.1, keep-alive            (wrk)
#   https  TLS 1.3, HTTP/1.1, keep-alive         (wrk)
#   h2     TLS 1.3, HTTP/2 by ALPN               (h2load; p50/p99 from its per-request log)
#   swap   pier only: a new connection and TLS handshake per request while `pier cert add`
#          replaces the certificate every second; failed requests and latency, against the
#          same load without swaps
# The proxy under test is pinned to core 0; the client, the backend and the `pier dev` it
# follows share core 1. A warm-up per target, then ROUNDS rounds interleaved across targets;
# each round's pier/nginx and pier/HAProxy ratio is printed, and the medians.
#
# Usage: bench/gateway/run.sh            (env: ROUNDS=5 DURATION=10s CONNS=64 MODES="http https h2 swap")
# Needs: wrk, h2load (nghttp2-client), nginx (nginx-light), haproxy, openssl, taskset, python3;
# builds the release `pier` and the bench_backend example. Adds `127.0.0.1 bench.pier.test`
# to /etc/hosts while it runs (wrk takes the TLS server name from the URL), removed on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
MODES=${MODES:-http https h2 swap}
HOST=bench.pier.test
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/.target}

for tool in wrk h2load nginx haproxy openssl taskset python3 curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk nghttp2-client nginx-light haproxy openssl curl)" >&2; exit 1; }
done

(cd "$ROOT" && cargo build --release -q -p pier --bin pier && cargo build --release -q -p pier-gateway --example bench_backend)
PIER="$CARGO_TARGET_DIR/release/pier"
BACKEND="$CARGO_TARGET_DIR/release/examples/bench_backend"

TMP=$(mktemp -d /tmp/pier-gw-bench.XXXXXX)
PIDS=()
HOSTS_LINE="127.0.0.1 $HOST # pier bench/gateway/run.sh"
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    sed -i "\|^$HOSTS_LINE\$|d" /etc/hosts 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
grep -qxF "$HOSTS_LINE" /etc/hosts || echo "$HOSTS_LINE" >>/etc/hosts

# shellcheck source=bench/gateway/nginx_conf.sh
source "$ROOT/bench/gateway/nginx_conf.sh"
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listens on $1" >&2; exit 1
}

# One certificate (ECDSA P-256) for all three proxies.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$HOST" \
    -addext "subjectAltName=DNS:$HOST" -keyout "$TMP/tls.key" -out "$TMP/tls.crt" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$HOST" \
    -addext "subjectAltName=DNS:$HOST" -keyout "$TMP/tls2.key" -out "$TMP/tls2.crt" 2>/dev/null
cat "$TMP/tls.crt" "$TMP/tls.key" >"$TMP/tls.pem"

BACKEND_PORT=$(free_port)
DEV_HTTP=$(free_port)
PIER_PORT=$(free_port); PIER_TLS=$(free_port)
NGINX_PORT=$(free_port); NGINX_TLS=$(free_port)
HAPROXY_PORT=$(free_port); HAPROXY_TLS=$(free_port)

taskset -c 1 "$BACKEND" --listen "127.0.0.1:$BACKEND_PORT" &
PIDS+=($!); BACKEND_PID=$!

# The control plane the gateway follows, on the client's core.
taskset -c 1 "$PIER" dev --no-agent --data-dir "$TMP/dev" --http-port "$DEV_HTTP" \
    --raft-port "$(free_port)" --registry-port "$(free_port)" --gateway-port "$(free_port)" \
    --https-port "$(free_port)" --dns-port "$(free_port)" --access-log off 2>"$TMP/dev.log" &
PIDS+=($!)
wait_port "$DEV_HTTP"
for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$DEV_HTTP/api/v1/status" >/dev/null && break
    sleep 0.1
done
curl -fsS -X PUT "http://127.0.0.1:$DEV_HTTP/v1/agent/service/register" -d "{
    \"ID\": \"bench-1\", \"Name\": \"bench\", \"Address\": \"127.0.0.1\", \"Port\": $BACKEND_PORT,
    \"Tags\": [\"urlprefix-$HOST\"]}" >/dev/null
"$PIER" --addr "http://127.0.0.1:$DEV_HTTP" cert add "$HOST" --cert "$TMP/tls.crt" --key "$TMP/tls.key" >/dev/null

# The shipped gateway: default settings (access log on, combined format, to stderr).
taskset -c 0 "$PIER" gateway --server "http://127.0.0.1:$DEV_HTTP" --listen "127.0.0.1:$PIER_PORT" \
    --https-port "$PIER_TLS" 2>"$TMP/pier-gateway.log" &
PIDS+=($!); PIER_PID=$!

nginx_conf "$NGINX_PORT" "$NGINX_TLS" >"$TMP/nginx.conf"
taskset -c 0 nginx -c "$TMP/nginx.conf" -p "$TMP" &
PIDS+=($!); NGINX_PID=$!

cat >"$TMP/haproxy.cfg" <<HAPROXY
global
    nbthread 1
    maxconn 4096
    log stdout format raw local0
defaults
    mode http
    log global
    option httplog
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    bind 127.0.0.1:$HAPROXY_TLS ssl crt $TMP/tls.pem alpn h2,http/1.1 ssl-min-ver TLSv1.3
    default_backend be
backend be
    server s1 127.0.0.1:$BACKEND_PORT
HAPROXY
taskset -c 0 haproxy -f "$TMP/haproxy.cfg" -db >"$TMP/haproxy-access.log" 2>&1 &
PIDS+=($!); HAPROXY_PID=$!

for p in $BACKEND_PORT $PIER_PORT $PIER_TLS $NGINX_PORT $NGINX_TLS $HAPROXY_PORT $HAPROXY_TLS; do wait_port "$p"; done
# The gateway has the route and the certificate before anything is measured.
for _ in $(seq 1 100); do
    curl -fsk --resolve "$HOST:$PIER_TLS:127.0.0.1" "https://$HOST:$PIER_TLS/" >/dev/null 2>&1 && break
    sleep 0.1
done
for p in $PIER_PORT $NGINX_PORT $HAPROXY_PORT; do
    curl -fsS -H "Host: $HOST" "http://127.0.0.1:$p/" >/dev/null || { echo "no answer through port $p" >&2; exit 1; }
done
for p in $PIER_TLS $NGINX_TLS $HAPROXY_TLS; do
    v=$(curl -fsSk --http2 -o /dev/null -w '%{http_version}' "https://$HOST:$p/") || { echo "no HTTPS answer on $p" >&2; exit 1; }
    [ "$v" = 2 ] || { echo "HTTP/2 not negotiated on $p (got $v)" >&2; exit 1; }
done

declare -A PORT=([direct]=$BACKEND_PORT [pier]=$PIER_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT)
declare -A TLS_PORT=([pier]=$PIER_TLS [nginx]=$NGINX_TLS [haproxy]=$HAPROXY_TLS)
# The process whose CPU time counts for each target (nginx: with its worker).
declare -A PROC=([direct]=$BACKEND_PID [pier]=$PIER_PID [nginx]=$NGINX_PID [haproxy]=$HAPROXY_PID)

# Nanoseconds on CPU of a process, its threads and its children, from schedstat.
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

# wrk prints latency with a unit; normalise to ms.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else { printf "%s", v } }'
}

secs() { sed 's/s$//' <<<"$1"; }

# One measurement: mode target duration -> "rps p50_ms p99_ms errors cpu_us_per_request"
measure() {
    local mode=$1 target=$2 duration=$3 out before after rps p50 p99 bad n
    before=$(cpu_ns "${PROC[$target]}")
    case $mode in
    http)
        out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$duration" --latency -H "Host: $HOST" "http://127.0.0.1:${PORT[$target]}/") ;;
    https)
        out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$duration" --latency "https://$HOST:${TLS_PORT[$target]}/") ;;
    swap)
        out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$duration" --latency -H "Connection: close" "https://$HOST:${TLS_PORT[$target]}/") ;;
    h2)
        rm -f "$TMP/h2.log"
        out=$(taskset -c 1 h2load -t1 -c"$CONNS" -m1 -D "$(secs "$duration")" --log-file="$TMP/h2.log" "https://$HOST:${TLS_PORT[$target]}/") ;;
    esac
    after=$(cpu_ns "${PROC[$target]}")
    if [ "$mode" = h2 ]; then
        rps=$(awk '/^finished in/ {gsub(",", ""); print $4}' <<<"$out")
        bad=$(awk '/^requests:/ {gsub(",", ""); print $10 + $12 + $14}' <<<"$out")
        n=$(awk '/^requests:/ {print $8}' <<<"$out")
        read -r p50 p99 < <(cut -f3 "$TMP/h2.log" | sort -n | awk '{a[NR]=$1} END {
            printf "%.3f %.3f\n", a[int(NR * 0.50)] / 1000, a[int(NR * 0.99)] / 1000 }')
    else
        rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
        p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
        p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
        bad=$(awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$out")
        n=$(awk '/requests in/ {print $1}' <<<"$out")
    fi
    [ -n "$rps" ] && [ "${n:-0}" -gt 0 ] || { echo "no result for $mode $target:" >&2; echo "$out" >&2; exit 1; }
    awk -v c=$((after - before)) -v n="$n" -v r="$rps" -v a="$p50" -v b="$p99" -v e="$bad" \
        'BEGIN { printf "%s %s %s %s %.2f\n", r, a, b, e, c / 1000 / n }'
}

median() { sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }

# Interleaved rounds of one mode: prints the table and each round's ratios.
compare() {
    local mode=$1; shift
    local targets=("$@") t r res
    declare -A RESULTS=()
    for t in "${targets[@]}"; do measure "$mode" "$t" 2s >/dev/null; done
    for r in $(seq 1 "$ROUNDS"); do
        for t in "${targets[@]}"; do
            res=$(measure "$mode" "$t" "$DURATION")
            echo "  round $r $t: $res" >&2
            RESULTS[$t]+="$res"$'\n'
        done
    done
    echo
    echo "## $mode: proxy on core 0; client, backend and pier dev on core 1; $ROUNDS rounds of $DURATION, $CONNS connections"
    printf '%-8s %12s %10s %10s %8s %12s\n' target "req/s" p50_ms p99_ms errors cpu_us/req
    for t in "${targets[@]}"; do
        printf '%-8s %12s %10s %10s %8s %12s\n' "$t" $(sed '/^$/d' <<<"${RESULTS[$t]}" | sort -n -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}')
    done
    echo "(the round with the median req/s of each target; cpu_us/req: the target process's own CPU)"
    for other in nginx haproxy; do
        local rps p99
        rps=$(paste -d' ' <(sed '/^$/d' <<<"${RESULTS[pier]}") <(sed '/^$/d' <<<"${RESULTS[$other]}") |
            awk '{ printf "%.2f\n", $1 / $6 }')
        p99=$(paste -d' ' <(sed '/^$/d' <<<"${RESULTS[pier]}") <(sed '/^$/d' <<<"${RESULTS[$other]}") |
            awk '{ printf "%.2f\n", $3 / $8 }')
        echo "pier/$other req/s per round: $(tr '\n' ' ' <<<"$rps")-> median $(median <<<"$rps")x"
        echo "pier/$other p99 per round:   $(tr '\n' ' ' <<<"$p99")-> median $(median <<<"$p99")x (lower is better)"
    done
}

# Certificate replaced every second under a handshake per request, against the same load
# with the certificate left alone; both on pier's HTTPS listener.
swap_run() {
    local r steady swapped swapper
    echo
    echo "## swap: pier, a TLS handshake per request (Connection: close), $CONNS connections, $ROUNDS rounds of $DURATION"
    measure swap pier 2s >/dev/null
    for r in $(seq 1 "$ROUNDS"); do
        steady=$(measure swap pier "$DURATION")
        (
            i=0
            while true; do
                i=$((i + 1))
                if [ $((i % 2)) = 0 ]; then c=tls; else c=tls2; fi
                "$PIER" --addr "http://127.0.0.1:$DEV_HTTP" cert add "$HOST" --cert "$TMP/$c.crt" --key "$TMP/$c.key" >/dev/null
                sleep 1
            done
        ) &
        swapper=$!
        swapped=$(measure swap pier "$DURATION")
        kill "$swapper" 2>/dev/null; wait "$swapper" 2>/dev/null || true
        echo "round $r  steady: $steady  swapping: $swapped   (req/s p50_ms p99_ms errors cpu_us/req)"
    done
}

for mode in $MODES; do
    case $mode in
    http) compare http direct pier nginx haproxy ;;
    https) compare https pier nginx haproxy ;;
    h2) compare h2 pier nginx haproxy ;;
    swap) swap_run ;;
    *) echo "unknown mode $mode" >&2; exit 1 ;;
    esac
done

echo
echo "access log lines written: pier $(grep -c '" [0-9][0-9][0-9] ' "$TMP/pier-gateway.log" || true)," \
    "nginx $(wc -l <"$TMP/nginx-access.log"), haproxy $(wc -l <"$TMP/haproxy-access.log")"
