#!/usr/bin/env bash
# What mutual TLS costs: KV writes/s and p99 on 3 members, pier secure (its default: mTLS
# between servers, HTTPS + token for clients) against pier --insecure, and etcd with peer TLS
# and --client-cert-auth against plain etcd, in one run, rounds interleaved, each cluster
# started fresh for its round. One closed-loop client for all (kv_load, an example of
# pier-testkit): wrk cannot present a client certificate.
#
#   bench/store/tls.sh [ROUNDS=3] [SECONDS=10] [CONNECTIONS=32]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
rounds="${1:-3}"
seconds="${2:-10}"
conns="${3:-32}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
for tool in etcd openssl curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install etcd-server openssl curl python3)"; exit 1; }
done
if [ -z "${PIER:-}" ]; then
  (cd "$root" && cargo build --release -q -p pier)
fi
(cd "$root" && cargo build --release -q -p pier-testkit --example kv_load)
pier="${PIER:-$CARGO_TARGET_DIR/release/pier}"
load="$CARGO_TARGET_DIR/release/examples/kv_load"
work="$(mktemp -d)"
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT

# etcd's certificates (pier makes its own CA at first start).
certs="$work/certs"; mkdir -p "$certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$certs/ca.key" -out "$certs/ca.crt" 2>/dev/null
for who in server client; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$who" \
    -keyout "$certs/$who.key" -out "$certs/$who.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' > "$certs/$who.ext"
  openssl x509 -req -in "$certs/$who.csr" -CA "$certs/ca.crt" -CAkey "$certs/ca.key" -CAcreateserial \
    -days 2 -extfile "$certs/$who.ext" -out "$certs/$who.crt" 2>/dev/null
done

wait_ok() { # curl args...
  for _ in $(seq 1 400); do curl -fsS "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "no answer: $*" >&2; return 1
}

start_pier() { # secure|plain dir base -> prints the URLs
  local mode=$1 dir=$2 base=$3 flags=() join=""
  [ "$mode" = plain ] && flags=(--insecure)
  for i in 1 2 3; do
    local extra=()
    if [ "$i" -gt 1 ]; then
      extra=(--join "127.0.0.1:$((base + 11))")
      [ "$mode" = secure ] && extra+=(--token "$(cat "$dir/s1/tls/server.token")")
    fi
    "$pier" server "${flags[@]}" --data-dir "$dir/s$i" --node-name "s$i" --bind 127.0.0.1 \
      --http-port $((base + i)) --raft-port $((base + 10 + i)) "${extra[@]}" >"$dir/s$i.log" 2>&1 &
    pids+=($!)
    if [ "$i" = 1 ]; then
      if [ "$mode" = secure ]; then
        for _ in $(seq 1 400); do [ -s "$dir/s1/tls/management.token" ] && break; sleep 0.05; done
      else
        wait_ok "http://127.0.0.1:$((base + 1))/api/v1/status"
      fi
    fi
  done
  local scheme=http auth=() ca=()
  if [ "$mode" = secure ]; then
    scheme=https; ca=(--cacert "$dir/s1/tls/ca.crt")
    auth=(-H "Authorization: Bearer $(cat "$dir/s1/tls/management.token")")
  fi
  for _ in $(seq 1 600); do
    voters=$(curl -fsS "${ca[@]}" "${auth[@]}" "$scheme://127.0.0.1:$((base + 1))/api/v1/status" 2>/dev/null \
      | python3 -c 'import sys,json; s=json.load(sys.stdin); print(sum(1 for m in s["members"] if m["voter"]) if s.get("leader") else 0)' 2>/dev/null || echo 0)
    [ "$voters" = 3 ] && break; sleep 0.1
  done
  [ "$voters" = 3 ] || { echo "pier $mode cluster did not form" >&2; exit 1; }
}

