/* spoa/fill.c: edge pages by entry id for HAProxy's cache. Entries are real
 * in-process cache entries (l1.c); the drop hook is the real one. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "fill.h"
#include "fill_key.h"
#include "isr.h"
#include "l1.h"
#include "l1_pages.h"

#define PREFIX "t:"
struct fx {
    struct l1 *l1;
    struct fill *f;
    struct isr_conf isr;
};

static void fx_init(struct fx *fx, size_t max, double grace)
{
    static const char *const prefixes[] = {PREFIX};

    memset(fx, 0, sizeof(*fx));
    fx->l1 = l1_new(64u << 20, 0);
    assert_non_null(fx->l1);
    l1_set_enabled(fx->l1, true);
    assert_int_equal(l1_set_prefixes(fx->l1, prefixes, 1), 0);
    fx->f = fill_new(max, grace);
    assert_non_null(fx->f);
    l1_set_drop_hook(fx->l1, fill_drop_hook, fx->f);
    fx->isr = (struct isr_conf)ISR_CONF_DEFAULT;
}

static void fx_done(struct fx *fx)
{
    fill_free(fx->f);
    l1_free(fx->l1);
}

/* Cached under PREFIX key; the caller's reference. */
static struct l1_ref *put(struct fx *fx, const char *key, int64_t lm)
{
    return l1_pages_put(fx->l1, PREFIX, key, lm);
}

static size_t invalidate(struct fx *fx, const char *key)
{
    return l1_pages_invalidate(fx->l1, PREFIX, key);
}

static struct fill_stats stats(struct fx *fx)
{
    struct fill_stats st;

    fill_get_stats(fx->f, &st);
    return st;
}

static void test_bad_settings(void **state)
{
    (void)state;
    assert_null(fill_new(0, 5));
    assert_null(fill_new(10, -1));
    assert_null(fill_new((1u << 24) + 1, 5));
}

/* An offered entry fills under its id, with the settings it was offered
 * with; an id never offered does not. */
static void test_offer_and_fill(void **state)
{
    struct fx fx;
    struct l1_ref *r, *g;
    struct isr_conf isr;
    struct fill_stats st;
    uint64_t id;
    bool grace = true;

    (void)state;
    fx_init(&fx, 16, 60);
    r = put(&fx, "/fr/a", 1000);
    id = l1_ref_id(r);
    fx.isr.expire = 1234;
    assert_true(fill_offer(fx.f, r, &fx.isr));
    assert_true(fill_offer(fx.f, r, &fx.isr)); /* again: one entry */
    g = fill_get(fx.f, l1_ref_id(r), &isr, &grace);
    assert_non_null(g);
    assert_ptr_equal(l1_ref_entry(g), l1_ref_entry(r));
    assert_false(grace);
    assert_int_equal(isr.expire, 1234);
    l1_release(g);
    assert_null(fill_get(fx.f, l1_ref_id(r) + 1, &isr, &grace));
    st = stats(&fx);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.offered, 1);
    assert_int_equal(st.fills, 1);
    assert_int_equal(st.unknown_fills, 1);
    l1_release(r);
    /* The table's own reference keeps the entry: still filled. */
    g = fill_get(fx.f, id, &isr, &grace);
    assert_non_null(g);
    l1_release(g);
    fx_done(&fx);
}

/* A new version of a page is a new id; the old one fills during the grace
 * period only, and an entry dropped before its offer is never offered. */
static void test_drop_grace_and_late_offer(void **state)
{
    struct fx fx;
    struct l1_ref *r1, *r2, *g;
    struct isr_conf isr;
    struct fill_stats st;
    uint64_t id1;
    bool grace = false;

    (void)state;
    fx_init(&fx, 16, 60);
    r1 = put(&fx, "/fr/a", 1000);
    id1 = l1_ref_id(r1);
    assert_true(fill_offer(fx.f, r1, &fx.isr));
    r2 = put(&fx, "/fr/a", 2000); /* replaces r1: the hook runs */
    assert_int_not_equal(l1_ref_id(r2), id1);
    st = stats(&fx);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.grace_entries, 1);
    g = fill_get(fx.f, id1, &isr, &grace);
    assert_non_null(g);
    assert_true(grace);
    assert_ptr_equal(l1_ref_entry(g), l1_ref_entry(r1));
    l1_release(g);
    /* r1 is no longer in the cache: a worker still holding it may answer
     * with its id while it fills (grace), but a dropped entry that was
     * never offered is refused. */
    assert_true(fill_offer(fx.f, r1, &fx.isr));
    assert_int_equal(invalidate(&fx, "/fr/a"), 1); /* r2 leaves, never offered */
    assert_false(fill_offer(fx.f, r2, &fx.isr));
    assert_null(fill_get(fx.f, l1_ref_id(r2), &isr, &grace));
    st = stats(&fx);
    assert_int_equal(st.refused, 1);
    assert_int_equal(st.grace_fills, 1);
    l1_release(r1);
    l1_release(r2);
    fx_done(&fx);
}

