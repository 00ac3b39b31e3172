/* Unit tests of the L1 page cache (spoa/l1.c): get/put/replace, the byte
 * budget and S3-FIFO eviction, references outliving eviction, invalidation by
 * key, tag, prefix, revalidated tags and flush, the epoch rule that refuses a
 * value read before an invalidation, and four threads hammering it all for a
 * bounded time (run under ASan+UBSan, and once under TSan). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "isr.h"
#include "l1.h"
#include "log.h"
#include "util.h"

#define LIFESPAN                                                                                   \
    "{\"expireAge\":15,\"expireAt\":1795479821,\"lastModifiedAt\":1795479806,"                     \
    "\"revalidate\":10,\"staleAge\":10,\"staleAt\":1795479816}"

/* A servable APP_PAGE value: lastModified lm, tags (a JSON array), an html
 * body of body_len bytes. */
static char *value_json(int64_t lm, const char *tags, size_t body_len, size_t *len)
{
    size_t n = body_len + strlen(tags) + 512;
    char *s = malloc(n), *html = malloc(body_len + 1);
    int k;

    assert_non_null(s);
    assert_non_null(html);
    memset(html, 'a', body_len);
    html[body_len] = '\0';
    if (body_len)
        html[0] = '<';
    k = snprintf(s, n,
                 "{\"lastModified\":%lld,\"lifespan\":" LIFESPAN ",\"tags\":%s,\"value\":"
                 "{\"kind\":\"APP_PAGE\",\"html\":\"%s\",\"rscData\":\"eA==\","
                 "\"headers\":{\"x-nextjs-stale-time\":\"300\"}}}",
                 (long long)lm, tags, html);
    free(html);
    assert_true(k > 0 && (size_t)k < n);
    *len = (size_t)k;
    return s;
}

static struct isr_entry *entry_sized(int64_t lm, const char *tags, size_t body_len, size_t *vlen)
{
    size_t len;
    char *s = value_json(lm, tags, body_len, &len);
    struct isr_entry *e = NULL;

    assert_int_equal(isr_entry_parse(s, len, NULL, &e), ISR_OK);
    free(s);
    if (vlen)
        *vlen = len;
    return e;
}

static struct isr_entry *entry(int64_t lm, const char *tags)
{
    return entry_sized(lm, tags, 16, NULL);
}

static const char *const pq[] = {"p:", "q:"};

static struct l1 *cache(size_t max, unsigned shards)
{
    struct l1 *l1 = l1_new(max, shards);

    assert_non_null(l1);
    assert_int_equal(l1_set_prefixes(l1, pq, 2), 0);
    l1_set_enabled(l1, true);
    return l1;
}

/* Puts and expects res; returns nothing (the reference is released). */
static void put_expect(struct l1 *l1, const char *key, struct isr_entry *e, uint64_t epoch,
                       enum l1_put_result want)
{
    enum l1_put_result res;
    struct l1_ref *r = l1_put(l1, key, strlen(key), 2, e, 0, epoch, &res);

    assert_non_null(r);
    if (res != want)
        fail_msg("put %s: %s, wanted %s", key, l1_put_result_str(res), l1_put_result_str(want));
    assert_ptr_equal(l1_ref_entry(r), e);
    assert_int_equal(l1_ref_cached(r), want == L1_PUT_OK);
    l1_release(r);
}

static void put_ok(struct l1 *l1, const char *key, struct isr_entry *e)
{
    put_expect(l1, key, e, l1_epoch(l1), L1_PUT_OK);
}

static bool present(struct l1 *l1, const char *key)
{
    struct l1_ref *r = l1_get(l1, key, strlen(key));

    l1_release(r);
    return r != NULL;
}

/* ---- basics -------------------------------------------------------------------------- */

