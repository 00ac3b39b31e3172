#include "handler.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include <ev.h>

#include "cookie.h"
#include "coding.h"
#include "deliver.h"
#include "fill.h"
#include "fill_key.h"
#include "gzip.h"
#include "isr.h"
#include "l1.h"
#include "lane.h"
#include "locale.h"
#include "log.h"
#include "lookup.h"
#include "routes.h"
#include "stats.h"
#include "util.h"
#include "valkey.h"

/* Variable names without scope and prefix: HAProxy adds "txn.cedra.". The
 * full set is listed in haproxy/cedra-spoe.conf (register-var-names). */
#define VAR_LOCALE "locale"
#define VAR_ACTION "action"
#define VAR_CACHE "cache"
#define VAR_LOCATION "location"
#define VAR_STATUS "status"
#define VAR_BODY "body"
#define VAR_TOKEN "token"
#define VAR_POOL "pool"
#define VAR_PIN "set_pool"
#define VAR_UNPIN "unpin"
#define VAR_PAGE "page"
#define VAR_VARY "h_vary"

/* The cookie that pins a user to a pool: "<pool>.<build>" (haproxy.cfg sets it). */
#define POOL_COOKIE "cedra_pool"
#define PIN_MAX 160

/* Longest redirect target we build; longer requests are passed unchanged. */
#define LOCATION_MAX 4096
/* Longest If-None-Match we keep for a pending lookup; longer ones get a 200. */
#define INM_MAX 1024
#define KEY_MAX 1024

/* The response headers Next.js sends and the variables that carry them to
 * HAProxy's "http-request return" rules (haproxy/haproxy.cfg). */
static const struct {
    const char *header;
    const char *var;
} header_vars[] = {
    {"vary", "h_vary"},
    {"x-nextjs-cache", "h_nextjs_cache"},
    {"x-nextjs-prerender", "h_prerender"},
    {"x-nextjs-stale-time", "h_stale_time"},
    {"x-powered-by", "h_powered_by"},
    {"cache-control", "h_cache_control"},
    {"etag", "h_etag"},
};

struct handler {
    uint64_t rng; /* xorshift state: draws of the canary share */
    struct ev_loop *loop;
    unsigned id;
    struct deliver *deliver;
    struct l1 *l1;     /* shared in-process page cache, may be NULL */
    struct lane *lane; /* shared fast lane, may be NULL */
    struct fill *fill; /* shared edge pages by id (haproxy-cache on), may be NULL */
    struct spoa_stats *stats;
    struct valkey *valkey;
    uint8_t *scratch; /* the ACK's actions */
    size_t scratch_len;
};

struct str {
    const char *p;
    size_t len;
};

/* What the decision needs from one cedra-req message; strings point into the
 * NOTIFY frame. */
struct request {
    struct str method;
    struct str path;
    struct str query;
    struct str cookie;
    /* Cookie header lines: HAProxy hands over only the last one (req.fhdr). */
    int64_t cookie_headers;
    /* Cache-Control lines: the same, for the no-cache that makes Next answer 200. */
    int64_t cache_control_headers;
    struct str accept_language;
    /* Accept-Language lines: Next.js reads them all (Node joins them). */
    int64_t accept_language_headers;
    /* Accept-Encoding, and its lines: HAProxy hands over only the last. */
    struct str accept_encoding;
    int64_t accept_encoding_headers;
    struct str if_none_match;
    /* If-None-Match lines: Node joins them, HAProxy hands over the last. */
    int64_t if_none_match_headers;
    struct str cache_control;
    /* App Router headers: counts (req.hdr_cnt: a comma splits a value) and
     * the whole values of the ones the answer depends on. */
    struct str rsc_value, prefetch_value, state_tree_value, segment_value;
    int64_t rsc, prefetch, state_tree, segment_prefetch, next_url, now_route;
    int64_t authorization, if_modified_since;
};

/* A reference on an entry: an in-process cache handle, or the entry itself. */
struct held {
    const struct isr_entry *e;
    struct l1_ref *ref;
    struct isr_entry *own;
};

/* Who the request is for: its locale and the pool (build) it is pinned to. */
struct who {
    int locale; /* -1: none */
    int pool;   /* index in conf->pools, -1: no pools configured, POOL_UNKNOWN_CANARY */
    bool pin;   /* a (new) pin cookie must be set */
    bool unpin; /* the pin cookie must be removed: no canary, it pins nothing */
    char pin_value[PIN_MAX];
};

/* A request waiting for Valkey. */
struct pending {
    struct handler *h;
    struct spoe_req *req;
    struct spoa_conf *conf;
    struct who who;
    double t0;        /* lookup start, for the latency histogram */
    bool conditional; /* may be answered 304 */
    bool get;         /* a GET (HEAD is never answered from HAProxy's cache) */
    enum isr_variant variant;
    /* The content-coding Next would choose (GET only; HEAD is never
     * compressed); coding_ok false when the edge cannot tell. */
    enum coding coding;
    bool coding_ok;
    char segment[ISR_MAX_SEGMENT_PATH]; /* ISR_SEGMENT: the segment path asked for */
    size_t segment_len;
    char inm[INM_MAX];
    size_t inm_len;
    char fkey[KEY_MAX]; /* key prefix + Next.js key */
    size_t fkeylen;
    size_t prefixlen;
    uint64_t epoch;   /* of the in-process cache when the lookup started */
    struct held held; /* the page, once known */
    /* The raw path, kept when an edge hit may be published to the fast lane
     * (the NOTIFY's bytes are gone by the time Valkey answers). */
    char lane_path[LANE_PATH_MAX];
    size_t lane_path_len;
    /* HAProxy must have its answer within valkey-timeout; the lookup itself
     * may run on (a big page takes longer to read and parse) to fill the
     * in-process cache for the next requests. */
    ev_timer deadline;
    bool answered;
};

static bool str_is(struct str s, const char *lit)
{
    return s.len == strlen(lit) && memcmp(s.p, lit, s.len) == 0;
}

static bool arg_is(const char *n, size_t nl, const char *lit)
{
    return nl == strlen(lit) && memcmp(n, lit, nl) == 0;
}

static int64_t int_value(const struct spoe_data *d)
{
    switch (d->type) {
    case SPOE_INT32:
        return d->u.i32;
    case SPOE_UINT32:
        return d->u.u32;
    case SPOE_INT64:
        return d->u.i64;
    case SPOE_UINT64:
        return d->u.u64 > INT64_MAX ? INT64_MAX : (int64_t)d->u.u64;
    case SPOE_BOOL:
        return d->u.b;
    default:
        return 0;
    }
}

