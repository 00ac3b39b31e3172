/* The reconciler (agent/reconcile.c): pure, so every case is a table of
 * desired instances + slot states -> the exact command list. Every case also
 * checks idempotence: the slots after applying a plan yield an empty plan. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pool.h"
#include "reconcile.h"

#define NSTABLE 4
#define NCANARY 4
#define NSLOTS (NSTABLE + NCANARY)

struct fixture {
    struct slot_state slots[NSLOTS];
    struct instance inst[16];
    struct pool_set ps;
    struct reconcile_cfg cfg;
    struct plan plan;
};

/* As HAProxy starts them: "server-template stable 1-4 0.0.0.0:0 check disabled". */
static void fresh_slots(struct slot_state *slots)
{
    memset(slots, 0, NSLOTS * sizeof(*slots));
    for (int i = 0; i < NSLOTS; i++) {
        struct slot_state *s = &slots[i];

        s->kind = i < NSTABLE ? POOL_STABLE : POOL_CANARY;
        snprintf(s->name, sizeof(s->name), "%s%d", i < NSTABLE ? "stable" : "canary",
                 (i % NSTABLE) + 1);
        strcpy(s->addr, "0.0.0.0");
        s->port = 0;
        s->weight = 1;
        s->admin = SLOT_MAINT;
    }
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    fresh_slots(f->slots);
    pool_set_init(&f->ps);
    f->ps.inst = f->inst;
    f->cfg.backend[POOL_STABLE] = "storefront_stable";
    f->cfg.backend[POOL_CANARY] = "storefront_canary";
    f->cfg.now = 1000.0;
    f->cfg.drain_grace = 30.0;
    f->cfg.drain_min = 0.0;
    plan_init(&f->plan);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    plan_free(&f->plan);
    free(f);
    return 0;
}

static void set_inst(struct fixture *f, size_t n, ...)
{
    va_list ap;

    va_start(ap, n);
    for (size_t i = 0; i < n; i++) {
        struct instance *in = &f->inst[i];

        memset(in, 0, sizeof(*in));
        snprintf(in->id, sizeof(in->id), "%s", va_arg(ap, const char *));
        snprintf(in->addr, sizeof(in->addr), "%s", va_arg(ap, const char *));
        in->port = (uint16_t)va_arg(ap, int);
        in->weight = (unsigned)va_arg(ap, int);
        in->kind = (enum pool_kind)va_arg(ap, int);
    }
    va_end(ap);
    f->ps.n = n;
}

static void do_plan(struct fixture *f)
{
    char err[128] = "";

    plan_free(&f->plan);
    assert_int_equal(reconcile_plan(&f->ps, f->slots, NSLOTS, &f->cfg, &f->plan, err, sizeof(err)),
                     0);
}

/* Plan, compare with the expected commands (NULL-terminated), apply, and
 * check that planning again gives nothing. */
static void expect_plan(struct fixture *f, const char *const *want)
{
    size_t n = 0;

    do_plan(f);
    while (want[n])
        n++;
    for (size_t i = 0; i < f->plan.n && i < n; i++) {
        if (strcmp(f->plan.op[i].cmd, want[i]) != 0)
            fail_msg("op %zu: got \"%s\", want \"%s\"", i, f->plan.op[i].cmd, want[i]);
    }
    if (f->plan.n != n) {
        for (size_t i = 0; i < f->plan.n; i++)
            print_message("  op %zu: %s\n", i, f->plan.op[i].cmd);
        fail_msg("got %zu ops, want %zu", f->plan.n, n);
    }
    for (size_t i = 0; i < f->plan.n; i++)
        reconcile_apply_op(f->slots, NSLOTS, &f->plan.op[i], f->cfg.now);
    {
        struct plan again;
        char err[128];

        assert_int_equal(
            reconcile_plan(&f->ps, f->slots, NSLOTS, &f->cfg, &again, err, sizeof(err)), 0);
        if (again.n)
            fail_msg("not idempotent: first op of the second plan: %s", again.op[0].cmd);
        plan_free(&again);
    }
}

static ssize_t op_index(const struct plan *p, const char *cmd)
{
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->op[i].cmd, cmd) == 0)
            return (ssize_t)i;
    return -1;
}

