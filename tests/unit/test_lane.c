/* Unit tests of the fast lane (spoa/lane.c) against a fake HAProxy Runtime
 * API: a thread serving a UNIX socket, one command per connection, that
 * records every line, keeps its own map (so that the sentinel probe answers
 * like HAProxy would), and can hold an answer, fail the next commands
 * (unexpected text, or a close without answer) or lose its map (a restart).
 * The lane runs on an ev loop in the test thread, driven until a condition
 * holds (a deadline fails the test). Covered: the set-up sequence, publish,
 * withdraw and the grace period, the order of adds and dels around entry
 * replacement, lane_reset, failure and recovery, the probe, a burst of
 * withdrawals collapsing into one clear, fills, and lane_free with commands
 * pending. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <ev.h>

#include "isr.h"
#include "l1.h"
#include "l1_pages.h"
#include "lane.h"
#include "log.h"
#include "util.h"

#define MAP "/etc/haproxy/cedra-lane.map"
#define ACL "/etc/haproxy/cedra-lane-cookies.acl"
#define PREFIX "storefront:"
#define DEADLINE 8.0

#define PROBE_LINE "get map " MAP " " LANE_SENTINEL
#define SENTINEL_LINE "add map " MAP " " LANE_SENTINEL " 1"
#define FOUND_YES                                                                                  \
    "type=str, case=sensitive, found=yes, idx=tree, key=\"@cedra-lane-ready\", value=\"1\", "      \
    "type=\"str\"\n"
#define FOUND_NO "type=str, case=sensitive, found=no\n"

/* ---- fake Runtime API ---------------------------------------------------------- */

enum fail_mode { FAIL_TEXT, FAIL_CLOSE };

struct kv {
    char *k, *v;
};

struct fake {
    pthread_t th;
    int lfd;
    int stop[2];
    char path[160];

    pthread_mutex_t mu;
    pthread_cond_t cv;
    char **lines;
    size_t nlines, cap;
    struct kv *map;
    size_t nmap, mapcap;
    char fail_prefix[256];
    int fail_count;
    enum fail_mode fail_mode;
    char hold_prefix[256];
    bool hold_armed, holding, stopping;
    int errors; /* the thread cannot use cmocka's asserts */
};

static bool starts(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

static void map_del(struct fake *fk, const char *k)
{
    size_t i = 0;

    while (i < fk->nmap) {
        if (strcmp(fk->map[i].k, k) == 0) {
            free(fk->map[i].k);
            free(fk->map[i].v);
            fk->map[i] = fk->map[--fk->nmap];
        } else {
            i++;
        }
    }
}

static void map_clear(struct fake *fk)
{
    for (size_t i = 0; i < fk->nmap; i++) {
        free(fk->map[i].k);
        free(fk->map[i].v);
    }
    fk->nmap = 0;
}

static void map_add(struct fake *fk, const char *k, const char *v)
{
    if (fk->nmap == fk->mapcap) {
        size_t cap = fk->mapcap ? fk->mapcap * 2 : 64;
        struct kv *m = realloc(fk->map, cap * sizeof(*m));

        if (!m) {
            fk->errors++;
            return;
        }
        fk->map = m;
        fk->mapcap = cap;
    }
    fk->map[fk->nmap].k = strdup(k);
    fk->map[fk->nmap].v = strdup(v);
    fk->nmap++;
}

static const char *map_get(const struct fake *fk, const char *k)
{
    for (size_t i = 0; i < fk->nmap; i++)
        if (strcmp(fk->map[i].k, k) == 0)
            return fk->map[i].v;
    return NULL;
}

/* Mutex held. What HAProxy would answer, applied to the fake's map. */
static const char *apply(struct fake *fk, const char *line)
{
    char buf[1100], *save = NULL, *w[5] = {0};
    size_t n = 0;

    if (strcmp(line, "show info") == 0)
        return "Name: HAProxy\nVersion: 2.6.12\nPid: 4242\nUptime_sec: 1\n\n";
    str_copy(buf, line, sizeof(buf));
    for (char *t = strtok_r(buf, " ", &save); t && n < 5; t = strtok_r(NULL, " ", &save))
        w[n++] = t;
    if (n < 3 || strcmp(w[1], "map") != 0 || strcmp(w[2], MAP) != 0)
        return "\n";
    if (strcmp(w[0], "clear") == 0 && n == 3)
        map_clear(fk);
    else if (strcmp(w[0], "add") == 0 && n == 5)
        map_add(fk, w[3], w[4]);
    else if (strcmp(w[0], "del") == 0 && n == 4)
        map_del(fk, w[3]);
    else if (strcmp(w[0], "get") == 0 && n == 4)
        return strcmp(w[3], LANE_SENTINEL) == 0 && map_get(fk, LANE_SENTINEL) ? FOUND_YES
                                                                              : FOUND_NO;
    else
        fk->errors++;
    return "\n";
}

static void serve(struct fake *fk, int fd)
{
    char line[1100];
    size_t len = 0;
    const char *ans = "\n";
    bool answer = true;

    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t r;

        if (poll(&p, 1, 5000) <= 0)
            goto out;
        r = read(fd, line + len, sizeof(line) - 1 - len);
        if (r <= 0)
            goto out;
        len += (size_t)r;
        line[len] = '\0';
        if (memchr(line, '\n', len))
            break;
        if (len == sizeof(line) - 1)
            goto out;
    }
    *strchr(line, '\n') = '\0';
    pthread_mutex_lock(&fk->mu);
    if (fk->nlines == fk->cap) {
        size_t cap = fk->cap ? fk->cap * 2 : 256;
        char **l = realloc(fk->lines, cap * sizeof(*l));

        if (!l) {
            fk->errors++;
            pthread_mutex_unlock(&fk->mu);
            goto out;
        }
        fk->lines = l;
        fk->cap = cap;
    }
    fk->lines[fk->nlines++] = strdup(line);
    pthread_cond_broadcast(&fk->cv);
    if (fk->hold_armed && starts(line, fk->hold_prefix)) {
        fk->hold_armed = false;
        fk->holding = true;
        pthread_cond_broadcast(&fk->cv);
        while (fk->holding && !fk->stopping)
            pthread_cond_wait(&fk->cv, &fk->mu);
    }
    if (fk->fail_count > 0 && starts(line, fk->fail_prefix)) {
        fk->fail_count--;
        if (fk->fail_mode == FAIL_CLOSE)
            answer = false;
        else
            ans = "Unknown command, please enter \"help\"\n";
    } else {
        ans = apply(fk, line);
    }
    pthread_mutex_unlock(&fk->mu);
    /* The client may have gone (timeout, lane_free()): not an error. */
    if (answer)
        (void)send(fd, ans, strlen(ans), MSG_NOSIGNAL);
out:
    close(fd);
}

