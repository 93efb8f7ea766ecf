#!/usr/bin/env bash
# Pipeline benchmark: seconds from `git commit` (webhook mode) to the new version served.
#
# Starts its own `pier dev` on free ports, makes a git repository holding the busybox httpd
# example (FROM scratch + Debian's static busybox), creates a pipeline with polling off and a
# webhook secret, then ITERATIONS times: change the page, `git commit`, send the signed push
# webhook the way a forge would, and time until
#   first  - a passing instance of the service serves the new page,
#   all    - every answer of the gateway (Host: bench.localhost, 4 requests per probe) is the
#            new page: the old version is out of the routing table (GATEWAY=catalog reads the
#            catalog's passing instances directly instead),
#   run    - the run is `succeeded` (the deployment finished, old tasks drained and stopped).
#
# Usage: bench/pipeline/run.sh            (PIER=path/to/pier, ITERATIONS=5, COUNT=2)
set -euo pipefail
cd "$(dirname "$0")/../.."

ITERATIONS="${ITERATIONS:-5}"
COUNT="${COUNT:-2}"
if [ -z "${PIER:-}" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
  cargo build --release -q -p pier
  PIER="$CARGO_TARGET_DIR/release/pier"
fi
for tool in git curl jq python3 docker; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 1; }
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.3f\", $1 }"; }

WORK="$(mktemp -d)"
HTTP_PORT="$(free_port)"; RAFT_PORT="$(free_port)"; REG_PORT="$(free_port)"
GW_PORT="$(free_port)"; HTTPS_PORT="$(free_port)"; DNS_PORT="$(free_port)"
# Read through the gateway of this pier dev unless told otherwise (GATEWAY=catalog: the
# passing instances themselves).
GATEWAY="${GATEWAY:-127.0.0.1:$GW_PORT}"
[ "$GATEWAY" = catalog ] && GATEWAY=""
RUN_LABEL="pier.bench.run=$$"
export PIER_ADDR="http://127.0.0.1:$HTTP_PORT"
SECRET="bench-secret"

cleanup() {
  [ -n "${DEV_PID:-}" ] && kill "$DEV_PID" 2>/dev/null && wait "$DEV_PID" 2>/dev/null || true
  docker ps -aq --filter "label=$RUN_LABEL" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker images --format '{{.Repository}}:{{.Tag}}' | grep "^127.0.0.1:$REG_PORT/" | xargs -r docker rmi -f >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$PIER" dev --data-dir "$WORK/data" --http-port "$HTTP_PORT" --raft-port "$RAFT_PORT" \
  --registry-port "$REG_PORT" --gateway-port "$GW_PORT" --https-port "$HTTPS_PORT" --dns-port "$DNS_PORT" \
  --container-label pier.test=1 --container-label "$RUN_LABEL" \
  >"$WORK/dev.log" 2>&1 &
DEV_PID=$!
for _ in $(seq 1 300); do curl -fs "$PIER_ADDR/api/v1/status" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "$PIER_ADDR/api/v1/status" >/dev/null 2>&1 || { tail -20 "$WORK/dev.log" >&2; exit 1; }

REPO="$WORK/site"
mkdir -p "$REPO/www"
cd "$REPO"
git init -q -b main
git config user.email bench@pier.invalid
git config user.name "Pier Bench"
cp /bin/busybox busybox
cat > Dockerfile <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
COPY www /www
CMD ["/bin/busybox","httpd","-f","-p","8080","-h","/www"]
DOCKERFILE
cat > pier.toml <<TOML
name = "bench"
count = $COUNT
port = 8080

[health]
http = "/index.html"
interval = "1s"

[deploy]
min_healthy_time = "1s"
drain_delay = "1s"
TOML
echo "version 0" > www/index.html
git add -A && git commit -qm "version 0"

"$PIER" pipeline create bench --repo "$REPO" --poll off --webhook-secret "$SECRET" >/dev/null
# Wait for the first deployment (not measured: it includes the first image build and pull).
for _ in $(seq 1 600); do
  state="$(curl -fs "$PIER_ADDR/api/v1/pipelines/bench/runs/1" | jq -r .status.state)"
  case "$state" in succeeded) break ;; failed|rolled_back|interrupted) echo "first run $state" >&2; exit 1 ;; esac
  sleep 0.2