/* Two stable and one canary instance land in the first slots, addr ->
 * weight -> ready each, stable first. */
static void initial(struct fixture *f)
{
    static const char *const want[] = {
        "set server storefront_stable/stable1 addr 10.0.0.1 port 3000",
        "set server storefront_stable/stable1 weight 100",
        "set server storefront_stable/stable1 state ready",
        "set server storefront_stable/stable2 addr 10.0.0.2 port 3000",
        "set server storefront_stable/stable2 weight 100",
        "set server storefront_stable/stable2 state ready",
        "set server storefront_canary/canary1 addr 10.0.0.3 port 3001",
        "set server storefront_canary/canary1 weight 50",
        "set server storefront_canary/canary1 state ready",
        NULL,
    };

    set_inst(f, 3, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "b", "10.0.0.2", 3000, 100, POOL_STABLE,
             "c", "10.0.0.3", 3001, 50, POOL_CANARY);
    expect_plan(f, want);
}

static void test_initial_fill(void **state)
{
    struct fixture *f = *state;

    initial(f);
    assert_string_equal(f->slots[0].owner, "a");
    assert_string_equal(f->slots[4].owner, "c");
    assert_int_equal(f->slots[0].admin, SLOT_READY);
}

static void test_scale_up(void **state)
{
    struct fixture *f = *state;
    static const char *const want[] = {
        "set server storefront_stable/stable3 addr 10.0.0.4 port 3000",
        "set server storefront_stable/stable3 weight 100",
        "set server storefront_stable/stable3 state ready",
        NULL,
    };

    initial(f);
    set_inst(f, 4, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "b", "10.0.0.2", 3000, 100, POOL_STABLE,
             "d", "10.0.0.4", 3000, 100, POOL_STABLE, "c", "10.0.0.3", 3001, 50, POOL_CANARY);
    expect_plan(f, want);
    assert_int_equal(f->plan.used[POOL_STABLE], 3);
    assert_int_equal(f->plan.slots[POOL_STABLE], NSTABLE);
}

/* Scale down: drain first; maint only once idle (after drain_min) or after
 * the grace; the slot is free again only after maint. */
static void test_scale_down_drain_then_maint(void **state)
{
    struct fixture *f = *state;
    static const char *const drain[] = {"set server storefront_stable/stable2 state drain", NULL};
    static const char *const none[] = {NULL};
    static const char *const maint[] = {"set server storefront_stable/stable2 state maint", NULL};

    initial(f);
    f->cfg.drain_min = 1.0;
    set_inst(f, 2, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "c", "10.0.0.3", 3001, 50, POOL_CANARY);
    expect_plan(f, drain);
    assert_int_equal(f->plan.draining, 1);
    assert_true(f->plan.next_deadline == 1030.0);
    assert_int_equal(f->slots[1].admin, SLOT_DRAIN);
    assert_true(f->slots[1].drain_since == 1000.0);
    assert_string_equal(f->slots[1].owner, "b"); /* still b's traffic */

    /* Still busy: nothing to do, the deadline stays. */
    f->cfg.now = 1005.0;
    reconcile_observe_load(&f->slots[1], 3, 0);
    expect_plan(f, none);
    assert_int_equal(f->plan.draining, 1);
    assert_int_equal(f->plan.used[POOL_STABLE], 2);

    /* Idle but too early (drain_min): still nothing. */
    f->cfg.now = 1000.5;
    reconcile_observe_load(&f->slots[1], 0, 0);
    expect_plan(f, none);

    /* A queued request is not idle. */
    f->cfg.now = 1006.0;
    reconcile_observe_load(&f->slots[1], 0, 1);
    expect_plan(f, none);

    f->cfg.now = 1006.0;
    reconcile_observe_load(&f->slots[1], 0, 0);
    expect_plan(f, maint);
    assert_int_equal(f->slots[1].admin, SLOT_MAINT);
    assert_string_equal(f->slots[1].owner, "");
    assert_int_equal(f->plan.draining, 0);
    assert_int_equal(f->plan.used[POOL_STABLE], 1);
}

