#!/usr/bin/env bash
# bench/edge.sh: the edge-hit benchmark of issue 4, side by side in one run.
#
# Starts everything itself on loopback (random free ports, a temporary
# directory), checks that every variant answers the same page byte for byte
# with the headers Next.js sends, then runs the SAME wrk load against each, in
# alternating rounds, and prints the median requests/s of each and the ratios:
#
#   A  HAProxy "http-request return ... file" of the page (the static limit)
#   B  HAProxy (haproxy/haproxy.cfg + cedra-spoe.conf, as shipped) + cedra-spoa
#      (build/) with its default configuration plus the fast lane
#      (lane-socket, lane-map, lane-cookies: docs/fast-lane.md), the page
#      answered from the edge (x-cedra-cache HIT): by HAProxy from the lane
#      once cedra-spoa has published it, its first requests through SPOE from
#      cedra-spoa's L1. A binary without the lane runs B as J.
#   J  B with the lane off: every request through SPOE, answered from
#      cedra-spoa's L1 page cache when the binary has one ("l1-size", 256m by
#      default), else a Valkey lookup per request (GET + HGET, then HMGET of
#      the tags) and a JSON parse.
#   H  the same with "l1-size 0": every request goes to Valkey (the Valkey
#      path). Only when the binary knows "l1-size"; a binary without L1 makes
#      B itself the Valkey path, and H is skipped.
#   C  HAProxy + bench/lua/cedra_edge.lua, Valkey per request (core.tcp pool)
#   D  HAProxy + bench/lua/cedra_edge.lua, per-thread Lua table cache
#   E  the Next.js fixture (tests/fixtures/storefront, v16) serving the same ISR
#      page from its own Redis cache handler, wrk straight at `next start`
#   F  redis-benchmark GET of the same 26 KB value, same connections/threads
#   G  HAProxy (shipped cfg) + bench/fake_spoa.py, an agent that answers every
#      NOTIFY at once with the ACK cedra-spoa sent for this page: what the
#      shipped HAProxy side costs with an agent that does next to nothing
#      (needs B; the agent is Python, its CPU is shown apart)
#   K  a design probe, not the shipped design: S's SPOE exchange (the fake
#      agent answers action, cache, locale and an entry version), then the page
#      from HAProxy's own "cache", keyed by that version (set-uri + cache-use),
#      filled once from a server: what handing HAProxy the body by cache
#      rather than by ACK variables would buy
#   L  a design probe, not the shipped design: no SPOE exchange at all for a
#      hot page. The request guard an SPOE-free fast lane would need, a map
#      lookup of the path (entry version, fresh-until, locale), the freshness
#      check, then the body from HAProxy's cache keyed by the version: what
#      skipping the agent for hot pages would buy (the map is a static file
#      here; keeping it exact is the part the probe does not do)
#   Z  B with a browser's Accept-Encoding ("gzip, deflate, br, zstd"): the
#      page in gzip, as Next.js sends it, from the lane's gzip copy
#   Y  J with the same Accept-Encoding: every request through SPOE, the gzip
#      copy (made once) through cedra-spoa's delivery server (a binary body
#      cannot go into "http-request return"). Z and Y only when the binary
#      answers gzip (gzip-level)
#   N  J with "haproxy-cache on": every request through SPOE, whose ACK names
#      the entry (id) rather than carrying the page, which HAProxy serves from
#      its own cache, filled once per version by cedra-spoa's delivery server
#      (K, shipped). Only when the binary knows "haproxy-cache"
#   W  N with a browser's Accept-Encoding: the gzip copy, from HAProxy's
#      cache likewise
#   S  A's static return behind the shipped SPOE filter and message, with
#      "bench/fake_spoa.py --minimal" answering one variable: the SPOE exchange
#      alone, the ceiling of B/A and B/D for any agent on this HAProxy
#
# The page: the real v16 chair entry (tests/fixtures/isr/v16/values/
# product-chair.json, written by Next.js 16.4.6 + the real handler) under its
# route-cache key, lastModified moved to now and revalidate raised to
# CEDRA_BENCH_REVALIDATE (3600 s) so that it stays fresh through the run.
# Misses and agent faults go to an origin stub answering 503: any request not
# served from the edge shows up in wrk's "Non-2xx" count.
#
# Environment (defaults in brackets):
#   CEDRA_BENCH_DURATION     seconds per measured round                 [6]
#   CEDRA_BENCH_ROUNDS       alternating rounds (median reported)       [3]
#   CEDRA_BENCH_WARMUP       warm-up seconds per variant                [2]
#   CEDRA_BENCH_WRK_THREADS  wrk -t                                     [2]
#   CEDRA_BENCH_CONNECTIONS  wrk -c, redis-benchmark -c                 [50]
#   CEDRA_BENCH_NBTHREAD     nbthread of every HAProxy                  [2]
#   CEDRA_BENCH_SPOA_THREADS cedra-spoa worker threads                  [2]
#   CEDRA_BENCH_ORIGIN       1: set up (setup.sh v16, may build for minutes)
#                            and run E; 0: never; unset: run E if the v16
#                            fixture is already built
#   CEDRA_BENCH_VARIANTS     subset to run, e.g. "AB"                   [ABCDEFGHJKLNSWYZ]
#   CEDRA_BENCH_KEEP=1       keep the temporary directory (logs, raw outputs)
#   CEDRA_SPOA               cedra-spoa binary       [build/spoa/cedra-spoa]
# Total time without E: ~20 s of setup and checks, then (10 wrk variants + F) x
# rounds x duration + warm-ups: ~4.2 min with the defaults.