/* Grace 0: a dropped entry is forgotten at the next call, its reference
 * released (ASan/valgrind see a leak otherwise). */
static void test_grace_over(void **state)
{
    struct fx fx;
    struct l1_ref *r;
    struct isr_conf isr;
    uint64_t id;
    bool grace;

    (void)state;
    fx_init(&fx, 16, 0);
    r = put(&fx, "/fr/a", 1000);
    id = l1_ref_id(r);
    assert_true(fill_offer(fx.f, r, &fx.isr));
    l1_release(r);
    assert_int_equal(invalidate(&fx, "/fr/a"), 1);
    assert_null(fill_get(fx.f, id, &isr, &grace));
    assert_int_equal(stats(&fx).grace_entries, 0);
    assert_int_equal(stats(&fx).entries, 0);
    fx_done(&fx);
}

/* Full: refused (the worker answers another way); room again once an
 * entry leaves. Dropped entries waiting out their grace are bounded too. */
static void test_bounded(void **state)
{
    struct fx fx;
    struct l1_ref *r[4];
    char key[32];

    (void)state;
    fx_init(&fx, 2, 60);
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof(key), "/fr/%d", i);
        r[i] = put(&fx, key, 1000 + i);
    }
    assert_true(fill_offer(fx.f, r[0], &fx.isr));
    assert_true(fill_offer(fx.f, r[1], &fx.isr));
    assert_false(fill_offer(fx.f, r[2], &fx.isr));
    assert_int_equal(stats(&fx).refused, 1);
    assert_int_equal(invalidate(&fx, "/fr/0"), 1);
    assert_true(fill_offer(fx.f, r[2], &fx.isr));
    assert_int_equal(invalidate(&fx, "/fr/1"), 1);
    assert_int_equal(invalidate(&fx, "/fr/2"), 1);
    assert_true(stats(&fx).grace_entries <= 2);
    assert_true(fill_offer(fx.f, r[3], &fx.isr));
    assert_int_equal(stats(&fx).entries, 1);
    for (int i = 0; i < 4; i++)
        l1_release(r[i]);
    fx_done(&fx);
}

/* A reference l1_put() did not cache has no id and is never offered. */
static void test_detached_refused(void **state)
{
    struct fx fx;
    enum l1_put_result res;
    struct l1_ref *r;

    (void)state;
    fx_init(&fx, 4, 60);
    r = l1_put(fx.l1, "u:/x", 4, 2, l1_pages_entry(1000), 0, l1_epoch(fx.l1), &res);
    assert_non_null(r);
    assert_int_equal(res, L1_PUT_UNTRACKED);
    assert_false(fill_offer(fx.f, r, &fx.isr));
    l1_release(r);
    fx_done(&fx);
}

/* Workers offer and drop while fills run: no lost or doubled reference
 * (ASan, TSan and valgrind runs check it). */
struct race {
    struct fx *fx;
    int n;
};

static void *offerer(void *arg)
{
    struct race *rc = arg;
    char key[32];

    for (int i = 0; i < rc->n; i++) {
        struct l1_ref *r;

        enum l1_put_result res;
        int n = snprintf(key, sizeof(key), PREFIX "/fr/%d", i % 7);

        /* No cmocka assertion off the main thread: the other offerer may
         * hold a later version (L1_PUT_OLDER), which is fine. */
        r = l1_put(rc->fx->l1, key, (size_t)n, strlen(PREFIX), l1_pages_entry(1000 + i), 0,
                   l1_epoch(rc->fx->l1), &res);
        if (!r)
            continue;
        fill_offer(rc->fx->f, r, &rc->fx->isr);
        l1_release(r);
    }
    return NULL;
}

static void *filler(void *arg)
{
    struct race *rc = arg;
    struct isr_conf isr;
    bool grace;

    for (int i = 0; i < rc->n * 4; i++) {
        struct l1_ref *g = fill_get(rc->fx->f, (uint64_t)(i % 64) + 1, &isr, &grace);

        if (g)
            l1_release(g);
    }
    return NULL;
}

