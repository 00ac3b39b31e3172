/* Unit tests of agent/instances.c: Consul health JSON -> pool_set, with
 * well-formed and hostile inputs, and the panic threshold. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "instances.h"
#include "log.h"
#include "pool.h"

/* One health entry as Consul writes it (trimmed to what matters plus a few
 * fields we must ignore). */
static char *entry(const char *id, const char *svc_addr, const char *node_addr, int port,
                   const char *tags_json, const char *meta_json, const char *weights_json,
                   const char *checks_json)
{
    char *s = NULL;
    int n = asprintf(&s,
                     "{\"Node\":{\"ID\":\"x\",\"Node\":\"node-%s\",\"Address\":\"%s\","
                     "\"TaggedAddresses\":{\"lan\":\"%s\"},\"Meta\":{\"a\":\"b\"},"
                     "\"CreateIndex\":5,\"ModifyIndex\":5},"
                     "\"Service\":{\"ID\":\"%s\",\"Service\":\"web\",\"Tags\":%s,"
                     "\"Address\":\"%s\",\"Meta\":%s,\"Port\":%d,\"Weights\":%s,"
                     "\"EnableTagOverride\":false,\"Proxy\":{\"Mode\":\"\",\"MeshGateway\":{},"
                     "\"Expose\":{}},\"Connect\":{},\"CreateIndex\":5,\"ModifyIndex\":5},"
                     "\"Checks\":%s}",
                     id, node_addr, node_addr, id, tags_json, svc_addr, meta_json, port,
                     weights_json, checks_json);

    assert_true(n > 0);
    return s;
}

#define PASSING                                                                                    \
    "[{\"CheckID\":\"serfHealth\",\"Status\":\"passing\"},"                                        \
    "{\"CheckID\":\"service:x\",\"Status\":\"passing\"}]"
#define WEIGHTS "{\"Passing\":1,\"Warning\":1}"

static char *simple(const char *id, const char *addr, int port)
{
    return entry(id, addr, "10.9.9.9", port, "[]", "null", WEIGHTS, PASSING);
}

/* Joins entries (freed) into a JSON array. */
static char *array(int n, ...)
{
    va_list ap;
    size_t cap = 16, len = 1;
    char *out = malloc(cap);

    assert_non_null(out);
    strcpy(out, "[");
    va_start(ap, n);
    for (int i = 0; i < n; i++) {
        char *e = va_arg(ap, char *);
        size_t el = strlen(e);

        while (len + el + 3 > cap)
            cap *= 2;
        out = realloc(out, cap);
        assert_non_null(out);
        if (i)
            out[len++] = ',';
        memcpy(out + len, e, el);
        len += el;
        out[len] = '\0';
        free(e);
    }
    va_end(ap);
    strcpy(out + len, "]");
    return out;
}

struct parsed {
    struct pool_set ps;
    struct instances_report rep;
    char err[256];
    int rc;
};

static void parse_cfg(struct parsed *p, const char *json, const struct instances_cfg *cfg)
{
    memset(p, 0, sizeof(*p));
    p->rc = instances_parse(json, strlen(json), cfg, &p->ps, &p->rep, p->err, sizeof(p->err));
}

static void parse(struct parsed *p, const char *json)
{
    struct instances_cfg cfg;

    instances_cfg_defaults(&cfg);
    parse_cfg(p, json, &cfg);
}

static void expect_reject(const char *json, const char *needle)
{
    struct parsed p;

    parse(&p, json);
    if (p.rc != -1 || !strstr(p.err, needle))
        fail_msg("input %.200s: rc=%d err=\"%s\", wanted error containing \"%s\"", json, p.rc,
                 p.err, needle);
    assert_int_equal(p.ps.n, 0);
    assert_null(p.ps.inst);
    pool_set_free(&p.ps);
}

/* ---- well-formed ----------------------------------------------------------- */

static void test_empty_array(void **state)
{
    struct parsed p;

    parse(&p, "[]");
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.ps.n, 0);
    assert_int_equal(p.ps.canary_weight, -1);
    parse(&p, " \n[ ]\n");
    assert_int_equal(p.rc, 0);
}

