/* Metrics registry and Prometheus text exposition. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include "metrics.h"

#define L(...)                                                                                     \
    (const char *const[])                                                                          \
    {                                                                                              \
        __VA_ARGS__                                                                                \
    }

static double uptime_fn(void *ud)
{
    return *(double *)ud;
}

static void test_exposition_exact(void **state)
{
    struct metrics *m = metrics_new();
    struct metrics_family *req, *lat;
    struct metrics_histogram *h;
    static const double bounds[] = {0.25, 1, 4};
    double uptime = 12.5;
    size_t len;
    char *txt;

    req =
        metrics_counter_family(m, "cedra_requests_total", "Requests by decision and cache status.",
                               L("decision", "cache", NULL), 16);
    assert_non_null(req);
    metrics_counter_add(metrics_counter_get(req, L("edge", "HIT")), 3);
    metrics_counter_inc(metrics_counter_get(req, L("pass", "MISS")));
    /* The same label values are the same series. */
    metrics_counter_inc(metrics_counter_get(req, L("edge", "HIT")));
    metrics_gauge_set(metrics_gauge(m, "cedra_l1_bytes", "Bytes held by the L1 cache."), 1536);
    assert_int_equal(
        metrics_gauge_fn(m, "cedra_uptime_seconds", "Seconds since start.", uptime_fn, &uptime), 0);
    /* Registered, no series yet: not rendered. */
    assert_non_null(metrics_counter_family(m, "cedra_errors_total", "Errors.", L("kind", NULL), 4));
    h = metrics_histogram(m, "cedra_valkey_request_duration_seconds", "Valkey request latency.",
                          bounds, 3);
    assert_non_null(h);
    metrics_histogram_observe(h, 0.125);
    metrics_histogram_observe(h, 0.25); /* le is inclusive */
    metrics_histogram_observe(h, 0.5);
    metrics_histogram_observe(h, 2);
    metrics_histogram_observe(h, 8);
    metrics_histogram_observe(h, NAN); /* ignored */
    lat = metrics_histogram_family(m, "cedra_spop_frame_bytes", "SPOP frame sizes.", L("dir", NULL),
                                   2, (const double[]){64, 1024, INFINITY}, 3);
    assert_non_null(lat);
    metrics_histogram_observe(metrics_histogram_get(lat, L("in")), 100);

    txt = metrics_render(m, &len);
    assert_non_null(txt);
    assert_int_equal(strlen(txt), len);
    assert_string_equal(txt,
                        "# HELP cedra_requests_total Requests by decision and cache status.\n"
                        "# TYPE cedra_requests_total counter\n"
                        "cedra_requests_total{decision=\"edge\",cache=\"HIT\"} 4\n"
                        "cedra_requests_total{decision=\"pass\",cache=\"MISS\"} 1\n"
                        "# HELP cedra_l1_bytes Bytes held by the L1 cache.\n"
                        "# TYPE cedra_l1_bytes gauge\n"
                        "cedra_l1_bytes 1536\n"
                        "# HELP cedra_uptime_seconds Seconds since start.\n"
                        "# TYPE cedra_uptime_seconds gauge\n"
                        "cedra_uptime_seconds 12.5\n"
                        "# HELP cedra_valkey_request_duration_seconds Valkey request latency.\n"
                        "# TYPE cedra_valkey_request_duration_seconds histogram\n"
                        "cedra_valkey_request_duration_seconds_bucket{le=\"0.25\"} 2\n"
                        "cedra_valkey_request_duration_seconds_bucket{le=\"1\"} 3\n"
                        "cedra_valkey_request_duration_seconds_bucket{le=\"4\"} 4\n"
                        "cedra_valkey_request_duration_seconds_bucket{le=\"+Inf\"} 5\n"
                        "cedra_valkey_request_duration_seconds_sum 10.875\n"
                        "cedra_valkey_request_duration_seconds_count 5\n"
                        "# HELP cedra_spop_frame_bytes SPOP frame sizes.\n"
                        "# TYPE cedra_spop_frame_bytes histogram\n"
                        "cedra_spop_frame_bytes_bucket{dir=\"in\",le=\"64\"} 0\n"
                        "cedra_spop_frame_bytes_bucket{dir=\"in\",le=\"1024\"} 1\n"
                        "cedra_spop_frame_bytes_bucket{dir=\"in\",le=\"+Inf\"} 1\n"
                        "cedra_spop_frame_bytes_sum{dir=\"in\"} 100\n"
                        "cedra_spop_frame_bytes_count{dir=\"in\"} 1\n");
    free(txt);

    /* Callback gauges are read at each scrape. */
    uptime = 13;
    txt = metrics_render(m, NULL);
    assert_non_null(strstr(txt, "\ncedra_uptime_seconds 13\n"));
    free(txt);
    metrics_free(m);
}

