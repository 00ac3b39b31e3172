/* The fast lane: see lane.h and docs/fast-lane.md. */
#include "lane.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hapi_client.h"
#include "log.h"
#include "util.h"

/* Commands handed to the Runtime API client at once: it runs them one after
 * the other anyway; a few in its queue keep it busy between wake-ups. */
#define INFLIGHT_MAX 8
/* Commands waiting beyond this are replaced by one "clear map": a burst of
 * withdrawals (a flush of the in-process cache) costs one command. */
#define QUEUE_MAX 256
#define PROBE_EVERY 1.0
#define TICK 0.25
#define BACKOFF_MIN 0.1
#define BACKOFF_MAX 5.0
#define VALUE_MAX 64
/* A lane set up but never health-checked by its HAProxy process is closed
 * for good: most likely HAProxy runs without CEDRA_LANE=on. Well above any
 * sensible check interval (the interval bounds how long the lane can outlive
 * cedra-spoa, so it is kept short). */
#define UNCHECKED_AFTER 10.0

struct node {
    struct node *pnext; /* path chain */
    struct node *inext; /* id chain */
    struct node *gnext; /* grace FIFO */
    struct l1_ref *ref;
    uint64_t id;
    int64_t fresh_until; /* epoch s: HAProxy stops using it then, we forget it */
    struct isr_conf isr;
    double gone_at;
    size_t pathlen;
    char path[];
};

enum cmd_kind { C_PLAIN, C_SENTINEL, C_PROBE, C_INFO };

struct cmd {
    struct cmd *next;
    double t;
    uint64_t epoch;
    enum cmd_kind kind;
    char line[];
};

enum state { L_DOWN, L_SETUP, L_UP };

struct lane {
    struct ev_loop *loop;
    struct hapi *api;
    char *map, *cookies;
    char *patterns[LANE_MAX_COOKIES];
    size_t npatterns;
    double grace, max_lag;
    size_t max_entries;

    pthread_mutex_t mu;
    struct node **pb, **ib;
    size_t mask, n;
    struct node *ghead, *gtail;
    size_t ngrace;

    enum state state;
    uint64_t gen;
    uint64_t haproxy_pid; /* of the HAProxy process the lane was set up in */
    uint64_t epoch;       /* bumped by every failure: answers of an older epoch are ignored */
    struct cmd *qhead, *qtail;
    size_t nq;
    struct cmd *fhead, *ftail; /* handed to the client, answers pending, in order */
    size_t nf;
    bool probing;
    double last_probe;
    double checked_at;     /* last check by haproxy_pid, or when the lane came up */
    bool unchecked_warned; /* since the last check or set-up */
    bool checked_again;    /* a check after the warning: noted by the next tick */
    unsigned failures_in_row;
    uint64_t rng;
    bool freeing;

    ev_async wake;
    ev_timer retry, tick;

    struct lane_stats st;
};

/* ---- table (mutex held) -------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;

    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

static uint64_t hash_id(uint64_t id)
{
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdULL;
    return id ^ (id >> 33);
}

static struct node *find_path(const struct lane *ln, const char *path, size_t len)
{
    struct node *x = ln->pb[hash_bytes(path, len) & ln->mask];

    while (x && (x->pathlen != len || memcmp(x->path, path, len) != 0))
        x = x->pnext;
    return x;
}

static struct node *find_id(const struct lane *ln, uint64_t id)
{
    struct node *x = ln->ib[hash_id(id) & ln->mask];

    while (x && x->id != id)
        x = x->inext;
    return x;
}

static void unlink_node(struct lane *ln, struct node *x)
{
    struct node **pp = &ln->pb[hash_bytes(x->path, x->pathlen) & ln->mask];

    while (*pp != x)
        pp = &(*pp)->pnext;
    *pp = x->pnext;
    pp = &ln->ib[hash_id(x->id) & ln->mask];
    while (*pp != x)
        pp = &(*pp)->inext;
    *pp = x->inext;
    ln->n--;
}

/* The node keeps filling HAProxy's cache for a while: a request may have read
 * the map just before the withdrawal reached HAProxy. */
static void to_grace(struct lane *ln, struct node *x)
{
    x->gone_at = now_mono();
    x->gnext = NULL;
    if (ln->gtail)
        ln->gtail->gnext = x;
    else
        ln->ghead = x;
    ln->gtail = x;
    ln->ngrace++;
    ln->st.withdrawn++;
}