static void read_request(struct spoe_msg *m, struct request *rq)
{
    static const struct {
        const char *name;
        size_t off;
    } strs[] = {
        {"method", offsetof(struct request, method)},
        {"path", offsetof(struct request, path)},
        {"query", offsetof(struct request, query)},
        {"cookie", offsetof(struct request, cookie)},
        {"accept_language", offsetof(struct request, accept_language)},
        {"accept_encoding", offsetof(struct request, accept_encoding)},
        {"if_none_match", offsetof(struct request, if_none_match)},
        {"cache_control", offsetof(struct request, cache_control)},
        {"rsc_value", offsetof(struct request, rsc_value)},
        {"prefetch_value", offsetof(struct request, prefetch_value)},
        {"state_tree_value", offsetof(struct request, state_tree_value)},
        {"segment_value", offsetof(struct request, segment_value)},
    };
    static const struct {
        const char *name;
        size_t off;
    } ints[] = {
        {"rsc", offsetof(struct request, rsc)},
        {"prefetch", offsetof(struct request, prefetch)},
        {"state_tree", offsetof(struct request, state_tree)},
        {"segment_prefetch", offsetof(struct request, segment_prefetch)},
        {"next_url", offsetof(struct request, next_url)},
        {"now_route", offsetof(struct request, now_route)},
        {"authorization", offsetof(struct request, authorization)},
        {"cookie_headers", offsetof(struct request, cookie_headers)},
        {"accept_encoding_headers", offsetof(struct request, accept_encoding_headers)},
        {"accept_language_headers", offsetof(struct request, accept_language_headers)},
        {"cache_control_headers", offsetof(struct request, cache_control_headers)},
        {"if_none_match_headers", offsetof(struct request, if_none_match_headers)},
        {"if_modified_since", offsetof(struct request, if_modified_since)},
    };
    const char *n;
    size_t nl;
    struct spoe_data d;

    memset(rq, 0, sizeof(*rq));
    while (spoe_arg_next(m, &n, &nl, &d) == 1) {
        /* A sample HAProxy could not fetch arrives as NULL: leave it empty. */
        if (d.type == SPOE_STR || d.type == SPOE_BIN) {
            for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
                if (arg_is(n, nl, strs[i].name)) {
                    struct str *s = (struct str *)((char *)rq + strs[i].off);

                    s->p = d.u.s.ptr;
                    s->len = d.u.s.len;
                }
        } else if (d.type != SPOE_NULL) {
            for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++)
                if (arg_is(n, nl, ints[i].name))
                    *(int64_t *)((char *)rq + ints[i].off) = int_value(&d);
        }
    }
}

static void put_str_var(struct spoe_wbuf *w, const char *name, const char *val, size_t len)
{
    struct spoe_data d = spoe_str(val, len);

    spoe_put_set_var(w, SPOE_SCOPE_TXN, name, strlen(name), &d);
}

static void put_int_var(struct spoe_wbuf *w, const char *name, int32_t v)
{
    struct spoe_data d = spoe_sint(v);

    spoe_put_set_var(w, SPOE_SCOPE_TXN, name, strlen(name), &d);
}

static void put_locale(struct spoe_wbuf *w, const struct spoa_conf *conf, int loc)
{
    if (loc >= 0)
        put_str_var(w, VAR_LOCALE, conf->locales.name[loc], conf->locales.len[loc]);
}

/* A canary pin while the canary's state is not known yet: passed to the canary
 * backend, which HAProxy uses only while it has a usable server. */
#define POOL_UNKNOWN_CANARY (-2)

/* Locale, pool and, for a new pin, the cookie value HAProxy sets. */
static void put_who(struct spoe_wbuf *w, const struct spoa_conf *conf, const struct who *who)
{
    put_locale(w, conf, who->locale);
    if (who->pool == POOL_UNKNOWN_CANARY)
        put_str_var(w, VAR_POOL, "canary", strlen("canary"));
    if (who->pool >= 0) {
        const char *name = conf->pools[who->pool].name;

        put_str_var(w, VAR_POOL, name, strlen(name));
        if (who->pin)
            put_str_var(w, VAR_PIN, who->pin_value, strlen(who->pin_value));
        else if (who->unpin)
            put_int_var(w, VAR_UNPIN, 1);
    }
}

static uint64_t next_rand(struct handler *h)
{
    uint64_t x = h->rng;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return h->rng = x;
}

/* The pool of a request. While a canary is live, every user is pinned with a
 * cookie naming the pool and its build; a cookie that names no live pool and
 * build (forged, or a build gone) is ignored and the user drawn again, with
 * the canary share. Without a canary, everybody is on stable, unpinned, and
 * a pin left from the last canary is removed: it would otherwise keep its
 * user off HAProxy's fast lane (whose guard sends every cedra_pool cookie to
 * SPOE) until the cookie expires. */
static void choose_pool(struct handler *h, const struct request *rq, const struct spoa_conf *conf,
                        struct who *who)
{
    const struct spoa_pool *canary = spoa_conf_pool(conf, "canary");
    const char *v;
    size_t vl;
    unsigned i;

    who->pool = conf->npools ? 0 : -1;
    who->pin = who->unpin = false;
    /* Restarted or reloaded, cedra-spoa knows only the file's pools until
     * cedra-agent pushes the canary: a canary user is not moved to stable
     * meanwhile (nor served stable pages from the edge). */
    if (!canary && !conf->canary_known && conf->npools && rq->cookie.len &&
        cookie_get(rq->cookie.p, rq->cookie.len, POOL_COOKIE, &v, &vl) && vl > 7 &&
        memcmp(v, "canary.", 7) == 0)
        who->pool = POOL_UNKNOWN_CANARY;
    if (!canary) {
        /* Only once cedra-agent said there is no canary: after a restart, a
         * canary pin is kept until the canary's state is known. */
        who->unpin = conf->canary_known && conf->npools && rq->cookie.len &&
                     cookie_get(rq->cookie.p, rq->cookie.len, POOL_COOKIE, &v, &vl);
        return;
    }
    if (rq->cookie.len && cookie_get(rq->cookie.p, rq->cookie.len, POOL_COOKIE, &v, &vl)) {
        for (i = 0; i < conf->npools; i++) {
            const struct spoa_pool *p = &conf->pools[i];
            size_t nl = strlen(p->name), bl = strlen(p->build_id);

            if (vl == nl + 1 + bl && memcmp(v, p->name, nl) == 0 && v[nl] == '.' &&
                memcmp(v + nl + 1, p->build_id, bl) == 0) {
                who->pool = (int)i;
                return;
            }
        }
    }
    /* Both pools on one build (a promotion in flight: cedra-agent has just
     * moved stable to the promoted build and will turn the canary off next):
     * there is no build to choose, so nobody is pinned, or re-pinned. */
    if (canary != &conf->pools[0] && conf->pools[0].build_id[0] &&
        strcmp(canary->build_id, conf->pools[0].build_id) == 0)
        return;
    who->pool = next_rand(h) % 100 < conf->canary_weight ? (int)(canary - conf->pools) : 0;
    snprintf(who->pin_value, sizeof(who->pin_value), "%s.%s", conf->pools[who->pool].name,
             conf->pools[who->pool].build_id);
    who->pin = true;
}

