/*
 * Valkey client-side caching for the L1 (see tracking.h).
 *
 * The two connections use a small RESP client of our own: non-blocking
 * socket, libev watchers, hiredis' reply parser (redisReader) and a FIFO of
 * expected replies. Not hiredis' async API: in 0.14 its pub/sub mode assert()s
 * on a reply it does not expect and routes an error reply in subscribed mode
 * through an uninitialised callback; here an unexpected reply is a protocol
 * error that closes the connection, like any other failure.
 *
 * Every failure goes through fail(): the L1 is disabled (flushed) first, then
 * both connections are closed and a retry is scheduled. fail() may run inside
 * a reply callback: the read loop checks the connection's generation after
 * every callback and stops when it was closed under it.
 */
#include "tracking.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "isr.h"
#include "l1.h"
#include "log.h"
#include "util.h"

#define DEF_CONNECT_TIMEOUT 1.0
#define DEF_COMMAND_TIMEOUT 1.0
#define DEF_BACKOFF_MIN 0.05
#define DEF_BACKOFF_MAX 2.0
#define DEF_HB_INTERVAL 0.5
#define DEF_HB_TIMEOUT 1.0
#define DEF_MAX_REPLY (64u << 20)
#define TICK 0.05 /* s: timeouts and heartbeats are checked this often */
#define QMAX 64   /* replies expected on one connection */
#define READ_CHUNK 16384
#define READER_MAXBUF (64u << 10)
#define INVALIDATE_CHANNEL "__redis__:invalidate"
#define REVALIDATED_SUFFIX "__revalidated_tags__"
#define SHARED_SUFFIX "__sharedTags__"
#define MAX_PREFIX_LEN 256

struct tracking;
struct conn;

/* A reply to a command we sent; r is never NULL. */
typedef void reply_fn(struct tracking *t, const redisReply *r, void *arg);

struct expect {
    reply_fn *fn;
    void *arg;
    void (*drop)(void *arg); /* frees arg when the connection closes first */
    const char *what;        /* for the failure reason */
    double deadline;         /* ev_now() based; 0 = the handshake's */
};

struct conn {
    struct tracking *t;
    const char *name; /* "subscriber", "tracking" */
    bool sub;         /* "message" arrays are pushes, not replies */
    int fd;
    bool connecting;
    unsigned gen; /* bumped by conn_close() */
    ev_io rio, wio;
    redisReader *reader;
    char *obuf;
    size_t olen, ocap;
    struct expect q[QMAX];
    unsigned qhead, qlen;
};

struct pstate {
    char *s;
    size_t len;
    bool reading;  /* an HGETALL of its __revalidated_tags__ is in flight */
    bool again;    /* changed again since that HGETALL was sent */
    unsigned susp; /* l1_suspend_prefix() calls to undo */
};

struct tracking {
    struct ev_loop *loop;
    struct l1 *l1;
    struct tracking_cfg cfg;
    char *addr, *username, *password;
    struct endpoint ep;

    struct pstate pfx[L1_MAX_PREFIXES]; /* the requested prefixes */
    size_t npfx;

    enum tracking_state state;
    _Atomic bool up;
    struct conn sub, trk;
    long long sub_id;
    unsigned sub_confirms;
    bool trk_ready;
    double deadline; /* of the handshake */

    ev_timer tick, retry;
    unsigned backoff_steps;
    double up_since, down_since;
    bool outage_logged;
    uint64_t rng;

    char hbchan[64];
    uint64_t hb_seq;
    bool hb_out, hb_pub_ok, hb_msg_ok;
    double hb_sent;      /* ev_now() */
    double hb_sent_mono; /* for the RTT */
    double hb_next;

    struct {
        _Atomic uint64_t messages, keys, flushes, reval_reads, reval_dropped, shared_changes,
            attempts, ups, downs, heartbeats, hb_last, hb_max;
    } st;
};

static void fail(struct tracking *t, const char *reason);
static void start_attempt(struct tracking *t);

