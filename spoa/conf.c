#include "conf.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cfgfile.h"
#include "gzip.h"
#include "spoe.h"

static void set_exclude(struct spoa_conf *c, unsigned i, const char *prefix)
{
    str_copy(c->exclude_buf[i], prefix, sizeof(c->exclude_buf[i]));
    c->exclude[i] = c->exclude_buf[i];
}

struct spoa_conf *spoa_conf_new(void)
{
    struct spoa_conf *c = malloc(sizeof(*c));

    if (c)
        spoa_conf_defaults(c);
    return c;
}

void spoa_conf_hold(struct spoa_conf *c)
{
    atomic_fetch_add(&c->refs, 1);
}

void spoa_conf_release(struct spoa_conf *c)
{
    if (c && atomic_fetch_sub(&c->refs, 1) == 1) {
        spoa_conf_clear(c);
        free(c);
    }
}

struct spoa_conf *spoa_conf_dup(const struct spoa_conf *c)
{
    struct spoa_conf *d = malloc(sizeof(*d));

    /* refs is the one field the workers write (atomically) while this runs:
     * a plain copy of it is a data race, so the copy starts after it. */
    const size_t off = offsetof(struct spoa_conf, refs) + sizeof(c->refs);

    _Static_assert(offsetof(struct spoa_conf, refs) == 0, "refs must come first");
    if (!d)
        return NULL;
    memcpy((char *)d + off, (const char *)c + off, sizeof(*d) - off);
    atomic_init(&d->refs, 1);
    /* exclude[] points into the struct's own buffers. */
    for (unsigned i = 0; i < d->nexclude; i++)
        d->exclude[i] = d->exclude_buf[i];
    for (unsigned i = 0; i < d->npools; i++)
        routes_hold(d->pools[i].routes);
    return d;
}

const struct spoa_pool *spoa_conf_pool(const struct spoa_conf *c, const char *name)
{
    for (unsigned i = 0; i < c->npools; i++)
        if (!strcmp(c->pools[i].name, name))
            return &c->pools[i];
    return NULL;
}

void spoa_conf_clear(struct spoa_conf *c)
{
    for (unsigned i = 0; i < c->npools; i++) {
        routes_free(c->pools[i].routes);
        c->pools[i].routes = NULL;
    }
    c->npools = 0;
}

void spoa_conf_defaults(struct spoa_conf *c)
{
    memset(c, 0, sizeof(*c));
    atomic_init(&c->refs, 1);
    c->threads = 2;
    c->backlog = 1024;
    c->unix_mode = 0660;
    c->max_frame_size = 16380; /* HAProxy's default: tune.bufsize - 4 */
    c->max_reassembly = 256 * 1024;
    c->max_inflight = 1024;
    c->hello_timeout = 5.0;
    c->idle_timeout = 0;
    c->drain_timeout = 5.0;
    c->log_level = LOG_LVL_INFO;
    str_copy(c->message, "cedra-req", sizeof(c->message));
    str_copy(c->locale_cookie, "NEXT_LOCALE", sizeof(c->locale_cookie));
    c->redirect_code = 307; /* what Next.js uses for its own locale redirects */
    set_exclude(c, 0, "/_next/");
    set_exclude(c, 1, "/api/");
    c->nexclude = 2;
    c->valkey_timeout = 0.05; /* well under the SPOE "timeout processing" */
    c->valkey_connect_timeout = 0.5;
    c->valkey_max_reply = 8u << 20;
    c->l1_size = 256u << 20; /* a shard takes entries up to a quarter of its 16 MiB: 4 MiB pages */
    c->isr = (struct isr_conf)ISR_CONF_DEFAULT;
    c->gzip_level = GZIP_LEVEL_DEFAULT;
    c->lock_ms = 10000;
    c->lane_grace = 5.0;
    c->lane_max_entries = 10000;
    c->haproxy_cache_entries = 20000;
    c->stats_mode = 0600;
    c->stats_maxconn = 32;
    str_copy(c->lock_prefix, "cedra:revalidate:", sizeof(c->lock_prefix));
}