static void *fake_main(void *arg)
{
    struct fake *fk = arg;

    for (;;) {
        struct pollfd p[2] = {{.fd = fk->lfd, .events = POLLIN},
                              {.fd = fk->stop[0], .events = POLLIN}};
        int fd;

        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents)
            break;
        if (!(p[0].revents & POLLIN))
            continue;
        fd = accept(fk->lfd, NULL, NULL);
        if (fd >= 0)
            serve(fk, fd);
    }
    return NULL;
}

static void fake_start(struct fake *fk, const char *dir)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};

    memset(fk, 0, sizeof(*fk));
    snprintf(fk->path, sizeof(fk->path), "%s/api.sock", dir);
    str_copy(sa.sun_path, fk->path, sizeof(sa.sun_path));
    pthread_mutex_init(&fk->mu, NULL);
    pthread_cond_init(&fk->cv, NULL);
    fk->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fk->lfd >= 0);
    assert_int_equal(bind(fk->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fk->lfd, 64), 0);
    assert_int_equal(pipe(fk->stop), 0);
    assert_int_equal(pthread_create(&fk->th, NULL, fake_main, fk), 0);
}

static void fake_stop(struct fake *fk)
{
    pthread_mutex_lock(&fk->mu);
    fk->stopping = true;
    pthread_cond_broadcast(&fk->cv);
    pthread_mutex_unlock(&fk->mu);
    assert_int_equal(write(fk->stop[1], "x", 1), 1);
    pthread_join(fk->th, NULL);
    close(fk->stop[0]);
    close(fk->stop[1]);
    close(fk->lfd);
    unlink(fk->path);
    assert_int_equal(fk->errors, 0);
    for (size_t i = 0; i < fk->nlines; i++)
        free(fk->lines[i]);
    free(fk->lines);
    map_clear(fk);
    free(fk->map);
    pthread_cond_destroy(&fk->cv);
    pthread_mutex_destroy(&fk->mu);
}

static size_t fake_count(struct fake *fk)
{
    size_t n;

    pthread_mutex_lock(&fk->mu);
    n = fk->nlines;
    pthread_mutex_unlock(&fk->mu);
    return n;
}

/* The next count commands starting with prefix fail. */
static void fake_fail(struct fake *fk, const char *prefix, int count, enum fail_mode mode)
{
    pthread_mutex_lock(&fk->mu);
    str_copy(fk->fail_prefix, prefix, sizeof(fk->fail_prefix));
    fk->fail_count = count;
    fk->fail_mode = mode;
    pthread_mutex_unlock(&fk->mu);
}

/* The next command starting with prefix waits for fake_release(). */
static void fake_hold(struct fake *fk, const char *prefix)
{
    pthread_mutex_lock(&fk->mu);
    str_copy(fk->hold_prefix, prefix, sizeof(fk->hold_prefix));
    fk->hold_armed = true;
    pthread_mutex_unlock(&fk->mu);
}

static bool fake_holding(struct fake *fk)
{
    bool h;

    pthread_mutex_lock(&fk->mu);
    h = fk->holding;
    pthread_mutex_unlock(&fk->mu);
    return h;
}

static void fake_release(struct fake *fk)
{
    pthread_mutex_lock(&fk->mu);
    fk->holding = false;
    pthread_cond_broadcast(&fk->cv);
    pthread_mutex_unlock(&fk->mu);
}

/* HAProxy restarted: an empty map, without any command. */
static void fake_lose_map(struct fake *fk)
{
    pthread_mutex_lock(&fk->mu);
    map_clear(fk);
    pthread_mutex_unlock(&fk->mu);
}