static void stat_inc(_Atomic uint64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/* ---- connections -------------------------------------------------------------- */

static void conn_close(struct conn *c)
{
    c->gen++;
    if (c->fd >= 0) {
        ev_io_stop(c->t->loop, &c->rio);
        ev_io_stop(c->t->loop, &c->wio);
        close(c->fd);
        c->fd = -1;
    }
    if (c->reader) {
        redisReaderFree(c->reader);
        c->reader = NULL;
    }
    c->olen = 0;
    while (c->qlen > 0) {
        struct expect *e = &c->q[c->qhead];

        if (e->drop)
            e->drop(e->arg);
        c->qhead = (c->qhead + 1) % QMAX;
        c->qlen--;
    }
    c->qhead = 0;
    c->connecting = false;
}

/* Queues one command and the reply it expects (ncb replies for SUBSCRIBE). */
static bool conn_send(struct conn *c, int argc, const char **argv, const size_t *lens, reply_fn *fn,
                      void *arg, void (*drop)(void *), const char *what, unsigned nreplies)
{
    struct tracking *t = c->t;
    char *cmd = NULL;
    int len;

    if (c->fd < 0 || c->qlen + nreplies > QMAX) {
        if (drop)
            drop(arg);
        return false;
    }
    len = redisFormatCommandArgv(&cmd, argc, argv, lens);
    if (len < 0 || !cmd) {
        if (drop)
            drop(arg);
        return false;
    }
    if (c->olen + (size_t)len > c->ocap) {
        size_t cap = c->ocap ? c->ocap : 1024;
        char *b;

        while (cap < c->olen + (size_t)len)
            cap *= 2;
        b = realloc(c->obuf, cap);
        if (!b) {
            free(cmd);
            if (drop)
                drop(arg);
            return false;
        }
        c->obuf = b;
        c->ocap = cap;
    }
    memcpy(c->obuf + c->olen, cmd, (size_t)len);
    c->olen += (size_t)len;
    free(cmd);
    for (unsigned i = 0; i < nreplies; i++) {
        struct expect *e = &c->q[(c->qhead + c->qlen) % QMAX];

        *e = (struct expect){.fn = fn, .arg = arg, .what = what};
        /* The last one owns arg. */
        e->drop = i + 1 == nreplies ? drop : NULL;
        e->deadline = t->state == TRACKING_UP ? ev_now(t->loop) + t->cfg.command_timeout : 0;
        c->qlen++;
    }
    ev_io_start(t->loop, &c->wio);
    return true;
}

static void on_write(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = w->data;
    ssize_t n;

    if (c->connecting) {
        int err = 0;
        socklen_t len = sizeof(err);

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err) {
            char reason[160];

            snprintf(reason, sizeof(reason), "%s connect: %s", c->name, strerror(err));
            fail(c->t, reason);
            return;
        }
        c->connecting = false;
        ev_io_start(loop, &c->rio);
    }
    if (c->olen == 0) {
        ev_io_stop(loop, w);
        return;
    }
    n = send(c->fd, c->obuf, c->olen, MSG_NOSIGNAL);
    if (n < 0) {
        char reason[160];

        if (errno == EAGAIN || errno == EINTR)
            return;
        snprintf(reason, sizeof(reason), "%s write: %s", c->name, strerror(errno));
        fail(c->t, reason);
        return;
    }
    memmove(c->obuf, c->obuf + n, c->olen - (size_t)n);
    c->olen -= (size_t)n;
    if (c->olen == 0)
        ev_io_stop(loop, w);
}

static void on_message(struct tracking *t, const redisReply *r);

static bool is_str(const redisReply *r, const char *s)
{
    return (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) &&
           r->len == strlen(s) && memcmp(r->str, s, r->len) == 0;
}

static void dispatch(struct conn *c, const redisReply *r)
{
    struct expect e;

    if (c->sub && r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
        is_str(r->element[0], "message")) {
        on_message(c->t, r);
        return;
    }
    if (c->qlen == 0) {
        char reason[96];

        snprintf(reason, sizeof(reason), "%s: unsolicited reply", c->name);
        fail(c->t, reason);
        return;
    }
    e = c->q[c->qhead];
    c->qhead = (c->qhead + 1) % QMAX;
    c->qlen--;
    e.fn(c->t, r, e.arg);
}

static void on_read(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = w->data;
    struct tracking *t = c->t;
    char buf[READ_CHUNK], reason[160];
    unsigned gen = c->gen;
    ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
    void *reply;

    if (n == 0) {
        snprintf(reason, sizeof(reason), "%s: connection closed by the server", c->name);
        fail(t, reason);
        return;
    }
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        snprintf(reason, sizeof(reason), "%s read: %s", c->name, strerror(errno));
        fail(t, reason);
        return;
    }
    if (redisReaderFeed(c->reader, buf, (size_t)n) != REDIS_OK) {
        fail(t, "out of memory");
        return;
    }
    for (;;) {
        if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) {
            snprintf(reason, sizeof(reason), "%s: protocol error", c->name);
            fail(t, reason);
            return;
        }
        if (!reply)
            break;
        dispatch(c, reply);
        freeReplyObject(reply);
        if (c->gen != gen)
            return; /* closed by what the reply did */
    }
    /* A reply still arriving, and already too large. */
    if (c->reader->len - c->reader->pos > t->cfg.max_reply) {
        snprintf(reason, sizeof(reason), "%s: reply too big", c->name);
        fail(t, reason);
    }
}

