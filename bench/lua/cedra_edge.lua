-- cedra_edge.lua: what cedra-spoa does for one request, as an HAProxy 2.6 Lua
-- action, written to be compared with it (bench/edge.sh). Not product code.
--
-- For each request (http-request lua.cedra_edge):
--  * locale from the first path segment (exact match, as Next.js's [locale]);
--    an unprefixed GET/HEAD page gets the locale redirect cedra-spoa gives
--    (NEXT_LOCALE cookie, then Accept-Language per RFC 4647, then the default;
--    /_next/, /api/ and paths whose last segment has a dot are not redirected;
--    the target is refused unless path and query are plain RFC 3986 chars);
--  * requests a shared cache must not answer are bypassed (non GET/HEAD, RSC
--    and prefetch headers, Authorization, preview and session cookies);
--  * the Next.js cache key from the build's route table (bench: the v16 table,
--    /route-cache/APP_PAGE/<sha256>/$<path>), or the pathname;
--  * Valkey, over core.tcp sockets kept in a per-thread pool, speaking RESP
--    with the small parser below: GET <prefix><key> + HGET
--    <prefix>__sharedTags__ <key> pipelined (one round trip), then HMGET
--    <prefix>__revalidated_tags__ <tags...> (second round trip), and for a stale
--    page SET <lock> 1 NX PX <ms> (one request per window revalidates);
--  * the value decoded with cjson and checked as isr.c checks it (kind, html,
--    postponed, status 200/404, headers, lifespan), the freshness decided as the
--    handler and Next.js decide it (expireAt vs floor(now/1000), Next's expire,
--    revalidated tags vs lastModified, lastModified + revalidate*1000 vs now);
--  * the answer from the edge with the headers Next.js sends (Vary,
--    x-nextjs-cache, x-nextjs-prerender, the entry's headers, X-Powered-By,
--    Cache-Control, the ETag computed as Next.js does - FNV-1a 52 over UTF-16
--    code units - and Content-Type), 304 for a matching If-None-Match.
--
-- The answer goes out with txn:done(reply) from the action itself (HAProxy >=
-- 2.2): no applet, no second coroutine, no body copy into a variable. Measured
-- here, for the same 8 KB page, it beat both alternatives: "use-service" (an
-- appctx per request, and it cannot fall back to the origin on a miss, so an
-- action would be needed anyway) and "set-var + http-request return
-- lf-string" (the body copied into a variable, then rendered again). What is
-- not served is left to the rules of haproxy-lua.cfg through the same txn
-- variables cedra-spoa sets (action, cache, locale, location, status), so
-- redirects, passes and the x-cedra-* response headers use the shipped rules.
--
-- Two variants, chosen by CEDRA_LUA_CACHE:
--  0: every request looks the page up in Valkey (variant C of bench/edge.sh);
--  1: parsed fresh entries are kept in a per-thread Lua table, bounded
--     (CEDRA_LUA_CACHE_ENTRIES, two generations), and answered without Valkey
--     while fresh - variant D. Kept exact the way cedra-spoa's L1 is, so that
--     D does the same job as B (issue 4, item 2): Valkey client-side caching.
--     Per thread, two background tasks (core.register_task) keep a subscriber
--     on __redis__:invalidate and a connection with CLIENT TRACKING on
--     REDIRECT <subscriber> BCAST PREFIX <prefix>, heartbeats between the two.
--     Any write, delete, expiry or eviction of a key under the prefix drops its
--     entry as soon as Valkey announces it; a change of __revalidated_tags__,
--     __sharedTags__ or __sharedTagsTtl__ (revalidateTag), or a FLUSHALL,
--     drops the whole table. While either connection is down the table is
--     flushed and not used (every request goes to Valkey, as in C), and an
--     entry is inserted only if nothing was dropped during its own lookup
--     (epoch counter) and tracking was up throughout. Without this the table
--     would serve a page revalidateTag deleted until its stale time, which
--     cedra-spoa must never do. The request path pays one boolean check and
--     the table lookup; see "keeping the table exact" below.
--
-- Load it with lua-load-per-thread (haproxy-lua.cfg): each thread has its own
-- Lua state, hence its own socket pool, cache and tracking connections (two
-- per thread with CEDRA_LUA_CACHE=1), and no lock.
--
-- Environment (read once at load):
--   CEDRA_LUA_VALKEY          host:port                     [127.0.0.1:6379]
--   CEDRA_LUA_KEY_PREFIX      handler keyPrefix             [storefront:]
--   CEDRA_LUA_ROUTES          cedra-routes table (route-cache keys); empty:
--                             pathname keys                 []
--   CEDRA_LUA_LOCALES         [fr nl en]     CEDRA_LUA_DEFAULT_LOCALE [fr]
--   CEDRA_LUA_SESSION_COOKIES space-separated               [sid]
--   CEDRA_LUA_TIMEOUT         Valkey socket timeout, s      [1]
--   CEDRA_LUA_POOL            idle sockets kept per thread  [64]
--   CEDRA_LUA_CACHE           0 | 1                         [0]
--   CEDRA_LUA_CACHE_ENTRIES   entries per thread            [1024]
--   CEDRA_LUA_LOCK_MS         revalidation lock, ms         [5000]
--   CEDRA_LUA_EXPIRE          Next's expireTime, s          [31536000]
--   CEDRA_LUA_ETAG_MEMO       memoize the ETag by body      [1]
--   CEDRA_LUA_DEBUG           log why a lookup did not serve [0]

local cjson = require("cjson.safe")

local byte, sub, find, gsub, lower, format, concat = string.byte, string.sub, string.find,
    string.gsub, string.lower, string.format, table.concat
local floor, tointeger = math.floor, math.tointeger
local pairs, ipairs, type, tonumber, tostring = pairs, ipairs, type, tonumber, tostring

-- ---- configuration ------------------------------------------------------------

local function env(name, def)
    local v = os.getenv(name)
    if v == nil or v == "" then return def end
    return v
end