/* The value under key in the fake's map (copied into out), or false. */
static bool fake_map_get(struct fake *fk, const char *key, char *out, size_t outlen)
{
    const char *v;

    pthread_mutex_lock(&fk->mu);
    v = map_get(fk, key);
    if (v)
        str_copy(out, v, outlen);
    pthread_mutex_unlock(&fk->mu);
    return v != NULL;
}

/* Lines received from index from on, without the probes; the count of
 * probes in *probes (may be NULL). Returns how many were copied (up to max,
 * strdup'ed: free with free_lines). */
static size_t fake_lines(struct fake *fk, size_t from, char **out, size_t max, size_t *probes)
{
    size_t n = 0, p = 0;

    pthread_mutex_lock(&fk->mu);
    for (size_t i = from; i < fk->nlines; i++) {
        if (strcmp(fk->lines[i], PROBE_LINE) == 0)
            p++;
        else if (n < max)
            out[n++] = strdup(fk->lines[i]);
    }
    pthread_mutex_unlock(&fk->mu);
    if (probes)
        *probes = p;
    return n;
}

static size_t fake_nonprobe(struct fake *fk, size_t from)
{
    size_t n = 0;

    pthread_mutex_lock(&fk->mu);
    for (size_t i = from; i < fk->nlines; i++)
        n += strcmp(fk->lines[i], PROBE_LINE) != 0;
    pthread_mutex_unlock(&fk->mu);
    return n;
}

static void free_lines(char **l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(l[i]);
}

static const char *const setup_seq[] = {
    "show info",
    "clear map " MAP,
    "clear acl " ACL,
    "add acl " ACL " session",
    "add acl " ACL " auth_token",
    SENTINEL_LINE,
};
#define NSETUP (sizeof(setup_seq) / sizeof(setup_seq[0]))

/* ---- fixture ------------------------------------------------------------------------ */

struct fx {
    struct ev_loop *loop;
    struct fake fk;
    struct l1 *l1;
    struct lane *ln;
    struct lane_cfg cfg;
    struct isr_conf isr;
    int64_t fresh;
    char dir[64];
};

typedef bool pred_fn(struct fx *fx, const void *arg);

static void nudge_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)t;
    (void)revents;
}

/* Runs the loop until pred holds; false after secs. A short repeating timer
 * makes each iteration return, to look at what the fake thread changed. */
static bool run_until(struct fx *fx, pred_fn *pred, const void *arg, double secs)
{
    double end = now_mono() + secs;
    ev_timer nudge;
    bool ok;

    ev_timer_init(&nudge, nudge_cb, 0.01, 0.01);
    ev_timer_start(fx->loop, &nudge);
    while (!(ok = pred(fx, arg)) && now_mono() < end)
        ev_run(fx->loop, EVRUN_ONCE);
    ev_timer_stop(fx->loop, &nudge);
    return ok;
}

static struct lane_stats stats(struct fx *fx)
{
    struct lane_stats st;

    lane_get_stats(fx->ln, &st);
    return st;
}

static bool is_up(struct fx *fx, const void *arg)
{
    (void)arg;
    return lane_up(fx->ln, 0);
}

struct span {
    size_t from, n;
};

/* At least n lines other than probes since from, and every command the fake
 * received was answered. */
static bool quiet(struct fx *fx, const void *arg)
{
    const struct span *sp = arg;
    size_t n = fake_count(&fx->fk);

    return fake_nonprobe(&fx->fk, sp->from) >= sp->n && stats(fx).commands == n;
}

static bool failures_at_least(struct fx *fx, const void *arg)
{
    return stats(fx).failures >= *(const uint64_t *)arg;
}

static bool setups_up(struct fx *fx, const void *arg)
{
    return stats(fx).setups >= *(const uint64_t *)arg && lane_up(fx->ln, 0);
}

static bool held(struct fx *fx, const void *arg)
{
    (void)arg;
    return fake_holding(&fx->fk);
}

static bool no_grace(struct fx *fx, const void *arg)
{
    (void)arg;
    return stats(fx).grace_entries == 0;
}

static void settle(struct fx *fx, size_t from, size_t n)
{
    struct span sp = {from, n};

    assert_true(run_until(fx, quiet, &sp, DEADLINE));
}

static void fx_init(struct fx *fx, bool wait_up)
{
    static const char *const prefixes[] = {PREFIX};
    char err[256] = "";

    memset(fx, 0, sizeof(*fx));
    str_copy(fx->dir, "/tmp/test_lane.XXXXXX", sizeof(fx->dir));
    assert_non_null(mkdtemp(fx->dir));
    fake_start(&fx->fk, fx->dir);
    fx->loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(fx->loop);
    fx->l1 = l1_new(64u << 20, 0);
    assert_non_null(fx->l1);
    l1_set_enabled(fx->l1, true);
    assert_int_equal(l1_set_prefixes(fx->l1, prefixes, 1), 0);
    fx->cfg.socket = fx->fk.path;
    fx->cfg.map = MAP;
    fx->cfg.cookies = ACL;
    fx->cfg.patterns[0] = "session";
    fx->cfg.patterns[1] = "auth_token";
    fx->cfg.npatterns = 2;
    fx->cfg.timeout = 3.0;
    fx->cfg.grace = 0.2;
    fx->cfg.max_lag = 3.0; /* sanitizers are slow: no spurious lag closures */
    fx->cfg.max_entries = 1024;
    fx->isr = (struct isr_conf)ISR_CONF_DEFAULT;
    fx->fresh = (int64_t)time(NULL) + 3600;
    fx->ln = lane_new(fx->loop, &fx->cfg, err, sizeof(err));
    if (!fx->ln)
        fail_msg("lane_new: %s", err);
    l1_set_drop_hook(fx->l1, lane_drop_hook, fx->ln);
    if (wait_up) {
        assert_true(run_until(fx, is_up, NULL, DEADLINE));
        settle(fx, 0, NSETUP);
    }
}

