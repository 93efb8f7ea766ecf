#!/usr/bin/env bash
# The cluster registry: three `pier server`s (--insecure, loopback) and Debian's
# `docker-registry` (CNCF Distribution 2.8), side by side in one run:
#   1. skopeo push of an image with 3 random 64 MiB layers to server 1; the time until every
#      blob is on two servers' disks (the background copy), and the time until a cold pull
#      from each of servers 2 and 3 succeeds (a pull of a blob a server lacks streams it from
#      a peer).
#   2. 16 concurrent pulls of that image (manifest + 3 layers, one curl process each, as a
#      deploy to a fleet does): pier with one server taking all 16, pier with the pulls
#      spread over three servers, and distribution. Wall time and the registry processes'
#      CPU time (utime + stime from /proc) of each; median of RUNS rounds.
#
#   bench/registry/cluster.sh [RUNS]       (SKIP_PIER_BUILD=1 reuses $CARGO_TARGET_DIR/release/pier,
#                                           PIER_BIN=/path/to/pier measures that binary)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
runs="${1:-5}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
for tool in skopeo docker-registry python3 curl jq; do
  command -v "$tool" >/dev/null || { echo "needs $tool"; exit 1; }
done
if [ -z "${SKIP_PIER_BUILD:-}" ] && [ -z "${PIER_BIN:-}" ]; then
  echo "building (release)..."
  (cd "$root" && cargo build --release -q -p pier)
fi
pier="${PIER_BIN:-$CARGO_TARGET_DIR/release/pier}"

