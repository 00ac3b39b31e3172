#!/usr/bin/env bash
# README command 1: the edge, locally, with a canary. Starts Valkey
# (redis-server), two builds of the Next.js fixture storefront ("stable" and
# "canary", each with its own cache key prefix and route table), the Consul
# double with both registered as the storefront service (the canary with the
# canary tag), cedra-spoa, HAProxy with the shipped haproxy/haproxy.cfg and
# cedra-agent (Consul -> HAProxy's server slots and cedra-spoa's pools), prints
# a walkthrough with real output, then stays up until Ctrl-C, which stops
# everything it started.
#
# Ports (loopback only): CEDRA_DEMO_HTTP (8080), CEDRA_DEMO_SPOA (12345),
# CEDRA_DEMO_ORIGIN (3000, the stable build), CEDRA_DEMO_CANARY (3001, the
# canary build), CEDRA_DEMO_REDIS (6390), CEDRA_DEMO_DELIVER (12346),
# CEDRA_DEMO_CONSUL (8500).
# CEDRA_DEMO_ONESHOT=1 exits after the walkthrough. CEDRA_SPOA and CEDRA_AGENT
# name prebuilt binaries (then nothing is built); CEDRA_DEMO_NEXT picks the
# fixture variant (v16; v15 when Node.js is older than 20.9).
# CEDRA_DEMO_SPOE_TIMEOUT (500ms) and CEDRA_DEMO_VALKEY_TIMEOUT (250ms): the
# edge's SPOE processing and Valkey timeouts (slow, instrumented builds).
# Every process it starts is printed as "demo: started NAME pid PID"; each
# runs in a session of its own and is stopped by this script, by pid.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
http_port=${CEDRA_DEMO_HTTP:-8080}
spoa_port=${CEDRA_DEMO_SPOA:-12345}
origin_port=${CEDRA_DEMO_ORIGIN:-3000}
canary_port=${CEDRA_DEMO_CANARY:-3001}
redis_port=${CEDRA_DEMO_REDIS:-6390}
deliver_port=${CEDRA_DEMO_DELIVER:-12346}
consul_port=${CEDRA_DEMO_CONSUL:-8500}
oneshot=${CEDRA_DEMO_ONESHOT:-0}
share=20           # percent of new users drawn into the canary
secret=demo-secret
work=$(mktemp -d /tmp/cedra-demo.XXXXXX)
names=()
pids=()

bold='' plain=''
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; fi
say() { printf '\n%s%s%s\n' "$bold" "$*" "$plain"; }
indent() { sed 's/^/    /'; }

alive() { # a child that exited stays a zombie until reaped: not alive
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }
  [ "${st%% *}" != Z ]
}

# Stops what the demo started, last started first (cedra-agent deregisters
# from Consul before the double goes away; HAProxy before cedra-spoa), each
# by pid: SIGTERM, then SIGKILL if it is still there after 10 s.
cleanup() {
  local i p n
  trap '' INT TERM HUP
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    p=${pids[i]}
    alive "$p" || continue
    kill -TERM "$p" 2>/dev/null || true
    kill -CONT "$p" 2>/dev/null || true # Valkey may be frozen (step 10)
    for ((n = 0; n < 100; n++)); do alive "$p" || break; sleep 0.1; done
    if alive "$p"; then
      echo "demo: ${names[i]} (pid $p) ignored SIGTERM for 10 s: SIGKILL" >&2
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$work" ] && [ "${CEDRA_DEMO_KEEP:-0}" != 1 ]; then rm -rf "$work"; fi
  echo "demo: stopped"
}
trap cleanup EXIT
trap 'echo; say "== stopping"; exit 0' INT TERM HUP

die() { echo "demo: $*" >&2; exit 1; }
fail_start() { # fail_start NAME WHY
  echo "demo: $1 $2; the end of its log ($work/$1.log):" >&2
  tail -n 30 "$work/$1.log" >&2 || true
  exit 1
}

