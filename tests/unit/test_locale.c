#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cookie.h"
#include "locale.h"

static struct locale_set three(void)
{
    struct locale_set ls = {0};

    assert_int_equal(locale_add(&ls, "fr"), 0);
    assert_int_equal(locale_add(&ls, "nl"), 0);
    assert_int_equal(locale_add(&ls, "en"), 0);
    return ls;
}

static int from(const struct locale_set *ls, const char *p)
{
    return locale_from_path(ls, p, strlen(p));
}

static void test_prefix(void **state)
{
    struct locale_set ls = three();

    assert_int_equal(from(&ls, "/fr"), 0);
    assert_int_equal(from(&ls, "/fr/"), 0);
    assert_int_equal(from(&ls, "/nl/products/chair"), 1);
    assert_int_equal(from(&ls, "/en/a/b/c"), 2);
}

static void test_no_prefix(void **state)
{
    struct locale_set ls = three();

    assert_int_equal(from(&ls, "/"), -1);
    assert_int_equal(from(&ls, ""), -1);
    assert_int_equal(from(&ls, "fr"), -1);
    assert_int_equal(from(&ls, "/de/x"), -1);
    assert_int_equal(from(&ls, "/fra"), -1);
    assert_int_equal(from(&ls, "/f"), -1);
    assert_int_equal(from(&ls, "/FR/x"), -1);
    assert_int_equal(from(&ls, "//fr"), -1);
    assert_int_equal(from(&ls, "/products/fr"), -1);
    /* A NUL inside the segment must not make "/fr\0x" look like "/fr". */
    assert_int_equal(locale_from_path(&ls, "/fr\0x/y", 7), -1);
}

static void test_add_rules(void **state)
{
    struct locale_set ls = three();

    assert_int_equal(locale_add(&ls, "fr"), -1);
    assert_int_equal(locale_add(&ls, ""), -1);
    assert_int_equal(locale_add(&ls, "f/r"), -1);
    assert_int_equal(locale_add(&ls, "-fr"), -1);
    assert_int_equal(locale_add(&ls, "0123456789abcdef"), -1);
    assert_int_equal(locale_add(&ls, "nl-BE"), 0);
    assert_int_equal(from(&ls, "/nl-BE/x"), 3);
    assert_int_equal(locale_set_default(&ls, "nl"), 0);
    assert_int_equal(ls.def, 1);
    assert_int_equal(locale_set_default(&ls, "de"), -1);
}

static void test_full(void **state)
{
    struct locale_set ls = {0};
    char name[8];

    for (int i = 0; i < LOCALE_MAX; i++) {
        snprintf(name, sizeof(name), "l%d", i);
        assert_int_equal(locale_add(&ls, name), 0);
    }
    assert_int_equal(locale_add(&ls, "zz"), -1);
}

struct al_case {
    const char *header;
    const char *want; /* NULL: no match */
};

static void test_accept_language(void **state)
{
    struct locale_set ls = three();
    static const struct al_case cases[] = {
        {"nl", "nl"},
        {"nl-BE", "nl"},
        {"NL-be", "nl"},
        {"de, en;q=0.5", "en"},
        {"en;q=0.5, nl;q=0.8", "nl"},
        {"en;q=0.8, nl;q=0.8", "en"}, /* ties keep header order */
        {"fr;q=0, *", "nl"},          /* default excluded: next acceptable */
        {"*", "fr"},
        {"*;q=0", NULL},
        {"de, *;q=0.1", "fr"},
        {"en;q=0", NULL},
        {"en;q=0, en-GB", NULL}, /* en-GB falls back to en, which is excluded */
        {"de-CH, de;q=0.9", NULL},
        {"", NULL},
        {",,, ,", NULL},
        {"en;q=2, nl", "nl"}, /* malformed q: element ignored */
        {"en;q=0.5555, nl;q=0.1", "nl"},
        {"en;q=1.000, nl", "en"},
        {"en;q=1.001, nl", "nl"},
        {"en ; q = 0.5 , nl;q=0.4", "en"},
        {"e1, nl", "nl"}, /* digits only after the first subtag */
        {"toolongtag, en", "en"},
        {"en-, nl", "nl"},
        {"en;level=1, nl", "nl"},
        {"zh-Hant-TW, nl-BE;q=0.3", "nl"},
        {"\x01en, nl", "nl"},
        {"en-US,en;q=0.9,fr;q=0.8", "en"},
        {"fr-CA;q=0, fr", "fr"}, /* fr-CA;q=0 does not exclude fr */
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int got = locale_from_accept_language(&ls, cases[i].header, strlen(cases[i].header));

        if (!cases[i].want) {
            if (got != -1)
                fail_msg("case %zu '%s': want none, got %s", i, cases[i].header, ls.name[got]);
        } else if (got < 0 || strcmp(ls.name[got], cases[i].want) != 0) {
            fail_msg("case %zu '%s': want %s, got %s", i, cases[i].header, cases[i].want,
                     got < 0 ? "none" : ls.name[got]);
        }
    }
}

