/* Consul health JSON -> pool_set. See instances.h for the policy: type errors
 * reject the answer, unusable entries are dropped and counted. */
#include "instances.h"

#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Sanity bounds on what one entry may carry. Consul's own limits are 64 Meta
 * pairs, 128-byte keys and 512-byte values; tags and checks are unbounded
 * there, so ours are generous and only stop absurd answers. */
#define TAGS_MAX 1024
#define TAG_LEN_MAX 4096
#define CHECKS_MAX 1024
#define META_MAX 64
#define META_KEY_MAX 128
#define META_VAL_MAX 512
/* Containers ([ or {) allowed per entry before jansson builds the tree: a real
 * entry has about 15 plus 3 per check. This bounds memory on hostile input. */
#define CONTAINERS_PER_ENTRY 128
#define WEIGHT_MAX 256

void instances_cfg_defaults(struct instances_cfg *cfg)
{
    cfg->canary_tag = "canary";
    cfg->build_key = "build_id";
    cfg->canary_weight_key = "canary_weight";
    cfg->max_instances = INSTANCES_MAX_DEFAULT;
    cfg->max_bytes = INSTANCES_BYTES_DEFAULT;
}

static bool printable(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return false;
    return true;
}

static bool host_name_ok(const char *s, size_t len)
{
    size_t label = 0;
    bool all_numeric = true;

    if (len == 0 || len > 253)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (c == '.') {
            if (label == 0 || s[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        if (c == '-') {
            if (label == 0)
                return false;
        } else if (c >= '0' && c <= '9') {
            /* digits are fine anywhere */
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
            all_numeric = false;
        } else {
            return false;
        }
        if (c == '-')
            all_numeric = false;
        if (++label > 63)
            return false;
    }
    if (label == 0 || s[len - 1] == '-')
        return false;
    /* "999.1.2.3" is neither a valid IP nor a name anyone meant. */
    return !all_numeric;
}

bool instances_addr_ok(const char *s)
{
    unsigned char buf[sizeof(struct in6_addr)];
    size_t len = strlen(s);

    if (len == 0 || len >= POOL_ADDR_MAX)
        return false;
    if (inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1)
        return true;
    return host_name_ok(s, len);
}

unsigned instances_map_weight(long long w, bool warning)
{
    long long lo = warning ? 0 : 1;

    /* HAProxy's range is 0..256 and Consul's default weight is 1, which is
     * also HAProxy's: keep the numbers as they are and clamp, so that relative
     * weights set in Consul keep their meaning up to 256. */
    if (w < lo)
        return (unsigned)lo;
    if (w > WEIGHT_MAX)
        return WEIGHT_MAX;
    return (unsigned)w;
}

/* ---- typed field access: absent and null are "missing", anything else must
 * have the expected type ---------------------------------------------------- */

struct ctx {
    const struct instances_cfg *cfg;
    struct instances_report *rep;
    char *err;
    size_t errlen;
    size_t entry;
};

/* Returns 1 found (string in *out), 0 missing, -1 wrong type. */
static int get_str(struct ctx *c, json_t *obj, const char *obj_name, const char *key,
                   const char **out, size_t *outlen, size_t maxlen)
{
    json_t *v = json_object_get(obj, key);

    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v)) {
        str_errf(c->err, c->errlen, "entry %zu: %s.%s: expected a string", c->entry, obj_name, key);
        return -1;
    }
    *out = json_string_value(v);
    *outlen = json_string_length(v);
    if (*outlen > maxlen) {
        str_errf(c->err, c->errlen, "entry %zu: %s.%s: %zu bytes, more than %zu", c->entry,
                 obj_name, key, *outlen, maxlen);
        return -1;
    }
    return 1;
}

static int get_int(struct ctx *c, json_t *obj, const char *obj_name, const char *key,
                   long long *out)
{
    json_t *v = json_object_get(obj, key);

    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v)) {
        str_errf(c->err, c->errlen, "entry %zu: %s.%s: expected an integer", c->entry, obj_name,
                 key);
        return -1;
    }
    *out = (long long)json_integer_value(v);
    return 1;
}

/* Returns the object, NULL when missing/null, or (json_t *)-1 on wrong type. */
#define WRONG_TYPE ((json_t *)(intptr_t)-1)