static void test_disabled_by_default(void **state)
{
    struct l1 *l1 = l1_new(1u << 20, 4);
    struct l1_stats st;

    assert_non_null(l1);
    assert_false(l1_enabled(l1));
    assert_null(l1_get(l1, "p:/a", 4));
    /* Refused, but the caller still gets its entry to answer from. */
    put_expect(l1, "p:/a", entry(1000, "[]"), l1_epoch(l1), L1_PUT_DISABLED);
    /* Enabled without prefixes: nothing is tracked. */
    l1_set_enabled(l1, true);
    put_expect(l1, "p:/a", entry(1000, "[]"), l1_epoch(l1), L1_PUT_UNTRACKED);
    l1_get_stats(l1, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.refused[L1_PUT_DISABLED], 1);
    assert_int_equal(st.refused[L1_PUT_UNTRACKED], 1);
    assert_int_equal(st.bypassed, 1);
    assert_null(l1_new(1000, 1)); /* below one shard's minimum */
    l1_free(l1);
}

static void test_get_put_replace(void **state)
{
    struct l1 *l1 = cache(1u << 20, 4);
    struct isr_entry *e1 = entry(1000, "[\"t1\"]"), *e2 = entry(2000, "[\"t2\"]");
    struct l1_ref *r1, *r2;
    struct l1_stats st;
    size_t klen, plen;

    assert_null(l1_get(l1, "p:/a", 4));
    put_ok(l1, "p:/a", e1);
    r1 = l1_get(l1, "p:/a", 4);
    assert_non_null(r1);
    assert_ptr_equal(l1_ref_entry(r1), e1);
    assert_string_equal(l1_ref_key(r1, &klen, &plen), "p:/a");
    assert_int_equal(klen, 4);
    assert_int_equal(plen, 2);
    assert_true(l1_ref_cached(r1));
    /* A later value replaces it; the old one lives on for whoever holds it. */
    put_ok(l1, "p:/a", e2);
    r2 = l1_get(l1, "p:/a", 4);
    assert_ptr_equal(l1_ref_entry(r2), e2);
    assert_int_equal(l1_ref_entry(r1)->last_modified, 1000);
    assert_string_equal(l1_ref_entry(r1)->tags[0], "t1");
    l1_release(r1);
    /* An older value does not replace a newer one. */
    put_expect(l1, "p:/a", entry(1500, "[]"), l1_epoch(l1), L1_PUT_OLDER);
    assert_ptr_equal(l1_ref_entry(r2), e2);
    l1_release(r2);
    /* Bad arguments. */
    put_expect(l1, "p:", entry(1, "[]"), l1_epoch(l1), L1_PUT_INVALID);
    put_expect(l1, "x:/a", entry(1, "[]"), l1_epoch(l1), L1_PUT_UNTRACKED);
    assert_null(l1_put(l1, "p:/b", 4, 2, NULL, 0, l1_epoch(l1), NULL));
    l1_get_stats(l1, &st);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.puts, 2);
    assert_int_equal(st.replaced, 1);
    assert_int_equal(st.hits, 2);
    assert_int_equal(st.misses, 1);
    l1_free(l1);
}

/* ---- budget and eviction ------------------------------------------------------------------ */

static void test_byte_bound(void **state)
{
    size_t max = 2u << 20;
    struct l1 *l1 = cache(max, 4);
    struct l1_stats st;
    char key[64];

    for (int i = 0; i < 600; i++) {
        size_t vlen;
        struct isr_entry *e = entry_sized(1000, "[\"t\"]", 1000 + (size_t)(i % 7) * 3000, &vlen);
        enum l1_put_result res;
        struct l1_ref *r;

        snprintf(key, sizeof(key), "%s/page/%d", i % 2 ? "p:" : "q:", i);
        r = l1_put(l1, key, strlen(key), 2, e, vlen, l1_epoch(l1), &res);
        assert_int_equal(res, L1_PUT_OK);
        l1_release(r);
        l1_get_stats(l1, &st);
        assert_true(st.bytes <= max);
    }
    l1_get_stats(l1, &st);
    assert_true(st.evictions > 0);
    assert_true(st.entries > 20);
    assert_int_equal(st.entries + st.evictions, 600);
    /* Each entry is charged at least its value and the parsed entry's fixed part. */
    assert_true(st.bytes >= st.entries * 9728);
    l1_free(l1);
}