static void test_escaping(void **state)
{
    struct metrics *m = metrics_new();
    struct metrics_family *f;
    char *txt;

    f = metrics_gauge_family(m, "cedra_path_info", "Help with \\ backslash\nand newline.",
                             L("path", NULL), 4);
    metrics_gauge_set(metrics_gauge_get(f, L("a\\b\"c\nd")), 1);
    txt = metrics_render(m, NULL);
    assert_string_equal(txt, "# HELP cedra_path_info Help with \\\\ backslash\\nand newline.\n"
                             "# TYPE cedra_path_info gauge\n"
                             "cedra_path_info{path=\"a\\\\b\\\"c\\nd\"} 1\n");
    free(txt);
    metrics_free(m);
}

static void test_values(void **state)
{
    struct metrics *m = metrics_new();
    struct metrics_family *f = metrics_gauge_family(m, "v", "Values.", L("k", NULL), 16);
    static const struct {
        const char *k;
        double v;
        const char *want;
    } cases[] = {
        {"a", 0.1, "0.1"},        {"b", 1.0 / 3, "0.3333333333333333"},
        {"c", -2.5, "-2.5"},      {"d", 1e-9, "1e-09"},
        {"e", 1e20, "1e+20"},     {"f", 123456789, "123456789"},
        {"g", NAN, "NaN"},        {"h", INFINITY, "+Inf"},
        {"i", -INFINITY, "-Inf"}, {"j", -0.0, "0"},
    };
    char *txt, want[64];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        metrics_gauge_set(metrics_gauge_get(f, L(cases[i].k)), cases[i].v);
    txt = metrics_render(m, NULL);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(want, sizeof(want), "v{k=\"%s\"} %s\n", cases[i].k, cases[i].want);
        if (!strstr(txt, want))
            fail_msg("missing '%s' in:\n%s", want, txt);
    }
    free(txt);

    /* gauge_add, reads back. */
    {
        struct metrics_gauge *g = metrics_gauge_get(f, L("a"));

        metrics_gauge_set(g, 1);
        metrics_gauge_add(g, -0.5);
        assert_true(metrics_gauge_value(g) == 0.5);
    }
    metrics_free(m);
}

static void test_histogram_cumulative(void **state)
{
    struct metrics *m = metrics_new();
    static const double b[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1};
    struct metrics_histogram *h =
        metrics_histogram(m, "lat_seconds", "Latency.", b, sizeof(b) / sizeof(b[0]));
    char *txt, *p;
    unsigned long long prev = 0, v, n = 0;

    for (int i = 0; i < 1000; i++)
        metrics_histogram_observe(h, (double)(i % 200) / 100.0); /* 0 .. 1.99 */
    txt = metrics_render(m, NULL);
    for (p = txt; (p = strstr(p, "lat_seconds_bucket{")); p++) {
        assert_int_equal(sscanf(strchr(p, '}') + 1, " %llu", &v), 1);
        assert_true(v >= prev);
        prev = v;
        n++;
    }
    assert_int_equal(n, 8);
    assert_int_equal(prev, 1000);
    assert_non_null(strstr(txt, "lat_seconds_bucket{le=\"0.001\"} 5\n")); /* the zeros */
    assert_non_null(strstr(txt, "lat_seconds_bucket{le=\"0.01\"} 10\n"));
    assert_non_null(strstr(txt, "lat_seconds_bucket{le=\"1\"} 505\n"));
    assert_non_null(strstr(txt, "lat_seconds_count 1000\n"));
    free(txt);
    metrics_free(m);
}

static void test_names_and_limits(void **state)
{
    struct metrics *m = metrics_new();
    struct metrics_family *f;
    static const double b[] = {1, 2};

    assert_null(metrics_counter(m, "1abc_total", "x"));
    assert_null(metrics_counter(m, "a-b_total", "x"));
    assert_null(metrics_counter(m, "job:rate_total", "x"));
    assert_null(metrics_counter(m, "__x_total", "x"));
    assert_null(metrics_counter(m, "requests", "x"));
    assert_string_equal(metrics_error(m), "counter 'requests' must end in _total");
    assert_null(metrics_gauge(m, "things_total", "x"));
    assert_null(metrics_gauge(m, "no_help", ""));
    assert_null(metrics_histogram(m, "x_bucket", "x", b, 2));
    assert_null(metrics_histogram(m, "x", "x", (const double[]){2, 1}, 2));
    assert_null(metrics_histogram(m, "x", "x", (const double[]){1, NAN}, 2));
    assert_null(metrics_histogram_family(m, "x", "x", L("le", NULL), 1, b, 2));
    assert_null(metrics_counter_family(m, "y_total", "x", L("__a", NULL), 1));
    assert_null(metrics_counter_family(m, "y_total", "x", L("a", "a", NULL), 1));
    assert_null(metrics_counter_family(m, "y_total", "x", L("bad-label", NULL), 1));

    /* Duplicates and histogram-derived names clash. */
    assert_non_null(metrics_histogram(m, "dur_seconds", "x", b, 2));
    assert_null(metrics_histogram(m, "dur_seconds", "x", b, 2));
    assert_null(metrics_gauge(m, "dur_seconds_sum", "x"));
    assert_null(metrics_gauge(m, "dur_seconds_count", "x"));
    assert_string_equal(metrics_error(m),
                        "metric 'dur_seconds_count' clashes with a registered one");

    /* Bounded series: past the bound, NULL, and updates through NULL are no-ops. */
    f = metrics_counter_family(m, "hits_total", "x", L("k", NULL), 2);
    assert_non_null(metrics_counter_get(f, L("a")));
    assert_non_null(metrics_counter_get(f, L("b")));
    assert_null(metrics_counter_get(f, L("c")));
    assert_non_null(metrics_counter_get(f, L("a"))); /* existing ones still found */
    metrics_counter_inc(NULL);
    metrics_gauge_set(NULL, 1);
    metrics_histogram_observe(NULL, 1);
    /* Wrong type, missing values. */
    assert_null(metrics_gauge_get(f, L("a")));
    assert_null(metrics_counter_get(f, NULL));
    /* A callback series is unique. */
    {
        double v = 1;
        struct metrics_family *g = metrics_gauge_family(m, "pool_size", "x", L("pool", NULL), 4);

        assert_int_equal(metrics_series_fn(g, L("stable"), uptime_fn, &v), 0);
        assert_int_equal(metrics_series_fn(g, L("stable"), uptime_fn, &v), -1);
        assert_null(metrics_gauge_get(g, L("stable")));
    }
    metrics_free(m);
}

