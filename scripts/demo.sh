#!/usr/bin/env bash
# README command 1: runs the edge locally — Valkey (redis-server), the Next.js
# storefront (the fixture app with the real cache handler), cedra-spoa and
# HAProxy with the shipped haproxy/ configuration — prints a walkthrough with
# real output, then stays up until Ctrl-C, which stops everything it started.
#
# Ports (loopback only): CEDRA_DEMO_HTTP (8080), CEDRA_DEMO_SPOA (12345),
# CEDRA_DEMO_ORIGIN (3000), CEDRA_DEMO_REDIS (6390), CEDRA_DEMO_DELIVER (12346).
# CEDRA_DEMO_ONESHOT=1 exits after the walkthrough.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
http_port=${CEDRA_DEMO_HTTP:-8080}
spoa_port=${CEDRA_DEMO_SPOA:-12345}
origin_port=${CEDRA_DEMO_ORIGIN:-3000}
redis_port=${CEDRA_DEMO_REDIS:-6390}
deliver_port=${CEDRA_DEMO_DELIVER:-12346}
variant=${CEDRA_DEMO_NEXT:-v16}
work=$(mktemp -d /tmp/cedra-demo.XXXXXX)
pids=()
secret=demo-secret

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
wait_port() { # wait_port PORT WHAT [TRIES]
  local i
  for i in $(seq 1 "${3:-100}"); do
    if ! port_free "$1"; then return 0; fi
    sleep 0.1
  done
  echo "demo: $2 did not start on port $1; its log:" >&2
  tail -30 "$work/$2.log" >&2 || true
  exit 1
}

say "== Installing dependencies and building (first run: a few minutes for Next.js)"
"$top/scripts/deps.sh"
"$top/scripts/build.sh" "$top/build"
proj=$(FIXTURE_REVALIDATE=${CEDRA_DEMO_REVALIDATE:-30} "$top/tests/fixtures/storefront/setup.sh" "$variant" stable)
node "$top/spoa/cedra-routes.mjs" "$proj/.next" > "$work/stable.routes"

for p in "$http_port" "$spoa_port" "$origin_port" "$redis_port" "$deliver_port"; do
  port_free "$p" || { echo "demo: port $p is in use (see CEDRA_DEMO_* at the top of $0)" >&2; exit 1; }
done

say "== Starting Valkey (redis-server :$redis_port), Next.js $variant (:$origin_port), cedra-spoa (:$spoa_port), HAProxy (:$http_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
wait_port "$redis_port" redis
REDIS_URL="redis://127.0.0.1:$redis_port" CACHE_KEY_PREFIX="storefront:" REVALIDATE_SECRET=$secret \
  "$top/tests/fixtures/storefront/start.sh" "$variant" "$origin_port" stable >"$work/next.log" 2>&1 &
pids+=($!)
cat >"$work/cedra-spoa.conf" <<CONF
listen 127.0.0.1:$spoa_port
threads 2
stats-socket $work/spoa.sock
valkey 127.0.0.1:$redis_port
pool stable key-prefix storefront: routes $work/stable.routes
deliver 127.0.0.1:$deliver_port
session-cookie sid
locales fr nl en
default-locale fr
CONF
"$top/build/spoa/cedra-spoa" -f "$work/cedra-spoa.conf" >"$work/cedra-spoa.log" 2>&1 &
pids+=($!)
wait_port "$spoa_port" cedra-spoa
wait_port "$origin_port" next 300
CEDRA_HTTP_BIND="127.0.0.1:$http_port" CEDRA_SPOA_ADDR="127.0.0.1:$spoa_port" \
CEDRA_ORIGIN_ADDR="127.0.0.1:$origin_port" CEDRA_HAPROXY_SOCK="$work/haproxy.sock" \
CEDRA_DELIVER_ADDR="127.0.0.1:$deliver_port" CEDRA_SPOA_CHECK_INTER=500ms \
CEDRA_SPOE_TIMEOUT_PROCESSING=${CEDRA_DEMO_SPOE_TIMEOUT:-200ms} \
  haproxy -db -f "$top/haproxy/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)