static void withdraw_all(struct lane *ln)
{
    for (size_t b = 0; b <= ln->mask; b++) {
        while (ln->pb[b]) {
            struct node *x = ln->pb[b];

            unlink_node(ln, x);
            to_grace(ln, x);
        }
    }
}

/* ---- command queue (mutex held) ----------------------------------------------- */

static void free_cmds(struct cmd *c)
{
    while (c) {
        struct cmd *next = c->next;

        free(c);
        c = next;
    }
}

static int enqueue(struct lane *ln, enum cmd_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int enqueue(struct lane *ln, enum cmd_kind kind, const char *fmt, ...)
{
    char line[HAPI_CMD_MAX + 1];
    struct cmd *c;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n > HAPI_CMD_MAX)
        return -1;
    c = malloc(sizeof(*c) + (size_t)n + 1);
    if (!c)
        return -1;
    memcpy(c->line, line, (size_t)n + 1);
    c->next = NULL;
    c->t = now_mono();
    c->epoch = ln->epoch;
    c->kind = kind;
    if (ln->qtail)
        ln->qtail->next = c;
    else
        ln->qhead = c;
    ln->qtail = c;
    ln->nq++;
    return 0;
}

static void drop_queue(struct lane *ln)
{
    for (const struct cmd *c = ln->qhead; c; c = c->next)
        if (c->kind == C_PROBE)
            ln->probing = false;
    free_cmds(ln->qhead);
    ln->qhead = ln->qtail = NULL;
    ln->nq = 0;
}

/* Empties HAProxy's map and writes the sentinel again: the lane is closed in
 * between, and whatever was published is withdrawn here. */
static void queue_clear(struct lane *ln)
{
    drop_queue(ln);
    withdraw_all(ln);
    if (enqueue(ln, C_PLAIN, "clear map %s", ln->map) < 0 ||
        enqueue(ln, C_SENTINEL, "add map %s %s 1", ln->map, LANE_SENTINEL) < 0)
        ln->state = L_DOWN; /* out of memory: the retry timer sets up again */
}

static void wake(struct lane *ln)
{
    ev_async_send(ln->loop, &ln->wake);
}

/* ---- set-up and failures (loop thread) ------------------------------------------ */

static void setup(struct lane *ln)
{
    pthread_mutex_lock(&ln->mu);
    ln->state = L_SETUP;
    ln->epoch++;
    ln->st.setups++;
    drop_queue(ln);
    withdraw_all(ln);
    /* First the pid of the process behind the socket: the health check
     * passes only for it, so a reloaded HAProxy's old process (still serving
     * its connections, its map no longer kept) closes its lane. The
     * sentinel goes last: HAProxy opens the lane only once the map is empty
     * and the cookie patterns are all there. */
    ln->haproxy_pid = 0;
    if (enqueue(ln, C_INFO, "show info") < 0 || enqueue(ln, C_PLAIN, "clear map %s", ln->map) < 0 ||
        enqueue(ln, C_PLAIN, "clear acl %s", ln->cookies) < 0)
        ln->state = L_DOWN;
    for (size_t i = 0; ln->state == L_SETUP && i < ln->npatterns; i++)
        if (enqueue(ln, C_PLAIN, "add acl %s %s", ln->cookies, ln->patterns[i]) < 0)
            ln->state = L_DOWN;
    if (ln->state == L_SETUP &&
        enqueue(ln, C_SENTINEL, "add map %s %s 1", ln->map, LANE_SENTINEL) < 0)
        ln->state = L_DOWN;
    pthread_mutex_unlock(&ln->mu);
    wake(ln);
}

/* Mutex held. The lane closes (lane_up() false at once, the health check
 * follows) and is set up again after a backoff. */
static void fail(struct lane *ln, const char *line, int status, const char *detail)
{
    ln->state = L_DOWN;
    ln->epoch++;
    ln->st.failures++;
    drop_queue(ln);
    withdraw_all(ln);
    /* Transport failures are logged by the client, once per incident. */
    if (status == HAPI_EANSWER)
        hapi_report_error(ln->api, line, status, detail);
    ev_timer_stop(ln->loop, &ln->retry);
    ev_timer_set(&ln->retry,
                 backoff_jitter(BACKOFF_MIN, BACKOFF_MAX, ln->failures_in_row, &ln->rng), 0.);
    ev_timer_start(ln->loop, &ln->retry);
    if (ln->failures_in_row < 16)
        ln->failures_in_row++;
}

