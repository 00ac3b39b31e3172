/* cedra-agent's run time: see agent.h. */
#include "agent.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include "config.h"
#include "instances.h"
#include "state_file.h"
#include "log.h"
#include "util.h"

/* Rows a "show servers state" answer may hold beyond the slots (servers of
 * the backend that are not ours). */
#define EXTRA_ROWS 256
#define ROUND_RETRY_MIN 0.1

static void round_start(struct agent *a);
static void observe_step(struct agent *a);
static void spoa_sync(struct agent *a);

/* ---- helpers ------------------------------------------------------------------ */

const char *agent_pool_build(const struct pool_set *ps, enum pool_kind kind, size_t *count)
{
    const char *best = "";
    size_t best_n = 0, total = 0;

    for (size_t i = 0; ps && i < ps->n; i++) {
        const struct instance *in = &ps->inst[i];
        size_t n = 0;
        bool seen = false;

        if (in->kind != kind)
            continue;
        total++;
        for (size_t j = 0; j < i && !seen; j++)
            seen = ps->inst[j].kind == kind && !strcmp(ps->inst[j].build_id, in->build_id);
        if (seen)
            continue;
        for (size_t j = i; j < ps->n; j++)
            n += ps->inst[j].kind == kind && !strcmp(ps->inst[j].build_id, in->build_id);
        /* Most instances wins; a tie goes to the greater id (deterministic). */
        if (n > best_n || (n == best_n && strcmp(in->build_id, best) > 0)) {
            best = in->build_id;
            best_n = n;
        }
    }
    if (count)
        *count = total;
    return best;
}

int agent_canary_weight(const struct agent *a, enum weight_source *src)
{
    const struct agent_svc *s = &a->svc[0];
    enum weight_source ws = WEIGHT_CONFIG;
    int w = a->conf->canary_weight;

    if (a->op_weight >= 0) {
        ws = WEIGHT_OPERATOR;
        w = a->op_weight;
    } else if (a->nsvc && s->have_good && s->good.canary_weight >= 0) {
        ws = WEIGHT_META;
        w = s->good.canary_weight;
    }
    if (src)
        *src = ws;
    return w;
}

bool agent_panic_any(const struct agent *a)
{
    for (unsigned i = 0; i < a->nsvc; i++)
        if (a->svc[i].panic)
            return true;
    return false;
}

static void slot_counts(const struct agent_svc *s, enum pool_kind k, size_t *total, size_t *used,
                        size_t *draining)
{
    *total = *used = *draining = 0;
    for (size_t i = 0; i < s->nslots; i++) {
        if (s->slots[i].kind != k)
            continue;
        (*total)++;
        if (s->slots[i].admin != SLOT_MAINT)
            (*used)++;
        if (s->slots[i].admin == SLOT_DRAIN)
            (*draining)++;
    }
}

static void svc_metrics(struct agent_svc *s)
{
    for (int k = 0; k < POOL_KINDS; k++) {
        size_t total, used, draining;

        slot_counts(s, (enum pool_kind)k, &total, &used, &draining);
        metrics_gauge_set(s->g_used[k], (double)used);
        metrics_gauge_set(s->g_free[k], (double)(total - used));
        metrics_gauge_set(s->g_draining[k], (double)draining);
        metrics_gauge_set(s->g_overflow[k], (double)s->overflow[k]);
        metrics_gauge_set(s->g_instances[k],
                          s->have_good ? (double)pool_set_count(&s->good, (enum pool_kind)k) : 0);
    }
    metrics_gauge_set(s->g_panic, s->panic ? 1 : 0);
}

void agent_refresh_metrics(struct agent *a)
{
    struct consul_stats cs;
    struct hapi_counters hc;
    enum weight_source src;

    consul_stats(a->consul, &cs);
    if (cs.latency_count > a->cstats_seen.latency_count) {
        uint64_t n = cs.latency_count - a->cstats_seen.latency_count;
        double mean = (cs.latency_sum - a->cstats_seen.latency_sum) / (double)n;

        /* The client keeps a sum and a count: requests that completed
         * within one refresh are recorded at their mean. */
        for (uint64_t i = 0; i < n && i < 1000; i++)
            metrics_histogram_observe(a->h_consul_latency, mean);
    }
    a->cstats_seen = cs;
    hapi_get_counters(a->h, &hc);
    metrics_counter_add(a->c_hapi_commands, hc.commands - a->hctr_seen.commands);
    metrics_counter_add(a->c_hapi_transport, hc.failures - a->hctr_seen.failures);
    metrics_counter_add(a->c_hapi_answer, hc.bad_answers - a->hctr_seen.bad_answers);
    a->hctr_seen = hc;
    for (unsigned i = 0; i < a->nsvc; i++) {
        struct agent_svc *s = &a->svc[i];

        if (s->w) {
            struct consul_watch_stats ws;

            consul_watch_stats(s->w, &ws);
            metrics_counter_add(s->c_resets, ws.resets - s->seen_resets);
            s->seen_resets = ws.resets;
            metrics_gauge_set(s->g_index, (double)ws.index);
            metrics_gauge_set(s->g_failing, (double)ws.failures);
        }
        svc_metrics(s);
    }
    metrics_gauge_set(a->g_weight, agent_canary_weight(a, &src) / 100.0);
    metrics_gauge_set(a->g_paused, a->paused ? 1 : 0);
    metrics_gauge_set(a->g_registered, consul_registered(a->consul) ? 1 : 0);
    metrics_gauge_set(a->g_canary_live,
                      a->nsvc && a->svc[0].have_applied
                          ? (double)pool_set_count(&a->svc[0].applied, POOL_CANARY)
                          : 0);
    if (a->spoa) {
        struct spoa_client_stats st;

        spoa_client_stats(a->spoa, &st);
        metrics_gauge_set(a->g_spoa_sync, st.in_sync ? 1 : 0);
        if (st.pushes >= a->spoa_pushes_seen)
            metrics_counter_add(a->c_spoa_pushes, st.pushes - a->spoa_pushes_seen);
        if (st.failures >= a->spoa_failures_seen)
            metrics_counter_add(a->c_spoa_failures, st.failures - a->spoa_failures_seen);
        a->spoa_pushes_seen = st.pushes;
        a->spoa_failures_seen = st.failures;
    }
}

/* ---- cedra-spoa ------------------------------------------------------------------ */

