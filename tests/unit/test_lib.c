/* lib/ and the cedra-spoa configuration. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <ev.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <unistd.h>

#include "cfgfile.h"
#include "conf.h"
#include "log.h"
#include "metrics.h"
#include "opcmd.h"
#include "opsock.h"
#include "privs.h"
#include "util.h"

struct collect {
    int n;
    char words[8][CFG_MAX_ARGS][64];
    int argc[8];
};

static int collect_cb(const struct cfg_line *l, void *ud, char *err, size_t errlen)
{
    struct collect *c = ud;

    if (c->n >= 8)
        return -1;
    c->argc[c->n] = l->argc;
    for (int i = 0; i < l->argc; i++)
        snprintf(c->words[c->n][i], 64, "%s", l->argv[i]);
    c->n++;
    return 0;
}

static void test_cfg_tokens(void **state)
{
    struct collect c = {0};
    char err[256];

    setenv("CEDRA_T_ADDR", "10.1.2.3:99", 1);
    unsetenv("CEDRA_T_UNSET");
    assert_int_equal(cfg_parse_string("t",
                                      "# comment\n"
                                      "  listen ${CEDRA_T_ADDR}  # trailing\n"
                                      "x \"a b\" 'lit ${NOPE}' c\\ d\n"
                                      "\n"
                                      "y ${CEDRA_T_UNSET:-dflt} \"q\\\"x\"\n",
                                      collect_cb, &c, err, sizeof(err)),
                     0);
    assert_int_equal(c.n, 3);
    assert_int_equal(c.argc[0], 2);
    assert_string_equal(c.words[0][1], "10.1.2.3:99");
    assert_int_equal(c.argc[1], 4);
    assert_string_equal(c.words[1][1], "a b");
    assert_string_equal(c.words[1][2], "lit ${NOPE}");
    assert_string_equal(c.words[1][3], "c d");
    assert_string_equal(c.words[2][1], "dflt");
    assert_string_equal(c.words[2][2], "q\"x");
}

static void test_cfg_errors(void **state)
{
    struct collect c = {0};
    char err[256], big[CFG_MAX_LINE + 100];

    unsetenv("CEDRA_T_UNSET");
    assert_int_equal(cfg_parse_string("t", "a \"open\n", collect_cb, &c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "t:1:"));
    assert_int_equal(
        cfg_parse_string("t", "ok\nb ${CEDRA_T_UNSET}\n", collect_cb, &c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "t:2:"));
    assert_non_null(strstr(err, "CEDRA_T_UNSET"));
    assert_int_equal(cfg_parse_string("t", "b ${9x}\n", collect_cb, &c, err, sizeof(err)), -1);
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(cfg_parse_string("t", big, collect_cb, &c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "too long"));
}

static void test_durations_sizes(void **state)
{
    double d;
    uint64_t v;

    assert_int_equal(parse_duration("250ms", &d), 0);
    assert_true(d > 0.2499 && d < 0.2501);
    assert_int_equal(parse_duration("1500", &d), 0);
    assert_true(d > 1.4999 && d < 1.5001);
    assert_int_equal(parse_duration("2m", &d), 0);
    assert_true(d == 120);
    assert_int_equal(parse_duration("-1s", &d), -1);
    assert_int_equal(parse_duration("1x", &d), -1);
    assert_int_equal(parse_duration("", &d), -1);
    assert_int_equal(parse_size("16k", &v), 0);
    assert_int_equal(v, 16384);
    assert_int_equal(parse_size("1m", &v), 0);
    assert_int_equal(v, 1048576);
    assert_int_equal(parse_size("1kb", &v), -1);
    assert_int_equal(parse_size("99999999999999999999", &v), -1);
    assert_int_equal(parse_uint("10", 1, 9, &v), -1);
    assert_int_equal(parse_uint(" 5", 1, 9, &v), -1);
    assert_int_equal(parse_uint("5", 1, 9, &v), 0);
}

static void test_endpoints(void **state)
{
    struct endpoint ep;
    char err[128];

    assert_int_equal(parse_endpoint("127.0.0.1:12345", &ep, err, sizeof(err)), 0);
    assert_int_equal(ep.addr.ss_family, AF_INET);
    assert_int_equal(ntohs(((struct sockaddr_in *)&ep.addr)->sin_port), 12345);
    assert_int_equal(parse_endpoint("[::1]:80", &ep, err, sizeof(err)), 0);
    assert_int_equal(ep.addr.ss_family, AF_INET6);
    assert_int_equal(parse_endpoint("unix:/tmp/x.sock", &ep, err, sizeof(err)), 0);
    assert_true(ep.is_unix);
    assert_string_equal(((struct sockaddr_un *)&ep.addr)->sun_path, "/tmp/x.sock");
    assert_int_equal(parse_endpoint("127.0.0.1", &ep, err, sizeof(err)), -1);
    assert_int_equal(parse_endpoint("127.0.0.1:0", &ep, err, sizeof(err)), -1);
    assert_int_equal(parse_endpoint("127.0.0.1:65536", &ep, err, sizeof(err)), -1);
    assert_int_equal(parse_endpoint("[::1:80", &ep, err, sizeof(err)), -1);
    assert_int_equal(parse_endpoint("999.0.0.1:80", &ep, err, sizeof(err)), -1);
}

static void test_log_quote(void **state)
{
    char b[32];

    assert_string_equal(log_quote(b, sizeof(b), "plain", 5), "plain");
    assert_string_equal(log_quote(b, sizeof(b), "a b", 3), "\"a b\"");
    assert_string_equal(log_quote(b, sizeof(b), "x\ny\"", 4), "\"x\\x0ay\\\"\"");
    assert_string_equal(log_quote(b, sizeof(b), "", 0), "\"\"");
    assert_int_equal(
        strlen(log_quote(b, sizeof(b), "0123456789012345678901234567890123456789", 40)) < sizeof(b),
        1);
}

static void test_spoa_conf(void **state)
{
    struct spoa_conf c;
    char err[256];

    spoa_conf_defaults(&c);
    assert_int_equal(spoa_conf_load_string("listen 127.0.0.1:1\nthreads 3\nmax-frame-size 1024\n"
                                           "locales fr nl en de\ndefault-locale nl\n"
                                           "timeout processing-is-not-ours 1s\n",
                                           &c, err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, ":6:"));
    spoa_conf_defaults(&c);
    assert_int_equal(spoa_conf_load_string("listen 127.0.0.1:1\nthreads 3\nmax-frame-size 1024\n"
                                           "locales fr nl en de\ndefault-locale nl\n"
                                           "timeout hello 1s\nlog-level debug\n",
                                           &c, err, sizeof(err)),
                     0);
    assert_int_equal(c.threads, 3);
    assert_int_equal(c.max_frame_size, 1024);
    assert_int_equal(c.locales.n, 4);
    assert_int_equal(c.locales.def, 1);
    assert_int_equal(c.log_level, LOG_LVL_DEBUG);
    spoa_conf_defaults(&c);
    assert_int_equal(spoa_conf_load_string("max-frame-size 100\n", &c, err, sizeof(err)), -1);
    spoa_conf_defaults(&c);
    assert_int_equal(spoa_conf_load_string("default-locale xx\n", &c, err, sizeof(err)), -1);
    spoa_conf_defaults(&c);
    assert_int_equal(spoa_conf_load_string("threads\n", &c, err, sizeof(err)), -1);
    spoa_conf_defaults(&c);
    assert_int_equal(spoa_conf_load_string("bogus 1\n", &c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "unknown keyword"));
}

static void test_str_errf(void **state)
{
    char err[8] = "x";

    str_errf(err, sizeof(err), "%s %d", "abc", 12345);
    assert_string_equal(err, "abc 123"); /* cut, terminated */
    str_errf(NULL, 16, "ignored %d", 1);
    str_errf(err, 0, "ignored %d", 2);
    assert_string_equal(err, "abc 123");
}