# pid_<name> variables are assigned by start() through eval.
# shellcheck disable=SC2154
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
util=(python3 "$here/edge_util.py")
spoa_bin=${CEDRA_SPOA:-$repo/build/spoa/cedra-spoa}
dur=${CEDRA_BENCH_DURATION:-6}
rounds=${CEDRA_BENCH_ROUNDS:-3}
warm=${CEDRA_BENCH_WARMUP:-2}
wrk_t=${CEDRA_BENCH_WRK_THREADS:-2}
conns=${CEDRA_BENCH_CONNECTIONS:-50}
nbthread=${CEDRA_BENCH_NBTHREAD:-2}
spoa_threads=${CEDRA_BENCH_SPOA_THREADS:-2}
variants=${CEDRA_BENCH_VARIANTS:-ABCDEFGHJKLNSWYZ}
gzip_ae="gzip, deflate, br, zstd" # Chrome's and Firefox's
origin_mode=${CEDRA_BENCH_ORIGIN:-auto}
path=/fr/products/chair
fixture=$repo/tests/fixtures/storefront

log() { printf '[edge.sh] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
has() { [[ $variants == *$1* ]]; }

for t in haproxy wrk redis-server redis-benchmark python3 setsid; do
    command -v "$t" >/dev/null || die "$t not installed (scripts/deps.sh)"
done
[[ -x $spoa_bin ]] || die "$spoa_bin not built (make -C build)"

tmp=$(mktemp -d /tmp/cedra-bench-edge.XXXXXX)
pids=()
cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    # Each process was started with setsid: its pid is its process group.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM -- "-${pids[i]}" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    if [[ ${CEDRA_BENCH_KEEP:-0} == 1 || $rc -ne 0 ]]; then
        log "logs and raw outputs kept in $tmp"
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: in its own session (pid = process group), output in $tmp.
start() {
    local name=$1
    shift
    setsid "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" </dev/null &
    pids+=($!)
    eval "pid_$name=$!"
}
wait_port() { # NAME PORT [SECONDS]
    "${util[@]}" wait-tcp "$2" "${3:-15}" || { tail -n 20 "$tmp/$1.err" >&2; die "$1 not listening on $2"; }
}

read -r p_redis p_stub p_spoa p_deliver p_a p_b p_c p_d p_oredis p_next p_fake p_g p_spoa0 p_deliver0 p_h \
    p_fake_s p_s p_fake_k p_k p_fill p_l p_lfill p_spoaj p_deliverj p_j p_spoan p_delivern p_n \
    < <("${util[@]}" ports 28)
[[ $variants == *G* && $variants != *B* ]] && variants=${variants//G/}   # G replays B's agent
[[ $variants == *Z* && $variants != *B* ]] && variants=${variants//Z/}   # Z and Y: B's and J's stacks
[[ $variants == *Y* && $variants != *J* ]] && variants=${variants//Y/}
[[ $variants == *W* && $variants != *N* ]] && variants=${variants//W/}   # W: N's stack
printf 'listen 127.0.0.1:%s\ngzip-level 6\n' "$p_spoa0" >"$tmp/gzip-probe.conf"
if ! "$spoa_bin" -c -f "$tmp/gzip-probe.conf" >/dev/null 2>&1 && [[ $variants == *[YZW]* ]]; then
    log "Y, Z and W skipped: $spoa_bin does not answer gzip (no gzip-level)"
    variants=${variants//[YZW]/}
fi
# H: cedra-spoa with its L1 off, if it has one.
printf 'listen 127.0.0.1:%s\nl1-size 0\n' "$p_spoa0" >"$tmp/l1-probe.conf"
if "$spoa_bin" -c -f "$tmp/l1-probe.conf" >/dev/null 2>&1; then
    spoa_l1=1
else
    spoa_l1=0
    if [[ $variants == *H* ]]; then
        log "H skipped: $spoa_bin has no L1 cache (no l1-size): B is already the Valkey path"
        variants=${variants//H/}
    fi
fi
echo "$spoa_l1" >"$tmp/spoa-l1"
# N and W: cedra-spoa with "haproxy-cache on", if it knows it.
printf 'listen 127.0.0.1:%s\ndeliver 127.0.0.1:%s\nhaproxy-cache on\n' "$p_spoan" "$p_delivern" >"$tmp/hc-probe.conf"
if ! "$spoa_bin" -c -f "$tmp/hc-probe.conf" >/dev/null 2>&1 && [[ $variants == *[NW]* ]]; then
    log "N and W skipped: $spoa_bin has no haproxy-cache"
    variants=${variants//[NW]/}
fi
# B: with the fast lane, if the binary has one.
printf 'listen 127.0.0.1:%s\nlane-socket %s\nlane-map %s\nlane-cookies %s\ndeliver 127.0.0.1:%s\n' "$p_spoa" \
    "$tmp/haproxy-b.sock" "$repo/haproxy/cedra-lane.map" "$repo/haproxy/cedra-lane-cookies.acl" "$p_deliver" \
    >"$tmp/lane-probe.conf"
if "$spoa_bin" -c -f "$tmp/lane-probe.conf" >/dev/null 2>&1; then
    spoa_lane=1
    lane_conf=$(printf 'lane-socket %s\nlane-map %s\nlane-cookies %s' "$tmp/haproxy-b.sock" \
        "$repo/haproxy/cedra-lane.map" "$repo/haproxy/cedra-lane-cookies.acl")
else
    spoa_lane=0
    lane_conf=""
    log "$spoa_bin has no fast lane: B runs without it (as J)"
fi
echo "$spoa_lane" >"$tmp/spoa-lane"

# ---- Valkey (redis-server) with the real entry -------------------------------
start redis redis-server --port "$p_redis" --bind 127.0.0.1 --save '' --appendonly no --protected-mode yes
wait_port redis "$p_redis"
"${util[@]}" seed "$p_redis" "$tmp" >&2
key=$(cat "$tmp/key")

# ---- origin stub: a request that is not answered by the edge gets a 503 ------
cat >"$tmp/stub.cfg" <<EOF
global
    nbthread 1
defaults
    mode http
    timeout client 30s
    timeout server 30s
    timeout connect 2s
frontend stub
    bind 127.0.0.1:$p_stub
    http-request return status 503 content-type text/plain string "bench origin stub: not served by the edge" hdr x-origin 1
EOF
start stub haproxy -db -f "$tmp/stub.cfg"

# ---- cedra-spoa (B, and H without its L1) ---------------------------------------
spoa_conf() { # LISTEN_PORT DELIVER_PORT NAME [EXTRA]
cat <<EOF
allow-root
listen 127.0.0.1:$1
threads $spoa_threads
max-frame-size 16380
log-level warning
locales fr nl en
default-locale fr
valkey 127.0.0.1:$p_redis
valkey-timeout 80ms
pool stable key-prefix storefront: routes $repo/tests/fixtures/isr/v16/routes.table
revalidate-lock 5s
session-cookie sid
deliver 127.0.0.1:$2
stats-socket $tmp/$3.sock
${4:-}
EOF
}
spoa_conf "$p_spoa" "$p_deliver" cedra-spoa "$lane_conf" >"$tmp/cedra-spoa.conf"
spoa_conf "$p_spoaj" "$p_deliverj" cedra-spoa-j >"$tmp/cedra-spoa-j.conf"
spoa_conf "$p_spoan" "$p_delivern" cedra-spoa-n "haproxy-cache on" >"$tmp/cedra-spoa-n.conf"
spoa_conf "$p_spoa0" "$p_deliver0" cedra-spoa-l1off "l1-size 0" >"$tmp/cedra-spoa-l1off.conf"
hap_common=(CEDRA_NBTHREAD="$nbthread" CEDRA_ORIGIN_ADDR="127.0.0.1:$p_stub"
            CEDRA_HAPROXY_LOG=stderr CEDRA_HAPROXY_LOG_LEVEL=err)
if has B; then
    start spoa "$spoa_bin" -f "$tmp/cedra-spoa.conf"
    wait_port spoa "$p_spoa"
    start hap_b env "${hap_common[@]}" CEDRA_HTTP_BIND="127.0.0.1:$p_b" CEDRA_SPOA_ADDR="127.0.0.1:$p_spoa" \
        CEDRA_DELIVER_ADDR="127.0.0.1:$p_deliver" CEDRA_HAPROXY_SOCK="$tmp/haproxy-b.sock" \
        CEDRA_LANE=on CEDRA_LANE_MAP="$repo/haproxy/cedra-lane.map" CEDRA_LANE_COOKIES="$repo/haproxy/cedra-lane-cookies.acl" \
        CEDRA_SPOA_CHECK_INTER=500ms haproxy -db -f "$repo/haproxy/haproxy.cfg"
fi
if has J; then
    start spoaj "$spoa_bin" -f "$tmp/cedra-spoa-j.conf"
    wait_port spoaj "$p_spoaj"
    start hap_j env "${hap_common[@]}" CEDRA_HTTP_BIND="127.0.0.1:$p_j" CEDRA_SPOA_ADDR="127.0.0.1:$p_spoaj" \
        CEDRA_DELIVER_ADDR="127.0.0.1:$p_deliverj" CEDRA_HAPROXY_SOCK="$tmp/haproxy-j.sock" \
        CEDRA_SPOA_CHECK_INTER=500ms haproxy -db -f "$repo/haproxy/haproxy.cfg"
fi
if has N; then
    start spoan "$spoa_bin" -f "$tmp/cedra-spoa-n.conf"
    wait_port spoan "$p_spoan"
    start hap_n env "${hap_common[@]}" CEDRA_HTTP_BIND="127.0.0.1:$p_n" CEDRA_SPOA_ADDR="127.0.0.1:$p_spoan" \
        CEDRA_DELIVER_ADDR="127.0.0.1:$p_delivern" CEDRA_HAPROXY_SOCK="$tmp/haproxy-n.sock" \
        CEDRA_SPOA_CHECK_INTER=500ms haproxy -db -f "$repo/haproxy/haproxy.cfg"
fi
if has H; then
    start spoa0 "$spoa_bin" -f "$tmp/cedra-spoa-l1off.conf"
    wait_port spoa0 "$p_spoa0"
    start hap_h env "${hap_common[@]}" CEDRA_HTTP_BIND="127.0.0.1:$p_h" CEDRA_SPOA_ADDR="127.0.0.1:$p_spoa0" \
        CEDRA_DELIVER_ADDR="127.0.0.1:$p_deliver0" CEDRA_HAPROXY_SOCK="$tmp/haproxy-h.sock" \
        CEDRA_SPOA_CHECK_INTER=500ms haproxy -db -f "$repo/haproxy/haproxy.cfg"
fi
if has G; then
    start fake python3 "$here/fake_spoa.py" "$p_fake" "$p_spoa"
    wait_port fake "$p_fake"
    start hap_g env "${hap_common[@]}" CEDRA_HTTP_BIND="127.0.0.1:$p_g" CEDRA_SPOA_ADDR="127.0.0.1:$p_fake" \
        CEDRA_DELIVER_ADDR="127.0.0.1:$p_deliver" CEDRA_HAPROXY_SOCK="$tmp/haproxy-g.sock" \
        CEDRA_SPOA_CHECK_INTER=500ms haproxy -db -f "$repo/haproxy/haproxy.cfg"
fi
if has S; then
    start fake_s python3 "$here/fake_spoa.py" --minimal "$p_fake_s"
    wait_port fake_s "$p_fake_s"
    start hap_s env "${hap_common[@]}" CEDRA_HTTP_BIND="127.0.0.1:$p_s" CEDRA_SPOA_ADDR="127.0.0.1:$p_fake_s" \
        CEDRA_SPOA_CHECK_INTER=500ms haproxy -db -f "$tmp/spoe_floor.cfg"
fi
if has K; then
    start fake_k env FAKE_SPOA_VARS="action=edge,cache=HIT,locale=fr,ver=v1" python3 "$here/fake_spoa.py" --minimal "$p_fake_k"
    wait_port fake_k "$p_fake_k"
    start hap_k env "${hap_common[@]}" CEDRA_HTTP_BIND="127.0.0.1:$p_k" CEDRA_SPOA_ADDR="127.0.0.1:$p_fake_k" \
        CEDRA_FILL_ADDR="127.0.0.1:$p_fill" CEDRA_SPOA_CHECK_INTER=500ms haproxy -db -f "$tmp/spoe_cache.cfg"
fi
has L && start hap_l env "${hap_common[@]}" CEDRA_HTTP_BIND="127.0.0.1:$p_l" CEDRA_FILL_ADDR="127.0.0.1:$p_lfill" \
    haproxy -db -f "$tmp/lane.cfg"
has A && start hap_a env "${hap_common[@]}" CEDRA_HTTP_BIND="127.0.0.1:$p_a" haproxy -db -f "$tmp/static.cfg"
lua_env=(CEDRA_LUA_SCRIPT="$here/lua/cedra_edge.lua" CEDRA_LUA_VALKEY="127.0.0.1:$p_redis"
         CEDRA_LUA_KEY_PREFIX=storefront: CEDRA_LUA_ROUTES="$repo/tests/fixtures/isr/v16/routes.table"
         CEDRA_LUA_LOCALES="fr nl en" CEDRA_LUA_DEFAULT_LOCALE=fr CEDRA_LUA_SESSION_COOKIES=sid
         CEDRA_LUA_TIMEOUT=0.08)
has C && start hap_c env "${hap_common[@]}" "${lua_env[@]}" CEDRA_LUA_CACHE=0 CEDRA_HTTP_BIND="127.0.0.1:$p_c" \
    haproxy -db -f "$here/lua/haproxy-lua.cfg"
has D && start hap_d env "${hap_common[@]}" "${lua_env[@]}" CEDRA_LUA_CACHE=1 CEDRA_HTTP_BIND="127.0.0.1:$p_d" \
    haproxy -db -f "$here/lua/haproxy-lua.cfg"

declare -A port=([A]=$p_a [B]=$p_b [C]=$p_c [D]=$p_d [E]=$p_next [G]=$p_g [H]=$p_h [S]=$p_s [K]=$p_k [L]=$p_l [J]=$p_j [Z]=$p_b [Y]=$p_j [N]=$p_n [W]=$p_n)
wait_port stub "$p_stub"
for v in A B C D G H J N S K L; do
    if has $v; then wait_port "hap_${v,,}" "${port[$v]}"; fi
done

# ---- E: the Next.js origin ------------------------------------------------------
run_e=0
if has E; then
    case $origin_mode in
        1) log "E: tests/fixtures/storefront/setup.sh v16 (builds if needed)"
           "$fixture/setup.sh" v16 >/dev/null 2>"$tmp/setup.err" || { tail -n 20 "$tmp/setup.err" >&2; die "setup.sh v16 failed"; }
           run_e=1 ;;
        0) ;;
        *) if [[ -f ${STOREFRONT_WORKDIR:-$fixture/.work}/v16/stable/.next/BUILD_ID ]]; then run_e=1
           else log "E skipped: the v16 fixture is not built (CEDRA_BENCH_ORIGIN=1 builds it)"; fi ;;
    esac
fi
if ((run_e)); then
    start oredis redis-server --port "$p_oredis" --bind 127.0.0.1 --save '' --appendonly no
    wait_port oredis "$p_oredis"
    start next env REDIS_URL="redis://127.0.0.1:$p_oredis" CACHE_KEY_PREFIX=storefront: \
        "$fixture/start.sh" v16 "$p_next"
    wait_port next "$p_next" 60
    "${util[@]}" verify-origin "$p_next" 60 >&2
else
    variants=${variants//E/}
fi

# ---- check what each variant answers before measuring ---------------------------
# D must be the same job as cedra-spoa's L1: kept exact by Valkey invalidations
# (DEL, tag-hash change, killed subscriber), never a TTL-only table.
if has D; then
    python3 "$here/lua/exact_check.py" "${port[D]}" "$p_redis" "$tmp/key" >&2 || die "D is not exact"
fi
for v in A B C D G H J N S K L Y Z W; do
    has $v && "${util[@]}" verify "$v" "${port[$v]}" "$tmp" 200 >&2
done

# CPU of each variant's processes (process groups), for the per-request costs.
declare -A procs=()
has A && procs[A]="haproxy=$pid_hap_a"
has B && procs[B]="haproxy=$pid_hap_b cedra-spoa=$pid_spoa valkey=$pid_redis"
has J && procs[J]="haproxy=$pid_hap_j cedra-spoa=$pid_spoaj valkey=$pid_redis"
has Z && procs[Z]=${procs[B]}
has Y && procs[Y]=${procs[J]}
has N && procs[N]="haproxy=$pid_hap_n cedra-spoa=$pid_spoan valkey=$pid_redis"
has W && procs[W]=${procs[N]}
has C && procs[C]="haproxy=$pid_hap_c valkey=$pid_redis"
has D && procs[D]="haproxy=$pid_hap_d valkey=$pid_redis"
has G && procs[G]="haproxy=$pid_hap_g fake-agent=$pid_fake"
has K && procs[K]="haproxy=$pid_hap_k fake-agent=$pid_fake_k"
has L && procs[L]="haproxy=$pid_hap_l"
has S && procs[S]="haproxy=$pid_hap_s fake-agent=$pid_fake_s"
has H && procs[H]="haproxy=$pid_hap_h cedra-spoa=$pid_spoa0 valkey=$pid_redis"
has E && procs[E]="next=$pid_next valkey=$pid_oredis"

run_wrk() { # VARIANT SECONDS OUTFILE
    local ae=()
    [[ $1 == [YZW] ]] && ae=(-H "Accept-Encoding: $gzip_ae")
    wrk -t"$wrk_t" -c"$conns" -d"$2s" --latency "${ae[@]}" "http://127.0.0.1:${port[$1]}$path" >"$3"
}
rb_n=100000
run_rb() { # OUTFILE
    redis-benchmark -h 127.0.0.1 -p "$p_redis" -c "$conns" --threads "$wrk_t" -n "$rb_n" --csv GET "$key" >"$1" 2>&1
}

log "warm-up: ${warm}s per variant"
for v in A B C D E G H J N S K L Y Z W; do
    has $v && run_wrk $v "$warm" "$tmp/warm.$v"
done
if has F; then
    rb_n=20000
    run_rb "$tmp/warm.F"
    rate=$("${util[@]}" rb-rate "$tmp/warm.F")
    rb_n=$(python3 -c "print(max(20000, int($rate * $dur)))")
fi

order=""
for v in A B C D E F G H J N S K L Y Z W; do has $v && order+=$v; done
spoa_before="" spoa0_before="" spoaj_before="" spoan_before=""
has B && spoa_before=$("${util[@]}" spoa-metrics "$tmp/cedra-spoa.sock")
has H && spoa0_before=$("${util[@]}" spoa-metrics "$tmp/cedra-spoa-l1off.sock")
has J && spoaj_before=$("${util[@]}" spoa-metrics "$tmp/cedra-spoa-j.sock")
has N && spoan_before=$("${util[@]}" spoa-metrics "$tmp/cedra-spoa-n.sock")
log "measuring: $rounds rounds of ${dur}s, wrk -t$wrk_t -c$conns, HAProxy nbthread $nbthread, order rotates: $order"
for ((r = 1; r <= rounds; r++)); do
    rot=${order:r-1}${order:0:r-1}
    for ((i = 0; i < ${#rot}; i++)); do
        v=${rot:i:1}
        if [[ $v == F ]]; then
            "${util[@]}" cpu-snap "$tmp/F.$r.cpu0" "valkey=$pid_redis"
            run_rb "$tmp/F.$r.rb"
            "${util[@]}" cpu-snap "$tmp/F.$r.cpu1" "valkey=$pid_redis"
        else
            # procs[$v] is a list of NAME=PGID words: split on purpose.
            # shellcheck disable=SC2086
            "${util[@]}" cpu-snap "$tmp/$v.$r.cpu0" ${procs[$v]}
            run_wrk "$v" "$dur" "$tmp/$v.$r.wrk"
            # shellcheck disable=SC2086
            "${util[@]}" cpu-snap "$tmp/$v.$r.cpu1" ${procs[$v]}
        fi
        log "round $r $v: $("${util[@]}" one "$tmp" "$v.$r")"
    done
done
if has B; then
    spoa_after=$("${util[@]}" spoa-metrics "$tmp/cedra-spoa.sock")
    echo "$spoa_before $spoa_after" >"$tmp/spoa-metrics.B"
fi
if has J; then
    spoaj_after=$("${util[@]}" spoa-metrics "$tmp/cedra-spoa-j.sock")
    echo "$spoaj_before $spoaj_after" >"$tmp/spoa-metrics.J"
fi
if has N; then
    spoan_after=$("${util[@]}" spoa-metrics "$tmp/cedra-spoa-n.sock")
    echo "$spoan_before $spoan_after" >"$tmp/spoa-metrics.N"
fi
if has H; then
    spoa0_after=$("${util[@]}" spoa-metrics "$tmp/cedra-spoa-l1off.sock")
    echo "$spoa0_before $spoa0_after" >"$tmp/spoa-metrics.H"
fi

"${util[@]}" report "$tmp" "wrk -t$wrk_t -c$conns -d${dur}s, $rounds rounds, HAProxy nbthread $nbthread, cedra-spoa threads $spoa_threads"
