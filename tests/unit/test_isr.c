/* Unit tests for spoa/isr.c against the real bytes the fixture storefront
 * wrote to Redis and sent over HTTP (tests/fixtures/isr/<variant>/, made by
 * tests/fixtures/storefront/observe.sh), plus hostile and edge-case input.
 *
 * Fixtures are found through $CEDRA_FIXTURES, else the compile-time
 * -DCEDRA_FIXTURES="<dir>"; without either the fixture tests are skipped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include <zlib.h>

#include "gzip.h"
#include "isr.h"

static const char *const variants[] = {"v16", "v15", "v1637"};
#define NVARIANTS (sizeof(variants) / sizeof(variants[0]))

/* ---- helpers -------------------------------------------------------------------- */

static const char *fixtures_dir(void)
{
    const char *d = getenv("CEDRA_FIXTURES");

    if (d && *d)
        return d;
#ifdef CEDRA_FIXTURES
    return CEDRA_FIXTURES;
#else
    return NULL;
#endif
}

/* Reads <fixtures>/isr/<variant>/<rel>; NULL when absent. */
static char *load(const char *variant, const char *rel, size_t *len)
{
    char path[4096];
    FILE *f;
    char *buf;
    long n;

    snprintf(path, sizeof(path), "%s/isr/%s/%s", fixtures_dir(), variant, rel);
    if ((f = fopen(path, "rb")) == NULL)
        return NULL;
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    if (len)
        *len = (size_t)n;
    return buf;
}

static void need_fixtures(void)
{
    if (fixtures_dir() == NULL) {
        print_message("no CEDRA_FIXTURES: fixture test skipped\n");
        skip();
    }
}

static struct isr_entry *load_entry(const char *variant, const char *name)
{
    char rel[256];
    size_t len;
    char *buf;
    struct isr_entry *e = NULL;
    enum isr_err err;

    snprintf(rel, sizeof(rel), "values/%s.json", name);
    if ((buf = load(variant, rel, &len)) == NULL)
        return NULL;
    err = isr_entry_parse(buf, len, NULL, &e);
    if (err != ISR_OK)
        fail_msg("%s/%s: %s", variant, rel, isr_err_str(err));
    free(buf);
    return e;
}

/* A captured `curl -D` header block, minus what HAProxy/Node add for the
 * connection (Date, Connection, Keep-Alive) and the framing (Content-Length,
 * Transfer-Encoding), which the edge does not take from isr_headers(). */
struct captured {
    int status;
    size_t n;
    char name[64][64];
    char value[64][256];
};

static bool load_captured_rel(const char *variant, const char *rel, struct captured *c)
{
    char *buf, *line, *save = NULL;

    if ((buf = load(variant, rel, NULL)) == NULL)
        return false;
    memset(c, 0, sizeof(*c));
    line = strtok_r(buf, "\r\n", &save);
    assert_non_null(line);
    assert_int_equal(sscanf(line, "HTTP/1.1 %d", &c->status), 1);
    while ((line = strtok_r(NULL, "\r\n", &save)) != NULL) {
        char *colon = strchr(line, ':');

        assert_non_null(colon);
        *colon = '\0';
        if (strcasecmp(line, "date") == 0 || strcasecmp(line, "connection") == 0 ||
            strcasecmp(line, "keep-alive") == 0 || strcasecmp(line, "content-length") == 0 ||
            strcasecmp(line, "transfer-encoding") == 0)
            continue;
        assert_true(c->n < 64);
        snprintf(c->name[c->n], sizeof(c->name[0]), "%s", line);
        snprintf(c->value[c->n], sizeof(c->value[0]), "%s", colon + 2);
        c->n++;
    }
    free(buf);
    return true;
}

static bool load_captured(const char *variant, const char *name, struct captured *c)
{
    char rel[256];

    snprintf(rel, sizeof(rel), "origin/%s.headers", name);
    return load_captured_rel(variant, rel, c);
}

static const char *captured_get(const struct captured *c, const char *name)
{
    for (size_t i = 0; i < c->n; i++)
        if (strcasecmp(c->name[i], name) == 0)
            return c->value[i];
    return NULL;
}

/* Same names (exact spelling), values and order; skip_etag for a capture
 * of another body than the entry's. */
static void assert_headers_equal(const char *what, const struct isr_headers *h,
                                 const struct captured *c, bool skip_etag)
{
    size_t i, j;

    for (i = 0, j = 0; i < h->n || j < c->n; i++, j++) {
        if (skip_etag && i < h->n && strcmp(h->h[i].name, "ETag") == 0)
            i++;
        if (skip_etag && j < c->n && strcmp(c->name[j], "ETag") == 0)
            j++;
        if (i >= h->n && j >= c->n)
            break;
        if (i >= h->n || j >= c->n)
            fail_msg("%s: %zu headers from isr_headers, %zu captured", what, h->n, c->n);
        if (strcmp(h->h[i].name, c->name[j]) != 0 || strcmp(h->h[i].value, c->value[j]) != 0 ||
            strlen(h->h[i].value) != h->h[i].value_len)
            fail_msg("%s: header %zu is \"%s: %s\", Next.js sent \"%s: %s\"", what, i, h->h[i].name,
                     h->h[i].value, c->name[j], c->value[j]);
    }
}

/* ---- the real entries ------------------------------------------------------------- */

/* Each captured value parses, and its body is byte for byte what Next served
 * for it (a HIT, so from this very entry). */
static void test_fixture_values_parse(void **state)
{
    static const struct {
        const char *value, *origin;
        int status;
    } pages[] = {
        {"product-chair", "product-2", 200},
        {"product-nope-404", "notfound-2", 404},
        {"about-static", "about-2", 200},
    };

    need_fixtures();
    for (size_t v = 0; v < NVARIANTS; v++) {
        for (size_t i = 0; i < sizeof(pages) / sizeof(pages[0]); i++) {
            struct isr_entry *e = load_entry(variants[v], pages[i].value);
            char rel[256], *body;
            size_t blen;

            if (e == NULL)
                fail_msg("%s: values/%s.json missing", variants[v], pages[i].value);
            snprintf(rel, sizeof(rel), "origin/%s.body", pages[i].origin);
            body = load(variants[v], rel, &blen);
            assert_non_null(body);
            assert_int_equal(e->kind, ISR_APP_PAGE);
            assert_int_equal(e->status, pages[i].status);
            assert_int_equal(e->body_len, blen);
            assert_memory_equal(e->body, body, blen);
            assert_true(e->has_rsc);
            /* segmentData came with Next 16 */
            assert_int_equal(e->has_segments, strcmp(variants[v], "v15") != 0);
            assert_true(e->ntags >= 5);
            /* x-next-cache-tags never reaches a client. */
            for (size_t h = 0; h < e->nheaders; h++)
                assert_true(strcasecmp(e->headers[h].name, "x-next-cache-tags") != 0);
            free(body);
            isr_entry_free(e);
        }
    }
}

/* The tags to check are the stored ones, implicit _N_T_ tags included (the
 * handler made "tags" from x-next-cache-tags, which Next filled). */
static void test_fixture_tags(void **state)
{
    static const char *const want[] = {
        "_N_T_/layout",
        "_N_T_/[locale]/layout",
        "_N_T_/[locale]/products/layout",
        "_N_T_/[locale]/products/[slug]/layout",
        "_N_T_/[locale]/products/[slug]/page",
        "_N_T_/fr/products/chair",
        "product-chair",
        "products",
    };

    need_fixtures();
    for (size_t v = 0; v < NVARIANTS; v++) {
        struct isr_entry *e = load_entry(variants[v], "product-chair");

        assert_non_null(e);
        assert_int_equal(e->ntags, sizeof(want) / sizeof(want[0]));
        for (size_t i = 0; i < e->ntags; i++)
            assert_string_equal(e->tags[i], want[i]);
        isr_entry_free(e);
    }
}

static void test_fixture_not_pages(void **state)
{
    need_fixtures();
    for (size_t v = 0; v < NVARIANTS; v++) {
        char *buf;
        size_t len;
        struct isr_entry *e = (struct isr_entry *)1;

        buf = load(variants[v], "values/fetch-unstable_cache.json", &len);
        assert_non_null(buf);
        assert_int_equal(isr_entry_parse(buf, len, NULL, &e), ISR_NOT_PAGE);
        assert_null(e);
        free(buf);
    }
}

/* Every body Next sent with an ETag: our ETag of the body is Next's. */
static void test_fixture_etags(void **state)
{
    static const char *const names[] = {
        "product-1",    "product-2",   "notfound-1",
        "notfound-2",   "about-1",     "about-2",
        "home-1",       "home-2",      "badlocale-1",
        "after-tag-1",  "after-tag-2", "after-path-1",
        "after-path-2", "stale-1",     "stale-2",
        "restart-1",    "restart-2",   "product-inm-nocache",
    };
    unsigned checked = 0;

    need_fixtures();
    for (size_t v = 0; v < NVARIANTS; v++) {
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
            struct captured c;
            char rel[256], *body, etag[ISR_ETAG_SIZE];
            const char *want;
            size_t blen;

            if (!load_captured(variants[v], names[i], &c))
                continue;
            snprintf(rel, sizeof(rel), "origin/%s.body", names[i]);
            if ((body = load(variants[v], rel, &blen)) == NULL)
                continue;
            want = captured_get(&c, "ETag");
            assert_non_null(want);
            assert_true(isr_etag(body, blen, etag) > 0);
            if (strcmp(etag, want) != 0)
                fail_msg("%s/%s: ETag %s, Next.js sent %s", variants[v], names[i], etag, want);
            checked++;
            free(body);
        }
    }
    assert_true(checked >= 30);
}

