/* cedra-spoa operator-socket client: see spoa_client.h. */
#include "spoa_client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hapi.h"
#include "log.h"
#include "util.h"

#define CMD_LEN 512
#define RETRY_MIN 0.2
#define RETRY_MAX 30.0

enum op { OP_NONE, OP_STABLE, OP_CANARY_ON, OP_CANARY_OFF, OP_WEIGHT, OP_INFO, OP_POOLS };

/* What cedra-spoa acknowledged, part by part. */
struct acked {
    struct spoa_want v;
    bool pool_known[POOL_KINDS];
    bool weight_known;
};

struct spoa_client {
    struct ev_loop *loop;
    struct hapi *h;
    double verify_interval;
    bool freeing;

    struct spoa_want want;
    bool have_want;
    struct acked ack;

    bool busy;
    enum op op;
    char cmd[CMD_LEN];
    struct spoa_want sent; /* the want the running command was built from */
    unsigned failures;
    char last_logged[CMD_LEN + 256];
    ev_timer retry;
    ev_timer verify;
    unsigned seed;
    void (*on_ack)(void *ud);
    void *on_ack_ud;

    struct spoa_client_stats st;
};

static bool pool_same(const struct spoa_pool_want *a, const struct spoa_pool_want *b)
{
    return a->on == b->on && !strcmp(a->key_prefix, b->key_prefix) &&
           !strcmp(a->routes, b->routes) && !strcmp(a->build, b->build);
}

static void pool_cmd(char *out, size_t len, const char *name, const struct spoa_pool_want *p)
{
    int n =
        snprintf(out, len, "set pool %s key-prefix %s routes %s", name, p->key_prefix, p->routes);

    if (p->build[0] && n > 0 && (size_t)n < len)
        snprintf(out + n, len - (size_t)n, " build %s", p->build);
}

/* The first command still needed, or OP_NONE. */
static enum op next_op(const struct acked *a, const struct spoa_want *w, char *cmd, size_t len)
{
    const struct spoa_pool_want *ws = &w->pool[POOL_STABLE], *wc = &w->pool[POOL_CANARY];

    if (ws->on && (!a->pool_known[POOL_STABLE] || !pool_same(&a->v.pool[POOL_STABLE], ws))) {
        pool_cmd(cmd, len, "stable", ws);
        return OP_STABLE;
    }
    if (wc->on) {
        /* The share first: cedra-spoa keeps it across pool changes, so a new
         * canary never exists, even for a moment, with the wrong share (a
         * user drawn then stays pinned for the cookie's lifetime). */
        if (!a->weight_known || a->v.weight != w->weight) {
            snprintf(cmd, len, "set pool canary weight %d", w->weight);
            return OP_WEIGHT;
        }
        if (!a->pool_known[POOL_CANARY] || !pool_same(&a->v.pool[POOL_CANARY], wc)) {
            pool_cmd(cmd, len, "canary", wc);
            return OP_CANARY_ON;
        }
        return OP_NONE;
    }
    if (!a->pool_known[POOL_CANARY] || a->v.pool[POOL_CANARY].on) {
        snprintf(cmd, len, "set pool canary off");
        return OP_CANARY_OFF;
    }
    return OP_NONE;
}

/* The effect of an acknowledged command on what cedra-spoa holds. */
static void ack_op(struct acked *a, enum op op, const struct spoa_want *w)
{
    switch (op) {
    case OP_STABLE:
        a->v.pool[POOL_STABLE] = w->pool[POOL_STABLE];
        a->pool_known[POOL_STABLE] = true;
        break;
    case OP_CANARY_ON:
        a->v.pool[POOL_CANARY] = w->pool[POOL_CANARY];
        a->pool_known[POOL_CANARY] = true;
        break;
    case OP_CANARY_OFF:
        memset(&a->v.pool[POOL_CANARY], 0, sizeof(a->v.pool[POOL_CANARY]));
        a->pool_known[POOL_CANARY] = true;
        a->weight_known = false;
        break;
    case OP_WEIGHT:
        a->v.weight = w->weight;
        a->weight_known = true;
        break;
    default:
        break;
    }
}

