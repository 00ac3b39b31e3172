/* Desired pools + slot states -> ordered Runtime API commands. See
 * reconcile.h for the slot life cycle and the ordering rules. */
#include "reconcile.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define NONE ((size_t)-1)

void plan_init(struct plan *p)
{
    memset(p, 0, sizeof(*p));
}

void plan_free(struct plan *p)
{
    free(p->op);
    plan_init(p);
}

const char *plan_action_name(enum plan_action a)
{
    switch (a) {
    case PLAN_ADDR:
        return "addr";
    case PLAN_WEIGHT:
        return "weight";
    case PLAN_READY:
        return "ready";
    case PLAN_DRAIN:
        return "drain";
    case PLAN_MAINT:
        return "maint";
    }
    return "?";
}

/* Proxy and server names go into command lines verbatim: accept only what
 * HAProxy itself allows in names, which also excludes the CLI's separators
 * (';', spaces) and escapes ('\'). */
static bool name_ok(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++) {
        char c = *s;

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.' || c == ':'))
            return false;
    }
    return true;
}

/* "set server B/S addr" takes numeric addresses only (a host name is answered
 * "Invalid addr"); returns the canonical text in out, or false. */
static bool addr_canonical(const char *in, char *out, size_t outlen)
{
    unsigned char bin[sizeof(struct in6_addr)];

    if (inet_pton(AF_INET, in, bin) == 1)
        return inet_ntop(AF_INET, bin, out, (socklen_t)outlen) != NULL;
    if (inet_pton(AF_INET6, in, bin) == 1)
        return inet_ntop(AF_INET6, bin, out, (socklen_t)outlen) != NULL;
    return false;
}

bool reconcile_addr_equal(const char *a, const char *b)
{
    unsigned char ba[sizeof(struct in6_addr)], bb[sizeof(struct in6_addr)];

    if (inet_pton(AF_INET, a, ba) == 1)
        return inet_pton(AF_INET, b, bb) == 1 && memcmp(ba, bb, 4) == 0;
    if (inet_pton(AF_INET6, a, ba) == 1)
        return inet_pton(AF_INET6, b, bb) == 1 && memcmp(ba, bb, 16) == 0;
    return strcmp(a, b) == 0;
}

static bool same_endpoint(const struct slot_state *s, const struct instance *in)
{
    return s->port == in->port && reconcile_addr_equal(s->addr, in->addr);
}

/* The longest command, "set server <backend>/<slot> addr <IPv6> port 65535",
 * always fits: backend names are checked to be at most BACKEND_NAME_MAX,
 * slot names are shorter than SLOT_NAME_MAX, addresses are canonical. */
#define BACKEND_NAME_MAX 128
_Static_assert(sizeof("set server /") - 1 + BACKEND_NAME_MAX + SLOT_NAME_MAX - 1 +
                       sizeof(" addr ") - 1 + INET6_ADDRSTRLEN - 1 + sizeof(" port 65535") <=
                   PLAN_CMD_MAX,
               "PLAN_CMD_MAX too small");

struct builder {
    struct plan *p;
    size_t cap;
    const struct reconcile_cfg *cfg;
    const struct slot_state *actual;
};

static struct plan_op *emit(struct builder *b, enum plan_action a, size_t slot, const char *owner)
{
    const struct slot_state *s = &b->actual[slot];
    struct plan_op *op;

    /* cap is 4 per slot (maint, addr, weight, ready): cannot overflow. */
    if (b->p->n >= b->cap)
        abort();
    op = &b->p->op[b->p->n++];
    memset(op, 0, sizeof(*op));
    op->action = a;
    op->slot = slot;
    str_copy(op->owner, owner ? owner : s->owner, sizeof(op->owner));
    snprintf(op->cmd, sizeof(op->cmd), "set server %s/%s ", b->cfg->backend[s->kind], s->name);
    return op;
}

static void emit_state(struct builder *b, enum plan_action a, size_t slot, const char *owner)
{
    struct plan_op *op = emit(b, a, slot, owner);
    const char *st = a == PLAN_READY ? "ready" : a == PLAN_DRAIN ? "drain" : "maint";

    strncat(op->cmd, "state ", sizeof(op->cmd) - strlen(op->cmd) - 1);
    strncat(op->cmd, st, sizeof(op->cmd) - strlen(op->cmd) - 1);
}