static void test_basic_and_sort(void **state)
{
    struct parsed p;
    char *json = array(4, simple("web-3", "10.0.0.3", 8083), simple("web-1", "10.0.0.1", 8081),
                       entry("c-2", "10.0.1.2", "1.1.1.1", 9002, "[\"x\",\"canary\"]",
                             "{\"build_id\":\"b-new\"}", WEIGHTS, PASSING),
                       entry("a-0", "10.0.1.1", "1.1.1.1", 9001, "[\"canary\"]",
                             "{\"build_id\":\"b-new\"}", WEIGHTS, PASSING));

    parse(&p, json);
    free(json);
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.ps.n, 4);
    /* stable first, then canary, each by id */
    assert_string_equal(p.ps.inst[0].id, "web-1");
    assert_int_equal(p.ps.inst[0].kind, POOL_STABLE);
    assert_string_equal(p.ps.inst[0].addr, "10.0.0.1");
    assert_int_equal(p.ps.inst[0].port, 8081);
    assert_int_equal(p.ps.inst[0].weight, 1);
    assert_false(p.ps.inst[0].warning);
    assert_string_equal(p.ps.inst[0].build_id, "");
    assert_string_equal(p.ps.inst[1].id, "web-3");
    assert_string_equal(p.ps.inst[2].id, "a-0");
    assert_int_equal(p.ps.inst[2].kind, POOL_CANARY);
    assert_string_equal(p.ps.inst[2].build_id, "b-new");
    assert_string_equal(p.ps.inst[3].id, "c-2");
    assert_int_equal(p.ps.inst[3].kind, POOL_CANARY);
    assert_int_equal(pool_set_count(&p.ps, POOL_STABLE), 2);
    assert_int_equal(pool_set_count(&p.ps, POOL_CANARY), 2);
    assert_int_equal(p.rep.entries, 4);
    assert_int_equal(p.rep.invalid + p.rep.critical + p.rep.duplicate, 0);
    pool_set_free(&p.ps);
}

static void test_node_address_fallback(void **state)
{
    struct parsed p;
    char *json = array(1, entry("a", "", "192.168.7.8", 80, "[]", "null", WEIGHTS, PASSING));

    parse(&p, json);
    free(json);
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.ps.n, 1);
    assert_string_equal(p.ps.inst[0].addr, "192.168.7.8");
    pool_set_free(&p.ps);

    /* Service.Address absent altogether, IPv6 node address */
    parse(&p, "[{\"Node\":{\"Address\":\"fd00::7\"},\"Service\":{\"ID\":\"a\",\"Port\":1},"
              "\"Checks\":[]}]");
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.ps.n, 1);
    assert_string_equal(p.ps.inst[0].addr, "fd00::7");
    pool_set_free(&p.ps);

    /* a host name is fine too */
    parse(&p, "[{\"Node\":{\"Address\":\"x\"},\"Service\":{\"ID\":\"a\",\"Port\":1,"
              "\"Address\":\"web-1.node.dc1.consul\"},\"Checks\":null}]");
    assert_int_equal(p.rc, 0);
    assert_string_equal(p.ps.inst[0].addr, "web-1.node.dc1.consul");
    pool_set_free(&p.ps);
}

static void test_canary_tag_exact(void **state)
{
    struct parsed p;
    struct instances_cfg cfg;
    char *json =
        array(4, entry("a", "10.0.0.1", "1.1.1.1", 1, "[\"Canary\"]", "null", WEIGHTS, PASSING),
              entry("b", "10.0.0.2", "1.1.1.1", 1, "[\"canary-1\"]", "null", WEIGHTS, PASSING),
              entry("c", "10.0.0.3", "1.1.1.1", 1, "[\" canary\"]", "null", WEIGHTS, PASSING),
              entry("d", "10.0.0.4", "1.1.1.1", 1, "[\"v2\",\"blue\"]", "null", WEIGHTS, PASSING));

    parse(&p, json);
    assert_int_equal(p.rc, 0);
    assert_int_equal(pool_set_count(&p.ps, POOL_CANARY), 0);
    pool_set_free(&p.ps);

    instances_cfg_defaults(&cfg);
    cfg.canary_tag = "blue";
    parse_cfg(&p, json, &cfg);
    assert_int_equal(p.rc, 0);
    assert_int_equal(pool_set_count(&p.ps, POOL_CANARY), 1);
    assert_string_equal(p.ps.inst[3].id, "d");
    assert_int_equal(p.ps.inst[3].kind, POOL_CANARY);
    pool_set_free(&p.ps);

    cfg.canary_tag = ""; /* no canary tag: everything stable */
    parse_cfg(&p, json, &cfg);
    assert_int_equal(pool_set_count(&p.ps, POOL_CANARY), 0);
    pool_set_free(&p.ps);
    free(json);
}