static bool conn_open(struct conn *c)
{
    struct tracking *t = c->t;
    int fd, one = 1;

    fd = socket(t->ep.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    if (!t->ep.is_unix) {
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    }
    if (connect(fd, (const struct sockaddr *)&t->ep.addr, t->ep.len) < 0 && errno != EINPROGRESS) {
        int err = errno;

        close(fd);
        errno = err;
        return false;
    }
    c->reader = redisReaderCreate();
    if (!c->reader) {
        close(fd);
        errno = ENOMEM;
        return false;
    }
    c->reader->maxbuf = READER_MAXBUF;
    c->fd = fd;
    c->connecting = true;
    ev_io_init(&c->rio, on_read, fd, EV_READ);
    c->rio.data = c;
    ev_io_init(&c->wio, on_write, fd, EV_WRITE);
    c->wio.data = c;
    ev_io_start(t->loop, &c->wio); /* writable = connected (or failed) */
    return true;
}

/* ---- state changes ------------------------------------------------------------------ */

static double backoff(struct tracking *t)
{
    double d = backoff_jitter(t->cfg.backoff_min, t->cfg.backoff_max, t->backoff_steps, &t->rng);

    if (t->backoff_steps < 64)
        t->backoff_steps++;
    return d;
}

static void reset_prefix_states(struct tracking *t)
{
    for (size_t i = 0; i < t->npfx; i++) {
        t->pfx[i].reading = t->pfx[i].again = false;
        t->pfx[i].susp = 0;
    }
}

static void fail(struct tracking *t, const char *reason)
{
    bool was_up = t->state == TRACKING_UP;
    double now = ev_now(t->loop), delay;
    char q[200];

    /* Invalidations may be lost from here on: nothing cached may be served. */
    atomic_store(&t->up, false);
    l1_set_enabled(t->l1, false);
    conn_close(&t->sub);
    conn_close(&t->trk);
    reset_prefix_states(t); /* disabling the L1 cleared its suspensions */
    t->hb_out = false;
    t->state = TRACKING_DOWN;
    if (was_up) {
        stat_inc(&t->st.downs, 1);
        if (now - t->up_since >= t->cfg.backoff_max)
            t->backoff_steps = 0; /* it held: start again from the shortest delay */
    }
    delay = backoff(t);
    log_quote(q, sizeof(q), reason, strlen(reason));
    if (!t->outage_logged) {
        log_warning("tracking_down", "addr=%s reason=%s l1=flushed retry_in=%.3f", t->ep.text, q,
                    delay);
        t->outage_logged = true;
        t->down_since = now;
    } else {
        log_debug("tracking_retry_failed", "addr=%s reason=%s retry_in=%.3f", t->ep.text, q, delay);
    }
    ev_timer_stop(t->loop, &t->retry);
    ev_timer_set(&t->retry, delay, 0.);
    ev_timer_start(t->loop, &t->retry);
}

static void go_up(struct tracking *t)
{
    const char *names[L1_MAX_PREFIXES];
    double now = ev_now(t->loop);

    for (size_t i = 0; i < t->npfx; i++)
        names[i] = t->pfx[i].s;
    if (l1_set_prefixes(t->l1, names, t->npfx) < 0) {
        fail(t, "out of memory");
        return;
    }
    l1_set_enabled(t->l1, true); /* empty; older lookups are refused */
    t->state = TRACKING_UP;
    t->up_since = now;
    t->hb_out = false;
    t->hb_next = now; /* prove the path at once */
    atomic_store(&t->up, true);
    stat_inc(&t->st.ups, 1);
    log_notice("tracking_up", "addr=%s subscriber_id=%lld prefixes=%zu down_for=%.3f", t->ep.text,
               t->sub_id, t->npfx, t->outage_logged ? now - t->down_since : 0.);
    t->outage_logged = false;
}

/* ---- prefixes ------------------------------------------------------------------------ */

/* The prefixes to send: without those covered by a shorter one (Valkey
 * refuses overlapping prefixes in one client). Returns how many. */
static size_t normalize(const struct pstate *in, size_t n, const char **out)
{
    size_t k = 0;

    for (size_t i = 0; i < n; i++) {
        bool covered = false;

        for (size_t j = 0; j < n && !covered; j++) {
            if (j == i || in[j].len > in[i].len || memcmp(in[j].s, in[i].s, in[j].len) != 0)
                continue;
            /* j is a prefix of i; equal ones: keep the first. */
            covered = in[j].len < in[i].len || j < i;
        }
        if (!covered)
            out[k++] = in[i].s;
    }
    return k;
}

/* argv of CLIENT TRACKING on REDIRECT <id> BCAST PREFIX ... (idbuf holds <id>). */
static int tracking_on_argv(struct tracking *t, const char **argv, char *idbuf, size_t idlen)
{
    const char *norm[L1_MAX_PREFIXES];
    size_t n = normalize(t->pfx, t->npfx, norm);
    int argc = 0;

    snprintf(idbuf, idlen, "%lld", t->sub_id);
    argv[argc++] = "CLIENT";
    argv[argc++] = "TRACKING";
    argv[argc++] = "on";
    argv[argc++] = "REDIRECT";
    argv[argc++] = idbuf;
    argv[argc++] = "BCAST";
    for (size_t i = 0; i < n; i++) {
        argv[argc++] = "PREFIX";
        argv[argc++] = norm[i];
    }
    return n ? argc : 0;
}

static struct pstate *pfx_find(struct tracking *t, const char *s, size_t len)
{
    for (size_t i = 0; i < t->npfx; i++)
        if (t->pfx[i].len == len && memcmp(t->pfx[i].s, s, len) == 0)
            return &t->pfx[i];
    return NULL;
}

/* ---- replies ------------------------------------------------------------------------- */

static void refused(struct tracking *t, const char *what, const redisReply *r)
{
    char q[128], reason[200];

    if (r->type == REDIS_REPLY_ERROR || r->type == REDIS_REPLY_STATUS ||
        r->type == REDIS_REPLY_STRING)
        log_quote(q, sizeof(q), r->str, r->len);
    else
        snprintf(q, sizeof(q), "reply of type %d", r->type);
    snprintf(reason, sizeof(reason), "%s refused: %s", what, q);
    fail(t, reason);
}

static void expect_ok(struct tracking *t, const redisReply *r, void *arg)
{
    if (!is_str(r, "OK") || r->type != REDIS_REPLY_STATUS)
        refused(t, arg, r);
}

static void expect_queued(struct tracking *t, const redisReply *r, void *arg)
{
    if (r->type != REDIS_REPLY_STATUS || !is_str(r, "QUEUED"))
        refused(t, arg, r);
}

static void go_up_or_fail(struct tracking *t, const redisReply *r, void *arg)
{
    if (r->type != REDIS_REPLY_STATUS || !is_str(r, "OK")) {
        refused(t, "CLIENT TRACKING", r);
        return;
    }
    go_up(t);
}

static void maybe_track(struct tracking *t)
{
    const char *argv[6 + 2 * L1_MAX_PREFIXES];
    char id[32];
    int argc;

    if (t->state != TRACKING_CONNECTING || t->sub_confirms < 2 || !t->trk_ready)
        return;
    argc = tracking_on_argv(t, argv, id, sizeof(id));
    if (argc == 0) {
        go_up(t); /* nothing to track: UP, and the L1 accepts no prefix */
        return;
    }
    if (!conn_send(&t->trk, argc, argv, NULL, go_up_or_fail, NULL, NULL, "CLIENT TRACKING", 1))
        fail(t, "tracking: cannot queue CLIENT TRACKING");
}

static void on_subscribed(struct tracking *t, const redisReply *r, void *arg)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 || !is_str(r->element[0], "subscribe")) {
        refused(t, "SUBSCRIBE", r);
        return;
    }
    t->sub_confirms++;
    maybe_track(t);
}