/* The pass answer: the origin handles the request. */
static void put_pass(struct spoe_wbuf *w, struct handler *h, enum stat_cache c)
{
    put_str_var(w, VAR_ACTION, "pass", 4);
    put_str_var(w, VAR_CACHE, stat_cache_names[c], strlen(stat_cache_names[c]));
    metrics_counter_inc(h->stats->requests[DEC_PASS][c]);
}

static void send_ack(struct handler *h, struct spoe_req *req, struct spoe_wbuf *w)
{
    if (w->overflow) {
        /* HAProxy would reject an oversized ACK with DISCONNECT 3 and fail
         * every stream on the connection: answer with nothing instead, the
         * request passes to the origin. */
        metrics_counter_inc(h->stats->ack_too_big);
        w->len = 0;
    }
    spoe_req_ack(req, w->buf, w->len);
}

static void wbuf_for(struct handler *h, struct spoe_req *req, struct spoe_wbuf *w)
{
    size_t room = spoe_req_max_actions(req);

    spoe_wbuf_init(w, h->scratch, room < h->scratch_len ? room : h->scratch_len);
}

/* The locale for an unprefixed page: a valid NEXT_LOCALE cookie, then
 * Accept-Language, then the default — the order Next.js itself uses. -1 when
 * the edge cannot tell: Accept-Language on several lines, of which HAProxy
 * hands over the last only while Next.js reads them all. */
static int preferred_locale(const struct request *rq, const struct spoa_conf *conf)
{
    const char *v;
    size_t vl;
    int loc;

    if (rq->cookie.len && cookie_get(rq->cookie.p, rq->cookie.len, conf->locale_cookie, &v, &vl) &&
        (loc = locale_find(&conf->locales, v, vl)) >= 0)
        return loc;
    if (rq->accept_language_headers > 1)
        return -1;
    if (rq->accept_language.len &&
        (loc = locale_from_accept_language(&conf->locales, rq->accept_language.p,
                                           rq->accept_language.len)) >= 0)
        return loc;
    return (int)conf->locales.def;
}

/* Returns true when the request was answered with a locale redirect. */
static bool try_redirect(struct handler *h, const struct request *rq, const struct spoa_conf *conf,
                         struct spoe_wbuf *w)
{
    char target[LOCATION_MAX];
    int loc, n;

    /* Only safe methods: a redirected POST would lose or change its body. */
    if (!str_is(rq->method, "GET") && !str_is(rq->method, "HEAD"))
        return false;
    if (!locale_path_redirectable(conf->exclude, conf->nexclude, rq->path.p, rq->path.len))
        return false;
    loc = preferred_locale(rq, conf);
    if (loc < 0)
        return false;
    n = locale_redirect_target(target, sizeof(target), conf->locales.name[loc],
                               conf->locales.len[loc], rq->path.p, rq->path.len, rq->query.p,
                               rq->query.len);
    if (n < 0) {
        metrics_counter_inc(h->stats->redirect_refused);
        return false;
    }
    put_locale(w, conf, loc);
    put_str_var(w, VAR_ACTION, "redirect", 8);
    put_str_var(w, VAR_LOCATION, target, (size_t)n);
    put_int_var(w, VAR_STATUS, (int32_t)conf->redirect_code);
    put_str_var(w, VAR_CACHE, "BYPASS", 6);
    metrics_counter_inc(h->stats->requests[DEC_REDIRECT][CACHE_BYPASS]);
    return true;
}

/* The longest Next-Router-State-Tree taken: the client's tree of the page it
 * is on, URL-encoded JSON, a few hundred bytes for this kind of app. */
#define STATE_TREE_MAX 4096

static bool rsc_param_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

/* Which answer a request wants: the HTML, or the RSC payload of a client
 * navigation / full prefetch, or one segment of a segment prefetch. False
 * when it is an App Router request whose answer from Next.js is not a pure
 * function of the cached entry and what the edge sees (DESIGN §3.2): it
 * goes to the origin. What Next does (FACTS.md §9): RSC: 1 (exactly "1")
 * makes it an RSC request; Next 16 checks the _rsc search parameter against
 * a hash of Next-Router-Prefetch, -Segment-Prefetch, -State-Tree and
 * Next-Url and answers 307 when it does not match. Next-Url (interception
 * routes), X-Now-Route-Matches (Next then drops the RSC headers), prefetch
 * kinds other than "1", repeated headers, other search parameters and any
 * doubt go to the origin. */
static bool rsc_request(const struct request *rq, enum isr_variant *v)
{
    char sha[ISR_RSC_PARAM_SIZE], legacy[ISR_RSC_PARAM_SIZE];
    const char *q = rq->query.p, *val;
    size_t ql = rq->query.len, vl;
    bool pf = false, seg = false, tree = false;

    *v = ISR_HTML;
    if (!rq->rsc && !rq->prefetch && !rq->state_tree && !rq->segment_prefetch)
        return true;
    if (!str_is(rq->method, "GET") || rq->rsc != 1 || !str_is(rq->rsc_value, "1") || rq->next_url ||
        rq->now_route)
        return false;
    if (rq->prefetch) {
        if (rq->prefetch != 1 || !str_is(rq->prefetch_value, "1"))
            return false;
        pf = true;
    }
    if (rq->segment_prefetch) {
        /* Without Next-Router-Prefetch: 1 Next ignores it; rare, not ours. */
        if (!pf || rq->segment_prefetch != 1 || rq->segment_value.len == 0 ||
            rq->segment_value.len > ISR_MAX_SEGMENT_PATH || rq->segment_value.p[0] != '/')
            return false;
        seg = true;
    }
    if (rq->state_tree) {
        if (rq->state_tree != 1 || rq->state_tree_value.len == 0 ||
            rq->state_tree_value.len > STATE_TREE_MAX)
            return false;
        tree = true;
    }
    if (isr_rsc_param(pf ? "1" : NULL, 1, seg ? rq->segment_value.p : NULL, rq->segment_value.len,
                      tree ? rq->state_tree_value.p : NULL, rq->state_tree_value.len, sha,
                      legacy) < 0)
        return false;
    /* The query the client builds for a page without search parameters:
     * "_rsc=<hash>", or "_rsc" when the hash is empty. */
    if (ql == 4 && memcmp(q, "_rsc", 4) == 0) {
        val = q + 4;
        vl = 0;
    } else if (ql >= 5 && memcmp(q, "_rsc=", 5) == 0) {
        val = q + 5;
        vl = ql - 5;
    } else {
        return false;
    }
    for (size_t i = 0; i < vl; i++)
        if (!rsc_param_char(val[i]))
            return false;
    if (!(vl == strlen(sha) && memcmp(val, sha, vl) == 0) &&
        !(vl == strlen(legacy) && memcmp(val, legacy, vl) == 0))
        return false;
    *v = seg ? ISR_SEGMENT : ISR_RSC;
    return true;
}