static void test_weights(void **state)
{
    struct parsed p;
    char *json =
        array(5,
              entry("a", "10.0.0.1", "1.1.1.1", 1, "[]", "null", "{\"Passing\":10,\"Warning\":1}",
                    PASSING),
              entry("b", "10.0.0.2", "1.1.1.1", 1, "[]", "null", "{\"Passing\":1000,\"Warning\":2}",
                    PASSING),
              entry("c", "10.0.0.3", "1.1.1.1", 1, "[]", "null", "{\"Passing\":10,\"Warning\":3}",
                    "[{\"Status\":\"passing\"},{\"Status\":\"warning\"}]"),
              entry("d", "10.0.0.4", "1.1.1.1", 1, "[]", "null", "{\"Passing\":10,\"Warning\":0}",
                    "[{\"Status\":\"warning\"}]"),
              entry("e", "10.0.0.5", "1.1.1.1", 1, "[]", "null", "null", PASSING));

    parse(&p, json);
    free(json);
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.ps.n, 5);
    assert_int_equal(p.ps.inst[0].weight, 10);
    assert_int_equal(p.ps.inst[1].weight, 256); /* clamped */
    assert_int_equal(p.ps.inst[2].weight, 3);   /* warning -> Weights.Warning */
    assert_true(p.ps.inst[2].warning);
    assert_int_equal(p.ps.inst[3].weight, 0); /* Warning 0: kept, no new traffic */
    assert_true(p.ps.inst[3].warning);
    assert_int_equal(p.ps.inst[4].weight, 1); /* Weights null: Consul's default */
    pool_set_free(&p.ps);

    assert_int_equal(instances_map_weight(1, false), 1);
    assert_int_equal(instances_map_weight(0, false), 1);
    assert_int_equal(instances_map_weight(-5, true), 0);
    assert_int_equal(instances_map_weight(256, false), 256);
    assert_int_equal(instances_map_weight(257, false), 256);
    assert_int_equal(instances_map_weight(1LL << 40, true), 256);
}

static void test_checks_critical_dropped(void **state)
{
    struct parsed p;
    char *json = array(5, simple("ok", "10.0.0.1", 1),
                       entry("crit", "10.0.0.2", "1.1.1.1", 1, "[]", "null", WEIGHTS,
                             "[{\"Status\":\"passing\"},{\"Status\":\"critical\"}]"),
                       entry("maint", "10.0.0.3", "1.1.1.1", 1, "[]", "null", WEIGHTS,
                             "[{\"Status\":\"maintenance\"}]"),
                       entry("nostatus", "10.0.0.4", "1.1.1.1", 1, "[]", "null", WEIGHTS, "[{}]"),
                       entry("upper", "10.0.0.5", "1.1.1.1", 1, "[]", "null", WEIGHTS,
                             "[{\"Status\":\"PASSING\"}]"));

    parse(&p, json);
    free(json);
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.ps.n, 1);
    assert_string_equal(p.ps.inst[0].id, "ok");
    assert_int_equal(p.rep.critical, 4);
    pool_set_free(&p.ps);
}

