/* Unit tests of the invalidation tracking (spoa/tracking.c) against a real
 * redis-server started here on a free loopback port (fork/exec, readiness by
 * a bounded connect-and-PING poll, stopped by pid); skipped when redis-server
 * is not in PATH.
 *
 * Entries are put in the L1 under tracked prefixes; a plain synchronous
 * hiredis connection then writes to Valkey as Next.js would, and the test
 * runs the tracking loop until the L1 copy is gone. Every wait is a bounded
 * ev_run(EVRUN_ONCE) loop with a watchdog timer; nothing synchronises by
 * sleeping. "Nothing else was dropped" is checked behind a barrier: a write
 * to a sentinel key, whose invalidation comes after every earlier one on the
 * same subscriber connection. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <ev.h>
#include <hiredis/hiredis.h>

#include "isr.h"
#include "l1.h"
#include "log.h"
#include "tracking.h"
#include "util.h"

#define READY_MAX 5.0 /* s for a redis-server to answer PING */
#define WAIT_MAX 3.0  /* s for anything that should happen "soon" */
#define LAT_TRIALS 100

#define LIFESPAN                                                                                   \
    "{\"expireAge\":15,\"expireAt\":1795479821,\"lastModifiedAt\":1795479806,"                     \
    "\"revalidate\":10,\"staleAge\":10,\"staleAt\":1795479816}"

static char redis_path[4096];

struct tctx {
    struct ev_loop *loop;
    pid_t pid;
    int port;
    char addr[64];
    const char *password;
    struct l1 *l1;
    struct tracking *tr;
    redisContext *w; /* the writer: Next.js' cache handler */
    ev_timer wd;
    bool wd_fired;
};

/* ---- redis-server ------------------------------------------------------------------ */

static bool find_redis(void)
{
    const char *path = getenv("PATH");
    char dir[sizeof(redis_path) - 16];

    while (path && *path) {
        const char *colon = strchr(path, ':');
        size_t n = colon ? (size_t)(colon - path) : strlen(path);

        if (n > 0 && n < sizeof(dir)) {
            memcpy(dir, path, n);
            dir[n] = '\0';
            snprintf(redis_path, sizeof(redis_path), "%s/redis-server", dir);
            if (access(redis_path, X_OK) == 0)
                return true;
        }
        path = colon ? colon + 1 : NULL;
    }
    redis_path[0] = '\0';
    return false;
}

static int free_port(void)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int port = -1;

    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sin, &len) == 0)
        port = ntohs(sin.sin_port);
    close(fd);
    return port;
}

static bool redis_answers(int port)
{
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct pollfd pfd;
    char buf[64];
    bool ok = false;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0)
        return false;
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
        send(fd, "PING\r\n", 6, MSG_NOSIGNAL) == 6) {
        pfd = (struct pollfd){.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 200) == 1 && recv(fd, buf, sizeof(buf), 0) > 0)
            ok = buf[0] == '+' || buf[0] == '-';
    }
    close(fd);
    return ok;
}

