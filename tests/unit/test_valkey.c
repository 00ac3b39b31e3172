/* Unit tests of the Valkey client (spoa/valkey.c).
 *
 * Most tests run a real redis-server, started here on a free loopback port
 * (fork/exec, readiness by a bounded connect-and-PING poll, stopped by pid in
 * the teardown); they are skipped when redis-server is not in PATH. The
 * protocol-abuse tests use a fake server: a listening socket on the test's
 * own libev loop that answers PING with +PONG and then plays a script.
 *
 * Every wait is a bounded loop of ev_run(EVRUN_ONCE) with a watchdog timer
 * (WAIT_UNTIL); nothing synchronises by sleeping. Callbacks only record what
 * they saw; the assertions run in the test body, outside ev_run. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <ev.h>
#include <hiredis/hiredis.h>

#include "log.h"
#include "util.h"
#include "valkey.h"

#define READY_MAX 5.0 /* s for a redis-server to answer PING */
#define WAIT_MAX 3.0  /* s for anything that should happen "soon" */
#define MAX_FAKE_CONNS 8
#define MAX_SCRIPT 4

static char redis_path[4096]; /* empty: not installed, tests skip */

/* ---- callbacks recording what they saw ----------------------------------- */

struct rec {
    int calls;
    enum valkey_err err;
    int type;
    long long integer;
    char str[64];
    size_t len;
    unsigned order; /* value of cb_order when called */
    double at;      /* now_mono() when called */
};

static bool in_command;     /* set around valkey_command() */
static unsigned sync_calls; /* callbacks made from inside valkey_command() */
static unsigned cb_order;

static void rec_cb(struct valkey *v, void *privdata, enum valkey_err err,
                   const struct redisReply *reply)
{
    struct rec *r = privdata;

    if (in_command)
        sync_calls++;
    r->calls++;
    r->err = err;
    r->order = ++cb_order;
    r->at = now_mono();
    r->type = reply ? reply->type : 0;
    if (reply && (reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS ||
                  reply->type == REDIS_REPLY_ERROR)) {
        r->len = reply->len;
        memcpy(r->str, reply->str,
               reply->len < sizeof(r->str) - 1 ? reply->len : sizeof(r->str) - 1);
        r->str[reply->len < sizeof(r->str) - 1 ? reply->len : sizeof(r->str) - 1] = '\0';
    }
    if (reply && reply->type == REDIS_REPLY_INTEGER)
        r->integer = reply->integer;
}

/* ---- fixture ------------------------------------------------------------- */

struct fake_conn {
    int fd;
    ev_io io;
    struct fake *f;
    unsigned ncmds;
    bool line_start;
};

/* A server that answers the first command of each connection (PING) with
 * hello and the next ones with the script, each entry once per server
 * ("+OK\r\n" past its end). */
struct fake {
    int lfd;
    int port;
    ev_io accept_io;
    struct ev_loop *loop;
    const char *hello;
    const char *script[MAX_SCRIPT];
    size_t script_len[MAX_SCRIPT];
    unsigned nscript;
    unsigned served; /* script entries sent, across connections */
    unsigned accepted;
    struct fake_conn conns[MAX_FAKE_CONNS];
};

struct tctx {
    struct ev_loop *loop;
    pid_t pid;
    int port;
    char addr[64];
    struct valkey_cfg cfg;
    struct valkey *v;
    struct valkey *v2;
    ev_timer wd;
    bool wd_fired;
    struct fake fake;
    bool fake_on;
    char *bigbuf;
    void *mem[2]; /* freed by the teardown, whatever the test did */
};

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

/* Runs the loop until cond holds or secs have passed; check cond after. */
#define WAIT_UNTIL(t, cond, secs)                                                                  \
    do {                                                                                           \
        wd_arm((t), (secs));                                                                       \
        while (!(cond) && !(t)->wd_fired)                                                          \
            ev_run((t)->loop, EVRUN_ONCE);                                                         \
        wd_disarm(t);                                                                              \
    } while (0)

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

/* A port where nothing listens while *fd stays open. A port that is only
 * free lies in the ephemeral range: a client reconnecting to it again and
 * again may be given it as its own source port, and the kernel then completes
 * a TCP self-connect. A socket bound without listen() refuses connections and
 * keeps the port from being handed out. */
static int dead_port(int *fd)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);

    *fd = socket(AF_INET, SOCK_STREAM, 0);
    if (*fd < 0)
        return -1;
    if (bind(*fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
        getsockname(*fd, (struct sockaddr *)&sin, &len) == 0)
        return ntohs(sin.sin_port);
    close(*fd);
    *fd = -1;
    return -1;
}

/* One connect + PING; true when the server answered anything RESP-like. */
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
            ok = buf[0] == '+' || buf[0] == '-'; /* +PONG, or -NOAUTH */
    }
    close(fd);
    return ok;
}