work="$(mktemp -d /var/tmp/pier-registry-cluster.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
# CPU seconds (utime + stime) of the given pids.
cpu() {
  local hz total=0; hz=$(getconf CLK_TCK)
  for p in "$@"; do
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
  done
  echo "scale=3; $total / $hz" | bc
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# --- the contestants ---
declare -a http raft reg spid
join=""
for i in 1 2 3; do
  http[$i]=$(free_port); raft[$i]=$(free_port); reg[$i]=$(free_port)
  join="$join${join:+,}127.0.0.1:${raft[$i]}"
done
for i in 1 2 3; do
  "$pier" server --insecure --data-dir "$work/s$i" --node-name "s$i" \
    --http-port "${http[$i]}" --raft-port "${raft[$i]}" --registry-port "${reg[$i]}" \
    --bootstrap-expect 3 --join "$join" --snapshot-every 0s >"$work/s$i.log" 2>&1 &
  spid[$i]=$!; pids+=("$!"); disown "$!"
done
dist_port=$(free_port)
cat > "$work/dist.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/dist-data
http:
  addr: 127.0.0.1:$dist_port
YAML
docker-registry serve "$work/dist.yml" >"$work/dist.log" 2>&1 &
dist_pid=$!; pids+=("$!"); disown "$!"
for url in "127.0.0.1:${reg[1]}" "127.0.0.1:${reg[2]}" "127.0.0.1:${reg[3]}" "127.0.0.1:$dist_port"; do
  for _ in $(seq 1 200); do curl -sf "http://$url/v2/" >/dev/null && break; sleep 0.1; done
done
for _ in $(seq 1 200); do
  curl -sf "http://127.0.0.1:${http[1]}/api/v1/status" | jq -e '.leader != null' >/dev/null 2>&1 && break
  sleep 0.1
done

python3 "$here/make_layout.py" "$work/layout" 3 64 >/dev/null
manifest=$(jq -r '.manifests[0].digest' "$work/layout/index.json")
mapfile -t layers < <(jq -r '.layers[].digest' "$work/layout/blobs/sha256/${manifest#sha256:}")
config=$(jq -r '.config.digest' "$work/layout/blobs/sha256/${manifest#sha256:}")
all_blobs=("${layers[@]}" "$config" "$manifest")

holds() { # holds SERVER DIGEST: the file is on that server's disk
  local hex=${2#sha256:}
  [ -f "$work/s$1/registry/blobs/sha256/${hex:0:2}/$hex" ]
}
copies_done() {
  for b in "${all_blobs[@]}"; do
    local n=0
    for i in 1 2 3; do holds "$i" "$b" && n=$((n + 1)); done
    [ "$n" -ge 2 ] || return 1
  done
}

echo "== 1. push 3 x 64 MiB to server 1 -> pullable from every server"
t0=$(now)
skopeo copy --quiet --preserve-digests --dest-tls-verify=false "oci:$work/layout:img" \
  "docker://127.0.0.1:${reg[1]}/bench/app:v1"
t_push=$(now)
until copies_done; do sleep 0.05; done
t_copies=$(now)
printf "push acknowledged by server 1   %6.2f s\n" "$(echo "$t_push - $t0" | bc)"
printf "every blob on two servers' disks %6.2f s after the push started\n" "$(echo "$t_copies - $t0" | bc)"
for i in 2 3; do
  t1=$(now)
  skopeo copy --quiet --src-tls-verify=false "docker://127.0.0.1:${reg[$i]}/bench/app:v1" "oci:$work/pull-$i:img"
  got=$(jq -r '.manifests[0].digest' "$work/pull-$i/index.json")
  [ "$got" = "$manifest" ] || { echo "server $i served $got, pushed $manifest"; exit 1; }
  printf "skopeo pull from server %d          %6.2f s (same manifest digest)\n" "$i" "$(echo "$(now) - $t1" | bc)"
done
skopeo copy --quiet --preserve-digests --dest-tls-verify=false "oci:$work/layout:img" \
  "docker://127.0.0.1:$dist_port/bench/app:v1"

# One pull as a fleet node does it: the manifest, then every blob.
pull_one() { # pull_one HOST:PORT
  curl -sf -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$1/v2/bench/app/manifests/v1" || return 1
  for b in "${layers[@]}" "$config"; do
    curl -sf -o /dev/null "http://$1/v2/bench/app/blobs/$b" || return 1
  done
}
# sixteen TARGET... : 16 concurrent pulls spread over the targets; prints "wall cpu".
sixteen() {
  local pidlist=$1; shift
  local targets=("$@") before after t1 t2 jobs=()
  # shellcheck disable=SC2086
  before=$(cpu $pidlist)
  t1=$(now)
  for k in $(seq 0 15); do
    pull_one "${targets[$((k % ${#targets[@]}))]}" &
    jobs+=("$!")
  done
  for j in "${jobs[@]}"; do wait "$j" || { echo "a pull failed" >&2; exit 1; }; done
  t2=$(now)
  # shellcheck disable=SC2086
  after=$(cpu $pidlist)
  echo "$(echo "$t2 - $t1" | bc) $(echo "$after - $before" | bc)"
}

echo
echo "== 2. 16 concurrent pulls (curl: manifest + 3 x 64 MiB + config), median of $runs rounds"
pier1=() pier3=() dist=()
# Warm the page cache of every contestant once.
sixteen "${spid[1]}" "127.0.0.1:${reg[1]}" >/dev/null
sixteen "${spid[1]} ${spid[2]} ${spid[3]}" "127.0.0.1:${reg[1]}" "127.0.0.1:${reg[2]}" "127.0.0.1:${reg[3]}" >/dev/null
sixteen "$dist_pid" "127.0.0.1:$dist_port" >/dev/null
for _ in $(seq 1 "$runs"); do
  pier1+=("$(sixteen "${spid[1]}" "127.0.0.1:${reg[1]}")")
  pier3+=("$(sixteen "${spid[1]} ${spid[2]} ${spid[3]}" "127.0.0.1:${reg[1]}" "127.0.0.1:${reg[2]}" "127.0.0.1:${reg[3]}")")
  dist+=("$(sixteen "$dist_pid" "127.0.0.1:$dist_port")")
done
col() { local i=$1; shift; printf '%s\n' "$@" | awk -v i="$i" '{print $i}' | median; }
d_wall=$(col 1 "${dist[@]}"); d_cpu=$(col 2 "${dist[@]}")
printf "%-28s %8s %8s %12s %12s\n" contestant "wall s" "cpu s" "wall/dist" "cpu/dist"
for name in pier1 pier3 dist; do
  declare -n rows=$name
  w=$(col 1 "${rows[@]}"); c=$(col 2 "${rows[@]}")
  label=$name
  [ "$name" = pier1 ] && label="pier, one server"
  [ "$name" = pier3 ] && label="pier, three servers"
  [ "$name" = dist ] && label="distribution 2.8"
  printf "%-28s %8.3f %8.3f %12.2f %12.2f\n" "$label" "$w" "$c" \
    "$(echo "scale=3; $w / $d_wall" | bc)" "$(echo "scale=3; $c / $d_cpu" | bc)"
done