static void emit_weight(struct builder *b, size_t slot, const char *owner, unsigned w)
{
    struct plan_op *op = emit(b, PLAN_WEIGHT, slot, owner);
    size_t l = strlen(op->cmd);

    op->weight = w;
    snprintf(op->cmd + l, sizeof(op->cmd) - l, "weight %u", w);
}

static void emit_addr(struct builder *b, size_t slot, const char *owner, const char *addr,
                      uint16_t port)
{
    struct plan_op *op = emit(b, PLAN_ADDR, slot, owner);
    size_t l = strlen(op->cmd);

    str_copy(op->addr, addr, sizeof(op->addr));
    op->port = port;
    snprintf(op->cmd + l, sizeof(op->cmd) - l, "addr %s port %u", addr, (unsigned)port);
}

/* Brings slot s (whose state is sl) to serving instance in. */
static void emit_fill_from(struct builder *b, size_t s, const struct slot_state *sl,
                           const struct instance *in, const char *canon)
{
    b->p->used[sl->kind]++;
    if (sl->admin == SLOT_MAINT && !same_endpoint(sl, in))
        emit_addr(b, s, in->id, canon, in->port);
    /* The weight is set before "ready" so that the slot never takes traffic
     * with a stale weight. */
    if (sl->weight != in->weight)
        emit_weight(b, s, in->id, in->weight);
    /* A ready slot adopted by endpoint needs no command, only its owner
     * recorded: "state ready" is idempotent and cheap, and it carries the
     * owner through reconcile_apply_op(). */
    if (sl->admin != SLOT_READY || strcmp(sl->owner, in->id) != 0)
        emit_state(b, PLAN_READY, s, in->id);
}

static void emit_fill(struct builder *b, size_t s, const struct instance *in, const char *canon)
{
    emit_fill_from(b, s, &b->actual[s], in, canon);
}