static void on_client_id(struct tracking *t, const redisReply *r, void *arg)
{
    const char *argv[3] = {"SUBSCRIBE", INVALIDATE_CHANNEL, t->hbchan};

    if (r->type != REDIS_REPLY_INTEGER || r->integer <= 0) {
        refused(t, "CLIENT ID", r);
        return;
    }
    t->sub_id = r->integer;
    if (!conn_send(&t->sub, 3, argv, NULL, on_subscribed, NULL, NULL, "SUBSCRIBE", 2))
        fail(t, "subscriber: cannot queue SUBSCRIBE");
}

static void on_ping(struct tracking *t, const redisReply *r, void *arg)
{
    if (r->type != REDIS_REPLY_STATUS || !is_str(r, "PONG")) {
        refused(t, "PING", r);
        return;
    }
    t->trk_ready = true;
    maybe_track(t);
}

/* ---- heartbeat ------------------------------------------------------------------------- */

static void hb_check_done(struct tracking *t)
{
    uint64_t us;

    if (!t->hb_out || !t->hb_pub_ok || !t->hb_msg_ok)
        return;
    t->hb_out = false;
    t->hb_next = ev_now(t->loop) + t->cfg.heartbeat_interval;
    us = (uint64_t)((now_mono() - t->hb_sent_mono) * 1e6);
    atomic_store_explicit(&t->st.hb_last, us, memory_order_relaxed);
    if (us > atomic_load_explicit(&t->st.hb_max, memory_order_relaxed))
        atomic_store_explicit(&t->st.hb_max, us, memory_order_relaxed);
    stat_inc(&t->st.heartbeats, 1);
}

static void on_publish(struct tracking *t, const redisReply *r, void *arg)
{
    if (r->type != REDIS_REPLY_INTEGER) {
        refused(t, "PUBLISH", r);
        return;
    }
    if (r->integer < 1) {
        fail(t, "heartbeat: the subscriber is not subscribed");
        return;
    }
    t->hb_pub_ok = true;
    hb_check_done(t);
}

static void hb_send(struct tracking *t)
{
    char seq[32];
    const char *argv[3] = {"PUBLISH", t->hbchan, seq};

    snprintf(seq, sizeof(seq), "%llu", (unsigned long long)++t->hb_seq);
    t->hb_out = true;
    t->hb_pub_ok = t->hb_msg_ok = false;
    t->hb_sent = ev_now(t->loop);
    t->hb_sent_mono = now_mono();
    if (!conn_send(&t->trk, 3, argv, NULL, on_publish, NULL, NULL, "PUBLISH", 1))
        fail(t, "tracking: cannot queue the heartbeat");
}

