#!/usr/bin/env bash
# pier registry vs CNCF Distribution 2.8 (Debian's docker-registry), side by
# side in one run, both on 127.0.0.1 with filesystem storage:
#   1. skopeo push of an OCI image with 3 random 64 MiB layers (fresh, empty
#      registries before every timed run), then skopeo pull of it. Runs
#      alternate between the registries (the machine is shared), and the
#      median of the per-round time ratios pier/distribution is reported.
#      A third contestant, "floor" (ideal_registry.py: pulls by sendfile,
#      pushes thrown away unread), shows what skopeo itself costs: no
#      registry can beat its ratio. Client and server CPU time are reported.
#   2. peak RSS (VmHWM) of each registry across one push.
#   3. 64 concurrent keep-alive HEAD requests on one blob: p50/p99 latency.
#   4. GET tags/list on a repository with 10,000 tags: latency.
#
#   bench/registry/run.sh [RUNS] [HEAD_SECONDS]     (SKIP_PIER_BUILD=1 to reuse target/release/pier,
#                                                    PIER_BIN=/path/to/pier to measure that binary)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
runs="${1:-5}"
head_seconds="${2:-10}"
tags=10000
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
for tool in skopeo docker-registry python3 curl bc; do
  command -v "$tool" >/dev/null || { echo "needs $tool"; exit 1; }
done

echo "building (release)..."
# SKIP_PIER_BUILD=1 reuses an existing release binary (the workspace may be
# mid-change while the registry itself is fine).
# PIER_BIN measures a given binary (e.g. one built from a clean export of a
# commit while the shared checkout is mid-change elsewhere).
if [ -z "${SKIP_PIER_BUILD:-}" ] && [ -z "${PIER_BIN:-}" ]; then (cd "$root" && cargo build --release -q -p pier); fi
(cd "$root" && cargo build --release -q -p pier-registry --example head_load)
pier="${PIER_BIN:-$CARGO_TARGET_DIR/release/pier}"
head_load="$CARGO_TARGET_DIR/release/examples/head_load"