static void retry_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    setup(t->data);
}

/* "Pid: <n>" of a "show info" answer; 0 when absent or malformed. */
static uint64_t info_pid(const char *ans)
{
    const char *p = strstr(ans, "\nPid: ");
    uint64_t v = 0;

    if (!p && strncmp(ans, "Pid: ", 5) == 0)
        p = ans - 1;
    if (!p)
        return 0;
    for (p += 6; *p >= '0' && *p <= '9' && v < (UINT64_MAX - 9) / 10; p++)
        v = v * 10 + (uint64_t)(*p - '0');
    return *p == '\n' || *p == '\r' ? v : 0;
}

/* The Runtime API answers a successful map or acl change with an empty line. */
static bool answer_ok(const struct cmd *c, const char *ans, size_t len)
{
    if (c->kind == C_PROBE)
        return strstr(ans, "found=yes") != NULL;
    if (c->kind == C_INFO)
        return info_pid(ans) != 0;
    for (size_t i = 0; i < len; i++)
        if (ans[i] != '\n' && ans[i] != '\r')
            return false;
    return true;
}

static void pump(struct lane *ln);

static void answer_cb(struct hapi *h, int status, const char *ans, size_t len, void *priv)
{
    struct lane *ln = priv;
    struct cmd *c;

    (void)h;
    pthread_mutex_lock(&ln->mu);
    c = ln->fhead;
    if (!c) { /* cannot happen: answers come in submission order */
        pthread_mutex_unlock(&ln->mu);
        return;
    }
    ln->fhead = c->next;
    if (!ln->fhead)
        ln->ftail = NULL;
    ln->nf--;
    ln->st.commands++;
    if (c->kind == C_PROBE)
        ln->probing = false;
    if (!ln->freeing && c->epoch == ln->epoch) {
        if (status != HAPI_OK) {
            fail(ln, c->line, status, NULL);
        } else if (!answer_ok(c, ans, len)) {
            char detail[128];

            snprintf(detail, sizeof(detail), "unexpected answer: %.100s", ans);
            fail(ln, c->line, HAPI_EANSWER, detail);
        } else {
            hapi_report_success(ln->api);
            if (c->kind == C_INFO)
                ln->haproxy_pid = info_pid(ans);
            if (c->kind == C_SENTINEL) {
                ln->state = L_UP;
                ln->failures_in_row = 0;
                ln->checked_at = now_mono();
                ln->unchecked_warned = false;
            }
        }
    }
    pthread_mutex_unlock(&ln->mu);
    free(c);
    if (!ln->freeing)
        pump(ln);
}

static void pump(struct lane *ln)
{
    for (;;) {
        struct cmd *c;

        pthread_mutex_lock(&ln->mu);
        if (ln->nf >= INFLIGHT_MAX || !ln->qhead) {
            pthread_mutex_unlock(&ln->mu);
            return;
        }
        c = ln->qhead;
        ln->qhead = c->next;
        if (!ln->qhead)
            ln->qtail = NULL;
        ln->nq--;
        c->next = NULL;
        /* The client never calls back from within hapi_command(): the
         * command joins the pending list after it was taken. */
        if (hapi_command(ln->api, c->line, answer_cb, ln) < 0) {
            /* Not taken (cannot happen for lines we built). */
            if (c->kind == C_PROBE)
                ln->probing = false;
            fail(ln, c->line, HAPI_EANSWER, "command refused by the client");
            pthread_mutex_unlock(&ln->mu);
            free(c);
            return;
        }
        if (ln->ftail)
            ln->ftail->next = c;
        else
            ln->fhead = c;
        ln->ftail = c;
        ln->nf++;
        pthread_mutex_unlock(&ln->mu);
    }
}

static void wake_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop;
    (void)revents;
    pump(a->data);
}