static void on_hb_message(struct tracking *t, const redisReply *payload)
{
    char seq[32];

    snprintf(seq, sizeof(seq), "%llu", (unsigned long long)t->hb_seq);
    if (t->hb_out && is_str(payload, seq)) {
        t->hb_msg_ok = true;
        hb_check_done(t);
    }
}

/* ---- invalidation ------------------------------------------------------------------------ */

struct reval_req {
    size_t len;
    char prefix[];
};

static void reval_send(struct tracking *t, struct pstate *p);

static void on_hgetall(struct tracking *t, const redisReply *r, void *arg)
{
    struct reval_req *req = arg;
    struct pstate *p = pfx_find(t, req->prefix, req->len);

    if (!p) { /* the pool went away meanwhile, and its entries with it */
        free(req);
        return;
    }
    if (r->type == REDIS_REPLY_ARRAY && r->elements % 2 == 0) {
        size_t n = r->elements / 2;
        const char **tags = malloc((n ? n : 1) * sizeof(*tags));
        size_t *lens = malloc((n ? n : 1) * sizeof(*lens));
        int64_t *times = malloc((n ? n : 1) * sizeof(*times));

        if (tags && lens && times) {
            for (size_t i = 0; i < n; i++) {
                const redisReply *f = r->element[2 * i], *v = r->element[2 * i + 1];

                tags[i] = f->type == REDIS_REPLY_STRING ? f->str : "";
                lens[i] = f->type == REDIS_REPLY_STRING ? f->len : 0;
                times[i] =
                    v->type == REDIS_REPLY_STRING ? isr_tag_time(v->str, v->len) : ISR_TAG_NONE;
            }
            stat_inc(&t->st.reval_dropped,
                     l1_invalidate_revalidated(t->l1, p->s, n, tags, lens, times));
        } else {
            l1_invalidate_prefix(t->l1, p->s, p->len);
        }
        free(tags);
        free(lens);
        free(times);
    } else {
        /* Not a hash (WRONGTYPE...): what the handler reads is unknown. */
        l1_invalidate_prefix(t->l1, p->s, p->len);
    }
    free(req);
    if (p->again) {
        p->again = false;
        reval_send(t, p); /* stays suspended: the hash moved after we read it */
        return;
    }
    p->reading = false;
    while (p->susp > 0) {
        l1_resume_prefix(t->l1, p->s);
        p->susp--;
    }
}

static void reval_send(struct tracking *t, struct pstate *p)
{
    struct reval_req *req = malloc(sizeof(*req) + p->len + 1);
    char key[MAX_PREFIX_LEN + sizeof(REVALIDATED_SUFFIX)];
    const char *argv[2] = {"HGETALL", key};
    size_t lens[2] = {7, 0};

    if (!req || p->len + sizeof(REVALIDATED_SUFFIX) > sizeof(key)) {
        free(req);
        l1_invalidate_prefix(t->l1, p->s, p->len);
        return;
    }
    req->len = p->len;
    memcpy(req->prefix, p->s, p->len + 1);
    memcpy(key, p->s, p->len);
    memcpy(key + p->len, REVALIDATED_SUFFIX, sizeof(REVALIDATED_SUFFIX));
    lens[1] = p->len + sizeof(REVALIDATED_SUFFIX) - 1;
    p->reading = true;
    stat_inc(&t->st.reval_reads, 1);
    if (!conn_send(&t->trk, 2, argv, lens, on_hgetall, req, free, "HGETALL", 1))
        fail(t, "tracking: cannot queue HGETALL");
}

static bool is_bookkeeping(const struct pstate *p, const char *k, size_t len, const char *suffix)
{
    size_t sl = strlen(suffix);

    return len == p->len + sl && memcmp(k, p->s, p->len) == 0 &&
           memcmp(k + p->len, suffix, sl) == 0;
}

static void on_key(struct tracking *t, const char *k, size_t len)
{
    stat_inc(&t->st.keys, 1);
    l1_invalidate_key(t->l1, k, len);
    for (size_t i = 0; i < t->npfx; i++) {
        struct pstate *p = &t->pfx[i];

        if (is_bookkeeping(p, k, len, REVALIDATED_SUFFIX)) {
            /* From now until the hash is read again, nothing of the pool is
             * served from L1, and lookups already in flight cannot put. */
            l1_suspend_prefix(t->l1, p->s);
            p->susp++;
            if (p->reading)
                p->again = true;
            else
                reval_send(t, p);
        } else if (is_bookkeeping(p, k, len, SHARED_SUFFIX)) {
            stat_inc(&t->st.shared_changes, 1);
            if (t->cfg.shared_tags_drop_prefix)
                l1_invalidate_prefix(t->l1, p->s, p->len);
        }
    }
}