/* Requests a shared cache must not answer (DESIGN §3.2): they go to the origin. */
static bool must_bypass(const struct request *rq, const struct spoa_conf *conf)
{
    const char *v;
    size_t vl;

    if (!str_is(rq->method, "GET") && !str_is(rq->method, "HEAD"))
        return true;
    if (rq->authorization)
        return true;
    /* The origin reads every Cookie line, the edge only the last one: a
     * session or preview cookie may hide in another. */
    if (rq->cookie_headers > 1)
        return true;
    /* Next answers 304 when any tag of any If-None-Match line matches; the
     * edge would judge the last line alone. Rare enough to leave to Next. */
    if (rq->if_none_match_headers > 1)
        return true;
    if (rq->cookie.len) {
        if (cookie_get(rq->cookie.p, rq->cookie.len, "__prerender_bypass", &v, &vl) ||
            cookie_get(rq->cookie.p, rq->cookie.len, "__next_preview_data", &v, &vl))
            return true;
        for (unsigned i = 0; i < conf->nsession; i++)
            if (cookie_get(rq->cookie.p, rq->cookie.len, conf->session_cookie[i], &v, &vl))
                return true;
    }
    return false;
}

static const char *var_for_header(const char *name, bool second)
{
    if (second)
        return strcasecmp(name, "x-nextjs-prerender") == 0 ? "h_prerender2" : NULL;
    for (size_t i = 0; i < sizeof(header_vars) / sizeof(header_vars[0]); i++)
        if (strcasecmp(name, header_vars[i].header) == 0)
            return header_vars[i].var;
    return NULL;
}

/* Room for the status line, end of headers, data block and HTX's own
 * header, and for what the shipped http-after-response rules add. */
#define EDGE_HTX_OVERHEAD 128
#define EDGE_AFTER_RESPONSE_ROOM 256

/* Writes the edge answer for a servable entry. Returns false when some part
 * of what Next.js would send cannot be reproduced by the shipped HAProxy
 * rules: the request then goes to the origin. */
static bool put_edge(struct spoe_wbuf *w, const struct pending *p, const struct isr_entry *e,
                     enum isr_state state, bool not_modified)
{
    struct isr_headers hs;
    bool seen_prerender = false;
    int status = not_modified ? 304 : e->status;
    size_t need = not_modified ? 0 : e->body_len;

    if (status != 200 && status != 404 && status != 304)
        return false;
    /* HAProxy's lf-string escapes the control bytes of a variable (a newline
     * comes out as "%0A"), TAB and bytes >= 0x80 aside: the delivery path
     * serves such a body byte for byte. */
    if (!not_modified && e->body_has_ctl)
        return false;
    if (isr_headers(e, state, not_modified, &p->conf->isr, &hs) < 0)
        return false;
    /* HAProxy builds the whole answer of a return rule in one buffer
     * (tune.bufsize = max-frame-size + 4 by default): each header costs its
     * name, value and 8 bytes of HTX block; the status line, end of headers
     * and data blocks about 96 more, and the http-after-response rules
     * (x-cedra-*, the pool cookie, vary) must still find room. An answer
     * that would not fit fails in HAProxy with a 500, so it must not be
     * sent this way: measured on 2.6.12, a 15842-byte page with the usual
     * headers is the largest that fits. */
    for (size_t i = 0; i < hs.n; i++)
        need += strlen(hs.h[i].name) + hs.h[i].value_len + 8;
    if (need + EDGE_HTX_OVERHEAD + EDGE_AFTER_RESPONSE_ROOM > (size_t)p->conf->max_frame_size + 4)
        return false;
    for (size_t i = 0; i < hs.n; i++) {
        const struct isr_header *hd = &hs.h[i];
        const char *var;

        if (strcasecmp(hd->name, "content-type") == 0) {
            /* The return rule sets it: it must be the one it sets. */
            if (strcmp(hd->value, "text/html; charset=utf-8") != 0)
                return false;
            continue;
        }
        var = var_for_header(hd->name,
                             strcasecmp(hd->name, "x-nextjs-prerender") == 0 && seen_prerender);
        if (!var)
            return false;
        if (strcasecmp(hd->name, "x-nextjs-prerender") == 0)
            seen_prerender = true;
        put_str_var(w, var, hd->value, hd->value_len);
    }
    put_who(w, p->conf, &p->who);
    put_str_var(w, VAR_ACTION, "edge", 4);
    put_int_var(w, VAR_STATUS, status);
    if (!not_modified)
        put_str_var(w, VAR_BODY, e->body, e->body_len);
    return !w->overflow;
}

/* How the answer must be coded to be what Next.js sends. */
enum answer_coding {
    ANSWER_IDENTITY,
    ANSWER_GZIP,
    ANSWER_ORIGIN, /* the edge cannot send it as Next would (deflate, doubt) */
};

/* m[0..len), blanks around it aside, is lit. */
static bool trimmed_is(const char *m, size_t len, const char *lit)
{
    while (len && (*m == ' ' || *m == '\t')) {
        m++;
        len--;
    }
    while (len && (m[len - 1] == ' ' || m[len - 1] == '\t'))
        len--;
    return len == strlen(lit) && memcmp(m, lit, len) == 0;
}

/* `compression` leaves alone a response whose Cache-Control has the
 * no-transform directive: /(?:^|,)\s*?no-transform\s*?(?:,|$)/. */
static bool no_transform(const struct isr_headers *hs)
{
    for (size_t i = 0; i < hs->n; i++) {
        const char *v = hs->h[i].value, *end = v + hs->h[i].value_len;

        if (strcasecmp(hs->h[i].name, "cache-control") != 0)
            continue;
        while (v < end) {
            const char *c = memchr(v, ',', (size_t)(end - v));
            const char *m_end = c ? c : end;

            if (trimmed_is(v, (size_t)(m_end - v), "no-transform"))
                return true;
            if (!c)
                break;
            v = c + 1;
        }
    }
    return false;
}

