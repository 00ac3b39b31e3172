/* The reconciler: desired pools (struct pool_set) + what HAProxy's
 * server-template slots hold now (struct slot_state) -> the ordered list of
 * Runtime API commands that moves HAProxy to the desired state (struct plan).
 *
 * Pure: no I/O, no clock, no globals. Time comes in through cfg->now and the
 * drain bookkeeping lives in the caller's slot_state array, so that the same
 * inputs always give the same plan and the whole thing is unit-testable.
 *
 * Slot life cycle (per slot, DESIGN 3.4):
 *
 *   FREE (maint) --addr, weight, ready--> ACTIVE (ready, owner = instance id)
 *   ACTIVE --drain--> DRAINING --maint (idle or grace over)--> FREE
 *   DRAINING --weight, ready--> ACTIVE  (the instance came back)
 *
 * A draining slot is not free: it is reused only after maint, so that a slot
 * never carries two instances' traffic at once.
 *
 * Plan order: every fill (addr/weight/ready, weight changes) of both backends
 * comes before any drain, and drains come before maints. A promoted canary
 * (tags flipped in place) therefore serves from its stable slot before its
 * canary slot stops taking traffic, and a replaced instance's successor is up
 * before it is drained. Executors must stop at the first failed command so
 * that this order holds even on errors (hapi_apply_plan does).
 */
#ifndef CEDRA_AGENT_RECONCILE_H
#define CEDRA_AGENT_RECONCILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pool.h"

#define SLOT_NAME_MAX 64         /* server name inside its backend ("stable3") */
#define PLAN_CMD_MAX 320         /* one Runtime API command line, without "\n" */
#define RECONCILE_WEIGHT_MAX 256 /* HAProxy: "between 0 and 256 inclusive" */

/* Administrative state as the agent sees it, decoded from HAProxy's
 * srv_admin_state mask (hapi_admin_decode()). */
enum slot_admin { SLOT_READY = 0, SLOT_DRAIN, SLOT_MAINT };

struct slot_state {
    enum pool_kind kind;      /* which backend the slot belongs to */
    char name[SLOT_NAME_MAX]; /* server name in that backend */

    /* As HAProxy last reported it (show servers state / show stat). */
    char addr[POOL_ADDR_MAX];
    uint16_t port;
    unsigned weight; /* srv_uweight */
    enum slot_admin admin;
    bool idle_known; /* show stat row seen since the last observation */
    bool idle;       /* scur == 0 && qcur == 0 */

    /* Bookkeeping HAProxy does not keep, owned by the caller. */
    char owner[POOL_ID_MAX]; /* instance id the slot serves (or drains); "" = unknown */
    double drain_since;      /* cfg->now when the drain started, 0 when not draining */
};

struct reconcile_cfg {
    const char *backend[POOL_KINDS]; /* "storefront_stable", "storefront_canary" */
    double now;                      /* monotonic seconds; the planner reads no clock */
    double drain_grace;              /* maint after this long in drain, idle or not */
    double drain_min;                /* never maint before this long in drain */
};

enum plan_action { PLAN_ADDR, PLAN_WEIGHT, PLAN_READY, PLAN_DRAIN, PLAN_MAINT };

struct plan_op {
    enum plan_action action;
    size_t slot;              /* index into the actual[] array given to reconcile_plan() */
    char owner[POOL_ID_MAX];  /* instance served once the op succeeded (fills only) */
    char addr[POOL_ADDR_MAX]; /* PLAN_ADDR: canonical numeric address */
    uint16_t port;            /* PLAN_ADDR */
    unsigned weight;          /* PLAN_WEIGHT */
    char cmd[PLAN_CMD_MAX];   /* e.g. "set server storefront_stable/stable1 state ready" */
};

struct plan {
    struct plan_op *op; /* n entries, in execution order; owned by the plan */
    size_t n;

    /* What did not fit or could not be used: for one log line and a metric. */
    size_t overflow[POOL_KINDS];               /* instances left without a slot */
    char overflow_id[POOL_KINDS][POOL_ID_MAX]; /* the first of them, for the log */
    size_t invalid;                            /* non-numeric address, port 0, weight > 256 */
    char invalid_id[POOL_ID_MAX];
    size_t duplicate; /* same kind, same addr:port as an earlier instance */

    size_t used[POOL_KINDS];  /* slots serving or draining once the plan ran */
    size_t slots[POOL_KINDS]; /* slots of each backend */
    size_t draining;          /* slots still draining once the plan ran */
    double next_deadline;     /* earliest drain grace expiry (cfg->now based), 0 = none */
};

void plan_init(struct plan *p);
void plan_free(struct plan *p);
const char *plan_action_name(enum plan_action a);

/* Computes the plan. desired->inst must be valid instances (pool.h); actual
 * holds nslots slots of both backends (order = preference among free slots).
 * Returns 0, or -1 (out is left empty, err says why) when memory runs out or
 * a slot/backend name cannot be used in a command. */
int reconcile_plan(const struct pool_set *desired, const struct slot_state *actual, size_t nslots,
                   const struct reconcile_cfg *cfg, struct plan *out, char *err, size_t errlen);

/* Takes out of the plan the drains that would leave the canary backend
 * with no ready server, when it has one now (the plan's order is kept).
 * The caller does this while cedra-spoa still sends users to the canary
 * pool: HAProxy's relay to the stable pool covers a request that finds no
 * canary server, but a server taken out from under HAProxy's load balancer
 * can still cost a request a 503 (haproxy/README.md). Returns how many ops
 * were taken out; 0 leaves the plan as it was. */
size_t reconcile_hold_last_canary(struct plan *p, const struct slot_state *actual, size_t nslots);

/* The model of a command's effect: updates slots[op->slot] as HAProxy would,
 * after the command succeeded. Keeps the bookkeeping (owner, drain_since)
 * current between two observations; planning again on the result of every
 * op of a plan yields an empty plan. */
void reconcile_apply_op(struct slot_state *slots, size_t nslots, const struct plan_op *op,
                        double now);

/* What one observation of a slot says (from show servers state). */
struct slot_seen {
    const char *addr;
    uint16_t port;
    unsigned weight;
    enum slot_admin admin;
};

/* Merges an observation into a slot, fixing the bookkeeping: a slot found in
 * maint is free (owner forgotten), a drain the agent did not start is timed
 * from now, an address changed behind the agent's back forgets the owner (the
 * slot is then adopted by address, or drained). Clears idle_known. */
void reconcile_observe(struct slot_state *s, const struct slot_seen *seen, double now);
/* show stat counters of the slot. */
void reconcile_observe_load(struct slot_state *s, unsigned scur, unsigned qcur);

/* True when a and b are the same numeric address (IPv6 compared in binary:
 * HAProxy prints its canonical form), or equal strings otherwise. */
bool reconcile_addr_equal(const char *a, const char *b);

#endif