/* <name> key-prefix <prefix> routes <file|pathname> [build <id>]: a pool
 * definition, into *p (routes loaded). */
static int read_pool(struct spoa_pool *p, int argc, char *const *argv, char *err, size_t errlen)
{
    bool has_routes = false;

    if (argc < 1 || (strcmp(argv[0], "stable") && strcmp(argv[0], "canary"))) {
        snprintf(err, errlen, "a pool is stable or canary");
        return -1;
    }
    memset(p, 0, sizeof(*p));
    str_copy(p->name, argv[0], sizeof(p->name));
    for (int i = 1; i < argc; i += 2) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

        if (!v) {
            snprintf(err, errlen, "'%s' wants a value", k);
            return -1;
        }
        if (!strcmp(k, "key-prefix") && strlen(v) < sizeof(p->key_prefix)) {
            str_copy(p->key_prefix, v, sizeof(p->key_prefix));
        } else if (!strcmp(k, "routes") && strlen(v) < sizeof(p->routes_path)) {
            has_routes = true;
            if (strcmp(v, "pathname") != 0)
                str_copy(p->routes_path, v, sizeof(p->routes_path));
        } else if (!strcmp(k, "build") && strlen(v) < sizeof(p->build_id) &&
                   strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") ==
                       strlen(v)) {
            /* The build id travels in a cookie value: keep it to a token. */
            str_copy(p->build_id, v, sizeof(p->build_id));
        } else {
            snprintf(err, errlen, "bad pool setting '%s'", k);
            return -1;
        }
    }
    if (!has_routes) {
        snprintf(err, errlen, "pool %s: 'routes <table file>' or 'routes pathname' is required",
                 p->name);
        return -1;
    }
    if (p->routes_path[0]) {
        char why[256];

        p->routes = routes_load(p->routes_path, why, sizeof(why));
        if (!p->routes) {
            snprintf(err, errlen, "pool %s: %s", p->name, why);
            return -1;
        }
        if (!p->build_id[0])
            str_copy(p->build_id, routes_build_id(p->routes), sizeof(p->build_id));
    } else {
        p->routes = routes_pathname();
        if (!p->routes) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    return 0;
}

static int parse_pool(struct spoa_conf *c, const struct cfg_line *l, char *err, size_t errlen)
{
    if (l->argc >= 2 && spoa_conf_pool(c, l->argv[1])) {
        snprintf(err, errlen, "pool %s defined twice", l->argv[1]);
        return -1;
    }
    if (read_pool(&c->pools[c->npools], l->argc - 1, l->argv + 1, err, errlen) < 0)
        return -1;
    c->npools++;
    return 0;
}

int spoa_conf_set_pool(struct spoa_conf *c, int argc, char **argv, char *err, size_t errlen)
{
    struct spoa_pool np;
    unsigned i;

    if (argc == 2 && !strcmp(argv[1], "off")) {
        if (!strcmp(argv[0], "stable")) {
            snprintf(err, errlen, "the stable pool cannot be turned off");
            return -1;
        }
        for (i = 0; i < c->npools; i++)
            if (!strcmp(c->pools[i].name, argv[0])) {
                routes_free(c->pools[i].routes);
                memmove(&c->pools[i], &c->pools[i + 1], (c->npools - i - 1) * sizeof(np));
                c->npools--;
                break;
            }
        if (!strcmp(argv[0], "canary"))
            c->canary_known = true;
        return 0;
    }
    if (argc == 3 && !strcmp(argv[0], "canary") && !strcmp(argv[1], "weight")) {
        uint64_t v;

        if (parse_uint(argv[2], 0, 100, &v) < 0) {
            snprintf(err, errlen, "weight is 0 to 100");
            return -1;
        }
        c->canary_weight = (unsigned)v;
        return 0;
    }
    if (read_pool(&np, argc, argv, err, errlen) < 0)
        return -1;
    if (!strcmp(np.name, "canary") && !spoa_conf_pool(c, "stable")) {
        routes_free(np.routes);
        snprintf(err, errlen, "define the stable pool first");
        return -1;
    }
    for (i = 0; i < c->npools; i++)
        if (!strcmp(c->pools[i].name, np.name))
            break;
    if (i < c->npools)
        routes_free(c->pools[i].routes);
    else
        c->npools++;
    c->pools[i] = np;
    if (!strcmp(np.name, "canary"))
        c->canary_known = true;
    /* The stable pool comes first: requests without a pin use pools[0]. */
    if (i > 0 && !strcmp(np.name, "stable")) {
        np = c->pools[0];
        c->pools[0] = c->pools[i];
        c->pools[i] = np;
    }
    return 0;
}