/* What Next's `compression` does with an answer of len bytes (a 200/404
 * with a body; a 304 is never coded): compresses it when Next's compress
 * option is on, the HTML is at least ISR_COMPRESS_MIN bytes (an RSC payload
 * or segment has no Content-Length for the threshold to apply to) and the
 * client's Accept-Encoding picks gzip (or deflate), unless its Cache-Control
 * says no-transform: the caller checks that when this is not
 * ANSWER_IDENTITY, so that the usual identity answer builds no headers for
 * it. The edge answers gzip from the entry's gzip copy (gz), made when it
 * was read. */
static enum answer_coding answer_coding(const struct pending *p, enum isr_variant v, size_t len,
                                        const struct isr_coded *gz)
{
    if (!p->conf->isr.compress || (v == ISR_HTML && len < ISR_COMPRESS_MIN))
        return ANSWER_IDENTITY;
    if (!p->coding_ok)
        return ANSWER_ORIGIN;
    switch (p->coding) {
    case CODING_IDENTITY:
        return ANSWER_IDENTITY;
    case CODING_GZIP:
        /* gzip-level 0: the operator's choice, the page as it is. */
        if (p->conf->gzip_level == 0)
            return ANSWER_IDENTITY;
        return gz->data ? ANSWER_GZIP : ANSWER_ORIGIN;
    case CODING_DEFLATE:
        break;
    }
    return ANSWER_ORIGIN;
}

/* The delivery server reproduces the same statuses and headers as the
 * HAProxy rules; only the size differs. */
static bool deliver_fits(const struct pending *p, const struct isr_entry *e)
{
    return (e->status == 200 || e->status == 404) && e->body_len <= p->conf->isr.max_body;
}

static void release_ref_cb(void *arg)
{
    l1_release(arg);
}

static void release_own_cb(void *arg)
{
    isr_entry_free(arg);
}

static void held_release(struct held *hd)
{
    if (hd->ref)
        l1_release(hd->ref);
    else
        isr_entry_free(hd->own);
    memset(hd, 0, sizeof(*hd));
}

/* Parks it for the delivery server and tells HAProxy to fetch it there;
 * false when it could not be parked (the reference stays with hd). */
static bool put_deliver(struct handler *h, struct pending *p, struct spoe_wbuf *w, struct held *hd,
                        const struct deliver_item *it, enum isr_state state, bool nm,
                        enum stat_cache c)
{
    char token[DELIVER_TOKEN_SIZE];
    int r =
        hd->ref
            ? deliver_put(h->deliver, it, release_ref_cb, hd->ref, state, nm, &p->conf->isr, token)
            : deliver_put(h->deliver, it, release_own_cb, hd->own, state, nm, &p->conf->isr, token);

    if (r != 0)
        return false;
    memset(hd, 0, sizeof(*hd)); /* parked: the delivery server releases it */
    put_str_var(w, VAR_ACTION, "deliver", 7);
    put_str_var(w, VAR_TOKEN, token, DELIVER_TOKEN_SIZE - 1);
    put_str_var(w, VAR_CACHE, stat_cache_names[c], strlen(stat_cache_names[c]));
    metrics_counter_inc(h->stats->requests[DEC_DELIVER][c]);
    if (it->gzip)
        metrics_counter_inc(h->stats->gzip_answers);
    if (nm)
        metrics_counter_inc(h->stats->not_modified);
    return true;
}

/* What HAProxy's cache holds for a "cache" answer: the entry, which of its
 * answers (and which segment), in which coding. */
struct cached_item {
    enum isr_variant variant;
    size_t body_len;
    const char *segment; /* ISR_SEGMENT */
    size_t segment_len;
    bool gzip; /* answer_coding() chose the gzip copy, which exists */
    /* The answer's headers when the caller has made them already, or NULL. */
    const struct isr_headers *headers;
};

/* Answers a FRESH 200 page, navigation or segment held by the in-process
 * cache, asked for by a GET that cannot be answered 304, with its entry id:
 * HAProxy serves it from its own cache under a key naming the entry, the
 * answer and the coding (haproxy.cfg, action "cache"), which the delivery
 * server fills once per version (spoa/fill.h). Nothing travels per request
 * but a few variables. The key holds the configuration generation too, since
 * a reload may change the headers. False, with nothing written, when the
 * answer cannot be given this way. */
static bool put_cached(struct handler *h, struct pending *p, struct spoe_wbuf *w,
                       const struct held *hd, enum isr_state state, const struct cached_item *it,
                       enum stat_cache c)
{
    const struct isr_entry *e = hd->e;
    const struct isr_headers *hs = it->headers;
    const struct isr_header *vary = NULL;
    struct isr_headers own;
    struct fill_key k = {.id = hd->ref ? l1_ref_id(hd->ref) : 0,
                         .gen = p->conf->gen,
                         .variant = it->variant,
                         .segment = it->segment,
                         .segment_len = it->segment_len,
                         .gzip = it->gzip};
    char page[FILL_KEY_MAX];
    int n;

    if (!h->fill || !hd->ref || !p->get || p->conditional || state != ISR_FRESH ||
        isr_rsc_status(e, it->variant) != 200 || it->body_len > p->conf->isr.max_body)
        return false;
    n = fill_key_format(&k, page, sizeof(page));
    if (n < 0)
        return false;
    if (!hs) {
        if (isr_variant_headers(e, it->variant, state, false, &p->conf->isr, &own) < 0)
            return false;
        hs = &own;
    }
    /* HAProxy's cache stores no Vary (2.6 refuses what varies on headers it
     * does not manage): the answer gets Next's from this variable. */
    for (size_t i = 0; i < hs->n; i++)
        if (strcasecmp(hs->h[i].name, "vary") == 0)
            vary = &hs->h[i];
    if (!fill_offer(h->fill, hd->ref, &p->conf->isr))
        return false;
    put_who(w, p->conf, &p->who);
    put_str_var(w, VAR_ACTION, "cache", 5);
    put_str_var(w, VAR_PAGE, page, (size_t)n);
    if (vary)
        put_str_var(w, VAR_VARY, vary->value, vary->value_len);
    put_str_var(w, VAR_CACHE, stat_cache_names[c], strlen(stat_cache_names[c]));
    if (w->overflow) {
        wbuf_for(h, p->req, w);
        return false;
    }
    metrics_counter_inc(h->stats->requests[DEC_CACHE][c]);
    if (it->gzip)
        metrics_counter_inc(h->stats->gzip_answers);
    return true;
}

/* An RSC payload or a segment: every one holds newlines (one per row),
 * which lf-string would escape, so all go through the delivery server,
 * byte for byte. What is not exactly what Next would send goes to the
 * origin: a segment the entry does not have (Next: an empty 404), an
 * entry whose payload could not be decoded. */