size_t spoa_client_diff(const struct spoa_want *acked, const struct spoa_want *want,
                        char cmds[][512], size_t max)
{
    struct acked a;
    size_t n = 0;

    memset(&a, 0, sizeof(a));
    if (acked) {
        a.v = *acked;
        a.pool_known[POOL_STABLE] = a.pool_known[POOL_CANARY] = true;
        /* A share is only ever sent while a canary exists (as the live client
         * does: "canary off" forgets it). */
        a.weight_known = acked->pool[POOL_CANARY].on;
    }
    while (n < max) {
        enum op op = next_op(&a, want, cmds[n], 512);

        if (op == OP_NONE)
            break;
        ack_op(&a, op, want);
        n++;
    }
    return n;
}

static void pump(struct spoa_client *sc);

static double jitter(struct spoa_client *sc, double d)
{
    sc->seed = sc->seed * 1103515245u + 12345u;
    return d * (0.8 + 0.4 * (double)((sc->seed >> 16) & 0x7fff) / 32767.0);
}

static void retry_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    pump(t->data);
}

static void schedule_retry(struct spoa_client *sc)
{
    double d = RETRY_MIN;

    for (unsigned i = 1; i < sc->failures && d < RETRY_MAX; i++)
        d *= 2;
    if (d > RETRY_MAX)
        d = RETRY_MAX;
    d = jitter(sc, d);
    ev_timer_stop(sc->loop, &sc->retry);
    ev_timer_set(&sc->retry, d, 0.);
    ev_timer_start(sc->loop, &sc->retry);
}

static void fail(struct spoa_client *sc, const char *what)
{
    char key[sizeof(sc->last_logged)], qc[CMD_LEN + 8], qe[300];

    sc->failures++;
    sc->st.failures++;
    sc->st.in_sync = false;
    str_copy(sc->st.last_error, what, sizeof(sc->st.last_error));
    snprintf(key, sizeof(key), "%s|%s", sc->cmd, what);
    log_quote(qc, sizeof(qc), sc->cmd, strlen(sc->cmd));
    log_quote(qe, sizeof(qe), what, strlen(what));
    if (strcmp(key, sc->last_logged) != 0) {
        str_copy(sc->last_logged, key, sizeof(sc->last_logged));
        log_warning("spoa_push_failed", "socket=%s cmd=%s error=%s failures=%u", hapi_path(sc->h),
                    qc, qe, sc->failures);
    } else {
        log_debug("spoa_push_retry", "cmd=%s error=%s failures=%u", qc, qe, sc->failures);
    }
    schedule_retry(sc);
}

static void succeeded(struct spoa_client *sc)
{
    ev_timer_stop(sc->loop, &sc->retry);
    if (sc->failures)
        log_notice("spoa_push_recovered", "socket=%s failures=%u", hapi_path(sc->h), sc->failures);
    sc->failures = 0;
    sc->last_logged[0] = '\0';
    sc->st.last_error[0] = '\0';
    sc->st.last_ok = now_mono();
}

/* "Pid: 1234" in a "show info" answer. */
static long long info_pid(const char *ans)
{
    for (const char *p = ans; p && *p;) {
        const char *nl = strchr(p, '\n');

        if (!strncmp(p, "Pid: ", 5)) {
            char *end;
            long long v = strtoll(p + 5, &end, 10);

            if (end != p + 5 && (*end == '\n' || *end == '\0') && v > 0)
                return v;
            return -1;
        }
        p = nl ? nl + 1 : NULL;
    }
    return -1;
}

/* Splits a CSV line in place (no quoting: cedra-spoa prints plain words). */
static int split_csv(char *line, char **f, int max)
{
    int n = 0;

    for (char *p = line; n < max;) {
        f[n++] = p;
        p = strchr(p, ',');
        if (!p)
            break;
        *p++ = '\0';
    }
    return n;
}

/* Compares "show pools" (a "# pool,key_prefix,...,build[,...]" header, then
 * one row per pool) with what was acknowledged; forgets the pools that
 * disagree. Columns are found by name so that new ones do not matter. */