static void test_strdup_opt(void **state)
{
    bool oom = false;
    char *d = strdup_opt("abc", &oom);

    assert_string_equal(d, "abc");
    assert_false(oom);
    free(d);
    assert_null(strdup_opt(NULL, &oom));
    assert_false(oom);
}

static void test_json_containers(void **state)
{
    const char *deep = "[[[[{\"a\":[1]}]]]]";      /* 6 deep, 6 in all */
    const char *wide = "[{},{},[],[1,{}]]";        /* 2 deep, 6 in all */
    const char *strs = "[\"[[[{{{\",\"\\\"[[[\"]"; /* brackets in strings do not count */

    assert_true(json_containers_ok(deep, strlen(deep), 6, SIZE_MAX));
    assert_false(json_containers_ok(deep, strlen(deep), 5, SIZE_MAX));
    assert_true(json_containers_ok(deep, strlen(deep), SIZE_MAX, 6));
    assert_false(json_containers_ok(deep, strlen(deep), SIZE_MAX, 5));
    assert_true(json_containers_ok(wide, strlen(wide), 3, 6));
    assert_false(json_containers_ok(wide, strlen(wide), 1, SIZE_MAX));
    assert_false(json_containers_ok(wide, strlen(wide), SIZE_MAX, 5));
    assert_true(json_containers_ok(strs, strlen(strs), 1, 1));
    /* Closed containers no longer count towards the depth, and len bounds
     * the walk (the NUL is not an end). */
    assert_true(json_containers_ok("[][][][]", 8, 1, SIZE_MAX));
    assert_true(json_containers_ok("[[[", 1, 1, 1));
    assert_true(json_containers_ok("", 0, 0, 0));
    /* A stray closing bracket is the parser's to reject: no wrap-around. */
    assert_true(json_containers_ok("]][[[", 5, 1, SIZE_MAX));
}