static void on_message(struct tracking *t, const redisReply *r)
{
    const redisReply *ch = r->element[1], *payload = r->element[2];

    if (is_str(ch, t->hbchan)) {
        on_hb_message(t, payload);
        return;
    }
    if (!is_str(ch, INVALIDATE_CHANNEL) || t->state != TRACKING_UP)
        return;
    stat_inc(&t->st.messages, 1);
    if (payload->type == REDIS_REPLY_NIL) {
        stat_inc(&t->st.flushes, 1);
        log_notice("tracking_flushall", "addr=%s entries=%zu", t->ep.text, l1_flush(t->l1));
        return;
    }
    if (payload->type != REDIS_REPLY_ARRAY)
        return; /* a PUBLISH by someone else: not Valkey's */
    for (size_t i = 0; i < payload->elements; i++) {
        const redisReply *k = payload->element[i];

        if (k->type == REDIS_REPLY_STRING)
            on_key(t, k->str, k->len);
    }
}

/* ---- timers ---------------------------------------------------------------------------- */

static bool overdue(const struct conn *c, double now)
{
    const struct expect *e = &c->q[c->qhead];

    return c->qlen > 0 && e->deadline > 0 && now > e->deadline;
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct tracking *t = w->data;
    double now = ev_now(loop);

    switch (t->state) {
    case TRACKING_DOWN:
        return;
    case TRACKING_CONNECTING:
        if (now > t->deadline)
            fail(t, "handshake timeout");
        return;
    case TRACKING_UP:
        break;
    }
    if (overdue(&t->trk, now) || overdue(&t->sub, now)) {
        const struct conn *c = overdue(&t->trk, now) ? &t->trk : &t->sub;
        char reason[96];

        snprintf(reason, sizeof(reason), "%s: %s timeout", c->name, c->q[c->qhead].what);
        fail(t, reason);
        return;
    }
    if (t->hb_out && now - t->hb_sent > t->cfg.heartbeat_timeout)
        fail(t, "heartbeat timeout");
    else if (!t->hb_out && now >= t->hb_next)
        hb_send(t);
}

static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    start_attempt(w->data);
}

static void start_attempt(struct tracking *t)
{
    const char *argv[3];
    char db[16];
    int argc;
    bool ok = true;

    stat_inc(&t->st.attempts, 1);
    conn_close(&t->sub);
    conn_close(&t->trk);
    t->state = TRACKING_CONNECTING;
    t->sub_confirms = 0;
    t->trk_ready = false;
    t->sub_id = 0;
    ev_now_update(t->loop);
    t->deadline = ev_now(t->loop) + t->cfg.connect_timeout;
    if (!conn_open(&t->sub) || !conn_open(&t->trk)) {
        char reason[128];

        snprintf(reason, sizeof(reason), "connect: %s", strerror(errno));
        fail(t, reason);
        return;
    }
    for (int i = 0; i < 2; i++) {
        struct conn *c = i ? &t->trk : &t->sub;

        if (t->password && *t->password) {
            argc = 0;
            argv[argc++] = "AUTH";
            if (t->username)
                argv[argc++] = t->username;
            argv[argc++] = t->password;
            ok = ok && conn_send(c, argc, argv, NULL, expect_ok, "AUTH", NULL, "AUTH", 1);
        }
        argv[0] = "CLIENT";
        argv[1] = "SETNAME";
        argv[2] = i ? "cedra-tracking" : "cedra-invalidations";
        ok = ok &&
             conn_send(c, 3, argv, NULL, expect_ok, "CLIENT SETNAME", NULL, "CLIENT SETNAME", 1);
    }
    argv[0] = "CLIENT";
    argv[1] = "ID";
    ok = ok && conn_send(&t->sub, 2, argv, NULL, on_client_id, NULL, NULL, "CLIENT ID", 1);
    if (t->cfg.db) {
        snprintf(db, sizeof(db), "%u", t->cfg.db);
        argv[0] = "SELECT";
        argv[1] = db;
        ok = ok && conn_send(&t->trk, 2, argv, NULL, expect_ok, "SELECT", NULL, "SELECT", 1);
    }
    argv[0] = "PING";
    ok = ok && conn_send(&t->trk, 1, argv, NULL, on_ping, NULL, NULL, "PING", 1);
    if (!ok)
        fail(t, "out of memory");
}

/* ---- prefix changes while UP ---------------------------------------------------------- */

struct pset {
    size_t n;
    char *s[L1_MAX_PREFIXES];
};

static void pset_free(void *arg)
{
    struct pset *ps = arg;

    for (size_t i = 0; i < ps->n; i++)
        free(ps->s[i]);
    free(ps);
}

static void on_retracked(struct tracking *t, const redisReply *r, void *arg)
{
    struct pset *ps = arg;
    bool ok = r->type == REDIS_REPLY_STATUS && is_str(r, "OK"); /* off alone */

    if (r->type == REDIS_REPLY_ARRAY) { /* EXEC */
        ok = r->elements == 2;
        for (size_t i = 0; ok && i < r->elements; i++)
            ok = r->element[i]->type == REDIS_REPLY_STATUS && is_str(r->element[i], "OK");
    }
    if (!ok) {
        pset_free(ps);
        refused(t, "CLIENT TRACKING (new prefixes)", r);
        return;
    }
    /* Tracked on the server now: the L1 may take them (the epoch bump refuses
     * lookups that read them before). */
    if (l1_set_prefixes(t->l1, (const char *const *)ps->s, ps->n) < 0)
        fail(t, "out of memory");
    else
        log_notice("tracking_prefixes", "addr=%s prefixes=%zu", t->ep.text, ps->n);
    pset_free(ps);
}