static void check_pools(struct spoa_client *sc, const char *ans)
{
    char *copy = strdup(ans), *save = NULL;
    int ci_pool = -1, ci_prefix = -1, ci_build = -1, ci_weight = -1;
    bool seen[POOL_KINDS] = {false, false};

    if (!copy)
        return;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *f[32];
        int n;

        if (!strncmp(line, "# ", 2)) {
            n = split_csv(line + 2, f, 32);
            for (int i = 0; i < n; i++) {
                if (!strcmp(f[i], "pool"))
                    ci_pool = i;
                else if (!strcmp(f[i], "key_prefix"))
                    ci_prefix = i;
                else if (!strcmp(f[i], "build"))
                    ci_build = i;
                else if (!strcmp(f[i], "weight"))
                    ci_weight = i;
            }
            continue;
        }
        if (ci_pool < 0)
            continue;
        n = split_csv(line, f, 32);
        for (int k = 0; k < POOL_KINDS; k++) {
            const struct spoa_pool_want *a = &sc->ack.v.pool[k];
            bool bad = false;
            char q[300];
            uint64_t w;

            if (ci_pool >= n || strcmp(f[ci_pool], pool_kind_name((enum pool_kind)k)) != 0)
                continue;
            seen[k] = true;
            if (!sc->ack.pool_known[k] || !a->on)
                continue;
            if (ci_prefix >= 0 && ci_prefix < n && strcmp(f[ci_prefix], a->key_prefix) != 0)
                bad = true;
            if (ci_build >= 0 && ci_build < n && a->build[0] && strcmp(f[ci_build], a->build) != 0)
                bad = true;
            if (k == POOL_CANARY && ci_weight >= 0 && ci_weight < n && sc->ack.weight_known &&
                (parse_uint(f[ci_weight], 0, 100, &w) < 0 || (int)w != sc->ack.v.weight)) {
                sc->ack.weight_known = false;
                log_notice("spoa_pool_mismatch", "pool=canary field=weight have=%s want=%d",
                           log_quote(q, sizeof(q), f[ci_weight], strlen(f[ci_weight])),
                           sc->ack.v.weight);
            }
            if (bad) {
                sc->ack.pool_known[k] = false;
                sc->st.resyncs++;
                log_notice("spoa_pool_mismatch", "pool=%s line=%s",
                           pool_kind_name((enum pool_kind)k), log_quote(q, sizeof(q), line, 200));
            }
        }
    }
    /* A pool we pushed and cedra-spoa no longer lists. */
    if (ci_pool >= 0)
        for (int k = 0; k < POOL_KINDS; k++)
            if (!seen[k] && sc->ack.pool_known[k] && sc->ack.v.pool[k].on) {
                sc->ack.pool_known[k] = false;
                sc->st.resyncs++;
                log_notice("spoa_pool_mismatch", "pool=%s line=missing",
                           pool_kind_name((enum pool_kind)k));
            }
    free(copy);
}

static void cmd_cb(struct hapi *h, int status, const char *ans, size_t len, void *priv)
{
    struct spoa_client *sc = priv;
    enum op op = sc->op;

    if (sc->freeing)
        return;
    sc->busy = false;
    sc->op = OP_NONE;
    if (status != HAPI_OK) {
        char what[128];

        snprintf(what, sizeof(what), "%s", hapi_strerror(status));
        fail(sc, what);
        return;
    }
    if (op == OP_INFO) {
        long long pid = info_pid(ans);

        if (pid < 0) {
            fail(sc, "show info: no Pid line");
            return;
        }
        if (sc->st.spoa_pid > 0 && pid != sc->st.spoa_pid) {
            log_notice("spoa_restarted", "socket=%s old_pid=%lld pid=%lld", hapi_path(sc->h),
                       sc->st.spoa_pid, pid);
            memset(&sc->ack, 0, sizeof(sc->ack));
            sc->st.resyncs++;
        }
        sc->st.spoa_pid = pid;
        succeeded(sc);
        /* Then the pools themselves. */
        sc->busy = true;
        sc->op = OP_POOLS;
        str_copy(sc->cmd, "show pools", sizeof(sc->cmd));
        if (hapi_command(sc->h, sc->cmd, cmd_cb, sc) < 0) {
            sc->busy = false;
            sc->op = OP_NONE;
            fail(sc, "cannot queue the command");
        }
        return;
    }
    if (op == OP_POOLS) {
        if (!strncmp(ans, "error:", 6)) {
            fail(sc, "show pools: error answer");
            return;
        }
        check_pools(sc, ans);
        sc->st.verifies++;
        succeeded(sc);
        pump(sc);
        return;
    }
    if (len == 1 && ans[0] == '\n') {
        char q[CMD_LEN + 8];

        ack_op(&sc->ack, op, &sc->sent);
        sc->st.pushes++;
        succeeded(sc);
        log_notice("spoa_pushed", "cmd=%s", log_quote(q, sizeof(q), sc->cmd, strlen(sc->cmd)));
        pump(sc);
        /* Last: the callback may free or reconfigure nothing of ours, but it
         * reads the acknowledged state this command changed. */
        if (sc->on_ack)
            sc->on_ack(sc->on_ack_ud);
        return;
    }
    {
        char what[300];
        size_t l = strcspn(ans, "\n");

        snprintf(what, sizeof(what), "%s%.*s",
                 strncmp(ans, "error:", 6) ? "unexpected answer: " : "", (int)(l > 200 ? 200 : l),
                 ans);
        fail(sc, what);
    }
}