int reconcile_plan(const struct pool_set *desired, const struct slot_state *actual, size_t nslots,
                   const struct reconcile_cfg *cfg, struct plan *out, char *err, size_t errlen)
{
    struct builder b = {.p = out, .cfg = cfg, .actual = actual};
    size_t ninst = desired ? desired->n : 0;
    size_t *slot_of = NULL; /* instance -> slot */
    size_t *inst_of = NULL; /* slot -> instance */
    char(*canon)[POOL_ADDR_MAX] = NULL;
    bool *usable = NULL;
    bool *freed = NULL; /* slot put in maint by this plan */
    int rc = -1;

    plan_init(out);
    for (int k = 0; k < POOL_KINDS; k++) {
        if (!name_ok(cfg->backend[k]) || strlen(cfg->backend[k]) > BACKEND_NAME_MAX) {
            str_errf(err, errlen, "backend name for pool %s is not usable in a command",
                     pool_kind_name((enum pool_kind)k));
            return -1;
        }
    }
    for (size_t s = 0; s < nslots; s++) {
        if ((unsigned)actual[s].kind >= POOL_KINDS || !name_ok(actual[s].name) ||
            strnlen(actual[s].name, SLOT_NAME_MAX) >= SLOT_NAME_MAX) {
            str_errf(err, errlen, "slot %zu has an invalid kind or name", s);
            return -1;
        }
    }

    slot_of = malloc((ninst ? ninst : 1) * sizeof(*slot_of));
    usable = calloc(ninst ? ninst : 1, sizeof(*usable));
    canon = malloc((ninst ? ninst : 1) * sizeof(*canon));
    inst_of = malloc((nslots ? nslots : 1) * sizeof(*inst_of));
    freed = calloc(nslots ? nslots : 1, sizeof(*freed));
    b.cap = 4 * nslots; /* at most maint, addr, weight, ready per slot */
    out->op = malloc((b.cap ? b.cap : 1) * sizeof(*out->op));
    if (!slot_of || !usable || !canon || !inst_of || !freed || !out->op) {
        str_errf(err, errlen, "out of memory");
        goto done;
    }
    for (size_t s = 0; s < nslots; s++) {
        inst_of[s] = NONE;
        out->slots[actual[s].kind]++;
    }

    /* Which instances can be placed at all. */
    for (size_t i = 0; i < ninst; i++) {
        const struct instance *in = &desired->inst[i];

        slot_of[i] = NONE;
        if ((unsigned)in->kind >= POOL_KINDS || in->port == 0 ||
            in->weight > RECONCILE_WEIGHT_MAX ||
            !addr_canonical(in->addr, canon[i], sizeof(canon[i]))) {
            if (!out->invalid++)
                str_copy(out->invalid_id, in->id, sizeof(out->invalid_id));
            continue;
        }
        usable[i] = true;
        /* Two instances on one endpoint would double its weight: the first wins. */
        for (size_t j = 0; j < i; j++) {
            const struct instance *o = &desired->inst[j];

            if (usable[j] && o->kind == in->kind &&
                (strcmp(o->id, in->id) == 0 ||
                 (o->port == in->port && strcmp(canon[j], canon[i]) == 0))) {
                usable[i] = false;
                out->duplicate++;
                break;
            }
        }
    }

    /* Pass 1, sticky by id: the slot this instance already serves or drains. */
    for (size_t i = 0; i < ninst; i++) {
        const struct instance *in = &desired->inst[i];

        if (!usable[i])
            continue;
        for (size_t s = 0; s < nslots; s++) {
            const struct slot_state *sl = &actual[s];

            if (inst_of[s] == NONE && sl->kind == in->kind && sl->admin != SLOT_MAINT &&
                strcmp(sl->owner, in->id) == 0 && same_endpoint(sl, in)) {
                slot_of[i] = s;
                inst_of[s] = i;
                break;
            }
        }
    }
    /* Pass 2, adopt by endpoint: after an agent restart owners are unknown,
     * and a new id on an endpoint already in a slot (an instance restarted
     * in place) keeps the slot rather than taking a second one. */
    for (size_t i = 0; i < ninst; i++) {
        const struct instance *in = &desired->inst[i];

        if (!usable[i] || slot_of[i] != NONE)
            continue;
        for (size_t s = 0; s < nslots; s++) {
            const struct slot_state *sl = &actual[s];

            if (inst_of[s] == NONE && sl->kind == in->kind && sl->admin != SLOT_MAINT &&
                same_endpoint(sl, in)) {
                slot_of[i] = s;
                inst_of[s] = i;
                break;
            }
        }
    }
    /* Pass 3, free slots (maint) in slot order, instances in pool order. */
    for (size_t i = 0; i < ninst; i++) {
        const struct instance *in = &desired->inst[i];

        if (!usable[i] || slot_of[i] != NONE)
            continue;
        for (size_t s = 0; s < nslots; s++) {
            const struct slot_state *sl = &actual[s];

            if (inst_of[s] == NONE && sl->kind == in->kind && sl->admin == SLOT_MAINT) {
                slot_of[i] = s;
                inst_of[s] = i;
                break;
            }
        }
    }

    /* Phase A: fills and weight changes, both backends, before any drain. */
    for (size_t i = 0; i < ninst; i++) {
        const struct instance *in = &desired->inst[i];

        if (slot_of[i] != NONE)
            emit_fill(&b, slot_of[i], in, canon[i]);
    }

    /* Phase B: drains. Phase C: maints of drained slots that are idle or
     * whose grace is over. Both only for slots no instance wants. */
    for (size_t s = 0; s < nslots; s++) {
        if (inst_of[s] == NONE && actual[s].admin == SLOT_READY) {
            emit_state(&b, PLAN_DRAIN, s, NULL);
            out->used[actual[s].kind]++;
            out->draining++;
            if (!out->next_deadline || cfg->now + cfg->drain_grace < out->next_deadline)
                out->next_deadline = cfg->now + cfg->drain_grace;
        }
    }
    for (size_t s = 0; s < nslots; s++) {
        const struct slot_state *sl = &actual[s];
        double since, elapsed, deadline;

        if (inst_of[s] != NONE || sl->admin != SLOT_DRAIN)
            continue;
        since = sl->drain_since > 0 ? sl->drain_since : cfg->now;
        elapsed = cfg->now - since;
        if (elapsed >= cfg->drain_grace ||
            (elapsed >= cfg->drain_min && sl->idle_known && sl->idle)) {
            emit_state(&b, PLAN_MAINT, s, "");
            freed[s] = true;
            continue;
        }
        out->used[sl->kind]++;
        out->draining++;
        deadline = since + cfg->drain_grace;
        if (!out->next_deadline || deadline < out->next_deadline)
            out->next_deadline = deadline;
    }

    /* Phase D: a slot freed by a maint above serves a waiting instance in
     * the same plan (after its maint), so that one plan always converges. */
    for (size_t i = 0; i < ninst; i++) {
        const struct instance *in = &desired->inst[i];

        if (!usable[i] || slot_of[i] != NONE)
            continue;
        for (size_t s = 0; s < nslots; s++) {
            if (freed[s] && actual[s].kind == in->kind) {
                struct slot_state as_free = actual[s];

                freed[s] = false;
                slot_of[i] = s;
                inst_of[s] = i;
                as_free.admin = SLOT_MAINT;
                emit_fill_from(&b, s, &as_free, in, canon[i]);
                break;
            }
        }
        if (slot_of[i] == NONE && !out->overflow[in->kind]++)
            str_copy(out->overflow_id[in->kind], in->id, sizeof(out->overflow_id[0]));
    }
    rc = 0;

done:
    free(slot_of);
    free(usable);
    free(canon);
    free(inst_of);
    free(freed);
    if (rc < 0)
        plan_free(out);
    return rc;
}