static void fx_done(struct fx *fx)
{
    lane_free(fx->ln);
    l1_free(fx->l1);
    fake_stop(&fx->fk);
    ev_loop_destroy(fx->loop);
    assert_int_equal(rmdir(fx->dir), 0);
}

/* ---- entries ------------------------------------------------------------------------ */

/* Cached under PREFIX key; the caller's reference. */
static struct l1_ref *put(struct fx *fx, const char *key, int64_t lm)
{
    return l1_pages_put(fx->l1, PREFIX, key, lm);
}

static size_t invalidate(struct fx *fx, const char *key)
{
    return l1_pages_invalidate(fx->l1, PREFIX, key);
}

static enum lane_publish_result pub(struct fx *fx, struct l1_ref *r, const char *path, uint64_t gen)
{
    return lane_publish(fx->ln, r, path, strlen(path), fx->fresh, "fr", &fx->isr, gen);
}

static void add_line(char *out, size_t len, struct fx *fx, const char *path, const struct l1_ref *r)
{
    snprintf(out, len, "add map " MAP " %s %016" PRIx64 ":%" PRId64 ":fr", path, l1_ref_id(r),
             fx->fresh);
}

static void del_line(char *out, size_t len, const char *path)
{
    snprintf(out, len, "del map " MAP " %s", path);
}

/* The non-probe lines since from are exactly want[0..n) (after the lane
 * answered all of them). */
static void expect_lines(struct fx *fx, size_t from, const char *const *want, size_t n)
{
    char *got[64];
    size_t m;

    settle(fx, from, n);
    m = fake_lines(&fx->fk, from, got, 64, NULL);
    for (size_t i = 0; i < m || i < n; i++) {
        if (i >= m || i >= n || strcmp(got[i], want[i]) != 0) {
            for (size_t j = 0; j < m; j++)
                print_message("got[%zu] %s\n", j, got[j]);
            for (size_t j = 0; j < n; j++)
                print_message("want[%zu] %s\n", j, want[j]);
            free_lines(got, m);
            fail_msg("Runtime API line %zu differs", i);
        }
    }
    free_lines(got, m);
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_bad_settings(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct lane_cfg cfg = {
        .socket = "/nonexistent/api.sock", .map = "a map", .cookies = ACL, .max_entries = 16};
    char err[256];

    (void)state;
    assert_null(lane_new(loop, &cfg, err, sizeof(err)));
    cfg.map = MAP;
    cfg.patterns[0] = "a;b";
    cfg.npatterns = 1;
    assert_null(lane_new(loop, &cfg, err, sizeof(err)));
    cfg.npatterns = 0;
    cfg.max_entries = 0;
    assert_null(lane_new(loop, &cfg, err, sizeof(err)));
    ev_loop_destroy(loop);
}

/* 1. show info, clear map, clear acl, the patterns, then the sentinel; up only
 * once the sentinel is answered. */
static void test_setup(void **state)
{
    struct fx fx;
    struct l1_ref *r;
    struct lane_stats st;

    (void)state;
    fx_init(&fx, false);
    r = put(&fx, "/fr/x", 1000);
    assert_false(lane_up(fx.ln, 0));
    assert_int_equal(pub(&fx, r, "/fr/x", 0), LANE_CLOSED);
    fake_hold(&fx.fk, SENTINEL_LINE);
    assert_true(run_until(&fx, held, NULL, DEADLINE));
    /* The fake has the sentinel and has not answered yet. */
    assert_int_equal(fake_count(&fx.fk), NSETUP);
    assert_false(lane_up(fx.ln, 0));
    assert_int_equal(pub(&fx, r, "/fr/x", 0), LANE_CLOSED);
    fake_release(&fx.fk);
    assert_true(run_until(&fx, is_up, NULL, DEADLINE));
    expect_lines(&fx, 0, setup_seq, NSETUP);
    /* Only the HAProxy process it was set up in (show info's Pid) may use it. */
    assert_true(lane_up(fx.ln, 4242));
    assert_false(lane_up(fx.ln, 4241));
    st = stats(&fx);
    assert_true(st.up);
    assert_int_equal(st.setups, 1);
    assert_int_equal(st.failures, 0);
    assert_int_equal(st.refused, 2);
    assert_int_equal(st.published, 0);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.commands, fake_count(&fx.fk));
    /* Only that process's checks count as HAProxy checking the lane (the
     * one above); an operator's look (pid 0) and another process do not. */
    assert_int_equal(st.checks, 1);
    l1_release(r);
    fx_done(&fx);
}