static pid_t redis_start(int port, const char *password, const char *unixsock)
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
    if (unixsock) {
        argv[argc++] = "--unixsocket";
        argv[argc++] = unixsock;
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
    /* Bounded poll for readiness: the server is ready when it answers. */
    while (now_mono() < deadline) {
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return -1; /* died (port taken?) */
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
    kill(pid, SIGCONT); /* a stopped process would not die of SIGTERM */
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static void test_cfg(struct tctx *t, int port)
{
    snprintf(t->addr, sizeof(t->addr), "127.0.0.1:%d", port);
    t->cfg = (struct valkey_cfg){
        .addr = t->addr,
        .name = "test=1",
        /* Generous, so that a loaded CI machine does not fail the tests
         * that are not about time; those set tight values themselves. */
        .connect_timeout = 1.0,
        .command_timeout = 2.0,
        .backoff_min = 0.02,
        .backoff_max = 0.25,
        .wedge_timeouts = 3,
        .max_reply_size = 1024,
        .max_pending = 2048,
    };
}

static int setup(void **state)
{
    struct tctx *t = calloc(1, sizeof(*t));

    if (!t)
        return -1;
    t->loop = ev_loop_new(EVFLAG_AUTO);
    t->pid = -1;
    t->fake.lfd = -1;
    sync_calls = 0;
    *state = t;
    return t->loop ? 0 : -1;
}

static void fake_stop(struct fake *f);

static int teardown(void **state)
{
    struct tctx *t = *state;

    valkey_free(t->v);
    valkey_free(t->v2);
    if (t->fake_on)
        fake_stop(&t->fake);
    redis_stop(t->pid);
    ev_loop_destroy(t->loop);
    free(t->bigbuf);
    free(t->mem[0]);
    free(t->mem[1]);
    free(t);
    return 0;
}

/* Starts redis-server (skips the test without it) and a client, and waits UP. */
static void start_live(struct tctx *t)
{
    if (!redis_path[0])
        skip();
    t->port = free_port();
    assert_true(t->port > 0);
    t->pid = redis_start(t->port, NULL, NULL);
    assert_true(t->pid > 0);
    test_cfg(t, t->port);
}

static void connect_client(struct tctx *t)
{
    t->v = valkey_new(t->loop, &t->cfg);
    assert_non_null(t->v);
    WAIT_UNTIL(t, valkey_state(t->v) == VALKEY_UP, WAIT_MAX);
    assert_int_equal(valkey_state(t->v), VALKEY_UP);
}

/* Queues a command; the callback must not run from inside valkey_command(). */
static int cmd_argv(struct valkey *v, struct rec *r, const char **argv, int argc)
{
    int rc;

    in_command = true;
    rc = valkey_command(v, rec_cb, r, argc, argv, NULL);
    in_command = false;
    return rc;
}

#define CMD(v, r, ...)                                                                             \
    cmd_argv((v), (r), (const char *[]){__VA_ARGS__},                                              \
             (int)(sizeof((const char *[]){__VA_ARGS__}) / sizeof(const char *)))

static uint64_t results_sum(const struct valkey_stats *s)
{
    uint64_t n = 0;

    for (int i = 0; i < VALKEY_ERR_MAX; i++)
        n += s->results[i];
    return n;
}

/* ---- fake server --------------------------------------------------------- */

static void fake_conn_close(struct fake_conn *c)
{
    ev_io_stop(c->f->loop, &c->io);
    close(c->fd);
    c->fd = -1;
}

static void fake_send(struct fake_conn *c, const char *s, size_t len)
{
    while (len > 0) {
        ssize_t n = send(c->fd, s, len, MSG_NOSIGNAL);

        if (n <= 0)
            return;
        s += n;
        len -= (size_t)n;
    }
}

static void on_fake_read(struct ev_loop *loop, ev_io *w, int revents)
{
    struct fake_conn *c = w->data;
    struct fake *f = c->f;
    char buf[4096];
    ssize_t n = recv(c->fd, buf, sizeof(buf), 0);

    if (n <= 0) {
        fake_conn_close(c);
        return;
    }
    /* hiredis sends every command as a RESP array: a line starting with '*'
     * starts a command (our keys and values never start with '*'). */
    for (ssize_t i = 0; i < n; i++) {
        if (c->line_start && buf[i] == '*') {
            if (c->ncmds == 0) {
                fake_send(c, f->hello, strlen(f->hello));
            } else if (f->served < f->nscript) {
                fake_send(c, f->script[f->served], f->script_len[f->served]);
                f->served++;
            } else {
                fake_send(c, "+OK\r\n", 5);
            }
            c->ncmds++;
        }
        c->line_start = buf[i] == '\n';
    }
}

static void on_fake_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    struct fake *f = w->data;
    int fd = accept(f->lfd, NULL, NULL);

    if (fd < 0)
        return;
    for (int i = 0; i < MAX_FAKE_CONNS; i++) {
        struct fake_conn *c = &f->conns[i];

        if (c->fd >= 0)
            continue;
        *c = (struct fake_conn){.fd = fd, .f = f, .line_start = true};
        ev_io_init(&c->io, on_fake_read, fd, EV_READ);
        c->io.data = c;
        ev_io_start(loop, &c->io);
        f->accepted++;
        return;
    }
    close(fd);
}

static void fake_start(struct tctx *t, const char *hello)
{
    struct fake *f = &t->fake;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);

    f->loop = t->loop;
    f->hello = hello;
    for (int i = 0; i < MAX_FAKE_CONNS; i++)
        f->conns[i].fd = -1;
    f->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(f->lfd >= 0);
    assert_int_equal(bind(f->lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(getsockname(f->lfd, (struct sockaddr *)&sin, &len), 0);
    assert_int_equal(listen(f->lfd, 16), 0);
    f->port = ntohs(sin.sin_port);
    ev_io_init(&f->accept_io, on_fake_accept, f->lfd, EV_READ);
    f->accept_io.data = f;
    ev_io_start(t->loop, &f->accept_io);
    t->fake_on = true;
    test_cfg(t, f->port);
}

static void fake_script(struct fake *f, const char *s, size_t len)
{
    f->script[f->nscript] = s;
    f->script_len[f->nscript] = len;
    f->nscript++;
}

static void fake_stop(struct fake *f)
{
    for (int i = 0; i < MAX_FAKE_CONNS; i++)
        if (f->conns[i].fd >= 0)
            fake_conn_close(&f->conns[i]);
    ev_io_stop(f->loop, &f->accept_io);
    close(f->lfd);
}

/* ---- tests: a healthy server --------------------------------------------- */

static void test_get_set_hget(void **state)
{
    struct tctx *t = *state;
    struct rec set = {0}, get = {0}, hset = {0}, hget = {0}, miss = {0}, bin = {0}, getbin = {0};
    const char *argv[3] = {"SET", "bin", "a\0b"};
    const size_t argvlen[3] = {3, 3, 3};
    const struct valkey_stats *st;

    start_live(t);
    connect_client(t);
    assert_int_equal(CMD(t->v, &set, "SET", "k", "v"), 0);
    assert_int_equal(CMD(t->v, &get, "GET", "k"), 0);
    assert_int_equal(CMD(t->v, &hset, "HSET", "h", "f", "hv"), 0);
    assert_int_equal(CMD(t->v, &hget, "HGET", "h", "f"), 0);
    assert_int_equal(CMD(t->v, &miss, "GET", "missing"), 0);
    in_command = true;
    assert_int_equal(valkey_command(t->v, rec_cb, &bin, 3, argv, argvlen), 0);
    in_command = false;
    assert_int_equal(CMD(t->v, &getbin, "GET", "bin"), 0);
    /* Never from inside valkey_command(). */
    assert_int_equal(set.calls + get.calls + hset.calls + hget.calls + miss.calls, 0);
    WAIT_UNTIL(t, getbin.calls == 1, WAIT_MAX);
    assert_int_equal(sync_calls, 0);

    assert_int_equal(set.calls, 1);
    assert_int_equal(set.err, VALKEY_OK);
    assert_int_equal(set.type, REDIS_REPLY_STATUS);
    assert_string_equal(set.str, "OK");
    assert_int_equal(get.err, VALKEY_OK);
    assert_int_equal(get.type, REDIS_REPLY_STRING);
    assert_string_equal(get.str, "v");
    assert_int_equal(hset.type, REDIS_REPLY_INTEGER);
    assert_int_equal(hset.integer, 1);
    assert_int_equal(hget.type, REDIS_REPLY_STRING);
    assert_string_equal(hget.str, "hv");
    assert_int_equal(miss.err, VALKEY_OK);
    assert_int_equal(miss.type, REDIS_REPLY_NIL);
    assert_int_equal(getbin.len, 3);
    assert_memory_equal(getbin.str, "a\0b", 3);
    /* In order. */
    assert_true(set.order < get.order && get.order < hset.order && hset.order < hget.order &&
                hget.order < miss.order && miss.order < bin.order && bin.order < getbin.order);

    st = valkey_stats(t->v);
    assert_int_equal(st->commands, 7);
    assert_int_equal(st->results[VALKEY_OK], 7);
    assert_int_equal(st->latency.n, 7);
    assert_true(st->latency.sum > 0);
    assert_int_equal(st->ups, 1);
    assert_int_equal(st->downs, 0);
}

static void test_pipeline_1000(void **state)
{
    struct tctx *t = *state;
    enum { N = 1000 };
    struct rec *r;
    int done;

    start_live(t);
    r = t->mem[0] = calloc(N, sizeof(*r));
    assert_non_null(r);
    connect_client(t);
    for (int i = 0; i < N; i++)
        assert_int_equal(CMD(t->v, &r[i], "INCR", "ctr"), 0);
    WAIT_UNTIL(t, r[N - 1].calls > 0, WAIT_MAX);
    done = 0;
    for (int i = 0; i < N; i++) {
        if (r[i].calls == 1 && r[i].err == VALKEY_OK && r[i].type == REDIS_REPLY_INTEGER &&
            r[i].integer == i + 1 && (i == 0 || r[i].order == r[i - 1].order + 1))
            done++;
    }
    assert_int_equal(sync_calls, 0);
    assert_int_equal(done, N);
    assert_int_equal(valkey_stats(t->v)->results[VALKEY_OK], N);
}

static void test_overload(void **state)
{
    struct tctx *t = *state;
    struct rec r[12] = {{0}};
    int ok = 0, over = 0;

    start_live(t);
    t->cfg.max_pending = 8;
    connect_client(t);
    for (int i = 0; i < 12; i++)
        assert_int_equal(CMD(t->v, &r[i], "GET", "k"), 0);
    for (int i = 0; i < 12; i++)
        assert_int_equal(r[i].calls, 0);
    WAIT_UNTIL(t, r[7].calls == 1 && r[11].calls == 1, WAIT_MAX);
    for (int i = 0; i < 12; i++) {
        assert_int_equal(r[i].calls, 1);
        ok += r[i].err == VALKEY_OK;
        over += r[i].err == VALKEY_ERR_OVERLOAD;
    }
    assert_int_equal(ok, 8);
    assert_int_equal(over, 4);
    assert_int_equal(r[8].err, VALKEY_ERR_OVERLOAD);
    assert_int_equal(valkey_stats(t->v)->results[VALKEY_ERR_OVERLOAD], 4);
    assert_int_equal(sync_calls, 0);
}

static void test_too_big(void **state)
{
    struct tctx *t = *state;
    struct rec set1 = {0}, set2 = {0}, big = {0}, small = {0}, huge = {0}, after = {0};
    const size_t hsz = 20000; /* above 4 x max_reply_size: connection dropped */

    start_live(t);
    connect_client(t);
    t->bigbuf = malloc(hsz + 1);
    assert_non_null(t->bigbuf);
    memset(t->bigbuf, 'x', hsz);
    t->bigbuf[hsz] = '\0';
    assert_int_equal(CMD(t->v, &set2, "SET", "huge", t->bigbuf), 0);
    t->bigbuf[2000] = '\0'; /* above max_reply_size (1024), under 4x */
    assert_int_equal(CMD(t->v, &set1, "SET", "big", t->bigbuf), 0);
    assert_int_equal(CMD(t->v, &big, "GET", "big"), 0);
    assert_int_equal(CMD(t->v, &small, "GET", "missing"), 0);
    WAIT_UNTIL(t, small.calls == 1, WAIT_MAX);
    assert_int_equal(set1.err, VALKEY_OK);
    assert_int_equal(set2.err, VALKEY_OK);
    assert_int_equal(big.calls, 1);
    assert_int_equal(big.err, VALKEY_ERR_TOO_BIG);
    /* Read to its end and dropped: the connection and the pipeline survive. */
    assert_int_equal(small.err, VALKEY_OK);
    assert_int_equal(valkey_stats(t->v)->downs, 0);

    assert_int_equal(CMD(t->v, &huge, "GET", "huge"), 0);
    WAIT_UNTIL(t, huge.calls == 1, WAIT_MAX);
    assert_int_equal(huge.err, VALKEY_ERR_TOO_BIG);
    assert_int_equal(valkey_stats(t->v)->downs, 1);
    WAIT_UNTIL(t, valkey_state(t->v) == VALKEY_UP, WAIT_MAX);
    assert_int_equal(CMD(t->v, &after, "GET", "missing"), 0);
    WAIT_UNTIL(t, after.calls == 1, WAIT_MAX);
    assert_int_equal(after.err, VALKEY_OK);
    assert_int_equal(valkey_stats(t->v)->results[VALKEY_ERR_TOO_BIG], 2);
}

static void test_auth_and_db(void **state)
{
    struct tctx *t = *state;
    struct rec set = {0}, get3 = {0}, get0 = {0}, bad = {0};

    if (!redis_path[0])
        skip();
    t->port = free_port();
    t->pid = redis_start(t->port, "s3cret", NULL);
    assert_true(t->pid > 0);
    test_cfg(t, t->port);
    t->cfg.password = "s3cret";
    t->cfg.db = 3;
    connect_client(t);
    assert_int_equal(CMD(t->v, &set, "SET", "k", "in3"), 0);
    assert_int_equal(CMD(t->v, &get3, "GET", "k"), 0);
    WAIT_UNTIL(t, get3.calls == 1, WAIT_MAX);
    assert_string_equal(get3.str, "in3");

    t->cfg.db = 0;
    t->v2 = valkey_new(t->loop, &t->cfg);
    assert_non_null(t->v2);
    WAIT_UNTIL(t, valkey_state(t->v2) == VALKEY_UP, WAIT_MAX);
    assert_int_equal(CMD(t->v2, &get0, "GET", "k"), 0);
    WAIT_UNTIL(t, get0.calls == 1, WAIT_MAX);
    assert_int_equal(get0.type, REDIS_REPLY_NIL);
    valkey_free(t->v2);

    /* A wrong password never comes UP, retries with backoff, fails fast. */
    t->cfg.password = "wrong";
    t->v2 = valkey_new(t->loop, &t->cfg);
    assert_non_null(t->v2);
    WAIT_UNTIL(t, valkey_stats(t->v2)->connects >= 3, WAIT_MAX);
    assert_true(valkey_stats(t->v2)->connects >= 3);
    assert_int_equal(valkey_stats(t->v2)->ups, 0);
    assert_int_equal(CMD(t->v2, &bad, "GET", "k"), 0);
    WAIT_UNTIL(t, bad.calls == 1, WAIT_MAX);
    assert_int_equal(bad.err, VALKEY_ERR_DOWN);
}

static void test_unix_socket(void **state)
{
    struct tctx *t = *state;
    struct rec set = {0}, get = {0};
    char path[64], addr[80];

    if (!redis_path[0])
        skip();
    t->port = free_port();
    snprintf(path, sizeof(path), "/tmp/test_valkey.%d.sock", (int)getpid());
    t->pid = redis_start(t->port, NULL, path);
    assert_true(t->pid > 0);
    test_cfg(t, t->port);
    snprintf(addr, sizeof(addr), "unix:%s", path);
    t->cfg.addr = addr;
    connect_client(t);
    assert_int_equal(CMD(t->v, &set, "SET", "k", "u"), 0);
    assert_int_equal(CMD(t->v, &get, "GET", "k"), 0);
    WAIT_UNTIL(t, get.calls == 1, WAIT_MAX);
    assert_int_equal(get.err, VALKEY_OK);
    assert_string_equal(get.str, "u");
    valkey_free(t->v);
    t->v = NULL;
    redis_stop(t->pid);
    t->pid = -1;
    unlink(path);
}

/* ---- tests: a server that goes away -------------------------------------- */

static void test_server_killed_and_restarted(void **state)
{
    struct tctx *t = *state;
    struct rec pend = {0}, fast = {0}, after = {0};
    double t0, ready;
    const struct valkey_stats *st;

    start_live(t);
    connect_client(t);
    assert_int_equal(CMD(t->v, &pend, "GET", "k"), 0);
    redis_stop(t->pid); /* killed before the command even left */
    t->pid = -1;
    WAIT_UNTIL(t, pend.calls == 1, WAIT_MAX);
    assert_int_equal(pend.calls, 1);
    assert_true(pend.err == VALKEY_ERR_DOWN || pend.err == VALKEY_ERR_TIMEOUT);
    WAIT_UNTIL(t, valkey_state(t->v) != VALKEY_UP, WAIT_MAX);
    assert_int_not_equal(valkey_state(t->v), VALKEY_UP);

    /* New commands fail fast: no command timeout to wait for. */
    t0 = now_mono();
    assert_int_equal(CMD(t->v, &fast, "GET", "k"), 0);
    assert_int_equal(fast.calls, 0);
    WAIT_UNTIL(t, fast.calls == 1, WAIT_MAX);
    assert_int_equal(fast.err, VALKEY_ERR_DOWN);
    assert_true(fast.at - t0 < 0.1);

    /* Back on the same port: the client comes back by itself. */
    t->pid = redis_start(t->port, NULL, NULL);
    assert_true(t->pid > 0);
    ready = now_mono();
    WAIT_UNTIL(t, valkey_state(t->v) == VALKEY_UP, WAIT_MAX);
    assert_int_equal(valkey_state(t->v), VALKEY_UP);
    /* Within one backoff period (+ a connect and some slack for the CI). */
    assert_true(now_mono() - ready < t->cfg.backoff_max + 0.5);
    assert_int_equal(CMD(t->v, &after, "GET", "k"), 0);
    WAIT_UNTIL(t, after.calls == 1, WAIT_MAX);
    assert_int_equal(after.err, VALKEY_OK);
    st = valkey_stats(t->v);
    assert_int_equal(st->downs, 1);
    assert_int_equal(st->ups, 2);
    assert_true(st->reconnects >= 1);
    assert_int_equal(st->commands, results_sum(st));
    assert_int_equal(sync_calls, 0);
}

static void test_backoff_no_busy_loop(void **state)
{
    struct tctx *t = *state;
    int hold;
    int port = dead_port(&hold);
    double t0 = now_mono(), lower = 0, d;
    struct rec r = {0};
    const struct valkey_stats *st;
    uint64_t base;

    assert_true(port > 0);
    test_cfg(t, port);
    t->v = valkey_new(t->loop, &t->cfg);
    assert_non_null(t->v);
    assert_int_equal(CMD(t->v, &r, "GET", "k"), 0);
    assert_int_equal(r.calls, 0);
    WAIT_UNTIL(t, valkey_stats(t->v)->connects >= 7, WAIT_MAX);
    st = valkey_stats(t->v);
    assert_true(st->connects >= 7);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.err, VALKEY_ERR_DOWN);
    /* 6 retries, each at least half its exponentially growing, capped delay. */
    d = t->cfg.backoff_min;
    for (int i = 0; i < 6; i++, d *= 2)
        lower += (d < t->cfg.backoff_max ? d : t->cfg.backoff_max) / 2;
    assert_true(now_mono() - t0 >= lower - 0.005);
    /* ...and never more than backoff_max apart. */
    base = st->connects;
    t0 = now_mono();
    WAIT_UNTIL(t, st->connects >= base + 3, WAIT_MAX);
    assert_true(st->connects >= base + 3);
    assert_true(now_mono() - t0 <= 3 * t->cfg.backoff_max + 0.3);
    assert_int_equal(st->ups, 0);
    close(hold);
}

static void test_sigstop_timeout_and_recovery(void **state)
{
    struct tctx *t = *state;
    struct rec r[3] = {{0}}, fast = {0}, after = {0};
    double t0;
    const struct valkey_stats *st;

    start_live(t);
    t->cfg.command_timeout = 0.2;
    t->cfg.connect_timeout = 0.3;
    connect_client(t);
    assert_int_equal(kill(t->pid, SIGSTOP), 0);
    t0 = now_mono();
    for (int i = 0; i < 3; i++)
        assert_int_equal(CMD(t->v, &r[i], "GET", "k"), 0);
    WAIT_UNTIL(t, r[2].calls == 1, WAIT_MAX);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].err, VALKEY_ERR_TIMEOUT);
        /* Answered at the deadline, not later. */
        assert_true(r[i].at - t0 >= t->cfg.command_timeout - 0.01);
        assert_true(r[i].at - t0 < t->cfg.command_timeout + 0.15);
    }
    /* Three timeouts in a row: the connection is wedged and dropped. */
    st = valkey_stats(t->v);
    assert_int_equal(st->wedged, 1);
    assert_int_not_equal(valkey_state(t->v), VALKEY_UP);
    t0 = now_mono();
    assert_int_equal(CMD(t->v, &fast, "GET", "k"), 0);
    WAIT_UNTIL(t, fast.calls == 1, WAIT_MAX);
    assert_int_equal(fast.err, VALKEY_ERR_DOWN);
    assert_true(fast.at - t0 < t->cfg.command_timeout / 2);
    /* Reconnects to a stopped server: TCP accepted by the kernel, PING never
     * answered, connect timeout, backoff... */
    WAIT_UNTIL(t, st->connects >= 3, WAIT_MAX);
    assert_true(st->connects >= 3);
    assert_int_equal(st->ups, 1);

    assert_int_equal(kill(t->pid, SIGCONT), 0);
    t0 = now_mono();
    WAIT_UNTIL(t, valkey_state(t->v) == VALKEY_UP, WAIT_MAX);
    assert_int_equal(valkey_state(t->v), VALKEY_UP);
    assert_true(now_mono() - t0 < t->cfg.connect_timeout + t->cfg.backoff_max + 0.5);
    assert_int_equal(CMD(t->v, &after, "GET", "k"), 0);
    WAIT_UNTIL(t, after.calls == 1, WAIT_MAX);
    assert_int_equal(after.err, VALKEY_OK);
    assert_int_equal(st->commands, results_sum(st));
}