# spawn NAME COMMAND...: in the background, output to $work/NAME.log. In a
# session of its own, so that a Ctrl-C in the terminal reaches only this
# script, which stops everything in order (a daemon that got the SIGINT too
# would exit in whatever order the race gives).
spawn() {
  local name=$1
  shift
  setsid "$@" >"$work/$name.log" 2>&1 &
  names+=("$name")
  pids+=($!)
  echo "demo: started $name pid $! (log $work/$name.log)"
}
pid_of() {
  local i
  for i in "${!names[@]}"; do
    if [ "${names[i]}" = "$1" ]; then echo "${pids[i]}"; fi
  done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# wait_for NAME SECONDS COMMAND...: until COMMAND succeeds; NAME must stay up.
wait_for() {
  local name=$1 secs=$2 n pid
  shift 2
  pid=$(pid_of "$name")
  for ((n = 0; n < secs * 10; n++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    alive "$pid" || fail_start "$name" "exited during start"
    sleep 0.1
  done
  fail_start "$name" "did not get ready within ${secs} s ($*)"
}
listening() { ! port_free "$1"; }
# poll SECONDS COMMAND...: until COMMAND succeeds, false after SECONDS.
poll() {
  local n secs=$1
  shift
  for ((n = 0; n < secs * 10; n++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}

# ---- install, build ---------------------------------------------------------------
say "== Installing dependencies and building (first run: a few minutes for Next.js)"
"$top/scripts/deps.sh"
if [ -n "${CEDRA_SPOA:-}" ] && [ -n "${CEDRA_AGENT:-}" ]; then
  spoa_bin=$CEDRA_SPOA
  agent_bin=$CEDRA_AGENT
  echo "demo: using $spoa_bin and $agent_bin"
else
  "$top/scripts/build.sh" "$top/build"
  spoa_bin=$top/build/spoa/cedra-spoa
  agent_bin=$top/build/agent/cedra-agent
fi
# Next.js 16 needs Node.js >= 20.9; Debian 12's own Node.js is 18.
variant=${CEDRA_DEMO_NEXT:-}
if [ -z "$variant" ]; then
  variant=v16
  node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=9)?0:1)' ||
    variant=v15
fi
mkdir -p "$work/routes"
projs=()
for build in stable canary; do
  proj=$(FIXTURE_REVALIDATE=${CEDRA_DEMO_REVALIDATE:-30} "$top/tests/fixtures/storefront/setup.sh" "$variant" "$build")
  projs+=("$proj")
  # what cedra-agent's "routes" names for this build: where its pages live in Valkey
  node "$top/spoa/cedra-routes.mjs" "$proj/.next" >"$work/routes/$build.table"
done
# The catalogue the storefront renders; step 3 edits it.
cp "${projs[0]}/data/products.json" "$work/products.json"

for p in "$http_port" "$spoa_port" "$origin_port" "$canary_port" "$redis_port" "$deliver_port" "$consul_port"; do
  port_free "$p" || die "port $p is in use (see CEDRA_DEMO_* at the top of $0)"
done

# ---- start ------------------------------------------------------------------------
say "== Starting Valkey :$redis_port, Next.js $variant stable :$origin_port and canary :$canary_port, Consul double :$consul_port, cedra-spoa :$spoa_port, HAProxy :$http_port, cedra-agent"
spawn redis-server redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no
wait_for redis-server 10 listening "$redis_port"

for build in stable canary; do
  port=$origin_port
  [ "$build" = canary ] && port=$canary_port
  spawn "next-$build" env REDIS_URL="redis://127.0.0.1:$redis_port" CACHE_KEY_PREFIX="storefront:$build:" \
    REVALIDATE_SECRET=$secret FIXTURE_DATA_FILE="$work/products.json" FIXTURE_REDIS_TIMEOUT_MS=400 \
    "$top/tests/fixtures/storefront/start.sh" "$variant" "$port" "$build"
done

spawn consul-double python3 "$top/tests/consul_double/consul_double.py" --bind 127.0.0.1 --port "$consul_port"
wait_for consul-double 10 curl -sf "http://127.0.0.1:$consul_port/v1/status/leader"

# allow-root: the demo's daemons run as whoever started it (root on a fresh
# machine, as the README says), on loopback and in a private directory.
cat >"$work/cedra-spoa.conf" <<CONF
allow-root
listen 127.0.0.1:$spoa_port
threads 2
stats-socket $work/spoa.sock
valkey 127.0.0.1:$redis_port
valkey-timeout ${CEDRA_DEMO_VALKEY_TIMEOUT:-250ms}
pool stable key-prefix storefront:stable: routes $work/routes/stable.table build stable
deliver 127.0.0.1:$deliver_port
haproxy-cache on
session-cookie sid
locales fr nl en
default-locale fr
CONF
spawn cedra-spoa "$spoa_bin" -f "$work/cedra-spoa.conf"
wait_for cedra-spoa 10 test -S "$work/spoa.sock"

# The shipped configuration; the stable build is also its backup "origin"
# server, used only until cedra-agent has filled the slots. The demo's
# timeouts (SPOE processing 500ms, valkey-timeout 250ms) leave room for a busy
# laptop: the walkthrough shows what the edge decides, not a timeout.
spawn haproxy env CEDRA_HTTP_BIND="127.0.0.1:$http_port" CEDRA_SPOA_ADDR="127.0.0.1:$spoa_port" \
  CEDRA_ORIGIN_ADDR="127.0.0.1:$origin_port" CEDRA_HAPROXY_SOCK="$work/haproxy.sock" \
  CEDRA_DELIVER_ADDR="127.0.0.1:$deliver_port" CEDRA_SPOA_CHECK_INTER=500ms \
  CEDRA_ORIGIN_CHECK_INTER=1s CEDRA_STABLE_SLOTS=4 CEDRA_CANARY_SLOTS=2 CEDRA_NBTHREAD=2 \
  CEDRA_SPOE_TIMEOUT_PROCESSING="${CEDRA_DEMO_SPOE_TIMEOUT:-500ms}" \
  haproxy -db -f "$top/haproxy/haproxy.cfg"
wait_for haproxy 10 test -S "$work/haproxy.sock"

wait_for next-stable 120 curl -sf "http://127.0.0.1:$origin_port/api/health"
wait_for next-canary 120 curl -sf "http://127.0.0.1:$canary_port/api/health"

# What Nomad does for the storefront job: one service registration per
# allocation, the canary with canary_tags, the build id in Meta. The double
# does not run HTTP checks: they stay as registered (passing).
register() { # register ID BUILD PORT TAGS_JSON
  curl -sf -X PUT --data-binary @- "http://127.0.0.1:$consul_port/v1/agent/service/register" <<JSON
{"ID": "$1", "Name": "storefront", "Tags": $4, "Address": "127.0.0.1", "Port": $3,
 "Meta": {"build_id": "$2"},
 "Check": {"Name": "health", "HTTP": "http://127.0.0.1:$3/api/health", "Interval": "5s",
           "Status": "passing"}}
JSON
}
register storefront-stable-1 stable "$origin_port" '["web"]' || die "registration in the Consul double failed"
register storefront-canary-1 canary "$canary_port" '["web", "canary"]' || die "registration in the Consul double failed"

cat >"$work/cedra-agent.conf" <<CONF
allow-root
service storefront
backend stable storefront_stable slots stable
backend canary storefront_canary slots canary
canary-tag canary
build-key build_id
canary-weight-key canary_weight
canary-weight $share
panic-ratio 0.5
consul-addr 127.0.0.1:$consul_port
consul-wait 30s
consul-retry 200ms 5s
haproxy-socket $work/haproxy.sock
reconcile-interval 1s
drain-interval 200ms
drain-grace 5s
spoa-socket $work/spoa.sock
spoa-verify-interval 1s
key-prefix storefront:%{build}:
routes $work/routes/%{build}.table
register cedra-agent tags edge ttl 10s deregister-after 1m
stats-socket $work/agent.sock mode 600
metrics none
log stderr
log-level info
CONF
"$agent_bin" -c -f "$work/cedra-agent.conf" >/dev/null || die "cedra-agent -c -f $work/cedra-agent.conf failed"
spawn cedra-agent "$agent_bin" -f "$work/cedra-agent.conf"
wait_for cedra-agent 10 test -S "$work/agent.sock"

# ---- ready: the agent has filled both pools, HAProxy checks them UP, and
# cedra-spoa answers HAProxy -------------------------------------------------------
sock() { echo "$2" | socat - "UNIX-CONNECT:$1"; }
stat_rows() { # HAProxy show stat: pxname,svname,status,weight,check,addr,sessions of filled slots
  sock "$work/haproxy.sock" "show stat" | awk -F, '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    $1 ~ /^(storefront_stable|storefront_canary|spoa_cedra)$/ && $(col["status"]) != "MAINT" {
      printf "%-18s %-8s %-5s weight=%-3s check=%-6s addr=%-16s sessions=%s\n", $1, $2,
        $(col["status"]), $(col["weight"]), $(col["check_status"]), $(col["addr"]), $(col["stot"]) }'
}
ready() {
  local rows
  rows=$(stat_rows)
  grep -qE '^storefront_stable +stable[0-9]+ +UP ' <<<"$rows" &&
    grep -qE '^storefront_canary +canary[0-9]+ +UP ' <<<"$rows" &&
    grep -qE '^spoa_cedra +spoa1 +UP ' <<<"$rows" &&
    sock "$work/spoa.sock" "show pools" | grep -q '^canary,'
}
wait_for cedra-agent 30 ready

# ---- walkthrough --------------------------------------------------------------------
base=http://127.0.0.1:$http_port
STABLE="Cookie: cedra_pool=stable.stable"
CANARY="Cookie: cedra_pool=canary.canary"

req() { # req PATH [curl args...]: the answer in $work/last.h and $work/last.b
  local path=$1
  shift
  # curl leaves the file alone when there is no body (304)
  rm -f "$work/last.h" "$work/last.b"
  touch "$work/last.b"
  curl -s -D "$work/last.h" -o "$work/last.b" "$@" "$base$path"
}
hdr() { tr -d '\r' <"$work/last.h" | awk -v h="$1" 'tolower($0) ~ "^" h ":" { sub(/^[^:]*: */, ""); print; exit }'; }
cache() { hdr x-cedra-cache; }
render_id() { grep -ao 'data-render-id="[^"]*"' "$work/last.b" | head -1 | cut -d'"' -f2; }
# The status line, what the edge did, and the page: its title, the product's
# version and price, the render stamp (a new one = a new render by Next.js)
# and the build id Next.js embeds in the page (the RSC payload's "b").
print_last() {
  tr -d '\r' <"$work/last.h" |
    grep -aiE '^(HTTP/|x-cedra|x-nextjs-cache|location|etag|set-cookie|vary:|content-type: application/json)' | indent || true
  local h1 ver price stamp build
  h1=$(grep -aoE '<h1>[^<]*</h1>' "$work/last.b" | head -1 | sed -E 's#</?h1>##g') || true
  [ -n "$h1" ] || { grep -aq '^{' "$work/last.b" && { head -c 300 "$work/last.b"; echo; } | indent; return 0; }
  ver=$(grep -aoE 'version (<!-- -->)?[0-9]+' "$work/last.b" | head -1 | sed 's/<!-- -->//') || true
  price=$(grep -aoE 'class="price">[0-9.]+' "$work/last.b" | head -1 | cut -d'>' -f2) || true
  stamp=$(grep -aoE 'render #[0-9]+ of [^ ]+ at [^ ]+ \(pid [0-9]+' "$work/last.b" | head -1 |
    sed -E 's/ of [^ ]+ at [^ ]+T([0-9:]+)\.[0-9]+Z/ at \1/') || true
  build=$(grep -aoE '\\"b\\":\\"[^\\]+' "$work/last.b" | head -1 | sed -E 's/.*\\"//') || true
  echo "    page: $h1 | $ver | ${price:+$price € | }$stamp) | build $build"
}
cmdline() { # the curl command a reader can paste
  local a out="\$ curl -si '$base$1'"
  shift
  for a in "$@"; do case "$a" in -*) out+=" $a" ;; *) out+=" '$a'" ;; esac; done
  echo "$out"
}
show() { # show PATH [curl args...]
  cmdline "$@"
  req "$@"
  print_last
}
# until_shown WHAT SECONDS PATH [curl args...]: repeats the request until the
# answer satisfies WHAT (a function), then shows that answer.
until_shown() {
  local what=$1 secs=$2 n
  shift 2
  for ((n = 0; n < secs * 10; n++)); do
    req "$@"
    "$what" && break
    sleep 0.1
  done
  cmdline "$@"
  print_last
}
is_hit() { [ "$(cache)" = HIT ]; }