/* 2. Publish, again (already), bad paths. */
static void test_publish(void **state)
{
    struct fx fx;
    struct l1_ref *r, *f;
    struct lane_stats st;
    struct isr_conf isr;
    char add[700], val[100], want[100], longp[LANE_PATH_MAX + 2];
    const char *bad[] = {"/fr/a b", "/fr/a;b", "/fr/a\\b", "fr/x", "", "/fr/\x01", "/fr/a\"b"};
    const char *w[1];
    size_t base;
    bool grace = true;

    (void)state;
    fx_init(&fx, true);
    base = fake_count(&fx.fk);
    r = put(&fx, "/fr/x", 1000);
    assert_int_equal(pub(&fx, r, "/fr/x", 0), LANE_PUBLISHED);
    add_line(add, sizeof(add), &fx, "/fr/x", r);
    w[0] = add;
    expect_lines(&fx, base, w, 1);
    snprintf(want, sizeof(want), "%016" PRIx64 ":%" PRId64 ":fr", l1_ref_id(r), fx.fresh);
    assert_true(fake_map_get(&fx.fk, "/fr/x", val, sizeof(val)));
    assert_string_equal(val, want);
    /* Again, under the same path or another one: nothing sent. */
    assert_int_equal(pub(&fx, r, "/fr/x", 0), LANE_ALREADY);
    assert_int_equal(pub(&fx, r, "/fr/x2", 0), LANE_ALREADY);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(pub(&fx, r, bad[i], 0), LANE_BAD_PATH);
    longp[0] = '/';
    memset(longp + 1, 'a', LANE_PATH_MAX);
    longp[LANE_PATH_MAX + 1] = '\0';
    assert_int_equal(pub(&fx, r, longp, 0), LANE_BAD_PATH);
    assert_int_equal(lane_publish(fx.ln, r, "/fr/y", 5, fx.fresh, "f r", &fx.isr, 0),
                     LANE_BAD_PATH);
    settle(&fx, base, 1);
    expect_lines(&fx, base, w, 1);
    /* The fill finds it. */
    f = lane_fill(fx.ln, l1_ref_id(r), "/fr/x", 5, &isr, &grace);
    assert_ptr_equal(f, r);
    assert_false(grace);
    assert_int_equal(isr.max_body, fx.isr.max_body);
    l1_release(f);
    st = stats(&fx);
    assert_int_equal(st.published, 1);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.refused, 0);
    assert_int_equal(st.fills, 1);
    assert_int_equal(st.withdrawn, 0);
    assert_int_equal(st.failures, 0);
    l1_release(r);
    fx_done(&fx);
}

/* 3. Invalidation withdraws; the grace period keeps the fill a while. */
static void test_withdraw_grace(void **state)
{
    struct fx fx;
    struct l1_ref *r, *f;
    struct lane_stats st;
    struct isr_conf isr;
    char add[700], del[700], val[100];
    const char *w[2];
    size_t base;
    uint64_t id;
    bool grace = false;

    (void)state;
    fx_init(&fx, true);
    base = fake_count(&fx.fk);
    r = put(&fx, "/fr/x", 1000);
    id = l1_ref_id(r);
    assert_int_equal(pub(&fx, r, "/fr/x", 0), LANE_PUBLISHED);
    settle(&fx, base, 1);
    assert_int_equal(invalidate(&fx, "/fr/x"), 1);
    st = stats(&fx);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.grace_entries, 1);
    assert_int_equal(st.withdrawn, 1);
    add_line(add, sizeof(add), &fx, "/fr/x", r);
    l1_release(r);
    /* In grace (the loop has not run since): still filled, from the lane's
     * own reference. */
    f = lane_fill(fx.ln, id, "/fr/x", 5, &isr, &grace);
    assert_non_null(f);
    assert_true(grace);
    assert_int_equal(l1_ref_id(f), id);
    assert_false(l1_ref_live(f));
    l1_release(f);
    /* Another path for the same id is not a fill. */
    assert_null(lane_fill(fx.ln, id, "/fr/y", 5, &isr, &grace));
    del_line(del, sizeof(del), "/fr/x");
    w[0] = add;
    w[1] = del;
    expect_lines(&fx, base, w, 2);
    assert_false(fake_map_get(&fx.fk, "/fr/x", val, sizeof(val)));
    assert_true(run_until(&fx, no_grace, NULL, DEADLINE));
    assert_null(lane_fill(fx.ln, id, "/fr/x", 5, &isr, &grace));
    st = stats(&fx);
    assert_int_equal(st.grace_fills, 1);
    assert_int_equal(st.unknown_fills, 2);
    assert_int_equal(st.fills, 0);
    assert_int_equal(st.grace_entries, 0);
    fx_done(&fx);
}

/* 4. A dropped entry is never published; a replacement's del comes before
 * its add; an entry replaced under its path by another key's entry does not
 * withdraw the new one when it leaves the cache. */
