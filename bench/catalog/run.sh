#!/usr/bin/env bash
# Catalog figures, release build, one single-server store on loopback:
#   1. first passing check -> visible in a blocking /v1/health/service/:name?passing (N tries)
#   2. 10,000 blocking HTTP watchers on one service: time for one change to reach all, server CPU
#   3. agent stops heartbeating -> its instance leaves the passing set
#
#   bench/catalog/run.sh [passing N] [fanout W] [dead N]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
# 10,000 watchers need 10,000 sockets in each of the two processes.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "fd limit: $(ulimit -n), cores: $(nproc)"
(cd "$root" && cargo build --release -q -p pier-catalog --example catalog_bench)
RUST_LOG="${RUST_LOG:-error}" "$CARGO_TARGET_DIR/release/examples/catalog_bench" "$@"