start_etcd() { # secure|plain dir base
  local mode=$1 dir=$2 base=$3 initial="" scheme=http tls=()
  if [ "$mode" = secure ]; then
    scheme=https
    tls=(--cert-file "$certs/server.crt" --key-file "$certs/server.key" --client-cert-auth
         --trusted-ca-file "$certs/ca.crt" --peer-cert-file "$certs/server.crt"
         --peer-key-file "$certs/server.key" --peer-client-cert-auth
         --peer-trusted-ca-file "$certs/ca.crt")
  fi
  for i in 1 2 3; do initial="$initial,e$i=$scheme://127.0.0.1:$((base + 10 + i))"; done
  initial="${initial#,}"
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$dir/e$i" "${tls[@]}" \
      --listen-client-urls "$scheme://127.0.0.1:$((base + i))" --advertise-client-urls "$scheme://127.0.0.1:$((base + i))" \
      --listen-peer-urls "$scheme://127.0.0.1:$((base + 10 + i))" --initial-advertise-peer-urls "$scheme://127.0.0.1:$((base + 10 + i))" \
      --initial-cluster "$initial" --initial-cluster-state new --log-level error >"$dir/e$i.log" 2>&1 &
    pids+=($!)
  done
  local curl_tls=()
  [ "$mode" = secure ] && curl_tls=(--cacert "$certs/ca.crt" --cert "$certs/client.crt" --key "$certs/client.key")
  for i in 1 2 3; do wait_ok "${curl_tls[@]}" "$scheme://127.0.0.1:$((base + i))/health"; done
}

measure() { # system mode -> "writes/s p50 p99 errors"
  local sys=$1 mode=$2 dir base=$3 scheme=http args=()
  dir="$work/$sys-$mode-$RANDOM"; mkdir -p "$dir"
  if [ "$sys" = pier ]; then start_pier "$mode" "$dir" "$base"; else start_etcd "$mode" "$dir" "$base"; fi
  if [ "$mode" = secure ]; then
    scheme=https
    if [ "$sys" = pier ]; then
      args=(--ca "$dir/s1/tls/ca.crt" --token "$(cat "$dir/s1/tls/management.token")")
    else
      args=(--ca "$certs/ca.crt" --cert "$certs/client.crt" --key "$certs/client.key")
    fi
  fi
  local urls="$scheme://127.0.0.1:$((base + 1)),$scheme://127.0.0.1:$((base + 2)),$scheme://127.0.0.1:$((base + 3))"
  "$load" --target "$sys" --urls "$urls" --connections "$conns" --seconds "$seconds" "${args[@]}"
  stop_all
  rm -rf "$dir"
}

echo "pier $("$pier" --version) vs $(etcd --version | head -1); 3 members each, $conns connections spread over all members, ${seconds}s, 64-byte values, fresh key per write, $rounds rounds interleaved"
declare -A rps p99
for r in $(seq 1 "$rounds"); do
  for setup in "pier plain 21000" "pier secure 22000" "etcd plain 23000" "etcd secure 24000"; do
    set -- $setup
    out=$(measure "$1" "$2" "$3")
    echo "  round $r $1 $2: $out (writes/s p50_ms p99_ms errors)"
    rps["$1-$2"]+="$(echo "$out" | awk '{print $1}') "
    p99["$1-$2"]+="$(echo "$out" | awk '{print $3}') "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf "%-14s %12s %10s\n" setup "writes/s" "p99 ms"
for k in pier-plain pier-secure etcd-plain etcd-secure; do
  printf "%-14s %12s %10s\n" "$k" "$(echo "${rps[$k]}" | median)" "$(echo "${p99[$k]}" | median)"
done
ps=$(echo "${rps[pier-secure]}" | median); pp=$(echo "${rps[pier-plain]}" | median); es=$(echo "${rps[etcd-secure]}" | median)
python3 - "$ps" "$pp" "$es" <<'EOF'
import sys
ps, pp, es = map(float, sys.argv[1:])
print(f"pier secure / pier plain: {ps/pp:.2f}  (goal: >= 0.90, mTLS costs at most 10 %)")
print(f"pier secure / etcd secure: {ps/es:.2f}  (goal: >= 1.00)")
EOF