static void test_late_reply_swallowed(void **state)
{
    struct tctx *t = *state;
    struct rec late = {0}, next = {0};

    start_live(t);
    t->cfg.command_timeout = 0.5;
    connect_client(t);
    assert_int_equal(kill(t->pid, SIGSTOP), 0);
    assert_int_equal(CMD(t->v, &late, "GET", "k"), 0);
    WAIT_UNTIL(t, late.calls == 1, WAIT_MAX);
    assert_int_equal(late.err, VALKEY_ERR_TIMEOUT);
    assert_int_equal(kill(t->pid, SIGCONT), 0);
    /* One timeout is not a wedge: same connection, late reply dropped. */
    assert_int_equal(valkey_state(t->v), VALKEY_UP);
    assert_int_equal(CMD(t->v, &next, "GET", "k"), 0);
    WAIT_UNTIL(t, next.calls == 1, WAIT_MAX);
    assert_int_equal(next.err, VALKEY_OK);
    assert_int_equal(late.calls, 1);
    assert_int_equal(valkey_stats(t->v)->late_replies, 1);
    assert_int_equal(valkey_stats(t->v)->downs, 0);
}

/* ---- tests: cancel and free ---------------------------------------------- */

struct canceller {
    struct rec r;
    struct valkey *v;
    void *victim;
    unsigned cancelled;
};