static void tick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct lane *ln = t->data;
    double now = now_mono();
    struct node *dead = NULL;
    bool warn = false, again;
    uint64_t pid;

    (void)loop;
    (void)revents;
    pthread_mutex_lock(&ln->mu);
    if (ln->state == L_UP && !ln->unchecked_warned && now - ln->checked_at >= UNCHECKED_AFTER)
        ln->unchecked_warned = warn = true;
    pid = ln->haproxy_pid;
    again = ln->checked_again;
    ln->checked_again = false;
    while (ln->ghead && now - ln->ghead->gone_at >= ln->grace) {
        struct node *x = ln->ghead;

        ln->ghead = x->gnext;
        if (!ln->ghead)
            ln->gtail = NULL;
        ln->ngrace--;
        x->gnext = dead;
        dead = x;
    }
    /* A restarted or reloaded HAProxy has an empty map: the probe notices
     * that the sentinel is gone and sets the lane up again. Pages past
     * their fresh-until are forgotten on the same beat (HAProxy already
     * ignores them): the table only holds what the lane can serve. */
    if (ln->state == L_UP && !ln->probing && now - ln->last_probe >= PROBE_EVERY) {
        int64_t wall = (int64_t)time(NULL);

        for (size_t b = 0; b <= ln->mask && ln->n; b++) {
            struct node *x = ln->pb[b];

            while (x) {
                struct node *next = x->pnext;

                if (x->fresh_until <= wall) {
                    unlink_node(ln, x);
                    to_grace(ln, x);
                    (void)enqueue(ln, C_PLAIN, "del map %s %s", ln->map, x->path);
                }
                x = next;
            }
        }
        if (enqueue(ln, C_PROBE, "get map %s %s", ln->map, LANE_SENTINEL) == 0) {
            ln->probing = true;
            ln->last_probe = now;
        }
    }
    pthread_mutex_unlock(&ln->mu);
    /* Logged here, on the loop, not from the delivery thread's check. */
    if (warn)
        log_warning(
            "lane_unchecked",
            "haproxy_pid=%" PRIu64 " for_s=%.0f hint=\"the lane is set up but HAProxy does "
            "not check cedra_lane/lane1, so it stays closed: run HAProxy with CEDRA_LANE=on\"",
            pid, UNCHECKED_AFTER);
    if (again)
        log_notice("lane_checked", "haproxy_pid=%" PRIu64 " after=lane_unchecked", pid);
    while (dead) {
        struct node *next = dead->gnext;

        l1_release(dead->ref);
        free(dead);
        dead = next;
    }
    pump(ln);
}

/* ---- API ------------------------------------------------------------------------- */

static bool word_ok(const char *s)
{
    if (!*s || strlen(s) > 256)
        return false;
    for (; *s; s++)
        if (*s <= ' ' || *s == ';' || *s == '\\' || *s == 0x7f)
            return false;
    return true;
}

struct lane *lane_new(struct ev_loop *loop, const struct lane_cfg *cfg, char *err, size_t errlen)
{
    struct lane *ln;
    size_t buckets = 16;

    if (!cfg->socket || !cfg->map || !cfg->cookies || !word_ok(cfg->map) ||
        !word_ok(cfg->cookies) || cfg->npatterns > LANE_MAX_COOKIES || cfg->max_entries == 0 ||
        cfg->max_entries > (1u << 22)) {
        snprintf(err, errlen, "lane: bad settings (map, cookie file, patterns or max entries)");
        return NULL;
    }
    for (size_t i = 0; i < cfg->npatterns; i++)
        if (!word_ok(cfg->patterns[i])) {
            snprintf(err, errlen, "lane: cookie pattern '%s' cannot be sent to HAProxy",
                     cfg->patterns[i]);
            return NULL;
        }
    ln = calloc(1, sizeof(*ln));
    if (!ln)
        goto nomem;
    while (buckets < cfg->max_entries * 2)
        buckets <<= 1;
    ln->loop = loop;
    ln->mask = buckets - 1;
    ln->pb = calloc(buckets, sizeof(*ln->pb));
    ln->ib = calloc(buckets, sizeof(*ln->ib));
    ln->map = strdup(cfg->map);
    ln->cookies = strdup(cfg->cookies);
    ln->api = hapi_new(loop, cfg->socket, cfg->timeout > 0 ? cfg->timeout : 1.0);
    if (!ln->pb || !ln->ib || !ln->map || !ln->cookies || !ln->api)
        goto fail;
    for (size_t i = 0; i < cfg->npatterns; i++) {
        ln->patterns[i] = strdup(cfg->patterns[i]);
        if (!ln->patterns[i])
            goto fail;
        ln->npatterns++;
    }
    ln->grace = cfg->grace > 0 ? cfg->grace : 5.0;
    ln->max_lag = cfg->max_lag > 0 ? cfg->max_lag : 0.5;
    ln->max_entries = cfg->max_entries;
    ln->rng = (uint64_t)(uintptr_t)ln ^ (uint64_t)time(NULL);
    pthread_mutex_init(&ln->mu, NULL);
    ev_async_init(&ln->wake, wake_cb);
    ln->wake.data = ln;
    ev_async_start(loop, &ln->wake);
    ev_timer_init(&ln->retry, retry_cb, 0., 0.);
    ln->retry.data = ln;
    ev_timer_start(loop, &ln->retry);
    ev_timer_init(&ln->tick, tick_cb, TICK, TICK);
    ln->tick.data = ln;
    ev_timer_start(loop, &ln->tick);
    return ln;

fail:
    if (ln) {
        hapi_free(ln->api);
        for (size_t i = 0; i < ln->npatterns; i++)
            free(ln->patterns[i]);
        free(ln->map);
        free(ln->cookies);
        free(ln->pb);
        free(ln->ib);
        free(ln);
    }
nomem:
    snprintf(err, errlen, "lane: out of memory, or bad Runtime API socket path");
    return NULL;
}

