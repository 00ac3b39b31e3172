#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefix),
        cmocka_unit_test(test_no_prefix),
        cmocka_unit_test(test_add_rules),
        cmocka_unit_test(test_full),
    };

    return cmocka_run_group_tests_name("locale", tests, NULL, NULL);
}