void reconcile_apply_op(struct slot_state *slots, size_t nslots, const struct plan_op *op,
                        double now)
{
    struct slot_state *s;

    if (op->slot >= nslots)
        return;
    s = &slots[op->slot];
    switch (op->action) {
    case PLAN_ADDR:
        str_copy(s->addr, op->addr, sizeof(s->addr));
        s->port = op->port;
        str_copy(s->owner, op->owner, sizeof(s->owner));
        break;
    case PLAN_WEIGHT:
        s->weight = op->weight;
        break;
    case PLAN_READY:
        s->admin = SLOT_READY;
        s->drain_since = 0;
        str_copy(s->owner, op->owner, sizeof(s->owner));
        break;
    case PLAN_DRAIN:
        s->admin = SLOT_DRAIN;
        s->drain_since = now;
        /* Counters read before the drain say nothing about its end. */
        s->idle_known = false;
        break;
    case PLAN_MAINT:
        s->admin = SLOT_MAINT;
        s->drain_since = 0;
        s->owner[0] = '\0';
        s->idle_known = false;
        break;
    }
}

size_t reconcile_hold_last_canary(struct plan *p, const struct slot_state *actual, size_t nslots)
{
    size_t before = 0, after = 0, kept = 0, held;
    bool *ready;

    if (!p->n || !nslots)
        return 0;
    ready = calloc(nslots, sizeof(*ready));
    if (!ready)
        return 0; /* cannot tell: the plan runs as made */
    for (size_t s = 0; s < nslots; s++) {
        ready[s] = actual[s].kind == POOL_CANARY && actual[s].admin == SLOT_READY;
        before += ready[s];
    }
    for (size_t i = 0; i < p->n; i++) {
        const struct plan_op *op = &p->op[i];

        if (op->slot >= nslots || actual[op->slot].kind != POOL_CANARY)
            continue;
        if (op->action == PLAN_READY)
            ready[op->slot] = true;
        else if (op->action == PLAN_DRAIN || op->action == PLAN_MAINT)
            ready[op->slot] = false;
    }
    for (size_t s = 0; s < nslots; s++)
        after += ready[s];
    free(ready);
    if (!before || after)
        return 0;
    for (size_t i = 0; i < p->n; i++) {
        const struct plan_op *op = &p->op[i];

        if (op->slot < nslots && actual[op->slot].kind == POOL_CANARY &&
            actual[op->slot].admin == SLOT_READY &&
            (op->action == PLAN_DRAIN || op->action == PLAN_MAINT)) {
            if (op->action == PLAN_DRAIN && p->draining)
                p->draining--;
            continue;
        }
        if (kept != i)
            p->op[kept] = *op;
        kept++;
    }
    held = p->n - kept;
    p->n = kept;
    return held;
}

void reconcile_observe(struct slot_state *s, const struct slot_seen *seen, double now)
{
    if (s->port != seen->port || !reconcile_addr_equal(s->addr, seen->addr))
        s->owner[0] = '\0';
    str_copy(s->addr, seen->addr, sizeof(s->addr));
    s->port = seen->port;
    s->weight = seen->weight;
    s->admin = seen->admin;
    s->idle_known = false;
    switch (seen->admin) {
    case SLOT_MAINT:
        s->owner[0] = '\0';
        s->drain_since = 0;
        break;
    case SLOT_DRAIN:
        if (s->drain_since <= 0)
            s->drain_since = now;
        break;
    case SLOT_READY:
        s->drain_since = 0;
        break;
    }
}

void reconcile_observe_load(struct slot_state *s, unsigned scur, unsigned qcur)
{
    s->idle_known = true;
    s->idle = scur == 0 && qcur == 0;
}