static void cancel_cb(struct valkey *v, void *privdata, enum valkey_err err,
                      const struct redisReply *reply)
{
    struct canceller *c = privdata;

    rec_cb(v, &c->r, err, reply);
    c->cancelled = valkey_cancel(v, c->victim);
}

static void test_cancel(void **state)
{
    struct tctx *t = *state;
    struct rec *gone, *victim;
    struct rec last = {0}, down = {0};
    struct canceller c = {0};
    const char *argv[2] = {"GET", "k"};

    start_live(t);
    gone = t->mem[0] = calloc(1, sizeof(*gone));
    victim = t->mem[1] = calloc(1, sizeof(*victim));
    assert_non_null(gone);
    assert_non_null(victim);
    connect_client(t);
    /* Two commands for one request; cancelled, then the request is freed:
     * a late callback would be a use after free (ASan). */
    assert_int_equal(CMD(t->v, gone, "GET", "k"), 0);
    assert_int_equal(CMD(t->v, gone, "HGET", "h", "f"), 0);
    assert_int_equal(valkey_cancel(t->v, gone), 2);
    free(gone);
    t->mem[0] = NULL;
    /* Cancelled from another command's callback. */
    c.victim = victim;
    assert_int_equal(valkey_command(t->v, cancel_cb, &c, 2, argv, NULL), 0);
    assert_int_equal(CMD(t->v, victim, "GET", "k"), 0);
    assert_int_equal(CMD(t->v, &last, "GET", "k"), 0);
    WAIT_UNTIL(t, last.calls == 1, WAIT_MAX);
    assert_int_equal(last.err, VALKEY_OK);
    assert_int_equal(c.r.calls, 1);
    assert_int_equal(c.cancelled, 1);
    assert_int_equal(victim->calls, 0);
    free(victim);
    t->mem[1] = NULL;
    assert_int_equal(valkey_stats(t->v)->cancelled, 3);
    assert_int_equal(valkey_stats(t->v)->late_replies, 3);

    /* An immediate error can be cancelled as well. */
    redis_stop(t->pid);
    t->pid = -1;
    WAIT_UNTIL(t, valkey_state(t->v) != VALKEY_UP, WAIT_MAX);
    gone = t->mem[0] = calloc(1, sizeof(*gone));
    assert_non_null(gone);
    assert_int_equal(CMD(t->v, gone, "GET", "k"), 0);
    assert_int_equal(CMD(t->v, &down, "GET", "k"), 0);
    assert_int_equal(valkey_cancel(t->v, gone), 1);
    free(gone);
    t->mem[0] = NULL;
    WAIT_UNTIL(t, down.calls == 1, WAIT_MAX);
    assert_int_equal(down.err, VALKEY_ERR_DOWN);
    assert_int_equal(valkey_cancel(t->v, &down), 0);
}