static json_t *get_typed(struct ctx *c, json_t *obj, const char *obj_name, const char *key,
                         bool want_array)
{
    json_t *v = json_object_get(obj, key);

    if (!v || json_is_null(v))
        return NULL;
    if (want_array ? !json_is_array(v) : !json_is_object(v)) {
        str_errf(c->err, c->errlen, "entry %zu: %s.%s: expected %s", c->entry, obj_name, key,
                 want_array ? "an array" : "an object");
        return WRONG_TYPE;
    }
    return v;
}

static void drop_invalid(struct ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void drop_invalid(struct ctx *c, const char *fmt, ...)
{
    va_list ap;

    c->rep->invalid++;
    if (c->rep->first_invalid[0])
        return;
    int n = snprintf(c->rep->first_invalid, sizeof(c->rep->first_invalid), "entry %zu: ", c->entry);
    if (n < 0 || (size_t)n >= sizeof(c->rep->first_invalid))
        return;
    va_start(ap, fmt);
    vsnprintf(c->rep->first_invalid + n, sizeof(c->rep->first_invalid) - (size_t)n, fmt, ap);
    va_end(ap);
}

/* Validates Service.Meta: an object of strings within Consul's limits. */
static int check_meta(struct ctx *c, json_t *meta)
{
    const char *k;
    json_t *v;

    if (json_object_size(meta) > META_MAX) {
        str_errf(c->err, c->errlen, "entry %zu: Service.Meta: %zu keys, more than %d", c->entry,
                 json_object_size(meta), META_MAX);
        return -1;
    }
    json_object_foreach(meta, k, v)
    {
        if (strlen(k) > META_KEY_MAX) {
            str_errf(c->err, c->errlen, "entry %zu: Service.Meta: key longer than %d", c->entry,
                     META_KEY_MAX);
            return -1;
        }
        if (!json_is_string(v)) {
            str_errf(c->err, c->errlen, "entry %zu: Service.Meta: value of a key is not a string",
                     c->entry);
            return -1;
        }
        if (json_string_length(v) > META_VAL_MAX) {
            str_errf(c->err, c->errlen, "entry %zu: Service.Meta: value longer than %d", c->entry,
                     META_VAL_MAX);
            return -1;
        }
    }
    return 0;
}

/* "0".."100", decimal digits only. */
static int parse_percent(const char *s, size_t len)
{
    int v = 0;

    if (len == 0 || len > 3)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= 100 ? v : -1;
}

enum entry_res { ENTRY_ERR = -1, ENTRY_KEEP = 0, ENTRY_DROP = 1 };

/* Fills *in from one array element. *cw gets the canary weight from Meta
 * (-1 when absent or invalid). */
static enum entry_res parse_entry(struct ctx *c, json_t *e, struct instance *in, int *cw)
{
    json_t *node, *svc, *checks, *tags, *meta, *weights;
    const char *id, *addr = "", *naddr = "", *s;
    size_t id_len, addr_len = 0, naddr_len = 0, slen;
    long long port = 0, wpass = 1, wwarn = 1;
    bool warning = false, critical = false;
    int r;

    *cw = -1;
    if (!json_is_object(e)) {
        str_errf(c->err, c->errlen, "entry %zu: expected an object", c->entry);
        return ENTRY_ERR;
    }
    node = get_typed(c, e, "entry", "Node", false);
    svc = get_typed(c, e, "entry", "Service", false);
    checks = get_typed(c, e, "entry", "Checks", true);
    if (node == WRONG_TYPE || svc == WRONG_TYPE || checks == WRONG_TYPE)
        return ENTRY_ERR;
    if (!svc) {
        str_errf(c->err, c->errlen, "entry %zu: no Service object", c->entry);
        return ENTRY_ERR;
    }

    /* Types first, over everything we read: a type error rejects the answer
     * even when the entry would have been dropped for another reason. */
    r = get_str(c, svc, "Service", "ID", &id, &id_len, TAG_LEN_MAX);
    if (r < 0)
        return ENTRY_ERR;
    if (r == 0) {
        str_errf(c->err, c->errlen, "entry %zu: Service.ID missing", c->entry);
        return ENTRY_ERR;
    }
    if (get_str(c, svc, "Service", "Address", &addr, &addr_len, TAG_LEN_MAX) < 0)
        return ENTRY_ERR;
    if (node && get_str(c, node, "Node", "Address", &naddr, &naddr_len, TAG_LEN_MAX) < 0)
        return ENTRY_ERR;
    if (get_int(c, svc, "Service", "Port", &port) < 0)
        return ENTRY_ERR;
    tags = get_typed(c, svc, "Service", "Tags", true);
    meta = get_typed(c, svc, "Service", "Meta", false);
    weights = get_typed(c, svc, "Service", "Weights", false);
    if (tags == WRONG_TYPE || meta == WRONG_TYPE || weights == WRONG_TYPE)
        return ENTRY_ERR;
    if (weights && (get_int(c, weights, "Service.Weights", "Passing", &wpass) < 0 ||
                    get_int(c, weights, "Service.Weights", "Warning", &wwarn) < 0))
        return ENTRY_ERR;
    if (meta && check_meta(c, meta) < 0)
        return ENTRY_ERR;

    memset(in, 0, sizeof(*in));
    in->kind = POOL_STABLE;
    if (tags) {
        size_t i;
        json_t *t;

        if (json_array_size(tags) > TAGS_MAX) {
            str_errf(c->err, c->errlen, "entry %zu: Service.Tags: %zu tags, more than %d", c->entry,
                     json_array_size(tags), TAGS_MAX);
            return ENTRY_ERR;
        }
        json_array_foreach(tags, i, t)
        {
            if (!json_is_string(t)) {
                str_errf(c->err, c->errlen, "entry %zu: Service.Tags[%zu]: expected a string",
                         c->entry, i);
                return ENTRY_ERR;
            }
            if (json_string_length(t) > TAG_LEN_MAX) {
                str_errf(c->err, c->errlen, "entry %zu: Service.Tags[%zu]: longer than %d",
                         c->entry, i, TAG_LEN_MAX);
                return ENTRY_ERR;
            }
            /* Exact match, as Nomad writes canary_tags: no case folding. */
            if (c->cfg->canary_tag && c->cfg->canary_tag[0] &&
                strcmp(json_string_value(t), c->cfg->canary_tag) == 0)
                in->kind = POOL_CANARY;
        }
    }
    if (checks) {
        size_t i;
        json_t *ck;

        if (json_array_size(checks) > CHECKS_MAX) {
            str_errf(c->err, c->errlen, "entry %zu: Checks: %zu checks, more than %d", c->entry,
                     json_array_size(checks), CHECKS_MAX);
            return ENTRY_ERR;
        }
        json_array_foreach(checks, i, ck)
        {
            const char *st;
            size_t stlen;

            if (!json_is_object(ck)) {
                str_errf(c->err, c->errlen, "entry %zu: Checks[%zu]: expected an object", c->entry,
                         i);
                return ENTRY_ERR;
            }
            r = get_str(c, ck, "Checks[]", "Status", &st, &stlen, 64);
            if (r < 0)
                return ENTRY_ERR;
            /* Defence in depth behind ?passing: anything that is not plainly
             * passing or warning (critical, maintenance, unknown, missing)
             * takes the instance out. */
            if (r == 1 && strcmp(st, "passing") == 0)
                continue;
            if (r == 1 && strcmp(st, "warning") == 0)
                warning = true;
            else
                critical = true;
        }
    }
    if (critical) {
        c->rep->critical++;
        return ENTRY_DROP;
    }

    /* Unusable values: drop this entry only. */
    if (id_len == 0 || id_len >= POOL_ID_MAX || !printable(id, id_len)) {
        drop_invalid(c, "Service.ID empty, longer than %d bytes or not printable", POOL_ID_MAX - 1);
        return ENTRY_DROP;
    }
    memcpy(in->id, id, id_len);
    if (addr_len == 0) { /* Consul's rule: an empty service address means the node's */
        addr = naddr;
        addr_len = naddr_len;
    }
    if (addr_len == 0 || addr_len >= POOL_ADDR_MAX || strlen(addr) != addr_len ||
        !instances_addr_ok(addr)) {
        char q[96];

        drop_invalid(c, "id=%s address=%s is not an IP address or host name", in->id,
                     log_quote(q, sizeof(q), addr, addr_len));
        return ENTRY_DROP;
    }
    memcpy(in->addr, addr, addr_len);
    if (port < 1 || port > 65535) {
        drop_invalid(c, "id=%s port=%lld out of 1..65535", in->id, port);
        return ENTRY_DROP;
    }
    in->port = (uint16_t)port;
    if (wpass < 1 || wwarn < 0) {
        drop_invalid(c, "id=%s Weights out of range (Passing>=1, Warning>=0)", in->id);
        return ENTRY_DROP;
    }
    in->warning = warning;
    in->weight = warning ? instances_map_weight(wwarn, true) : instances_map_weight(wpass, false);
    if (meta && c->cfg->build_key && c->cfg->build_key[0]) {
        r = get_str(c, meta, "Service.Meta", c->cfg->build_key, &s, &slen, META_VAL_MAX);
        if (r < 0)
            return ENTRY_ERR;
        if (r == 1) {
            /* A pinned user must only see pages of their pool's build: a
             * build id we cannot carry intact is worse than no instance. */
            if (slen >= POOL_BUILD_MAX || !printable(s, slen)) {
                drop_invalid(c, "id=%s build id longer than %d bytes or not printable", in->id,
                             POOL_BUILD_MAX - 1);
                return ENTRY_DROP;
            }
            memcpy(in->build_id, s, slen);
        }
    }
    if (meta && c->cfg->canary_weight_key && c->cfg->canary_weight_key[0]) {
        r = get_str(c, meta, "Service.Meta", c->cfg->canary_weight_key, &s, &slen, META_VAL_MAX);
        if (r < 0)
            return ENTRY_ERR;
        if (r == 1) {
            *cw = parse_percent(s, slen);
            if (*cw < 0)
                c->rep->bad_canary_weight++;
        }
    }
    return ENTRY_KEEP;
}

static int inst_cmp(const void *a, const void *b)
{
    const struct instance *x = a, *y = b;

    if (x->kind != y->kind)
        return x->kind < y->kind ? -1 : 1;
    return strcmp(x->id, y->id);
}

int instances_parse(const char *json, size_t len, const struct instances_cfg *cfg,
                    struct pool_set *out, struct instances_report *rep, char *err, size_t errlen)
{
    struct instances_report local;
    struct instances_cfg defaults;
    struct ctx c;
    json_error_t jerr;
    json_t *root, *e;
    struct instance *tmp = NULL;
    int *cws = NULL;
    size_t i, n = 0, limit;
    int cw_canary = -1, cw_stable = -1;

    pool_set_init(out);
    if (!rep)
        rep = &local;
    memset(rep, 0, sizeof(*rep));
    if (!cfg) {
        instances_cfg_defaults(&defaults);
        cfg = &defaults;
    }
    if (len > cfg->max_bytes) {
        str_errf(err, errlen, "answer of %zu bytes, more than %zu", len, cfg->max_bytes);
        return -1;
    }
    limit = cfg->max_instances > ((size_t)-1 - 64) / CONTAINERS_PER_ENTRY
                ? (size_t)-1
                : 64 + cfg->max_instances * CONTAINERS_PER_ENTRY;
    /* jansson would build every container: bound their number, not only
     * the answer's size. */
    if (!json_containers_ok(json, len, SIZE_MAX, limit)) {
        str_errf(err, errlen, "answer with more than %zu JSON objects/arrays", limit);
        return -1;
    }
    /* Duplicate keys are ambiguous (which one did Consul mean?): refuse them.
     * jansson also refuses invalid UTF-8 and \u0000 by default. */
    root = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root) {
        str_errf(err, errlen, "invalid JSON at line %d column %d: %s", jerr.line, jerr.column,
                 jerr.text);
        return -1;
    }
    if (!json_is_array(root)) {
        str_errf(err, errlen, "expected a JSON array, got %s",
                 json_is_object(root)   ? "an object"
                 : json_is_string(root) ? "a string"
                 : json_is_null(root)   ? "null"
                                        : "a scalar");
        goto fail;
    }
    rep->entries = json_array_size(root);
    if (rep->entries > cfg->max_instances) {
        str_errf(err, errlen, "%zu entries, more than %zu", rep->entries, cfg->max_instances);
        goto fail;
    }
    /* One spare element: an empty array gets buffers too, so no path below
     * indexes a NULL array (json_array_foreach runs entries times). */
    tmp = calloc(rep->entries + 1, sizeof(*tmp));
    cws = calloc(rep->entries + 1, sizeof(*cws));
    if (!tmp || !cws) {
        str_errf(err, errlen, "out of memory");
        goto fail;
    }
    c = (struct ctx){.cfg = cfg, .rep = rep, .err = err, .errlen = errlen};
    json_array_foreach(root, i, e)
    {
        enum entry_res res;
        bool dup = false;

        c.entry = i;
        res = parse_entry(&c, e, &tmp[n], &cws[n]);
        if (res == ENTRY_ERR)
            goto fail;
        if (res == ENTRY_DROP)
            continue;
        /* Service IDs are unique per Consul agent, not per catalog: keep the
         * first (Consul sorts by node name) and count the others. Quadratic,
         * but bounded by max_instances and run once per change. */
        for (size_t k = 0; k < n && !dup; k++)
            dup = strcmp(tmp[k].id, tmp[n].id) == 0;
        if (dup) {
            rep->duplicate++;
            continue;
        }
        n++;
    }
    /* The canary share belongs to the canary deployment: take it from the
     * first canary (in ID order) that carries a valid one, else from stable. */
    for (i = 0; i < n; i++) {
        if (cws[i] < 0)
            continue;
        if (tmp[i].kind == POOL_CANARY) {
            if (cw_canary < 0 || strcmp(tmp[i].id, tmp[(size_t)cw_canary].id) < 0)
                cw_canary = (int)i;
        } else if (cw_stable < 0 || strcmp(tmp[i].id, tmp[(size_t)cw_stable].id) < 0) {
            cw_stable = (int)i;
        }
    }
    out->canary_weight = cw_canary >= 0 ? cws[cw_canary] : cw_stable >= 0 ? cws[cw_stable] : -1;
    free(cws);
    json_decref(root);
    if (n == 0) {
        free(tmp);
        return 0;
    }
    qsort(tmp, n, sizeof(*tmp), inst_cmp);
    out->inst = tmp;
    out->n = n;
    return 0;

fail:
    free(tmp);
    free(cws);
    json_decref(root);
    pool_set_init(out);
    return -1;
}