static void test_drain_grace(void **state)
{
    struct fixture *f = *state;
    static const char *const none[] = {NULL};
    static const char *const maint[] = {"set server storefront_stable/stable2 state maint", NULL};

    initial(f);
    set_inst(f, 2, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "c", "10.0.0.3", 3001, 50, POOL_CANARY);
    do_plan(f);
    reconcile_apply_op(f->slots, NSLOTS, &f->plan.op[0], f->cfg.now);
    f->cfg.now = 1029.9;
    reconcile_observe_load(&f->slots[1], 7, 0);
    expect_plan(f, none);
    f->cfg.now = 1030.0;
    reconcile_observe_load(&f->slots[1], 7, 0);
    expect_plan(f, maint);
}

/* A draining slot is not free: a new instance waits (overflow) until the
 * drained slot went through maint, and then takes the lowest free slot. */
static void test_drained_slot_reused_only_after_maint(void **state)
{
    struct fixture *f = *state;
    static const char *const want_new[] = {
        "set server storefront_stable/stable3 addr 10.0.0.5 port 3000",
        "set server storefront_stable/stable3 weight 100",
        "set server storefront_stable/stable3 state ready",
        "set server storefront_stable/stable4 addr 10.0.0.6 port 3000",
        "set server storefront_stable/stable4 weight 100",
        "set server storefront_stable/stable4 state ready",
        "set server storefront_stable/stable2 state drain",
        NULL,
    };
    static const char *const none[] = {NULL};
    static const char *const refill[] = {
        "set server storefront_stable/stable2 state maint",
        "set server storefront_stable/stable2 addr 10.0.0.7 port 3000",
        "set server storefront_stable/stable2 state ready", /* weight 100 already */
        NULL,
    };

    initial(f);
    /* b goes, e, f, g come: only 2 free stable slots while b drains. */
    set_inst(f, 5, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "e", "10.0.0.5", 3000, 100, POOL_STABLE,
             "f", "10.0.0.6", 3000, 100, POOL_STABLE, "g", "10.0.0.7", 3000, 100, POOL_STABLE, "c",
             "10.0.0.3", 3001, 50, POOL_CANARY);
    expect_plan(f, want_new);
    assert_int_equal(f->plan.overflow[POOL_STABLE], 1);
    assert_string_equal(f->plan.overflow_id[POOL_STABLE], "g");
    expect_plan(f, none);
    assert_int_equal(f->plan.overflow[POOL_STABLE], 1);

    f->cfg.now += 1;
    reconcile_observe_load(&f->slots[1], 0, 0);
    /* The slot the maint frees serves the waiting instance in the same plan. */
    expect_plan(f, refill);
    assert_int_equal(f->plan.overflow[POOL_STABLE], 0);
    assert_string_equal(f->slots[1].owner, "g");
}

/* The instance came back while its slot drained: the same slot serves again,
 * no address change. */
static void test_back_while_draining(void **state)
{
    struct fixture *f = *state;
    static const char *const want[] = {
        "set server storefront_stable/stable2 weight 80",
        "set server storefront_stable/stable2 state ready",
        NULL,
    };

    initial(f);
    set_inst(f, 2, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "c", "10.0.0.3", 3001, 50, POOL_CANARY);
    do_plan(f);
    reconcile_apply_op(f->slots, NSLOTS, &f->plan.op[0], f->cfg.now);
    set_inst(f, 3, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "b", "10.0.0.2", 3000, 80, POOL_STABLE,
             "c", "10.0.0.3", 3001, 50, POOL_CANARY);
    expect_plan(f, want);
    assert_true(f->slots[1].drain_since == 0);
}

/* Promotion: tags flip in place, the instance moves from canary to stable.
 * Its stable slot is ready before its canary slot drains. */
static void test_promotion(void **state)
{
    struct fixture *f = *state;
    static const char *const want[] = {
        "set server storefront_stable/stable3 addr 10.0.0.3 port 3001",
        "set server storefront_stable/stable3 weight 100",
        "set server storefront_stable/stable3 state ready",
        "set server storefront_canary/canary1 state drain",
        NULL,
    };

    initial(f);
    set_inst(f, 3, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "b", "10.0.0.2", 3000, 100, POOL_STABLE,
             "c", "10.0.0.3", 3001, 100, POOL_STABLE);
    do_plan(f);
    assert_true(op_index(&f->plan, "set server storefront_stable/stable3 state ready") <
                op_index(&f->plan, "set server storefront_canary/canary1 state drain"));
    expect_plan(f, want);
    assert_string_equal(f->slots[2].owner, "c");
    assert_string_equal(f->slots[4].owner, "c"); /* draining c's canary users */
}

