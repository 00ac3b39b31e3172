#include "routes.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfgfile.h"
#include "util.h"

#define ROUTES_MAX 4096
#define SEGS_MAX 32
#define SEG_LEN_MAX 128

enum seg_kind { SEG_STATIC, SEG_PARAM, SEG_CATCHALL, SEG_OPT_CATCHALL };

struct seg {
    enum seg_kind kind;
    char text[SEG_LEN_MAX]; /* SEG_STATIC only */
    size_t len;
};

struct route {
    struct seg seg[SEGS_MAX];
    unsigned nseg;
    char kind[16]; /* APP_PAGE, PAGES */
    char hash[65]; /* sha256 hex of the app page */
};

struct routes {
    _Atomic unsigned refs;
    enum routes_scheme scheme;
    char build_id[128];
    struct route *r;
    unsigned n;
    unsigned cap;
};

struct routes *routes_pathname(void)
{
    struct routes *r = calloc(1, sizeof(*r));

    if (r) {
        atomic_init(&r->refs, 1);
        r->scheme = ROUTES_PATHNAME;
    }
    return r;
}

struct routes *routes_hold(struct routes *r)
{
    if (r)
        atomic_fetch_add(&r->refs, 1);
    return r;
}

void routes_free(struct routes *r)
{
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    free(r->r);
    free(r);
}

enum routes_scheme routes_scheme(const struct routes *r)
{
    return r->scheme;
}

const char *routes_build_id(const struct routes *r)
{
    return r->build_id;
}

unsigned routes_count(const struct routes *r)
{
    return r->n;
}

static int parse_pattern(const char *p, struct route *rt, char *err, size_t errlen)
{
    if (p[0] != '/') {
        snprintf(err, errlen, "route pattern must start with '/'");
        return -1;
    }
    rt->nseg = 0;
    if (p[1] == '\0')
        return 0; /* "/" */
    while (*p == '/') {
        const char *s = p + 1, *e = strchr(s, '/');
        size_t l = e ? (size_t)(e - s) : strlen(s);
        struct seg *g;

        if (l == 0 || l >= SEG_LEN_MAX || rt->nseg >= SEGS_MAX) {
            snprintf(err, errlen, "bad route segment");
            return -1;
        }
        g = &rt->seg[rt->nseg++];
        if (l > 6 && !strncmp(s, "[[...", 5) && !strncmp(s + l - 2, "]]", 2))
            g->kind = SEG_OPT_CATCHALL;
        else if (l > 5 && !strncmp(s, "[...", 4) && s[l - 1] == ']')
            g->kind = SEG_CATCHALL;
        else if (l > 2 && s[0] == '[' && s[l - 1] == ']')
            g->kind = SEG_PARAM;
        else {
            g->kind = SEG_STATIC;
            memcpy(g->text, s, l);
            g->text[l] = '\0';
            g->len = l;
        }
        if (g->kind != SEG_STATIC && g->kind != SEG_PARAM && e) {
            snprintf(err, errlen, "a catch-all segment must be the last one");
            return -1;
        }
        p = s + l;
    }
    return 0;
}

static int on_line(const struct cfg_line *l, void *ud, char *err, size_t errlen)
{
    struct routes *r = ud;

    if (!strcmp(l->argv[0], "scheme") && l->argc == 2) {
        if (!strcmp(l->argv[1], "pathname"))
            r->scheme = ROUTES_PATHNAME;
        else if (!strcmp(l->argv[1], "route-cache"))
            r->scheme = ROUTES_ROUTE_CACHE;
        else {
            snprintf(err, errlen, "unknown scheme '%s'", l->argv[1]);
            return -1;
        }
        return 0;
    }
    if (!strcmp(l->argv[0], "build") && l->argc == 2) {
        if (strlen(l->argv[1]) >= sizeof(r->build_id)) {
            snprintf(err, errlen, "build id too long");
            return -1;
        }
        str_copy(r->build_id, l->argv[1], sizeof(r->build_id));
        return 0;
    }
    if (!strcmp(l->argv[0], "route") && (l->argc == 4 || l->argc == 5)) {
        struct route *rt;
        size_t hl = strlen(l->argv[3]);

        if (r->n >= ROUTES_MAX) {
            snprintf(err, errlen, "more than %d routes", ROUTES_MAX);
            return -1;
        }
        if (r->n == r->cap) {
            unsigned nc = r->cap ? r->cap * 2 : 16;
            struct route *nr = realloc(r->r, nc * sizeof(*nr));

            if (!nr) {
                snprintf(err, errlen, "out of memory");
                return -1;
            }
            r->r = nr;
            r->cap = nc;
        }
        rt = &r->r[r->n];
        memset(rt, 0, sizeof(*rt));
        if (parse_pattern(l->argv[1], rt, err, errlen) < 0)
            return -1;
        if (strcmp(l->argv[2], "APP_PAGE") && strcmp(l->argv[2], "PAGES")) {
            snprintf(err, errlen, "unknown kind '%s'", l->argv[2]);
            return -1;
        }
        str_copy(rt->kind, l->argv[2], sizeof(rt->kind));
        if (hl != 64 || strspn(l->argv[3], "0123456789abcdef") != 64) {
            snprintf(err, errlen, "bad sha256 '%s'", l->argv[3]);
            return -1;
        }
        memcpy(rt->hash, l->argv[3], 65);
        r->n++;
        return 0;
    }
    snprintf(err, errlen, "unknown statement '%s'", l->argv[0]);
    return -1;
}