struct reissuer {
    struct rec r;
    int rc;
    int err;
};

static void reissue_cb(struct valkey *v, void *privdata, enum valkey_err err,
                       const struct redisReply *reply)
{
    struct reissuer *ri = privdata;
    const char *argv[2] = {"GET", "k"};

    rec_cb(v, &ri->r, err, reply);
    ri->rc = valkey_command(v, rec_cb, &ri->r, 2, argv, NULL);
    ri->err = errno;
}

static void test_free_with_pending(void **state)
{
    struct tctx *t = *state;
    struct rec r[3] = {{0}}, over = {0};
    struct reissuer ri = {0};
    const char *argv[2] = {"GET", "k"};

    start_live(t);
    t->cfg.max_pending = 4;
    connect_client(t);
    assert_int_equal(kill(t->pid, SIGSTOP), 0);
    assert_int_equal(valkey_command(t->v, reissue_cb, &ri, 2, argv, NULL), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(CMD(t->v, &r[i], "GET", "k"), 0);
    /* Let the commands reach the socket. */
    for (int i = 0; i < 3; i++)
        ev_run(t->loop, EVRUN_NOWAIT);
    assert_int_equal(CMD(t->v, &over, "GET", "k"), 0); /* OVERLOAD, not yet delivered */
    assert_int_equal(over.calls, 0);
    valkey_free(t->v);
    t->v = NULL;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].err, VALKEY_ERR_CLOSED);
    }
    assert_int_equal(over.calls, 1);
    assert_int_equal(over.err, VALKEY_ERR_CLOSED);
    /* From a callback of valkey_free(), new commands are refused, not lost. */
    assert_int_equal(ri.r.calls, 1);
    assert_int_equal(ri.r.err, VALKEY_ERR_CLOSED);
    assert_int_equal(ri.rc, -1);
    assert_int_equal(ri.err, ESHUTDOWN);
}