say "== 1. Locale: no prefix, Accept-Language nl-BE -> redirect to /nl (Vary: Accept-Language, Cookie)"
show /products/chair -H 'Accept-Language: nl-BE,nl;q=0.9,en;q=0.5'
say "== 1b. ... and the NEXT_LOCALE cookie wins over Accept-Language"
show /products/chair -H 'Accept-Language: nl' -H 'Cookie: NEXT_LOCALE=en'

say "== 2. First request to an ISR page (a user pinned to stable): MISS, Next.js renders it and writes it to Valkey"
show /fr/products/chair -H "$STABLE"
first=$(render_id)
say "== 2b. Next request: HIT, answered by HAProxy from the edge (same render: Next.js was not asked)"
until_shown is_hit 20 /fr/products/chair -H "$STABLE"
[ "$(render_id)" = "$first" ] && echo "    same render id as the MISS: $first"
etag=$(hdr etag)
say "== 2c. If-None-Match with that ETag: 304 from the edge"
show /fr/products/chair -H "$STABLE" -H "If-None-Match: $etag"

say "== 3. A revalidation seen at the edge: the chair's price changes in the catalogue, then revalidateTag(product-chair) through the app's /api/revalidate"
python3 - "$work/products.json" <<'PY'
import json, sys
with open(sys.argv[1]) as f:
    d = json.load(f)