static pid_t redis_start(int port, const char *password)
{
    char portstr[16];
    const char *argv[16];
    int argc = 0;
    double deadline = now_mono() + READY_MAX;
    pid_t pid;

    snprintf(portstr, sizeof(portstr), "%d", port);
    argv[argc++] = redis_path;
    argv[argc++] = "--port";
    argv[argc++] = portstr;
    argv[argc++] = "--bind";
    argv[argc++] = "127.0.0.1";
    argv[argc++] = "--save";
    argv[argc++] = "";
    argv[argc++] = "--appendonly";
    argv[argc++] = "no";
    if (password) {
        argv[argc++] = "--requirepass";
        argv[argc++] = password;
    }
    argv[argc] = NULL;
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);

        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
        }
        execv(redis_path, (char *const *)argv);
        _exit(127);
    }
    while (now_mono() < deadline) {
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return -1;
        if (redis_answers(port))
            return pid;
        poll(NULL, 0, 10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static void redis_stop(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGCONT);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* ---- loop helpers ------------------------------------------------------------------- */

static void on_watchdog(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct tctx *t = w->data;

    t->wd_fired = true;
}

static void wd_arm(struct tctx *t, double secs)
{
    t->wd_fired = false;
    ev_timer_init(&t->wd, on_watchdog, secs, 0.);
    t->wd.data = t;
    ev_timer_start(t->loop, &t->wd);
}

static void wd_disarm(struct tctx *t)
{
    ev_timer_stop(t->loop, &t->wd);
}

#define WAIT_UNTIL(t, cond, secs)                                                                  \
    do {                                                                                           \
        wd_arm((t), (secs));                                                                       \
        while (!(cond) && !(t)->wd_fired)                                                          \
            ev_run((t)->loop, EVRUN_ONCE);                                                         \
        wd_disarm(t);                                                                              \
    } while (0)

/* ---- L1 helpers --------------------------------------------------------------------- */

static struct isr_entry *entry(int64_t lm, const char *tags)
{
    char s[1024];
    struct isr_entry *e = NULL;
    int n = snprintf(s, sizeof(s),
                     "{\"lastModified\":%lld,\"lifespan\":" LIFESPAN ",\"tags\":%s,\"value\":"
                     "{\"kind\":\"APP_PAGE\",\"html\":\"<p>x</p>\",\"headers\":{}}}",
                     (long long)lm, tags);

    assert_true(n > 0 && (size_t)n < sizeof(s));
    assert_int_equal(isr_entry_parse(s, (size_t)n, NULL, &e), ISR_OK);
    return e;
}

/* Puts key (pool prefix up to the first ':') as a lookup starting now would. */
static enum l1_put_result put_at(struct tctx *t, const char *key, int64_t lm, const char *tags,
                                 uint64_t epoch)
{
    enum l1_put_result res;
    struct l1_ref *r = l1_put(t->l1, key, strlen(key), (size_t)(strchr(key, ':') - key) + 1,
                              entry(lm, tags), 0, epoch, &res);

    assert_non_null(r);
    l1_release(r);
    return res;
}

static void put(struct tctx *t, const char *key, int64_t lm, const char *tags)
{
    enum l1_put_result res = put_at(t, key, lm, tags, l1_epoch(t->l1));

    if (res != L1_PUT_OK)
        fail_msg("put %s: %s", key, l1_put_result_str(res));
}

static bool present(struct tctx *t, const char *key)
{
    struct l1_ref *r = l1_get(t->l1, key, strlen(key));

    l1_release(r);
    return r != NULL;
}

struct find {
    const char *key;
    bool found;
};

static int find_cb(const struct l1_info *info, const struct isr_entry *e, void *ud)
{
    struct find *f = ud;

    f->found = strcmp(info->key, f->key) == 0;
    return f->found;
}

/* In the L1, whether or not l1_get() would answer (a suspended pool). */
static bool cached(struct tctx *t, const char *key)
{
    struct find f = {key, false};

    l1_foreach(t->l1, key, strlen(key), find_cb, &f);
    return f.found;
}

static size_t entries(struct tctx *t)
{
    struct l1_stats st;

    l1_get_stats(t->l1, &st);
    return st.entries;
}

/* ---- the writer ---------------------------------------------------------------------------- */

static void wcmd(struct tctx *t, const char *fmt, ...)
{
    va_list ap;
    redisReply *r;

    va_start(ap, fmt);
    r = redisvCommand(t->w, fmt, ap);
    va_end(ap);
    if (!r)
        fail_msg("writer: %s", t->w->errstr);
    if (r->type == REDIS_REPLY_ERROR)
        fail_msg("writer: %s", r->str);
    freeReplyObject(r);
}

static long long wint(struct tctx *t, const char *cmd)
{
    redisReply *r = redisCommand(t->w, cmd);
    long long v;

    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    v = r->integer;
    freeReplyObject(r);
    return v;
}

static void writer_connect(struct tctx *t)
{
    struct timeval tv = {2, 0};

    if (t->w)
        redisFree(t->w);
    t->w = redisConnectWithTimeout("127.0.0.1", t->port, tv);
    assert_non_null(t->w);
    assert_int_equal(t->w->err, 0);
    redisSetTimeout(t->w, tv);
    if (t->password)
        wcmd(t, "AUTH %s", t->password);
}

/* Every invalidation sent before this one has been applied once it returns. */
static void barrier(struct tctx *t)
{
    put(t, "p:/__barrier", 1, "[]");
    wcmd(t, "SET p:/__barrier x");
    WAIT_UNTIL(t, !present(t, "p:/__barrier"), WAIT_MAX);
    assert_false(t->wd_fired);
}

/* ---- fixture --------------------------------------------------------------------------------- */

static const char *const PS[] = {"p:", "s:"};

static struct tracking *tracking_start(struct tctx *t, const char *const *prefixes, size_t n)
{
    struct tracking_cfg cfg = {
        .addr = t->addr,
        .password = t->password,
        .prefixes = prefixes,
        .nprefixes = n,
        .connect_timeout = 1.0,
        .command_timeout = 1.0,
        .backoff_min = 0.02,
        .backoff_max = 0.2,
        .heartbeat_interval = 0.2,
        .heartbeat_timeout = 0.5,
    };

    return tracking_new(t->loop, &cfg, t->l1);
}

static int setup_common(void **state, const char *password)
{
    struct tctx *t;

    if (!redis_path[0])
        return 0;
    t = calloc(1, sizeof(*t));
    if (!t)
        return -1;
    *state = t; /* the teardown frees whatever was made */
    t->loop = ev_loop_new(EVFLAG_AUTO);
    t->password = password;
    t->port = free_port();
    t->pid = t->loop ? redis_start(t->port, password) : -1;
    snprintf(t->addr, sizeof(t->addr), "127.0.0.1:%d", t->port);
    t->l1 = l1_new(16u << 20, 4);
    return t->pid > 0 && t->l1 ? 0 : -1;
}

static int setup(void **state)
{
    return setup_common(state, NULL);
}

static int setup_auth(void **state)
{
    return setup_common(state, "s3cret");
}

static int teardown(void **state)
{
    struct tctx *t = *state;

    if (!t)
        return 0;
    tracking_free(t->tr);
    if (t->w)
        redisFree(t->w);
    redis_stop(t->pid);
    l1_free(t->l1);
    if (t->loop)
        ev_loop_destroy(t->loop);
    free(t);
    return 0;
}

/* Starts tracking PS and the writer, waits for UP. */
static struct tctx *ready(void **state)
{
    struct tctx *t = *state;

    if (!redis_path[0])
        skip();
    t->tr = tracking_start(t, PS, 2);
    assert_non_null(t->tr);
    assert_false(tracking_up(t->tr));
    assert_false(l1_enabled(t->l1));
    WAIT_UNTIL(t, tracking_up(t->tr), WAIT_MAX);
    assert_true(tracking_up(t->tr));
    assert_true(l1_enabled(t->l1));
    writer_connect(t);
    return t;
}

/* ---- tests ------------------------------------------------------------------------------------
 */

static void test_set_del_other_prefix(void **state)
{
    struct tctx *t = ready(state);
    struct tracking_stats ts;

    put(t, "p:/a", 1, "[]");
    put(t, "p:/b", 1, "[]");
    put(t, "p:/c", 1, "[]");
    put(t, "s:/a", 1, "[]");
    /* Untracked prefix: refused by the L1. */
    assert_int_equal(put_at(t, "x:/a", 1, "[]", l1_epoch(t->l1)), L1_PUT_UNTRACKED);

    wcmd(t, "SET p:/a v1");
    WAIT_UNTIL(t, !present(t, "p:/a"), WAIT_MAX);
    assert_false(present(t, "p:/a"));
    assert_true(present(t, "p:/b"));

    wcmd(t, "SET p:/b v1");
    barrier(t);
    put(t, "p:/b", 2, "[]");
    wcmd(t, "DEL p:/b");
    WAIT_UNTIL(t, !present(t, "p:/b"), WAIT_MAX);
    assert_false(present(t, "p:/b"));

    /* Writes elsewhere, and deletes of absent keys, drop nothing. */
    wcmd(t, "SET x:/a v");
    wcmd(t, "SET x:p:/c v");
    wcmd(t, "DEL p:/nothing");
    barrier(t);
    assert_true(present(t, "p:/c"));
    assert_true(present(t, "s:/a"));

    /* The other tracked pool. */
    wcmd(t, "SET s:/a v");
    WAIT_UNTIL(t, !present(t, "s:/a"), WAIT_MAX);
    assert_true(present(t, "p:/c"));
    tracking_get_stats(t->tr, &ts);
    assert_true(ts.messages >= 5);
    WAIT_UNTIL(t, (tracking_get_stats(t->tr, &ts), ts.heartbeats >= 2), WAIT_MAX);
    assert_true(ts.heartbeats >= 2);
    print_message("      heartbeat (PUBLISH -> message) %llu us\n",
                  (unsigned long long)ts.heartbeat_us_last);
}

static void test_expire(void **state)
{
    struct tctx *t = ready(state);
    double t0, dt;

    /* Written with a TTL (that write is an invalidation of its own)... */
    wcmd(t, "SET p:/e v PX 300");
    barrier(t);
    put(t, "p:/e", 1, "[]");
    t0 = now_mono();
    /* ...then dropped when Valkey expires it, without anyone reading it. */
    WAIT_UNTIL(t, !present(t, "p:/e"), WAIT_MAX);
    dt = now_mono() - t0;
    assert_false(present(t, "p:/e"));
    print_message("      expired key dropped %.0f ms after the put (TTL 300 ms)\n", dt * 1e3);
    assert_true(dt > 0.2);

    /* EXPIRE on an existing key is itself a write. */
    wcmd(t, "SET p:/e2 v");
    barrier(t);
    put(t, "p:/e2", 1, "[]");
    wcmd(t, "EXPIRE p:/e2 100");
    WAIT_UNTIL(t, !present(t, "p:/e2"), WAIT_MAX);
    assert_false(present(t, "p:/e2"));
}

static void test_eviction(void **state)
{
    struct tctx *t = ready(state);
    redisReply *r;
    long long used;
    char *big = malloc(100000);
    int i;

    assert_non_null(big);
    memset(big, 'z', 100000);
    wcmd(t, "SET p:/ev v");
    barrier(t);
    put(t, "p:/ev", 1, "[]");
    r = redisCommand(t->w, "INFO memory");
    assert_non_null(r);
    used = atoll(strstr(r->str, "used_memory:") + strlen("used_memory:"));
    freeReplyObject(r);
    wcmd(t, "CONFIG SET maxmemory-policy allkeys-lru");
    wcmd(t, "CONFIG SET maxmemory %lld", used + (2 << 20));
    /* Fill until Valkey evicts the page (the least recently used key). */
    for (i = 0; i < 200 && wint(t, "EXISTS p:/ev") == 1; i++) {
        r = redisCommand(t->w, "SET x:fill:%d %b", i, big, (size_t)100000);
        assert_non_null(r);
        freeReplyObject(r);
    }
    free(big);
    assert_int_equal(wint(t, "EXISTS p:/ev"), 0);
    WAIT_UNTIL(t, !present(t, "p:/ev"), WAIT_MAX);
    assert_false(present(t, "p:/ev"));
    wcmd(t, "CONFIG SET maxmemory 0");
}

static void test_revalidated_tags(void **state)
{
    struct tctx *t = ready(state);
    struct tracking_stats ts;

    put(t, "p:/1", 1000, "[\"_N_T_/a\",\"_N_T_/layout\"]");
    put(t, "p:/2", 1000, "[\"_N_T_/b\"]");
    put(t, "p:/3", 5000, "[\"_N_T_/a\"]"); /* regenerated after the tag's time */
    put(t, "s:/1", 1000, "[\"_N_T_/a\"]"); /* another pool, same tag */

    /* revalidatePath("/a"): the handler records the implicit tag's time. The
     * pool is suspended (gets miss) until the hash is read again, then only
     * the entries the handler would refuse are gone. */
    wcmd(t, "HSET p:__revalidated_tags__ _N_T_/a 2000");
    WAIT_UNTIL(t, !cached(t, "p:/1"), WAIT_MAX);
    assert_false(cached(t, "p:/1"));
    WAIT_UNTIL(t, present(t, "p:/2"), WAIT_MAX);
    assert_true(present(t, "p:/2"));
    assert_true(present(t, "p:/3"));
    assert_true(present(t, "s:/1"));
    assert_false(present(t, "p:/1"));

    /* An older time drops nothing; a later one on another tag does. */
    wcmd(t, "HSET p:__revalidated_tags__ _N_T_/b 500");
    WAIT_UNTIL(t, (tracking_get_stats(t->tr, &ts), ts.reval_reads >= 2) && present(t, "p:/2"),
               WAIT_MAX);
    assert_true(present(t, "p:/2"));
    wcmd(t, "HSET p:__revalidated_tags__ _N_T_/b 1001");
    WAIT_UNTIL(t, !cached(t, "p:/2"), WAIT_MAX);
    assert_false(cached(t, "p:/2"));
    WAIT_UNTIL(t, present(t, "p:/3"), WAIT_MAX);
    assert_true(present(t, "p:/3"));

    /* Not a hash: the pool is dropped (what the handler would read is unknown). */
    wcmd(t, "DEL p:__revalidated_tags__");
    wcmd(t, "SET p:__revalidated_tags__ junk");
    WAIT_UNTIL(t, !cached(t, "p:/3"), WAIT_MAX);
    assert_false(cached(t, "p:/3"));
    assert_true(present(t, "s:/1"));
    tracking_get_stats(t->tr, &ts);
    assert_true(ts.reval_reads >= 3);
    assert_true(ts.reval_dropped >= 2);
}

/* A lookup that read a value before revalidatePath must not put it after. */
static void test_revalidated_race(void **state)
{
    struct tctx *t = ready(state);
    uint64_t epoch = l1_epoch(t->l1); /* the lookup starts: GET, HGET, HMGET... */

    wcmd(t, "HSET p:__revalidated_tags__ _N_T_/r 2000");
    barrier(t);
    /* ...and answers now with what it read before the HSET. */
    assert_int_equal(put_at(t, "p:/r", 1000, "[\"_N_T_/r\"]", epoch), L1_PUT_STALE);
    assert_false(present(t, "p:/r"));
}

static void test_shared_tags_ignored(void **state)
{
    struct tctx *t = ready(state);
    struct tracking_stats ts;

    put(t, "p:/a", 1, "[]");
    /* set() of another page writes __sharedTags__: p:/a stays. */
    wcmd(t, "HSET p:__sharedTags__ /other []");
    wcmd(t, "HSET p:__sharedTagsTtl__ /other 1795479821");
    barrier(t);
    assert_true(present(t, "p:/a"));
    /* revalidateTag: UNLINK of the keys (a key invalidation) and HDEL. */
    wcmd(t, "SET p:/a v");
    wcmd(t, "HSET p:__sharedTags__ /a []");
    barrier(t);
    put(t, "p:/a", 2, "[]");
    wcmd(t, "UNLINK p:/a");
    wcmd(t, "HDEL p:__sharedTags__ /a");
    WAIT_UNTIL(t, !present(t, "p:/a"), WAIT_MAX);
    assert_false(present(t, "p:/a"));
    tracking_get_stats(t->tr, &ts);
    assert_true(ts.shared_changes >= 3);
}

static void test_flushall(void **state)
{
    struct tctx *t = ready(state);
    struct tracking_stats ts;

    put(t, "p:/a", 1, "[]");
    put(t, "s:/a", 1, "[]");
    wcmd(t, "FLUSHALL");
    WAIT_UNTIL(t, entries(t) == 0, WAIT_MAX);
    assert_int_equal(entries(t), 0);
    assert_true(tracking_up(t->tr));
    put(t, "p:/a", 1, "[]");
    wcmd(t, "FLUSHDB");
    WAIT_UNTIL(t, entries(t) == 0, WAIT_MAX);
    assert_int_equal(entries(t), 0);
    tracking_get_stats(t->tr, &ts);
    assert_int_equal(ts.flushes, 2);
}

/* After a broken connection: flushed and DOWN at once, UP again later, and
 * invalidations work again. */
static void expect_recovery(struct tctx *t, uint64_t epoch_before)
{
    WAIT_UNTIL(t, !tracking_up(t->tr), WAIT_MAX);
    assert_false(tracking_up(t->tr));
    assert_false(l1_enabled(t->l1));
    assert_int_equal(entries(t), 0);
    assert_false(present(t, "p:/k"));
    /* A lookup that read while tracking was down cannot put. */
    assert_int_equal(put_at(t, "p:/k", 1, "[]", epoch_before), L1_PUT_DISABLED);
    WAIT_UNTIL(t, tracking_up(t->tr), WAIT_MAX);
    assert_true(tracking_up(t->tr));
    assert_int_equal(put_at(t, "p:/k", 1, "[]", epoch_before), L1_PUT_STALE);
    writer_connect(t);
    put(t, "p:/k", 1, "[]");
    wcmd(t, "SET p:/k v");
    WAIT_UNTIL(t, !present(t, "p:/k"), WAIT_MAX);
    assert_false(present(t, "p:/k"));
}

static void test_kill_subscriber(void **state)
{
    struct tctx *t = ready(state);
    uint64_t epoch;
    struct tracking_stats ts;

    put(t, "p:/k", 1, "[]");
    epoch = l1_epoch(t->l1);
    wcmd(t, "CLIENT KILL TYPE pubsub");
    expect_recovery(t, epoch);
    tracking_get_stats(t->tr, &ts);
    assert_int_equal(ts.downs, 1);
    assert_int_equal(ts.ups, 2);
}

static void test_kill_tracking_connection(void **state)
{
    struct tctx *t = ready(state);
    uint64_t epoch;
    redisReply *r;
    const char *line;

    put(t, "p:/k", 1, "[]");
    epoch = l1_epoch(t->l1);
    r = redisCommand(t->w, "CLIENT LIST");
    assert_non_null(r);
    line = strstr(r->str, "name=cedra-tracking");
    assert_non_null(line);
    while (line > r->str && line[-1] != '\n')
        line--;
    assert_int_equal(strncmp(line, "id=", 3), 0);
    wcmd(t, "CLIENT KILL ID %lld", atoll(line + 3));
    freeReplyObject(r);
    expect_recovery(t, epoch);
}

static void test_redis_restart(void **state)
{
    struct tctx *t = ready(state);
    uint64_t epoch;

    put(t, "p:/k", 1, "[]");
    epoch = l1_epoch(t->l1);
    redis_stop(t->pid);
    t->pid = -1;
    WAIT_UNTIL(t, !tracking_up(t->tr), WAIT_MAX);
    assert_false(tracking_up(t->tr));
    assert_int_equal(entries(t), 0);
    /* Down for a while: attempts fail (one warning per outage). */
    WAIT_UNTIL(t, false, 0.3);
    assert_false(tracking_up(t->tr));
    t->pid = redis_start(t->port, t->password);
    assert_true(t->pid > 0);
    expect_recovery(t, epoch);
}

/* A server that stops answering (SIGSTOP: TCP stays up) is caught by the
 * heartbeat within interval + timeout. */
static void test_silent_server(void **state)
{
    struct tctx *t = ready(state);
    double t0, dt;

    put(t, "p:/k", 1, "[]");
    kill(t->pid, SIGSTOP);
    t0 = now_mono();
    WAIT_UNTIL(t, !tracking_up(t->tr), WAIT_MAX);
    dt = now_mono() - t0;
    kill(t->pid, SIGCONT);
    assert_false(tracking_up(t->tr));
    assert_int_equal(entries(t), 0);
    print_message("      silent server detected after %.0f ms (heartbeat 200 ms + 500 ms)\n",
                  dt * 1e3);
    assert_true(dt < 0.2 + 0.5 + 0.3);
    WAIT_UNTIL(t, tracking_up(t->tr), WAIT_MAX);
    assert_true(tracking_up(t->tr));
}

static void test_set_prefixes(void **state)
{
    struct tctx *t = ready(state);
    const char *pn[] = {"p:", "n:"}, *n_only[] = {"n:"}, *overlap[] = {"n:", "n:c:", "n:"};

    put(t, "p:/a", 1, "[]");
    assert_int_equal(put_at(t, "n:/a", 1, "[]", l1_epoch(t->l1)), L1_PUT_UNTRACKED);
    assert_int_equal(tracking_set_prefixes(t->tr, pn, 2), 0);
    /* n: is accepted once the server tracks it. */
    WAIT_UNTIL(t, put_at(t, "n:/a", 1, "[]", l1_epoch(t->l1)) == L1_PUT_OK, WAIT_MAX);
    assert_true(present(t, "n:/a"));
    assert_true(present(t, "p:/a")); /* kept */
    assert_true(present(t, "n:/a"));
    wcmd(t, "SET n:/a v");
    WAIT_UNTIL(t, !present(t, "n:/a"), WAIT_MAX);
    assert_false(present(t, "n:/a"));
    assert_true(present(t, "p:/a"));
    /* s: left: its writes no longer reach us, its puts are refused. */
    assert_int_equal(put_at(t, "s:/a", 1, "[]", l1_epoch(t->l1)), L1_PUT_UNTRACKED);

    /* p: leaves: dropped at once. */
    assert_int_equal(tracking_set_prefixes(t->tr, n_only, 1), 0);
    assert_false(present(t, "p:/a"));
    /* Overlapping pools ("n:" covers "n:c:"): one PREFIX is sent, no error. */
    assert_int_equal(tracking_set_prefixes(t->tr, overlap, 3), 0);
    WAIT_UNTIL(t, put_at(t, "n:c:/a", 1, "[]", l1_epoch(t->l1)) == L1_PUT_OK, WAIT_MAX);
    wcmd(t, "SET n:c:/a v");
    WAIT_UNTIL(t, !present(t, "n:c:/a"), WAIT_MAX);
    assert_false(present(t, "n:c:/a"));
    assert_true(tracking_up(t->tr));
    /* None: UP, nothing accepted. */
    assert_int_equal(tracking_set_prefixes(t->tr, NULL, 0), 0);
    WAIT_UNTIL(t, false, 0.1);
    assert_true(tracking_up(t->tr));
    assert_int_equal(put_at(t, "n:/b", 1, "[]", l1_epoch(t->l1)), L1_PUT_UNTRACKED);
    assert_int_equal(tracking_set_prefixes(t->tr, pn, 2), 0);
    WAIT_UNTIL(t, put_at(t, "n:/b", 1, "[]", l1_epoch(t->l1)) == L1_PUT_OK, WAIT_MAX);
    wcmd(t, "SET n:/b v");
    WAIT_UNTIL(t, !present(t, "n:/b"), WAIT_MAX);
    assert_false(present(t, "n:/b"));
    {
        const char *bad[] = {""};

        assert_int_equal(tracking_set_prefixes(t->tr, bad, 1), -1);
    }
}

static void test_auth(void **state)
{
    struct tctx *t = ready(state); /* setup_auth: requirepass */

    put(t, "p:/a", 1, "[]");
    wcmd(t, "SET p:/a v");
    WAIT_UNTIL(t, !present(t, "p:/a"), WAIT_MAX);
    assert_false(present(t, "p:/a"));
}

static void test_wrong_password(void **state)
{
    struct tctx *t = *state;
    struct tracking_stats ts;

    if (!redis_path[0])
        skip();
    t->password = "wrong";
    t->tr = tracking_start(t, PS, 2);
    assert_non_null(t->tr);
    WAIT_UNTIL(t, false, 0.5);
    assert_false(tracking_up(t->tr));
    assert_false(l1_enabled(t->l1));
    tracking_get_stats(t->tr, &ts);
    assert_true(ts.attempts >= 2); /* retried with backoff */
    t->password = "s3cret";
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

/* Time from a SET (issued by another client) to the L1 copy being gone. */
static void test_latency(void **state)
{
    struct tctx *t = ready(state);
    double lat[LAT_TRIALS], sum = 0;

    for (int i = 0; i < LAT_TRIALS; i++) {
        double t0;

        put(t, "p:/lat", 1, "[]");
        t0 = now_mono();
        wcmd(t, "SET p:/lat v%d", i);
        WAIT_UNTIL(t, !present(t, "p:/lat"), WAIT_MAX);
        lat[i] = now_mono() - t0;
        assert_false(t->wd_fired);
        sum += lat[i];
    }
    qsort(lat, LAT_TRIALS, sizeof(lat[0]), cmp_double);
    print_message("      invalidation latency, SET sent -> L1 entry gone, %d trials: "
                  "p50 %.0f us, p99 %.0f us, max %.0f us, mean %.0f us (nearest rank)\n",
                  LAT_TRIALS, lat[(LAT_TRIALS + 1) / 2 - 1] * 1e6,
                  lat[(LAT_TRIALS * 99 + 99) / 100 - 1] * 1e6, lat[LAT_TRIALS - 1] * 1e6,
                  sum / LAT_TRIALS * 1e6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_set_del_other_prefix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expire, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eviction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revalidated_tags, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revalidated_race, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shared_tags_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flushall, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill_subscriber, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill_tracking_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_silent_server, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_prefixes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth, setup_auth, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_password, setup_auth, teardown),
        cmocka_unit_test_setup_teardown(test_latency, setup, teardown),
    };

    signal(SIGPIPE, SIG_IGN);
    log_init("test_tracking", false);
    log_set_level(getenv("TEST_LOG_DEBUG") ? LOG_LVL_DEBUG : LOG_LVL_NOTICE);
    if (!find_redis())
        print_message("redis-server not in PATH: tests skipped\n");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
