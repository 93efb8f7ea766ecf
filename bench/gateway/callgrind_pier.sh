#!/usr/bin/env bash
# Instructions and syscalls per request of the shipped gateway: the release `pier gateway`
# (default settings, access log on, to stderr redirected to a file) following a `pier dev`, as
# `run.sh` sets it up, under a fixed number of requests per mode. Instruction counts do not
# depend on what else the machine runs, so this works where requests/s cannot be trusted.
#
#   TOOL=callgrind: instructions per request (every thread), from callgrind_annotate's total
#   TOOL=strace:    syscalls per request (`strace -c -f -p`, every thread, attached after the
#                   warm-up), the table left in OUT
#   TOOL=nginx:     nginx (worker_processes 1, master_process off) under callgrind, configured
#                   as in run.sh, for a like-for-like instruction count
#
# Usage: bench/gateway/callgrind_pier.sh [OUT_DIR]
#   env: TOOL=callgrind|strace|nginx  MODES="http https h2"  REQUESTS=5000  WARMUP=1000  CONNS=16
#        PIER=path BACKEND=path (binaries built before; otherwise the release ones are built)
# Requests are made by h2load with a fixed count (-n): `--h1` for HTTP/1.1 and HTTPS/1.1, ALPN h2
# for HTTP/2, one stream per connection (-m1). Needs valgrind, strace, h2load, openssl, curl,
# python3; adds `127.0.0.1 bench.pier.test` to /etc/hosts while it runs (removed on exit).
set -euo pipefail

TOOL=${TOOL:-callgrind}
MODES=${MODES:-http https h2}
REQUESTS=${REQUESTS:-5000}
WARMUP=${WARMUP:-1000}
CONNS=${CONNS:-16}
OUT=${1:-/tmp/pier-gw-insn}
HOST=bench.pier.test
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/.target}
mkdir -p "$OUT"

# PIER and BACKEND may name binaries built before (to compare two builds); otherwise both are built.
if [ -z "${PIER:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p pier --bin pier && cargo build --release -q -p pier-gateway --example bench_backend)
fi
PIER=${PIER:-$CARGO_TARGET_DIR/release/pier}
BACKEND=${BACKEND:-$CARGO_TARGET_DIR/release/examples/bench_backend}

TMP=$(mktemp -d /tmp/pier-gw-insn.XXXXXX)
PIDS=()
HOSTS_LINE="127.0.0.1 $HOST # pier bench/gateway/callgrind_pier.sh"
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
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 600); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on $1" >&2; exit 1
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$HOST" \
    -addext "subjectAltName=DNS:$HOST" -keyout "$TMP/tls.key" -out "$TMP/tls.crt" 2>/dev/null

BACKEND_PORT=$(free_port); DEV_HTTP=$(free_port)
PORT=$(free_port); TLS_PORT=$(free_port)

"$BACKEND" --listen "127.0.0.1:$BACKEND_PORT" & PIDS+=($!)

if [ "$TOOL" = nginx ]; then
    nginx_conf "$PORT" "$TLS_PORT" "master_process off;" >"$TMP/nginx.conf"
    valgrind --tool=callgrind --callgrind-out-file="$OUT/nginx.%p" \
        nginx -c "$TMP/nginx.conf" -p "$TMP" 2>"$TMP/vg.log" &
    TARGET=$!; PIDS+=($TARGET)
else
    "$PIER" dev --no-agent --data-dir "$TMP/dev" --http-port "$DEV_HTTP" \
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
    GW=("$PIER" gateway --server "http://127.0.0.1:$DEV_HTTP" --listen "127.0.0.1:$PORT" --https-port "$TLS_PORT")
    case "$TOOL" in
        callgrind) valgrind --tool=callgrind --callgrind-out-file="$OUT/pier.%p" "${GW[@]}" \
                       2>"$OUT/pier-gateway.log" & ;;
        strace) "${GW[@]}" 2>"$OUT/pier-gateway.log" & ;;
        *) echo "unknown TOOL=$TOOL" >&2; exit 2 ;;
    esac
    TARGET=$!; PIDS+=($TARGET)
fi

wait_port "$BACKEND_PORT"; wait_port "$PORT"; wait_port "$TLS_PORT"
for _ in $(seq 1 300); do
    curl -fsk "https://$HOST:$TLS_PORT/" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS "http://$HOST:$PORT/" >/dev/null || { echo "no answer over HTTP" >&2; exit 1; }

load() { # mode count -> h2load's output
    case "$1" in
        http) h2load --h1 -n "$2" -c "$CONNS" "http://$HOST:$PORT/" ;;
        https) h2load --h1 -n "$2" -c "$CONNS" "https://$HOST:$TLS_PORT/" ;;
        h2) h2load -n "$2" -c "$CONNS" -m1 "https://$HOST:$TLS_PORT/" ;;
    esac
}
succeeded() { awk '/^requests:/ {print $8}' <<<"$1"; }

for mode in $MODES; do
    load "$mode" "$WARMUP" >/dev/null
    case "$TOOL" in
        callgrind|nginx)
            callgrind_control -z "$TARGET" >/dev/null 2>&1
            out=$(load "$mode" "$REQUESTS")
            callgrind_control -d "$mode" "$TARGET" >/dev/null 2>&1
            n=$(succeeded "$out")
            f=$(ls -t "$OUT"/*."$TARGET".* | head -1)
            ir=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
            echo "$TOOL $mode requests=$n instructions=$ir per_request=$((ir / n)) profile=$f"
            ;;
        strace)
            strace -f -c -o "$OUT/strace-$mode.txt" -p "$TARGET" 2>/dev/null &
            ST=$!
            sleep 1
            out=$(load "$mode" "$REQUESTS")
            kill -INT "$ST"; wait "$ST" 2>/dev/null || true
            n=$(succeeded "$out")
            echo "strace $mode requests=$n"
            awk -v n="$n" '$1 ~ /^[0-9.]+$/ && NF>=5 {printf "  %-16s %8d calls %7.3f per request\n", $NF, $4, $4/n}' \
                "$OUT/strace-$mode.txt" | sort -k2 -nr | head -12
            ;;
    esac
done