static void test_build_id(void **state)
{
    struct parsed p;
    struct instances_cfg cfg;
    char long_build[100];
    char *json;

    memset(long_build, 'b', 70);
    long_build[70] = '\0';
    char meta_long[200];
    snprintf(meta_long, sizeof(meta_long), "{\"build_id\":\"%s\"}", long_build);
    json = array(
        4,
        entry("a", "10.0.0.1", "1.1.1.1", 1, "[]", "{\"build_id\":\"abc123\"}", WEIGHTS, PASSING),
        entry("b", "10.0.0.2", "1.1.1.1", 1, "[]", meta_long, WEIGHTS, PASSING),
        entry("c", "10.0.0.3", "1.1.1.1", 1, "[]", "{\"build_id\":\"a b\"}", WEIGHTS, PASSING),
        entry("d", "10.0.0.4", "1.1.1.1", 1, "[]", "{\"release\":\"r7\"}", WEIGHTS, PASSING));
    parse(&p, json);
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.ps.n, 2);
    assert_string_equal(p.ps.inst[0].build_id, "abc123");
    assert_string_equal(p.ps.inst[1].id, "d");
    assert_string_equal(p.ps.inst[1].build_id, "");
    assert_int_equal(p.rep.invalid, 2);
    assert_non_null(strstr(p.rep.first_invalid, "build id"));
    pool_set_free(&p.ps);

    instances_cfg_defaults(&cfg);
    cfg.build_key = "release";
    parse_cfg(&p, json, &cfg);
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.ps.n, 4);
    assert_string_equal(p.ps.inst[3].build_id, "r7");
    assert_string_equal(p.ps.inst[0].build_id, "");
    pool_set_free(&p.ps);
    free(json);
}

static void test_canary_weight(void **state)
{
    struct parsed p;
    char *json;

    /* canary's value wins over stable's */
    json = array(
        3,
        entry("s", "10.0.0.1", "1.1.1.1", 1, "[]", "{\"canary_weight\":\"50\"}", WEIGHTS, PASSING),
        entry("c2", "10.0.0.3", "1.1.1.1", 1, "[\"canary\"]", "{\"canary_weight\":\"30\"}", WEIGHTS,
              PASSING),
        entry("c1", "10.0.0.2", "1.1.1.1", 1, "[\"canary\"]", "{\"canary_weight\":\"20\"}", WEIGHTS,
              PASSING));
    parse(&p, json);
    free(json);
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.ps.canary_weight, 20); /* first canary by id */
    pool_set_free(&p.ps);

    /* only stable has it */
    json = array(
        2,
        entry("s", "10.0.0.1", "1.1.1.1", 1, "[]", "{\"canary_weight\":\"0\"}", WEIGHTS, PASSING),
        entry("c", "10.0.0.2", "1.1.1.1", 1, "[\"canary\"]", "null", WEIGHTS, PASSING));
    parse(&p, json);
    free(json);
    assert_int_equal(p.ps.canary_weight, 0);
    pool_set_free(&p.ps);

    /* invalid values are ignored and counted */
    json = array(
        4,
        entry("a", "10.0.0.1", "1.1.1.1", 1, "[]", "{\"canary_weight\":\"101\"}", WEIGHTS, PASSING),
        entry("b", "10.0.0.2", "1.1.1.1", 1, "[]", "{\"canary_weight\":\"-1\"}", WEIGHTS, PASSING),
        entry("c", "10.0.0.3", "1.1.1.1", 1, "[]", "{\"canary_weight\":\"5%\"}", WEIGHTS, PASSING),
        entry("d", "10.0.0.4", "1.1.1.1", 1, "[]", "{\"canary_weight\":\"\"}", WEIGHTS, PASSING));
    parse(&p, json);
    free(json);
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.ps.n, 4);
    assert_int_equal(p.ps.canary_weight, -1);
    assert_int_equal(p.rep.bad_canary_weight, 4);
    pool_set_free(&p.ps);
}

static void test_duplicates(void **state)
{
    struct parsed p;
    char *json = array(3, simple("a", "10.0.0.1", 1), simple("a", "10.0.0.2", 2),
                       simple("b", "10.0.0.3", 3));

    parse(&p, json);
    free(json);
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.ps.n, 2);
    assert_string_equal(p.ps.inst[0].addr, "10.0.0.1"); /* the first one is kept */
    assert_int_equal(p.rep.duplicate, 1);
    pool_set_free(&p.ps);
}

/* ---- unusable entries: dropped, counted ----------------------------------- */