/* Fills of both backends precede every drain, whatever the slot order. */
static void test_fill_before_drain_across_backends(void **state)
{
    struct fixture *f = *state;

    initial(f);
    /* Stable a is replaced by a2; canary c by c2. */
    set_inst(f, 3, "a2", "10.0.1.1", 3000, 100, POOL_STABLE, "b", "10.0.0.2", 3000, 100,
             POOL_STABLE, "c2", "10.0.1.3", 3001, 50, POOL_CANARY);
    do_plan(f);
    {
        ssize_t first_drain = -1, last_ready = -1;

        for (size_t i = 0; i < f->plan.n; i++) {
            if (f->plan.op[i].action == PLAN_DRAIN && first_drain < 0)
                first_drain = (ssize_t)i;
            if (f->plan.op[i].action == PLAN_READY)
                last_ready = (ssize_t)i;
        }
        assert_true(first_drain > last_ready);
        assert_int_equal(f->plan.n, 8);
    }
}

static void apply_plan(struct fixture *f)
{
    for (size_t i = 0; i < f->plan.n; i++)
        reconcile_apply_op(f->slots, NSLOTS, &f->plan.op[i], f->cfg.now);
}

/* Plans, holds the last canary drains back, and applies what is left. */
static size_t plan_held(struct fixture *f)
{
    size_t held;

    do_plan(f);
    held = reconcile_hold_last_canary(&f->plan, f->slots, NSLOTS);
    apply_plan(f);
    return held;
}

/* A reverted canary: its only slot keeps serving until the caller lets the
 * drain go; planned again, the drain is still there. */
static void test_hold_last_canary_revert(void **state)
{
    struct fixture *f = *state;

    initial(f);
    set_inst(f, 2, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "b", "10.0.0.2", 3000, 100,
             POOL_STABLE);
    assert_int_equal(plan_held(f), 1);
    assert_int_equal(f->plan.n, 0);
    assert_int_equal(f->plan.draining, 0);
    assert_int_equal(f->slots[4].admin, SLOT_READY);
    do_plan(f);
    assert_int_equal(f->plan.n, 1);
    assert_string_equal(f->plan.op[0].cmd, "set server storefront_canary/canary1 state drain");
}

/* The end of a rollout: the new build fills the stable backend at once, only
 * the canary slot's drain waits. */
static void test_hold_last_canary_keeps_fills(void **state)
{
    struct fixture *f = *state;

    initial(f);
    set_inst(f, 3, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "b", "10.0.0.2", 3000, 100, POOL_STABLE,
             "c", "10.0.0.3", 3001, 100, POOL_STABLE);
    assert_int_equal(plan_held(f), 1);
    assert_int_equal(f->plan.n, 3);
    assert_true(op_index(&f->plan, "set server storefront_stable/stable3 state ready") >= 0);
    assert_int_equal(f->slots[2].admin, SLOT_READY);
    assert_int_equal(f->slots[4].admin, SLOT_READY);
}

/* Nothing is held while another canary server stays (or becomes) ready, nor
 * when no canary server was ready to begin with. */
static void test_hold_last_canary_only_the_last(void **state)
{
    struct fixture *f = *state;

    initial(f);
    /* c replaced by c2: canary2 ready before canary1 drains. */
    set_inst(f, 3, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "b", "10.0.0.2", 3000, 100, POOL_STABLE,
             "c2", "10.0.0.4", 3001, 50, POOL_CANARY);
    assert_int_equal(plan_held(f), 0);
    assert_int_equal(f->plan.n, 4);
    assert_int_equal(f->slots[4].admin, SLOT_DRAIN);
    assert_int_equal(f->slots[5].admin, SLOT_READY);
    /* c2 goes too: its slot is the last ready one; canary1, draining, is
     * not held (it takes no new request). */
    set_inst(f, 2, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "b", "10.0.0.2", 3000, 100,
             POOL_STABLE);
    assert_int_equal(plan_held(f), 1);
    assert_int_equal(f->slots[5].admin, SLOT_READY);
    /* once let go, nothing is ready in the canary backend: nothing to hold */
    do_plan(f);
    apply_plan(f);
    assert_int_equal(f->slots[5].admin, SLOT_DRAIN);
    f->cfg.now += 60;
    assert_int_equal(plan_held(f), 0);
    assert_int_equal(f->slots[4].admin, SLOT_MAINT);
    assert_int_equal(f->slots[5].admin, SLOT_MAINT);
}