/* isr_headers() for a HIT, a 304 and a STALE equals what Next.js sent. */
static void test_fixture_headers(void **state)
{
    static const struct {
        const char *value, *origin;
        enum isr_state st;
        bool nm, other_body;
    } cases[] = {
        {"product-chair", "product-2", ISR_FRESH, false, false},
        {"product-chair", "product-head", ISR_FRESH, false, false},
        {"product-chair", "product-304", ISR_FRESH, true, false},
        {"product-chair", "product-inm-nocache", ISR_FRESH, false, false},
        {"product-nope-404", "notfound-2", ISR_FRESH, false, false},
        {"about-static", "about-2", ISR_FRESH, false, false},
        /* STALE was captured for a later render of the same page. */
        {"product-chair", "stale-1", ISR_STALE, false, true},
    };
    const struct isr_conf conf = ISR_CONF_DEFAULT;

    need_fixtures();
    for (size_t v = 0; v < NVARIANTS; v++) {
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            struct isr_entry *e = load_entry(variants[v], cases[i].value);
            struct isr_headers h;
            struct captured c;
            char what[128];

            assert_non_null(e);
            assert_true(load_captured(variants[v], cases[i].origin, &c));
            snprintf(what, sizeof(what), "%s %s", variants[v], cases[i].origin);
            assert_int_equal(c.status, cases[i].nm ? 304 : e->status);
            assert_int_equal(isr_headers(e, cases[i].st, cases[i].nm, &conf, &h), 0);
            assert_headers_equal(what, &h, &c, cases[i].other_body);
            isr_entry_free(e);
        }
    }
}

/* A registerInitialCache entry carries x-nextjs-prerender itself: Next 16.3.7
 * (which reads pathname keys) then sends the header twice, as captured for
 * /fr/about in v1637 above; check the /nl one the same way. */
static void test_fixture_initial_cache(void **state)
{
    const struct isr_conf conf = ISR_CONF_DEFAULT;

    need_fixtures();
    for (size_t v = 0; v < NVARIANTS; v++) {
        struct isr_entry *e = load_entry(variants[v], "nl-registerInitialCache");
        struct isr_headers h;

        if (e == NULL)
            continue;
        assert_int_equal(isr_headers(e, ISR_FRESH, false, &conf, &h), 0);
        assert_string_equal(h.h[2].name, "x-nextjs-prerender");
        assert_string_equal(h.h[3].name, "x-nextjs-prerender");
        assert_string_equal(h.h[4].name, "x-nextjs-stale-time");
        isr_entry_free(e);
    }
}

/* Freshness of the real product entry (revalidate 10, as built for observe)
 * and of the static about page (revalidate false). */
static void test_fixture_freshness(void **state)
{
    const struct isr_conf conf = ISR_CONF_DEFAULT;

    need_fixtures();
    for (size_t v = 0; v < NVARIANTS; v++) {
        struct isr_entry *p = load_entry(variants[v], "product-chair");
        struct isr_entry *a = load_entry(variants[v], "about-static");
        int64_t lm, t[8];

        assert_non_null(p);
        assert_non_null(a);
        assert_int_equal(p->lifespan.revalidate, 10);
        lm = p->last_modified;
        assert_int_equal(isr_state(p, &conf, lm, NULL, 0), ISR_FRESH);
        assert_int_equal(isr_state(p, &conf, lm + 10000, NULL, 0), ISR_FRESH);
        assert_int_equal(isr_state(p, &conf, lm + 10001, NULL, 0), ISR_STALE);
        assert_int_equal(isr_state(p, &conf, p->lifespan.expire_at * 1000 + 999, NULL, 0),
                         ISR_STALE);
        assert_int_equal(isr_state(p, &conf, p->lifespan.expire_at * 1000 + 1000, NULL, 0),
                         ISR_EXPIRED);

        /* revalidatePath("/fr/products/chair") recorded its _N_T_ tag later
         * than the entry (revalidate-path.txt): a miss. */
        for (size_t i = 0; i < 8; i++)
            t[i] = ISR_TAG_NONE;
        assert_int_equal(isr_state(p, &conf, lm, t, 8), ISR_FRESH);
        assert_string_equal(p->tags[5], "_N_T_/fr/products/chair");
        t[5] = lm;
        assert_int_equal(isr_state(p, &conf, lm + 1, t, 8), ISR_FRESH);
        t[5] = lm + 1;
        assert_int_equal(isr_state(p, &conf, lm + 1, t, 8), ISR_REVALIDATED);
        t[5] = lm - 1;
        assert_int_equal(isr_state(p, &conf, lm + 10001, t, 8), ISR_STALE);

        assert_int_equal(a->lifespan.revalidate, 0);
        assert_int_equal(isr_state(a, &conf, a->lifespan.stale_at * 1000 + 1, NULL, 0), ISR_FRESH);
        assert_int_equal(isr_state(a, &conf, a->lifespan.expire_at * 1000 + 999, NULL, 0),
                         ISR_FRESH);
        assert_int_equal(isr_state(a, &conf, a->lifespan.expire_at * 1000 + 1000, NULL, 0),
                         ISR_EXPIRED);
        isr_entry_free(p);
        isr_entry_free(a);
    }
}

/* The revalidated time written by revalidatePath in the v16 capture. */
static void test_fixture_revalidated_tag(void **state)
{
    char *txt, *line;
    struct isr_entry *e;
    int64_t t[16];

    need_fixtures();
    txt = load("v16", "revalidate-path.txt", NULL);
    assert_non_null(txt);
    line = strstr(txt, "_N_T_/fr/products/chair\n");
    assert_non_null(line);
    line = strchr(line, '\n') + 1;
    e = load_entry("v16", "product-chair");
    assert_non_null(e);
    for (size_t i = 0; i < e->ntags; i++)
        t[i] = strcmp(e->tags[i], "_N_T_/fr/products/chair") == 0
                   ? isr_tag_time(line, strcspn(line, "\n"))
                   : ISR_TAG_NONE;
    assert_int_equal(isr_state(e, NULL, e->last_modified, t, e->ntags), ISR_REVALIDATED);
    isr_entry_free(e);
    free(txt);
}

/* ---- synthetic entries ---------------------------------------------------------------- */

#define LM "1795479806953"
#define LIFESPAN                                                                                   \
    "{\"expireAge\":15,\"expireAt\":1795479821,\"lastModifiedAt\":1795479806,"                     \
    "\"revalidate\":10,\"staleAge\":10,\"staleAt\":1795479816}"
#define TAGS "[\"_N_T_/layout\",\"_N_T_/fr\",\"products\"]"
#define VALUE                                                                                      \
    "{\"kind\":\"APP_PAGE\",\"html\":\"<p>caf\\u00e9 \\ud83c\\udf1e</p>\",\"rscData\":\"eA==\","   \
    "\"headers\":{\"x-nextjs-stale-time\":\"300\",\"x-next-cache-tags\":"                          \
    "\"_N_T_/layout,_N_T_/fr,products,extra\"},\"segmentData\":{\"/_tree\":\"eA==\"}}"

static char *entry_json(const char *lm, const char *lifespan, const char *tags, const char *value)
{
    size_t n = strlen(lm) + strlen(lifespan) + strlen(tags) + strlen(value) + 64;
    char *s = malloc(n);

    assert_non_null(s);
    snprintf(s, n, "{\"lastModified\":%s,\"lifespan\":%s,\"tags\":%s,\"value\":%s}", lm, lifespan,
             tags, value);
    return s;
}

static enum isr_err parse_str(const char *s, struct isr_entry **e)
{
    return isr_entry_parse(s, strlen(s), NULL, e);
}

static enum isr_err try_value(const char *value)
{
    char *s = entry_json(LM, LIFESPAN, TAGS, value);
    struct isr_entry *e = NULL;
    enum isr_err err = parse_str(s, &e);

    assert_true((err == ISR_OK) == (e != NULL));
    isr_entry_free(e);
    free(s);
    return err;
}

static enum isr_err try_entry(const char *lm, const char *lifespan, const char *tags)
{
    char *s = entry_json(lm, lifespan, tags, VALUE);
    struct isr_entry *e = NULL;
    enum isr_err err = parse_str(s, &e);

    assert_true((err == ISR_OK) == (e != NULL));
    isr_entry_free(e);
    free(s);
    return err;
}

static void test_synthetic_ok(void **state)
{
    char *s = entry_json(LM, LIFESPAN, TAGS, VALUE);
    struct isr_entry *e = NULL;

    assert_int_equal(parse_str(s, &e), ISR_OK);
    assert_string_equal(e->body, "<p>caf\xc3\xa9 \xf0\x9f\x8c\x9e</p>");
    assert_int_equal(e->body_units, 14); /* the emoji is a surrogate pair */
    /* node -e 'console.log(require("next/dist/server/lib/etag").generateETag("<p>café 🌞</p>"))' */
    assert_string_equal(e->etag, "\"yckd38rfa4e\"");
    assert_int_equal(e->ntags, 4); /* union, header's "extra" last */
    assert_string_equal(e->tags[3], "extra");
    assert_int_equal(e->nheaders, 1);
    assert_string_equal(e->headers[0].name, "x-nextjs-stale-time");
    isr_entry_free(e);
    free(s);
}

