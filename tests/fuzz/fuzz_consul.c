/* libFuzzer target for agent/instances.c: a Consul /v1/health/service answer
 * (whoever controls Consul, or a man in the middle of plain HTTP, writes it).
 *
 * The input is parsed twice, with the defaults and with small limits and no
 * Meta canary weight. Whatever the bytes, a success must yield a set the rest
 * of the agent can use blindly: at most max_instances entries, every entry
 * accounted for (kept, critical, invalid or duplicate), printable unique IDs,
 * addresses instances_addr_ok() accepts, ports 1..65535, weights 0..256 (0
 * only when warning), sorted by (kind, id); a failure leaves the set empty
 * with a reason. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "instances.h"

static void check(int cond)
{
    if (!cond)
        abort();
}

static void check_str(const char *s, size_t size, int allow_empty)
{
    size_t l = strnlen(s, size);

    check(l < size);
    check(allow_empty || l > 0);
    for (size_t i = 0; i < l; i++)
        check((unsigned char)s[i] > 0x20 && (unsigned char)s[i] < 0x7f);
}

static void check_set(const struct pool_set *ps, const struct instances_report *rep,
                      const struct instances_cfg *cfg, size_t len)
{
    struct pool_set copy;
    char why[256];

    check(ps->index == 0);
    check(ps->n <= cfg->max_instances && rep->entries <= cfg->max_instances);
    check((ps->n == 0) == (ps->inst == NULL));
    check(ps->n + rep->critical + rep->invalid + rep->duplicate == rep->entries);
    /* Each entry is at least "{}," and a kept one far more. */
    check(rep->entries <= len / 2);
    check(rep->invalid == 0 || rep->first_invalid[0] != '\0');
    check(ps->canary_weight >= -1 && ps->canary_weight <= 100);
    if (!cfg->canary_weight_key || !cfg->canary_weight_key[0])
        check(ps->canary_weight == -1 && rep->bad_canary_weight == 0);
    for (size_t i = 0; i < ps->n; i++) {
        const struct instance *in = &ps->inst[i];

        check_str(in->id, sizeof(in->id), 0);
        check_str(in->build_id, sizeof(in->build_id), 1);
        check(strnlen(in->addr, sizeof(in->addr)) < sizeof(in->addr));
        check(instances_addr_ok(in->addr));
        check(in->port >= 1);
        check(in->weight <= 256 && (in->weight >= 1 || in->warning));
        check(in->kind == POOL_STABLE || in->kind == POOL_CANARY);
        if (i > 0) {
            const struct instance *p = &ps->inst[i - 1];

            check(p->kind < in->kind || (p->kind == in->kind && strcmp(p->id, in->id) < 0));
        }
        /* IDs are unique across pools too: a tag flip moves an ID, never copies it. */
        for (size_t j = 0; j < i; j++)
            check(strcmp(ps->inst[j].id, in->id) != 0);
    }
    check(pool_set_count(ps, POOL_STABLE) + pool_set_count(ps, POOL_CANARY) == ps->n);
    check(instances_equal(ps, ps));
    check(pool_set_copy(&copy, ps) == 0 && instances_equal(ps, &copy));
    /* An answer identical to the last one is never a reason to panic. */
    check(instances_accept(ps, &copy, 1.0, why, sizeof(why)));
    pool_set_free(&copy);
}

static void run(const char *s, size_t size, const struct instances_cfg *cfg)
{
    struct pool_set ps;
    struct instances_report rep;
    char err[512] = "";
    int rc;

    rc = instances_parse(s, size, cfg, &ps, &rep, err, sizeof(err));
    check(rc == 0 || rc == -1);
    check(strnlen(err, sizeof(err)) < sizeof(err));
    if (rc == 0)
        check_set(&ps, &rep, cfg, size);
    else
        check(ps.n == 0 && ps.inst == NULL && err[0] != '\0');
    pool_set_free(&ps);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct instances_cfg def, small;

    instances_cfg_defaults(&def);
    small = def;
    small.max_instances = 3;
    small.max_bytes = 16384;
    small.canary_weight_key = "";
    small.canary_tag = "c";
    run((const char *)data, size, &def);
    run((const char *)data, size, &small);
    /* The address check alone, on the raw bytes as a C string. */
    if (size < 128 && memchr(data, '\0', size)) {
        const char *a = (const char *)data;

        if (instances_addr_ok(a)) {
            size_t l = strlen(a);

            check(l > 0 && l < POOL_ADDR_MAX);
            for (size_t i = 0; i < l; i++)
                check(strchr("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:",
                             a[i]) != NULL);
        }
    }
    return 0;
}