static int retrack(struct tracking *t, const char *const *old, size_t nold)
{
    const char *keep[L1_MAX_PREFIXES], *argv[6 + 2 * L1_MAX_PREFIXES];
    char id[32];
    size_t nkeep = 0;
    struct pset *ps = calloc(1, sizeof(*ps));
    int argc;

    if (!ps)
        return -1;
    for (size_t i = 0; i < t->npfx; i++) {
        ps->s[i] = strdup(t->pfx[i].s);
        if (!ps->s[i]) {
            pset_free(ps);
            return -1;
        }
        ps->n++;
    }
    /* Prefixes that leave are dropped at once; those that join wait for EXEC. */
    for (size_t i = 0; i < nold; i++)
        if (pfx_find(t, old[i], strlen(old[i])))
            keep[nkeep++] = old[i];
    if (l1_set_prefixes(t->l1, keep, nkeep) < 0) {
        pset_free(ps);
        return -1;
    }
    argc = tracking_on_argv(t, argv, id, sizeof(id));
    if (argc == 0) {
        argv[0] = "CLIENT";
        argv[1] = "TRACKING";
        argv[2] = "off";
        if (!conn_send(&t->trk, 3, argv, NULL, on_retracked, ps, pset_free, "CLIENT TRACKING", 1))
            fail(t, "tracking: cannot queue CLIENT TRACKING off");
        return 0;
    }
    {
        const char *multi[1] = {"MULTI"}, *exec[1] = {"EXEC"};
        const char *off[3] = {"CLIENT", "TRACKING", "off"};
        bool queued;

        /* One transaction: no write between off and on goes unreported. */
        queued = conn_send(&t->trk, 1, multi, NULL, expect_ok, "MULTI", NULL, "MULTI", 1) &&
                 conn_send(&t->trk, 3, off, NULL, expect_queued, "CLIENT TRACKING off", NULL,
                           "CLIENT TRACKING", 1) &&
                 conn_send(&t->trk, argc, argv, NULL, expect_queued, "CLIENT TRACKING on", NULL,
                           "CLIENT TRACKING", 1);
        /* ps belongs to the EXEC reply only once that is queued. */
        if (!queued)
            pset_free(ps);
        if (!queued || !conn_send(&t->trk, 1, exec, NULL, on_retracked, ps, pset_free, "EXEC", 1))
            fail(t, "tracking: cannot queue the new prefixes");
    }
    return 0;
}

int tracking_set_prefixes(struct tracking *t, const char *const *prefixes, size_t n)
{
    struct pstate next[L1_MAX_PREFIXES];
    char *old_s[L1_MAX_PREFIXES];
    const char *old[L1_MAX_PREFIXES];
    size_t nn = 0, nold = t->npfx;

    if (n > L1_MAX_PREFIXES) {
        errno = EINVAL;
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len = prefixes[i] ? strlen(prefixes[i]) : 0;
        const struct pstate *prev;
        bool dup = false;

        if (len == 0 || len > MAX_PREFIX_LEN) {
            errno = EINVAL;
            goto fail;
        }
        for (size_t j = 0; j < nn && !dup; j++)
            dup = next[j].len == len && memcmp(next[j].s, prefixes[i], len) == 0;
        if (dup)
            continue;
        /* A kept prefix keeps its revalidation state (HGETALL in flight). */
        prev = pfx_find(t, prefixes[i], len);
        next[nn] = prev ? *prev : (struct pstate){0};
        next[nn].s = strdup(prefixes[i]);
        next[nn].len = len;
        if (!next[nn].s) {
            errno = ENOMEM;
            goto fail;
        }
        nn++;
    }
    for (size_t i = 0; i < nold; i++) {
        old_s[i] = t->pfx[i].s;
        old[i] = old_s[i];
    }
    memcpy(t->pfx, next, nn * sizeof(next[0]));
    t->npfx = nn;
    switch (t->state) {
    case TRACKING_UP:
        if (retrack(t, old, nold) < 0)
            fail(t, "out of memory");
        break;
    case TRACKING_CONNECTING:
        start_attempt(t); /* the handshake in flight names the old set */
        break;
    case TRACKING_DOWN:
        break;
    }
    for (size_t i = 0; i < nold; i++)
        free(old_s[i]);
    return 0;
fail:
    while (nn-- > 0)
        free(next[nn].s);
    return -1;
}

/* ---- public ------------------------------------------------------------------------------- */

struct tracking *tracking_new(struct ev_loop *loop, const struct tracking_cfg *cfg, struct l1 *l1)
{
    struct tracking *t;
    char err[160];
    bool oom = false;
    uint64_t token;