c = d["products"]["chair"]
c["price"], c["version"] = round(c["price"] + 10, 2), c["version"] + 1
with open(sys.argv[1] + ".new", "w") as f:
    json.dump(d, f, indent=2)
PY
mv "$work/products.json.new" "$work/products.json"
show "/api/revalidate?secret=$secret&tag=product-chair" -H "$STABLE"
say "== 3b. The edge stops serving the old page: MISS, a new render with the new price"
# the invalidation reaches cedra-spoa's memory as a Valkey tracking message:
# until then the old page may still be a HIT
not_old() { [ "$(cache)" != HIT ] || [ "$(render_id)" != "$first" ]; }
until_shown not_old 20 /fr/products/chair -H "$STABLE"
second=$(render_id)
say "== 3c. ... and the regenerated page is served from the edge again"
until_shown is_hit 20 /fr/products/chair -H "$STABLE"
[ "$(render_id)" = "$second" ] && echo "    same render id as the MISS: $second"

say "== 4. A session cookie: never answered from the shared cache (BYPASS)"
show /fr/products/chair -H 'Cookie: sid=abc; cedra_pool=stable.stable'

say "== 5. A new user (no cookie) is pinned to a pool and build by cookie; ${share} % of new users go to the canary"
show /en/products/table
declare -A drawn=()
for ((n = 0; n < 50; n++)); do
  req /fr/about
  pin=$(hdr set-cookie | sed -nE 's/^cedra_pool=([^;]*).*/\1/p')
  drawn[${pin:-none}]=$((${drawn[${pin:-none}]:-0} + 1))