static void test_backoff(void **state)
{
    uint64_t rng = 0x9e3779b97f4a7c15ULL, again = rng, same = rng;
    double lo = 1, hi = 0;

    for (int i = 0; i < 1000; i++) {
        double r = rand01(&rng);

        assert_true(r >= 0 && r < 1);
        lo = r < lo ? r : lo;
        hi = r > hi ? r : hi;
    }
    assert_true(lo < 0.05 && hi > 0.95);
    assert_true(rng != 0);
    /* The same state gives the same draw. */
    assert_true(rand01(&again) == rand01(&same));
    assert_true(again == same);
    for (unsigned n = 0; n < 70; n++) {
        double d = backoff_jitter(0.1, 5, n, &rng);
        double want = 0.1 * (double)(1ULL << (n < 6 ? n : 6));

        want = want > 5 ? 5 : want;
        assert_true(d >= want / 2 && d <= want);
    }
    /* max below min: max wins */
    assert_true(backoff_jitter(2, 1, 0, &rng) <= 1);
}

static int show_metrics_cmd(struct opsock_out *out, int argc, char **argv, void *ud)
{
    return opcmd_show_metrics(out, ud);
}

static void test_opcmd(void **state)
{
    static const struct opsock_cmd cmds[] = {
        {"set log-level", "<level>", opcmd_set_log_level},
        {"show metrics", "metrics", show_metrics_cmd},
        {NULL, NULL, NULL},
    };
    const char *in = "set log-level debug;set log-level loud;set log-level;show metrics\n";
    const char *usage = "\nerror: usage: set log-level error|warning|notice|info|debug\n\n"
                        "error: usage: set log-level error|warning|notice|info|debug\n\n";
    char dir[] = "/tmp/opcmd-test-XXXXXX", path[64], err[256];
    enum log_level old = log_get_level();
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct metrics *m = metrics_new();
    struct opsock_config cfg = {0};
    struct opsock *s;
    size_t len;
    char *out;

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/op.sock", dir);
    cfg.path = path;
    assert_non_null(m);
    metrics_counter_add(metrics_counter(m, "cedra_test_total", "a test counter"), 3);
    s = opsock_new(loop, &cfg, err, sizeof(err));
    assert_non_null(s);
    assert_int_equal(opsock_register(s, cmds, m, err, sizeof(err)), 0);
    log_set_level(LOG_LVL_ERROR);
    assert_int_equal(opsock_feed(s, in, strlen(in), &out, &len), 0);
    assert_int_equal(log_get_level(), LOG_LVL_DEBUG);
    /* "set log-level debug" answers nothing; the two others, their usage. */
    assert_non_null(strstr(out, usage));
    assert_int_equal(strncmp(out, usage, strlen(usage)), 0);
    assert_non_null(strstr(out, "\ncedra_test_total 3\n"));
    free(out);
    log_set_level(old);
    opsock_free(s);
    metrics_free(m);
    ev_loop_destroy(loop);
    rmdir(dir);
}

static void test_privs_report_end(void **state)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    struct privs_report r = {.out = f, .prog = "cedra-test", .errors = 2, .warnings = 1};

    assert_non_null(f);
    assert_int_equal(privs_report_end(&r), 1);
    fclose(f);
    assert_string_equal(text, "cedra-test: configuration has 2 error(s) and 1 warning(s)\n");
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cfg_tokens),      cmocka_unit_test(test_cfg_errors),
        cmocka_unit_test(test_durations_sizes), cmocka_unit_test(test_endpoints),
        cmocka_unit_test(test_log_quote),       cmocka_unit_test(test_spoa_conf),
        cmocka_unit_test(test_str_errf),        cmocka_unit_test(test_strdup_opt),
        cmocka_unit_test(test_json_containers), cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_opcmd),           cmocka_unit_test(test_privs_report_end),
    };

    return cmocka_run_group_tests_name("lib", tests, NULL, NULL);
}