static void test_too_big(void **state)
{
    struct l1 *l1 = cache(1u << 20, 4); /* 256 KiB shards: 64 KiB per entry at most */
    size_t vlen;
    struct isr_entry *e = entry_sized(1, "[]", 70000, &vlen);
    enum l1_put_result res;
    struct l1_ref *r = l1_put(l1, "p:/big", 6, 2, e, vlen, l1_epoch(l1), &res);

    assert_int_equal(res, L1_PUT_TOO_BIG);
    assert_int_equal(l1_ref_entry(r)->body_len, 70000);
    l1_release(r);
    assert_false(present(l1, "p:/big"));
    l1_free(l1);
}

/* S3-FIFO: pages read again survive a scan of pages read once. */
static void test_scan_resistance(void **state)
{
    struct l1 *l1 = cache(1u << 20, 1);
    char key[64];
    struct l1_stats st;

    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof(key), "p:/hot/%d", i);
        put_ok(l1, key, entry_sized(1, "[]", 20000, NULL));
        assert_true(present(l1, key));
    }
    for (int i = 0; i < 400; i++) {
        snprintf(key, sizeof(key), "p:/scan/%d", i);
        put_ok(l1, key, entry_sized(1, "[]", 20000, NULL));
        if (i % 50 == 0)
            for (int j = 0; j < 5; j++) { /* the hot set keeps being read */
                snprintf(key, sizeof(key), "p:/hot/%d", j);
                assert_true(present(l1, key));
            }
    }
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof(key), "p:/hot/%d", i);
        assert_true(present(l1, key));
    }
    l1_get_stats(l1, &st);
    assert_true(st.evictions >= 300);
    l1_free(l1);
}

/* ---- references ---------------------------------------------------------------------------- */

static void test_ref_outlives_eviction(void **state)
{
    struct l1 *l1 = cache(1u << 20, 1);
    struct l1_ref *r, *held;
    char key[64];

    put_ok(l1, "p:/kept", entry_sized(1, "[\"x\"]", 5000, NULL));
    r = l1_get(l1, "p:/kept", 7);
    assert_non_null(r);
    held = l1_ref_hold(r);
    assert_ptr_equal(held, r);
    /* Evicted by churn... */
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "p:/churn/%d", i);
        put_ok(l1, key, entry_sized(1, "[]", 20000, NULL));
        assert_true(present(l1, key)); /* read too: they compete in the main queue */
    }
    assert_false(present(l1, "p:/kept"));
    /* ...yet readable by whoever holds it (ASan would see a use after free). */
    assert_int_equal(l1_ref_entry(r)->body_len, 5000);
    assert_string_equal(l1_ref_entry(r)->tags[0], "x");
    l1_release(r);
    assert_int_equal(l1_ref_entry(held)->body[0], '<');
    l1_release(held);

    /* Same after an invalidation and a flush. */
    put_ok(l1, "p:/inv", entry(1, "[\"y\"]"));
    r = l1_get(l1, "p:/inv", 6);
    assert_int_equal(l1_invalidate_key(l1, "p:/inv", 6), 1);
    l1_flush(l1);
    assert_string_equal(l1_ref_entry(r)->tags[0], "y");
    l1_release(r);
    l1_free(l1);
}

static void test_ref_outlives_cache(void **state)
{
    struct l1 *l1 = cache(1u << 20, 2);
    struct l1_ref *r;

    put_ok(l1, "p:/a", entry(7, "[]"));
    r = l1_get(l1, "p:/a", 4);
    l1_free(l1);
    assert_int_equal(l1_ref_entry(r)->last_modified, 7);
    l1_release(r);
}

/* ---- invalidation ---------------------------------------------------------------------------- */