static void spoa_warn(struct agent *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void spoa_warn(struct agent *a, const char *fmt, ...)
{
    char why[256], q[300];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (!strcmp(why, a->spoa_warned))
        return;
    str_copy(a->spoa_warned, why, sizeof(a->spoa_warned));
    log_warning("spoa_pool_unusable", "reason=%s", log_quote(q, sizeof(q), why, strlen(why)));
}

/* A drain held for cedra-spoa's "canary off" goes as soon as it is confirmed. */
static void spoa_acked(void *ud)
{
    struct agent *a = ud;

    if (a->canary_hold_since > 0)
        agent_round_now(a);
}

/* What cedra-spoa should serve, from what HAProxy serves now (the set the
 * last round applied): the majority build of each pool, the key prefix and
 * route table rendered for it, and the canary share. */
static void spoa_sync(struct agent *a)
{
    struct agent_svc *s = &a->svc[0];
    const struct agent_conf *c = a->conf;
    struct spoa_want w;
    bool warned = false;

    if (!a->spoa || !a->nsvc || !s->have_applied)
        return;
    memset(&w, 0, sizeof(w));
    /* Once promoted, the new build takes every new user while the old one
     * finishes serving the users pinned to it. */
    w.weight = s->promoted ? 100 : agent_canary_weight(a, NULL);
    for (int k = 0; k < POOL_KINDS; k++) {
        struct spoa_pool_want *p = &w.pool[k];
        const char *pool = pool_kind_name((enum pool_kind)k);
        size_t n;
        const char *b = agent_pool_build(&s->applied, (enum pool_kind)k, &n);

        if (!n)
            continue;
        /* A canary gone from Consul leaves cedra-spoa at once, before its
         * slots finish draining (unless the operator froze everything). */
        if (k == POOL_CANARY && !a->paused && s->have_good &&
            pool_set_count(&s->good, POOL_CANARY) == 0)
            continue;
        if (!b[0] && (strstr(c->key_prefix, "%{build}") || strstr(c->routes, "%{build}"))) {
            spoa_warn(a, "pool %s: no build id in Service.Meta.%s", pool, c->build_key);
            warned = true;
            continue;
        }
        if (agent_tmpl_render(c->key_prefix, b, pool, s->conf->name, p->key_prefix,
                              sizeof(p->key_prefix)) < 0 ||
            agent_tmpl_render(c->routes, b, pool, s->conf->name, p->routes, sizeof(p->routes)) <
                0 ||
            (b[0] && !agent_word_ok(b)) || strlen(b) >= sizeof(p->build)) {
            spoa_warn(a, "pool %s: build id '%.64s' does not fit in a command", pool, b);
            warned = true;
            continue;
        }
        str_copy(p->build, b, sizeof(p->build));
        p->on = true;
    }
    if (!warned)
        a->spoa_warned[0] = '\0';
    a->spoa_want = w;
    a->spoa_want_valid = true;
    spoa_client_set(a->spoa, &w);
}

/* ---- rounds ----------------------------------------------------------------------- */

static void round_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    round_start(t->data);
}

static void round_schedule(struct agent *a, double delay)
{
    if (a->stopping)
        return;
    if (delay < 0)
        delay = 0;
    ev_now_update(a->loop);
    ev_timer_stop(a->loop, &a->round_timer);
    ev_timer_set(&a->round_timer, delay, 0.);
    ev_timer_start(a->loop, &a->round_timer);
}

void agent_round_now(struct agent *a)
{
    if (a->r.running) {
        a->r.again = true;
        return;
    }
    round_schedule(a, 0);
}