static void send_cmd(struct spoa_client *sc, enum op op)
{
    sc->busy = true;
    sc->op = op;
    if (hapi_command(sc->h, sc->cmd, cmd_cb, sc) < 0) {
        sc->busy = false;
        sc->op = OP_NONE;
        fail(sc, "command refused by the client (too long or bad characters)");
    }
}

static void pump(struct spoa_client *sc)
{
    enum op op;

    if (sc->busy || ev_is_active(&sc->retry) || !sc->have_want)
        return;
    op = next_op(&sc->ack, &sc->want, sc->cmd, sizeof(sc->cmd));
    sc->st.in_sync = op == OP_NONE;
    if (op == OP_NONE)
        return;
    sc->sent = sc->want;
    send_cmd(sc, op);
}

/* Verification runs on its own timer, backoff or not: when cedra-spoa
 * answers again, the pending pushes go at once rather than after the
 * backoff grew during its absence. */
static void verify_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct spoa_client *sc = t->data;

    if (sc->busy || !sc->have_want)
        return;
    str_copy(sc->cmd, "show info", sizeof(sc->cmd));
    send_cmd(sc, OP_INFO);
}

struct spoa_client *spoa_client_new(struct ev_loop *loop, const char *path, double timeout,
                                    double verify_interval)
{
    struct spoa_client *sc = calloc(1, sizeof(*sc));

    if (!sc)
        return NULL;
    sc->loop = loop;
    sc->h = hapi_new(loop, path, timeout);
    if (!sc->h) {
        free(sc);
        return NULL;
    }
    hapi_set_limits(sc->h, 256 * 1024, 16);
    sc->verify_interval = verify_interval;
    sc->seed = (unsigned)(now_mono() * 1000);
    sc->st.spoa_pid = -1;
    ev_timer_init(&sc->retry, retry_cb, 0., 0.);
    sc->retry.data = sc;
    ev_timer_init(&sc->verify, verify_cb, verify_interval, verify_interval);
    sc->verify.data = sc;
    ev_timer_start(loop, &sc->verify);
    return sc;
}

void spoa_client_free(struct spoa_client *sc)
{
    if (!sc)
        return;
    sc->freeing = true;
    ev_timer_stop(sc->loop, &sc->retry);
    ev_timer_stop(sc->loop, &sc->verify);
    hapi_free(sc->h);
    free(sc);
}

const char *spoa_client_path(const struct spoa_client *sc)
{
    return hapi_path(sc->h);
}

void spoa_client_set(struct spoa_client *sc, const struct spoa_want *w)
{
    sc->want = *w;
    sc->have_want = true;
    if (sc->busy || ev_is_active(&sc->retry)) {
        char tmp[CMD_LEN];

        /* A push in flight is not acknowledged yet: next_op() still
         * returns it. A verification in flight changes nothing. */
        sc->st.in_sync = next_op(&sc->ack, &sc->want, tmp, sizeof(tmp)) == OP_NONE;
        return;
    }
    pump(sc);
}

void spoa_client_on_ack(struct spoa_client *sc, void (*cb)(void *ud), void *ud)
{
    sc->on_ack = cb;
    sc->on_ack_ud = ud;
}

bool spoa_client_canary_off(const struct spoa_client *sc)
{
    return sc->ack.pool_known[POOL_CANARY] && !sc->ack.v.pool[POOL_CANARY].on;
}

void spoa_client_resync(struct spoa_client *sc)
{
    memset(&sc->ack, 0, sizeof(sc->ack));
    sc->st.resyncs++;
    sc->st.in_sync = false;
    /* An operator asked: retry now rather than after the backoff. */
    if (ev_is_active(&sc->retry)) {
        ev_timer_stop(sc->loop, &sc->retry);
        sc->failures = 0;
    }
    pump(sc);
}

void spoa_client_stats(const struct spoa_client *sc, struct spoa_client_stats *st)
{
    *st = sc->st;
    st->have_desired = sc->have_want;
    st->acked = sc->ack.v;
    st->acked_known = sc->ack.pool_known[POOL_STABLE] && sc->ack.pool_known[POOL_CANARY];
}
