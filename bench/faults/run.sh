#!/usr/bin/env bash
# Failover benchmark of issue 12: time from a fault to the next acknowledged write, pier vs
# etcd, 3 members each, side by side in the same network namespaces (one pier server and one
# etcd member per namespace, both with default settings); then the catch-up time of a follower
# healed BEHIND entries behind. Needs root, ip, iptables and Debian's etcd-server.
#
#   bench/faults/run.sh [ROUNDS] [BEHIND] [BEHIND_ROUNDS] [CASES]
#
# CASES is a comma-separated subset of
#   leader_isolated,follower_isolated,bridge_partition,leader_kill9,full_restart
# PIER=/path/to/pier skips the pier build (to compare two builds); the default measures the
# release binary built from this tree.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
rounds="${1:-10}"
behind="${2:-10000}"
behind_rounds="${3:-3}"
cases="${4:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespaces, iptables)"; exit 1; }
for tool in ip iptables etcd; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install iproute2 iptables etcd-server)"; exit 1; }
done

if [ -z "${PIER:-}" ]; then
  (cd "$root" && cargo build --release -q -p pier)
fi
pier="${PIER:-$CARGO_TARGET_DIR/release/pier}"
(cd "$root" && cargo build --release -q -p pier-testkit --example faults_bench)

echo "pier: $pier ($("$pier" --version))"
echo "etcd: $(command -v etcd) ($(etcd --version | head -1))"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
args=(--pier "$pier" --etcd "$(command -v etcd)" --rounds "$rounds" --behind "$behind" --behind-rounds "$behind_rounds")
[ -n "$cases" ] && args+=(--cases "$cases")
exec "$CARGO_TARGET_DIR/release/examples/faults_bench" "${args[@]}"