static void test_invalid_entries_dropped(void **state)
{
    static const struct {
        const char *addr;
        int port;
        const char *why;
    } bad[] = {
        {"10.0.0.1 ", 80, "address"},
        {"10.0.0.1\\n", 80, "address"},
        {"evil\\u0001host", 80, "address"},
        {"h\\u00e9llo", 80, "address"},
        {"a..b", 80, "address"},
        {"-a.b", 80, "address"},
        {"a-.b", 80, "address"},
        {"999.1.1.1", 80, "address"},
        {"[::1]", 80, "address"},
        {"10.0.0.1:80", 80, "address"},
        {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.b", 80,
         "address"},
        {"10.0.0.1", 0, "port"},
        {"10.0.0.1", 65536, "port"},
        {"10.0.0.1", -1, "port"},
    };
    struct parsed p;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *json =
            array(2, simple("good", "10.0.0.9", 9), simple("bad", bad[i].addr, bad[i].port));

        parse(&p, json);
        if (p.rc != 0 || p.ps.n != 1 || p.rep.invalid != 1 ||
            !strstr(p.rep.first_invalid, bad[i].why))
            fail_msg("case %zu (%s): rc=%d n=%zu invalid=%zu first=%s err=%s", i, bad[i].addr, p.rc,
                     p.ps.n, p.rep.invalid, p.rep.first_invalid, p.err);
        assert_string_equal(p.ps.inst[0].id, "good");
        pool_set_free(&p.ps);
        free(json);
    }

    /* empty service and node address */
    parse(&p, "[{\"Node\":{\"Address\":\"\"},\"Service\":{\"ID\":\"a\",\"Port\":1}}]");
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.ps.n, 0);
    assert_int_equal(p.rep.invalid, 1);
    /* no Node at all */
    parse(&p, "[{\"Service\":{\"ID\":\"a\",\"Port\":1}}]");
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.rep.invalid, 1);
    /* IDs: empty, with a space, with a control char, too long */
    parse(&p, "[{\"Service\":{\"ID\":\"\",\"Port\":1,\"Address\":\"1.2.3.4\"}},"
              "{\"Service\":{\"ID\":\"a b\",\"Port\":1,\"Address\":\"1.2.3.4\"}},"
              "{\"Service\":{\"ID\":\"a\\tb\",\"Port\":1,\"Address\":\"1.2.3.4\"}}]");
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.ps.n, 0);
    assert_int_equal(p.rep.invalid, 3);
    {
        char id[200], json[400];

        memset(id, 'i', 128);
        id[128] = '\0';
        snprintf(json, sizeof(json),
                 "[{\"Service\":{\"ID\":\"%s\",\"Port\":1,\"Address\":\"1.2.3.4\"}}]", id);
        parse(&p, json);
        assert_int_equal(p.rc, 0);
        assert_int_equal(p.rep.invalid, 1);
        id[127] = '\0'; /* 127 fits */
        snprintf(json, sizeof(json),
                 "[{\"Service\":{\"ID\":\"%s\",\"Port\":1,\"Address\":\"1.2.3.4\"}}]", id);
        parse(&p, json);
        assert_int_equal(p.ps.n, 1);
        pool_set_free(&p.ps);
    }
    /* Weights out of Consul's range */
    parse(&p, "[{\"Service\":{\"ID\":\"a\",\"Port\":1,\"Address\":\"1.2.3.4\","
              "\"Weights\":{\"Passing\":0,\"Warning\":1}}}]");
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.rep.invalid, 1);
}

/* ---- hostile or malformed answers: rejected as a whole -------------------- */

static void test_reject_not_array(void **state)
{
    expect_reject("{}", "expected a JSON array");
    expect_reject("null", "expected a JSON array");
    expect_reject("\"[]\"", "expected a JSON array");
    expect_reject("42", "expected a JSON array");
    expect_reject("", "invalid JSON");
    expect_reject("[", "invalid JSON");
    expect_reject("[{\"Node\": {\"Node\": \"x\",", "invalid JSON");
    expect_reject("[] []", "invalid JSON");
    expect_reject("[1]", "expected an object");
    expect_reject("[null]", "expected an object");
    expect_reject("[[]]", "expected an object");
}