struct worker_arg {
    struct metrics_counter *c;
    struct metrics_gauge *g;
    struct metrics_histogram *h;
    int n;
};

static void *worker(void *p)
{
    struct worker_arg *a = p;

    for (int i = 0; i < a->n; i++) {
        metrics_counter_inc(a->c);
        metrics_gauge_add(a->g, 1);
        metrics_histogram_observe(a->h, (i & 1) ? 0.5 : 0.25);
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    struct metrics *m = metrics_new();
    static const double b[] = {0.3};
    struct worker_arg a = {
        .c = metrics_counter(m, "ops_total", "Operations."),
        .g = metrics_gauge(m, "level", "Level."),
        .h = metrics_histogram(m, "op_seconds", "Op time.", b, 1),
        .n = 250000,
    };
    pthread_t t[4];
    char *txt;

    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, worker, &a), 0);
    /* Scrapes while the workers run must not disturb them. */
    for (int i = 0; i < 20; i++)
        free(metrics_render(m, NULL));
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(metrics_counter_value(a.c), 1000000);
    assert_true(metrics_gauge_value(a.g) == 1000000.0);
    txt = metrics_render(m, NULL);
    assert_non_null(strstr(txt, "op_seconds_bucket{le=\"0.3\"} 500000\n"));
    assert_non_null(strstr(txt, "op_seconds_bucket{le=\"+Inf\"} 1000000\n"));
    assert_non_null(strstr(txt, "op_seconds_sum 375000\n")); /* exact: dyadic values */
    assert_non_null(strstr(txt, "op_seconds_count 1000000\n"));
    free(txt);
    metrics_free(m);
}

/* promtool (Debian package "prometheus") parses and lints the output. */
static void test_promtool(void **state)
{
    struct metrics *m = metrics_new();
    struct metrics_family *f;
    static const double b[] = {0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5};
    char *txt;
    size_t len;
    FILE *p;
    int st;

    if (system("command -v promtool >/dev/null 2>&1") != 0)
        skip();
    f = metrics_counter_family(m, "cedra_requests_total", "Requests by decision and cache status.",
                               L("decision", "cache", NULL), 32);
    metrics_counter_add(metrics_counter_get(f, L("edge", "HIT")), 10);
    metrics_counter_add(metrics_counter_get(f, L("pass", "MISS")), 3);
    metrics_counter_add(metrics_counter_get(f, L("pass", "we\\ird \"x\"\nnl")), 1);
    f = metrics_histogram_family(m, "cedra_valkey_request_duration_seconds",
                                 "Valkey request latency \\ with escapes\nin help.", L("op", NULL),
                                 4, b, 7);
    metrics_histogram_observe(metrics_histogram_get(f, L("get")), 0.0007);
    metrics_histogram_observe(metrics_histogram_get(f, L("hget")), 0.02);
    metrics_gauge_set(metrics_gauge(m, "cedra_l1_bytes", "Bytes in L1."), 1e9);
    metrics_gauge_set(metrics_gauge(m, "cedra_ratio", "A ratio."), 1.0 / 3);
    txt = metrics_render(m, &len);
    p = popen("promtool check metrics >/dev/null 2>&1", "w");
    assert_non_null(p);
    assert_int_equal(fwrite(txt, 1, len, p), len);
    st = pclose(p);
    assert_true(WIFEXITED(st));
    if (WEXITSTATUS(st) != 0)
        fail_msg("promtool check metrics failed on:\n%s", txt);
    free(txt);
    metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exposition_exact), cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_values),           cmocka_unit_test(test_histogram_cumulative),
        cmocka_unit_test(test_names_and_limits), cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_promtool),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