static int on_line(const struct cfg_line *l, void *ud, char *err, size_t errlen)
{
    struct spoa_conf *c = ud;
    const char *kw = l->argv[0];
    uint64_t v;
    int pr;

    if (!strcmp(kw, "listen")) {
        if (cfg_want_args(l, 1, err, errlen) < 0)
            return -1;
        if (c->nlisten >= SPOA_MAX_LISTEN) {
            snprintf(err, errlen, "at most %d listen lines", SPOA_MAX_LISTEN);
            return -1;
        }
        return parse_endpoint(l->argv[1], &c->listen[c->nlisten++], err, errlen);
    }
    if (!strcmp(kw, "threads")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_uint(l->argv[1], 1, 64, &v) < 0)
            goto bad;
        c->threads = (unsigned)v;
        return 0;
    }
    if (!strcmp(kw, "backlog")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_uint(l->argv[1], 1, 65535, &v) < 0)
            goto bad;
        c->backlog = (unsigned)v;
        return 0;
    }
    if (!strcmp(kw, "unix-mode")) {
        char *end;
        unsigned long m;

        if (cfg_want_args(l, 1, err, errlen) < 0)
            return -1;
        m = strtoul(l->argv[1], &end, 8);
        if (*end || m > 0777)
            goto bad;
        c->unix_mode = (unsigned)m;
        return 0;
    }
    if (!strcmp(kw, "max-frame-size")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 ||
            parse_uint(l->argv[1], SPOE_FRAME_MIN, SPOE_FRAME_MAX, &v) < 0)
            goto bad;
        c->max_frame_size = (uint32_t)v;
        return 0;
    }
    if (!strcmp(kw, "max-reassembly")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_size(l->argv[1], &v) < 0 ||
            v < SPOE_FRAME_MIN || v > 64 * 1024 * 1024)
            goto bad;
        c->max_reassembly = v;
        return 0;
    }
    if (!strcmp(kw, "max-connections")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_uint(l->argv[1], 1, 1000000, &v) < 0)
            goto bad;
        c->max_connections = (unsigned)v;
        return 0;
    }
    if (!strcmp(kw, "max-inflight")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_uint(l->argv[1], 1, 100000, &v) < 0)
            goto bad;
        c->max_inflight = (unsigned)v;
        return 0;
    }
    if (!strcmp(kw, "timeout")) {
        double d;

        if (cfg_want_args(l, 2, err, errlen) < 0 || parse_duration(l->argv[2], &d) < 0)
            goto bad;
        if (!strcmp(l->argv[1], "hello"))
            c->hello_timeout = d;
        else if (!strcmp(l->argv[1], "idle"))
            c->idle_timeout = d;
        else if (!strcmp(l->argv[1], "drain"))
            c->drain_timeout = d;
        else
            goto bad;
        return 0;
    }
    if (!strcmp(kw, "log-level")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || log_level_parse(l->argv[1], &c->log_level) < 0)
            goto bad;
        return 0;
    }
    if (!strcmp(kw, "log")) {
        if (cfg_want_args(l, 1, err, errlen) < 0)
            return -1;
        if (!strcmp(l->argv[1], "stderr"))
            c->log_syslog = false;
        else if (!strcmp(l->argv[1], "syslog"))
            c->log_syslog = true;
        else
            goto bad;
        return 0;
    }
    if (!strcmp(kw, "message")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || strlen(l->argv[1]) >= sizeof(c->message))
            goto bad;
        str_copy(c->message, l->argv[1], sizeof(c->message));
        return 0;
    }
    if (!strcmp(kw, "locales")) {
        if (l->argc < 2)
            goto bad;
        memset(&c->locales, 0, sizeof(c->locales));
        for (int i = 1; i < l->argc; i++) {
            if (locale_add(&c->locales, l->argv[i]) < 0) {
                snprintf(err, errlen, "invalid or duplicate locale '%s'", l->argv[i]);
                return -1;
            }
        }
        return 0;
    }
    if (!strcmp(kw, "locale-cookie")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || !l->argv[1][0] ||
            strlen(l->argv[1]) >= sizeof(c->locale_cookie))
            goto bad;
        str_copy(c->locale_cookie, l->argv[1], sizeof(c->locale_cookie));
        return 0;
    }
    if (!strcmp(kw, "locale-redirect")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_uint(l->argv[1], 300, 399, &v) < 0 ||
            (v != 302 && v != 307))
            goto bad;
        c->redirect_code = (unsigned)v;
        return 0;
    }
    if (!strcmp(kw, "locale-exclude")) {
        if (l->argc - 1 > SPOA_MAX_EXCLUDE) {
            snprintf(err, errlen, "at most %d prefixes", SPOA_MAX_EXCLUDE);
            return -1;
        }
        c->nexclude = 0;
        for (int i = 1; i < l->argc; i++) {
            if (l->argv[i][0] != '/' || strlen(l->argv[i]) >= sizeof(c->exclude_buf[0])) {
                snprintf(err, errlen, "'%s' is not a path prefix", l->argv[i]);
                return -1;
            }
            set_exclude(c, c->nexclude++, l->argv[i]);
        }
        return 0;
    }
    if (!strcmp(kw, "valkey")) {
        struct endpoint ep;

        if (cfg_want_args(l, 1, err, errlen) < 0 ||
            parse_endpoint(l->argv[1], &ep, err, errlen) < 0 ||
            strlen(l->argv[1]) >= sizeof(c->valkey_addr))
            goto bad;
        str_copy(c->valkey_addr, l->argv[1], sizeof(c->valkey_addr));
        return 0;
    }
    if (!strcmp(kw, "valkey-db")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_uint(l->argv[1], 0, 1000, &v) < 0)
            goto bad;
        c->valkey_db = (unsigned)v;
        return 0;
    }
    if (!strcmp(kw, "valkey-timeout") || !strcmp(kw, "valkey-connect-timeout")) {
        double d;

        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_duration(l->argv[1], &d) < 0 || d <= 0 ||
            d > 60)
            goto bad;
        if (!strcmp(kw, "valkey-timeout"))
            c->valkey_timeout = d;
        else
            c->valkey_connect_timeout = d;
        return 0;
    }
    if (!strcmp(kw, "valkey-max-reply")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_size(l->argv[1], &v) < 0 || v < 1024 ||
            v > (256u << 20))
            goto bad;
        c->valkey_max_reply = v;
        return 0;
    }
    if (!strcmp(kw, "stats-socket")) {
        /* stats-socket <path> [mode <octal>] [maxconn <n>] */
        if (l->argc < 2 || l->argc % 2 != 0 || strlen(l->argv[1]) >= sizeof(c->stats_socket) ||
            l->argv[1][0] != '/')
            goto bad;
        str_copy(c->stats_socket, l->argv[1], sizeof(c->stats_socket));
        for (int i = 2; i + 1 < l->argc; i += 2) {
            char *end;

            if (!strcmp(l->argv[i], "mode")) {
                unsigned long m = strtoul(l->argv[i + 1], &end, 8);

                if (*end || m > 0777)
                    goto bad;
                c->stats_mode = (unsigned)m;
            } else if (!strcmp(l->argv[i], "maxconn")) {
                if (parse_uint(l->argv[i + 1], 1, 10000, &v) < 0)
                    goto bad;
                c->stats_maxconn = (unsigned)v;
            } else {
                goto bad;
            }
        }
        return 0;
    }
    if (!strcmp(kw, "metrics")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 ||
            parse_endpoint(l->argv[1], &c->metrics, err, errlen) < 0 || c->metrics.is_unix)
            goto bad;
        c->has_metrics = true;
        return 0;
    }
    if (!strcmp(kw, "deliver")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 ||
            parse_endpoint(l->argv[1], &c->deliver, err, errlen) < 0)
            goto bad;
        c->has_deliver = true;
        return 0;
    }
    if (!strcmp(kw, "l1-size")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_size(l->argv[1], &v) < 0 ||
            v > (64ull << 30))
            goto bad;
        c->l1_size = v;
        return 0;
    }
    if (!strcmp(kw, "pool"))
        return parse_pool(c, l, err, errlen);
    if (!strcmp(kw, "canary-weight")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_uint(l->argv[1], 0, 100, &v) < 0)
            goto bad;
        c->canary_weight = (unsigned)v;
        return 0;
    }
    if (!strcmp(kw, "isr-expire")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 ||
            parse_uint(l->argv[1], 0, 100u * 365 * 86400, &v) < 0)
            goto bad;
        c->isr.expire = (int64_t)v;
        return 0;
    }
    if (!strcmp(kw, "isr-powered-by") || !strcmp(kw, "isr-compress")) {
        bool b;

        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_bool(l->argv[1], &b) < 0)
            goto bad;
        if (!strcmp(kw, "isr-powered-by"))
            c->isr.powered_by = b;
        else
            c->isr.compress = b;
        return 0;
    }
    if (!strcmp(kw, "gzip-level")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_uint(l->argv[1], 0, 9, &v) < 0)
            goto bad;
        c->gzip_level = (int)v;
        return 0;
    }
    if (!strcmp(kw, "isr-max-body")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_size(l->argv[1], &v) < 0 ||
            v > (64u << 20))
            goto bad;
        c->isr.max_body = v;
        return 0;
    }
    if (!strcmp(kw, "revalidate-lock")) {
        double d;

        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_duration(l->argv[1], &d) < 0 ||
            d < 0.001 || d > 3600)
            goto bad;
        c->lock_ms = (unsigned)(d * 1000);
        return 0;
    }
    if (!strcmp(kw, "revalidate-lock-prefix")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || strlen(l->argv[1]) >= sizeof(c->lock_prefix))
            goto bad;
        str_copy(c->lock_prefix, l->argv[1], sizeof(c->lock_prefix));
        return 0;
    }
    if (!strcmp(kw, "lane-socket") || !strcmp(kw, "lane-map") || !strcmp(kw, "lane-cookies")) {
        char *dst = kw[5] == 's' ? c->lane_socket : kw[5] == 'm' ? c->lane_map : c->lane_cookies;
        size_t cap = kw[5] == 's' ? sizeof(c->lane_socket) : sizeof(c->lane_map);

        if (cfg_want_args(l, 1, err, errlen) < 0 || !l->argv[1][0] || strlen(l->argv[1]) >= cap ||
            strpbrk(l->argv[1], " \t;\\"))
            goto bad;
        str_copy(dst, l->argv[1], cap);
        return 0;
    }
    if (!strcmp(kw, "lane-grace")) {
        double d;

        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_duration(l->argv[1], &d) < 0 || d <= 0 ||
            d > 300)
            goto bad;
        c->lane_grace = d;
        return 0;
    }
    if (!strcmp(kw, "lane-max-entries")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_uint(l->argv[1], 1, 1000000, &v) < 0)
            goto bad;
        c->lane_max_entries = (unsigned)v;
        return 0;
    }
    if (!strcmp(kw, "haproxy-cache")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_bool(l->argv[1], &c->haproxy_cache) < 0)
            goto bad;
        return 0;
    }
    if (!strcmp(kw, "haproxy-cache-entries")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_uint(l->argv[1], 1, 1000000, &v) < 0)
            goto bad;
        c->haproxy_cache_entries = (unsigned)v;
        return 0;
    }
    if (!strcmp(kw, "session-cookie")) {
        if (l->argc < 2 || l->argc - 1 > SPOA_MAX_SESSION_COOKIES)
            goto bad;
        c->nsession = 0;
        for (int i = 1; i < l->argc; i++) {
            if (!l->argv[i][0] || strlen(l->argv[i]) >= sizeof(c->session_cookie[0]))
                goto bad;
            str_copy(c->session_cookie[c->nsession++], l->argv[i], sizeof(c->session_cookie[0]));
        }
        return 0;
    }
    if ((pr = privs_conf_line(&c->privs, l, err, errlen)) != 0)
        return pr < 0 ? -1 : 0;
    if (!strcmp(kw, "default-locale")) {
        if (cfg_want_args(l, 1, err, errlen) < 0)
            return -1;
        if (locale_set_default(&c->locales, l->argv[1]) < 0) {
            snprintf(err, errlen, "default-locale '%s' is not in 'locales'", l->argv[1]);
            return -1;
        }
        return 0;
    }
    snprintf(err, errlen, "unknown keyword '%s'", kw);
    return -1;