done

# Pages served by every passing instance (or through the gateway), one per line.
served() {
  if [ -n "$GATEWAY" ]; then
    # Several requests: the gateway spreads them over the replicas.
    for _ in 1 2 3 4; do curl -fs -m 2 -H "Host: bench.localhost" "http://$GATEWAY/index.html" || echo "no answer"; done
    return
  fi
  curl -fs "$PIER_ADDR/v1/health/service/bench?passing" \
    | jq -r '.[] | "\(.Service.Address):\(.Service.Port)"' \
    | while read -r target; do curl -fs -m 2 "http://$target/index.html" || echo "unreachable"; done
}

printf '%-4s %8s %8s %8s   %s\n' iter first_s all_s run_s "stage start times within the run"
results=()
for i in $(seq 1 "$ITERATIONS"); do
  want="version $i"
  echo "$want" > www/index.html
  t0="$(now)"
  git commit -qam "$want"
  sha="$(git rev-parse HEAD)"
  body="{\"ref\":\"refs/heads/main\",\"after\":\"$sha\",\"repository\":{\"full_name\":\"bench/site\"},\"head_commit\":{\"id\":\"$sha\",\"message\":\"$want\"}}"
  sig="$(printf '%s' "$body" | python3 -c 'import hmac, hashlib, sys; print(hmac.new(sys.argv[1].encode(), sys.stdin.buffer.read(), hashlib.sha256).hexdigest())' "$SECRET")"
  run="$(curl -fs -X POST -H 'X-GitHub-Event: push' -H "X-Hub-Signature-256: sha256=$sig" \
    -H 'Content-Type: application/json' -d "$body" "$PIER_ADDR/api/v1/pipelines/bench/hooks/push" | jq -r .run.number)"
  first=""; all=""
  while true; do
    pages="$(served)"
    t="$(now)"
    if [ -z "$first" ] && grep -qx "$want" <<<"$pages"; then first="$(calc "$t - $t0")"; fi
    if [ -n "$pages" ] && ! grep -vqx "$want" <<<"$pages"; then all="$(calc "$t - $t0")"; break; fi
    if awk "BEGIN { exit !($t - $t0 > 120) }"; then echo "iteration $i: not served after 120 s" >&2; exit 1; fi
    sleep 0.05
  done
  while true; do
    r="$(curl -fs "$PIER_ADDR/api/v1/pipelines/bench/runs/$run")"
    state="$(jq -r .status.state <<<"$r")"
    case "$state" in queued|building|pushing|deploying) sleep 0.1 ;; *) break ;; esac
  done
  [ "$state" = succeeded ] || { echo "run $run ended $state" >&2; exit 1; }
  run_s="$(calc "$(jq -r .finished_at_ms <<<"$r") / 1000 - $t0")"
  stages="$(curl -fs "$PIER_ADDR/api/v1/pipelines/bench/runs/$run/logs" | grep -E '^\[\+[0-9.]+s\] ==> (checkout|build|push|deploy|succeeded)' | sed -E 's/^\[\+([0-9.]+)s\] ==> ([a-z]+).*/\2@\1s/' | tr '\n' ' ')"
  printf '%-4s %8.2f %8.2f %8.2f   %s\n' "$i" "$first" "$all" "$run_s" "$stages"
  results+=("$all")
done

sorted="$(printf '%s\n' "${results[@]}" | sort -g)"
median="$(sed -n "$(( (ITERATIONS + 1) / 2 ))p" <<<"$sorted")"
echo "git commit → new version served by every routed instance: median ${median} s over $ITERATIONS (min $(head -1 <<<"$sorted"), max $(tail -1 <<<"$sorted")); goal < 10 s"