void lane_free(struct lane *ln)
{
    struct node *x;

    if (!ln)
        return;
    ev_async_stop(ln->loop, &ln->wake);
    ev_timer_stop(ln->loop, &ln->retry);
    ev_timer_stop(ln->loop, &ln->tick);
    ln->freeing = true;
    hapi_free(ln->api); /* pending commands are answered HAPI_EABORT */
    pthread_mutex_lock(&ln->mu);
    withdraw_all(ln);
    drop_queue(ln);
    free_cmds(ln->fhead);
    pthread_mutex_unlock(&ln->mu);
    while ((x = ln->ghead) != NULL) {
        ln->ghead = x->gnext;
        l1_release(x->ref);
        free(x);
    }
    for (size_t i = 0; i < ln->npatterns; i++)
        free(ln->patterns[i]);
    pthread_mutex_destroy(&ln->mu);
    free(ln->map);
    free(ln->cookies);
    free(ln->pb);
    free(ln->ib);
    free(ln);
}

/* Characters a map key can carry through the Runtime API as one word, and
 * that HAProxy's "path" fetch can return: the rest goes through SPOE. */
static bool path_ok(const char *p, size_t len)
{
    static const char extra[] = "-._~/%!*+,=:@&()$";

    if (len == 0 || p[0] != '/' || len > LANE_PATH_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = p[i];

        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              (ch && strchr(extra, ch))))
            return false;
    }
    return true;
}

static bool locale_ok(const char *s)
{
    size_t n = 0;

    for (; s[n]; n++)
        if (!((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= 'A' && s[n] <= 'Z') ||
              (s[n] >= '0' && s[n] <= '9') || s[n] == '-' || s[n] == '_'))
            return false;
    return n > 0 && n < 32;
}

enum lane_publish_result lane_publish(struct lane *ln, struct l1_ref *ref, const char *path,
                                      size_t pathlen, int64_t fresh_until, const char *locale,
                                      const struct isr_conf *isr, uint64_t gen)
{
    enum lane_publish_result r = LANE_PUBLISHED;
    uint64_t id = l1_ref_id(ref);
    struct node *x, *old;

    if (!path_ok(path, pathlen) || !locale_ok(locale) || fresh_until <= 0)
        return LANE_BAD_PATH;
    pthread_mutex_lock(&ln->mu);
    old = find_path(ln, path, pathlen);
    if (ln->state != L_UP)
        r = LANE_CLOSED;
    else if (gen != ln->gen)
        r = LANE_OLD_CONF;
    else if (old && old->id == id)
        r = LANE_ALREADY;
    else if (find_id(ln, id)) /* one path per entry: the drop hook withdraws by id */
        r = LANE_ALREADY;
    else if (!l1_ref_live(ref)) /* the drop hook has run, or will run after us */
        r = LANE_NOT_LIVE;
    else if (!old && ln->n >= ln->max_entries)
        r = LANE_FULL;
    else if (ln->nq >= QUEUE_MAX) { /* HAProxy falls behind: start over, publish later */
        queue_clear(ln);
        r = LANE_FULL;
    }
    if (r != LANE_PUBLISHED) {
        if (r != LANE_ALREADY)
            ln->st.refused++;
        pthread_mutex_unlock(&ln->mu);
        return r;
    }
    x = malloc(sizeof(*x) + pathlen + 1);
    if (!x) {
        ln->st.refused++;
        pthread_mutex_unlock(&ln->mu);
        return LANE_FULL;
    }
    if (old) {
        /* The path's previous entry was replaced in the cache and its drop
         * hook has not run yet: withdraw it first, in this order. */
        unlink_node(ln, old);
        to_grace(ln, old);
        (void)enqueue(ln, C_PLAIN, "del map %s %.*s", ln->map, (int)pathlen, path);
    }
    if (enqueue(ln, C_PLAIN, "add map %s %.*s %016" PRIx64 ":%" PRId64 ":%s", ln->map, (int)pathlen,
                path, id, fresh_until, locale) < 0) {
        free(x);
        ln->st.refused++;
        pthread_mutex_unlock(&ln->mu);
        return LANE_FULL;
    }
    x->ref = l1_ref_hold(ref);
    x->id = id;
    x->fresh_until = fresh_until;
    x->isr = *isr;
    x->pathlen = pathlen;
    memcpy(x->path, path, pathlen);
    x->path[pathlen] = '\0';
    x->gnext = NULL;
    x->pnext = ln->pb[hash_bytes(path, pathlen) & ln->mask];
    ln->pb[hash_bytes(path, pathlen) & ln->mask] = x;
    x->inext = ln->ib[hash_id(id) & ln->mask];
    ln->ib[hash_id(id) & ln->mask] = x;
    ln->n++;
    ln->st.published++;
    pthread_mutex_unlock(&ln->mu);
    wake(ln);
    return r;
}