static void test_invalid(void **state)
{
    struct tctx *t = *state;
    struct rec r = {0};

    test_cfg(t, free_port());
    t->cfg.addr = "localhost:6379"; /* would need a blocking DNS lookup */
    assert_null(valkey_new(t->loop, &t->cfg));
    test_cfg(t, free_port());
    t->v = valkey_new(t->loop, &t->cfg);
    assert_non_null(t->v);
    assert_int_equal(CMD(t->v, &r, "SUBSCRIBE", "ch"), -1);
    assert_int_equal(errno, EINVAL);
    in_command = true;
    assert_int_equal(valkey_command(t->v, rec_cb, &r, 0, NULL, NULL), -1);
    in_command = false;
    assert_int_equal(r.calls, 0);
    assert_string_equal(valkey_err_name(VALKEY_ERR_TOO_BIG), "too_big");
    assert_string_equal(valkey_state_name(VALKEY_CONNECTING), "connecting");
}

/* ---- tests: a server that answers garbage -------------------------------- */

static void test_fake_garbage_reply(void **state)
{
    struct tctx *t = *state;
    struct rec r = {0}, after = {0};
    static const char http[] = "HTTP/1.1 200 OK\r\n\r\n";

    fake_start(t, "+PONG\r\n");
    fake_script(&t->fake, http, sizeof(http) - 1);
    connect_client(t);
    assert_int_equal(CMD(t->v, &r, "GET", "k"), 0);
    WAIT_UNTIL(t, r.calls == 1, WAIT_MAX);
    assert_int_equal(r.err, VALKEY_ERR_PROTOCOL);
    /* Dropped and reconnected (the fake answers +OK past its script). */
    WAIT_UNTIL(t, valkey_stats(t->v)->ups == 2, WAIT_MAX);
    assert_int_equal(valkey_stats(t->v)->downs, 1);
    assert_true(t->fake.accepted >= 2);
    assert_int_equal(CMD(t->v, &after, "GET", "k"), 0);
    WAIT_UNTIL(t, after.calls == 1, WAIT_MAX);
    assert_int_equal(after.err, VALKEY_OK);
    assert_string_equal(after.str, "OK");
}