static void test_malformed_json(void **state)
{
    static const char *const bad[] = {
        "",
        "null",
        "[]",
        "{}",
        "\"x\"",
        "{\"lastModified\":1",
        "{\"lastModified\":1}}",
        "{\"lastModified\":1} x",
        "{\"a\":1,\"a\":2}",
        "{\"lastModified\":1,\"lastModified\":2,\"lifespan\":" LIFESPAN
        ",\"tags\":[],\"value\":" VALUE "}",
        "\xff",
        "{\"lastModified\":\"\xc3\x28\"}",
    };
    struct isr_entry *e = (struct isr_entry *)1;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(parse_str(bad[i], &e), ISR_MALFORMED);
        assert_null(e);
    }
}

static void test_bad_fields(void **state)
{
    /* lastModified */
    assert_int_equal(try_entry("\"1795479806953\"", LIFESPAN, TAGS), ISR_MALFORMED);
    assert_int_equal(try_entry("1795479806953.5", LIFESPAN, TAGS), ISR_MALFORMED);
    assert_int_equal(try_entry("1e400", LIFESPAN, TAGS), ISR_MALFORMED);
    assert_int_equal(try_entry("99999999999999999999999", LIFESPAN, TAGS), ISR_MALFORMED);
    assert_int_equal(try_entry("9007199254740992", LIFESPAN, TAGS), ISR_MALFORMED);
    assert_int_equal(try_entry("-1", LIFESPAN, TAGS), ISR_MALFORMED);
    assert_int_equal(try_entry("0", LIFESPAN, TAGS), ISR_MALFORMED);
    assert_int_equal(try_entry("null", LIFESPAN, TAGS), ISR_MALFORMED);
    /* lifespan */
    assert_int_equal(try_entry(LM, "null", TAGS), ISR_NO_LIFESPAN);
    assert_int_equal(try_entry(LM, "[]", TAGS), ISR_MALFORMED);
    assert_int_equal(try_entry(LM, "{}", TAGS), ISR_MALFORMED);
    assert_int_equal(try_entry(LM,
                               "{\"expireAge\":15,\"expireAt\":1795479821,\"lastModifiedAt\":1,"
                               "\"revalidate\":true,\"staleAge\":10,\"staleAt\":1}",
                               TAGS),
                     ISR_MALFORMED);
    assert_int_equal(try_entry(LM,
                               "{\"expireAge\":15,\"expireAt\":1795479821,\"lastModifiedAt\":1,"
                               "\"revalidate\":0,\"staleAge\":10,\"staleAt\":1}",
                               TAGS),
                     ISR_MALFORMED);
    assert_int_equal(try_entry(LM,
                               "{\"expireAge\":15,\"expireAt\":1795479821,\"lastModifiedAt\":1,"
                               "\"revalidate\":\"10\",\"staleAge\":10,\"staleAt\":1}",
                               TAGS),
                     ISR_MALFORMED);
    assert_int_equal(try_entry(LM,
                               "{\"expireAge\":15,\"expireAt\":1e30,\"lastModifiedAt\":1,"
                               "\"revalidate\":10,\"staleAge\":10,\"staleAt\":1}",
                               TAGS),
                     ISR_MALFORMED);
    assert_int_equal(try_entry(LM,
                               "{\"expireAge\":15,\"lastModifiedAt\":1,"
                               "\"revalidate\":10,\"staleAge\":10,\"staleAt\":1}",
                               TAGS),
                     ISR_MALFORMED);
    /* tags */
    assert_int_equal(try_entry(LM, LIFESPAN, "null"), ISR_MALFORMED);
    assert_int_equal(try_entry(LM, LIFESPAN, "\"a,b\""), ISR_MALFORMED);
    assert_int_equal(try_entry(LM, LIFESPAN, "[1]"), ISR_MALFORMED);
    assert_int_equal(try_entry(LM, LIFESPAN, "[\"a\\u0000b\"]"), ISR_MALFORMED);
    assert_int_equal(try_entry(LM, LIFESPAN, "[[\"a\"]]"), ISR_MALFORMED);
    assert_int_equal(try_entry(LM, LIFESPAN, "[]"), ISR_OK);
}

static void test_bad_value(void **state)
{
    assert_int_equal(try_value(VALUE), ISR_OK);
    assert_int_equal(try_value("null"), ISR_NOT_PAGE);
    assert_int_equal(try_value("[]"), ISR_MALFORMED);
    assert_int_equal(try_value("{\"kind\":\"FETCH\",\"data\":{}}"), ISR_NOT_PAGE);
    assert_int_equal(try_value("{\"kind\":\"APP_ROUTE\",\"body\":\"\"}"), ISR_NOT_PAGE);
    assert_int_equal(try_value("{\"kind\":\"app_page\",\"html\":\"x\"}"), ISR_NOT_PAGE);
    assert_int_equal(try_value("{\"kind\":1,\"html\":\"x\"}"), ISR_MALFORMED);
    assert_int_equal(try_value("{\"html\":\"x\"}"), ISR_MALFORMED);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\"}"), ISR_NO_HTML);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":null}"), ISR_NO_HTML);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":\"\"}"), ISR_NO_HTML);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":{}}"), ISR_MALFORMED);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"postponed\":\"\"}"),
                     ISR_POSTPONED);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"postponed\":\"p\"}"),
                     ISR_POSTPONED);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"postponed\":null}"),
                     ISR_OK);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"postponed\":1}"),
                     ISR_MALFORMED);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"status\":404}"), ISR_OK);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"status\":0}"), ISR_OK);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"status\":307}"),
                     ISR_UNSUPPORTED);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"status\":500}"),
                     ISR_UNSUPPORTED);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"status\":\"404\"}"),
                     ISR_MALFORMED);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"status\":404.0}"),
                     ISR_MALFORMED);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"status\":-200}"),
                     ISR_MALFORMED);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"rscData\":1}"),
                     ISR_MALFORMED);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"segmentData\":[]}"),
                     ISR_MALFORMED);
    assert_int_equal(
        try_value("{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"segmentData\":{\"/_tree\":1}}"),
        ISR_MALFORMED);
    assert_int_equal(try_value("{\"kind\":\"PAGES\",\"html\":\"x\",\"pageData\":{}}"), ISR_OK);
    assert_int_equal(try_value("{\"kind\":\"PAGES\",\"html\":\"x\",\"status\":404}"),
                     ISR_UNSUPPORTED);
    /* Lone surrogates are legal in a JS string, not in UTF-8: not served. */
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":\"\\ud800\"}"), ISR_MALFORMED);
    assert_int_equal(try_value("{\"kind\":\"APP_PAGE\",\"html\":\"\xed\xa0\x80\"}"), ISR_MALFORMED);
}

static enum isr_err try_headers(const char *headers)
{
    char value[4096];

    snprintf(value, sizeof(value), "{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"headers\":%s}",
             headers);
    return try_value(value);
}

static void test_bad_headers(void **state)
{
    assert_int_equal(try_headers("null"), ISR_OK);
    assert_int_equal(try_headers("{}"), ISR_OK);
    assert_int_equal(try_headers("[]"), ISR_MALFORMED);
    assert_int_equal(try_headers("{\"x-a\":\"1\",\"x-b\":[\"1\",\"2\"],\"x-c\":3}"), ISR_OK);
    assert_int_equal(try_headers("{\"x-a\":null}"), ISR_UNSUPPORTED);
    assert_int_equal(try_headers("{\"x-a\":true}"), ISR_UNSUPPORTED);
    assert_int_equal(try_headers("{\"x-a\":1.5}"), ISR_UNSUPPORTED);
    assert_int_equal(try_headers("{\"x-a\":{}}"), ISR_UNSUPPORTED);
    assert_int_equal(try_headers("{\"x-a\":[1]}"), ISR_UNSUPPORTED);
    assert_int_equal(try_headers("{\"x-a\":\"a\\r\\nSet-Cookie: x=1\"}"), ISR_UNSUPPORTED);
    assert_int_equal(try_headers("{\"x-a\":\"a\\u0000b\"}"), ISR_UNSUPPORTED);
    assert_int_equal(try_headers("{\"x-a\":\"caf\\u00e9\"}"), ISR_UNSUPPORTED);
    assert_int_equal(try_headers("{\"x-a\":[\"ok\",\"a\\nb\"]}"), ISR_UNSUPPORTED);
    assert_int_equal(try_headers("{\"x a\":\"1\"}"), ISR_UNSUPPORTED);
    assert_int_equal(try_headers("{\"\":\"1\"}"), ISR_UNSUPPORTED);
    assert_int_equal(try_headers("{\"x-a:\":\"1\"}"), ISR_UNSUPPORTED);
    /* jansson refuses NUL in keys even with JSON_ALLOW_NUL: still a miss */
    assert_int_equal(try_headers("{\"x-a\\u0000\":\"1\"}"), ISR_MALFORMED);
    assert_int_equal(try_headers("{\"Set-Cookie\":\"a=1\"}"), ISR_UNSUPPORTED);
    assert_int_equal(try_headers("{\"content-length\":\"1\"}"), ISR_UNSUPPORTED);
    assert_int_equal(try_headers("{\"Transfer-Encoding\":\"chunked\"}"), ISR_UNSUPPORTED);
    assert_int_equal(try_headers("{\"vary\":\"x\"}"), ISR_UNSUPPORTED);
    assert_int_equal(try_headers("{\"X-Next-Cache-Tags\":\"a\"}"), ISR_UNSUPPORTED);
    assert_int_equal(try_headers("{\"x-next-cache-tags\":1}"), ISR_MALFORMED);
    assert_int_equal(try_headers("{\"x-next-cache-tags\":[\"a\",\"b\"]}"), ISR_OK);
    assert_int_equal(try_headers("{\"x-next-cache-tags\":\"a\\u0000b\"}"), ISR_MALFORMED);
    assert_int_equal(try_headers("{\"x-next-cache-tags\":\",,a,,\"}"), ISR_OK);
}