wait_port "$http_port" haproxy

show() { # show PATH [curl args...]: status, the edge's headers, the page's title
  local path=$1; shift
  echo "\$ curl -si http://127.0.0.1:$http_port$path $*"
  curl -si "$@" "http://127.0.0.1:$http_port$path" | tr -d '\r' |
    grep -aiE '^(HTTP/|x-cedra|x-nextjs-cache|location|etag|set-cookie|vary:)|<h1' |
    sed -e 's/.*\(<h1[^<]*\).*/    page: \1/' -e 's/^/    /' | head -12
}

say "== Locale: no prefix, Accept-Language nl-BE -> redirect to /nl (Vary: Accept-Language, Cookie)"
show /products/chair -H 'Accept-Language: nl-BE,nl;q=0.9,en;q=0.5'
say "== ... and the NEXT_LOCALE cookie wins over Accept-Language"
show /products/chair -H 'Accept-Language: nl' -H 'Cookie: NEXT_LOCALE=en'

say "== First request to an ISR page: MISS, Next.js renders it and writes it to Valkey"
for i in $(seq 1 30); do # wait until Next.js and Valkey answer through the edge
  curl -s -o /dev/null "http://127.0.0.1:$http_port/fr/products/chair" && break; sleep 0.2
done
redis-cli -p "$redis_port" FLUSHALL >/dev/null
show /fr/products/chair
say "== Next request: HIT, served by HAProxy from the edge (Next.js not asked)"
for i in $(seq 1 50); do
  curl -si "http://127.0.0.1:$http_port/fr/products/chair" | grep -qi '^x-cedra-cache: HIT' && break
  sleep 0.1
done
show /fr/products/chair
etag=$(curl -si "http://127.0.0.1:$http_port/fr/products/chair" | tr -d '\r' | awk -F': ' 'tolower($1)=="etag"{print $2}')
say "== If-None-Match with that ETag: 304 from the edge"
show /fr/products/chair -H "If-None-Match: $etag"

say "== revalidateTag(product-chair) through the app's API: the edge stops serving the old page"
curl -s "http://127.0.0.1:$origin_port/api/revalidate?secret=$secret&tag=product-chair"; echo
show /fr/products/chair
for i in $(seq 1 50); do
  curl -si "http://127.0.0.1:$http_port/fr/products/chair" | grep -qi '^x-cedra-cache: HIT' && break
  sleep 0.1
done
say "== ... and the regenerated page is served from the edge again"
show /fr/products/chair

say "== A session cookie: never answered from the shared cache (BYPASS)"
show /fr/products/chair -H 'Cookie: sid=abc'

say "== HAProxy's SPOP health check of cedra-spoa (show stat on HAProxy's Runtime API)"
for i in $(seq 1 50); do
  st=$(echo "show stat" | socat - "UNIX-CONNECT:$work/haproxy.sock" | awk -F, '$1=="spoa_cedra" && $2=="spoa1" {print $18" "$37}')
  case "$st" in "UP L7OK") break ;; esac
  sleep 0.1
done
echo "    spoa_cedra/spoa1: status check = $st"

say "== cedra-spoa's operator socket: show stat"
echo "show stat" | socat - "UNIX-CONNECT:$work/spoa.sock" | grep -vE ',0$' | sed 's/^/    /'

say "== Valkey down: requests still reach the origin (fail open, x-cedra-cache: ERROR)"
kill -STOP "${pids[0]}"
show /fr/products/chair
kill -CONT "${pids[0]}"

say "== cedra-spoa's log (key=value lines)"
tail -n 4 "$work/cedra-spoa.log" | sed 's/^/    /'

if [ "${CEDRA_DEMO_ONESHOT:-0}" = 1 ]; then
  say "demo done"
  exit 0
fi
say "The edge is up on http://127.0.0.1:$http_port/ — try /fr/products/chair, /nl, /en/about. Ctrl-C stops everything."
wait