static void test_invalidate(void **state)
{
    struct l1 *l1 = cache(4u << 20, 4);
    struct l1_stats st;

    put_ok(l1, "p:/a", entry(1, "[\"red\",\"blue\"]"));
    put_ok(l1, "p:/b", entry(1, "[\"blue\"]"));
    put_ok(l1, "p:/c", entry(1, "[\"green\"]"));
    put_ok(l1, "q:/a", entry(1, "[\"blue\"]"));
    put_ok(l1, "q:/b", entry(1, "[\"green\"]"));
    put_ok(l1, "q:/c", entry(1, "[]"));

    assert_int_equal(l1_invalidate_key(l1, "p:/c", 4), 1);
    assert_int_equal(l1_invalidate_key(l1, "p:/c", 4), 0);
    assert_false(present(l1, "p:/c"));
    assert_true(present(l1, "q:/c"));

    /* A tag within one pool, then in every pool. */
    assert_int_equal(l1_invalidate_tag(l1, "p:", "blue"), 2);
    assert_false(present(l1, "p:/a"));
    assert_false(present(l1, "p:/b"));
    assert_true(present(l1, "q:/a"));
    assert_int_equal(l1_invalidate_tag(l1, NULL, "green"), 1);
    assert_false(present(l1, "q:/b"));

    assert_int_equal(l1_invalidate_prefix(l1, "q:", 2), 2);
    l1_get_stats(l1, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.invalidations, 6);

    put_ok(l1, "p:/a", entry(1, "[]"));
    put_ok(l1, "q:/a", entry(1, "[]"));
    assert_int_equal(l1_flush(l1), 2);
    l1_get_stats(l1, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.flushes, 1);
    l1_free(l1);
}

/* The handler's rule: a tag time later than lastModified is a miss. */
static void test_invalidate_revalidated(void **state)
{
    struct l1 *l1 = cache(4u << 20, 4);
    const char *tags[] = {"_N_T_/b", "_N_T_/c", "_N_T_/unrelated"};
    size_t lens[] = {7, 7, 15};
    int64_t times[] = {1500, ISR_TAG_NONE, 999999};

    put_ok(l1, "p:/1", entry(1000, "[\"_N_T_/a\",\"_N_T_/b\"]"));
    put_ok(l1, "p:/2", entry(2000, "[\"_N_T_/b\"]"));
    put_ok(l1, "p:/3", entry(3000, "[\"_N_T_/c\"]"));
    put_ok(l1, "q:/1", entry(1000, "[\"_N_T_/b\"]")); /* another pool */
    assert_int_equal(l1_invalidate_revalidated(l1, "p:", 3, tags, lens, times), 1);
    assert_false(present(l1, "p:/1"));
    assert_true(present(l1, "p:/2"));
    assert_true(present(l1, "p:/3"));
    assert_true(present(l1, "q:/1"));
    times[0] = 2000; /* equal: not later, still served (handler: >) */
    assert_int_equal(l1_invalidate_revalidated(l1, "p:", 3, tags, lens, times), 0);
    times[0] = 2001;
    times[1] = 3001;
    assert_int_equal(l1_invalidate_revalidated(l1, "p:", 3, tags, lens, times), 2);
    assert_true(present(l1, "q:/1"));
    assert_int_equal(l1_invalidate_revalidated(l1, "q:", 0, NULL, NULL, NULL), 0);
    l1_free(l1);
}

/* ---- epochs ------------------------------------------------------------------------------------
 */

