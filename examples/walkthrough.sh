#!/usr/bin/env bash
# The pier walkthrough, end to end: start `pier dev`, push an image, deploy a service with 3
# replicas in 2 zones, open it, roll out a new version, watch an automatic rollback, then
# create a pipeline and push a commit, and run examples/shop (web -> api -> db, calling each
# other by name, with a secret, an env_file, a named volume and a [files] template). Every
# step checks its outcome; the script exits non-zero on the first one that is not what the
# walkthrough promises.
#
#   examples/walkthrough.sh                  # default ports (API 8500, registry 5000)
#   FREE_PORTS=1 examples/walkthrough.sh     # free ports (CI)
#   PIER=/path/to/pier examples/walkthrough.sh
#
# Needs: Docker, git, curl, jq, python3, busybox-static (/bin/busybox). Leaves nothing behind:
# containers, the pier network and named volumes carry a per-run label and are removed at the
# end, as are the images it built; secret files live in the run's temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
fail() { echo "walkthrough failed: $*" >&2; exit 1; }
for tool in docker git curl jq python3; do
  command -v "$tool" >/dev/null || fail "$tool is required"
done
[ -x /bin/busybox ] || fail "/bin/busybox is required (apt-get install busybox-static)"
docker info >/dev/null 2>&1 || fail "the Docker engine does not answer"