static void round_end(struct agent *a, bool ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void state_warn(struct agent *a, const char *why)
{
    char q[300];

    if (strcmp(why, a->state_warned) != 0) {
        log_warning("server_state_file_failed", "path=%s error=%s", a->conf->server_state_file,
                    log_quote(q, sizeof(q), why, strlen(why)));
        str_copy(a->state_warned, why, sizeof(a->state_warned));
    }
}

static void state_cb_save(struct hapi *h, int status, const char *ans, size_t len, void *priv)
{
    struct agent *a = priv;
    char err[256];
    uint64_t hash;

    (void)h;
    a->state_pending = false;
    if (status == HAPI_EABORT || a->stopping || !a->conf->server_state_file[0])
        return;
    if (status != HAPI_OK) {
        state_warn(a, hapi_strerror(status));
        return;
    }
    if (state_file_check(ans, len, err, sizeof(err)) < 0) {
        state_warn(a, err);
        return;
    }
    hash = state_file_hash(ans, len);
    if (hash == a->state_hash)
        return;
    if (state_file_write(a->conf->server_state_file, ans, len, err, sizeof(err)) < 0) {
        state_warn(a, err);
        return;
    }
    a->state_hash = hash;
    if (a->state_warned[0]) {
        log_notice("server_state_file_written", "path=%s", a->conf->server_state_file);
        a->state_warned[0] = '\0';
    }
}

/* After a good round, HAProxy's own view of every server (all backends: the
 * file is global) goes to the server-state-file when it changed. */
static void state_save(struct agent *a)
{
    if (!a->conf->server_state_file[0] || a->state_pending)
        return;
    if (hapi_command(a->h, "show servers state", state_cb_save, a) == 0)
        a->state_pending = true;
}

static void round_end(struct agent *a, bool ok, const char *fmt, ...)
{
    struct agent_round *r = &a->r;
    double now = now_mono(), delay;

    r->running = false;
    plan_free(&r->plan);
    pool_set_free(&r->planned);
    r->plan_live = false;
    if (ok) {
        atomic_store(&a->last_round_ok, now);
        a->round_failures = 0;
        a->rounds_ok++;
        metrics_counter_inc(a->c_rounds_ok);
        metrics_histogram_observe(a->h_round, now - r->t0);
        hapi_report_success(a->h);
        if (a->round_error[0]) {
            log_notice("reconcile_recovered", "socket=%s", a->conf->haproxy_socket);
            a->round_error[0] = '\0';
        }
        state_save(a);
        spoa_sync(a);
    } else {
        char msg[512], q[540];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        a->round_failures++;
        a->rounds_failed++;
        metrics_counter_inc(a->c_rounds_failed);
        if (strcmp(msg, a->round_error) != 0) {
            log_warning("reconcile_failed", "socket=%s error=%s failures=%u",
                        a->conf->haproxy_socket, log_quote(q, sizeof(q), msg, strlen(msg)),
                        a->round_failures);
            str_copy(a->round_error, msg, sizeof(a->round_error));
        }
    }
    agent_refresh_metrics(a);

    if (r->again) {
        delay = 0;
    } else if (!ok) {
        delay = ROUND_RETRY_MIN;
        for (unsigned i = 1; i < a->round_failures && delay < a->conf->interval; i++)
            delay *= 2;
        if (delay > a->conf->interval)
            delay = a->conf->interval;
    } else {
        delay = a->conf->interval;
        for (unsigned i = 0; i < a->nsvc; i++) {
            const struct agent_svc *s = &a->svc[i];

            if (s->draining && !a->paused) {
                if (a->conf->drain_interval < delay)
                    delay = a->conf->drain_interval;
                if (s->next_deadline > 0 && s->next_deadline - now < delay)
                    delay = s->next_deadline - now + 0.001;
            }
        }
        if (a->canary_hold_since > 0) {
            double left = a->canary_hold_since + a->conf->canary_drain_wait - now;

            if (left < delay)
                delay = left > 0 ? left + 0.001 : 0;
        }
    }
    round_schedule(a, delay);
}

static bool issue(struct agent *a, const char *cmd, hapi_cb *cb)
{
    str_copy(a->r.step, cmd, sizeof(a->r.step));
    if (hapi_command(a->h, cmd, cb, a) < 0) {
        round_end(a, false, "%s: cannot queue the command", cmd);
        return false;
    }
    return true;
}

static void info_cb(struct hapi *h, int status, const char *ans, size_t len, void *priv)
{
    struct agent *a = priv;
    struct hapi_info info;
    char err[256];
    double now = now_mono();

    if (status == HAPI_EABORT || a->stopping)
        return;
    if (status != HAPI_OK) {
        round_end(a, false, "%s: %s", a->r.step, hapi_strerror(status));
        return;
    }
    if (hapi_parse_info(ans, len, &info, err, sizeof(err)) < 0) {
        hapi_report_error(h, a->r.step, HAPI_EANSWER, err);
        round_end(a, false, "%s: %s", a->r.step, err);
        return;
    }
    if (a->have_hinfo && hapi_info_restarted(&a->hinfo, a->hinfo_at, &info, now)) {
        a->haproxy_restarts++;
        metrics_counter_inc(a->c_restarts);
        log_notice("haproxy_restarted",
                   "old_pid=%" PRIu64 " pid=%" PRIu64 " uptime=%" PRIu64 " restore=1", a->hinfo.pid,
                   info.pid, info.uptime_sec);
        for (unsigned i = 0; i < a->nsvc; i++) {
            a->svc[i].overflow_logged[0][0] = a->svc[i].overflow_logged[1][0] = '\0';
            a->svc[i].restore = true;
        }
    }
    a->hinfo = info;
    a->hinfo_at = now;
    a->have_hinfo = true;
    a->r.svc = 0;
    a->r.kind = 0;
    observe_step(a);
}

/* Server names "<prefix><digits>" are slots; "" takes every server. */
static bool is_slot(const char *name, const char *prefix)
{
    size_t pl = strlen(prefix);

    if (!pl)
        return true;
    if (strncmp(name, prefix, pl) != 0 || !name[pl])
        return false;
    for (const char *p = name + pl; *p; p++)
        if (*p < '0' || *p > '9')
            return false;
    return true;
}

static void stat_cb(struct hapi *h, int status, const char *ans, size_t len, void *priv);

static void state_cb(struct hapi *h, int status, const char *ans, size_t len, void *priv)
{
    struct agent *a = priv;
    struct agent_round *r = &a->r;
    struct agent_svc *s;
    const char *be;
    char err[256], cmd[HAPI_CMD_MAX];
    int n, w = 0;

    if (status == HAPI_EABORT || a->stopping)
        return;
    if (status != HAPI_OK) {
        round_end(a, false, "%s: %s", r->step, hapi_strerror(status));
        return;
    }
    s = &a->svc[r->svc];
    be = s->conf->backend[r->kind];
    n = hapi_parse_servers_state(ans, len, r->rows, r->rows_max, err, sizeof(err));
    if (n < 0) {
        hapi_report_error(h, r->step, HAPI_EANSWER, err);
        round_end(a, false, "%s: %s", r->step, err);
        return;
    }
    for (int i = 0; i < n; i++) {
        if (strcmp(r->rows[i].be_name, be) != 0) {
            snprintf(err, sizeof(err), "row of backend %s in the answer", r->rows[i].be_name);
            hapi_report_error(h, r->step, HAPI_EANSWER, err);
            round_end(a, false, "%s: %s", r->step, err);
            return;
        }
        if (is_slot(r->rows[i].srv_name, s->conf->slot_prefix[r->kind]))
            r->rows[w++] = r->rows[i];
    }
    if ((unsigned)w > a->conf->max_slots) {
        round_end(a, false, "backend %s has %d slots, more than max-slots %u", be, w,
                  a->conf->max_slots);
        return;
    }
    r->nrows = w;
    snprintf(cmd, sizeof(cmd), "show stat %s 4 -1", be);
    issue(a, cmd, stat_cb);
}

static void plan_step(struct agent *a);

static void stat_cb(struct hapi *h, int status, const char *ans, size_t len, void *priv)
{
    struct agent *a = priv;
    struct agent_round *r = &a->r;
    struct agent_svc *s;
    char err[256];
    int n;

    if (status == HAPI_EABORT || a->stopping)
        return;
    if (status != HAPI_OK) {
        round_end(a, false, "%s: %s", r->step, hapi_strerror(status));
        return;
    }
    s = &a->svc[r->svc];
    n = hapi_parse_stat(ans, len, r->stats, r->rows_max, err, sizeof(err));
    if (n < 0) {
        hapi_report_error(h, r->step, HAPI_EANSWER, err);
        round_end(a, false, "%s: %s", r->step, err);
        return;
    }
    r->nstats = n;
    if (hapi_observe_backend(s->slots, &s->nslots, 2 * (size_t)a->conf->max_slots,
                             (enum pool_kind)r->kind, r->rows, (size_t)r->nrows, r->stats,
                             (size_t)r->nstats, now_mono(), err, sizeof(err)) < 0) {
        round_end(a, false, "backend %s: %s", s->conf->backend[r->kind], err);
        return;
    }
    if (++r->kind < POOL_KINDS) {
        observe_step(a);
        return;
    }
    s->observed = true;
    plan_step(a);
}

static void observe_step(struct agent *a)
{
    struct agent_round *r = &a->r;
    char cmd[HAPI_CMD_MAX];

    if (r->svc >= a->nsvc) {
        round_end(a, true, NULL);
        return;
    }
    snprintf(cmd, sizeof(cmd), "show servers state %s", a->svc[r->svc].conf->backend[r->kind]);
    issue(a, cmd, state_cb);
}

static void accept_set(struct agent_svc *s, const struct pool_set *ps, const char *why);
static void refuse_set(struct agent_svc *s, const struct pool_set *ps, const char *why);

static void next_service(struct agent *a)
{
    a->r.svc++;
    a->r.kind = 0;
    observe_step(a);
}

static void plan_done(struct agent *a)
{
    struct agent_round *r = &a->r;
    struct agent_svc *s = &a->svc[r->svc];
    const struct plan *p = &r->plan;

    if (p->n)
        log_notice("reconcile_applied",
                   "service=%s index=%" PRIu64 " ops=%zu stable_used=%zu/%zu "
                   "canary_used=%zu/%zu draining=%zu took_ms=%.1f",
                   s->conf->name, r->planned.index, p->n, p->used[POOL_STABLE],
                   p->slots[POOL_STABLE], p->used[POOL_CANARY], p->slots[POOL_CANARY], p->draining,
                   (now_mono() - r->t0) * 1000);
    if (r->from_good) {
        /* What this plan was made from, not s->good: a Consul answer that
         * came while the plan ran is the next round's business. */
        pool_set_free(&s->applied);
        s->applied = r->planned;
        pool_set_init(&r->planned);
        s->have_applied = true;
        s->applied_index = s->applied.index;
    }
    pool_set_free(&r->planned);
    s->restore = false;
    s->draining = p->draining;
    s->next_deadline = p->next_deadline;
    plan_free(&r->plan);
    r->plan_live = false;
    next_service(a);
}

static void plan_cb(struct hapi *h, int status, size_t done, const char *err, void *priv)
{
    struct agent *a = priv;
    struct agent_round *r = &a->r;

    if (status == HAPI_EABORT || a->stopping)
        return;
    if (status != HAPI_OK) {
        round_end(a, false, "%s: %s", done < r->plan.n ? r->plan.op[done].cmd : "plan",
                  err && *err ? err : hapi_strerror(status));
        return;
    }
    plan_done(a);
}

static void log_overflow(struct agent_svc *s, const struct plan *p)
{
    for (int k = 0; k < POOL_KINDS; k++) {
        char key[sizeof(s->overflow_logged[0])];

        s->overflow[k] = p->overflow[k];
        if (!p->overflow[k]) {
            if (s->overflow_logged[k][0])
                log_notice("slots_available", "service=%s backend=%s", s->conf->name,
                           s->conf->backend[k]);
            s->overflow_logged[k][0] = '\0';
            continue;
        }
        snprintf(key, sizeof(key), "%zu:%s", p->overflow[k], p->overflow_id[k]);
        if (strcmp(key, s->overflow_logged[k]) != 0) {
            char q[POOL_ID_MAX + 8];

            log_warning("slots_exhausted",
                        "service=%s backend=%s slots=%zu instances_without_slot=%zu first=%s",
                        s->conf->name, s->conf->backend[k], p->slots[k], p->overflow[k],
                        log_quote(q, sizeof(q), p->overflow_id[k], strlen(p->overflow_id[k])));
            str_copy(s->overflow_logged[k], key, sizeof(s->overflow_logged[k]));
        }
    }
    if ((p->invalid || p->duplicate) && (p->invalid != s->invalid || p->duplicate != s->duplicate))
        log_warning("instances_unusable", "service=%s invalid=%zu first=%s duplicate=%zu",
                    s->conf->name, p->invalid, p->invalid_id[0] ? p->invalid_id : "-",
                    p->duplicate);
    s->invalid = p->invalid;
    s->duplicate = p->duplicate;
}

/* A user cedra-spoa pins to the canary pool goes to the canary backend. When
 * its last server is drained before cedra-spoa stopped pinning, HAProxy's
 * relay server hands the request to the stable pool, but a request caught
 * while HAProxy's load balancer takes the state change can still get a 503.
 * So that drain waits until cedra-spoa acknowledged "canary off" (the
 * acknowledgment starts a round), canary-drain-wait at most: cedra-spoa down
 * must not keep a reverted canary serving. Every other op of the plan runs
 * now. */
static void hold_last_canary(struct agent *a, struct agent_svc *s, struct plan *p)
{
    struct agent_round *r = &a->r;
    double now = now_mono(), wait = a->conf->canary_drain_wait;
    bool confirmed = a->spoa && spoa_client_canary_off(a->spoa);
    size_t held;

    if (s->idx != 0 || !a->spoa || wait <= 0 || confirmed ||
        pool_set_count(&r->planned, POOL_CANARY) > 0) {
        if (a->canary_hold_since > 0) {
            log_notice("canary_drain_released", "service=%s waited_ms=%.1f reason=%s",
                       s->conf->name, (now - a->canary_hold_since) * 1000,
                       confirmed                                      ? "spoa-confirmed"
                       : pool_set_count(&r->planned, POOL_CANARY) > 0 ? "canary-back"
                                                                      : "wait-off");
            if (confirmed)
                metrics_counter_inc(a->c_hold_confirmed);
            a->canary_hold_since = 0;
        }
        return;
    }
    if (a->canary_hold_since > 0 && now - a->canary_hold_since >= wait) {
        log_warning("canary_drain_unconfirmed",
                    "service=%s waited_ms=%.1f reason=cedra-spoa did not confirm canary off",
                    s->conf->name, (now - a->canary_hold_since) * 1000);
        metrics_counter_inc(a->c_hold_timeout);
        a->canary_hold_since = 0;
        return;
    }
    held = reconcile_hold_last_canary(p, s->slots, s->nslots);
    if (!held) {
        a->canary_hold_since = 0;
        return;
    }
    if (a->canary_hold_since <= 0) {
        a->canary_hold_since = now;
        log_notice("canary_drain_held", "service=%s ops=%zu wait_max_ms=%.0f", s->conf->name, held,
                   wait * 1000);
    }
}

static void plan_step(struct agent *a)
{
    struct agent_round *r = &a->r;
    struct agent_svc *s = &a->svc[r->svc];
    const struct pool_set *desired;
    struct reconcile_cfg cfg;
    char err[256];
    int rc;

    /* An empty first answer is held back unless HAProxy serves nothing of
     * this service anyway (then taking it changes nothing). */
    if (!s->have_good && s->have_refused && s->refused.n == 0) {
        size_t t, u0, u1, d;

        slot_counts(s, POOL_STABLE, &t, &u0, &d);
        slot_counts(s, POOL_CANARY, &t, &u1, &d);
        if (u0 + u1 == 0)
            accept_set(s, &s->refused, NULL);
        else if (!s->panic)
            refuse_set(s, &s->refused, "empty answer while HAProxy serves instances");
    }
    desired = NULL;
    if (!a->paused)
        desired = s->have_good ? &s->good : NULL;
    else if (s->restore && s->have_applied)
        /* Paused: HAProxy keeps what it has, but a restarted HAProxy gets
         * back the set it had when the operator paused. */
        desired = &s->applied;
    if (!desired) {
        s->restore = false;
        next_service(a);
        return;
    }
    pool_set_free(&r->planned);
    if (pool_set_copy(&r->planned, desired) < 0) {
        round_end(a, false, "plan for %s: out of memory", s->conf->name);
        return;
    }
    r->from_good = desired == &s->good;
    memset(&cfg, 0, sizeof(cfg));
    cfg.backend[POOL_STABLE] = s->conf->backend[POOL_STABLE];
    cfg.backend[POOL_CANARY] = s->conf->backend[POOL_CANARY];
    cfg.now = now_mono();
    cfg.drain_grace = a->conf->drain_grace;
    cfg.drain_min = a->conf->drain_min;
    if (reconcile_plan(&r->planned, s->slots, s->nslots, &cfg, &r->plan, err, sizeof(err)) < 0) {
        round_end(a, false, "plan for %s: %s", s->conf->name, err);
        return;
    }
    log_overflow(s, &r->plan);
    hold_last_canary(a, s, &r->plan);
    r->plan_live = true;
    rc = hapi_apply_plan(a->h, &r->plan, s->slots, s->nslots, plan_cb, a);
    if (rc == 1) {
        plan_done(a);
        return;
    }
    if (rc < 0)
        round_end(a, false, "plan for %s: cannot queue its commands", s->conf->name);
}

static void round_start(struct agent *a)
{
    struct agent_round *r = &a->r;

    if (a->stopping)
        return;
    if (r->running) {
        r->again = true;
        return;
    }
    ev_timer_stop(a->loop, &a->round_timer);
    r->running = true;
    r->again = false;
    r->t0 = now_mono();
    r->svc = 0;
    r->kind = 0;
    issue(a, "show info", info_cb);
}

/* ---- Consul ----------------------------------------------------------------------- */

static int by_kind_id(const void *x, const void *y)
{
    const struct instance *a = x, *b = y;

    if (a->kind != b->kind)
        return a->kind < b->kind ? -1 : 1;
    return strcmp(a->id, b->id);
}

/* The build most instances of the given tag kind run, or NULL (none, or a tie). */
static const char *majority_build(const struct pool_set *ps, enum pool_kind kind)
{
    const char *best = NULL;
    size_t bestn = 0;
    bool tie = false;

    for (size_t i = 0; i < ps->n; i++) {
        size_t n = 0;

        if (ps->inst[i].kind != kind || !ps->inst[i].build_id[0])
            continue;
        for (size_t j = 0; j < ps->n; j++)
            n += ps->inst[j].kind == kind && !strcmp(ps->inst[j].build_id, ps->inst[i].build_id);
        if (n > bestn) {
            best = ps->inst[i].build_id;
            bestn = n;
            tie = false;
        } else if (n == bestn && best && strcmp(best, ps->inst[i].build_id) != 0) {
            tie = true;
        }
    }
    return tie ? NULL : best;
}

/* Pools follow builds, not tags alone. Nomad removes the canary tag when a
 * deployment is promoted and then replaces the old allocations one by one:
 * by tags, the new build would join the stable pool next to the old one and
 * users pinned to either build would be served by both. So the stable pool
 * keeps the build it serves until no instance of it is left; every other
 * build is the canary pool (its backend, its keys in cedra-spoa), and once
 * promoted it takes every new user. */
static bool assign_by_build(struct agent_svc *s, struct pool_set *ps)
{
    char before[POOL_BUILD_MAX];
    bool present = false, tagged = false;
    size_t other = 0;

    str_copy(before, s->stable_build, sizeof(before));

    if (!s->stable_build[0] || !pool_set_count(ps, POOL_STABLE)) {
        const char *b = majority_build(ps, POOL_STABLE);

        if (b && !s->stable_build[0])
            str_copy(s->stable_build, b, sizeof(s->stable_build));
    }
    for (size_t i = 0; i < ps->n; i++)
        present |= !strcmp(ps->inst[i].build_id, s->stable_build);
    if (!present) {
        /* The old build is gone: the rollout is over, the new one is stable. */
        const char *b = majority_build(ps, POOL_STABLE);

        if (b) {
            log_notice("stable_build", "service=%s from=%s to=%s", s->conf->name,
                       s->stable_build[0] ? s->stable_build : "-", b);
            str_copy(s->stable_build, b, sizeof(s->stable_build));
        }
    }
    if (!s->stable_build[0])
        return false; /* no build ids: pools by tag */
    for (size_t i = 0; i < ps->n; i++) {
        struct instance *in = &ps->inst[i];

        if (!in->build_id[0])
            continue;
        if (strcmp(in->build_id, s->stable_build) != 0) {
            tagged |= in->kind == POOL_CANARY;
            in->kind = POOL_CANARY;
            other++;
        } else {
            in->kind = POOL_STABLE;
        }
    }
    s->promoted = other > 0 && !tagged;
    qsort(ps->inst, ps->n, sizeof(ps->inst[0]), by_kind_id);
    return before[0] && strcmp(before, s->stable_build) != 0;
}

static void accept_set(struct agent_svc *s, const struct pool_set *ps, const char *why)
{
    struct agent *a = s->a;
    struct pool_set copy;
    bool had_canary = s->have_good && pool_set_count(&s->good, POOL_CANARY) > 0;
    bool stable_changed = false;

    if (pool_set_copy(&copy, ps) < 0) {
        log_error("out_of_memory", "service=%s where=accept", s->conf->name);
        return;
    }
    if (s->idx == 0)
        stable_changed = assign_by_build(s, &copy);
    pool_set_free(&s->good);
    s->good = copy;
    s->have_good = true;
    if (s->panic || why) {
        char q[300];
        const char *reason = why ? why : "answer within the threshold";

        log_notice("consul_panic_cleared",
                   "service=%s index=%" PRIu64 " stable=%zu canary=%zu refused=%" PRIu64
                   " reason=%s",
                   s->conf->name, s->good.index, pool_set_count(&s->good, POOL_STABLE),
                   pool_set_count(&s->good, POOL_CANARY), s->refused_total,
                   log_quote(q, sizeof(q), reason, strlen(reason)));
    }
    s->panic = false;
    s->panic_reason[0] = '\0';
    pool_set_free(&s->refused);
    s->have_refused = false;
    svc_metrics(s);
    /* A reverted canary leaves cedra-spoa at once (its users belong on the
     * stable build HAProxy already serves); a new stable build waits for the
     * round that puts it in the stable backend. */
    if (s->idx == 0 && had_canary && pool_set_count(&s->good, POOL_CANARY) == 0 && !stable_changed)
        spoa_sync(a);
    agent_round_now(a);
}

static void refuse_set(struct agent_svc *s, const struct pool_set *ps, const char *why)
{
    struct pool_set copy;
    char q[300];

    if (pool_set_copy(&copy, ps) == 0) {
        pool_set_free(&s->refused);
        s->refused = copy;
        s->have_refused = true;
    }
    s->refused_total++;
    metrics_counter_inc(s->c_refused);
    log_quote(q, sizeof(q), why, strlen(why));
    if (!s->panic) {
        s->panic = true;
        s->panic_since = now_mono();
        log_warning("consul_panic",
                    "service=%s index=%" PRIu64 " reason=%s kept_stable=%zu kept_canary=%zu "
                    "answer_stable=%zu answer_canary=%zu",
                    s->conf->name, ps->index, q,
                    s->have_good ? pool_set_count(&s->good, POOL_STABLE) : 0,
                    s->have_good ? pool_set_count(&s->good, POOL_CANARY) : 0,
                    pool_set_count(ps, POOL_STABLE), pool_set_count(ps, POOL_CANARY));
    } else {
        log_debug("consul_panic_refused", "service=%s index=%" PRIu64 " reason=%s", s->conf->name,
                  ps->index, q);
    }
    str_copy(s->panic_reason, why, sizeof(s->panic_reason));
    metrics_gauge_set(s->g_panic, 1);
}

static void on_pool(struct consul_watch *w, const struct pool_set *ps, void *ud)
{
    struct agent_svc *s = ud;
    struct agent *a = s->a;
    char why[256] = "";
    bool ok;

    atomic_store(&s->last_success_mono, now_mono());
    metrics_counter_inc(s->c_updates);
    metrics_gauge_set(s->g_index, (double)ps->index);
    if (!s->have_good && !s->observed && ps->n == 0) {
        /* Before HAProxy was read: whether an empty answer would empty
         * anything is not known yet. Held back; the round decides. */
        struct pool_set copy;

        if (pool_set_copy(&copy, ps) == 0) {
            pool_set_free(&s->refused);
            s->refused = copy;
            s->have_refused = true;
        }
        s->force_accept = false;
        return;
    }
    if (!s->have_good) {
        size_t t, u0, u1, d;

        slot_counts(s, POOL_STABLE, &t, &u0, &d);
        slot_counts(s, POOL_CANARY, &t, &u1, &d);
        ok = ps->n > 0 || (s->observed && u0 + u1 == 0);
        if (!ok)
            snprintf(why, sizeof(why), "empty answer before any usable one");
    } else {
        ok = instances_accept(&s->good, ps, a->conf->panic_ratio, why, sizeof(why));
    }
    if (!ok && s->force_accept) {
        s->force_accept = false;
        log_notice("consul_panic_override", "service=%s index=%" PRIu64 " by=operator",
                   s->conf->name, ps->index);
        accept_set(s, ps, "operator resync");
        return;
    }
    s->force_accept = false;
    if (ok)
        accept_set(s, ps, NULL);
    else
        refuse_set(s, ps, why);
}

static void on_error(struct consul_watch *w, enum consul_err kind, const char *reason, void *ud)
{
    struct agent_svc *s = ud;

    s->last_err = kind;
    str_copy(s->last_err_reason, reason, sizeof(s->last_err_reason));
    s->last_err_at = now_mono();
    if ((unsigned)kind < CONSUL_ERR_KINDS)
        metrics_counter_inc(s->c_errors[kind]);
}

static enum consul_health health_cb(void *ud, char *note, size_t len)
{
    struct agent *a = ud;
    double last = atomic_load(&a->last_round_ok), window = agent_conf_health_window(a->conf);

    if (!(last > 0)) {
        snprintf(note, len, "no successful HAProxy round yet%s%s", a->round_error[0] ? ": " : "",
                 a->round_error);
        return CONSUL_HEALTH_FAIL;
    }
    if (now_mono() - last > window) {
        snprintf(note, len, "no successful HAProxy round for more than %.0f s: %s", window,
                 a->round_error);
        return CONSUL_HEALTH_FAIL;
    }
    if (a->paused) {
        snprintf(note, len, "HAProxy updates paused by the operator");
        return CONSUL_HEALTH_WARN;
    }
    for (unsigned i = 0; i < a->nsvc; i++) {
        if (a->svc[i].panic) {
            snprintf(note, len, "panic on %s: %s", a->svc[i].conf->name, a->svc[i].panic_reason);
            return CONSUL_HEALTH_WARN;
        }
    }
    snprintf(note, len, "HAProxy rounds succeed");
    return CONSUL_HEALTH_PASS;
}

/* ---- operator actions -------------------------------------------------------------- */

void agent_set_paused(struct agent *a, bool paused)
{
    if (paused == a->paused)
        return;
    if (paused) {
        a->paused = true;
        a->paused_since = now_mono();
        log_notice("paused", "by=operator");
    } else {
        a->paused = false;
        log_notice("resumed", "by=operator paused_for=%.3f", now_mono() - a->paused_since);
        spoa_sync(a);
        agent_round_now(a);
    }
    metrics_gauge_set(a->g_paused, a->paused ? 1 : 0);
}

void agent_resync(struct agent *a)
{
    log_notice("resync", "by=operator");
    for (unsigned i = 0; i < a->nsvc; i++) {
        struct agent_svc *s = &a->svc[i];

        if (s->have_refused) {
            log_notice("consul_panic_override", "service=%s index=%" PRIu64 " by=operator",
                       s->conf->name, s->refused.index);
            accept_set(s, &s->refused, "operator resync");
        } else {
            s->force_accept = true;
        }
    }
    if (a->spoa)
        spoa_client_resync(a->spoa);
    agent_round_now(a);
}

void agent_set_operator_weight(struct agent *a, int weight)
{
    enum weight_source src;
    int w;

    a->op_weight = weight < 0 ? -1 : weight > 100 ? 100 : weight;
    w = agent_canary_weight(a, &src);
    log_notice("canary_weight", "weight=%d source=%s by=operator", w,
               src == WEIGHT_OPERATOR ? "operator"
               : src == WEIGHT_META   ? "consul-meta"
                                      : "config");
    metrics_gauge_set(a->g_weight, w / 100.0);
    spoa_sync(a);
}

/* ---- metrics registration ------------------------------------------------------------ */

static double age_of(_Atomic double *t)
{
    double v = atomic_load(t);

    return v > 0 ? now_mono() - v : -1;
}

static double svc_age_fn(void *ud)
{
    return age_of(&((struct agent_svc *)ud)->last_success_mono);
}

static double round_age_fn(void *ud)
{
    return age_of(&((struct agent *)ud)->last_round_ok);
}

static int register_metrics(struct agent *a, char *err, size_t errlen)
{
    static const double lat[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                 0.25,  0.5,    1,     2.5,  5,     10};
    static const char *const l_svc[] = {"service", NULL};
    static const char *const l_svc_kind[] = {"service", "kind", NULL};
    static const char *const l_svc_pool[] = {"service", "pool", NULL};
    static const char *const l_backend[] = {"backend", NULL};
    static const char *const l_kind[] = {"kind", NULL};
    static const char *const l_result[] = {"result", NULL};
    static const char *const l_version[] = {"version", NULL};
    struct metrics *m = a->m;
    unsigned ns = a->nsvc, nb = 2 * a->nsvc;
    struct metrics_family *f_err, *f_upd, *f_ref, *f_res, *f_idx, *f_panic, *f_inst, *f_used,
        *f_free, *f_drain, *f_over, *f_hapi, *f_rounds, *f_push, *f_build, *f_fail, *f_hold;
    const char *v[3];

    f_build = metrics_gauge_family(m, "cedra_agent_build_info", "cedra-agent version (always 1)",
                                   l_version, 1);
    a->h_consul_latency =
        metrics_histogram(m, "cedra_agent_consul_request_duration_seconds",
                          "Latency of Consul requests that are not blocking queries "
                          "(registration, TTL updates, first queries)",
                          lat, sizeof(lat) / sizeof(lat[0]));
    f_err = metrics_counter_family(m, "cedra_agent_consul_errors_total",
                                   "Failed Consul queries by service and kind of error", l_svc_kind,
                                   ns * CONSUL_ERR_KINDS);
    f_upd = metrics_counter_family(m, "cedra_agent_consul_updates_total",
                                   "Consul answers with a new index or new content", l_svc, ns);
    f_ref = metrics_counter_family(m, "cedra_agent_consul_refused_total",
                                   "Consul answers refused by the panic threshold", l_svc, ns);
    f_res = metrics_counter_family(m, "cedra_agent_consul_index_resets_total",
                                   "Times the Consul index went backwards", l_svc, ns);
    f_idx = metrics_gauge_family(m, "cedra_agent_consul_last_index",
                                 "Last X-Consul-Index seen per service", l_svc, ns);
    a->f_age = metrics_gauge_family(m, "cedra_agent_consul_last_success_age_seconds",
                                    "Seconds since the last good Consul answer (-1: none yet); "
                                    "grows up to consul-wait while a blocking query waits",
                                    l_svc, ns);
    f_fail =
        metrics_gauge_family(m, "cedra_agent_consul_consecutive_failures",
                             "Consul queries failed in a row (0: the watch is healthy)", l_svc, ns);
    a->g_registered = metrics_gauge(m, "cedra_agent_consul_registered",
                                    "1 when Consul accepted the agent's own registration");
    f_panic = metrics_gauge_family(m, "cedra_agent_panic",
                                   "1 while the last Consul answer is refused and the last good "
                                   "set is kept",
                                   l_svc, ns);
    f_inst = metrics_gauge_family(m, "cedra_agent_pool_instances",
                                  "Instances in the accepted set, by service and pool", l_svc_pool,
                                  ns * POOL_KINDS);
    f_used = metrics_gauge_family(m, "cedra_agent_slots_used",
                                  "HAProxy slots serving or draining, by backend", l_backend, nb);
    f_free = metrics_gauge_family(m, "cedra_agent_slots_free",
                                  "HAProxy slots in maintenance (free), by backend", l_backend, nb);
    f_drain = metrics_gauge_family(m, "cedra_agent_slots_draining",
                                   "HAProxy slots draining, by backend", l_backend, nb);
    f_over =
        metrics_gauge_family(m, "cedra_agent_instances_without_slot",
                             "Instances that found no free slot in the last plan", l_backend, nb);
    f_hapi = metrics_counter_family(m, "cedra_agent_haproxy_api_errors_total",
                                    "HAProxy Runtime API failures: transport (connect, timeout, "
                                    "i/o) or answer (unexpected reply)",
                                    l_kind, 2);
    a->c_hapi_commands = metrics_counter(m, "cedra_agent_haproxy_api_commands_total",
                                         "HAProxy Runtime API commands completed");
    a->c_restarts = metrics_counter(m, "cedra_agent_haproxy_restarts_total",
                                    "HAProxy restarts or reloads seen (pid or start time changed)");
    f_rounds = metrics_counter_family(m, "cedra_agent_reconcile_rounds_total",
                                      "Reconcile rounds by result", l_result, 2);
    a->h_round = metrics_histogram(m, "cedra_agent_reconcile_round_duration_seconds",
                                   "Duration of successful reconcile rounds", lat,
                                   sizeof(lat) / sizeof(lat[0]));
    a->g_weight = metrics_gauge(m, "cedra_agent_canary_weight_ratio",
                                "Share of new users sent to a live canary (0..1)");
    a->g_canary_live = metrics_gauge(m, "cedra_agent_canary_instances",
                                     "Canary instances HAProxy serves (storefront)");
    a->g_paused = metrics_gauge(m, "cedra_agent_paused", "1 while HAProxy updates are paused");
    f_push = metrics_counter_family(m, "cedra_agent_spoa_pushes_total",
                                    "Commands sent to cedra-spoa, by result", l_result, 2);
    a->g_spoa_sync = metrics_gauge(m, "cedra_agent_spoa_in_sync",
                                   "1 when cedra-spoa acknowledged the desired pools and weight");
    f_hold = metrics_counter_family(m, "cedra_agent_canary_drain_waits_total",
                                    "Drains of the last canary server held until cedra-spoa "
                                    "confirms canary off, by how the wait ended",
                                    l_result, 2);
    if (!f_build || !a->h_consul_latency || !f_err || !f_upd || !f_ref || !f_res || !f_idx ||
        !a->f_age || !f_fail || !a->g_registered || !f_panic || !f_inst || !f_used || !f_free ||
        !f_drain || !f_over || !f_hapi || !a->c_hapi_commands || !a->c_restarts || !f_rounds ||
        !a->h_round || !a->g_weight || !a->g_canary_live || !a->g_paused || !f_push ||
        !a->g_spoa_sync || !f_hold) {
        snprintf(err, errlen, "metrics: %s", metrics_error(m));
        return -1;
    }
    v[0] = PACKAGE_VERSION;
    metrics_gauge_set(metrics_gauge_get(f_build, v), 1);
    v[0] = "transport";
    a->c_hapi_transport = metrics_counter_get(f_hapi, v);
    v[0] = "answer";
    a->c_hapi_answer = metrics_counter_get(f_hapi, v);
    v[0] = "ok";
    a->c_rounds_ok = metrics_counter_get(f_rounds, v);
    a->c_spoa_pushes = metrics_counter_get(f_push, v);
    v[0] = "error";
    a->c_rounds_failed = metrics_counter_get(f_rounds, v);
    a->c_spoa_failures = metrics_counter_get(f_push, v);
    v[0] = "confirmed";
    a->c_hold_confirmed = metrics_counter_get(f_hold, v);
    v[0] = "timeout";
    a->c_hold_timeout = metrics_counter_get(f_hold, v);
    for (unsigned i = 0; i < a->nsvc; i++) {
        struct agent_svc *s = &a->svc[i];

        v[0] = s->conf->name;
        v[1] = NULL;
        s->c_updates = metrics_counter_get(f_upd, v);
        s->c_refused = metrics_counter_get(f_ref, v);
        s->c_resets = metrics_counter_get(f_res, v);
        s->g_index = metrics_gauge_get(f_idx, v);
        s->g_panic = metrics_gauge_get(f_panic, v);
        s->g_failing = metrics_gauge_get(f_fail, v);
        if (metrics_series_fn(a->f_age, v, svc_age_fn, s) < 0) {
            snprintf(err, errlen, "metrics: %s", metrics_error(m));
            return -1;
        }
        for (int k = 0; k < CONSUL_ERR_KINDS; k++) {
            v[1] = consul_err_name((enum consul_err)k);
            s->c_errors[k] = metrics_counter_get(f_err, v);
        }
        for (int k = 0; k < POOL_KINDS; k++) {
            const char *bv[1] = {s->conf->backend[k]};

            v[1] = pool_kind_name((enum pool_kind)k);
            s->g_instances[k] = metrics_gauge_get(f_inst, v);
            s->g_used[k] = metrics_gauge_get(f_used, bv);
            s->g_free[k] = metrics_gauge_get(f_free, bv);
            s->g_draining[k] = metrics_gauge_get(f_drain, bv);
            s->g_overflow[k] = metrics_gauge_get(f_over, bv);
        }
    }
    if (metrics_gauge_fn(m, "cedra_agent_reconcile_last_success_age_seconds",
                         "Seconds since the last successful reconcile round (-1: none yet)",
                         round_age_fn, a) < 0) {
        snprintf(err, errlen, "metrics: %s", metrics_error(m));
        return -1;
    }
    return 0;
}

/* ---- life cycle ----------------------------------------------------------------------- */

static void tick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct agent *a = t->data;

    agent_refresh_metrics(a);
}

