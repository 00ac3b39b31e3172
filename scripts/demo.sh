#!/usr/bin/env bash
# README command 1: runs the edge locally — an origin, cedra-spoa and HAProxy
# with the shipped haproxy/ configuration — prints a walkthrough with real
# output, then stays up until Ctrl-C, which stops everything it started.
#
# Ports (loopback only): CEDRA_DEMO_HTTP (8080), CEDRA_DEMO_SPOA (12345),
# CEDRA_DEMO_ORIGIN (3000). CEDRA_DEMO_ONESHOT=1 exits after the walkthrough.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
http_port=${CEDRA_DEMO_HTTP:-8080}
spoa_port=${CEDRA_DEMO_SPOA:-12345}
origin_port=${CEDRA_DEMO_ORIGIN:-3000}
work=$(mktemp -d /tmp/cedra-demo.XXXXXX)
pids=()

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo; say "stopping"; exit 0' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # wait_port PORT WHAT
  local i
  for i in $(seq 1 100); do
    if ! port_free "$1"; then return 0; fi
    sleep 0.1
  done
  echo "demo: $2 did not start on port $1; its log:" >&2
  cat "$work/$2.log" >&2 || true
  exit 1
}

say "== Installing dependencies and building"
"$top/scripts/deps.sh"
"$top/scripts/build.sh" "$top/build"

for p in "$http_port" "$spoa_port" "$origin_port"; do
  port_free "$p" || { echo "demo: port $p is in use (set CEDRA_DEMO_HTTP/SPOA/ORIGIN)" >&2; exit 1; }
done

say "== Starting the origin (127.0.0.1:$origin_port), cedra-spoa (:$spoa_port), HAProxy (:$http_port)"
python3 "$top/scripts/demo_origin.py" --port "$origin_port" >"$work/origin.log" 2>&1 &
pids+=($!)
CEDRA_SPOA_LISTEN="127.0.0.1:$spoa_port" \
  "$top/build/spoa/cedra-spoa" -f "$top/docs/cedra-spoa.conf" >"$work/cedra-spoa.log" 2>&1 &
pids+=($!)
wait_port "$origin_port" origin
wait_port "$spoa_port" cedra-spoa
CEDRA_HTTP_BIND="127.0.0.1:$http_port" CEDRA_SPOA_ADDR="127.0.0.1:$spoa_port" \
CEDRA_ORIGIN_ADDR="127.0.0.1:$origin_port" CEDRA_HAPROXY_SOCK="$work/haproxy.sock" \
CEDRA_SPOA_CHECK_INTER=500ms \
  haproxy -db -f "$top/haproxy/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)
wait_port "$http_port" haproxy

show() { # show PATH [curl args...]: the request and the headers the edge added
  local path=$1; shift
  echo "\$ curl -si http://127.0.0.1:$http_port$path $*"
  curl -si "$@" "http://127.0.0.1:$http_port$path" | tr -d '\r' |
    grep -iE '^(HTTP/|x-cedra|content-type)|<h1>' | sed 's/^/    /'
}

say "== A request under /fr: cedra-spoa tells HAProxy the locale (x-cedra-locale)"
show /fr/products/chair
say "== Under /nl, with a query string"
show "/nl/products/table?colour=oak"
say "== No locale prefix: no locale variable (redirects come with the locale issue)"
show /de/products/chair

say "== HAProxy's SPOP health check of cedra-spoa (show stat on the Runtime API socket)"
for i in $(seq 1 50); do
  st=$(echo "show stat" | socat - "UNIX-CONNECT:$work/haproxy.sock" | awk -F, '$1=="spoa_cedra" && $2=="spoa1" {print $18" "$37}')
  case "$st" in "UP L7OK") break ;; esac
  sleep 0.1
done
echo "    spoa_cedra/spoa1: status check = $st"

say "== Agent down: requests still reach the origin (fail open)"
kill "${pids[1]}"; wait "${pids[1]}" 2>/dev/null || true
show /fr/products/chair
CEDRA_SPOA_LISTEN="127.0.0.1:$spoa_port" \
  "$top/build/spoa/cedra-spoa" -f "$top/docs/cedra-spoa.conf" >>"$work/cedra-spoa.log" 2>&1 &
pids[1]=$!
wait_port "$spoa_port" cedra-spoa
say "== Agent back"
for i in $(seq 1 50); do
  curl -si "http://127.0.0.1:$http_port/en/" | grep -qi '^x-cedra-locale: en' && break
  sleep 0.1
done
show /en/

say "== cedra-spoa's log (key=value lines)"
tail -n 5 "$work/cedra-spoa.log" | sed 's/^/    /'

if [ "${CEDRA_DEMO_ONESHOT:-0}" = 1 ]; then
  say "demo done"
  exit 0
fi
say "The edge is up on http://127.0.0.1:$http_port/ — Ctrl-C stops everything."
wait