static void test_limits(void **state)
{
    struct isr_conf conf = ISR_CONF_DEFAULT;
    struct isr_entry *e = NULL;
    size_t n = 10000 * 8 + 64, len;
    char *tags = malloc(n), *s, *v, *deep;

    /* 10k tags */
    assert_non_null(tags);
    len = 0;
    tags[len++] = '[';
    for (int i = 0; i < 10000; i++)
        len += (size_t)sprintf(tags + len, "%s\"t%d\"", i ? "," : "", i);
    tags[len++] = ']';
    tags[len] = '\0';
    assert_int_equal(try_entry(LM, LIFESPAN, tags), ISR_TOO_BIG);
    /* 10k tags in the header */
    v = malloc(n + 128);
    assert_non_null(v);
    len = (size_t)sprintf(v, "{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"headers\":{"
                             "\"x-next-cache-tags\":\"");
    for (int i = 0; i < 10000; i++)
        len += (size_t)sprintf(v + len, "%st%d", i ? "," : "", i);
    strcpy(v + len, "\"}}");
    assert_int_equal(try_value(v), ISR_TOO_BIG);
    free(v);
    /* 512 distinct tags fit, duplicates don't count */
    len = 0;
    tags[len++] = '[';
    for (int i = 0; i < 1024; i++)
        len += (size_t)sprintf(tags + len, "%s\"t%d\"", i ? "," : "", i % 512);
    tags[len++] = ']';
    tags[len] = '\0';
    assert_int_equal(try_entry(LM, LIFESPAN, tags), ISR_TOO_BIG); /* array > 512 */
    free(tags);

    /* a tag longer than ISR_MAX_TAG_LEN */
    tags = malloc(ISR_MAX_TAG_LEN + 16);
    assert_non_null(tags);
    tags[0] = '[';
    tags[1] = '"';
    memset(tags + 2, 'a', ISR_MAX_TAG_LEN + 1);
    strcpy(tags + 2 + ISR_MAX_TAG_LEN + 1, "\"]");
    assert_int_equal(try_entry(LM, LIFESPAN, tags), ISR_TOO_BIG);
    free(tags);

    /* deep nesting: refused before jansson recurses */
    deep = malloc(200003);
    assert_non_null(deep);
    memset(deep, '[', 100000);
    memset(deep + 100000, ']', 100000);
    deep[200000] = '\0';
    assert_int_equal(parse_str(deep, &e), ISR_MALFORMED);
    s = entry_json(LM, LIFESPAN, TAGS,
                   "{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"pageData\":"
                   "[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}");
    assert_int_equal(parse_str(s, &e), ISR_MALFORMED);
    free(s);
    /* brackets inside strings don't count */
    s = entry_json(LM, LIFESPAN, TAGS,
                   "{\"kind\":\"APP_PAGE\",\"html\":\"[[[[[[[[[[[[[[[[[[[[[[[[\\\"[[[[[[[[[[[[\"}");
    assert_int_equal(parse_str(s, &e), ISR_OK);
    isr_entry_free(e);
    free(s);
    free(deep);

    /* body and value size */
    s = entry_json(LM, LIFESPAN, TAGS, VALUE);
    conf.max_body = 16; /* the body is 17 bytes */
    assert_int_equal(isr_entry_parse(s, strlen(s), &conf, &e), ISR_TOO_BIG);
    conf.max_body = 17;
    assert_int_equal(isr_entry_parse(s, strlen(s), &conf, &e), ISR_OK);
    isr_entry_free(e);
    conf.max_value = strlen(s) - 1;
    assert_int_equal(isr_entry_parse(s, strlen(s), &conf, &e), ISR_TOO_BIG);
    free(s);

    /* more than ISR_MAX_ENTRY_HEADERS header lines */
    v = malloc(8192);
    assert_non_null(v);
    len = (size_t)sprintf(v, "{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"headers\":{\"x-a\":[");
    for (int i = 0; i <= ISR_MAX_ENTRY_HEADERS; i++)
        len += (size_t)sprintf(v + len, "%s\"%d\"", i ? "," : "", i);
    strcpy(v + len, "]}}");
    assert_int_equal(try_value(v), ISR_TOO_BIG);
    free(v);
}

/* A NUL in the page is legal in JSON and in the JS string Next hashes. */
static void test_nul_body(void **state)
{
    char *s = entry_json(LM, LIFESPAN, TAGS, "{\"kind\":\"APP_PAGE\",\"html\":\"a\\u0000b\"}");
    struct isr_entry *e = NULL;

    assert_int_equal(parse_str(s, &e), ISR_OK);
    assert_int_equal(e->body_len, 3);
    assert_memory_equal(e->body, "a\0b", 3);
    assert_string_equal(e->etag, "\"777umgaprj3\"");
    isr_entry_free(e);
    free(s);
}

/* ---- freshness table ---------------------------------------------------------------------- */

static void test_freshness_table(void **state)
{
    /* lastModified 1795479806953 ms, revalidate 10 s, expireAt 1795479821 s */
    char *s = entry_json(LM, LIFESPAN, TAGS, VALUE);
    struct isr_entry *e = NULL;
    struct isr_conf conf = ISR_CONF_DEFAULT;
    const int64_t lm = 1795479806953LL;
    static const struct {
        int64_t now;
        enum isr_state want;
    } table[] = {
        {1795479806953LL - 5000, ISR_FRESH}, /* clock behind the writer */
        {1795479806953LL, ISR_FRESH},
        /* lifespan.staleAt is 1795479816 s, but Next compares in ms */
        {1795479816000LL, ISR_FRESH},
        {1795479816953LL, ISR_FRESH},
        {1795479816954LL, ISR_STALE},
        {1795479821000LL, ISR_STALE},
        {1795479821999LL, ISR_STALE}, /* expireAt < floor(now/1000) is false */
        {1795479822000LL, ISR_EXPIRED},
        {INT64_MAX / 2, ISR_EXPIRED},
    };

    assert_int_equal(parse_str(s, &e), ISR_OK);
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (isr_state(e, &conf, table[i].now, NULL, 0) != table[i].want)
            fail_msg("now %lld: state %d, want %d", (long long)table[i].now,
                     isr_state(e, &conf, table[i].now, NULL, 0), table[i].want);

    /* tags: only a time strictly after lastModified is a miss */
    {
        int64_t t[4] = {ISR_TAG_NONE, ISR_TAG_NONE, ISR_TAG_NONE, ISR_TAG_NONE};

        assert_int_equal(isr_state(e, &conf, lm, t, 4), ISR_FRESH);
        t[3] = lm;
        assert_int_equal(isr_state(e, &conf, lm, t, 4), ISR_FRESH);
        t[3] = lm + 1;
        assert_int_equal(isr_state(e, &conf, lm, t, 4), ISR_REVALIDATED);
        assert_int_equal(isr_state(e, &conf, lm, t, 3), ISR_FRESH); /* not asked */
        t[3] = -1;
        t[0] = INT64_MAX;
        assert_int_equal(isr_state(e, &conf, lm, t, 4), ISR_REVALIDATED);
        /* expiry wins over a revalidated tag: both are misses anyway */
        assert_int_equal(isr_state(e, &conf, 1795479822000LL, t, 4), ISR_EXPIRED);
    }
    /* Next >= 16's expire: a blocking miss once lastModified + expire passed */
    conf.expire = 12;
    assert_int_equal(isr_state(e, &conf, lm + 12000, NULL, 0), ISR_STALE);
    assert_int_equal(isr_state(e, &conf, lm + 12001, NULL, 0), ISR_EXPIRED);
    conf.expire = 0;
    assert_int_equal(isr_state(e, &conf, lm + 14000, NULL, 0), ISR_STALE);
    isr_entry_free(e);
    free(s);

    /* revalidate: false never goes stale, only expires */
    s = entry_json(LM,
                   "{\"expireAge\":47304000,\"expireAt\":1842783806,\"lastModifiedAt\":1795479806,"
                   "\"revalidate\":false,\"staleAge\":31536000,\"staleAt\":1827015806}",
                   TAGS, VALUE);
    assert_int_equal(parse_str(s, &e), ISR_OK);
    conf.expire = 1;
    assert_int_equal(isr_state(e, &conf, 1827015807000LL, NULL, 0), ISR_FRESH);
    assert_int_equal(isr_state(e, &conf, 1842783806999LL, NULL, 0), ISR_FRESH);
    assert_int_equal(isr_state(e, &conf, 1842783807000LL, NULL, 0), ISR_EXPIRED);
    isr_entry_free(e);
    free(s);
}

static void test_tag_time(void **state)
{
#define TT(s) isr_tag_time(s, sizeof(s) - 1)
    assert_int_equal(TT("1795479809583"), 1795479809583LL);
    assert_int_equal(TT(" \t12"), 12);
    assert_int_equal(TT("12abc"), 12);
    assert_int_equal(TT("1e3"), 1);
    assert_int_equal(TT("1.9"), 1);
    assert_int_equal(TT("+7"), 7);
    assert_int_equal(TT("-5"), -5);
    assert_int_equal(TT("99999999999999999999999"), INT64_MAX);
    assert_true(TT("abc") == ISR_TAG_NONE);
    assert_true(TT("") == ISR_TAG_NONE);
    assert_true(TT("-") == ISR_TAG_NONE);
    assert_true(TT(" ") == ISR_TAG_NONE);
    assert_true(TT("0x10") == 0);
    assert_int_equal(isr_tag_time("12\0"
                                  "34",
                                  5),
                     12);
#undef TT
}