static void test_fake_huge_bulk(void **state)
{
    struct tctx *t = *state;
    struct rec r = {0}, behind = {0};
    static const char huge[] = "$99999999999\r\n";

    fake_start(t, "+PONG\r\n");
    fake_script(&t->fake, huge, sizeof(huge) - 1);
    connect_client(t);
    assert_int_equal(CMD(t->v, &r, "GET", "k"), 0);
    assert_int_equal(CMD(t->v, &behind, "GET", "k"), 0);
    WAIT_UNTIL(t, behind.calls == 1, WAIT_MAX);
    /* Known too big from its header: not buffered, not waited for. */
    assert_int_equal(r.err, VALKEY_ERR_TOO_BIG);
    assert_int_equal(behind.err, VALKEY_ERR_DOWN);
    WAIT_UNTIL(t, valkey_stats(t->v)->ups == 2, WAIT_MAX);
    assert_int_equal(valkey_stats(t->v)->ups, 2);
}

static void test_fake_big_reply_kept(void **state)
{
    struct tctx *t = *state;
    struct rec r = {0}, behind = {0};
    char hdr[16];
    size_t n;

    fake_start(t, "+PONG\r\n");
    /* 2000 bytes: over max_reply_size, under 4x: read and dropped. */
    t->bigbuf = malloc(2100);
    assert_non_null(t->bigbuf);
    snprintf(hdr, sizeof(hdr), "$2000\r\n");
    n = strlen(hdr);
    memcpy(t->bigbuf, hdr, n);
    memset(t->bigbuf + n, 'x', 2000);
    memcpy(t->bigbuf + n + 2000, "\r\n", 2);
    fake_script(&t->fake, t->bigbuf, n + 2002);
    connect_client(t);
    assert_int_equal(CMD(t->v, &r, "GET", "k"), 0);
    assert_int_equal(CMD(t->v, &behind, "GET", "k"), 0);
    WAIT_UNTIL(t, behind.calls == 1, WAIT_MAX);
    assert_int_equal(r.err, VALKEY_ERR_TOO_BIG);
    assert_int_equal(behind.err, VALKEY_OK);
    assert_string_equal(behind.str, "OK");
    assert_int_equal(valkey_stats(t->v)->downs, 0);
}

