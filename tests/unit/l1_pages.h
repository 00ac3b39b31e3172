/* Pages in a real in-process cache for the unit tests of what hangs off it
 * (test_lane.c, test_fill.c). Include after cmocka.h. */
#ifndef CEDRA_TEST_L1_PAGES_H
#define CEDRA_TEST_L1_PAGES_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "isr.h"
#include "l1.h"

#define L1_PAGES_LIFESPAN                                                                          \
    "{\"expireAge\":15,\"expireAt\":1795479821,\"lastModifiedAt\":1795479806,"                     \
    "\"revalidate\":10,\"staleAge\":10,\"staleAt\":1795479816}"

/* A servable APP_PAGE value as the cache handler writes it (test_l1.c's),
 * its html naming lm. */
static inline struct isr_entry *l1_pages_entry(int64_t lm)
{
    char s[1024];
    struct isr_entry *e = NULL;
    int k = snprintf(s, sizeof(s),
                     "{\"lastModified\":%lld,\"lifespan\":" L1_PAGES_LIFESPAN
                     ",\"tags\":[\"_N_T_/fr\"],"
                     "\"value\":{\"kind\":\"APP_PAGE\",\"html\":\"<html>bonjour %lld</html>\","
                     "\"rscData\":\"eA==\",\"headers\":{\"x-nextjs-stale-time\":\"300\"}}}",
                     (long long)lm, (long long)lm);

    assert_true(k > 0 && (size_t)k < sizeof(s));
    assert_int_equal(isr_entry_parse(s, (size_t)k, NULL, &e), ISR_OK);
    return e;
}

/* Cached under prefix key (the prefix tracked); the caller's reference. */
static inline struct l1_ref *l1_pages_put(struct l1 *l1, const char *prefix, const char *key,
                                          int64_t lm)
{
    char full[600];
    enum l1_put_result res;
    struct l1_ref *r;
    int n = snprintf(full, sizeof(full), "%s%s", prefix, key);

    r = l1_put(l1, full, (size_t)n, strlen(prefix), l1_pages_entry(lm), 0, l1_epoch(l1), &res);
    assert_non_null(r);
    assert_int_equal(res, L1_PUT_OK);
    return r;
}

static inline size_t l1_pages_invalidate(struct l1 *l1, const char *prefix, const char *key)
{
    char full[600];
    int n = snprintf(full, sizeof(full), "%s%s", prefix, key);

    return l1_invalidate_key(l1, full, (size_t)n);
}

#endif