int agent_register_self(struct agent *a, char *err, size_t errlen)
{
    const struct agent_conf *c = a->conf;
    struct consul_reg_cfg rc;
    const char *tags[AGENT_MAX_TAGS];
    const char *meta[2 * AGENT_MAX_META];
    char id[AGENT_NAME_MAX + 80];
    int port = c->reg_port;

    memset(&rc, 0, sizeof(rc));
    if (c->reg_id[0]) {
        str_copy(id, c->reg_id, sizeof(id));
    } else {
        char host[64] = "";

        if (gethostname(host, sizeof(host) - 1) < 0 || !host[0])
            str_copy(host, "localhost", sizeof(host));
        for (char *p = host; *p; p++)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                  (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_'))
                *p = '-';
        snprintf(id, sizeof(id), "%s-%s", c->reg_name, host);
    }
    if (port < 0) {
        port = 0;
        if (c->has_metrics && !c->metrics.is_unix) {
            const struct sockaddr *sa = (const struct sockaddr *)&c->metrics.addr;

            if (sa->sa_family == AF_INET)
                port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
            else if (sa->sa_family == AF_INET6)
                port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
        }
    }
    for (unsigned i = 0; i < c->nreg_tags; i++)
        tags[i] = c->reg_tags[i];
    for (unsigned i = 0; i < c->nreg_meta; i++) {
        meta[2 * i] = c->reg_meta[i][0];
        meta[2 * i + 1] = c->reg_meta[i][1];
    }
    rc.name = c->reg_name;
    rc.id = id;
    rc.address = c->reg_address[0] ? c->reg_address : NULL;
    rc.port = (uint16_t)port;
    rc.tags = tags;
    rc.ntags = c->nreg_tags;
    rc.meta = meta;
    rc.nmeta = c->nreg_meta;
    rc.ttl = c->reg_ttl;
    rc.deregister_after = c->reg_deregister_after;
    if (!c->reg_enabled)
        return 0;
    return consul_register(a->consul, &rc, health_cb, a, err, errlen);
}

struct agent *agent_start(struct ev_loop *loop, struct agent_conf *conf, const char *conf_path,
                          char *err, size_t errlen)
{
    struct agent *a = calloc(1, sizeof(*a));
    struct consul_cfg cc;

    if (!a) {
        snprintf(err, errlen, "out of memory");
        free(conf);
        return NULL;
    }
    a->loop = loop;
    a->conf = conf;
    a->conf_path = conf_path;
    a->started = now_mono();
    a->op_weight = -1;
    a->nsvc = conf->nsvc;
    plan_init(&a->r.plan);
    pool_set_init(&a->r.planned);
    ev_timer_init(&a->round_timer, round_timer_cb, 0., 0.);
    a->round_timer.data = a;
    ev_timer_init(&a->tick, tick_cb, 1., 1.);
    a->tick.data = a;
    for (unsigned i = 0; i < a->nsvc; i++) {
        struct agent_svc *s = &a->svc[i];

        s->a = a;
        s->idx = i;
        s->conf = &conf->svc[i];
        pool_set_init(&s->good);
        pool_set_init(&s->refused);
        pool_set_init(&s->applied);
        atomic_init(&s->last_success_mono, 0.0);
        s->slots = calloc(2 * (size_t)conf->max_slots, sizeof(*s->slots));
        if (!s->slots) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }
    atomic_init(&a->last_round_ok, 0.0);
    a->r.rows_max = conf->max_slots + EXTRA_ROWS;
    a->r.rows = calloc(a->r.rows_max, sizeof(*a->r.rows));
    a->r.stats = calloc(a->r.rows_max, sizeof(*a->r.stats));
    a->m = metrics_new();
    if (!a->r.rows || !a->r.stats || !a->m) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (register_metrics(a, err, errlen) < 0)
        goto fail;

    consul_cfg_defaults(&cc);
    cc.addr = conf->consul_addr[0] ? conf->consul_addr : NULL;
    cc.datacenter = conf->consul_dc[0] ? conf->consul_dc : NULL;
    cc.wait = conf->consul_wait;
    cc.stale = conf->consul_stale;
    cc.passing_only = conf->consul_passing_only;
    cc.retry_min = conf->consul_retry_min;
    cc.retry_max = conf->consul_retry_max;
    cc.same_index_interval = conf->consul_same_index_interval;
    cc.rate_burst = conf->consul_rate_burst;
    cc.rate_interval = conf->consul_rate_interval;
    cc.request_timeout = conf->consul_timeout;
    cc.connect_timeout = conf->consul_connect_timeout;
    cc.max_body = conf->consul_max_body;
    cc.inst.canary_tag = conf->canary_tag;
    cc.inst.build_key = conf->build_key;
    cc.inst.canary_weight_key = conf->canary_weight_key[0] ? conf->canary_weight_key : NULL;
    cc.inst.max_instances = conf->consul_max_instances;
    cc.inst.max_bytes = conf->consul_max_body;
    a->consul = consul_new(loop, &cc, err, errlen);
    if (!a->consul)
        goto fail;
    a->h = hapi_new(loop, conf->haproxy_socket, conf->haproxy_timeout);
    if (!a->h) {
        snprintf(err, errlen, "haproxy-socket %s: unusable path", conf->haproxy_socket);
        goto fail;
    }
    hapi_set_limits(a->h, 0, 4 * (size_t)conf->max_slots + 64);
    if (conf->spoa_socket[0]) {
        a->spoa = spoa_client_new(loop, conf->spoa_socket, conf->spoa_timeout,
                                  conf->spoa_verify_interval);
        if (!a->spoa) {
            snprintf(err, errlen, "spoa-socket %s: unusable path", conf->spoa_socket);
            goto fail;
        }
        spoa_client_on_ack(a->spoa, spoa_acked, a);
    }
    for (unsigned i = 0; i < a->nsvc; i++) {
        struct agent_svc *s = &a->svc[i];

        s->w = consul_watch(a->consul, s->conf->name, on_pool, on_error, s);
        if (!s->w) {
            snprintf(err, errlen, "cannot watch service %s", s->conf->name);
            goto fail;
        }
    }
    ev_timer_start(loop, &a->tick);
    round_schedule(a, 0);
    return a;
fail:
    agent_free(a);
    return NULL;
}

void agent_reload(struct agent *a, const struct agent_conf *nc)
{
    struct agent_conf *c = a->conf;
    char fixed[512] = "";
    size_t fl = 0;
    bool spoa_changed;

#define FIXED(cond, name)                                                                          \
    do {                                                                                           \
        if (cond)                                                                                  \
            fl += (size_t)snprintf(fixed + fl, fl < sizeof(fixed) ? sizeof(fixed) - fl : 0,        \
                                   "%s%s", fl ? "," : "", name);                                   \
    } while (0)
    FIXED(nc->nsvc != c->nsvc || memcmp(nc->svc, c->svc, sizeof(c->svc)) != 0, "service");
    FIXED(strcmp(nc->canary_tag, c->canary_tag) || strcmp(nc->build_key, c->build_key) ||
              strcmp(nc->canary_weight_key, c->canary_weight_key),
          "canary-tag/build-key/canary-weight-key");
    FIXED(strcmp(nc->consul_addr, c->consul_addr) || strcmp(nc->consul_dc, c->consul_dc) ||
              nc->consul_wait != c->consul_wait || nc->consul_stale != c->consul_stale ||
              nc->consul_passing_only != c->consul_passing_only ||
              nc->consul_rate_burst != c->consul_rate_burst ||
              nc->consul_rate_interval != c->consul_rate_interval ||
              nc->consul_retry_min != c->consul_retry_min ||
              nc->consul_retry_max != c->consul_retry_max,
          "consul-*");
    FIXED(strcmp(nc->haproxy_socket, c->haproxy_socket) ||
              nc->haproxy_timeout != c->haproxy_timeout,
          "haproxy-socket/haproxy-timeout");
    FIXED(nc->max_slots != c->max_slots, "max-slots");
    FIXED(nc->reg_enabled != c->reg_enabled || strcmp(nc->reg_name, c->reg_name) ||
              strcmp(nc->reg_id, c->reg_id) || nc->reg_ttl != c->reg_ttl ||
              nc->reg_port != c->reg_port || nc->nreg_tags != c->nreg_tags,
          "register");
    FIXED(strcmp(nc->stats_socket, c->stats_socket) || nc->stats_mode != c->stats_mode,
          "stats-socket");
    FIXED(nc->has_metrics != c->has_metrics ||
              (nc->has_metrics && strcmp(nc->metrics.text, c->metrics.text)),
          "metrics");
    FIXED(nc->log_syslog != c->log_syslog, "log");
#undef FIXED
    if (fixed[0])
        log_notice("reload_partial", "restart_needed_for=%s", fixed);

    spoa_changed = strcmp(nc->spoa_socket, c->spoa_socket) || nc->spoa_timeout != c->spoa_timeout ||
                   nc->spoa_verify_interval != c->spoa_verify_interval;
    c->canary_weight = nc->canary_weight;
    c->panic_ratio = nc->panic_ratio;
    c->drain_grace = nc->drain_grace;
    c->drain_min = nc->drain_min;
    c->canary_drain_wait = nc->canary_drain_wait;
    c->interval = nc->interval;
    c->drain_interval = nc->drain_interval;
    c->health_window = nc->health_window;
    c->log_level = nc->log_level;
    str_copy(c->spoa_socket, nc->spoa_socket, sizeof(c->spoa_socket));
    c->spoa_timeout = nc->spoa_timeout;
    c->spoa_verify_interval = nc->spoa_verify_interval;
    str_copy(c->key_prefix, nc->key_prefix, sizeof(c->key_prefix));
    str_copy(c->routes, nc->routes, sizeof(c->routes));
    if (strcmp(c->server_state_file, nc->server_state_file) != 0) {
        str_copy(c->server_state_file, nc->server_state_file, sizeof(c->server_state_file));
        a->state_hash = 0;
    }
    log_set_level(c->log_level);
    if (spoa_changed) {
        spoa_client_free(a->spoa);
        a->spoa = NULL;
        a->spoa_pushes_seen = a->spoa_failures_seen = 0;
        if (c->spoa_socket[0]) {
            a->spoa =
                spoa_client_new(a->loop, c->spoa_socket, c->spoa_timeout, c->spoa_verify_interval);
            if (!a->spoa)
                log_error("spoa_client_failed", "socket=%s", c->spoa_socket);
            else
                spoa_client_on_ack(a->spoa, spoa_acked, a);
        }
    }
    log_notice("reloaded", "file=%s canary_weight=%d panic_ratio=%.3f spoa=%s", a->conf_path,
               c->canary_weight, c->panic_ratio, c->spoa_socket[0] ? c->spoa_socket : "none");
    spoa_sync(a);
    agent_round_now(a);
}

static void stop_done(struct consul *c, bool deregistered, void *ud)
{
    struct agent *a = ud;

    log_notice("consul_shutdown_done", "deregistered=%d", deregistered);
    if (a->stop_cb)
        a->stop_cb(a->stop_ud);
}

void agent_stop(struct agent *a, void (*done)(void *ud), void *ud)
{
    if (a->stopping)
        return;
    a->stopping = true;
    ev_timer_stop(a->loop, &a->round_timer);
    ev_timer_stop(a->loop, &a->tick);
    for (unsigned i = 0; i < a->nsvc; i++)
        a->svc[i].w = NULL; /* consul_shutdown() frees the watches */
    a->stop_cb = done;
    a->stop_ud = ud;
    consul_shutdown(a->consul, stop_done, a);
}

void agent_free(struct agent *a)
{
    if (!a)
        return;
    a->stopping = true;
    ev_timer_stop(a->loop, &a->round_timer);
    ev_timer_stop(a->loop, &a->tick);
    consul_free(a->consul); /* frees the watches: no callback */
    hapi_free(a->h);        /* aborts a running round: callbacks see stopping */
    spoa_client_free(a->spoa);
    for (unsigned i = 0; i < a->nsvc; i++) {
        struct agent_svc *s = &a->svc[i];

        pool_set_free(&s->good);
        pool_set_free(&s->refused);
        pool_set_free(&s->applied);
        free(s->slots);
    }
    plan_free(&a->r.plan);
    pool_set_free(&a->r.planned);
    free(a->r.rows);
    free(a->r.stats);
    metrics_free(a->m);
    free(a->conf);
    free(a);
}