local VALKEY = env("CEDRA_LUA_VALKEY", "127.0.0.1:6379")
local VHOST, VPORT = VALKEY:match("^(.*):(%d+)$")
VPORT = tonumber(VPORT)
local PREFIX = env("CEDRA_LUA_KEY_PREFIX", "storefront:")
local SHARED = PREFIX .. "__sharedTags__"
local REVALIDATED = PREFIX .. "__revalidated_tags__"
local LOCK_PREFIX = "cedra:revalidate:"
local LOCK_MS = tostring(tonumber(env("CEDRA_LUA_LOCK_MS", "5000")))
local TIMEOUT = tonumber(env("CEDRA_LUA_TIMEOUT", "1"))
local POOL_MAX = tonumber(env("CEDRA_LUA_POOL", "64"))
local USE_CACHE = env("CEDRA_LUA_CACHE", "0") == "1"
local CACHE_MAX = tonumber(env("CEDRA_LUA_CACHE_ENTRIES", "1024"))
local EXPIRE = tonumber(env("CEDRA_LUA_EXPIRE", "31536000"))
local DEBUG = env("CEDRA_LUA_DEBUG", "0") == "1" -- log why a lookup did not serve
local ONE_YEAR = 31536000
local JS_MAX_SAFE = 9007199254740991
local MAX_VALUE = 16 * 1024 * 1024
local MAX_BODY = 4 * 1024 * 1024
local MAX_TAGS = 512
local INM_MAX = 1024