/* Two canary servers leaving at once are held together. */
static void test_hold_last_canary_all_of_them(void **state)
{
    struct fixture *f = *state;

    initial(f);
    set_inst(f, 4, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "b", "10.0.0.2", 3000, 100, POOL_STABLE,
             "c", "10.0.0.3", 3001, 50, POOL_CANARY, "d", "10.0.0.5", 3001, 50, POOL_CANARY);
    do_plan(f);
    apply_plan(f);
    set_inst(f, 2, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "b", "10.0.0.2", 3000, 100,
             POOL_STABLE);
    assert_int_equal(plan_held(f), 2);
    assert_int_equal(f->plan.n, 0);
    assert_int_equal(f->slots[4].admin, SLOT_READY);
    assert_int_equal(f->slots[5].admin, SLOT_READY);
}

static void test_overflow(void **state)
{
    struct fixture *f = *state;

    set_inst(f, 6, "i1", "10.0.0.1", 1, 1, POOL_STABLE, "i2", "10.0.0.2", 1, 1, POOL_STABLE, "i3",
             "10.0.0.3", 1, 1, POOL_STABLE, "i4", "10.0.0.4", 1, 1, POOL_STABLE, "i5", "10.0.0.5",
             1, 1, POOL_STABLE, "i6", "10.0.0.6", 1, 1, POOL_STABLE);
    do_plan(f);
    assert_int_equal(f->plan.n, 4 * 2); /* addr + ready: weight 1 is already there */
    assert_int_equal(f->plan.overflow[POOL_STABLE], 2);
    assert_int_equal(f->plan.overflow[POOL_CANARY], 0);
    assert_string_equal(f->plan.overflow_id[POOL_STABLE], "i5");
    assert_int_equal(f->plan.used[POOL_STABLE], 4);
    for (size_t i = 0; i < f->plan.n; i++)
        reconcile_apply_op(f->slots, NSLOTS, &f->plan.op[i], f->cfg.now);
    do_plan(f);
    assert_int_equal(f->plan.n, 0);
    assert_int_equal(f->plan.overflow[POOL_STABLE], 2);
}

static void test_weight_change(void **state)
{
    struct fixture *f = *state;
    static const char *const want[] = {
        "set server storefront_stable/stable2 weight 0",
        "set server storefront_canary/canary1 weight 256",
        NULL,
    };

    initial(f);
    set_inst(f, 3, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "b", "10.0.0.2", 3000, 0, POOL_STABLE,
             "c", "10.0.0.3", 3001, 256, POOL_CANARY);
    expect_plan(f, want);
}

/* Same id, new address or port: remove + add, the new slot first. */
static void test_address_change(void **state)
{
    struct fixture *f = *state;
    static const char *const want[] = {
        "set server storefront_stable/stable3 addr 10.0.0.2 port 3100",
        "set server storefront_stable/stable3 weight 100",
        "set server storefront_stable/stable3 state ready",
        "set server storefront_stable/stable2 state drain",
        NULL,
    };

    initial(f);
    set_inst(f, 3, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "b", "10.0.0.2", 3100, 100, POOL_STABLE,
             "c", "10.0.0.3", 3001, 50, POOL_CANARY);
    expect_plan(f, want);
    assert_string_equal(f->slots[2].owner, "b");
}

/* HAProxy restarted: every slot is back to its configured state (maint,
 * 0.0.0.0:0, weight 1) and the observation says so; every slot is refilled. */