static void test_threads(void **state)
{
    struct fx fx;
    struct race rc;
    pthread_t t[3];

    (void)state;
    fx_init(&fx, 8, 0.001);
    rc.fx = &fx;
    rc.n = 2000;
    assert_int_equal(pthread_create(&t[0], NULL, offerer, &rc), 0);
    assert_int_equal(pthread_create(&t[1], NULL, offerer, &rc), 0);
    assert_int_equal(pthread_create(&t[2], NULL, filler, &rc), 0);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    assert_true(stats(&fx).entries <= 8);
    fx_done(&fx);
}

/* ---- keys (fill_key.c) ------------------------------------------------------- */

static void test_key_round_trip(void **state)
{
    char out[FILL_KEY_MAX], seg[ISR_MAX_SEGMENT_PATH], big[ISR_MAX_SEGMENT_PATH];
    struct fill_key k, back;
    static const struct {
        enum isr_variant v;
        const char *segment;
        bool gzip;
        const char *want;
    } cases[] = {
        {ISR_HTML, NULL, false, "4000000000000abc-1f"},
        {ISR_HTML, NULL, true, "4000000000000abc-1f.gz"},
        {ISR_RSC, NULL, false, "4000000000000abc-1f.rsc"},
        {ISR_RSC, NULL, true, "4000000000000abc-1f.rsc.gz"},
        {ISR_SEGMENT, "/_tree", false, "4000000000000abc-1f.seg2f5f74726565"},
        {ISR_SEGMENT, "/[locale]/x.gz", true,
         "4000000000000abc-1f.seg2f5b6c6f63616c655d2f782e677a.gz"},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        k = (struct fill_key){.id = 0x4000000000000abcULL,
                              .gen = 0x1f,
                              .variant = cases[i].v,
                              .segment = cases[i].segment,
                              .segment_len = cases[i].segment ? strlen(cases[i].segment) : 0,
                              .gzip = cases[i].gzip};
        assert_int_equal(fill_key_format(&k, out, sizeof(out)), (int)strlen(cases[i].want));
        assert_string_equal(out, cases[i].want);
        assert_int_equal(fill_key_parse(out, &back, seg), 0);
        assert_true(back.id == k.id && back.gen == k.gen && back.variant == k.variant &&
                    back.gzip == k.gzip && back.segment_len == k.segment_len);
        if (k.segment)
            assert_memory_equal(back.segment, k.segment, k.segment_len);
    }
    /* The longest segment fits FILL_KEY_MAX; one byte more is no key. */
    memset(big, 0xff, sizeof(big));
    k = (struct fill_key){.id = UINT64_MAX,
                          .gen = UINT64_MAX,
                          .variant = ISR_SEGMENT,
                          .segment = big,
                          .segment_len = sizeof(big),
                          .gzip = true};
    assert_int_equal(fill_key_format(&k, out, sizeof(out)), FILL_KEY_MAX - 1);
    assert_int_equal(fill_key_parse(out, &back, seg), 0);
    assert_int_equal(back.segment_len, sizeof(big));
    k.segment_len++;
    assert_int_equal(fill_key_format(&k, out, sizeof(out)), -1);
    k.segment_len = 0;
    assert_int_equal(fill_key_format(&k, out, sizeof(out)), -1);
    /* Too small a buffer. */
    k = (struct fill_key){.id = 1, .gen = 1};
    assert_int_equal(fill_key_format(&k, out, 18), -1);
}

static void test_key_malformed(void **state)
{
    static const char *const bad[] = {
        "",
        "xyz",
        "0123456789abcdef",
        "0123456789abcdef-",
        "0123456789abcde-1",
        "0123456789abcdef0-1",
        "0123456789ABCDEF-1",
        "0123456789abcdef-01",
        "0123456789abcdef-11111111111111111",
        "0123456789abcdef-1.gzip",
        "0123456789abcdef-1.gz.gz",
        "0123456789abcdef-1.seg",
        "0123456789abcdef-1.seg4",
        "0123456789abcdef-1.seg2f.rsc",
        "0123456789abcdef-1.rsc.x",
        "0123456789abcdef-1.rsc.seg2f",
        "0123456789abcdef-1/../x",
        "0123456789abcdef-1 ",
        "+123456789abcdef-1",
    };
    char seg[ISR_MAX_SEGMENT_PATH];
    struct fill_key k;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (fill_key_parse(bad[i], &k, seg) != -1)
            fail_msg("parsed: \"%s\"", bad[i]);
    assert_int_equal(fill_key_parse("0000000000000000-0", &k, seg), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_settings),
        cmocka_unit_test(test_offer_and_fill),
        cmocka_unit_test(test_drop_grace_and_late_offer),
        cmocka_unit_test(test_grace_over),
        cmocka_unit_test(test_bounded),
        cmocka_unit_test(test_detached_refused),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_key_round_trip),
        cmocka_unit_test(test_key_malformed),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