bad:
    if (!err[0])
        snprintf(err, errlen, "invalid value for '%s'", kw);
    return -1;
}

static int finish(struct spoa_conf *c, char *err, size_t errlen)
{
    if (c->locales.n == 0) {
        locale_add(&c->locales, "fr");
        locale_add(&c->locales, "nl");
        locale_add(&c->locales, "en");
        c->locales.def = 0;
    }
    if (c->max_reassembly < c->max_frame_size)
        c->max_reassembly = c->max_frame_size;
    if (c->npools && strcmp(c->pools[0].name, "stable") != 0) {
        snprintf(err, errlen, "a 'pool stable ...' must come first");
        return -1;
    }
    if (privs_finish(&c->privs, err, errlen) < 0)
        return -1;
    if ((c->lane_socket[0] || c->lane_map[0] || c->lane_cookies[0]) &&
        !(c->lane_socket[0] && c->lane_map[0] && c->lane_cookies[0])) {
        snprintf(err, errlen, "the fast lane needs all of lane-socket, lane-map and lane-cookies");
        return -1;
    }
    if (c->lane_socket[0] && (!c->has_deliver || !c->l1_size)) {
        snprintf(err, errlen,
                 "the fast lane needs 'deliver' (it fills HAProxy's cache) and the "
                 "in-process cache ('l1-size' above 0)");
        return -1;
    }
    if (c->haproxy_cache && (!c->has_deliver || !c->l1_size)) {
        snprintf(err, errlen,
                 "haproxy-cache needs 'deliver' (it fills HAProxy's cache) and the "
                 "in-process cache ('l1-size' above 0)");
        return -1;
    }
    if (c->valkey_addr[0] && c->npools == 0) {
        snprintf(err, errlen, "'valkey' is set but no 'pool stable ...' says which keys to read");
        return -1;
    }
    return 0;
}

int spoa_conf_load(const char *path, struct spoa_conf *c, char *err, size_t errlen)
{
    err[0] = '\0';
    if (cfg_parse_file(path, on_line, c, err, errlen) < 0)
        return -1;
    return finish(c, err, errlen);
}

int spoa_conf_load_string(const char *text, struct spoa_conf *c, char *err, size_t errlen)
{
    err[0] = '\0';
    if (cfg_parse_string("<string>", text, on_line, c, err, errlen) < 0)
        return -1;
    return finish(c, err, errlen);
}

unsigned spoa_conf_max_connections(const struct spoa_conf *c)
{
    struct rlimit rl;
    rlim_t n;

    if (c->max_connections)
        return c->max_connections;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
        return 1000000;
    n = rl.rlim_cur > 256 ? (rl.rlim_cur - 256) / 2 : 0;
    return n < 16 ? 16 : n > 1000000 ? 1000000 : (unsigned)n;
}