/* ---- ETag ---------------------------------------------------------------------------------- */

/* Expected values printed by Next's own lib/etag.js (next 16.4.6, identical in
 * 15.5.29 and 16.3.7):
 *   node -e 'const {generateETag} = require("next/dist/server/lib/etag.js");
 *            for (const s of [...]) console.log(generateETag(s))'
 * which is, for reference:
 *   fnv1a52(str): v0..v3 = 0x2325, 0x8422, 0x9ce4, 0xcbf2; per charCodeAt(i):
 *     v0 ^= c; t_k = v_k * 435; t2 += v0 << 8; t3 += v1 << 8; t1 += t0 >>> 16;
 *     v0 = t0 & 65535; t2 += t1 >>> 16; v1 = t1 & 65535;
 *     v3 = (t3 + (t2 >>> 16)) & 65535; v2 = t2 & 65535;
 *   -> (v3 & 15) * 2^48 + v2 * 2^32 + v1 * 65536 + (v0 ^ v3 >> 4)
 *   generateETag(p) = '"' + fnv1a52(p).toString(36) + p.length.toString(36) + '"' */
static void test_etag_vectors(void **state)
{
#define V(s, etag)                                                                                 \
    {                                                                                              \
        s, sizeof(s) - 1, etag                                                                     \
    }
    static const struct {
        const char *s;
        size_t len;
        const char *etag;
    } v[] = {
        V("", "\"78p3gz236i0\""),
        V("a", "\"ap6mcnqid61\""),
        V("<!DOCTYPE html>", "\"w5efcoh2r7f\""),
        V("\xc3\xa9", "\"c66t4pa6oi1\""),
        V("Chaise en ch\xc3\xaane \xe2\x80\x94 129,00 \xe2\x82\xac", "\"i4zbl58917q\""),
        V("warm light \xf0\x9f\x8c\x9e", "\"w8l3txmke8d\""),
        V("\xf0\x9f\x8c\x9e", "\"7dtk4csce92\""),
        V("a\0b", "\"777umgaprj3\""),
        V("\xef\xbf\xbf", "\"119m7187zvz1\""),
        V("\xf4\x8f\xbf\xbf", "\"7pwifjf5ix2\""),
    };
#undef V
    char out[ISR_ETAG_SIZE], *big;

    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        assert_int_equal(isr_etag(v[i].s, v[i].len, out), (int)strlen(v[i].etag));
        assert_string_equal(out, v[i].etag);
    }
    big = malloc(100000);
    assert_non_null(big);
    memset(big, 'x', 100000);
    assert_true(isr_etag(big, 100000, out) > 0);
    assert_string_equal(out, "\"8ngsa0a54s255s\"");
    free(big);
}

static void test_etag_invalid_utf8(void **state)
{
    static const char *const bad[] = {
        "\x80",             /* lone continuation */
        "\xc0\x80",         /* overlong NUL */
        "\xc1\xbf",         /* overlong */
        "\xe0\x80\x80",     /* overlong */
        "\xe0\x9f\xbf",     /* overlong */
        "\xed\xa0\x80",     /* U+D800 */
        "\xed\xbf\xbf",     /* U+DFFF */
        "\xf0\x80\x80\x80", /* overlong */
        "\xf4\x90\x80\x80", /* > U+10FFFF */
        "\xf5\x80\x80\x80",
        "\xff",
        "\xc3",
        "\xe2\x82",
        "\xf0\x9f\x8c",
        "\xc3\x28",
        "a\xe2\x28\xa1",
    };
    char out[ISR_ETAG_SIZE];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(isr_etag(bad[i], strlen(bad[i]), out), -1);
}

/* ---- If-None-Match and Cache-Control: no-cache ----------------------------------------- */

static void test_if_none_match(void **state)
{
    static const char *etag = "\"wenex91pix66e\"";
    static const struct {
        const char *hdr;
        bool match;
    } v[] = {
        {"\"wenex91pix66e\"", true},
        {"W/\"wenex91pix66e\"", true},
        {"*", true},
        {"\"a\", \"wenex91pix66e\"", true},
        {"\"a\",\"wenex91pix66e\"", true},
        {"  \"wenex91pix66e\"  ,\"b\"", true},
        {"\"a\" , W/\"wenex91pix66e\" , \"b\"", true},
        {"\"a\",,\"wenex91pix66e\",", true},
        {"", false},
        {" ", false},
        {",", false},
        {"\"a\"", false},
        {"\"wenex91pix66\"", false},
        {"\"wenex91pix66e", false},
        {"wenex91pix66e", false},
        {"w/\"wenex91pix66e\"", false},
        {"W/ \"wenex91pix66e\"", false},
        {"\"WENEX91PIX66E\"", false},
        {"\"a\", *", false}, /* only a lone "*" is a wildcard for `fresh` */
        {" *", false},
        {"\t\"wenex91pix66e\"", false}, /* `fresh` trims spaces only */
        {"\"wenex91pix66e\"\"wenex91pix66e\"", false},
        {"\"x wenex91pix66e\"", false},
    };

    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        if (isr_if_none_match(v[i].hdr, strlen(v[i].hdr), etag) != v[i].match)
            fail_msg("If-None-Match: %s -> %d", v[i].hdr, !v[i].match);
    /* length-bounded, NUL inside */
    assert_false(isr_if_none_match("\"wenex91pix66e\"\0", 16, etag));
    assert_true(isr_if_none_match("\"wenex91pix66e\"xyz", 15, etag));
    assert_false(isr_if_none_match("\"a\"", 3, ""));
    /* "W/" + member === etag, for a weak etag */
    assert_true(isr_if_none_match("\"a\"", 3, "W/\"a\""));
}

static void test_no_cache(void **state)
{
    static const struct {
        const char *hdr;
        bool nc;
    } v[] = {
        {"no-cache", true},
        {" no-cache ", true},
        {"max-age=0, no-cache", true},
        {"no-cache, max-age=0", true},
        {"private,no-cache,no-store", true},
        {"a=1,\tno-cache\t,b", true},
        {"max-age=0", false},
        {"", false},
        {"no-cache=\"set-cookie\"", false},
        {"x-no-cache", false},
        {"no-cachex", false},
        {"NO-CACHE", false},
        {"no-store", false},
        {"a no-cache", false},
        {"no-cache;x", false},
    };

    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        if (isr_no_cache(v[i].hdr, strlen(v[i].hdr)) != v[i].nc)
            fail_msg("Cache-Control: %s -> %d", v[i].hdr, !v[i].nc);
    assert_true(isr_no_cache("x, no-cache", 11));
    assert_false(isr_no_cache("x, no-cache", 10));
    assert_true(isr_no_cache("\xa0no-cache", 9)); /* NBSP is JS whitespace */
}

/* ---- header lists ------------------------------------------------------------------------ */

static const char *hget(const struct isr_headers *h, const char *name)
{
    for (size_t i = 0; i < h->n; i++)
        if (strcasecmp(h->h[i].name, name) == 0)
            return h->h[i].value;
    return NULL;
}

static struct isr_entry *entry_of(const char *lifespan, const char *value)
{
    char *s = entry_json(LM, lifespan, TAGS, value);
    struct isr_entry *e = NULL;

    assert_int_equal(parse_str(s, &e), ISR_OK);
    free(s);
    return e;
}

static void test_headers_cache_control(void **state)
{
    struct isr_entry *e = entry_of(LIFESPAN, VALUE);
    struct isr_conf conf = ISR_CONF_DEFAULT;
    struct isr_headers h;

    assert_int_equal(isr_headers(e, ISR_FRESH, false, &conf, &h), 0);
    assert_string_equal(hget(&h, "Cache-Control"), "s-maxage=10, stale-while-revalidate=31535990");
    assert_string_equal(hget(&h, "x-nextjs-cache"), "HIT");
    assert_int_equal(isr_headers(e, ISR_STALE, false, &conf, &h), 0);
    assert_string_equal(hget(&h, "x-nextjs-cache"), "STALE");
    conf.expire = 0; /* expire undefined */
    assert_int_equal(isr_headers(e, ISR_FRESH, false, &conf, &h), 0);
    assert_string_equal(hget(&h, "Cache-Control"), "s-maxage=10");
    conf.expire = 10; /* revalidate < expire is false */
    assert_int_equal(isr_headers(e, ISR_FRESH, false, &conf, &h), 0);
    assert_string_equal(hget(&h, "Cache-Control"), "s-maxage=10");
    conf.expire = 11;
    assert_int_equal(isr_headers(e, ISR_FRESH, false, &conf, &h), 0);
    assert_string_equal(hget(&h, "Cache-Control"), "s-maxage=10, stale-while-revalidate=1");
    assert_int_equal(isr_headers(e, ISR_EXPIRED, false, &conf, &h), -1);
    assert_int_equal(isr_headers(e, ISR_REVALIDATED, false, &conf, &h), -1);
    isr_entry_free(e);

    e = entry_of("{\"expireAge\":47304000,\"expireAt\":1842783806,\"lastModifiedAt\":1795479806,"
                 "\"revalidate\":false,\"staleAge\":31536000,\"staleAt\":1827015806}",
                 VALUE);
    conf.expire = ISR_ONE_YEAR;
    assert_int_equal(isr_headers(e, ISR_FRESH, false, &conf, &h), 0);
    assert_string_equal(hget(&h, "Cache-Control"), "s-maxage=31536000");
    isr_entry_free(e);
}