static void test_reject_wrong_types(void **state)
{
    expect_reject("[{\"Node\":{},\"Checks\":[]}]", "no Service");
    expect_reject("[{\"Service\":[]}]", "Service: expected an object");
    expect_reject("[{\"Service\":{\"Port\":1}}]", "Service.ID missing");
    expect_reject("[{\"Service\":{\"ID\":7,\"Port\":1}}]", "Service.ID: expected a string");
    expect_reject("[{\"Service\":{\"ID\":\"a\",\"Port\":\"80\"}}]",
                  "Service.Port: expected an integer");
    expect_reject("[{\"Service\":{\"ID\":\"a\",\"Port\":80.5}}]",
                  "Service.Port: expected an integer");
    expect_reject("[{\"Service\":{\"ID\":\"a\",\"Port\":true}}]",
                  "Service.Port: expected an integer");
    expect_reject("[{\"Service\":{\"ID\":\"a\",\"Port\":1,\"Address\":5}}]",
                  "Service.Address: expected a string");
    expect_reject("[{\"Node\":{\"Address\":[]},\"Service\":{\"ID\":\"a\",\"Port\":1}}]",
                  "Node.Address: expected a string");
    expect_reject("[{\"Node\":\"n\",\"Service\":{\"ID\":\"a\",\"Port\":1}}]",
                  "Node: expected an object");
    expect_reject("[{\"Service\":{\"ID\":\"a\",\"Port\":1,\"Tags\":\"canary\"}}]",
                  "Service.Tags: expected an array");
    expect_reject("[{\"Service\":{\"ID\":\"a\",\"Port\":1,\"Tags\":[1]}}]",
                  "Service.Tags[0]: expected a string");
    expect_reject("[{\"Service\":{\"ID\":\"a\",\"Port\":1,\"Meta\":[]}}]",
                  "Service.Meta: expected an object");
    expect_reject("[{\"Service\":{\"ID\":\"a\",\"Port\":1,\"Meta\":{\"build_id\":1}}}]",
                  "not a string");
    expect_reject("[{\"Service\":{\"ID\":\"a\",\"Port\":1,\"Weights\":[1,1]}}]",
                  "Service.Weights: expected an object");
    expect_reject("[{\"Service\":{\"ID\":\"a\",\"Port\":1,\"Weights\":{\"Passing\":\"1\"}}}]",
                  "Weights.Passing: expected an integer");
    expect_reject("[{\"Service\":{\"ID\":\"a\",\"Port\":1},\"Checks\":{}}]",
                  "Checks: expected an array");
    expect_reject("[{\"Service\":{\"ID\":\"a\",\"Port\":1},\"Checks\":[\"passing\"]}]",
                  "Checks[0]: expected an object");
    expect_reject("[{\"Service\":{\"ID\":\"a\",\"Port\":1},\"Checks\":[{\"Status\":1}]}]",
                  "Status: expected a string");
    /* a type error in a later entry rejects everything, even a critical one */
    expect_reject("[{\"Service\":{\"ID\":\"a\",\"Port\":1,\"Address\":\"1.2.3.4\"}},"
                  "{\"Service\":{\"ID\":\"b\",\"Port\":\"x\"},\"Checks\":[{\"Status\":"
                  "\"critical\"}]}]",
                  "entry 1: Service.Port");
}

static void test_reject_hostile_encoding(void **state)
{
    /* duplicate keys: which Port did Consul mean? */
    expect_reject("[{\"Service\":{\"ID\":\"a\",\"Port\":1,\"Port\":2}}]", "invalid JSON");
    /* embedded NUL in a string */
    expect_reject("[{\"Service\":{\"ID\":\"a\\u0000b\",\"Port\":1}}]", "invalid JSON");
    /* invalid UTF-8 */
    expect_reject("[{\"Service\":{\"ID\":\"a\xff\",\"Port\":1}}]", "invalid JSON");
    /* overlong integer */
    expect_reject("[{\"Service\":{\"ID\":\"a\",\"Port\":99999999999999999999999}}]",
                  "invalid JSON");
    /* trailing garbage */
    expect_reject("[]x", "invalid JSON");
}