done
printf '    50 new users: '
for pin in "${!drawn[@]}"; do printf '%s x %d   ' "$pin" "${drawn[$pin]}"; done
echo

say "== 6. A user pinned to the canary is served by the canary build, from the canary's own pages in Valkey"
show /fr/products/chair -H "$CANARY"
until_shown is_hit 20 /fr/products/chair -H "$CANARY"
say "== 6b. ... and only by it: 20 more requests of that user, and the app's /api/health through the edge"
declare -A seen=()
for ((n = 0; n < 20; n++)); do
  req /fr/products/chair -H "$CANARY"
  b=$(grep -aoE '\\"b\\":\\"[^\\]+' "$work/last.b" | head -1 | sed -E 's/.*\\"//') || true
  k="$(cache) build ${b:-?}"
  seen[$k]=$((${seen[$k]:-0} + 1))
done
printf '    20 requests: '
for k in "${!seen[@]}"; do printf '%s x %d   ' "$k" "${seen[$k]}"; done
echo
show /api/health -H "$CANARY"
say "== 6c. The same page for a user pinned to stable: the stable build"
show /fr/products/chair -H "$STABLE"

say "== 7. cedra-agent (operator socket): show canary; show servers (the slots it filled from Consul)"
echo "\$ echo 'show canary' | socat - UNIX-CONNECT:$work/agent.sock"
sock "$work/agent.sock" "show canary" | indent
echo "\$ echo 'show servers' | socat - UNIX-CONNECT:$work/agent.sock   (filled slots)"
sock "$work/agent.sock" "show servers" | awk -F, 'NR == 1 || $5 != "maint"' | indent