static void test_headers_conf(void **state)
{
    struct isr_entry *e = entry_of(LIFESPAN, VALUE);
    struct isr_conf conf = ISR_CONF_DEFAULT;
    struct isr_headers h;

    conf.powered_by = false;
    conf.compress = false;
    assert_int_equal(isr_headers(e, ISR_FRESH, false, &conf, &h), 0);
    assert_null(hget(&h, "X-Powered-By"));
    assert_string_equal(hget(&h, "Vary"), "rsc, next-router-state-tree, next-router-prefetch, "
                                          "next-router-segment-prefetch");
    assert_int_equal(isr_headers(e, ISR_FRESH, false, NULL, &h), 0);
    assert_string_equal(hget(&h, "X-Powered-By"), "Next.js");
    assert_string_equal(hget(&h, "ETag"), e->etag);
    assert_int_equal(isr_headers(e, ISR_FRESH, true, NULL, &h), 0);
    assert_null(hget(&h, "Content-Type"));
    isr_entry_free(e);
}

/* Entry headers Next lets win (Cache-Control, Content-Type) and merges. */
static void test_headers_entry(void **state)
{
    struct isr_entry *e = entry_of(
        LIFESPAN,
        "{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"headers\":{\"cache-control\":\"no-store\","
        "\"X-Nextjs-Prerender\":\"1\",\"content-type\":\"text/html\",\"x-n\":42,"
        "\"x-l\":[\"a\",\"b\"],\"x-e\":[]}}");
    struct isr_headers h;
    static const char *const want[][2] = {
        {"Vary", "rsc, next-router-state-tree, next-router-prefetch, next-router-segment-prefetch, "
                 "Accept-Encoding"},
        {"x-nextjs-cache", "HIT"},
        {"x-nextjs-prerender", "1"},
        {"x-nextjs-prerender", "1"},
        {"cache-control", "no-store"},
        {"content-type", "text/html"},
        {"x-n", "42"},
        {"x-l", "a"},
        {"x-l", "b"},
        {"X-Powered-By", "Next.js"},
        {"ETag", "\"ayxe2glzap1\""},
    };

    assert_int_equal(isr_headers(e, ISR_FRESH, false, NULL, &h), 0);
    assert_int_equal(h.n, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < h.n; i++) {
        assert_string_equal(h.h[i].name, want[i][0]);
        assert_string_equal(h.h[i].value, want[i][1]);
        assert_int_equal(h.h[i].value_len, strlen(want[i][1]));
    }
    isr_entry_free(e);
}

/* Pages Router (from pages-handler.js; no such page in the fixture). */
static void test_headers_pages(void **state)
{
    struct isr_entry *e =
        entry_of(LIFESPAN,
                 "{\"kind\":\"PAGES\",\"html\":\"x\",\"pageData\":{},\"headers\":{\"x-a\":\"1\"}}");
    struct isr_headers h;
    static const char *const names[] = {"x-nextjs-cache", "Cache-Control", "X-Powered-By",
                                        "ETag",           "Content-Type",  "Vary"};

    assert_int_equal(e->kind, ISR_PAGES);
    assert_int_equal(e->nheaders, 0);
    assert_int_equal(isr_headers(e, ISR_STALE, false, NULL, &h), 0);
    assert_int_equal(h.n, 6);
    for (size_t i = 0; i < h.n; i++)
        assert_string_equal(h.h[i].name, names[i]);
    assert_string_equal(h.h[5].value, "Accept-Encoding");
    assert_int_equal(isr_headers(e, ISR_STALE, true, NULL, &h), 0);
    assert_int_equal(h.n, 4);
    isr_entry_free(e);
}

/* ---- App Router payloads (rscData, segmentData) ---------------------------------------
 * tests/fixtures/isr/<variant>/rsc/ (observe_rsc.py): the entry, and what
 * `next start` answered from it to each request, headers and body. */

/* The capture being checked: "rsc" (a 200 page) or "rsc-notfound" (a
 * notFound() 404 entry). */
static const char *rsc_dir = "rsc";
static const char *const rsc_dirs[] = {"rsc", "rsc-notfound"};

struct rsc_request {
    char target[8192];
    char prefetch[8], segment[1100], tree[6000];
    bool has_prefetch, has_segment, has_tree;
    const char *param; /* into target: the _rsc value, NULL when none */
};

static bool load_rsc_request(const char *variant, const char *name, struct rsc_request *r)
{
    char rel[256], *buf, *line, *save = NULL, *q;

    snprintf(rel, sizeof(rel), "%s/%s.request", rsc_dir, name);
    if ((buf = load(variant, rel, NULL)) == NULL)
        return false;
    memset(r, 0, sizeof(*r));
    line = strtok_r(buf, "\n", &save);
    assert_non_null(line);
    assert_int_equal(sscanf(line, "GET %8191s", r->target), 1);
    while ((line = strtok_r(NULL, "\n", &save)) != NULL) {
        char *colon = strchr(line, ':');

        assert_non_null(colon);
        *colon = '\0';
        if (strcasecmp(line, "next-router-prefetch") == 0) {
            snprintf(r->prefetch, sizeof(r->prefetch), "%s", colon + 2);
            r->has_prefetch = true;
        } else if (strcasecmp(line, "next-router-segment-prefetch") == 0) {
            snprintf(r->segment, sizeof(r->segment), "%s", colon + 2);
            r->has_segment = true;
        } else if (strcasecmp(line, "next-router-state-tree") == 0) {
            assert_true(strlen(colon + 2) < sizeof(r->tree));
            snprintf(r->tree, sizeof(r->tree), "%s", colon + 2);
            r->has_tree = true;
        }
    }
    free(buf);
    if ((q = strstr(r->target, "?_rsc")) != NULL)
        r->param = q[5] == '=' ? q + 6 : q + 5;
    return true;
}

static bool rsc_param_matches(const struct rsc_request *r)
{
    char sha[ISR_RSC_PARAM_SIZE], legacy[ISR_RSC_PARAM_SIZE];

    assert_int_equal(isr_rsc_param(r->has_prefetch ? r->prefetch : NULL, strlen(r->prefetch),
                                   r->has_segment ? r->segment : NULL, strlen(r->segment),
                                   r->has_tree ? r->tree : NULL, strlen(r->tree), sha, legacy),
                     0);
    return r->param && (strcmp(r->param, sha) == 0 || strcmp(r->param, legacy) == 0);
}

static struct isr_entry *load_rsc_entry(const char *variant)
{
    size_t len;
    char rel[64], *buf;

    snprintf(rel, sizeof(rel), "%s/value.json", rsc_dir);
    buf = load(variant, rel, &len);
    struct isr_entry *e = NULL;

    if (buf == NULL)
        return NULL;
    assert_int_equal(isr_entry_parse(buf, len, NULL, &e), ISR_OK);
    free(buf);
    return e;
}

static void assert_body(const char *variant, const char *name, const void *data, size_t len)
{
    char rel[256];
    size_t n;
    char *body;

    snprintf(rel, sizeof(rel), "%s/%s.body", rsc_dir, name);
    body = load(variant, rel, &n);
    assert_non_null(body);
    if (n != len || (n && memcmp(body, data, n) != 0))
        fail_msg("%s %s: %zu bytes decoded, Next sent %zu", variant, name, len, n);
    free(body);
}

/* The decoded rscData is what Next sent to a navigation and a full prefetch,
 * with the same headers, and its _rsc check accepts exactly what Next did. */
static void test_fixture_rsc_navigation(void **state)
{
    static const char *const ok[] = {"nav", "nav-notree", "prefetch"};
    unsigned seen = 0;

    need_fixtures();
    /* Every variant, for each capture directory. */
    for (size_t k = 0; k < 2 * NVARIANTS; k++) {
        size_t v = k % NVARIANTS;
        struct isr_entry *e;
        struct isr_headers h;
        struct captured c;
        struct rsc_request r;

        rsc_dir = rsc_dirs[k / NVARIANTS];
        e = load_rsc_entry(variants[v]);
        if (e == NULL)
            continue;
        seen++;
        assert_true(e->has_rsc);
        assert_non_null(e->rsc);
        for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
            char rel[128];

            snprintf(rel, sizeof(rel), "%s/%s.headers", rsc_dir, ok[i]);
            assert_true(load_captured_rel(variants[v], rel, &c));
            assert_int_equal(c.status, isr_rsc_status(e, ISR_RSC));
            assert_string_equal(captured_get(&c, "x-nextjs-cache"), "HIT");
            assert_int_equal(isr_variant_headers(e, ISR_RSC, ISR_FRESH, false, NULL, &h), 0);
            assert_headers_equal(ok[i], &h, &c, false);
            assert_body(variants[v], ok[i], e->rsc, e->rsc_len);
            assert_true(load_rsc_request(variants[v], ok[i], &r));
            if (!rsc_param_matches(&r))
                fail_msg("%s %s: _rsc=%s not accepted", variants[v], ok[i], r.param);
        }
        /* Next 16 redirects these (307); Next 15 does not check: either way
         * the edge must not accept them. */
        for (size_t i = 0; i < 2; i++) {
            const char *name = i ? "nav-wrong-rsc" : "nav-missing-rsc";

            assert_true(load_rsc_request(variants[v], name, &r));
            assert_false(rsc_param_matches(&r));
            char rel[128];

            snprintf(rel, sizeof(rel), "%s/%s.headers", rsc_dir, name);
            assert_true(load_captured_rel(variants[v], rel, &c));
            if (e->has_segments) /* Next 16 */
                assert_int_equal(c.status, 307);
        }
        /* The legacy (djb2) form: Next 16 accepted it with a 200. */
        assert_true(load_rsc_request(variants[v], "nav-legacy", &r));
        {
            char rel[128];

            snprintf(rel, sizeof(rel), "%s/nav-legacy.headers", rsc_dir);
            assert_true(load_captured_rel(variants[v], rel, &c));
        }
        assert_int_equal(c.status, isr_rsc_status(e, ISR_RSC));
        assert_true(rsc_param_matches(&r));
        assert_body(variants[v], "nav-legacy", e->rsc, e->rsc_len);
        /* Decoded payloads count in the in-process cache budget. */
        assert_true(e->mem >= e->body_len + e->rsc_len);
        isr_entry_free(e);
    }
    if (!seen)
        skip();
}