void lane_drop_hook(void *ud, const struct l1_ref *r)
{
    struct lane *ln = ud;
    struct node *x;

    pthread_mutex_lock(&ln->mu);
    x = ln->n ? find_id(ln, l1_ref_id(r)) : NULL;
    if (x) {
        unlink_node(ln, x);
        to_grace(ln, x);
        if (ln->nq >= QUEUE_MAX)
            queue_clear(ln);
        else if (enqueue(ln, C_PLAIN, "del map %s %s", ln->map, x->path) < 0)
            queue_clear(ln);
    }
    pthread_mutex_unlock(&ln->mu);
    if (x)
        wake(ln);
}

void lane_reset(struct lane *ln, uint64_t gen)
{
    pthread_mutex_lock(&ln->mu);
    ln->gen = gen;
    ln->st.resets++;
    if (ln->state == L_UP)
        queue_clear(ln);
    else
        withdraw_all(ln); /* the set-up clears HAProxy's map anyway */
    pthread_mutex_unlock(&ln->mu);
    wake(ln);
}

struct l1_ref *lane_fill(struct lane *ln, uint64_t id, const char *path, size_t pathlen,
                         struct isr_conf *isr, bool *grace)
{
    struct l1_ref *ref = NULL;
    struct node *x;

    pthread_mutex_lock(&ln->mu);
    x = find_path(ln, path, pathlen);
    if (x && x->id == id) {
        ref = l1_ref_hold(x->ref);
        *isr = x->isr;
        *grace = false;
        ln->st.fills++;
    } else {
        for (x = ln->ghead; x; x = x->gnext)
            if (x->id == id && x->pathlen == pathlen && memcmp(x->path, path, pathlen) == 0)
                break;
        if (x) {
            ref = l1_ref_hold(x->ref);
            *isr = x->isr;
            *grace = true;
            ln->st.grace_fills++;
        } else {
            ln->st.unknown_fills++;
        }
    }
    pthread_mutex_unlock(&ln->mu);
    return ref;
}

bool lane_up(struct lane *ln, uint64_t haproxy_pid)
{
    double now = now_mono();
    bool up;

    pthread_mutex_lock(&ln->mu);
    up = ln->state == L_UP && (haproxy_pid == 0 || haproxy_pid == ln->haproxy_pid);
    if (up && haproxy_pid != 0) {
        ln->st.checks++;
        ln->checked_at = now;
        if (ln->unchecked_warned)
            ln->checked_again = true;
        ln->unchecked_warned = false;
    }
    if (up && ln->fhead && now - ln->fhead->t > ln->max_lag)
        up = false;
    if (up && ln->qhead && now - ln->qhead->t > ln->max_lag)
        up = false;
    pthread_mutex_unlock(&ln->mu);
    return up;
}

void lane_get_stats(struct lane *ln, struct lane_stats *out)
{
    pthread_mutex_lock(&ln->mu);
    *out = ln->st;
    out->entries = ln->n;
    out->grace_entries = ln->ngrace;
    out->up = ln->state == L_UP;
    pthread_mutex_unlock(&ln->mu);
}
