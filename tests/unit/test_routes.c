#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "routes.h"

#ifndef CEDRA_FIXTURES
#define CEDRA_FIXTURES "tests/fixtures"
#endif

static void key_is(const struct routes *r, const char *path, const char *want)
{
    char out[512];
    int n = routes_key(r, path, strlen(path), out, sizeof(out));

    if (!want) {
        if (n != -1)
            fail_msg("%s: want no key, got %s", path, out);
        return;
    }
    if (n < 0 || strcmp(out, want) != 0)
        fail_msg("%s: want %s, got %s", path, want, n < 0 ? "-1" : out);
}

/* Keys observed in Valkey after requesting these pages of the real Next.js
 * 16.4.6 fixture (tests/fixtures/isr/v16/keys-after-pages.txt). */
static void test_real_table(void **state)
{
    char err[256];
    struct routes *r = routes_load(CEDRA_FIXTURES "/isr/v16/routes.table", err, sizeof(err));

    if (!r)
        fail_msg("%s", err);
    assert_int_equal(routes_scheme(r), ROUTES_ROUTE_CACHE);
    assert_int_equal(routes_count(r), 4);
    key_is(r, "/fr/products/chair",
           "/route-cache/APP_PAGE/"
           "600fe424a8f39649d833b7ff10b31023d5c4f89f76ff08babb88a1011243c40d/$/fr/products/chair");
    key_is(r, "/fr",
           "/route-cache/APP_PAGE/"
           "2825bf9e1aa035199cc70149b2d86ad387d3637a420605faa046db23b53f0b30/$/fr");
    key_is(r, "/fr/about",
           "/route-cache/APP_PAGE/"
           "cb86e4a9c0237a4d1395f3b088c9d8bd4a8b62248b95d11eca5620c2bebaead9/$/fr/about");
    key_is(r, "/fr/big",
           "/route-cache/APP_PAGE/"
           "e0e799cebe5fd9c82dc6feb0b6ba79a45c456519f0772e071e0c9d5c21e932a6/$/fr/big");
    /* Not an app page, or not the canonical pathname Next.js keys. */
    key_is(r, "/fr/products", NULL);
    key_is(r, "/fr/products/chair/extra", NULL);
    key_is(r, "/fr/products/chair/", NULL);
    key_is(r, "/fr//about", NULL);
    key_is(r, "/fr/products/ch%C3%A9", NULL);
    key_is(r, "/fr/products/..", NULL);
    key_is(r, "/fr/./about", NULL);
    key_is(r, "", NULL);
    key_is(r, "fr", NULL);
    routes_free(r);
}

static void test_pathname_scheme(void **state)
{
    struct routes *r = routes_pathname();

    key_is(r, "/fr/products/chair", "/fr/products/chair");
    key_is(r, "/", "/index");
    key_is(r, "/fr/", NULL);
    key_is(r, "/fr/a b", NULL);
    routes_free(r);
}

static void test_catchall_and_order(void **state)
{
    char err[256];
    const char *h = "0000000000000000000000000000000000000000000000000000000000000000";
    char text[1024];
    struct routes *r;

    snprintf(text, sizeof(text),
             "scheme route-cache\nbuild b1\n"
             "route /[locale]/about APP_PAGE %.63s1\n"
             "route /[locale]/docs/[...slug] APP_PAGE %.63s2\n"
             "route /[locale]/shop/[[...path]] APP_PAGE %.63s3\n"
             "route /[locale]/[page] APP_PAGE %.63s4\n",
             h, h, h, h);
    r = routes_parse("t", text, err, sizeof(err));
    if (!r)
        fail_msg("%s", err);
    assert_string_equal(routes_build_id(r), "b1");
    key_is(r, "/nl/about",
           "/route-cache/APP_PAGE/"
           "000000000000000000000000000000000000000000000000000000000000000"
           "1/$/nl/about");
    /* [...slug] needs one segment at least: "/nl/docs" falls to [page]. */
    key_is(r, "/nl/docs",
           "/route-cache/APP_PAGE/"
           "000000000000000000000000000000000000000000000000000000000000000"
           "4/$/nl/docs");
    key_is(r, "/nl/docs/a/b",
           "/route-cache/APP_PAGE/"
           "000000000000000000000000000000000000000000000000000000000000000"
           "2/$/nl/docs/a/b");
    key_is(r, "/nl/shop",
           "/route-cache/APP_PAGE/"
           "000000000000000000000000000000000000000000000000000000000000000"
           "3/$/nl/shop");
    key_is(r, "/nl/shop/x/y",
           "/route-cache/APP_PAGE/"
           "000000000000000000000000000000000000000000000000000000000000000"
           "3/$/nl/shop/x/y");
    key_is(r, "/nl/contact",
           "/route-cache/APP_PAGE/"
           "000000000000000000000000000000000000000000000000000000000000000"
           "4/$/nl/contact");
    routes_free(r);
}

static void test_bad_tables(void **state)
{
    char err[256];
    static const char *bad[] = {
        "scheme route-cache\n",
        "scheme other\n",
        "route /x APP_PAGE nothex\n",
        "route /x APP_ROUTE 0000000000000000000000000000000000000000000000000000000000000000\n",
        "route x APP_PAGE 0000000000000000000000000000000000000000000000000000000000000000\n",
        "route /[...a]/b APP_PAGE "
        "0000000000000000000000000000000000000000000000000000000000000000\n",
        "route //x APP_PAGE 0000000000000000000000000000000000000000000000000000000000000000\n",
        "bogus 1\n",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct routes *r = routes_parse("t", bad[i], err, sizeof(err));

        if (r) {
            routes_free(r);
            fail_msg("accepted: %s", bad[i]);
        }
    }
    assert_null(routes_load("/nonexistent/table", err, sizeof(err)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_table),
        cmocka_unit_test(test_pathname_scheme),
        cmocka_unit_test(test_catchall_and_order),
        cmocka_unit_test(test_bad_tables),
    };

    return cmocka_run_group_tests_name("routes", tests, NULL, NULL);
}