local LOCALES, LOCALE_LIST = {}, {}
for l in env("CEDRA_LUA_LOCALES", "fr nl en"):gmatch("%S+") do
    LOCALE_LIST[#LOCALE_LIST + 1] = l
    LOCALES[l] = #LOCALE_LIST
end
local DEFAULT_LOCALE = env("CEDRA_LUA_DEFAULT_LOCALE", "fr")
local LOCALE_COOKIE = "NEXT_LOCALE"
local REDIRECT_CODE = 307
local EXCLUDE = {"/_next/", "/api/"}
local SESSION_COOKIES = {}
for c in env("CEDRA_LUA_SESSION_COOKIES", "sid"):gmatch("%S+") do
    SESSION_COOKIES[#SESSION_COOKIES + 1] = c
end

-- ---- route table (spoa/routes.c) -------------------------------------------------

local ROUTES -- nil: pathname keys
do
    local path = env("CEDRA_LUA_ROUTES", "")
    if path ~= "" then
        ROUTES = {}
        local f = assert(io.open(path, "r"))
        for line in f:lines() do
            line = line:gsub("#.*", "")
            local pat, kind, hash = line:match("^%s*route%s+(%S+)%s+(%S+)%s+(%x+)")
            if pat then
                local segs = {}
                for s in pat:gmatch("[^/]+") do
                    local k
                    if s:match("^%[%[%.%.%..+%]%]$") then k = "optcatch"
                    elseif s:match("^%[%.%.%..+%]$") then k = "catch"
                    elseif s:match("^%[.+%]$") then k = "param"
                    else k = "static" end
                    segs[#segs + 1] = {k = k, t = s}
                end
                ROUTES[#ROUTES + 1] = {segs = segs, prefix = "/route-cache/" .. kind .. "/" .. hash .. "/$"}
            end
        end
        f:close()
    end
end

local function route_matches(rt, segs, n)
    local rs = rt.segs
    for i = 1, #rs do
        local g = rs[i]
        if g.k == "catch" then return n >= i end
        if g.k == "optcatch" then return true end
        if i > n then return false end
        if g.k == "static" and g.t ~= segs[i] then return false end
    end
    return #rs == n
end

-- The Next.js cache key of a path, or nil (not a plain path, or no route).
local function compute_key(path)
    -- only plain segments: Next.js keys decoded pathnames
    if byte(path, 1) ~= 47 or find(path, "[^%w%-_%.~/]") then return nil end
    local segs, n = {}, 0
    if path ~= "/" then
        local i, len = 2, #path
        while i <= len + 1 do
            local j = find(path, "/", i, true) or (len + 1)
            if j == i then return nil end -- "//" or a trailing "/"
            local s = sub(path, i, j - 1)
            if s == "." or s == ".." then return nil end
            n = n + 1
            segs[n] = s
            i = j + 1
        end
    end
    if not ROUTES then
        return n == 0 and "/index" or path
    end
    for i = 1, #ROUTES do
        if route_matches(ROUTES[i], segs, n) then return ROUTES[i].prefix .. path end
    end
    return nil
end

-- Memo of path -> key (false: no key), bounded; route matching is pure.
local key_memo, key_memo_n = {}, 0
local function key_of(path)
    local k = key_memo[path]
    if k == nil then
        k = compute_key(path) or false
        if key_memo_n >= 4096 then key_memo, key_memo_n = {}, 0 end
        key_memo[path] = k
        key_memo_n = key_memo_n + 1
    end
    return k
end

-- ---- cookies, Accept-Language, redirects (spoa/cookie.c, spoa/locale.c) -----------

local function cookie_get(hdr, name)
    if not hdr then return nil end
    for pair in (hdr .. ";"):gmatch("([^;]*);") do
        local n, v = pair:match("^[ \t]*([^=]-)[ \t]*=(.*)$")
        if n == name then
            v = v:match("^[ \t]*(.-)[ \t]*$")
            if #v >= 2 and byte(v, 1) == 34 and byte(v, -1) == 34 then v = sub(v, 2, -2) end
            return v
        end
    end
    return nil
end

local function valid_range(s)
    if s == "*" then return true end
    local first = true
    for part in (s .. "-"):gmatch("([^-]*)-") do
        if #part == 0 or #part > 8 then return false end
        if first then
            if find(part, "[^%a]") then return false end
        elseif find(part, "[^%w]") then
            return false
        end
        first = false
    end
    return true
end

local function parse_q(s)
    local int, frac = s:match("^([01])%.?(%d*)$")
    if not int or #frac > 3 or (#s > 1 and sub(s, 2, 2) ~= ".") then return nil end
    if int == "1" then
        if find(frac, "[^0]") then return nil end
        return 1000
    end
    return tonumber((frac .. "000"):sub(1, 3))
end

local function range_matches(r, tag)
    if r == "*" then return true end
    if #r > #tag or lower(r) ~= lower(sub(tag, 1, #r)) then return false end
    return #r == #tag or byte(tag, #r + 1) == 45
end

local function locale_from_accept_language(al)
    if #al > 4096 then al = sub(al, 1, 4096) end
    local rs = {}
    for elem in (al .. ","):gmatch("([^,]*),") do
        if #rs >= 32 then break end
        local range, params = elem:match("^[ \t]*([^;]-)[ \t]*;(.*)$")
        local q = 1000
        if not range then
            range = elem:match("^[ \t]*(.-)[ \t]*$")
        else
            local qv = params:match("^[ \t]*[qQ][ \t]*=[ \t]*(.-)[ \t]*$")
            q = qv and parse_q(qv)
        end
        if q and valid_range(range) then
            -- descending q, stable on ties
            local i = #rs + 1
            while i > 1 and rs[i - 1].q < q do
                rs[i] = rs[i - 1]
                i = i - 1
            end
            rs[i] = {s = range, q = q}
        end
    end
    local excluded = {}
    for _, r in ipairs(rs) do
        if r.q == 0 and r.s ~= "*" then
            for l, name in ipairs(LOCALE_LIST) do
                if range_matches(r.s, name) then excluded[l] = true end
            end
        end
    end
    for _, r in ipairs(rs) do
        if r.q == 0 then break end
        if r.s == "*" then
            local d = LOCALES[DEFAULT_LOCALE]
            if not excluded[d] then return d end
            for l = 1, #LOCALE_LIST do
                if not excluded[l] then return l end
            end
        else
            for l, name in ipairs(LOCALE_LIST) do
                if not excluded[l] and range_matches(r.s, name) then return l end
            end
            -- lookup fallback: drop subtags from the end
            local t = r.s
            while true do
                t = t:match("^(.*)%-[^-]*$")
                if not t or t == "" then break end
                for l, name in ipairs(LOCALE_LIST) do
                    if not excluded[l] and #name == #t and lower(name) == lower(t) then return l end
                end
            end
        end
    end
    return nil
end

local function redirectable(path)
    if byte(path, 1) ~= 47 then return false end
    for _, e in ipairs(EXCLUDE) do
        if sub(path, 1, #e) == e then return false end
        if #e > 1 and byte(e, -1) == 47 and path == sub(e, 1, -2) then return false end
    end
    return not find(path:match("[^/]*$"), ".", 1, true)
end

local function uri_chars_ok(s, query)
    s = gsub(s, "%%%x%x", "")
    if query then
        return not find(s, "[^%w%-%._~!%$&'%(%)%*%+,;=:@/%?]")
    end
    return not find(s, "[^%w%-%._~!%$&'%(%)%*%+,;=:@/]")
end

local function join(h, name, sep)
    local t = h[name]
    if not t then return nil end
    if t[1] == nil then return t[0] end
    local parts, i = {}, 0
    while t[i] ~= nil do
        parts[#parts + 1] = t[i]
        i = i + 1
    end
    return concat(parts, sep)
end

-- ---- RESP over core.tcp ----------------------------------------------------------

local NIL = false -- a RESP null

local function resp(args)
    local out = {"*", #args, "\r\n"}
    for i = 1, #args do
        local a = args[i]
        out[#out + 1] = "$"
        out[#out + 1] = #a
        out[#out + 1] = "\r\n"
        out[#out + 1] = a
        out[#out + 1] = "\r\n"
    end
    return concat(out)
end

-- Reads one reply. Returns value, kind ("$", "*", "+", "-", ":") or nil, err.
local function read_reply(s)
    local line, err = s:receive("*l")
    if not line then return nil, err or "closed" end
    local t = byte(line, 1)
    if t == 36 then -- $
        local n = tonumber(sub(line, 2))
        if not n then return nil, "protocol" end
        if n < 0 then return NIL, "$" end
        if n > MAX_VALUE then return nil, "too_big" end
        -- HAProxy 2.6.12: when a reply does not fit the socket's buffer
        -- (tune.bufsize), receive() stalls until the socket timeout once the
        -- buffer has been full (measured: every 26 KB GET took exactly the
        -- timeout, whole or in chunks). haproxy-lua.cfg raises tune.bufsize.
        local d, e = s:receive(n + 2)
        if not d or #d ~= n + 2 then return nil, e or "short" end
        return sub(d, 1, n), "$"
    elseif t == 42 then -- *
        local n = tonumber(sub(line, 2))
        if not n then return nil, "protocol" end
        if n < 0 then return NIL, "*" end
        local arr = {}
        for i = 1, n do
            local v, k = read_reply(s)
            if v == nil then return nil, k end
            arr[i] = v
        end
        return arr, "*"
    elseif t == 43 then
        return sub(line, 2), "+"
    elseif t == 45 then
        return sub(line, 2), "-"
    elseif t == 58 then
        return tonumber(sub(line, 2)), ":"
    end
    return nil, "protocol"
end

-- Per-thread pool of connected sockets (each thread has its own Lua state).
local pool, npool = {}, 0

local function conn_new()
    local s = core.tcp()
    s:settimeout(TIMEOUT)
    local ok, err = s:connect(VHOST, VPORT)
    if not ok then
        s:close()
        return nil, err or "connect"
    end
    return s
end

-- Sends payload, reads nreplies replies. Returns an array of {value, kind}
-- pairs flattened as values[i], kinds[i], or nil, err. A pooled socket that
-- fails (idle timeout, server restart) is replaced once.
local function exchange(payload, nreplies)
    for attempt = 1, 2 do
        local s, reused
        if npool > 0 then
            s = pool[npool]
            pool[npool] = nil
            npool = npool - 1
            reused = true
        else
            local err
            s, err = conn_new()
            if not s then return nil, err end
            reused = false
        end
        local ok, err = s:send(payload)
        local vals, kinds = {}, {}
        if ok then
            for i = 1, nreplies do
                local v, k = read_reply(s)
                if v == nil then
                    ok, err = nil, k
                    break
                end
                vals[i], kinds[i] = v, k
            end
        end
        if ok then
            if npool < POOL_MAX then
                npool = npool + 1
                pool[npool] = s
            else
                s:close()
            end
            return vals, kinds
        end
        s:close()
        if not reused then return nil, err end
        -- An idle pooled socket died (the socket timeout also applies to
        -- idle time): the others idled as long, drop them all, reconnect.
        for i = npool, 1, -1 do
            pool[i]:close()
            pool[i] = nil
        end
        npool = 0
    end
    return nil, "retry"
end

-- ---- ISR entries (spoa/isr.c) ------------------------------------------------------

-- ETag as Next.js's lib/etag.ts: FNV-1a 64 over the UTF-16 code units of the
-- body, folded to 52 bits, base36(hash) .. base36(length in units).
local FNV_OFFSET, FNV_PRIME = 0xcbf29ce484222325, 0x100000001b3
local B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
local function base36(v)
    local out = {}
    repeat
        local d = v % 36
        out[#out + 1] = sub(B36, d + 1, d + 1)
        v = v // 36
    until v == 0
    return string.reverse(concat(out))
end

local function etag_of(s)
    local h, P = FNV_OFFSET, FNV_PRIME
    local n, i, units = #s, 1, 0
    while i <= n do
        local j = find(s, "[\128-\255]", i)
        local stop = (j or (n + 1)) - 1
        local k = i
        -- ASCII run: one code unit per byte, 8 bytes per call to string.byte
        while k + 7 <= stop do
            local a, b, c, d, e, f, g, x = byte(s, k, k + 7)
            h = (h ~ a) * P; h = (h ~ b) * P; h = (h ~ c) * P; h = (h ~ d) * P
            h = (h ~ e) * P; h = (h ~ f) * P; h = (h ~ g) * P; h = (h ~ x) * P
            k = k + 8
        end
        while k <= stop do
            h = (h ~ byte(s, k)) * P
            k = k + 1
        end
        units = units + (stop - i + 1)
        if not j then break end
        -- one multi-byte UTF-8 sequence (RFC 3629), as isr.c decodes it
        local c, c1, c2, c3 = byte(s, j, j + 3)
        local cp, len
        if c >= 0xc2 and c <= 0xdf and c1 and c1 & 0xc0 == 0x80 then
            cp, len = (c & 0x1f) << 6 | (c1 & 0x3f), 2
        elseif c >= 0xe0 and c <= 0xef and c2 and c1 & 0xc0 == 0x80 and c2 & 0xc0 == 0x80 then
            cp, len = (c & 0x0f) << 12 | (c1 & 0x3f) << 6 | (c2 & 0x3f), 3
            if cp < 0x800 or (cp >= 0xd800 and cp <= 0xdfff) then return nil end
        elseif c >= 0xf0 and c <= 0xf4 and c3 and c1 & 0xc0 == 0x80 and c2 & 0xc0 == 0x80 and
            c3 & 0xc0 == 0x80 then
            cp, len = (c & 0x07) << 18 | (c1 & 0x3f) << 12 | (c2 & 0x3f) << 6 | (c3 & 0x3f), 4
            if cp < 0x10000 or cp > 0x10ffff then return nil end
        else
            return nil
        end
        if cp >= 0x10000 then
            cp = cp - 0x10000
            h = (h ~ (0xd800 | (cp >> 10))) * P
            h = (h ~ (0xdc00 | (cp & 0x3ff))) * P
            units = units + 2
        else
            h = (h ~ cp) * P
            units = units + 1
        end
        i = j + len
    end
    local v = (h & 0xfffffffffffff) ~ (h >> 52)
    return '"' .. base36(v) .. base36(units) .. '"'
end

-- The ETag is a pure function of the body and costs ~8 Lua VM instructions
-- per byte: memoized by body (a long-string table key: hashed by sampling,
-- compared with memcmp), bounded. CEDRA_LUA_ETAG_MEMO=0 turns it off.
local ETAG_MEMO = env("CEDRA_LUA_ETAG_MEMO", "1") == "1"
local etags, netags = {}, 0
local function etag_memo(body)
    if not ETAG_MEMO then return etag_of(body) end
    local t = etags[body]
    if t == nil then
        t = etag_of(body) or false
        if netags >= 256 then etags, netags = {}, 0 end
        etags[body] = t
        netags = netags + 1
    end
    return t or nil
end

local function is_int(v, min, max)
    return type(v) == "number" and v == floor(v) and v >= min and v <= max
end

local REFUSED = {}
for _, n in ipairs({"connection", "content-encoding", "content-length", "date", "etag",
                    "keep-alive", "proxy-connection", "set-cookie", "te", "trailer",
                    "transfer-encoding", "upgrade", "vary", "x-nextjs-cache", "x-powered-by"}) do
    REFUSED[n] = true
end

local function add_tag(e, t)
    if type(t) ~= "string" then return "malformed" end
    if t == "" or e.tagset[t] then return nil end
    if #t > 1024 or #e.tags >= MAX_TAGS then return "too_big" end
    if find(t, "\0", 1, true) then return "malformed" end
    e.tags[#e.tags + 1] = t
    e.tagset[t] = true
end

local function valid_value(v)
    return not find(v, "[^\t\32-\126]")
end

local function parse_headers(e, hdrs)
    if hdrs == nil or hdrs == cjson.null then return nil end
    if type(hdrs) ~= "table" then return "malformed" end
    local out = {}
    for name, v in pairs(hdrs) do
        if type(name) ~= "string" then return "malformed" end
        if name == "x-next-cache-tags" then
            if type(v) == "string" then
                for t in (v .. ","):gmatch("([^,]*),") do
                    local err = add_tag(e, t)
                    if err then return err end
                end
            elseif type(v) == "table" then
                for _, t in ipairs(v) do
                    local err = add_tag(e, t)
                    if err then return err end
                end
            else
                return "malformed"
            end
        else
            local ln = lower(name)
            if ln == "x-next-cache-tags" or #name > 64 or find(name, "[^%w!#%$%%&'%*%+%-%.%^_`|~]")
                or REFUSED[ln] then
                return "unsupported"
            end
            if ln == "cache-control" then e.has_cc = true end
            if ln == "content-type" then e.has_ct = true end
            local vals
            if type(v) == "string" then
                vals = {v}
            elseif type(v) == "number" and v == floor(v) then
                vals = {format("%d", v)}
            elseif type(v) == "table" then
                vals = {}
                for _, x in ipairs(v) do
                    if type(x) ~= "string" then return "unsupported" end
                    vals[#vals + 1] = x
                end
            else
                return "unsupported"
            end
            for _, x in ipairs(vals) do
                if #x > 8192 or not valid_value(x) then return "unsupported" end
                out[#out + 1] = {ln, x}
            end
            if #out > 32 then return "too_big" end
        end
    end
    e.headers = out
end

-- Decodes and checks one value. Returns the entry or nil, reason.
local function parse_entry(raw)
    if #raw > MAX_VALUE then return nil, "too_big" end
    local root = cjson.decode(raw)
    if type(root) ~= "table" then return nil, "malformed" end
    local lm = root.lastModified
    if not is_int(lm, 1, JS_MAX_SAFE) then return nil, "malformed" end
    local e = {lm = tointeger(lm) or lm, tags = {}, tagset = {}, headers = {}}
    local tags = root.tags
    if type(tags) ~= "table" then return nil, "malformed" end
    if #tags > MAX_TAGS then return nil, "too_big" end
    for _, t in ipairs(tags) do
        local err = add_tag(e, t)
        if err then return nil, err end
    end
    local v = root.value
    if v == nil or v == cjson.null then return nil, "not_page" end
    if type(v) ~= "table" then return nil, "malformed" end
    if v.kind == "APP_PAGE" then e.app = true
    elseif v.kind == "PAGES" then e.app = false
    elseif type(v.kind) ~= "string" then return nil, "malformed"
    else return nil, "not_page" end
    local post = v.postponed
    if type(post) == "string" then return nil, "postponed" end
    if post ~= nil and post ~= cjson.null then return nil, "malformed" end
    local html = v.html
    if html == nil or html == cjson.null then return nil, "no_html" end
    if type(html) ~= "string" then return nil, "malformed" end
    if #html == 0 then return nil, "no_html" end
    if #html > MAX_BODY then return nil, "too_big" end
    e.body = html
    e.status = 200
    local st = v.status
    if st ~= nil and st ~= cjson.null then
        if not is_int(st, -JS_MAX_SAFE, JS_MAX_SAFE) then return nil, "malformed" end
        if st ~= 0 then e.status = (st >= 100 and st <= 999) and tointeger(st) or -1 end
    end
    if e.status ~= 200 and (not e.app or e.status ~= 404) then
        return nil, e.status < 0 and "malformed" or "unsupported"
    end
    local rsc = v.rscData
    if rsc ~= nil and rsc ~= cjson.null and type(rsc) ~= "string" then return nil, "malformed" end
    local seg = v.segmentData
    if seg ~= nil and seg ~= cjson.null then
        if type(seg) ~= "table" then return nil, "malformed" end
        for _, x in pairs(seg) do
            if type(x) ~= "string" then return nil, "malformed" end
        end
    end
    local err = parse_headers(e, v.headers)
    if err then return nil, err end
    if not e.app then e.headers = {} end
    local ls = root.lifespan
    if ls == nil or ls == cjson.null then return nil, "no_lifespan" end
    if type(ls) ~= "table" then return nil, "malformed" end
    local max_s = JS_MAX_SAFE // 1000
    for _, f in ipairs({"lastModifiedAt", "staleAt", "expireAt", "staleAge", "expireAge"}) do
        if not is_int(ls[f], 0, max_s) then return nil, "malformed" end
    end
    e.expire_at = tointeger(ls.expireAt)
    local rv = ls.revalidate
    if rv == false then
        e.revalidate = 0
    elseif is_int(rv, 1, max_s) then
        e.revalidate = tointeger(rv)
    else
        return nil, "malformed"
    end
    e.etag = etag_memo(html)
    if not e.etag then return nil, "malformed" end
    -- lib/cache-control.ts
    local r = e.revalidate
    if r == 0 then
        e.cc = "s-maxage=" .. ONE_YEAR
    elseif EXPIRE > 0 and r < EXPIRE then
        e.cc = "s-maxage=" .. r .. ", stale-while-revalidate=" .. (EXPIRE - r)
    else
        e.cc = "s-maxage=" .. r
    end
    -- last millisecond at which the page is fresh (for the table cache)
    local until_ms = (e.expire_at + 1) * 1000 - 1
    if r > 0 then
        until_ms = math.min(until_ms, e.lm + r * 1000)
        if EXPIRE > 0 then until_ms = math.min(until_ms, e.lm + EXPIRE * 1000) end
    end
    e.fresh_until = until_ms
    return e
end

local S_FRESH, S_STALE, S_EXPIRED, S_REVALIDATED = 1, 2, 3, 4

local function parse_int(s) -- JS parseInt(s) for a tag time; nil = NaN
    if type(s) ~= "string" then return nil end
    local n = s:match("^%s*([+-]?%d+)")
    return n and tonumber(n)
end

local function entry_state(e, now_ms, times)
    if e.expire_at < now_ms // 1000 then return S_EXPIRED end
    local r = e.revalidate
    if r > 0 and EXPIRE > 0 and e.lm + EXPIRE * 1000 < now_ms then return S_EXPIRED end
    if times then
        for i = 1, #e.tags do
            local t = parse_int(times[i])
            if t and t > e.lm then return S_REVALIDATED end
        end
    end
    if r > 0 and e.lm + r * 1000 < now_ms then return S_STALE end
    return S_FRESH
end

local APP_VARY = "rsc, next-router-state-tree, next-router-prefetch, next-router-segment-prefetch"
local APP_VARY_AE = APP_VARY .. ", Accept-Encoding"
local CT = "text/html; charset=utf-8"

-- The reply Next.js would send (app-page-runtime.js / pages-handler.js order).
local function make_reply(e, state, nm)
    local h = {}
    local function add(name, val)
        local l = h[name]
        if l then l[#l + 1] = val else h[name] = {val} end
    end
    local cache = state == S_FRESH and "HIT" or "STALE"
    if e.app then
        add("vary", nm and APP_VARY or APP_VARY_AE)
        add("x-nextjs-cache", cache)
        add("x-nextjs-prerender", "1")
        for _, hv in ipairs(e.headers) do add(hv[1], hv[2]) end
        add("x-powered-by", "Next.js")
        if not e.has_cc then add("cache-control", e.cc) end
        add("etag", e.etag)
        if not nm and not e.has_ct then add("content-type", CT) end
    else
        add("x-nextjs-cache", cache)
        add("cache-control", e.cc)
        add("x-powered-by", "Next.js")
        add("etag", e.etag)
        if not nm then
            add("content-type", CT)
            add("vary", "Accept-Encoding")
        end
    end
    if nm then return {status = 304, headers = h} end
    return {status = e.status, headers = h, body = e.body}
end

-- compiled/fresh: If-None-Match against the ETag
local function inm_matches(hdr, etag)
    if hdr == "*" then return true end
    for tok in (hdr .. ","):gmatch("([^,]*),") do
        tok = tok:match("^ *(.-) *$")
        if tok == etag or tok == "W/" .. etag or "W/" .. tok == etag then return true end
    end
    return false
end

local function no_cache(cc)
    if not cc then return false end
    local s = "," .. cc .. ","
    return find(s, ",%s*no%-cache%s*,") ~= nil
end

-- ---- the table cache (variant D) ------------------------------------------------

-- Two generations: lookups look in cur, then old (promoting); when cur is
-- full it becomes old. Bounded to 2 * CACHE_MAX/2 entries, LRU-ish, O(1).
local cur, old, ncur = {}, {}, 0
local HALF = math.max(1, CACHE_MAX // 2)

local function cache_get(key)
    local e = cur[key]
    if e then return e end
    e = old[key]
    if e then
        old[key] = nil
        if ncur >= HALF then old, cur, ncur = cur, {}, 0 end
        cur[key] = e
        ncur = ncur + 1
    end
    return e
end

local function cache_put(key, e)
    if cur[key] == nil then
        if ncur >= HALF then old, cur, ncur = cur, {}, 0 end
        ncur = ncur + 1
    end
    cur[key] = e
end

local function cache_drop(key)
    if cur[key] then
        cur[key] = nil
        ncur = ncur - 1
    end
    old[key] = nil
end

-- ---- keeping the table exact: Valkey client-side caching (variant D) -------------
--
-- The same job as cedra-spoa's L1 (spoa/tracking.c): the table may only
-- answer while Valkey is telling this Lua state about every change under the
-- key prefix. Per thread (each Lua state runs its own two tasks, on its own
-- thread, with lua-load-per-thread), over two core.tcp connections, RESP2:
--  * the subscriber: CLIENT ID, then SUBSCRIBE __redis__:invalidate and a
--    heartbeat channel of its own; it reads pushes until the connection ends;
--  * the tracking connection: CLIENT TRACKING on REDIRECT <subscriber id>
--    BCAST PREFIX <prefix> (+OK required), then every HB_MS a PUBLISH on the
--    heartbeat channel: its reply proves this connection alive and, being the
--    number of receivers, that the subscriber is still subscribed. The
--    subscriber answers each heartbeat with a PING (a "pong" comes back): a
--    HAProxy Lua socket's timeout also counts idle time, in both directions,
--    so both sockets must carry traffic each way; no heartbeat or pong for
--    TRACK_TIMEOUT s and the subscriber is declared dead.
-- An invalidation drops the entry of a key PREFIX..<cache key>; a change of
-- the bookkeeping hashes (__revalidated_tags__, __sharedTags__,
-- __sharedTagsTtl__ under the prefix: revalidateTag, tags of any page), a NIL
-- payload (FLUSHALL/FLUSHDB) or anything unexpected drops the whole table.
-- Any failure of either connection (error, timeout, refusal, unexpected reply)
-- flushes the table and turns it off (lookups go to Valkey, as variant C) until
-- both are back (retry after 100 ms doubling to 2 s): invalidations may have
-- been lost meanwhile. Every drop or flush, and tracking coming up, bumps
-- `epoch`; a lookup inserts its entry only if the epoch it read before asking
-- Valkey is unchanged and tracking is up (what l1.c's epochs do), so a value
-- read before a change, or while invalidations were not followed, never
-- enters the table. The request path reads one boolean and the table.

local INVALIDATE = "__redis__:invalidate"
local SHARED_TTL = PREFIX .. "__sharedTagsTtl__"
local HB_MS = 500         -- heartbeat period
local TRACK_TIMEOUT = 2   -- s, socket timeout of both tracking connections
local BACKOFF_MIN, BACKOFF_MAX = 100, 2000 -- ms
local PLEN = #PREFIX
local PING = resp({"PING"})

local tracking_up = false -- the table answers only while true
local epoch = 0
local sub_id, sub_hb, sub_gen = nil, nil, 0 -- the subscriber, while subscribed
local down_logged = false

local function cache_flush()
    cur, old, ncur = {}, {}, 0
    epoch = epoch + 1
end

local function tracking_down(why)
    if tracking_up or not down_logged then
        core.Warning(format("cedra_edge: thread %d: tracking down (%s): table flushed, off until it is back",
            core.thread, tostring(why)))
        down_logged = true
    end
    tracking_up = false
    cache_flush()
end

local function on_invalidate(keys)
    if type(keys) ~= "table" then -- NIL: FLUSHALL/FLUSHDB; else not Valkey's
        cache_flush()
        return
    end
    epoch = epoch + 1
    for i = 1, #keys do
        local k = keys[i]
        if k == REVALIDATED or k == SHARED or k == SHARED_TTL or type(k) ~= "string" then
            cache_flush()
            return
        end
        if sub(k, 1, PLEN) == PREFIX then cache_drop(sub(k, PLEN + 1)) end
    end
end

-- Runs the subscriber on s until it fails; returns why.
local function subscriber(s)
    local ok, err = s:connect(VHOST, VPORT)
    if not ok then return "connect: " .. tostring(err) end
    if not s:send(resp({"CLIENT", "ID"})) then return "send" end
    local id, k = read_reply(s)
    if k ~= ":" then return "CLIENT ID: " .. tostring(id or k) end
    local hb = format("cedra_edge:hb:%d", id)
    if not s:send(resp({"SUBSCRIBE", INVALIDATE, hb})) then return "send" end
    for _ = 1, 2 do
        local v, kk = read_reply(s)
        if kk ~= "*" or type(v) ~= "table" or v[1] ~= "subscribe" then
            return "SUBSCRIBE: " .. tostring(v or kk)
        end
    end
    sub_id, sub_hb, sub_gen = id, hb, sub_gen + 1
    while true do
        local v, kk = read_reply(s)
        if v == nil then return kk end -- closed, or no heartbeat within TRACK_TIMEOUT
        if kk ~= "*" or type(v) ~= "table" then return "unexpected reply" end
        if v[1] == "message" then
            if v[2] == INVALIDATE then
                on_invalidate(v[3])
            elseif v[2] == hb then
                -- Answer a heartbeat with a PING: the socket's timeout also
                -- runs on the side that does not send (measured: a subscriber
                -- that only reads is closed after ~2 timeouts).
                if not s:send(PING) then return "send" end
            end
        elseif v[1] ~= "pong" then
            return "unexpected reply"
        end
    end
end

local function call(s, args)
    if not s:send(resp(args)) then return nil, "send" end
    return read_reply(s)
end

-- Runs the tracking connection on s for subscriber generation gen; returns
-- why it ended (nil: the subscriber went away, its task went down).
local function tracker(s, gen, id, hb)
    local ok, err = s:connect(VHOST, VPORT)
    if not ok then return "connect: " .. tostring(err) end
    local v, k = call(s, {"CLIENT", "TRACKING", "on", "REDIRECT", tostring(id), "BCAST", "PREFIX", PREFIX})
    if k ~= "+" or v ~= "OK" then return "CLIENT TRACKING: " .. tostring(v or k) end
    local seq = 0
    while true do
        seq = seq + 1
        v, k = call(s, {"PUBLISH", hb, tostring(seq)})
        if k ~= ":" or type(v) ~= "number" then return "PUBLISH: " .. tostring(v or k) end
        if v < 1 then return "subscriber no longer subscribed" end
        if gen ~= sub_gen then return nil end
        if not tracking_up then
            epoch = epoch + 1 -- lookups begun before this point do not insert
            tracking_up = true
            if down_logged then
                core.Warning(format("cedra_edge: thread %d: tracking up again, table on", core.thread))
                down_logged = false
            end
        end
        core.msleep(HB_MS)
        if gen ~= sub_gen then return nil end
    end
end

local function clock_ms()
    local t = core.now()
    return t.sec * 1000 + t.usec // 1000
end

-- The two tasks of this Lua state (register_task in a lua-load-per-thread
-- file: one pair per thread, each on its own thread).
local function subscriber_task()
    local backoff = BACKOFF_MIN
    while true do
        local s = core.tcp()
        s:settimeout(TRACK_TIMEOUT)
        local t0 = clock_ms()
        local ok, why = pcall(subscriber, s)
        s:close()
        sub_id, sub_hb, sub_gen = nil, nil, sub_gen + 1
        tracking_down("subscriber: " .. tostring(why))
        if clock_ms() - t0 >= BACKOFF_MAX then backoff = BACKOFF_MIN end
        core.msleep(backoff)
        backoff = math.min(backoff * 2, BACKOFF_MAX)
    end
end

local function tracker_task()
    local backoff = BACKOFF_MIN
    while true do
        while not sub_id do core.msleep(10) end
        local gen = sub_gen
        local s = core.tcp()
        s:settimeout(TRACK_TIMEOUT)
        local t0 = clock_ms()
        local ok, why = pcall(tracker, s, gen, sub_id, sub_hb)
        s:close()
        if gen == sub_gen then -- its own failure (else the subscriber's task went down)
            tracking_down("tracking: " .. tostring(why))
            if clock_ms() - t0 >= BACKOFF_MAX then backoff = BACKOFF_MIN end
            core.msleep(backoff)
            backoff = math.min(backoff * 2, BACKOFF_MAX)
        end
    end
end

-- ---- the action -------------------------------------------------------------------

local function pass(txn, cache, loc)
    txn:set_var("txn.cedra.action", "pass")
    txn:set_var("txn.cedra.cache", cache)
    if loc then txn:set_var("txn.cedra.locale", loc) end
end

-- edge() returns what to serve; txn:done() ends the Lua execution with a
-- longjmp (an error pcall would catch), so it is called outside the pcall.
local function serve(txn, reply, cache, loc)
    return reply, cache, loc
end

local function now_ms()
    local t = core.now()
    return t.sec * 1000 + t.usec // 1000
end

local function must_bypass(method, h)
    if method ~= "GET" and method ~= "HEAD" then return true end
    if h["rsc"] or h["next-router-prefetch"] or h["next-router-state-tree"] or
        h["next-router-segment-prefetch"] or h["authorization"] then
        return true
    end
    local cookie = h["cookie"] and join(h, "cookie", "; ")
    if cookie then
        if cookie_get(cookie, "__prerender_bypass") or cookie_get(cookie, "__next_preview_data") then
            return true
        end
        for _, c in ipairs(SESSION_COOKIES) do
            if cookie_get(cookie, c) then return true end
        end
    end
    return false
end

local function try_redirect(txn, method, path, h)
    if method ~= "GET" and method ~= "HEAD" then return false end
    if not redirectable(path) then return false end
    local loc
    local cookie = join(h, "cookie", "; ")
    local c = cookie and cookie_get(cookie, LOCALE_COOKIE)
    if c and LOCALES[c] then
        loc = c
    else
        local al = join(h, "accept-language", ", ")
        local l = al and al ~= "" and locale_from_accept_language(al)
        loc = l and LOCALE_LIST[l] or DEFAULT_LOCALE
    end
    local query = txn.f:query()
    if not uri_chars_ok(path, false) or (query and query ~= "" and not uri_chars_ok(query, true)) then
        return false
    end
    local target = "/" .. loc .. (path == "/" and "" or path)
    if query and query ~= "" then target = target .. "?" .. query end
    if #target >= 4096 then return false end
    txn:set_var("txn.cedra.locale", loc)
    txn:set_var("txn.cedra.action", "redirect")
    txn:set_var("txn.cedra.location", target)
    txn:set_var("txn.cedra.status", REDIRECT_CODE)
    txn:set_var("txn.cedra.cache", "BYPASS")
    return true
end

local function why(key, cache, reason)
    if DEBUG then core.Warning("cedra_edge: " .. key .. " " .. cache .. " " .. tostring(reason)) end
    return nil, cache
end

-- The Valkey lookup: returns entry, state or nil, "MISS"/"ERROR".
local function lookup(key)
    local vals, kinds = exchange(resp({"GET", PREFIX .. key}) .. resp({"HGET", SHARED, key}), 2)
    if not vals then return why(key, "ERROR", kinds) end
    if kinds[1] == "-" or kinds[2] == "-" then return why(key, "ERROR", "valkey") end
    if vals[1] == NIL then return why(key, "MISS", "absent") end
    if vals[2] == NIL then return why(key, "MISS", "not_shared") end
    local e, err = parse_entry(vals[1])
    if not e then return why(key, "MISS", err) end
    local times
    if #e.tags > 0 then
        local args = {"HMGET", REVALIDATED}
        for i = 1, #e.tags do args[i + 2] = e.tags[i] end
        local tv, tk = exchange(resp(args), 1)
        if not tv or tk[1] ~= "*" or #tv[1] ~= #e.tags then return why(key, "ERROR", "tags") end
        times = tv[1]
    end
    local state = entry_state(e, now_ms(), times)
    if DEBUG and state ~= S_FRESH then
        why(key, "state", state .. " now=" .. now_ms() .. " lm=" .. e.lm .. " expireAt=" .. e.expire_at .. " r=" .. e.revalidate)
    end
    return e, state
end

local function edge(txn)
    local path = txn.f:path()
    local method = txn.f:method()
    local h = txn.http:req_get_headers()
    local seg = path:match("^/([^/]+)")
    local loc = seg and LOCALES[seg] and seg
    if not loc then
        if try_redirect(txn, method, path, h) then return end
        return pass(txn, "BYPASS")
    end
    if must_bypass(method, h) then return pass(txn, "BYPASS", loc) end
    local key = key_of(path)
    if not key then return pass(txn, "BYPASS", loc) end

    -- 304 only to If-None-Match without no-cache and without If-Modified-Since
    local inm = h["if-none-match"] and join(h, "if-none-match", ", ")
    local conditional = inm and #inm <= INM_MAX and not h["if-modified-since"] and
        not no_cache(h["cache-control"] and join(h, "cache-control", ", "))

    if USE_CACHE and tracking_up then
        local e = cache_get(key)
        if e then
            -- whole seconds: serve only if fresh for the whole current second
            if os.time() * 1000 + 999 <= e.fresh_until then
                if conditional and inm_matches(inm, e.etag) then
                    return serve(txn, make_reply(e, S_FRESH, true), "HIT", loc)
                end
                return serve(txn, e.reply, "HIT", loc)
            end
            cache_drop(key)
        end
    end

    local ep = epoch -- before asking Valkey: a change seen meanwhile bumps it
    local e, state = lookup(key)
    if not e then return pass(txn, state, loc) end
    if state == S_EXPIRED or state == S_REVALIDATED then return pass(txn, "MISS", loc) end
    if state == S_STALE then
        local v, k = exchange(resp({"SET", LOCK_PREFIX .. PREFIX .. key, "1", "NX", "PX", LOCK_MS}), 1)
        if not v then return pass(txn, "ERROR", loc) end
        if k[1] == "+" then return pass(txn, "STALE", loc) end -- this one revalidates
        if v[1] ~= NIL then return pass(txn, "ERROR", loc) end
    end
    local cache = state == S_FRESH and "HIT" or "STALE"
    if USE_CACHE and state == S_FRESH then
        e.reply = make_reply(e, S_FRESH, false)
        e.tagset = nil
        if tracking_up and epoch == ep then cache_put(key, e) end
        if conditional and inm_matches(inm, e.etag) then
            return serve(txn, make_reply(e, state, true), cache, loc)
        end
        return serve(txn, e.reply, cache, loc)
    end
    local nm = conditional and inm_matches(inm, e.etag)
    return serve(txn, make_reply(e, state, nm), cache, loc)
end

if USE_CACHE then
    core.register_task(subscriber_task)
    core.register_task(tracker_task)
end

core.register_action("cedra_edge", {"http-req"}, function(txn)
    -- A fault here must not become a client error: the request passes.
    local ok, reply, cache, loc = xpcall(edge, debug.traceback, txn)
    if not ok then
        txn:set_var("txn.cedra.action", "pass")
        txn:set_var("txn.cedra.cache", "ERROR")
        core.Warning("cedra_edge: " .. tostring(reply))
    elseif reply then
        txn:set_var("txn.cedra.cache", cache)
        txn:set_var("txn.cedra.locale", loc)
        txn:done(reply)
    end
end, 0)