static void test_reject_absurd_sizes(void **state)
{
    struct instances_cfg cfg;
    struct pool_set ps;
    char err[256];
    size_t n = 5000, len = 0;
    char *big = malloc(n * 40 + 16);

    /* too many entries */
    instances_cfg_defaults(&cfg);
    cfg.max_instances = 3;
    assert_int_equal(instances_parse("[{},{},{},{}]", 13, &cfg, &ps, NULL, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "more than 3"));
    /* too many containers for the instance budget, before jansson builds them */
    big[len++] = '[';
    for (size_t i = 0; i < n; i++)
        len += (size_t)sprintf(big + len, "%s[[]]", i ? "," : "");
    big[len++] = ']';
    assert_int_equal(instances_parse(big, len, &cfg, &ps, NULL, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "objects/arrays"));
    /* deep nesting */
    len = 0;
    for (size_t i = 0; i < 4000; i++)
        big[len++] = '[';
    for (size_t i = 0; i < 4000; i++)
        big[len++] = ']';
    instances_cfg_defaults(&cfg);
    assert_int_equal(instances_parse(big, len, &cfg, &ps, NULL, err, sizeof(err)), -1);
    /* byte bound */
    cfg.max_bytes = 10;
    assert_int_equal(instances_parse("[         ]", 11, &cfg, &ps, NULL, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "more than 10"));
    free(big);

    /* too many tags, meta keys, checks; over-long tag and meta value */
    {
        size_t cap = 1 << 20;
        char *s = malloc(cap);
        size_t o;

        o = (size_t)sprintf(s, "[{\"Service\":{\"ID\":\"a\",\"Port\":1,\"Tags\":[");
        for (int i = 0; i < 1100; i++)
            o += (size_t)sprintf(s + o, "%s\"t%d\"", i ? "," : "", i);
        strcpy(s + o, "]}}]");
        expect_reject(s, "more than 1024");

        o = (size_t)sprintf(s, "[{\"Service\":{\"ID\":\"a\",\"Port\":1,\"Meta\":{");
        for (int i = 0; i < 65; i++)
            o += (size_t)sprintf(s + o, "%s\"k%d\":\"v\"", i ? "," : "", i);
        strcpy(s + o, "}}}]");
        expect_reject(s, "more than 64");

        o = (size_t)sprintf(s, "[{\"Service\":{\"ID\":\"a\",\"Port\":1,\"Tags\":[\"");
        memset(s + o, 't', 5000);
        o += 5000;
        strcpy(s + o, "\"]}}]");
        expect_reject(s, "longer than 4096");

        o = (size_t)sprintf(s, "[{\"Service\":{\"ID\":\"a\",\"Port\":1,\"Meta\":{\"k\":\"");
        memset(s + o, 'v', 600);
        o += 600;
        strcpy(s + o, "\"}}}]");
        expect_reject(s, "value longer than 512");

        o = (size_t)sprintf(s, "[{\"Service\":{\"ID\":\"a\",\"Port\":1},\"Checks\":[");
        for (int i = 0; i < 1100; i++)
            o += (size_t)sprintf(s + o, "%s{\"Status\":\"passing\"}", i ? "," : "");
        strcpy(s + o, "]}]");
        expect_reject(s, "1100 checks, more than 1024");
        free(s);
    }
}

static void test_addr_ok(void **state)
{
    assert_true(instances_addr_ok("127.0.0.1"));
    assert_true(instances_addr_ok("::1"));
    assert_true(instances_addr_ok("2001:db8::42"));
    assert_true(instances_addr_ok("localhost"));
    assert_true(instances_addr_ok("a-b.c-d.example"));
    assert_true(instances_addr_ok("1host"));
    assert_false(instances_addr_ok(""));
    assert_false(instances_addr_ok("1.2.3"));
    assert_false(instances_addr_ok("1.2.3.4.5"));
    assert_false(instances_addr_ok("under_score"));
    assert_false(instances_addr_ok("host."));
    assert_false(instances_addr_ok("a/b"));
}

/* ---- equality and the panic threshold ------------------------------------- */

static void make_set(struct pool_set *ps, size_t stable, size_t canary)
{
    pool_set_init(ps);
    ps->n = stable + canary;
    ps->inst = calloc(ps->n ? ps->n : 1, sizeof(*ps->inst));
    assert_non_null(ps->inst);
    for (size_t i = 0; i < ps->n; i++) {
        snprintf(ps->inst[i].id, sizeof(ps->inst[i].id), "i%zu", i);
        strcpy(ps->inst[i].addr, "10.0.0.1");
        ps->inst[i].port = (uint16_t)(1000 + i);
        ps->inst[i].weight = 1;
        ps->inst[i].kind = i < stable ? POOL_STABLE : POOL_CANARY;
    }
}