bool instances_equal(const struct pool_set *a, const struct pool_set *b)
{
    if (a->n != b->n || a->canary_weight != b->canary_weight)
        return false;
    for (size_t i = 0; i < a->n; i++) {
        const struct instance *x = &a->inst[i], *y = &b->inst[i];

        if (strcmp(x->id, y->id) || strcmp(x->addr, y->addr) || x->port != y->port ||
            x->weight != y->weight || x->warning != y->warning ||
            strcmp(x->build_id, y->build_id) || x->kind != y->kind)
            return false;
    }
    return true;
}

bool instances_accept(const struct pool_set *prev, const struct pool_set *next, double panic_ratio,
                      char *why, size_t whylen)
{
    size_t ps, ns, pc, nc;

    if (!(panic_ratio >= 0)) /* NaN too */
        panic_ratio = 0;
    if (panic_ratio > 1)
        panic_ratio = 1;
    if (why && whylen)
        why[0] = '\0';
    if (!prev || prev->n == 0)
        return true; /* nothing to protect */
    if (next->n == 0) {
        str_errf(why, whylen, "empty answer, %zu instances before", prev->n);
        return false;
    }
    ps = pool_set_count(prev, POOL_STABLE);
    ns = pool_set_count(next, POOL_STABLE);
    if (ps > 0 && (double)ns < panic_ratio * (double)ps) {
        str_errf(why, whylen, "stable pool of %zu, fewer than %g x %zu before", ns, panic_ratio,
                 ps);
        return false;
    }
    /* A canary that is reverted or promoted leaves its pool on purpose and
     * its users fall back to stable; only when there is no stable pool to
     * fall back to does the canary pool get the same protection. */
    pc = prev->n - ps;
    nc = next->n - ns;
    if (ns == 0 && pc > 0 && (double)nc < panic_ratio * (double)pc) {
        str_errf(why, whylen, "canary pool of %zu and no stable pool, fewer than %g x %zu before",
                 nc, panic_ratio, pc);
        return false;
    }
    return true;
}
