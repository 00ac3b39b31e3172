/* cedra-agent's pure parts: configuration (agent/conf.c), templates, the
 * cedra-spoa command diff (agent/spoa_client.c) and the build choice of a
 * pool (agent/agent.c). The loop itself is covered by
 * tests/integration/test_agent.py against real processes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "agent.h" /* agent/conf.h through it: spoa/ has a conf.h too */
#include "spoa_client.h"

static int load(const char *text, struct agent_conf *c, char *err, size_t errlen)
{
    agent_conf_defaults(c);
    return agent_conf_load_string(text, c, err, errlen);
}

static void test_conf_defaults(void **state)
{
    struct agent_conf c;
    char err[256];

    assert_int_equal(load("service storefront\n", &c, err, sizeof(err)), 0);
    assert_int_equal(c.nsvc, 1);
    assert_string_equal(c.svc[0].name, "storefront");
    assert_string_equal(c.svc[0].backend[POOL_STABLE], "storefront_stable");
    assert_string_equal(c.svc[0].backend[POOL_CANARY], "storefront_canary");
    assert_string_equal(c.svc[0].slot_prefix[POOL_STABLE], "stable");
    assert_string_equal(c.svc[0].slot_prefix[POOL_CANARY], "canary");
    assert_string_equal(c.canary_tag, "canary");
    assert_string_equal(c.build_key, "build_id");
    assert_int_equal(c.canary_weight, 10);
    assert_true(c.panic_ratio == 0.5);
    assert_string_equal(c.routes, "pathname");
    assert_true(c.reg_enabled);
    assert_int_equal(c.stats_mode, 0600);
    assert_true(agent_conf_health_window(&c) == 5.0);
}

static void test_conf_full(void **state)
{
    static const char text[] =
        "service storefront\n"
        "service checkout backend-stable co_s backend-canary co_c slots-stable s slots-canary *\n"
        "backend stable sf_stable slots st\n"
        "canary-tag preview\ncanary-weight 25\ncanary-weight-key none\npanic-ratio 0.25\n"
        "consul-wait 5s\nconsul-rate 10 100ms\nconsul-retry 100ms 2s\n"
        "haproxy-socket /run/h.sock\ndrain-grace 10s\ndrain-min 1s\nreconcile-interval 3s\n"
        "spoa-socket /run/s.sock\nkey-prefix sf:%{build}:\n"
        "routes /etc/cedra/routes/%{build}.table\n"
        "register edge-agent id e1 port 9102 tags a,b meta zone=x ttl 3s\n"
        "stats-socket /run/a.sock mode 660\nmetrics 127.0.0.1:9102\nlog-level debug\n";
    struct agent_conf c;
    char err[256];

    assert_int_equal(load(text, &c, err, sizeof(err)), 0);
    assert_int_equal(c.nsvc, 2);
    assert_string_equal(c.svc[0].backend[POOL_STABLE], "sf_stable");
    assert_string_equal(c.svc[0].slot_prefix[POOL_STABLE], "st");
    assert_string_equal(c.svc[1].backend[POOL_CANARY], "co_c");
    assert_string_equal(c.svc[1].slot_prefix[POOL_CANARY], "");
    assert_string_equal(c.canary_tag, "preview");
    assert_string_equal(c.canary_weight_key, "");
    assert_int_equal(c.canary_weight, 25);
    assert_true(c.consul_rate_interval == 0.1);
    assert_true(c.interval == 3.0);
    assert_true(agent_conf_health_window(&c) == 9.0);
    assert_string_equal(c.reg_id, "e1");
    assert_int_equal(c.nreg_tags, 2);
    assert_string_equal(c.reg_meta[0][0], "zone");
    assert_string_equal(c.reg_meta[0][1], "x");
    assert_int_equal(c.stats_mode, 0660);
    assert_true(c.has_metrics);
    assert_int_equal(c.log_level, LOG_LVL_DEBUG);
}