static void test_equal(void **state)
{
    struct pool_set a, b;

    make_set(&a, 3, 1);
    assert_int_equal(pool_set_copy(&b, &a), 0);
    b.index = 99;
    assert_true(instances_equal(&a, &b));
    b.inst[1].weight = 2;
    assert_false(instances_equal(&a, &b));
    b.inst[1].weight = 1;
    b.inst[3].kind = POOL_STABLE; /* promotion in place */
    assert_false(instances_equal(&a, &b));
    b.inst[3].kind = POOL_CANARY;
    b.canary_weight = 10;
    assert_false(instances_equal(&a, &b));
    pool_set_free(&a);
    pool_set_free(&b);
}

static void test_accept(void **state)
{
    struct pool_set prev, next, empty;
    char why[128];

    pool_set_init(&empty);
    make_set(&prev, 10, 2);

    /* nothing before: anything goes, even empty */
    assert_true(instances_accept(NULL, &empty, 0.5, why, sizeof(why)));
    assert_true(instances_accept(&empty, &empty, 0.5, why, sizeof(why)));
    assert_true(instances_accept(&empty, &prev, 0.5, why, sizeof(why)));

    /* empty answer: refused whatever the ratio */
    assert_false(instances_accept(&prev, &empty, 0.0, why, sizeof(why)));
    assert_non_null(strstr(why, "empty answer"));

    /* stable pool halves: 5 is not fewer than 0.5 x 10 */
    make_set(&next, 5, 2);
    assert_true(instances_accept(&prev, &next, 0.5, why, sizeof(why)));
    assert_string_equal(why, "");
    pool_set_free(&next);

    /* 4 of 10 stable: refused */
    make_set(&next, 4, 8);
    assert_false(instances_accept(&prev, &next, 0.5, why, sizeof(why)));
    assert_non_null(strstr(why, "stable pool"));
    pool_set_free(&next);

    /* collapse */
    make_set(&next, 1, 0);
    assert_false(instances_accept(&prev, &next, 0.5, why, sizeof(why)));
    assert_non_null(strstr(why, "fewer than"));
    assert_true(instances_accept(&prev, &next, 0.0, why, sizeof(why))); /* threshold off */
    pool_set_free(&next);

    /* canary-only service: the canary pool is protected too */
    {
        struct pool_set conly;

        make_set(&conly, 0, 10);
        make_set(&next, 0, 3);
        assert_false(instances_accept(&conly, &next, 0.5, why, sizeof(why)));
        assert_non_null(strstr(why, "canary pool"));
        pool_set_free(&next);
        make_set(&next, 0, 5);
        assert_true(instances_accept(&conly, &next, 0.5, why, sizeof(why)));
        pool_set_free(&next);
        pool_set_free(&conly);
    }

    /* canary reverted (2 -> 0): accepted, stable is intact */
    make_set(&next, 10, 0);
    assert_true(instances_accept(&prev, &next, 0.9, why, sizeof(why)));
    pool_set_free(&next);

    /* ratio clamped: > 1 acts as 1, NaN as 0 */
    make_set(&next, 9, 2);
    assert_false(instances_accept(&prev, &next, 7.0, why, sizeof(why)));
    assert_true(instances_accept(&prev, &next, 0.0 / 0.0, why, sizeof(why)));
    pool_set_free(&next);

    /* growing is always fine */
    make_set(&next, 20, 4);
    assert_true(instances_accept(&prev, &next, 1.0, why, sizeof(why)));
    pool_set_free(&next);
    pool_set_free(&prev);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_array),
        cmocka_unit_test(test_basic_and_sort),
        cmocka_unit_test(test_node_address_fallback),
        cmocka_unit_test(test_canary_tag_exact),
        cmocka_unit_test(test_weights),
        cmocka_unit_test(test_checks_critical_dropped),
        cmocka_unit_test(test_build_id),
        cmocka_unit_test(test_canary_weight),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_invalid_entries_dropped),
        cmocka_unit_test(test_reject_not_array),
        cmocka_unit_test(test_reject_wrong_types),
        cmocka_unit_test(test_reject_hostile_encoding),
        cmocka_unit_test(test_reject_absurd_sizes),
        cmocka_unit_test(test_addr_ok),
        cmocka_unit_test(test_equal),
        cmocka_unit_test(test_accept),
    };

    log_set_level(LOG_LVL_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