static void answer_rsc(struct handler *h, struct pending *p, struct spoe_wbuf *w, struct held *hd,
                       enum isr_state state, enum stat_cache c)
{
    const struct isr_entry *e = hd->e;
    struct deliver_item it = {
        .entry = e, .variant = ISR_RSC, .body = e->rsc, .body_len = e->rsc_len};
    const struct isr_segment *sg = NULL;
    enum answer_coding ac = ANSWER_ORIGIN;
    struct isr_headers hs;

    /* Without segmentData (Next 15) Next answers a segment prefetch with
     * the whole payload and the navigation's headers. */
    if (p->variant == ISR_SEGMENT && e->has_segments) {
        sg = isr_segment_find(e, p->segment, p->segment_len);
        it.variant = ISR_SEGMENT;
        it.body = sg ? sg->data : NULL;
        it.body_len = sg ? sg->len : 0;
    }
    if (h->deliver && it.body && it.body_len <= p->conf->isr.max_body &&
        isr_variant_headers(e, it.variant, state, false, &p->conf->isr, &hs) == 0) {
        ac = answer_coding(p, it.variant, it.body_len, sg ? &sg->gz : &e->rsc_gz);
        if (ac != ANSWER_IDENTITY && no_transform(&hs))
            ac = ANSWER_IDENTITY;

        if (ac == ANSWER_GZIP) {
            it.body = sg ? sg->gz.data : e->rsc_gz.data;
            it.body_len = sg ? sg->gz.len : e->rsc_gz.len;
            it.gzip = true;
        }
        if (ac != ANSWER_ORIGIN) {
            struct cached_item ci = {.variant = it.variant,
                                     .body_len = it.body_len,
                                     .segment = sg ? sg->path : NULL,
                                     .segment_len = sg ? sg->path_len : 0,
                                     .gzip = it.gzip,
                                     .headers = &hs};

            if (put_cached(h, p, w, hd, state, &ci, c))
                return;
        }
    }
    put_who(w, p->conf, &p->who);
    if (ac != ANSWER_ORIGIN && put_deliver(h, p, w, hd, &it, state, false, c))
        return;
    log_debug("edge_unservable", "worker=%u variant=%s status=%d rsc=%zu", h->id,
              it.variant == ISR_SEGMENT ? "segment" : "rsc", e->status, e->rsc_len);
    put_pass(w, h, CACHE_MISS);
}

/* The last second in which the entry is still fresh for isr_state(), in
 * epoch seconds, as HAProxy's "date" compares it: the lane answers while date
 * is below it, so it stops no later than Next would call the page stale. */
static int64_t fresh_until(const struct isr_entry *e, const struct isr_conf *conf)
{
    int64_t last = e->lifespan.expire_at > INT64_MAX / 1000 - 1
                       ? INT64_MAX
                       : e->lifespan.expire_at * 1000 + 999;

    if (e->lifespan.revalidate > 0) {
        if (conf->expire > 0 && conf->expire <= (INT64_MAX - e->last_modified) / 1000 &&
            e->last_modified + conf->expire * 1000 < last)
            last = e->last_modified + conf->expire * 1000;
        if (e->last_modified + e->lifespan.revalidate * 1000 < last)
            last = e->last_modified + e->lifespan.revalidate * 1000;
    }
    return last < 0 ? 0 : last / 1000;
}

/* An edge HIT that every request HAProxy's lane guard lets through would get
 * too (docs/fast-lane.md): the HTML page of a fresh 200 entry held by the
 * in-process cache, for the only pool there is, nobody pinned. The guard
 * sees to the rest (method, query, headers, cookies). */
static void lane_offer(struct handler *h, const struct pending *p, const struct held *hd,
                       enum isr_state state, bool nm)
{
    const struct isr_entry *e = hd->e;
    const struct spoa_conf *c = p->conf;

    if (!h->lane || !p->lane_path_len || p->variant != ISR_HTML || state != ISR_FRESH || nm ||
        !hd->ref || e->status != 200 || c->npools != 1 || p->who.pool != 0 || p->who.pin ||
        p->who.locale < 0)
        return;
    /* The lane answers gzip clients too: only with the copy they need. */
    if (c->isr.compress && c->gzip_level > 0 && e->body_len >= ISR_COMPRESS_MIN && !e->body_gz.data)
        return;
    lane_publish(h->lane, hd->ref, p->lane_path, p->lane_path_len, fresh_until(e, &c->isr),
                 c->locales.name[p->who.locale], &c->isr, c->gen);
}

/* Answers a servable page: from the edge (ACK variables), through the local
 * delivery path when too big for one ACK, else to the origin. */
static void answer_page(struct handler *h, struct pending *p, struct spoe_wbuf *w, struct held *hd,
                        enum isr_state state, enum stat_cache c)
{
    const struct isr_entry *e = hd->e;
    bool nm;

    if (p->variant != ISR_HTML) {
        answer_rsc(h, p, w, hd, state, c);
        return;
    }
    nm = p->conditional && isr_if_none_match(p->inm, p->inm_len, e->etag);
    if (!nm) {
        struct isr_headers hs;
        enum answer_coding ac = answer_coding(p, ISR_HTML, e->body_len, &e->body_gz);

        if (ac != ANSWER_IDENTITY) {
            if (isr_headers(e, state, false, &p->conf->isr, &hs) < 0)
                ac = ANSWER_ORIGIN; /* not servable: as put_edge() would find */
            else if (no_transform(&hs))
                ac = ANSWER_IDENTITY;
        }

        if (ac == ANSWER_GZIP) {
            struct deliver_item it = {.entry = e,
                                      .variant = ISR_HTML,
                                      .body = e->body_gz.data,
                                      .body_len = e->body_gz.len,
                                      .gzip = true};

            struct cached_item ci = {
                .variant = ISR_HTML, .body_len = e->body_len, .gzip = true, .headers = &hs};

            if (put_cached(h, p, w, hd, state, &ci, c)) {
                lane_offer(h, p, hd, state, nm);
                return;
            }
            put_who(w, p->conf, &p->who);
            if (h->deliver && deliver_fits(p, e)) {
                /* Before put_deliver(): the reference moves to the parked item. */
                lane_offer(h, p, hd, state, nm);
                if (put_deliver(h, p, w, hd, &it, state, nm, c))
                    return;
            }
        }
        if (ac != ANSWER_IDENTITY) {
            wbuf_for(h, p->req, w);
            log_debug("edge_uncoded", "worker=%u body=%zu", h->id, e->body_len);
            put_who(w, p->conf, &p->who);
            put_pass(w, h, CACHE_MISS);
            return;
        }
    }