/* Each segment of segmentData is what Next sent for it, with its headers;
 * Next 15 (no segmentData) answers a segment prefetch with the rscData. */
static void test_fixture_rsc_segments(void **state)
{
    unsigned seen = 0;

    need_fixtures();
    for (size_t k = 0; k < 2 * NVARIANTS; k++) {
        size_t v = k % NVARIANTS;
        struct isr_entry *e;
        struct isr_headers h;
        struct captured c;
        struct rsc_request r;
        size_t found = 0;

        rsc_dir = rsc_dirs[k / NVARIANTS];
        e = load_rsc_entry(variants[v]);
        if (e == NULL)
            continue;
        for (int i = 0; i < 64; i++) {
            char name[32], rel[64];
            const struct isr_segment *sg;

            snprintf(name, sizeof(name), "seg-%d", i);
            if (!load_rsc_request(variants[v], name, &r))
                break;
            assert_true(r.has_segment);
            assert_true(rsc_param_matches(&r));
            snprintf(rel, sizeof(rel), "%s/%s.headers", rsc_dir, name);
            assert_true(load_captured_rel(variants[v], rel, &c));
            sg = isr_segment_find(e, r.segment, strlen(r.segment));
            if (!e->has_segments) {
                assert_int_equal(c.status, isr_rsc_status(e, ISR_RSC));
                assert_null(sg);
                assert_int_equal(isr_variant_headers(e, ISR_RSC, ISR_FRESH, false, NULL, &h), 0);
                assert_headers_equal(name, &h, &c, false);
                assert_body(variants[v], name, e->rsc, e->rsc_len);
                continue;
            }
            assert_non_null(sg);
            assert_int_equal(c.status, isr_rsc_status(e, ISR_SEGMENT));
            found++;
            assert_int_equal(isr_variant_headers(e, ISR_SEGMENT, ISR_FRESH, false, NULL, &h), 0);
            assert_headers_equal(name, &h, &c, false);
            assert_body(variants[v], name, sg->data, sg->len);
        }
        if (e->has_segments) {
            assert_int_equal(found, e->nsegments);
            /* A path the entry lacks: Next sends an empty 404, the edge has none. */
            assert_true(load_rsc_request(variants[v], "seg-unknown", &r));
            assert_null(isr_segment_find(e, r.segment, strlen(r.segment)));
            char rel[128];

            snprintf(rel, sizeof(rel), "%s/seg-unknown.headers", rsc_dir);
            assert_true(load_captured_rel(variants[v], rel, &c));
            assert_int_equal(c.status, 404);
            seen++;
        }
        isr_entry_free(e);
    }
    if (!seen)
        skip();
}

#define RSC_VALUE(rsc, seg)                                                                        \
    "{\"kind\":\"APP_PAGE\",\"html\":\"<p>x</p>\",\"rscData\":" rsc ",\"headers\":{"               \
    "\"x-nextjs-stale-time\":\"300\"},\"segmentData\":" seg "}"

static struct isr_entry *parse_value_str(const char *value)
{
    char *s = entry_json(LM, LIFESPAN, TAGS, value);
    struct isr_entry *e = NULL;

    assert_int_equal(parse_str(s, &e), ISR_OK);
    free(s);
    return e;
}

/* Only the canonical base64 Node writes is decoded; anything else leaves
 * the payload unservable (NULL) and the HTML intact. */
static void test_rsc_base64(void **state)
{
    static const struct {
        const char *rsc;
        const char *want; /* NULL: not decoded */
        size_t len;
    } cases[] = {
        {"\"aGVsbG8K\"", "hello\n", 6},
        {"\"aGVsbG8=\"", "hello", 5},
        {"\"aGVsbA==\"", "hell", 4},
        {"\"\"", "", 0},
        {"\"AAEC/w==\"", "\x00\x01\x02\xff", 4},
        {"\"aGVsbG8\"", NULL, 0},   /* padding missing */
        {"\"aGVsbG9=\"", NULL, 0},  /* unused bits set */
        {"\"aGVsbB==\"", NULL, 0},  /* unused bits set */
        {"\"aGV sbG8=\"", NULL, 0}, /* blank */
        {"\"aGVs-G8=\"", NULL, 0},  /* URL-safe alphabet */
        {"\"aG=sbG8=\"", NULL, 0},  /* padding inside */
        {"\"aGVsbG8=aGVs\"", NULL, 0},
        {"\"====\"", NULL, 0},
        {"\"aGVsbG8K\\n\"", NULL, 0},
    };
    char value[512];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct isr_entry *e;

        snprintf(value, sizeof(value), RSC_VALUE("%s", "{\"/_tree\":%s}"), cases[i].rsc,
                 cases[i].rsc);
        e = parse_value_str(value);
        assert_string_equal(e->body, "<p>x</p>");
        assert_true(e->has_rsc);
        assert_true(e->has_segments);
        if (cases[i].want == NULL) {
            assert_null(e->rsc);
            assert_null(e->segments);
            assert_int_equal(e->nsegments, 0);
            assert_null(isr_segment_find(e, "/_tree", 6));
        } else {
            assert_non_null(e->rsc);
            assert_int_equal(e->rsc_len, cases[i].len);
            assert_memory_equal(e->rsc, cases[i].want, cases[i].len);
            assert_int_equal(e->nsegments, 1);
            assert_non_null(isr_segment_find(e, "/_tree", 6));
            assert_int_equal(isr_segment_find(e, "/_tree", 6)->len, cases[i].len);
        }
        isr_entry_free(e);
    }
}

static void test_rsc_segments_limits(void **state)
{
    struct isr_entry *e;
    char *value, *p;
    size_t n = 64 + (ISR_MAX_SEGMENTS + 1) * 32 + 2 * ISR_MAX_SEGMENT_PATH;

    /* One bad member makes every segment unservable, rscData stays. */
    e = parse_value_str(RSC_VALUE("\"eA==\"", "{\"/_tree\":\"eA==\",\"/_full\":\"e\"}"));
    assert_non_null(e->rsc);
    assert_null(e->segments);
    isr_entry_free(e);
    /* Lookup is exact: no prefix, no case folding, NUL-safe lengths. */
    e = parse_value_str(RSC_VALUE("\"eA==\"", "{\"/_tree\":\"eQ==\",\"/_full\":\"\"}"));
    assert_int_equal(e->nsegments, 2);
    assert_memory_equal(isr_segment_find(e, "/_tree", 6)->data, "y", 1);
    assert_int_equal(isr_segment_find(e, "/_full", 6)->len, 0);
    assert_null(isr_segment_find(e, "/_tre", 5));
    assert_null(isr_segment_find(e, "/_TREE", 6));
    assert_null(isr_segment_find(e, "/_tree/", 7));
    isr_entry_free(e);
    /* Absent or null: nothing to serve, HTML still fine. */
    e = parse_value_str("{\"kind\":\"APP_PAGE\",\"html\":\"<p>x</p>\",\"rscData\":null}");
    assert_false(e->has_rsc);
    assert_null(e->rsc);
    assert_false(e->has_segments);
    isr_entry_free(e);
    /* Too many segments, and a path over the limit: unservable. */
    value = malloc(n);
    assert_non_null(value);
    p = value + sprintf(value, "{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"segmentData\":{");
    for (int i = 0; i <= ISR_MAX_SEGMENTS; i++)
        p += sprintf(p, "%s\"/s%d\":\"eA==\"", i ? "," : "", i);
    strcpy(p, "}}");
    e = parse_value_str(value);
    assert_true(e->has_segments);
    assert_null(e->segments);
    isr_entry_free(e);
    p = value + sprintf(value, "{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"segmentData\":{\"/");
    memset(p, 'a', ISR_MAX_SEGMENT_PATH);
    strcpy(p + ISR_MAX_SEGMENT_PATH, "\":\"eA==\"}}");
    e = parse_value_str(value);
    assert_null(e->segments);
    isr_entry_free(e);
    free(value);
}