static void test_ordering(void **state)
{
    struct fx fx;
    struct l1_ref *a, *b, *c, *d;
    struct lane_stats st;
    char l[6][700], val[100], want[100];
    const char *w[6];
    size_t base;

    (void)state;
    fx_init(&fx, true);
    base = fake_count(&fx.fk);
    /* Dropped before the publish. */
    a = put(&fx, "/fr/gone", 1000);
    assert_int_equal(invalidate(&fx, "/fr/gone"), 1);
    assert_int_equal(pub(&fx, a, "/fr/gone", 0), LANE_NOT_LIVE);
    l1_release(a);
    settle(&fx, base, 0);
    expect_lines(&fx, base, setup_seq, 0); /* nothing */
    assert_int_equal(stats(&fx).refused, 1);

    /* Replaced under the same key: the hook withdraws the old one. */
    a = put(&fx, "/fr/y", 1000);
    assert_int_equal(pub(&fx, a, "/fr/y", 0), LANE_PUBLISHED);
    b = put(&fx, "/fr/y", 2000);
    assert_false(l1_ref_live(a));
    assert_int_equal(pub(&fx, b, "/fr/y", 0), LANE_PUBLISHED);
    assert_int_equal(pub(&fx, a, "/fr/y", 0), LANE_NOT_LIVE);
    add_line(l[0], sizeof(l[0]), &fx, "/fr/y", a);
    del_line(l[1], sizeof(l[1]), "/fr/y");
    add_line(l[2], sizeof(l[2]), &fx, "/fr/y", b);

    /* Two keys, one path (two raw paths reach one page): c published, then
     * d under the same path replaces it there (del before add); c leaving
     * the cache afterwards must not withdraw d's path. */
    c = put(&fx, "/fr/z?a", 1000);
    d = put(&fx, "/fr/z?b", 1000);
    assert_int_equal(pub(&fx, c, "/fr/z", 0), LANE_PUBLISHED);
    assert_int_equal(pub(&fx, d, "/fr/z", 0), LANE_PUBLISHED);
    assert_int_equal(invalidate(&fx, "/fr/z?a"), 1);
    add_line(l[3], sizeof(l[3]), &fx, "/fr/z", c);
    del_line(l[4], sizeof(l[4]), "/fr/z");
    add_line(l[5], sizeof(l[5]), &fx, "/fr/z", d);
    for (int i = 0; i < 6; i++)
        w[i] = l[i];
    expect_lines(&fx, base, w, 6);
    snprintf(want, sizeof(want), "%016" PRIx64 ":%" PRId64 ":fr", l1_ref_id(b), fx.fresh);
    assert_true(fake_map_get(&fx.fk, "/fr/y", val, sizeof(val)));
    assert_string_equal(val, want);
    snprintf(want, sizeof(want), "%016" PRIx64 ":%" PRId64 ":fr", l1_ref_id(d), fx.fresh);
    assert_true(fake_map_get(&fx.fk, "/fr/z", val, sizeof(val)));
    assert_string_equal(val, want);
    st = stats(&fx);
    assert_int_equal(st.published, 4);
    assert_int_equal(st.withdrawn, 2);
    assert_int_equal(st.entries, 2);
    assert_int_equal(st.refused, 2);
    l1_release(a);
    l1_release(b);
    l1_release(c);
    l1_release(d);
    fx_done(&fx);
}

/* 5. A new generation clears the map and sets the sentinel again. */
static void test_reset(void **state)
{
    struct fx fx;
    struct l1_ref *a, *b;
    struct lane_stats st;
    char l[4][700];
    const char *w[4];
    size_t base;

    (void)state;
    fx_init(&fx, true);
    a = put(&fx, "/fr/a", 1000);
    b = put(&fx, "/fr/b", 1000);
    assert_int_equal(pub(&fx, a, "/fr/a", 0), LANE_PUBLISHED);
    settle(&fx, 0, NSETUP + 1);
    base = fake_count(&fx.fk);
    lane_reset(fx.ln, 1);
    st = stats(&fx);
    assert_int_equal(st.resets, 1);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.withdrawn, 1);
    assert_int_equal(pub(&fx, b, "/fr/b", 0), LANE_OLD_CONF);
    assert_int_equal(pub(&fx, b, "/fr/b", 1), LANE_PUBLISHED);
    str_copy(l[0], "clear map " MAP, sizeof(l[0]));
    str_copy(l[1], SENTINEL_LINE, sizeof(l[1]));
    add_line(l[2], sizeof(l[2]), &fx, "/fr/b", b);
    for (int i = 0; i < 3; i++)
        w[i] = l[i];
    expect_lines(&fx, base, w, 3);
    assert_true(lane_up(fx.ln, 0));
    /* The entry withdrawn by the reset can be published again. */
    assert_int_equal(pub(&fx, a, "/fr/a", 0), LANE_OLD_CONF);
    assert_int_equal(pub(&fx, a, "/fr/a", 1), LANE_PUBLISHED);
    settle(&fx, base, 4);
    st = stats(&fx);
    assert_int_equal(st.published, 3);
    assert_int_equal(st.entries, 2);
    assert_int_equal(st.refused, 2);
    assert_int_equal(st.failures, 0);
    assert_int_equal(st.setups, 1);
    l1_release(a);
    l1_release(b);
    fx_done(&fx);
}