    if (!cfg->addr || !l1) {
        log_error("tracking_config", "reason=\"no address or no L1\"");
        return NULL;
    }
    t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    if (parse_endpoint(cfg->addr, &t->ep, err, sizeof(err)) < 0) {
        char q[200];

        log_error("tracking_config", "reason=%s", log_quote(q, sizeof(q), err, strlen(err)));
        free(t);
        return NULL;
    }
    if (cfg->username && !cfg->password) {
        log_error("tracking_config", "addr=%s reason=\"username without password\"", t->ep.text);
        free(t);
        return NULL;
    }
    t->loop = loop;
    t->l1 = l1;
    t->cfg = *cfg;
    t->sub = (struct conn){.t = t, .name = "subscriber", .sub = true, .fd = -1};
    t->trk = (struct conn){.t = t, .name = "tracking", .fd = -1};
    t->addr = strdup_opt(cfg->addr, &oom);
    t->username = strdup_opt(cfg->username, &oom);
    t->password = strdup_opt(cfg->password, &oom);
    t->cfg.addr = t->addr;
    t->cfg.username = t->username;
    t->cfg.password = t->password;
    t->cfg.prefixes = NULL;
    t->cfg.nprefixes = 0;
    if (t->cfg.connect_timeout <= 0)
        t->cfg.connect_timeout = DEF_CONNECT_TIMEOUT;
    if (t->cfg.command_timeout <= 0)
        t->cfg.command_timeout = DEF_COMMAND_TIMEOUT;
    if (t->cfg.backoff_min <= 0)
        t->cfg.backoff_min = DEF_BACKOFF_MIN;
    if (t->cfg.backoff_max <= 0)
        t->cfg.backoff_max = DEF_BACKOFF_MAX;
    if (t->cfg.backoff_max < t->cfg.backoff_min)
        t->cfg.backoff_max = t->cfg.backoff_min;
    if (t->cfg.heartbeat_interval <= 0)
        t->cfg.heartbeat_interval = DEF_HB_INTERVAL;
    if (t->cfg.heartbeat_timeout <= 0)
        t->cfg.heartbeat_timeout = DEF_HB_TIMEOUT;
    if (t->cfg.max_reply == 0)
        t->cfg.max_reply = DEF_MAX_REPLY;
    if (getrandom(&token, sizeof(token), 0) != (ssize_t)sizeof(token))
        token = (uint64_t)(uintptr_t)t ^ (uint64_t)(now_mono() * 1e9);
    t->rng = token | 1;
    snprintf(t->hbchan, sizeof(t->hbchan), "__cedra__:heartbeat:%016llx",
             (unsigned long long)token);
    ev_timer_init(&t->tick, on_tick, TICK, TICK);
    t->tick.data = t;
    ev_timer_init(&t->retry, on_retry, 0., 0.);
    t->retry.data = t;
    if (oom || tracking_set_prefixes(t, cfg->prefixes, cfg->nprefixes) < 0) {
        log_error("tracking_config", "addr=%s reason=\"bad prefixes or out of memory\"",
                  t->ep.text);
        tracking_free(t);
        return NULL;
    }
    l1_set_enabled(l1, false);
    ev_timer_start(loop, &t->tick);
    start_attempt(t);
    return t;
}

void tracking_free(struct tracking *t)
{
    if (!t)
        return;
    atomic_store(&t->up, false);
    l1_set_enabled(t->l1, false);
    ev_timer_stop(t->loop, &t->tick);
    ev_timer_stop(t->loop, &t->retry);
    conn_close(&t->sub);
    conn_close(&t->trk);
    free(t->sub.obuf);
    free(t->trk.obuf);
    for (size_t i = 0; i < t->npfx; i++)
        free(t->pfx[i].s);
    if (t->password)
        explicit_bzero(t->password, strlen(t->password));
    free(t->addr);
    free(t->username);
    free(t->password);
    free(t);
}

bool tracking_up(const struct tracking *t)
{
    return atomic_load(&((struct tracking *)t)->up);
}

enum tracking_state tracking_state(const struct tracking *t)
{
    return t->state;
}

const char *tracking_state_name(enum tracking_state s)
{
    switch (s) {
    case TRACKING_DOWN:
        return "down";
    case TRACKING_CONNECTING:
        return "connecting";
    case TRACKING_UP:
        return "up";
    }
    return "?";
}

void tracking_get_stats(const struct tracking *t, struct tracking_stats *out)
{
    struct tracking *m = (struct tracking *)t;

#define LOAD(f) atomic_load_explicit(&m->st.f, memory_order_relaxed)
    out->messages = LOAD(messages);
    out->keys = LOAD(keys);
    out->flushes = LOAD(flushes);
    out->reval_reads = LOAD(reval_reads);
    out->reval_dropped = LOAD(reval_dropped);
    out->shared_changes = LOAD(shared_changes);
    out->attempts = LOAD(attempts);
    out->ups = LOAD(ups);
    out->downs = LOAD(downs);
    out->heartbeats = LOAD(heartbeats);
    out->heartbeat_us_last = LOAD(hb_last);
    out->heartbeat_us_max = LOAD(hb_max);
#undef LOAD
}