static void test_accept_language_region_locales(void **state)
{
    struct locale_set ls = {0};

    assert_int_equal(locale_add(&ls, "nl-BE"), 0);
    assert_int_equal(locale_add(&ls, "fr-BE"), 0);
    /* A bare "fr" range matches "fr-BE" (basic filtering). */
    assert_int_equal(locale_from_accept_language(&ls, "fr", 2), 1);
    assert_int_equal(locale_from_accept_language(&ls, "nl-NL, fr;q=0.5", 15), 1);
}

static void test_cookie(void **state)
{
    const char *v;
    size_t vl;
    const char *h = "a=1; NEXT_LOCALE=nl;b=\"q\" ; NEXT_LOCALE=fr; c ; d=";

    assert_true(cookie_get(h, strlen(h), "NEXT_LOCALE", &v, &vl));
    assert_int_equal(vl, 2);
    assert_memory_equal(v, "nl", 2);
    assert_true(cookie_get(h, strlen(h), "b", &v, &vl));
    assert_int_equal(vl, 1);
    assert_memory_equal(v, "q", 1);
    assert_true(cookie_get(h, strlen(h), "d", &v, &vl));
    assert_int_equal(vl, 0);
    assert_false(cookie_get(h, strlen(h), "c", &v, &vl));
    assert_false(cookie_get(h, strlen(h), "NEXT", &v, &vl));
    assert_false(cookie_get(h, strlen(h), "A", &v, &vl));
    assert_false(cookie_get("", 0, "a", &v, &vl));
    /* Bounded by len, not by a terminator. */
    assert_false(cookie_get("a=1", 1, "a", &v, &vl));
}

static void test_redirectable(void **state)
{
    const char *ex[] = {"/_next/", "/api/"};

    assert_true(locale_path_redirectable(ex, 2, "/", 1));
    assert_true(locale_path_redirectable(ex, 2, "/products/chair", 15));
    assert_true(locale_path_redirectable(ex, 2, "/v1.2/x", 7));
    assert_false(locale_path_redirectable(ex, 2, "/robots.txt", 11));
    assert_false(locale_path_redirectable(ex, 2, "/img/a.png", 10));
    assert_false(locale_path_redirectable(ex, 2, "/api/health", 11));
    assert_false(locale_path_redirectable(ex, 2, "/api", 4));
    assert_false(locale_path_redirectable(ex, 2, "/_next/static/x", 15));
    assert_true(locale_path_redirectable(ex, 2, "/apis", 5));
    assert_false(locale_path_redirectable(ex, 2, "", 0));
    assert_false(locale_path_redirectable(ex, 2, "x/y", 3));
}

static void target(const char *path, const char *query, const char *want)
{
    char out[64];
    int n = locale_redirect_target(out, sizeof(out), "fr", 2, path, strlen(path), query,
                                   query ? strlen(query) : 0);

    if (!want) {
        if (n != -1)
            fail_msg("'%s' '%s': want refusal, got %s", path, query ? query : "", out);
        return;
    }
    if (n < 0 || strcmp(out, want) != 0)
        fail_msg("'%s' '%s': want %s, got %s", path, query ? query : "", want, n < 0 ? "-1" : out);
}

static void test_redirect_target(void **state)
{
    char out[8];

    target("/", NULL, "/fr");
    target("/products/chair", NULL, "/fr/products/chair");
    target("/products/chair", "a=1&b=%20x", "/fr/products/chair?a=1&b=%20x");
    target("/x", "next=/y?z", "/fr/x?next=/y?z");
    /* Protocol-relative and backslash forms stay under /fr. */
    target("//evil.example", NULL, "/fr//evil.example");
    target("/%2F%2Fevil.example", NULL, "/fr/%2F%2Fevil.example");
    target("/\\evil.example", NULL, NULL);
    target("/a\rb", NULL, NULL);
    target("/a\nLocation: x", NULL, NULL);
    target("/a b", NULL, NULL);
    target("/a%0", NULL, NULL);
    target("/a%zz", NULL, NULL);
    target("/ok", "a=\r\n", NULL);
    target("/ok", "a=<b>", NULL);
    target("/\xc3\xa9", NULL, NULL);
    target("noslash", NULL, NULL);
    assert_int_equal(locale_redirect_target(out, 1, "fr", 2, "/a", 2, NULL, 0), -1);
    assert_int_equal(locale_redirect_target(out, sizeof(out), "fr", 2, "/abcdefgh", 9, NULL, 0),
                     -1);
    /* An embedded NUL is refused, not truncated. */
    assert_int_equal(locale_redirect_target(out, sizeof(out), "fr", 2, "/a\0b", 4, NULL, 0), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefix),
        cmocka_unit_test(test_no_prefix),
        cmocka_unit_test(test_add_rules),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_accept_language),
        cmocka_unit_test(test_accept_language_region_locales),
        cmocka_unit_test(test_cookie),
        cmocka_unit_test(test_redirectable),
        cmocka_unit_test(test_redirect_target),
    };

    return cmocka_run_group_tests_name("locale", tests, NULL, NULL);
}