say "== 8. cedra-spoa (operator socket): show pools, as cedra-agent pushed them"
echo "\$ echo 'show pools' | socat - UNIX-CONNECT:$work/spoa.sock"
sock "$work/spoa.sock" "show pools" | indent

say "== 9. HAProxy show stat (Runtime API): the slots cedra-agent filled, and cedra-spoa's SPOP health check"
echo "\$ echo 'show stat' | socat - UNIX-CONNECT:$work/haproxy.sock   (filled slots)"
stat_rows | indent

say "== 10. Fail open: Valkey frozen (SIGSTOP) -> the page still comes (ERROR: the lookup timed out, Next.js rendered it)"
redis_pid=$(pid_of redis-server)
kill -STOP "$redis_pid"
show /fr/products/lamp -H "$STABLE"
kill -CONT "$redis_pid"

if [ "$oneshot" = 1 ]; then
  say "demo done"
  exit 0
fi
cat <<EOF

The edge is up on $base/ — try /fr/products/chair, /nl, /en/about, and the sockets:
  echo 'show canary' | socat - UNIX-CONNECT:$work/agent.sock
  echo 'show pools' | socat - UNIX-CONNECT:$work/spoa.sock
  echo 'show stat' | socat - UNIX-CONNECT:$work/haproxy.sock
  curl -s -X PUT http://127.0.0.1:$consul_port/v1/agent/service/deregister/storefront-canary-1   # roll back the canary
Ctrl-C stops everything.
EOF
# Stay up until Ctrl-C; a process that dies on its own ends the demo.
while :; do
  wait -n || true
  for i in "${!pids[@]}"; do
    alive "${pids[i]}" || { echo "demo: ${names[i]} (pid ${pids[i]}) exited; stopping" >&2; exit 1; }
  done
done