# On disk (not tmpfs): both registries write real files.
work="$(mktemp -d /var/tmp/pier-registry-bench.XXXXXX)"
cleanup() {
  for f in "$work"/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pier_port="$(free_port)"
dist_port="$(free_port)"
pier_url="127.0.0.1:$pier_port"
dist_url="127.0.0.1:$dist_port"
floor_push_url="127.0.0.1:$(free_port)"
floor_pull_url="127.0.0.1:$(free_port)"

cat > "$work/dist.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/dist-data
  delete:
    enabled: true
http:
  addr: $dist_url
YAML

# Start/stop scripts, usable from hyperfine's --prepare (which runs sh).
cat > "$work/restart.sh" <<SH
#!/bin/sh
# restart.sh pier|dist : kill the registry, wipe its data, start it fresh.
set -e
which=\$1
pidfile="$work/\$which.pid"
if [ -f "\$pidfile" ]; then
  pid=\$(cat "\$pidfile")
  kill -TERM "\$pid" 2>/dev/null || true
  for _ in \$(seq 1 100); do kill -0 "\$pid" 2>/dev/null || break; sleep 0.05; done
  kill -9 "\$pid" 2>/dev/null || true
fi
rm -rf "$work/\$which-data"
# skopeo's blob-info cache would otherwise turn uploads into mount attempts.
rm -f /var/lib/containers/cache/blob-info-cache-v1.boltdb "\$HOME/.local/share/containers/cache/blob-info-cache-v1.boltdb"
if [ "\$which" = pier ]; then
  setsid "$pier" registry --data-dir "$work/pier-data" --listen "$pier_url" --gc-interval off >"$work/pier.log" 2>&1 < /dev/null &
  url="http://$pier_url/v2/"
else
  setsid docker-registry serve "$work/dist.yml" >"$work/dist.log" 2>&1 < /dev/null &
  url="http://$dist_url/v2/"
fi
echo \$! > "\$pidfile"
for _ in \$(seq 1 200); do curl -fsS "\$url" >/dev/null 2>&1 && exit 0; sleep 0.05; done
echo "no answer from \$url"; exit 1
SH
chmod +x "$work/restart.sh"

echo "making the OCI layout (3 x 64 MiB random layers)..."
layer_digest="$(python3 "$here/make_layout.py" "$work/layout" 3 64)"
src="oci:$work/layout:img"
setsid python3 "$here/ideal_registry.py" "$work/layout" "$floor_push_url" sink >"$work/floor-push.log" 2>&1 </dev/null &
echo $! >"$work/floor-push.pid"; disown
setsid python3 "$here/ideal_registry.py" "$work/layout" "$floor_pull_url" >"$work/floor-pull.log" 2>&1 </dev/null &
echo $! >"$work/floor-pull.pid"; disown
for u in "$floor_push_url" "$floor_pull_url"; do
  for _ in $(seq 1 100); do curl -fsS "http://$u/v2/" >/dev/null 2>&1 && break; sleep 0.05; done
done
no_blob_cache="rm -f /var/lib/containers/cache/blob-info-cache-v1.boltdb $HOME/.local/share/containers/cache/blob-info-cache-v1.boltdb"
export SERVER_PIDS="pier=$work/pier.pid distribution=$work/dist.pid"
push() { echo "skopeo copy --quiet --preserve-digests --dest-tls-verify=false $src docker://$1/bench/img:v1"; }

echo
echo "== 1. skopeo push, $runs rounds, order alternating (fresh, empty registry before each run)"
SERVER_PIDS="$SERVER_PIDS floor=$work/floor-push.pid" python3 "$here/interleave.py" "$runs" \
  pier "$work/restart.sh pier" "$(push "$pier_url")" \
  floor "$no_blob_cache" "$(push "$floor_push_url")" \
  distribution "$work/restart.sh dist" "$(push "$dist_url")" | tee "$work/push.txt"

# Both registries now hold the image (the last push of each).
echo
echo "== 1b. skopeo pull into a fresh OCI layout, $runs rounds, order alternating"
SERVER_PIDS="$SERVER_PIDS floor=$work/floor-pull.pid" python3 "$here/interleave.py" "$runs" \
  pier "rm -rf $work/pull-pier" "skopeo copy --quiet --src-tls-verify=false docker://$pier_url/bench/img:v1 oci:$work/pull-pier:img" \
  floor "rm -rf $work/pull-floor" "skopeo copy --quiet --src-tls-verify=false docker://$floor_pull_url/bench/img:v1 oci:$work/pull-floor:img" \
  distribution "rm -rf $work/pull-dist" "skopeo copy --quiet --src-tls-verify=false docker://$dist_url/bench/img:v1 oci:$work/pull-dist:img" | tee "$work/pull.txt"

echo
echo "== 2. peak RSS across one push (fresh processes)"
rss() { awk '/VmHWM/ {print $2}' "/proc/$(cat "$work/$1.pid")/status"; }
"$work/restart.sh" pier; "$work/restart.sh" dist
pier_rss_idle=$(rss pier); dist_rss_idle=$(rss dist)
sh -c "$(push "$pier_url")"; sh -c "$(push "$dist_url")"
pier_rss=$(rss pier); dist_rss=$(rss dist)
echo "pier         peak RSS ${pier_rss} kB (idle ${pier_rss_idle} kB)"
echo "distribution peak RSS ${dist_rss} kB (idle ${dist_rss_idle} kB)"

echo
echo "== 3. 64 concurrent HEAD /v2/bench/img/blobs/<layer>, ${head_seconds}s each"
pier_head=$("$head_load" "$pier_url" "/v2/bench/img/blobs/$layer_digest" 64 "$head_seconds")
dist_head=$("$head_load" "$dist_url" "/v2/bench/img/blobs/$layer_digest" 64 "$head_seconds")
echo "pier         $pier_head"
echo "distribution $dist_head"

echo
echo "== 4. tags/list with $tags tags"
start=$(date +%s.%N); python3 "$here/tag_many.py" "$pier_url" bench/tags "$tags"; pier_tag_s=$(echo "$(date +%s.%N) - $start" | bc)
start=$(date +%s.%N); python3 "$here/tag_many.py" "$dist_url" bench/tags "$tags"; dist_tag_s=$(echo "$(date +%s.%N) - $start" | bc)
echo "tagging $tags times: pier ${pier_tag_s}s, distribution ${dist_tag_s}s"
for r in "pier $pier_url" "distribution $dist_url"; do
  set -- $r
  n=$(curl -fsS "http://$2/v2/bench/tags/tags/list" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["tags"]))')
  [ "$n" = "$tags" ] || { echo "$1 lists $n tags, expected $tags"; exit 1; }
done
python3 "$here/get_latency.py" 200 /v2/bench/tags/tags/list pier="$pier_url" distribution="$dist_url" | tee "$work/tags.txt"

echo
echo "== summary"
echo "push:  $(tail -1 "$work/push.txt")"
echo "       $(tail -2 "$work/push.txt" | head -1)  (nothing done server-side: skopeo's own cost)"
echo "pull:  $(tail -1 "$work/pull.txt")"
echo "       $(tail -2 "$work/pull.txt" | head -1)  (sendfile from page cache: skopeo's own cost)"
sed 's/^/tags\/list 10k: /' "$work/tags.txt"
echo "pier         peak RSS during push: $((pier_rss / 1024)) MiB"
echo "distribution peak RSS during push: $((dist_rss / 1024)) MiB"
echo "HEAD x64 pier:         $pier_head"
echo "HEAD x64 distribution: $dist_head"