static void test_fake_huge_array(void **state)
{
    struct tctx *t = *state;
    struct rec r = {0};
    static const char arr[] = "*2000000000\r\n:1\r\n";

    fake_start(t, "+PONG\r\n");
    fake_script(&t->fake, arr, sizeof(arr) - 1);
    connect_client(t);
    assert_int_equal(CMD(t->v, &r, "GET", "k"), 0);
    WAIT_UNTIL(t, r.calls == 1, WAIT_MAX);
    /* Refused before hiredis callocs 16 GB for it. */
    assert_int_equal(r.err, VALKEY_ERR_TOO_BIG);
    WAIT_UNTIL(t, valkey_stats(t->v)->ups == 2, WAIT_MAX);
    assert_int_equal(valkey_stats(t->v)->ups, 2);
}

static void test_fake_unsolicited(void **state)
{
    struct tctx *t = *state;

    /* A reply nobody asked for: hiredis 0.14 would assert() and abort. */
    fake_start(t, "+PONG\r\n+OK\r\n");
    t->v = valkey_new(t->loop, &t->cfg);
    assert_non_null(t->v);
    WAIT_UNTIL(t, valkey_stats(t->v)->downs >= 2, WAIT_MAX);
    assert_true(valkey_stats(t->v)->downs >= 2);
    assert_true(valkey_stats(t->v)->ups >= 2);
}

static void test_fake_garbage_handshake(void **state)
{
    struct tctx *t = *state;
    struct rec r = {0};

    fake_start(t, "HTTP/1.1 400 Bad Request\r\n\r\n");
    t->v = valkey_new(t->loop, &t->cfg);
    assert_non_null(t->v);
    WAIT_UNTIL(t, valkey_stats(t->v)->connects >= 3, WAIT_MAX);
    assert_true(valkey_stats(t->v)->connects >= 3);
    assert_int_equal(valkey_stats(t->v)->ups, 0);
    assert_int_equal(CMD(t->v, &r, "GET", "k"), 0);
    WAIT_UNTIL(t, r.calls == 1, WAIT_MAX);
    assert_int_equal(r.err, VALKEY_ERR_DOWN);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_get_set_hget),
        T(test_pipeline_1000),
        T(test_overload),
        T(test_too_big),
        T(test_auth_and_db),
        T(test_unix_socket),
        T(test_server_killed_and_restarted),
        T(test_backoff_no_busy_loop),
        T(test_sigstop_timeout_and_recovery),
        T(test_late_reply_swallowed),
        T(test_cancel),
        T(test_free_with_pending),
        T(test_invalid),
        T(test_fake_garbage_reply),
        T(test_fake_huge_bulk),
        T(test_fake_big_reply_kept),
        T(test_fake_huge_array),
        T(test_fake_unsolicited),
        T(test_fake_garbage_handshake),
    };

    signal(SIGPIPE, SIG_IGN); /* as the daemon does: hiredis write()s */
    log_init("test_valkey", false);
    if (!find_redis())
        fprintf(stderr, "redis-server not in PATH: live tests skipped\n");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