/* Only 200 App Router entries, HIT or STALE, no 304. */
static void test_rsc_headers(void **state)
{
    struct isr_entry *e = parse_value_str(RSC_VALUE("\"eA==\"", "{\"/_tree\":\"eA==\"}"));
    struct isr_conf conf = ISR_CONF_DEFAULT;
    struct isr_headers h;
    char *s;

    assert_int_equal(isr_variant_headers(e, ISR_RSC, ISR_STALE, false, NULL, &h), 0);
    assert_string_equal(h.h[1].value, "STALE");
    assert_int_equal(isr_variant_headers(e, ISR_RSC, ISR_FRESH, true, NULL, &h), -1);
    assert_int_equal(isr_variant_headers(e, ISR_SEGMENT, ISR_EXPIRED, false, NULL, &h), -1);
    /* compress off: no Accept-Encoding in Vary; no X-Powered-By ever. */
    conf.compress = false;
    assert_int_equal(isr_variant_headers(e, ISR_SEGMENT, ISR_FRESH, false, &conf, &h), 0);
    assert_string_equal(h.h[0].value, "rsc, next-router-state-tree, next-router-prefetch, "
                                      "next-router-segment-prefetch");
    for (size_t i = 0; i < h.n; i++)
        assert_true(strcasecmp(h.h[i].name, "x-powered-by") != 0 &&
                    strcasecmp(h.h[i].name, "etag") != 0);
    /* HTML is isr_headers(). */
    assert_int_equal(isr_variant_headers(e, ISR_HTML, ISR_FRESH, false, NULL, &h), 0);
    assert_string_equal(h.h[h.n - 1].value, "text/html; charset=utf-8");
    isr_entry_free(e);
    /* notFound(): the navigation keeps the 404, a segment is a 200. */
    s = entry_json(LM, LIFESPAN, TAGS,
                   "{\"kind\":\"APP_PAGE\",\"html\":\"x\",\"rscData\":\"eA==\",\"status\":404}");
    assert_int_equal(parse_str(s, &e), ISR_OK);
    assert_int_equal(isr_variant_headers(e, ISR_RSC, ISR_FRESH, false, NULL, &h), 0);
    assert_int_equal(isr_rsc_status(e, ISR_RSC), 404);
    assert_int_equal(isr_rsc_status(e, ISR_SEGMENT), 200);
    assert_int_equal(isr_rsc_status(e, ISR_HTML), 404);
    isr_entry_free(e);
    free(s);
    /* Pages Router entries have no RSC answers. */
    s = entry_json(LM, LIFESPAN, TAGS, "{\"kind\":\"PAGES\",\"html\":\"x\",\"rscData\":\"eA==\"}");
    assert_int_equal(parse_str(s, &e), ISR_OK);
    assert_int_equal(isr_variant_headers(e, ISR_RSC, ISR_FRESH, false, NULL, &h), -1);
    isr_entry_free(e);
    free(s);
}

/* Vectors from Next's own module:
 *   node -e 'const m=require("next/dist/shared/lib/router/utils/cache-busting-search-param");
 *            m.computeCacheBustingSearchParam(P,S,T,undefined).then(console.log);
 *            console.log(m.computeLegacyCacheBustingSearchParam(P,S,T,undefined))'
 * (next 16.4.6; the same file in 15.5.29). */
static void test_rsc_param_vectors(void **state)
{
    static const struct {
        const char *prefetch, *segment, *tree, *sha, *legacy;
    } v[] = {
        {NULL, NULL, "abc", "4B5IQ79JBcDQUWUq", "i557j"},
        {NULL, NULL, "ab,null", "M2I91AlpZvegHdoD", "iy53h"},
        {"1", "/_tree", NULL, "_i_aeImnuN6u1u1r", "1r34m"},
        {NULL, NULL, NULL, "", ""},
        {"0", NULL, NULL, "", ""},
    };
    char sha[ISR_RSC_PARAM_SIZE], legacy[ISR_RSC_PARAM_SIZE];

    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        assert_int_equal(isr_rsc_param(v[i].prefetch, v[i].prefetch ? strlen(v[i].prefetch) : 0,
                                       v[i].segment, v[i].segment ? strlen(v[i].segment) : 0,
                                       v[i].tree, v[i].tree ? strlen(v[i].tree) : 0, sha, legacy),
                         0);
        if (v[i].sha)
            assert_string_equal(sha, v[i].sha);
        assert_string_equal(legacy, v[i].legacy);
    }
    /* Non-ASCII or control bytes: the JS hashes UTF-16 units; refused. */
    assert_int_equal(isr_rsc_param(NULL, 0, NULL, 0, "caf\xc3\xa9", 5, sha, legacy), -1);
    assert_int_equal(isr_rsc_param(NULL, 0, "/a\n", 3, NULL, 0, sha, legacy), -1);
}

static void test_err_str(void **state)
{
    for (int i = ISR_OK; i <= ISR_NOMEM; i++)
        assert_string_not_equal(isr_err_str((enum isr_err)i), "unknown");
    assert_string_equal(isr_err_str(ISR_POSTPONED), "postponed");
}

/* ---- gzip copies (isr_entry_encode) ------------------------------------------ */

static void assert_gunzips_to(const struct isr_coded *gz, const void *plain, size_t len)
{
    unsigned char *out = malloc(len + 1);
    z_stream zs = {0};

    assert_non_null(out);
    assert_non_null(gz->data);
    assert_int_equal(inflateInit2(&zs, 15 + 16), Z_OK);
    zs.next_in = (Bytef *)(uintptr_t)gz->data;
    zs.avail_in = (uInt)gz->len;
    zs.next_out = out;
    zs.avail_out = (uInt)len + 1;
    assert_int_equal(inflate(&zs, Z_FINISH), Z_STREAM_END);
    assert_int_equal(zs.total_out, len);
    assert_int_equal(zs.avail_in, 0);
    inflateEnd(&zs);
    assert_memory_equal(out, plain, len);
    free(out);
}

static int failing_encoder(const void *in, size_t len, unsigned char **out, size_t *outlen,
                           void *ud)
{
    (void)in;
    (void)len;
    (void)out;
    (void)outlen;
    ++*(int *)ud;
    return -1;
}

static void test_encode_gzip(void **state)
{
    unsigned coded = 0, small = 0;

    need_fixtures();
    rsc_dir = rsc_dirs[0];
    for (size_t v = 0; v < NVARIANTS; v++) {
        struct isr_entry *e = load_rsc_entry(variants[v]);
        int level = 6, calls = 0;
        size_t mem;

        if (e == NULL)
            continue;
        /* A failing encoder: -1, nothing made, nothing charged. */
        mem = e->mem;
        assert_int_equal(isr_entry_encode(e, failing_encoder, &calls), -1);
        assert_true(calls >= 1);
        assert_null(e->body_gz.data);
        assert_null(e->rsc_gz.data);
        assert_int_equal(e->mem, mem);

        assert_int_equal(isr_entry_encode(e, gzip_encode, &level), 0);
        assert_true(e->body_len >= ISR_COMPRESS_MIN);
        assert_gunzips_to(&e->body_gz, e->body, e->body_len);
        assert_true(e->body_gz.len < e->body_len);
        /* RSC payloads and segments: whatever their size, as Next. */
        assert_gunzips_to(&e->rsc_gz, e->rsc, e->rsc_len);
        for (size_t i = 0; e->segments && i < e->nsegments; i++) {
            const struct isr_segment *sg = &e->segments[i];

            assert_gunzips_to(&sg->gz, sg->data, sg->len);
            coded++;
            small += sg->len < ISR_COMPRESS_MIN;
        }
        assert_true(e->mem > mem + e->body_gz.len);
        /* Once: a second call makes nothing more. */
        mem = e->mem;
        calls = 0;
        assert_int_equal(isr_entry_encode(e, failing_encoder, &calls), 0);
        assert_int_equal(e->mem, mem);
        isr_entry_free(e);
    }
    print_message("gzip copies: %u segments coded, %u of them under %d bytes\n", coded, small,
                  ISR_COMPRESS_MIN);
    assert_true(coded > 0 && small > 0);
    (void)state;
}

static void test_gzip_encode_levels(void **state)
{
    static const char text[] = "<p>cedra</p><p>cedra</p><p>cedra</p><p>cedra</p><p>cedra</p>";
    struct isr_coded c;
    unsigned char *out;
    size_t n;
    int bad[] = {0, 10, -1};

    for (int level = 1; level <= 9; level++) {
        assert_int_equal(gzip_encode(text, sizeof(text) - 1, &out, &n, &level), 0);
        /* RFC 1952: magic, deflate, no flags; Node writes OS 3 (Unix) too. */
        assert_true(n > 18 && out[0] == 0x1f && out[1] == 0x8b && out[2] == 8 && out[3] == 0);
        c.data = out;
        c.len = n;
        assert_gunzips_to(&c, text, sizeof(text) - 1);
        free(out);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(gzip_encode(text, sizeof(text) - 1, &out, &n, &bad[i]), -1);
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_values_parse),
        cmocka_unit_test(test_fixture_tags),
        cmocka_unit_test(test_fixture_not_pages),
        cmocka_unit_test(test_fixture_etags),
        cmocka_unit_test(test_fixture_headers),
        cmocka_unit_test(test_fixture_initial_cache),
        cmocka_unit_test(test_fixture_freshness),
        cmocka_unit_test(test_fixture_revalidated_tag),
        cmocka_unit_test(test_synthetic_ok),
        cmocka_unit_test(test_malformed_json),
        cmocka_unit_test(test_bad_fields),
        cmocka_unit_test(test_bad_value),
        cmocka_unit_test(test_bad_headers),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_nul_body),
        cmocka_unit_test(test_freshness_table),
        cmocka_unit_test(test_tag_time),
        cmocka_unit_test(test_etag_vectors),
        cmocka_unit_test(test_etag_invalid_utf8),
        cmocka_unit_test(test_if_none_match),
        cmocka_unit_test(test_no_cache),
        cmocka_unit_test(test_headers_cache_control),
        cmocka_unit_test(test_headers_conf),
        cmocka_unit_test(test_headers_entry),
        cmocka_unit_test(test_headers_pages),
        cmocka_unit_test(test_fixture_rsc_navigation),
        cmocka_unit_test(test_fixture_rsc_segments),
        cmocka_unit_test(test_rsc_base64),
        cmocka_unit_test(test_rsc_segments_limits),
        cmocka_unit_test(test_rsc_headers),
        cmocka_unit_test(test_rsc_param_vectors),
        cmocka_unit_test(test_err_str),
        cmocka_unit_test(test_encode_gzip),
        cmocka_unit_test(test_gzip_encode_levels),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