static void test_haproxy_restart_reapplies(void **state)
{
    struct fixture *f = *state;
    struct slot_seen fresh = {.addr = "0.0.0.0", .port = 0, .weight = 1, .admin = SLOT_MAINT};

    initial(f);
    for (int i = 0; i < NSLOTS; i++)
        reconcile_observe(&f->slots[i], &fresh, f->cfg.now);
    for (int i = 0; i < NSLOTS; i++)
        assert_string_equal(f->slots[i].owner, "");
    {
        static const char *const want[] = {
            "set server storefront_stable/stable1 addr 10.0.0.1 port 3000",
            "set server storefront_stable/stable1 weight 100",
            "set server storefront_stable/stable1 state ready",
            "set server storefront_stable/stable2 addr 10.0.0.2 port 3000",
            "set server storefront_stable/stable2 weight 100",
            "set server storefront_stable/stable2 state ready",
            "set server storefront_canary/canary1 addr 10.0.0.3 port 3001",
            "set server storefront_canary/canary1 weight 50",
            "set server storefront_canary/canary1 state ready",
            NULL,
        };

        expect_plan(f, want);
    }
}

/* The agent restarted: HAProxy's slots serve, owners are unknown. They are
 * adopted by endpoint (one idempotent "state ready" records the owner), and a
 * ready slot nobody wants is drained; nothing is moved. */
static void test_agent_restart_adopts(void **state)
{
    struct fixture *f = *state;
    static const char *const want[] = {
        "set server storefront_stable/stable1 state ready",
        "set server storefront_stable/stable2 state ready",
        "set server storefront_canary/canary1 state ready",
        "set server storefront_stable/stable3 state drain",
        NULL,
    };
    struct slot_seen s1 = {.addr = "10.0.0.1", .port = 3000, .weight = 100, .admin = SLOT_READY};
    struct slot_seen s2 = {.addr = "10.0.0.2", .port = 3000, .weight = 100, .admin = SLOT_READY};
    struct slot_seen s3 = {.addr = "10.0.0.9", .port = 3000, .weight = 100, .admin = SLOT_READY};
    struct slot_seen c1 = {.addr = "10.0.0.3", .port = 3001, .weight = 50, .admin = SLOT_READY};

    reconcile_observe(&f->slots[0], &s1, 1.0);
    reconcile_observe(&f->slots[1], &s2, 1.0);
    reconcile_observe(&f->slots[2], &s3, 1.0);
    reconcile_observe(&f->slots[4], &c1, 1.0);
    set_inst(f, 3, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "b", "10.0.0.2", 3000, 100, POOL_STABLE,
             "c", "10.0.0.3", 3001, 50, POOL_CANARY);
    expect_plan(f, want);
}

static void test_observe_bookkeeping(void **state)
{
    struct fixture *f = *state;
    struct slot_seen drain = {.addr = "10.0.0.2", .port = 3000, .weight = 100, .admin = SLOT_DRAIN};
    struct slot_seen moved = {.addr = "10.9.9.9", .port = 3000, .weight = 100, .admin = SLOT_READY};
    struct slot_seen maint = {.addr = "10.0.0.1", .port = 3000, .weight = 100, .admin = SLOT_MAINT};

    initial(f);
    /* A drain the agent did not start is timed from its observation. */
    reconcile_observe(&f->slots[1], &drain, 2000.0);
    assert_int_equal(f->slots[1].admin, SLOT_DRAIN);
    assert_true(f->slots[1].drain_since == 2000.0);
    assert_string_equal(f->slots[1].owner, "b");
    reconcile_observe(&f->slots[1], &drain, 2005.0);
    assert_true(f->slots[1].drain_since == 2000.0);
    assert_false(f->slots[1].idle_known);
    /* Someone else moved a slot: the owner is forgotten. */
    reconcile_observe(&f->slots[4], &moved, 2000.0);
    assert_string_equal(f->slots[4].owner, "");
    /* Maint: free. */
    reconcile_observe(&f->slots[0], &maint, 2000.0);
    assert_string_equal(f->slots[0].owner, "");
    assert_int_equal(f->slots[0].admin, SLOT_MAINT);
}

/* A drain seen but never timed (drain_since 0) counts from now. */
static void test_untimed_drain(void **state)
{
    struct fixture *f = *state;
    static const char *const none[] = {NULL};

    initial(f);
    f->slots[1].admin = SLOT_DRAIN;
    f->slots[1].drain_since = 0;
    set_inst(f, 2, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "c", "10.0.0.3", 3001, 50, POOL_CANARY);
    expect_plan(f, none);
    assert_true(f->plan.next_deadline == f->cfg.now + f->cfg.drain_grace);
}