    if (!nm) {
        struct cached_item ci = {.variant = ISR_HTML, .body_len = e->body_len};

        if (put_cached(h, p, w, hd, state, &ci, c)) {
            lane_offer(h, p, hd, state, nm);
            return;
        }
    }
    if (put_edge(w, p, e, state, nm)) {
        put_str_var(w, VAR_CACHE, stat_cache_names[c], strlen(stat_cache_names[c]));
        metrics_counter_inc(h->stats->requests[DEC_EDGE][c]);
        if (nm)
            metrics_counter_inc(h->stats->not_modified);
        lane_offer(h, p, hd, state, nm);
        return;
    }
    wbuf_for(h, p->req, w);
    put_who(w, p->conf, &p->who);
    /* Too big for one ACK: the local delivery path serves it. */
    if (h->deliver && deliver_fits(p, e)) {
        struct deliver_item it = {
            .entry = e, .variant = ISR_HTML, .body = e->body, .body_len = e->body_len};

        lane_offer(h, p, hd, state, nm);
        if (put_deliver(h, p, w, hd, &it, state, nm, c))
            return;
    }
    /* Not reproducible here (unknown header, odd status...): the origin serves it. */
    log_debug("edge_unservable", "worker=%u status=%d body=%zu", h->id, e->status, e->body_len);
    put_pass(w, h, CACHE_MISS);
}

static void finish_pending(struct handler *h, struct pending *p, struct spoe_wbuf *w)
{
    if (!p->answered)
        send_ack(h, p->req, w);
    ev_timer_stop(h->loop, &p->deadline);
    held_release(&p->held);
    spoa_conf_release(p->conf);
    free(p);
}

/* The answer cannot wait longer: pass to the origin now, let the lookup end
 * (and fill the in-process cache) by itself. */
static void on_deadline(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct pending *p = t->data;
    struct handler *h = p->h;
    struct spoe_wbuf w;

    wbuf_for(h, p->req, &w);
    put_who(&w, p->conf, &p->who);
    put_pass(&w, h, CACHE_ERROR);
    metrics_counter_inc(h->stats->lookup_errors);
    send_ack(h, p->req, &w);
    p->answered = true;
}

static void on_lookup(void *priv, enum lookup_result res, struct isr_entry *e, enum isr_state state,
                      const char *why)
{
    struct pending *p = priv;
    struct handler *h = p->h;
    struct spoe_wbuf w;

    metrics_histogram_observe(h->stats->lookup_seconds, now_mono() - p->t0);
    if (!p->answered)
        wbuf_for(h, p->req, &w);
    else
        spoe_wbuf_init(&w, h->scratch, 0); /* answered at the deadline: fill the cache only */
    if (e) {
        /* Keep it in memory for the next requests, unless an invalidation
         * came in since the lookup started (the epoch says so). */
        enum l1_put_result pr;
        struct l1_ref *ref;

        /* The gzip copies are made once, here, before the entry is shared:
         * for the cache (any later client may want them), or for this
         * request. A failure only sends gzip clients to the origin. */
        if (p->conf->isr.compress && p->conf->gzip_level > 0 &&
            (h->l1 || (p->coding_ok && p->coding == CODING_GZIP)) &&
            isr_entry_encode(e, gzip_encode, &p->conf->gzip_level) < 0)
            metrics_counter_inc(h->stats->gzip_errors);
        ref = h->l1 ? l1_put(h->l1, p->fkey, p->fkeylen, p->prefixlen, e, 0, p->epoch, &pr) : NULL;

        held_release(&p->held);
        if (ref) {
            p->held.ref = ref;
            p->held.e = l1_ref_entry(ref);
        } else {
            p->held.own = e;
            p->held.e = e;
        }
    }
    if (p->answered) {
        finish_pending(h, p, &w);
        return;
    }
    switch (res) {
    case LOOKUP_HIT:
    case LOOKUP_STALE:
        if (!p->held.e) { /* the lock answer for a page from the cache lost its page */
            put_who(&w, p->conf, &p->who);
            put_pass(&w, h, CACHE_MISS);
            break;
        }
        answer_page(h, p, &w, &p->held, state, res == LOOKUP_HIT ? CACHE_HIT : CACHE_STALE);
        break;
    case LOOKUP_REVALIDATE:
        /* This request regenerates the page at the origin; Next.js answers it
         * (stale) and refreshes Valkey. */
        metrics_counter_inc(h->stats->revalidations);
        put_who(&w, p->conf, &p->who);
        put_pass(&w, h, CACHE_STALE);
        break;
    case LOOKUP_MISS:
        put_who(&w, p->conf, &p->who);
        put_pass(&w, h, CACHE_MISS);
        break;
    case LOOKUP_ERROR:
        metrics_counter_inc(h->stats->lookup_errors);
        put_who(&w, p->conf, &p->who);
        put_pass(&w, h, CACHE_ERROR);
        log_debug("lookup_error", "worker=%u reason=%s", h->id, why);
        break;
    }
    finish_pending(h, p, &w);
}

static int64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Serves the request from the in-process cache when it can. Returns true
 * when answered (or when the lock for a stale page was asked for). */
static bool try_l1(struct handler *h, struct pending *p, const struct lookup_params *lp)
{
    struct l1_ref *ref = l1_get(h->l1, p->fkey, p->fkeylen);
    enum isr_state st;
    struct spoe_wbuf w;

    if (!ref)
        return false;
    /* No tag times: the cache is kept exact for revalidated tags. */
    st = isr_state(l1_ref_entry(ref), &p->conf->isr, wall_ms(), NULL, 0);
    if (st != ISR_FRESH && st != ISR_STALE) {
        l1_release(ref);
        return false;
    }
    p->held.ref = ref;
    p->held.e = l1_ref_entry(ref);
    if (st == ISR_STALE) {
        /* Stale needs the cross-node lock: one request revalidates. */
        if (lookup_lock(h->valkey, lp, on_lookup, p) == 0) {
            ev_timer_start(h->loop, &p->deadline);
            return true;
        }
        held_release(&p->held);
        return false;
    }
    metrics_counter_inc(h->stats->l1_hits);
    wbuf_for(h, p->req, &w);
    answer_page(h, p, &w, &p->held, st, CACHE_HIT);
    finish_pending(h, p, &w);
    return true;
}

/* Starts the ISR lookup; false when the request is answered now instead. */
static bool start_lookup(struct handler *h, struct spoe_req *req, const struct request *rq,
                         enum isr_variant variant, struct spoa_conf *conf, const struct who *who)
{
    const struct spoa_pool *pool;
    struct lookup_params lp;
    struct pending *p;
    char key[KEY_MAX];
    int n;