if [ -z "${PIER:-}" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
  step "building pier (cargo build --release -p pier)"
  cargo build --release -q -p pier
  PIER="$CARGO_TARGET_DIR/release/pier"
fi
pier() { "$PIER" "$@"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
if [ -n "${FREE_PORTS:-}" ]; then
  HTTP_PORT="$(free_port)"; RAFT_PORT="$(free_port)"; REG_PORT="$(free_port)"; GW_PORT="$(free_port)"
  DNS_PORT="$(free_port)"; HTTPS_PORT="$(free_port)"
else
  HTTP_PORT=8500; RAFT_PORT=8300; REG_PORT=5000; GW_PORT=8080; DNS_PORT=8600; HTTPS_PORT=8443
fi
export PIER_ADDR="http://127.0.0.1:$HTTP_PORT"
REGISTRY="127.0.0.1:$REG_PORT"
WORK="$(mktemp -d)"
LABEL="pier.example.run=$$"

cleanup() {
  set +e
  for pid in ${AGENT_PID:-} ${DEV_PID:-}; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  docker ps -aq --filter "label=$LABEL" | xargs -r docker rm -f >/dev/null 2>&1
  # The pier network this run's agent created (a network it found already there stays).
  docker network ls -q --filter "label=$LABEL" | xargs -r docker network rm >/dev/null 2>&1
  # Named volumes (examples/shop's db) carry the agents' labels too.
  docker volume ls -q --filter "label=$LABEL" | xargs -r docker volume rm -f >/dev/null 2>&1
  docker images --format '{{.Repository}}:{{.Tag}}' | grep "^$REGISTRY/" | xargs -r docker rmi -f >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
step "1. start pier dev (API $PIER_ADDR, registry $REGISTRY, gateway 127.0.0.1:$GW_PORT, agent in zone a)"
# Both nodes run their tasks on this run's own pier network (its bridge address serves
# *.internal and DNS to the containers) and keep secret files under $WORK.
NODE_ARGS=(--network "pier-walk-$$" --secrets-dir "$WORK/secrets")
DEV_ARGS=(dev --data-dir "$WORK/data" --http-port "$HTTP_PORT" --raft-port "$RAFT_PORT"
          --registry-port "$REG_PORT" --dns-port "$DNS_PORT" --gateway-port "$GW_PORT"
          --https-port "$HTTPS_PORT" --zone a --container-label "$LABEL" "${NODE_ARGS[@]}")
GATEWAY="127.0.0.1:$GW_PORT"
# "$PIER", not the pier() function: a backgrounded function runs in a subshell, and $! would
# be that subshell, which cleanup() would kill while pier itself lived on.
"$PIER" "${DEV_ARGS[@]}" >"$WORK/dev.log" 2>&1 &
DEV_PID=$!
for _ in $(seq 1 300); do curl -fs "$PIER_ADDR/api/v1/status" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "$PIER_ADDR/api/v1/status" >/dev/null 2>&1 || { tail -20 "$WORK/dev.log" >&2; fail "pier dev did not start"; }
pier status

step "   a second node agent in zone b (as on another machine)"
"$PIER" agent --server "$PIER_ADDR" --zone b --name node-b --registry-port 0 --container-label "$LABEL" \
  "${NODE_ARGS[@]}" >"$WORK/agent-b.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 1 100); do [ "$(pier node ls --json | jq length)" -ge 2 ] && break; sleep 0.1; done
pier node ls

# ---------------------------------------------------------------------------------------------
build_image() { # build_image TAG PAGE [without-healthz]
  local dir="$WORK/build-$1"
  cp -r "$ROOT/examples/hello" "$dir"
  cp /bin/busybox "$dir/busybox"
  echo "$2" > "$dir/www/index.html"
  [ "${3:-}" = "without-healthz" ] && rm "$dir/www/healthz"
  docker build -q -t "$REGISTRY/hello:$1" "$dir" >/dev/null
  docker push -q "$REGISTRY/hello:$1" >/dev/null
  echo "pushed $REGISTRY/hello:$1"
}
service_file() { sed "s#127.0.0.1:5000/hello:v1#$REGISTRY/hello:$1#" "$ROOT/examples/hello/hello.toml" > "$WORK/hello-$1.toml"; echo "$WORK/hello-$1.toml"; }

# What users see: a few requests through the gateway (it spreads them over the replicas).
served() {
  for _ in 1 2 3 4 5 6; do curl -fs -m 2 -H "Host: $1.localhost" "http://$GATEWAY/" || echo "(no answer)"; done
}
expect_served() { # expect_served SERVICE TEXT TIMEOUT_S
  local deadline=$((SECONDS + $3)) pages
  while true; do
    pages="$(served "$1")"
    if [ -n "$pages" ] && ! grep -vqxF "$2" <<<"$pages"; then echo "$pages" | sort | uniq -c; return 0; fi
    [ $SECONDS -lt $deadline ] || fail "$1 does not serve '$2' after $3 s; it serves: $pages"
    sleep 0.2
  done
}

step "2. push an image: a FROM scratch busybox httpd, to pier's own registry"
build_image v1 '<h1>hello from pier, version 1</h1>'
curl -fs "http://$REGISTRY/v2/hello/tags/list"; echo

step "3. deploy 3 replicas across zones a and b (pier deploy waits until they are healthy)"
cat "$(service_file v1)"
pier deploy "$(service_file v1)"
pier service ps hello
zones="$(pier service ps hello --json | jq -r '[.[] | select(.display_state == "healthy") | .task.zone] | group_by(.) | map("\(.[0])=\(length)") | join(" ")')"
echo "healthy tasks per zone: $zones"
grep -q 'a=' <<<"$zones" && grep -q 'b=' <<<"$zones" || fail "the replicas are not spread over zones a and b ($zones)"

step "4. open it"
echo "curl -H 'Host: hello.localhost' http://$GATEWAY/"
expect_served hello '<h1>hello from pier, version 1</h1>' 30

step "5. roll out version 2 (rolling, no downtime)"
build_image v2 '<h1>hello from pier, version 2</h1>'
pier deploy "$(service_file v2)"
expect_served hello '<h1>hello from pier, version 2</h1>' 30

step "6. a broken version 3 (its health check fails): pier rolls back by itself"
build_image v3 '<h1>hello from pier, version 3</h1>' without-healthz
if pier deploy "$(service_file v3)"; then fail "the broken version was reported as deployed"; fi
echo "pier deploy exited non-zero, as it should"
pier service inspect hello --json | jq '{revision: .service.revision, deployment: .deployment.status, reason: .deployment.reason}'
expect_served hello '<h1>hello from pier, version 2</h1>' 30

# ---------------------------------------------------------------------------------------------
step "7. a pipeline: every commit to a git repository is built, pushed and deployed"
REPO="$WORK/site"
cp -r "$ROOT/examples/hello" "$REPO"
cp /bin/busybox "$REPO/busybox"
# examples/hello ignores the copied binary; this repository commits it.
rm "$REPO/hello.toml" "$REPO/.gitignore"
cat > "$REPO/pier.toml" <<'TOML'
# No image: the pipeline fills it in with <registry>/site:<short-sha>.
name = "site"
count = 2
port = 8080

[health]
http = "/healthz"
interval = "1s"
TOML
echo '<h1>site, first commit</h1>' > "$REPO/www/index.html"
git -C "$REPO" init -q -b main
git -C "$REPO" -c user.name=Walkthrough -c user.email=walk@pier.invalid add -A
git -C "$REPO" -c user.name=Walkthrough -c user.email=walk@pier.invalid commit -qm "first commit"
pier pipeline create site --repo "$REPO" --poll 2s --webhook-secret walkthrough-secret
pier pipeline logs site/1 --follow
expect_served site '<h1>site, first commit</h1>' 30

step "   push a commit: picked up by polling within seconds"
echo '<h1>site, second commit</h1>' > "$REPO/www/index.html"
git -C "$REPO" -c user.name=Walkthrough -c user.email=walk@pier.invalid commit -qam "second commit"
for _ in $(seq 1 100); do curl -fs "$PIER_ADDR/api/v1/pipelines/site/runs/2" >/dev/null && break; sleep 0.1; done
pier pipeline logs site/2 --follow
expect_served site '<h1>site, second commit</h1>' 30

step "   or tell pier at once with the push webhook, as GitHub or Gitea would"
echo '<h1>site, third commit</h1>' > "$REPO/www/index.html"
git -C "$REPO" -c user.name=Walkthrough -c user.email=walk@pier.invalid commit -qam "third commit"
sha="$(git -C "$REPO" rev-parse HEAD)"
body="{\"ref\":\"refs/heads/main\",\"after\":\"$sha\",\"repository\":{\"full_name\":\"me/site\"}}"
sig="$(printf '%s' "$body" | python3 -c 'import hmac, hashlib, sys; print(hmac.new(sys.argv[1].encode(), sys.stdin.buffer.read(), hashlib.sha256).hexdigest())' walkthrough-secret)"
curl -fs -X POST -H 'X-GitHub-Event: push' -H "X-Hub-Signature-256: sha256=$sig" \
  -H 'Content-Type: application/json' -d "$body" "$PIER_ADDR/api/v1/pipelines/site/hooks/push" | jq -c .
pier pipeline logs site/3 --follow
expect_served site '<h1>site, third commit</h1>' 30
pier pipeline runs site
curl -fs "http://$REGISTRY/v2/site/tags/list"; echo

# ---------------------------------------------------------------------------------------------
step "8. an app of three services that call each other: web -> api -> db (examples/shop)"
APP_START=$SECONDS
SHOP="$WORK/shop"
cp -r "$ROOT/examples/shop" "$SHOP"
for svc in db api web; do
  cp /bin/busybox "$SHOP/$svc/busybox"
  docker build -q -t "$REGISTRY/shop-$svc:v1" "$SHOP/$svc" >/dev/null
  docker push -q "$REGISTRY/shop-$svc:v1" >/dev/null
  sed -i "s#127.0.0.1:5000/#$REGISTRY/#" "$SHOP/$svc/$svc.toml"
  echo "pushed $REGISTRY/shop-$svc:v1"
done
# The secret db's password file and api's DB_PASSWORD come from; never shown again by pier.
DB_PASSWORD="walkthrough-$$-$RANDOM"
printf '%s' "$DB_PASSWORD" | pier secret set db-password
pier secret ls

step "   web first: its tasks wait for api (needs), which waits for db"
pier deploy --detach "$SHOP/web/web.toml"
# (Captured, not piped to grep -q: with pipefail, a reader that stops early fails the pipe.)
for _ in $(seq 1 50); do web_ps="$(pier service ps web)"; grep -q 'waiting for api' <<<"$web_ps" && break; sleep 0.1; done
echo "$web_ps"
grep -q 'waiting for api' <<<"$web_ps" || fail "web's tasks do not wait for api"
pier deploy "$SHOP/db/db.toml"
pier deploy "$SHOP/api/api.toml"

all_healthy() { # all_healthy SERVICE COUNT: exactly COUNT tasks, every one healthy
  [ "$(pier service ps "$1" --json | jq --argjson n "$2" '(length == $n) and all(.display_state == "healthy")')" = true ]
}
for _ in $(seq 1 150); do all_healthy web 2 && break; sleep 0.2; done
for svc in db:1 api:2 web:2; do
  pier service ps "${svc%:*}"
  all_healthy "${svc%:*}" "${svc#*:}" || fail "${svc%:*} does not have ${svc#*:} healthy tasks"
done

step "   web's [files]: api's healthy instances, rendered into the container by the agent"
web_container="$(docker ps -q --filter "label=$LABEL" --filter label=pier.service=web | awk "NR == 1")"
upstreams=""
for _ in $(seq 1 50); do
  upstreams="$(docker exec "$web_container" /bin/busybox cat /etc/shop/upstreams || true)"
  [ "$(grep -c : <<<"$upstreams" || true)" = 2 ] && break
  sleep 0.1
done
echo "/etc/shop/upstreams in $web_container:"
echo "$upstreams"
[ "$(grep -c : <<<"$upstreams" || true)" = 2 ] || fail "web's /etc/shop/upstreams does not list api's 2 instances"

visit() { curl -fs -m 10 -H 'Host: web.localhost' "http://$GATEWAY/"; }
visits_in() { sed -n 's/.*visits=\([0-9][0-9]*\).*/\1/p' <<<"$1"; }
step "   open web: each visit goes web -> api.internal -> db.internal, and db counts it"
echo "curl -H 'Host: web.localhost' http://$GATEWAY/"
page1="$(visit)" || fail "web does not answer through the gateway"
echo "$page1"
page2="$(visit)" || fail "web does not answer a second visit"
echo "$page2"
grep -q '^The Pier Shop: ' <<<"$page1" || fail "web's page lacks SHOP_NAME from its env_file: $page1"
grep -Eq 'visits=[0-9]+ db=[^ ]+ api=[^ ]+ web=[^ ]+' <<<"$page1" || fail "the page did not come through api and db: $page1"
n1="$(visits_in "$page1")"; n2="$(visits_in "$page2")"
[ "$n2" -eq $((n1 + 1)) ] || fail "db's counter did not go up by one per visit ($n1, then $n2)"
echo "db counted visit $n1, then $n2"

step "   the secret reached db (a file) and api (env), and pier never shows it"
db_container="$(docker ps -q --filter "label=$LABEL" --filter label=pier.service=db)"
api_container="$(docker ps -q --filter "label=$LABEL" --filter label=pier.service=api | awk "NR == 1")"
[ -n "$db_container" ] && [ -n "$api_container" ] || fail "no running container of db or api"
file="$(docker exec "$db_container" /bin/busybox stat -c '%a %u' /run/secrets/db-password)"
echo "db:  /run/secrets/db-password, mode and owner: $file"
[ "$file" = "400 1000" ] || fail "db's secret file is not mode 0400 owned by user 1000 ($file)"
[ "$(docker exec "$db_container" /bin/busybox cat /run/secrets/db-password)" = "$DB_PASSWORD" ] || fail "db's secret file does not hold the secret"
[ "$(docker exec "$api_container" /bin/busybox sh -c 'echo "$DB_PASSWORD"')" = "$DB_PASSWORD" ] || fail "api's DB_PASSWORD is not the secret"
echo "api: DB_PASSWORD is set"
db_addr="$(docker port "$db_container" 8080/tcp | awk "NR == 1")"
code="$(curl -s -o /dev/null -w '%{http_code}' "http://$db_addr/cgi-bin/visit")"
echo "db without the password (straight to its port $db_addr): HTTP $code"
[ "$code" = 403 ] || fail "db did not refuse a caller without the password (HTTP $code)"
shown="$(pier service inspect api --json; pier secret ls --json)"
if grep -qF "$DB_PASSWORD" <<<"$shown"; then fail "pier service inspect or pier secret ls shows the secret"; fi
echo "the value is in neither 'pier service inspect' nor 'pier secret ls'"

step "   kill db's container: the task restarts on the same volume and the count goes on"
docker kill "$db_container" >/dev/null
echo "killed $db_container"
deadline=$((SECONDS + 30))
until page3="$(visit)"; do
  [ $SECONDS -lt $deadline ] || fail "web does not answer 30 s after db's container was killed"
  sleep 0.2
done
echo "$page3"
n3="$(visits_in "$page3")"
[ -n "$n3" ] && [ "$n3" -gt "$n2" ] || fail "db's data did not survive the kill (visits=$n2 before, '$n3' after)"
db_task() { sed -n 's/.* db=\([^ ]*\).*/\1/p' <<<"$1"; }
[ "$(db_task "$page3")" != "$(db_task "$page2")" ] || fail "the visit after the kill was counted by the killed task $(db_task "$page2")"
[ -z "$(docker ps -q --filter id="$db_container")" ] || fail "the killed container is still running"
pier service ps db
pier volume ls
echo "visits went on from $n2 (task $(db_task "$page2")) to $n3 (task $(db_task "$page3")) on the same volume; the app step took $((SECONDS - APP_START)) s"

step "done: every step of the walkthrough behaved as described"