static struct routes *finish(struct routes *r, int rc, char *err, size_t errlen)
{
    if (rc == 0 && r->scheme == ROUTES_ROUTE_CACHE && r->n == 0) {
        snprintf(err, errlen, "route-cache table without routes");
        rc = -1;
    }
    if (rc < 0) {
        routes_free(r);
        return NULL;
    }
    return r;
}

struct routes *routes_load(const char *path, char *err, size_t errlen)
{
    struct routes *r = routes_pathname();

    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->scheme = ROUTES_ROUTE_CACHE;
    return finish(r, cfg_parse_file(path, on_line, r, err, errlen), err, errlen);
}

struct routes *routes_parse(const char *name, const char *text, char *err, size_t errlen)
{
    struct routes *r = routes_pathname();

    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->scheme = ROUTES_ROUTE_CACHE;
    return finish(r, cfg_parse_string(name, text, on_line, r, err, errlen), err, errlen);
}

/* Only plain segments are looked up: Next.js keys decoded pathnames, and
 * guessing its decoding of %-escapes would risk serving the wrong page. */
static int split_path(const char *path, size_t len, const char **segs, size_t *lens, unsigned *nseg)
{
    size_t i = 1;

    *nseg = 0;
    if (len == 0 || path[0] != '/')
        return -1;
    if (len == 1)
        return 0;
    while (i <= len) {
        size_t s = i;

        while (i < len && path[i] != '/') {
            char c = path[i];

            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_' || c == '.' || c == '~'))
                return -1;
            i++;
        }
        if (i == s || *nseg >= SEGS_MAX) /* empty segment: "//" or a trailing "/" */
            return -1;
        if ((i - s == 1 && path[s] == '.') || (i - s == 2 && path[s] == '.' && path[s + 1] == '.'))
            return -1;
        segs[*nseg] = path + s;
        lens[*nseg] = i - s;
        (*nseg)++;
        i++;
    }
    return 0;
}

static int route_matches(const struct route *rt, const char *const *segs, const size_t *lens,
                         unsigned n)
{
    unsigned i;

    for (i = 0; i < rt->nseg; i++) {
        const struct seg *g = &rt->seg[i];

        if (g->kind == SEG_CATCHALL)
            return n > i;
        if (g->kind == SEG_OPT_CATCHALL)
            return 1;
        if (i >= n)
            return 0;
        if (g->kind == SEG_STATIC && (g->len != lens[i] || memcmp(g->text, segs[i], g->len) != 0))
            return 0;
    }
    return i == n;
}

int routes_key(const struct routes *r, const char *path, size_t len, char *out, size_t size)
{
    const char *segs[SEGS_MAX];
    size_t lens[SEGS_MAX];
    unsigned n;
    int w;

    if (split_path(path, len, segs, lens, &n) < 0)
        return -1;
    if (r->scheme == ROUTES_PATHNAME) {
        /* Next.js stores "/" as "/index". */
        w = n == 0 ? snprintf(out, size, "/index") : snprintf(out, size, "%.*s", (int)len, path);
        return w < 0 || (size_t)w >= size ? -1 : w;
    }
    /* Static routes come first in the table, then dynamic ones in Next.js's
     * own precedence order (routes-manifest.json): the first match wins. */
    for (unsigned i = 0; i < r->n; i++) {
        const struct route *rt = &r->r[i];

        if (!route_matches(rt, segs, lens, n))
            continue;
        w = snprintf(out, size, "/route-cache/%s/%s/$%.*s", rt->kind, rt->hash, (int)len, path);
        return w < 0 || (size_t)w >= size ? -1 : w;
    }
    return -1;
}