/* 6. An unexpected answer, then a close without answer: closed at once,
 * everything withdrawn, set up again after the backoff. */
static void test_failure_recovery(void **state)
{
    struct fx fx;
    struct l1_ref *a, *b, *c;
    struct lane_stats st;
    char l[NSETUP + 2][700], val[100];
    const char *w[NSETUP + 2];
    size_t base;
    uint64_t want;

    (void)state;
    fx_init(&fx, true);
    a = put(&fx, "/fr/a", 1000);
    b = put(&fx, "/fr/b", 1000);
    c = put(&fx, "/fr/c", 1000);
    assert_int_equal(pub(&fx, a, "/fr/a", 0), LANE_PUBLISHED);
    settle(&fx, 0, NSETUP + 1);
    fake_fail(&fx.fk, "add map " MAP " /fr/b ", 1, FAIL_TEXT);
    base = fake_count(&fx.fk);
    assert_int_equal(pub(&fx, b, "/fr/b", 0), LANE_PUBLISHED);
    want = 1;
    assert_true(run_until(&fx, failures_at_least, &want, DEADLINE));
    assert_false(lane_up(fx.ln, 0));
    st = stats(&fx);
    assert_false(st.up);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.withdrawn, 2);
    assert_int_equal(st.failures, 1);
    assert_int_equal(pub(&fx, c, "/fr/c", 0), LANE_CLOSED);
    want = 2;
    assert_true(run_until(&fx, setups_up, &want, DEADLINE));
    add_line(l[0], sizeof(l[0]), &fx, "/fr/b", b);
    for (size_t i = 0; i < NSETUP; i++)
        str_copy(l[1 + i], setup_seq[i], sizeof(l[1 + i]));
    for (size_t i = 0; i < NSETUP + 1; i++)
        w[i] = l[i];
    expect_lines(&fx, base, w, NSETUP + 1);
    assert_false(fake_map_get(&fx.fk, "/fr/a", val, sizeof(val)));
    assert_true(fake_map_get(&fx.fk, LANE_SENTINEL, val, sizeof(val)));

    /* The socket closed without an answer (HAPI_EEMPTY). */
    fake_fail(&fx.fk, "add map " MAP " /fr/c ", 1, FAIL_CLOSE);
    base = fake_count(&fx.fk);
    assert_int_equal(pub(&fx, c, "/fr/c", 0), LANE_PUBLISHED);
    want = 2;
    assert_true(run_until(&fx, failures_at_least, &want, DEADLINE));
    assert_false(lane_up(fx.ln, 0));
    assert_int_equal(stats(&fx).entries, 0);
    want = 3;
    assert_true(run_until(&fx, setups_up, &want, DEADLINE));
    add_line(l[0], sizeof(l[0]), &fx, "/fr/c", c);
    expect_lines(&fx, base, w, NSETUP + 1);

    /* Back to normal. */
    base = fake_count(&fx.fk);
    assert_int_equal(pub(&fx, c, "/fr/c", 0), LANE_PUBLISHED);
    expect_lines(&fx, base, w, 1);
    st = stats(&fx);
    assert_int_equal(st.failures, 2);
    assert_int_equal(st.setups, 3);
    assert_int_equal(st.published, 4);
    assert_int_equal(st.withdrawn, 3);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.refused, 1);
    assert_int_equal(st.commands, fake_count(&fx.fk));
    l1_release(a);
    l1_release(b);
    l1_release(c);
    fx_done(&fx);
}

/* 7. HAProxy restarted (empty map): the probe notices, the lane sets up
 * again. */
static void test_probe(void **state)
{
    struct fx fx;
    struct l1_ref *a;
    struct lane_stats st;
    char *got[32];
    size_t base, m, probes;
    struct span sp;
    uint64_t want = 2;
    double t0;

    (void)state;
    fx_init(&fx, true);
    a = put(&fx, "/fr/a", 1000);
    assert_int_equal(pub(&fx, a, "/fr/a", 0), LANE_PUBLISHED);
    settle(&fx, 0, NSETUP + 1);
    base = fake_count(&fx.fk);
    fake_lose_map(&fx.fk);
    t0 = now_mono();
    assert_true(run_until(&fx, setups_up, &want, DEADLINE));
    /* One probe period (1 s) and a tick, plus the backoff (<= 0.1 s). */
    assert_true(now_mono() - t0 < 3.0);
    sp.from = base;
    sp.n = NSETUP;
    assert_true(run_until(&fx, quiet, &sp, DEADLINE));
    m = fake_lines(&fx.fk, base, got, 32, &probes);
    assert_true(probes >= 1);
    free_lines(got, m);
    /* The probe that saw found=no came before the set-up. */
    pthread_mutex_lock(&fx.fk.mu);
    assert_string_equal(fx.fk.lines[base], PROBE_LINE);
    pthread_mutex_unlock(&fx.fk.mu);
    expect_lines(&fx, base, setup_seq, NSETUP);
    st = stats(&fx);
    assert_int_equal(st.failures, 1);
    assert_int_equal(st.setups, 2);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.withdrawn, 1);
    assert_true(st.up);
    l1_release(a);
    fx_done(&fx);
}