/* A value read from Valkey before an invalidation is refused after it. */
static void test_epoch_race(void **state)
{
    struct l1 *l1 = cache(4u << 20, 4);
    uint64_t e0;
    int ok;
    char key[32];

    /* Key: read (epoch e0), invalidated, then put: refused. */
    e0 = l1_epoch(l1);
    l1_invalidate_key(l1, "p:/a", 4);
    put_expect(l1, "p:/a", entry(1, "[]"), e0, L1_PUT_STALE);
    assert_false(present(l1, "p:/a"));
    /* Other keys are not concerned (marks are hashed: allow a collision). */
    e0 = l1_epoch(l1);
    l1_invalidate_key(l1, "p:/zzz", 6);
    ok = 0;
    for (int i = 0; i < 4; i++) {
        enum l1_put_result res;
        struct l1_ref *r;

        snprintf(key, sizeof(key), "p:/other%d", i);
        r = l1_put(l1, key, strlen(key), 2, entry(1, "[]"), 0, e0, &res);
        ok += res == L1_PUT_OK;
        l1_release(r);
    }
    assert_true(ok >= 3);
    /* A read that started after the invalidation goes in. */
    put_ok(l1, "p:/a", entry(1, "[]"));

    /* Tag. */
    e0 = l1_epoch(l1);
    l1_invalidate_tag(l1, NULL, "sale");
    put_expect(l1, "p:/t", entry(1, "[\"x\",\"sale\"]"), e0, L1_PUT_STALE);
    put_ok(l1, "p:/t", entry(1, "[\"x\",\"sale\"]"));

    /* Flush, prefix, revalidated tags: every pending read is refused. */
    e0 = l1_epoch(l1);
    l1_flush(l1);
    put_expect(l1, "q:/f", entry(1, "[]"), e0, L1_PUT_STALE);
    e0 = l1_epoch(l1);
    l1_invalidate_prefix(l1, "q:", 2);
    put_expect(l1, "p:/f", entry(1, "[]"), e0, L1_PUT_STALE);
    e0 = l1_epoch(l1);
    l1_invalidate_revalidated(l1, "p:", 0, NULL, NULL, NULL);
    put_expect(l1, "p:/f", entry(1, "[]"), e0, L1_PUT_STALE);

    /* Tracking down then up: reads from before are refused. */
    e0 = l1_epoch(l1);
    l1_set_enabled(l1, false);
    put_expect(l1, "p:/d", entry(1, "[]"), l1_epoch(l1), L1_PUT_DISABLED);
    l1_set_enabled(l1, true);
    put_expect(l1, "p:/d", entry(1, "[]"), e0, L1_PUT_STALE);
    put_ok(l1, "p:/d", entry(1, "[]"));

    /* A prefix that joins the tracked set was not tracked when e0 was read. */
    {
        const char *pqr[] = {"p:", "q:", "r:"};

        e0 = l1_epoch(l1);
        assert_int_equal(l1_set_prefixes(l1, pqr, 3), 0);
        put_expect(l1, "r:/x", entry(1, "[]"), e0, L1_PUT_STALE);
        put_ok(l1, "r:/x", entry(1, "[]"));
        assert_true(present(l1, "p:/d")); /* kept prefixes keep their entries */
    }
    l1_free(l1);
}

static void test_suspend(void **state)
{
    struct l1 *l1 = cache(4u << 20, 4);
    uint64_t e0;
    struct l1_stats st;

    put_ok(l1, "p:/a", entry(1, "[]"));
    put_ok(l1, "q:/a", entry(1, "[]"));
    e0 = l1_epoch(l1);
    l1_suspend_prefix(l1, "p:");
    l1_suspend_prefix(l1, "p:");
    assert_false(present(l1, "p:/a"));
    assert_true(present(l1, "q:/a"));
    put_expect(l1, "p:/b", entry(1, "[]"), e0, L1_PUT_STALE);
    l1_resume_prefix(l1, "p:");
    assert_false(present(l1, "p:/a")); /* counted: still one suspension */
    l1_resume_prefix(l1, "p:");
    l1_resume_prefix(l1, "p:");   /* extra resume: no-op */
    l1_suspend_prefix(l1, "zz:"); /* unknown: no-op */
    assert_true(present(l1, "p:/a"));
    l1_get_stats(l1, &st);
    assert_int_equal(st.bypassed, 2);
    /* Disabling clears suspensions. */
    l1_suspend_prefix(l1, "q:");
    l1_set_enabled(l1, false);
    l1_set_enabled(l1, true);
    put_ok(l1, "q:/a", entry(1, "[]"));
    assert_true(present(l1, "q:/a"));
    l1_free(l1);
}

static void test_set_prefixes(void **state)
{
    struct l1 *l1 = cache(4u << 20, 4);
    const char *only_p[] = {"p:"};
    const char *bad[] = {""};

    put_ok(l1, "p:/a", entry(1, "[]"));
    put_ok(l1, "q:/a", entry(1, "[]"));
    assert_int_equal(l1_set_prefixes(l1, only_p, 1), 0);
    assert_true(present(l1, "p:/a"));
    assert_false(present(l1, "q:/a")); /* no longer tracked: dropped */
    put_expect(l1, "q:/a", entry(1, "[]"), l1_epoch(l1), L1_PUT_UNTRACKED);
    assert_int_equal(l1_set_prefixes(l1, bad, 1), -1);
    assert_true(present(l1, "p:/a"));
    assert_int_equal(l1_set_prefixes(l1, NULL, 0), 0);
    assert_false(present(l1, "p:/a"));
    l1_free(l1);
}

/* ---- iteration
 * ------------------------------------------------------------------------------------ */