    if (!h->valkey || who->pool < 0)
        return false;
    /* The pinned pool's keys: a user never gets another build's page. */
    pool = &conf->pools[who->pool];
    if (routes_key(pool->routes, rq->path.p, rq->path.len, key, sizeof(key)) < 0)
        return false;
    p = calloc(1, sizeof(*p));
    if (!p)
        return false;
    n = snprintf(p->fkey, sizeof(p->fkey), "%s%s", pool->key_prefix, key);
    if (n < 0 || (size_t)n >= sizeof(p->fkey)) {
        free(p);
        return false;
    }
    p->fkeylen = (size_t)n;
    p->prefixlen = strlen(pool->key_prefix);
    ev_timer_init(&p->deadline, on_deadline, conf->valkey_timeout, 0.);
    p->deadline.data = p;
    p->h = h;
    p->req = req;
    p->conf = conf;
    p->who = *who;
    p->t0 = now_mono();
    p->variant = variant;
    p->coding = CODING_IDENTITY;
    p->coding_ok = true;
    p->get = str_is(rq->method, "GET");
    if (p->get)
        p->coding_ok =
            rq->accept_encoding_headers <= 1 &&
            coding_choose(rq->accept_encoding.p, rq->accept_encoding.len, &p->coding) == 0;
    /* Only GET without a query string: what the lane guard lets through. */
    if (h->lane && str_is(rq->method, "GET") && !rq->query.p && rq->path.len <= LANE_PATH_MAX) {
        memcpy(p->lane_path, rq->path.p, rq->path.len);
        p->lane_path_len = rq->path.len;
    }
    if (variant == ISR_SEGMENT) {
        if (rq->segment_value.len) /* .p may be NULL when empty */
            memcpy(p->segment, rq->segment_value.p, rq->segment_value.len);
        p->segment_len = rq->segment_value.len;
    }
    /* Next answers 304 only to If-None-Match without no-cache and without
     * If-Modified-Since (it sends no Last-Modified). */
    if (variant == ISR_HTML && rq->if_none_match.len && rq->if_none_match.len <= INM_MAX &&
        !rq->if_modified_since && rq->cache_control_headers <= 1 &&
        !(rq->cache_control.len && isr_no_cache(rq->cache_control.p, rq->cache_control.len))) {
        memcpy(p->inm, rq->if_none_match.p, rq->if_none_match.len);
        p->inm_len = rq->if_none_match.len;
        p->conditional = true;
    }
    lp.prefix = pool->key_prefix;
    lp.key = key;
    lp.lock_prefix = conf->lock_prefix;
    lp.lock_ms = conf->lock_ms;
    lp.isr = &conf->isr;
    spoa_conf_hold(conf);
    if (h->l1) {
        if (try_l1(h, p, &lp))
            return true;
        /* Read before asking Valkey: an invalidation after this point makes
         * the answer unfit for the cache. */
        p->epoch = l1_epoch(h->l1);
    }
    if (lookup_start(h->valkey, &lp, on_lookup, p) < 0) {
        spoa_conf_release(conf);
        free(p);
        return false;
    }
    ev_timer_start(h->loop, &p->deadline);
    return true;
}

void handler_notify(struct handler *h, struct spoe_req *req, struct spoe_cur msgs,
                    struct spoa_conf *conf)
{
    struct spoe_wbuf w;
    struct spoe_msg m;
    bool answered = false;

    metrics_counter_inc(h->stats->spop_notifies);
    wbuf_for(h, req, &w);
    while (spoe_msg_next(&msgs, &m) == 1) {
        struct request rq;
        struct who who;
        enum isr_variant variant;

        if (!arg_is(m.name, m.name_len, conf->message) || answered) {
            metrics_counter_inc(h->stats->other_messages);
            continue;
        }
        answered = true;
        read_request(&m, &rq);
        who.locale = locale_from_path(&conf->locales, rq.path.p, rq.path.len);
        if (who.locale < 0 && try_redirect(h, &rq, conf, &w))
            continue;
        /* Every request goes to its pool, assets and API calls too: a
         * canary user's /_next/static files only exist on the canary. */
        choose_pool(h, &rq, conf, &who);
        if (who.locale >= 0 && !must_bypass(&rq, conf) && rsc_request(&rq, &variant) &&
            start_lookup(h, req, &rq, variant, conf, &who))
            return; /* on_lookup() answers */
        put_who(&w, conf, &who);
        put_pass(&w, h, CACHE_BYPASS);
    }
    send_ack(h, req, &w);
}

struct handler *handler_new(struct ev_loop *loop, unsigned worker_id, const struct spoa_conf *conf,
                            struct deliver *deliver, struct l1 *l1, struct lane *lane,
                            struct fill *fill, struct spoa_stats *stats)
{
    struct handler *h = calloc(1, sizeof(*h));
    char name[32];

    if (!h)
        return NULL;
    h->loop = loop;
    h->id = worker_id;
    h->deliver = deliver;
    h->l1 = l1;
    h->lane = lane;
    h->fill = fill;
    h->stats = stats;
    if (getrandom(&h->rng, sizeof(h->rng), 0) != (ssize_t)sizeof(h->rng) || h->rng == 0)
        h->rng = 0x9e3779b97f4a7c15ULL ^ (uint64_t)worker_id;
    h->scratch_len = conf->max_frame_size;
    h->scratch = malloc(h->scratch_len);
    if (!h->scratch) {
        free(h);
        return NULL;
    }
    if (conf->valkey_addr[0]) {
        struct valkey_cfg vc = {0};

        snprintf(name, sizeof(name), "worker=%u", worker_id);
        vc.addr = conf->valkey_addr;
        vc.password = getenv("CEDRA_VALKEY_PASSWORD");
        vc.username = getenv("CEDRA_VALKEY_USERNAME");
        vc.db = conf->valkey_db;
        vc.name = name;
        /* Commands may outlive the answer deadline (valkey-timeout, per
         * request): a big page still lands in the in-process cache. */
        vc.command_timeout = conf->valkey_timeout * 10 > 1.0 ? conf->valkey_timeout * 10 : 1.0;
        vc.connect_timeout = conf->valkey_connect_timeout;
        vc.max_reply_size = conf->valkey_max_reply;
        h->valkey = valkey_new(loop, &vc);
        if (!h->valkey) {
            free(h->scratch);
            free(h);
            return NULL;
        }
    }
    return h;
}

void handler_free(struct handler *h)
{
    if (!h)
        return;
    if (h->valkey)
        valkey_free(h->valkey); /* pending lookups answer "pass" now */
    free(h->scratch);
    free(h);
}