/* 8. A burst of withdrawals beyond the queue's bound collapses into one
 * clear and the sentinel. */
#define BURST 300
static void test_burst(void **state)
{
    struct fx fx;
    struct lane_stats st;
    char path[64], **got = calloc(2 * BURST, sizeof(char *));
    size_t base, m, dels = 0, clear_at = SIZE_MAX, total;
    struct span sp;
    bool sentinel_after = false;

    (void)state;
    assert_non_null(got);
    fx_init(&fx, true);
    /* In batches: 300 adds queued at once would overflow the queue too. */
    for (int i = 0; i < BURST; i++) {
        struct l1_ref *r;

        snprintf(path, sizeof(path), "/fr/p%d", i);
        r = put(&fx, path, 1000);
        assert_int_equal(pub(&fx, r, path, 0), LANE_PUBLISHED);
        l1_release(r);
        if (i % 50 == 49)
            settle(&fx, 0, NSETUP + (size_t)i + 1);
    }
    total = fake_count(&fx.fk);
    assert_true(total >= NSETUP + BURST);
    assert_int_equal(stats(&fx).entries, BURST);
    base = total;
    assert_int_equal(l1_flush(fx.l1), BURST);
    st = stats(&fx);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.withdrawn, BURST);
    sp.from = base;
    sp.n = 2;
    assert_true(run_until(&fx, quiet, &sp, DEADLINE));
    assert_true(run_until(&fx, is_up, NULL, DEADLINE));
    m = fake_lines(&fx.fk, base, got, 2 * BURST, NULL);
    for (size_t i = 0; i < m; i++) {
        if (starts(got[i], "del map "))
            dels++;
        else if (strcmp(got[i], "clear map " MAP) == 0 && clear_at == SIZE_MAX)
            clear_at = i;
        else if (strcmp(got[i], SENTINEL_LINE) == 0 && clear_at != SIZE_MAX)
            sentinel_after = true;
    }
    print_message("burst of %d withdrawals: %zu del map, clear at %zu of %zu lines\n", BURST, dels,
                  clear_at, m);
    assert_true(dels < BURST / 2);
    assert_true(clear_at != SIZE_MAX);
    assert_true(sentinel_after);
    assert_true(m <= dels + 2);
    free_lines(got, m);
    free(got);
    st = stats(&fx);
    assert_int_equal(st.published, BURST);
    assert_int_equal(st.failures, 0);
    assert_true(st.up);
    fx_done(&fx);
}

/* 9. Unknown fills. */
static void test_unknown_fill(void **state)
{
    struct fx fx;
    struct l1_ref *a;
    struct isr_conf isr;
    struct lane_stats st;
    bool grace = false;

    (void)state;
    fx_init(&fx, true);
    assert_null(lane_fill(fx.ln, 12345, "/fr/nope", 8, &isr, &grace));
    a = put(&fx, "/fr/a", 1000);
    assert_int_equal(pub(&fx, a, "/fr/a", 0), LANE_PUBLISHED);
    /* Known path, other id; known id, other path. */
    assert_null(lane_fill(fx.ln, l1_ref_id(a) + 1, "/fr/a", 5, &isr, &grace));
    assert_null(lane_fill(fx.ln, l1_ref_id(a), "/fr/b", 5, &isr, &grace));
    st = stats(&fx);
    assert_int_equal(st.unknown_fills, 3);
    assert_int_equal(st.fills, 0);
    assert_int_equal(st.grace_fills, 0);
    settle(&fx, 0, NSETUP + 1);
    l1_release(a);
    fx_done(&fx);
}

/* 10. lane_free with commands queued and in flight. */
static void test_free_pending(void **state)
{
    struct fx fx;
    char path[64];

    (void)state;
    fx_init(&fx, true);
    for (int i = 0; i < 40; i++) {
        struct l1_ref *r;

        snprintf(path, sizeof(path), "/fr/q%d", i);
        r = put(&fx, path, 1000);
        assert_int_equal(pub(&fx, r, path, 0), LANE_PUBLISHED);
        l1_release(r);
    }
    /* Some handed to the client, the rest queued; one held by the fake. */
    fake_hold(&fx.fk, "add map " MAP " /fr/q3 ");
    assert_true(run_until(&fx, held, NULL, DEADLINE));
    assert_int_equal(stats(&fx).entries, 40);
    l1_set_drop_hook(fx.l1, NULL, NULL);
    lane_free(fx.ln);
    fx.ln = NULL;
    fake_release(&fx.fk);
    /* The entries' references were released with the lane. */
    assert_int_equal(l1_flush(fx.l1), 40);
    fx_done(&fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_settings),
        cmocka_unit_test(test_setup),
        cmocka_unit_test(test_publish),
        cmocka_unit_test(test_withdraw_grace),
        cmocka_unit_test(test_ordering),
        cmocka_unit_test(test_reset),
        cmocka_unit_test(test_failure_recovery),
        cmocka_unit_test(test_probe),
        cmocka_unit_test(test_burst),
        cmocka_unit_test(test_unknown_fill),
        cmocka_unit_test(test_free_pending),
    };

    log_init("test_lane", false);
    log_set_level(LOG_LVL_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
