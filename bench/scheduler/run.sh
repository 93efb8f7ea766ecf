#!/bin/sh
# Scheduler and rolling-deploy benchmarks, pinned to one core. See README.md.
set -eu
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/.target}"
cargo build --release -p pier-core --example scheduler_sim --example deploy_sim
bin="$CARGO_TARGET_DIR/release/examples"
echo "== scheduler: 150,000 tasks, 5,000 nodes, 3 zones, spread + capacity"
taskset -c 1 "$bin/scheduler_sim" --nodes 5000 --tasks 150000 --zones 3 --services 3000
echo "== rolling deploy: 15,000 tasks on 5,000 nodes"
taskset -c 1 "$bin/deploy_sim" --nodes 5000 --desired 15000
echo "== rolling deploy: a version that crashes 5 s after turning healthy"
taskset -c 1 "$bin/deploy_sim" --nodes 5000 --desired 15000 --scenario crash
echo "== rolling deploy: 150,000 tasks on 5,000 nodes"
taskset -c 1 "$bin/deploy_sim" --nodes 5000 --desired 150000
