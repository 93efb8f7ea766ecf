#!/usr/bin/env bash
# Pushes the layers (blobs over 1 MB) of an OCI layout to a registry with curl,
# one POST + one PATCH with the whole blob + PUT ?digest= each, and prints
# the milliseconds of each step. curl does not hash, so this shows how fast
# the registry itself ingests a blob, without skopeo's own cost.
#
#   bench/registry/curl_push.sh HOST:PORT LAYOUT_DIR [REPO]
set -euo pipefail
addr="$1"
layout="$2"
repo="${3:-bench/curl}"
abs() { case "$1" in http*) echo "$1" ;; *) echo "http://$addr$1" ;; esac; }
header() { tr -d '\r' | awk -F': ' -v h="$1" 'tolower($1) == h { print $2 }'; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
for f in "$layout"/blobs/sha256/*; do
  [ "$(stat -c %s "$f")" -gt 1000000 ] || continue
  digest="sha256:$(basename "$f")"
  t0=$(date +%s%N)
  loc=$(curl -fsS -D - -o /dev/null -X POST "http://$addr/v2/$repo/blobs/uploads/" | header location)
  t1=$(date +%s%N)
  loc=$(curl -fsS -D - -o /dev/null -X PATCH -H 'Content-Type: application/octet-stream' -T "$f" "$(abs "$loc")" | header location)
  t2=$(date +%s%N)
  loc="$(abs "$loc")"
  case "$loc" in *\?*) sep='&' ;; *) sep='?' ;; esac
  curl -fsS -o /dev/null -X PUT "$loc${sep}digest=$digest"
  t3=$(date +%s%N)
  echo "POST $(ms "$t0" "$t1") ms  PATCH $(ms "$t1" "$t2") ms  PUT $(ms "$t2" "$t3") ms  $digest"
done