static void test_conf_errors(void **state)
{
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"", "no 'service'"},
        {"service a\nservice a\n", "twice"},
        {"service a\nservice b\n", "backend-stable is required"},
        {"service a\nservice b backend-stable storefront_stable backend-canary x\n",
         "used by services"},
        {"service a backend-stable x backend-canary x\n", "must differ"},
        {"service 'a b'\n", "bad service name"},
        {"service a\ncanary-weight 101\n", "canary-weight"},
        {"service a\npanic-ratio -1\n", "panic-ratio"},
        {"service a\nspoa-socket relative.sock\n", "absolute path"},
        {"service a\nspoa-socket /x.sock\n", "key-prefix"},
        {"service a\nkey-prefix a;b\n", "cannot go into a command"},
        {"service a\nroutes /r/%{bild}\n", "unknown %{variable}"},
        {"service a\nregister x ttl 100ms\n", "bad duration"},
        {"service a\nregister x port 70000\n", "bad value"},
        {"service a\nstats-socket /s mode 999\n", "invalid value"},
        {"service a\nmetrics unix:/x\n", "invalid value"},
        {"service a\ndrain-min 5s\ndrain-grace 1s\n", "drain-min"},
        {"service a\nmax-slots 0\n", "max-slots"},
        {"service a\nwhat 1\n", "unknown keyword 'what'"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct agent_conf c;
        char err[256] = "";

        if (load(cases[i].text, &c, err, sizeof(err)) == 0)
            fail_msg("accepted: %s", cases[i].text);
        if (!strstr(err, cases[i].want))
            fail_msg("'%s': got '%s', want '%s'", cases[i].text, err, cases[i].want);
    }
}

static void test_tmpl(void **state)
{
    char out[64];

    assert_int_equal(agent_tmpl_render("sf:%{build}:", "b1", "stable", "s", out, sizeof(out)), 0);
    assert_string_equal(out, "sf:b1:");
    assert_int_equal(agent_tmpl_render("/r/%{service}/%{pool}-%{build}.t%%", "b2", "canary",
                                       "storefront", out, sizeof(out)),
                     0);
    assert_string_equal(out, "/r/storefront/canary-b2.t%");
    assert_int_equal(agent_tmpl_render("%{nope}", "b", "p", "s", out, sizeof(out)), -1);
    assert_int_equal(agent_tmpl_render("%{build", "b", "p", "s", out, sizeof(out)), -1);
    assert_int_equal(agent_tmpl_render("50%", "b", "p", "s", out, sizeof(out)), -1);
    /* A build id with a blank or a separator cannot go into a command. */
    assert_int_equal(agent_tmpl_render("%{build}", "a b", "p", "s", out, sizeof(out)), -1);
    assert_int_equal(agent_tmpl_render("%{build}", "a;b", "p", "s", out, sizeof(out)), -1);
    assert_int_equal(agent_tmpl_render("x%{build}",
                                       "0123456789012345678901234567890123456789"
                                       "0123456789012345678901234567890",
                                       "p", "s", out, sizeof(out)),
                     -1);
    assert_int_equal(agent_tmpl_render("%{build}", "", "p", "s", out, sizeof(out)), -1);
}

static void set_pool(struct spoa_pool_want *p, const char *prefix, const char *build)
{
    memset(p, 0, sizeof(*p));
    p->on = true;
    snprintf(p->key_prefix, sizeof(p->key_prefix), "%s", prefix);
    snprintf(p->routes, sizeof(p->routes), "pathname");
    snprintf(p->build, sizeof(p->build), "%s", build);
}