struct iter_acc {
    size_t n, bytes;
    int stop_after;
};

static int count_cb(const struct l1_info *info, const struct isr_entry *e, void *ud)
{
    struct iter_acc *a = ud;

    assert_int_equal(strlen(info->key), info->keylen);
    assert_true(info->age >= 0);
    assert_non_null(e);
    a->n++;
    a->bytes += info->bytes;
    return a->stop_after && (int)a->n >= a->stop_after;
}

static void test_foreach(void **state)
{
    struct l1 *l1 = cache(4u << 20, 4);
    struct iter_acc a = {0};
    struct l1_stats st;
    char key[32];

    for (int i = 0; i < 30; i++) {
        snprintf(key, sizeof(key), "%s/%d", i < 10 ? "p:" : "q:", i);
        put_ok(l1, key, entry(1, "[]"));
    }
    assert_int_equal(l1_foreach(l1, NULL, 0, count_cb, &a), 30);
    l1_get_stats(l1, &st);
    assert_int_equal(a.bytes, st.bytes);
    memset(&a, 0, sizeof(a));
    assert_int_equal(l1_foreach(l1, "p:", 2, count_cb, &a), 10);
    memset(&a, 0, sizeof(a));
    a.stop_after = 3;
    assert_int_equal(l1_foreach(l1, "q:", 2, count_cb, &a), 3);
    l1_free(l1);
}

/* ---- threads
 * ----------------------------------------------------------------------------------------- */

#define NTHREADS 4
#define HAMMER_SECONDS 1.5
#define NKEYS 64

static const char *const tagsets[] = {"[]", "[\"a\"]", "[\"a\",\"b\"]", "[\"c\"]"};
static char *hvalues[8];
static size_t hvlens[8];

struct hammer {
    struct l1 *l1;
    unsigned id;
    double deadline;
    uint64_t rng;
    uint64_t gets, hits, puts_ok, ops;
    unsigned errors; /* cmocka asserts must stay on the main thread */
};

static int sum_cb(const struct l1_info *info, const struct isr_entry *e, void *ud)
{
    struct iter_acc *a = ud;

    a->n++;
    a->bytes += info->bytes + (e->body_len > 0 ? 0 : 1);
    return 0;
}

static uint64_t rnd(struct hammer *h)
{
    h->rng ^= h->rng << 13;
    h->rng ^= h->rng >> 7;
    h->rng ^= h->rng << 17;
    return h->rng;
}

static void *hammer_main(void *arg)
{
    struct hammer *h = arg;
    char key[64];
    volatile char sink = 0;

    while (now_mono() < h->deadline) {
        unsigned op = (unsigned)(rnd(h) % 1000), k = (unsigned)(rnd(h) % NKEYS);
        size_t klen = (size_t)snprintf(key, sizeof(key), "%s/k/%u", k % 2 ? "p:" : "q:", k);

        h->ops++;
        if (op < 600) {
            struct l1_ref *r = l1_get(h->l1, key, klen);

            h->gets++;
            if (r) {
                const struct isr_entry *e = l1_ref_entry(r);

                h->hits++;
                /* Touch the whole entry while others evict and invalidate it. */
                sink ^= e->body[e->body_len - 1];
                for (size_t i = 0; i < e->ntags; i++)
                    sink ^= e->tags[i][0];
                l1_release(r);
            }
        } else if (op < 900) {
            uint64_t epoch = l1_epoch(h->l1);
            unsigned v = (unsigned)(rnd(h) % 8);
            struct isr_entry *e = NULL;
            enum l1_put_result res;
            struct l1_ref *r;

            if (isr_entry_parse(hvalues[v], hvlens[v], NULL, &e) != ISR_OK) {
                h->errors++;
                continue;
            }
            r = l1_put(h->l1, key, klen, 2, e, hvlens[v], epoch, &res);
            if (!r) {
                h->errors++;
                isr_entry_free(e);
                continue;
            }
            h->puts_ok += res == L1_PUT_OK;
            sink ^= l1_ref_entry(r)->body[0];
            l1_release(r);
        } else if (op < 960) {
            l1_invalidate_key(h->l1, key, klen);
        } else if (op < 975) {
            l1_invalidate_tag(h->l1, op % 2 ? "p:" : NULL, op % 3 ? "a" : "c");
        } else if (op < 978) {
            l1_invalidate_prefix(h->l1, op % 2 ? "p:" : "q:", 2);
        } else if (op < 979) {
            l1_flush(h->l1);
        } else if (op < 989) {
            l1_suspend_prefix(h->l1, "p:");
            l1_resume_prefix(h->l1, "p:");
        } else if (op < 990) {
            l1_set_enabled(h->l1, false);
            l1_set_enabled(h->l1, true);
        } else if (op < 995) {
            struct l1_stats st;

            l1_get_stats(h->l1, &st);
            h->errors += st.bytes > st.max_bytes;
        } else {
            struct iter_acc a = {0};

            l1_foreach(h->l1, "q:", 2, sum_cb, &a);
        }
    }
    (void)sink;
    return NULL;
}