static void test_invalid_and_duplicate(void **state)
{
    struct fixture *f = *state;
    static const char *const want[] = {
        "set server storefront_stable/stable1 addr 10.0.0.1 port 3000",
        "set server storefront_stable/stable1 weight 100",
        "set server storefront_stable/stable1 state ready",
        NULL,
    };

    set_inst(f, 5, "a", "10.0.0.1", 3000, 100, POOL_STABLE, "dup", "10.0.0.1", 3000, 100,
             POOL_STABLE, "host", "storefront.service.consul", 3000, 100, POOL_STABLE, "port0",
             "10.0.0.4", 0, 100, POOL_STABLE, "heavy", "10.0.0.5", 3000, 300, POOL_STABLE);
    expect_plan(f, want);
    assert_int_equal(f->plan.invalid, 3);
    assert_string_equal(f->plan.invalid_id, "host");
    assert_int_equal(f->plan.duplicate, 1);
}

/* IPv6 in any spelling: the command carries HAProxy's canonical form, and
 * the observed canonical form matches the desired spelling. */
static void test_ipv6_canonical(void **state)
{
    struct fixture *f = *state;
    static const char *const want[] = {
        "set server storefront_stable/stable1 addr fd00::1 port 8080",
        "set server storefront_stable/stable1 state ready",
        NULL,
    };
    struct slot_seen seen = {.addr = "fd00::1", .port = 8080, .weight = 1, .admin = SLOT_READY};

    set_inst(f, 1, "v6", "fd00:0:0:0:0:0:0:1", 8080, 1, POOL_STABLE);
    expect_plan(f, want);
    reconcile_observe(&f->slots[0], &seen, f->cfg.now);
    do_plan(f);
    assert_int_equal(f->plan.n, 0);
    assert_true(reconcile_addr_equal("::ffff:1.2.3.4", "::ffff:1.2.3.4"));
    assert_false(reconcile_addr_equal("1.2.3.4", "::ffff:1.2.3.4"));
}

static void test_bad_names(void **state)
{
    struct fixture *f = *state;
    char err[128] = "";

    f->cfg.backend[POOL_CANARY] = "storefront canary;";
    assert_int_equal(reconcile_plan(&f->ps, f->slots, NSLOTS, &f->cfg, &f->plan, err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "canary"));
    assert_int_equal(f->plan.n, 0);
    f->cfg.backend[POOL_CANARY] = "storefront_canary";
    strcpy(f->slots[3].name, "stable4;show");
    assert_int_equal(reconcile_plan(&f->ps, f->slots, NSLOTS, &f->cfg, &f->plan, err, sizeof(err)),
                     -1);
}

static void test_empty(void **state)
{
    struct fixture *f = *state;
    struct plan p;
    char err[64];

    assert_int_equal(reconcile_plan(&f->ps, NULL, 0, &f->cfg, &p, err, sizeof(err)), 0);
    assert_int_equal(p.n, 0);
    plan_free(&p);
    set_inst(f, 1, "a", "10.0.0.1", 3000, 100, POOL_STABLE);
    assert_int_equal(reconcile_plan(&f->ps, NULL, 0, &f->cfg, &p, err, sizeof(err)), 0);
    assert_int_equal(p.overflow[POOL_STABLE], 1);
    plan_free(&p);
    assert_string_equal(plan_action_name(PLAN_DRAIN), "drain");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_initial_fill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scale_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scale_down_drain_then_maint, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_grace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drained_slot_reused_only_after_maint, setup, teardown),
        cmocka_unit_test_setup_teardown(test_back_while_draining, setup, teardown),
        cmocka_unit_test_setup_teardown(test_promotion, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fill_before_drain_across_backends, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hold_last_canary_revert, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hold_last_canary_keeps_fills, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hold_last_canary_only_the_last, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hold_last_canary_all_of_them, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overflow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_weight_change, setup, teardown),
        cmocka_unit_test_setup_teardown(test_address_change, setup, teardown),
        cmocka_unit_test_setup_teardown(test_haproxy_restart_reapplies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_agent_restart_adopts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_observe_bookkeeping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_untimed_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_and_duplicate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ipv6_canonical, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