static void test_spoa_diff(void **state)
{
    struct spoa_want acked, want;
    char cmds[8][512];
    size_t n;

    memset(&want, 0, sizeof(want));
    set_pool(&want.pool[POOL_STABLE], "sf:b1:", "b1");
    want.weight = 10;
    /* Unknown state: stable, and the canary explicitly off. */
    n = spoa_client_diff(NULL, &want, cmds, 8);
    assert_int_equal(n, 2);
    assert_string_equal(cmds[0], "set pool stable key-prefix sf:b1: routes pathname build b1");
    assert_string_equal(cmds[1], "set pool canary off");

    /* A canary appears: its weight first (no moment with a wrong share), then its pool. */
    acked = want;
    set_pool(&want.pool[POOL_CANARY], "sf:b2:", "b2");
    n = spoa_client_diff(&acked, &want, cmds, 8);
    assert_int_equal(n, 2);
    assert_string_equal(cmds[0], "set pool canary weight 10");
    assert_string_equal(cmds[1], "set pool canary key-prefix sf:b2: routes pathname build b2");

    /* Only the weight changes. */
    acked = want;
    want.weight = 40;
    n = spoa_client_diff(&acked, &want, cmds, 8);
    assert_int_equal(n, 1);
    assert_string_equal(cmds[0], "set pool canary weight 40");

    /* Promotion: the stable build changes and the canary leaves. */
    acked = want;
    set_pool(&want.pool[POOL_STABLE], "sf:b2:", "b2");
    memset(&want.pool[POOL_CANARY], 0, sizeof(want.pool[POOL_CANARY]));
    n = spoa_client_diff(&acked, &want, cmds, 8);
    assert_int_equal(n, 2);
    assert_string_equal(cmds[0], "set pool stable key-prefix sf:b2: routes pathname build b2");
    assert_string_equal(cmds[1], "set pool canary off");

    /* In sync: nothing. A weight change without a canary: nothing either. */
    acked = want;
    assert_int_equal(spoa_client_diff(&acked, &want, cmds, 8), 0);
    want.weight = 5;
    assert_int_equal(spoa_client_diff(&acked, &want, cmds, 8), 0);

    /* No build id: no "build" word; a stable pool not known is left alone. */
    memset(&want, 0, sizeof(want));
    set_pool(&want.pool[POOL_CANARY], "sf:", "");
    want.weight = 0;
    n = spoa_client_diff(NULL, &want, cmds, 8);
    assert_int_equal(n, 2);
    assert_string_equal(cmds[0], "set pool canary weight 0");
    assert_string_equal(cmds[1], "set pool canary key-prefix sf: routes pathname");
}

static void test_pool_build(void **state)
{
    struct instance in[5];
    struct pool_set ps = {.inst = in, .n = 5, .canary_weight = -1};
    static const char *const builds[] = {"b1", "b2", "b2", "b1", "b3"};
    static const enum pool_kind kinds[] = {POOL_STABLE, POOL_STABLE, POOL_STABLE, POOL_STABLE,
                                           POOL_CANARY};
    size_t n;

    memset(in, 0, sizeof(in));
    for (int i = 0; i < 5; i++) {
        snprintf(in[i].id, sizeof(in[i].id), "i%d", i);
        snprintf(in[i].build_id, sizeof(in[i].build_id), "%s", builds[i]);
        in[i].kind = kinds[i];
    }
    /* A tie (2 x b1, 2 x b2) goes to the greater id. */
    assert_string_equal(agent_pool_build(&ps, POOL_STABLE, &n), "b2");
    assert_int_equal(n, 4);
    snprintf(in[1].build_id, sizeof(in[1].build_id), "b1");
    assert_string_equal(agent_pool_build(&ps, POOL_STABLE, &n), "b1");
    assert_string_equal(agent_pool_build(&ps, POOL_CANARY, &n), "b3");
    assert_int_equal(n, 1);
    ps.n = 4;
    assert_string_equal(agent_pool_build(&ps, POOL_CANARY, &n), "");
    assert_int_equal(n, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conf_defaults), cmocka_unit_test(test_conf_full),
        cmocka_unit_test(test_conf_errors),   cmocka_unit_test(test_tmpl),
        cmocka_unit_test(test_spoa_diff),     cmocka_unit_test(test_pool_build),
    };

    return cmocka_run_group_tests_name("agent", tests, NULL, NULL);
}