static void test_threads(void **state)
{
    struct l1 *l1 = cache(4 * L1_MIN_SHARD_BYTES, 4); /* small: eviction all the time */
    struct hammer hs[NTHREADS];
    pthread_t th[NTHREADS];
    struct l1_stats st;
    struct iter_acc a = {0};
    uint64_t gets = 0, hits = 0, puts = 0, ops = 0;
    double deadline = now_mono() + HAMMER_SECONDS;

    for (int i = 0; i < 8; i++)
        hvalues[i] = value_json(1000 + i, tagsets[i % 4], 200 + (size_t)i * 300, &hvlens[i]);
    for (unsigned i = 0; i < NTHREADS; i++) {
        hs[i] = (struct hammer){.l1 = l1, .id = i, .deadline = deadline, .rng = 0x9e37 + i * 7919};
        assert_int_equal(pthread_create(&th[i], NULL, hammer_main, &hs[i]), 0);
    }
    for (unsigned i = 0; i < NTHREADS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        gets += hs[i].gets;
        hits += hs[i].hits;
        puts += hs[i].puts_ok;
        ops += hs[i].ops;
        assert_int_equal(hs[i].errors, 0);
    }
    l1_get_stats(l1, &st);
    print_message("      %llu ops in %.1fs by %d threads: %llu gets (%llu hits, %llu bypassed), "
                  "%llu puts, %llu evictions, %llu invalidations, %llu entries, %llu bytes\n",
                  (unsigned long long)ops, HAMMER_SECONDS, NTHREADS, (unsigned long long)gets,
                  (unsigned long long)hits, (unsigned long long)st.bypassed,
                  (unsigned long long)puts, (unsigned long long)st.evictions,
                  (unsigned long long)st.invalidations, (unsigned long long)st.entries,
                  (unsigned long long)st.bytes);
    /* Every get counted once; every put that went in is there or went out. */
    assert_int_equal(st.hits, hits);
    assert_int_equal(st.hits + st.misses + st.bypassed, gets);
    assert_int_equal(st.puts, puts);
    assert_int_equal(st.puts, st.entries + st.evictions + st.invalidations + st.replaced);
    assert_true(st.bytes <= st.max_bytes);
    assert_true(hits > 0 && st.evictions > 0 && st.invalidations > 0);
    assert_int_equal(l1_foreach(l1, NULL, 0, count_cb, &a), st.entries);
    assert_int_equal(a.bytes, st.bytes);
    l1_free(l1);
    for (int i = 0; i < 8; i++)
        free(hvalues[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_disabled_by_default),
        cmocka_unit_test(test_get_put_replace),
        cmocka_unit_test(test_byte_bound),
        cmocka_unit_test(test_too_big),
        cmocka_unit_test(test_scan_resistance),
        cmocka_unit_test(test_ref_outlives_eviction),
        cmocka_unit_test(test_ref_outlives_cache),
        cmocka_unit_test(test_invalidate),
        cmocka_unit_test(test_invalidate_revalidated),
        cmocka_unit_test(test_epoch_race),
        cmocka_unit_test(test_suspend),
        cmocka_unit_test(test_set_prefixes),
        cmocka_unit_test(test_foreach),
        cmocka_unit_test(test_threads),
    };

    log_init("test_l1", false);
    log_set_level(LOG_LVL_WARNING);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
