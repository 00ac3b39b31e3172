/*
 * Per-worker asynchronous Valkey client (see valkey.h).
 *
 * How hiredis 0.14 is used, and why:
 *  - hiredis calls every registered reply callback exactly once: with the
 *    reply, or with NULL when the context is freed (by us, or by hiredis
 *    itself on EOF, I/O or protocol errors, synchronously, before the
 *    cleanup hook). So a command record stays allocated until that callback,
 *    even after its caller was answered by a timeout or forgot it
 *    (valkey_cancel): such a "late" record just swallows what comes.
 *  - Our own libev glue instead of adapters/libev.h: the watchers live in
 *    struct valkey (no allocation per connection), the cleanup hook tells us
 *    the context is gone, and after each read we can look at the reader to
 *    bound a reply that is still arriving (hiredis buffers a whole reply,
 *    whatever its announced size).
 *  - The reader's object functions are wrapped: they measure the RESP size of
 *    each reply while it is built (TOO_BIG), refuse absurd array lengths
 *    before hiredis callocs them, and refuse a reply that nobody asked for:
 *    hiredis 0.14 assert()s on an unsolicited non-error reply, which would
 *    abort the daemon. Returning NULL from them makes the reader fail ("Out
 *    of memory"), which tears the connection down the normal way.
 *  - hiredis 0.14 has no timeouts in the async API: the command timeout is
 *    one ev_timer on the oldest command (all commands have the same timeout
 *    and are answered in order, so the oldest one expires first), the connect
 *    timeout another one covering TCP connect and AUTH/SELECT/PING.
 *  - The context is freed only from our timers, our read hook and reply
 *    callbacks (where hiredis defers the free until the callback returns),
 *    never from onConnect, where it would be used after free.
 */
#include "valkey.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>

#include "log.h"
#include "util.h"

#define DEF_CONNECT_TIMEOUT 0.5
#define DEF_COMMAND_TIMEOUT 0.1
#define DEF_BACKOFF_MIN 0.05
#define DEF_BACKOFF_MAX 2.0
#define DEF_WEDGE_TIMEOUTS 3
#define DEF_MAX_REPLY (4u << 20)
#define DEF_MAX_PENDING 1024
/* A reply larger than max_reply_size is read to its end and dropped, so that
 * the commands pipelined behind it survive. Beyond this many times the limit
 * (announced or received) it is garbage or abuse: drop the connection. */
#define HARD_CAP_FACTOR 4
/* Reader buffer kept between replies: a typical page fits, a big one is
 * released once consumed (hiredis' default is 16 KiB). */
#define READER_MAXBUF (64u << 10)
/* Commands answered by a timer a little early are still timed out: libev may
 * wake us a hair before a deadline computed in floating point. */
#define DEADLINE_SLACK 1e-4

const double valkey_latency_bounds[VALKEY_LAT_BUCKETS - 1] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
};

/* One command queued by a caller. */
struct vk_cmd {
    struct vk_cmd *prev; /* in v->pending (sent) or v->deferred (immediate error) */
    struct vk_cmd *next;
    struct valkey *v;
    valkey_cb *cb; /* NULL once the caller was answered or cancelled */
    void *privdata;
    uint64_t seq;
    double deadline;     /* ev_now() based */
    double t0;           /* now_mono() when queued, for the latency histogram */
    enum valkey_err err; /* deferred: what to deliver */
};

enum hs_step { HS_AUTH, HS_SELECT, HS_PING };

struct valkey {
    struct ev_loop *loop;
    struct valkey_cfg cfg; /* strings below are our copies */
    char *addr;
    char *username;
    char *password;
    char *logp; /* "name " or "" */
    struct endpoint ep;
    char host[INET6_ADDRSTRLEN];
    int port;
    size_t hard_cap;

    enum valkey_state state;
    redisAsyncContext *ac;    /* the live connection; NULL while DOWN */
    redisAsyncContext *io_ac; /* what the watchers serve, until its cleanup hook */
    ev_io rio;
    ev_io wio;
    bool reading;
    bool writing;
    redisReplyObjectFunctions *orig_fns;

    ev_timer connect_timer;
    ev_timer retry_timer;
    ev_timer cmd_timer;
    ev_timer flush_timer;

    struct vk_cmd pending;  /* list head, queue order = deadline order */
    struct vk_cmd deferred; /* list head, delivered by flush_timer */
    unsigned npending;
    unsigned wire;            /* hiredis callbacks registered on this connection */
    unsigned wire_user;       /* of which commands of callers, late ones included */
    size_t reply_bytes;       /* RESP bytes of the reply being read */
    enum valkey_err drop_err; /* what callers get when we tear the connection down */
    enum valkey_err head_err; /* ... except the oldest command, which gets this */
    const char *abort_reason; /* set when our reader hooks failed the reader */
    unsigned timeouts_in_row;
    unsigned attempts; /* grows the backoff; reset by a stable connection */
    unsigned tries;    /* connection attempts since the last UP, for the log */
    double up_since;
    double down_since;
    bool outage_logged;
    bool closing;
    int cb_depth;
    uint64_t seq;
    uint64_t rng; /* per client: the workers share no RNG state */
    struct valkey_stats st;
};

static void conn_start(struct valkey *v);
static void arm_cmd_timer(struct valkey *v);

/* ---- small helpers ------------------------------------------------------ */

static void list_init(struct vk_cmd *h)
{
    h->prev = h->next = h;
}

static bool list_empty(const struct vk_cmd *h)
{
    return h->next == h;
}

static void list_add_tail(struct vk_cmd *h, struct vk_cmd *c)
{
    c->prev = h->prev;
    c->next = h;
    h->prev->next = c;
    h->prev = c;
}

static void list_del(struct vk_cmd *c)
{
    c->prev->next = c->next;
    c->next->prev = c->prev;
    c->prev = c->next = c;
}

static unsigned dec_digits(unsigned long long n)
{
    unsigned d = 1;

    while (n >= 10) {
        n /= 10;
        d++;
    }
    return d;
}

static void record_latency(struct valkey *v, double s)
{
    struct valkey_latency *l = &v->st.latency;
    unsigned i = 0;

    if (s < 0)
        s = 0;
    while (i < VALKEY_LAT_BUCKETS - 1 && s > valkey_latency_bounds[i])
        i++;
    l->count[i]++;
    l->n++;
    l->sum += s;
}

/* The caller's callback, once; c->cb is cleared first so that nothing can
 * deliver twice, whatever the callback does. */
static void deliver(struct valkey *v, struct vk_cmd *c, enum valkey_err err,
                    const redisReply *reply)
{
    valkey_cb *cb = c->cb;

    c->cb = NULL;
    v->st.results[err]++;
    v->cb_depth++;
    cb(v, c->privdata, err, reply);
    v->cb_depth--;
}

/* ---- immediate errors, delivered on the next loop iteration -------------- */

static void on_flush(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct valkey *v = t->data;
    /* Only what was queued before: a callback that retries while DOWN must
     * not keep us in here forever. */
    uint64_t last = v->seq;

    while (!list_empty(&v->deferred)) {
        struct vk_cmd *c = v->deferred.next;

        if (c->seq > last)
            break;
        list_del(c);
        deliver(v, c, c->err, NULL);
        free(c);
    }
    if (!list_empty(&v->deferred)) {
        ev_timer_set(t, 0., 0.);
        ev_timer_start(loop, t);
    }
}

static void defer(struct valkey *v, struct vk_cmd *c, enum valkey_err err)
{
    c->err = err;
    list_add_tail(&v->deferred, c);
    if (!ev_is_active(&v->flush_timer)) {
        /* A zero timer, not ev_idle: idle watchers starve while the loop is busy. */
        ev_timer_set(&v->flush_timer, 0., 0.);
        ev_timer_start(v->loop, &v->flush_timer);
    }
}

/* ---- connection state ---------------------------------------------------- */

static double backoff_delay(struct valkey *v)
{
    double d = backoff_jitter(v->cfg.backoff_min, v->cfg.backoff_max, v->attempts, &v->rng);

    if (v->attempts < 64)
        v->attempts++;
    return d;
}

/* The connection is gone or could not be made: DOWN, and retry later. */
static void conn_down(struct valkey *v, const char *reason)
{
    bool was_up = v->state == VALKEY_UP;
    double now = ev_now(v->loop);
    double delay;
    char q[200];

    v->state = VALKEY_DOWN;
    ev_timer_stop(v->loop, &v->connect_timer);
    if (v->closing)
        return;
    if (was_up) {
        v->st.downs++;
        /* A connection that held for a while resets the backoff; one that
         * flaps (accepted, then closed at once) keeps growing it. */
        if (now - v->up_since >= v->cfg.backoff_max)
            v->attempts = 0;
    }
    delay = backoff_delay(v);
    log_quote(q, sizeof(q), reason, strlen(reason));
    if (!v->outage_logged) {
        /* One warning per outage, not one per failed attempt. */
        log_warning("valkey_down", "%saddr=%s reason=%s pending=%u retry_in=%.3f", v->logp,
                    v->ep.text, q, v->npending, delay);
        v->outage_logged = true;
        v->down_since = now;
    } else {
        log_debug("valkey_connect_failed", "%saddr=%s reason=%s retry_in=%.3f", v->logp, v->ep.text,
                  q, delay);
    }
    ev_timer_stop(v->loop, &v->retry_timer);
    ev_timer_set(&v->retry_timer, delay, 0.);
    ev_timer_start(v->loop, &v->retry_timer);
}

/* hiredis is freeing ac (or we are): forget it. Idempotent, so that every
 * path that learns of the loss may call it. */
static void conn_lost(struct valkey *v, const redisAsyncContext *ac, const char *reason)
{
    if (!ac || v->ac != ac)
        return;
    v->ac = NULL;
    conn_down(v, reason);
}

static const char *lost_reason(const struct valkey *v, const redisAsyncContext *ac)
{
    if (v->abort_reason)
        return v->abort_reason;
    return ac->c.err ? ac->c.errstr : "connection closed";
}

/* Tear the live connection down ourselves. Pending callers get err (the
 * oldest command head_err when set); safe outside hiredis and inside a reply
 * callback (hiredis then frees once the callback returns). */
static void conn_drop(struct valkey *v, enum valkey_err err, enum valkey_err head_err,
                      const char *reason)
{
    redisAsyncContext *ac = v->ac;

    if (!ac)
        return;
    v->drop_err = err;
    v->head_err = head_err;
    conn_lost(v, ac, reason); /* DOWN first: callbacks that re-issue see it */
    redisAsyncFree(ac);
}

/* What a caller gets when hiredis hands its command back without a reply. */
static enum valkey_err take_err(struct valkey *v, const redisAsyncContext *ac)
{
    enum valkey_err e = v->head_err;

    if (e != VALKEY_OK) {
        v->head_err = VALKEY_OK;
        return e;
    }
    if (v->drop_err != VALKEY_OK)
        return v->drop_err;
    return ac->c.err == REDIS_ERR_PROTOCOL ? VALKEY_ERR_PROTOCOL : VALKEY_ERR_DOWN;
}

static void conn_up(struct valkey *v)
{
    double now = ev_now(v->loop);

    ev_timer_stop(v->loop, &v->connect_timer);
    v->state = VALKEY_UP;
    v->up_since = now;
    v->st.ups++;
    log_notice("valkey_up", "%saddr=%s attempts=%u down_for=%.3f", v->logp, v->ep.text, v->tries,
               v->outage_logged ? now - v->down_since : 0.);
    v->outage_logged = false;
    v->tries = 0;
}

static void on_connect_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct valkey *v = t->data;

    /* A SIGSTOPped server completes the TCP handshake in the kernel and then
     * never answers: only the PING reply proves it alive. */
    if (v->state == VALKEY_CONNECTING)
        conn_drop(v, VALKEY_ERR_DOWN, VALKEY_OK, "connect timeout");
}

static void on_retry(struct ev_loop *loop, ev_timer *t, int revents)
{
    conn_start(t->data);
}

/* ---- hiredis event glue -------------------------------------------------- */

static void glue_add_read(void *p)
{
    struct valkey *v = p;

    if (!v->reading) {
        v->reading = true;
        ev_io_start(v->loop, &v->rio);
    }
}

static void glue_del_read(void *p)
{
    struct valkey *v = p;

    if (v->reading) {
        v->reading = false;
        ev_io_stop(v->loop, &v->rio);
    }
}

static void glue_add_write(void *p)
{
    struct valkey *v = p;

    if (!v->writing) {
        v->writing = true;
        ev_io_start(v->loop, &v->wio);
    }
}

static void glue_del_write(void *p)
{
    struct valkey *v = p;

    if (v->writing) {
        v->writing = false;
        ev_io_stop(v->loop, &v->wio);
    }
}

/* Called once per context, from hiredis' free path, after the pending
 * callbacks ran: the catch-all for losses no callback told us about (EOF on
 * an idle connection). */
static void glue_cleanup(void *p)
{
    struct valkey *v = p;
    redisAsyncContext *ac = v->io_ac;

    glue_del_read(v);
    glue_del_write(v);
    v->io_ac = NULL;
    if (ac)
        conn_lost(v, ac, lost_reason(v, ac));
}

/* Bounds a reply still arriving: hiredis would otherwise buffer whatever a
 * bulk header announces ("$99999999999") or an endless line. */
static void check_partial(struct valkey *v, redisAsyncContext *ac)
{
    const redisReader *r = ac->c.reader;
    size_t unparsed = r->len > r->pos ? r->len - r->pos : 0;
    unsigned long long need = v->reply_bytes + unparsed;

    /* Inside a bulk string, hiredis has consumed the '$' and waits at the
     * length for the whole payload; the digits seen so far are a lower bound. */
    if (r->ridx >= 0 && r->rstack[r->ridx].type == REDIS_REPLY_STRING) {
        unsigned long long n = 0;

        for (size_t i = r->pos; i < r->len && r->buf[i] >= '0' && r->buf[i] <= '9'; i++) {
            if (n > ULLONG_MAX / 20)
                break;
            n = n * 10 + (unsigned)(r->buf[i] - '0');
        }
        if (v->reply_bytes + n > need)
            need = v->reply_bytes + n;
    }
    if (need > v->hard_cap)
        conn_drop(v, VALKEY_ERR_DOWN, VALKEY_ERR_TOO_BIG, "reply too big");
}

static void on_io_read(struct ev_loop *loop, ev_io *w, int revents)
{
    struct valkey *v = w->data;
    redisAsyncContext *ac = v->io_ac;

    redisAsyncHandleRead(ac);
    if (v->io_ac == ac && v->ac == ac) /* still alive */
        check_partial(v, ac);
}

static void on_io_write(struct ev_loop *loop, ev_io *w, int revents)
{
    struct valkey *v = w->data;

    redisAsyncHandleWrite(v->io_ac);
}

static void attach(struct valkey *v, redisAsyncContext *ac)
{
    ev_io_init(&v->rio, on_io_read, ac->c.fd, EV_READ);
    v->rio.data = v;
    ev_io_init(&v->wio, on_io_write, ac->c.fd, EV_WRITE);
    v->wio.data = v;
    v->reading = v->writing = false;
    ac->ev.data = v;
    ac->ev.addRead = glue_add_read;
    ac->ev.delRead = glue_del_read;
    ac->ev.addWrite = glue_add_write;
    ac->ev.delWrite = glue_del_write;
    ac->ev.cleanup = glue_cleanup;
    v->io_ac = ac;
}

/* ---- reader hooks -------------------------------------------------------- */

static bool reader_abort(struct valkey *v, enum valkey_err err, enum valkey_err head_err,
                         const char *reason)
{
    v->drop_err = err;
    v->head_err = head_err;
    v->abort_reason = reason;
    return false;
}

/* Accounts n more RESP bytes to the reply being built; false fails the reader. */
static bool account(struct valkey *v, const redisReadTask *t, unsigned long long n)
{
    if (!t->parent && v->wire == 0)
        return reader_abort(v, VALKEY_ERR_PROTOCOL, VALKEY_OK, "unsolicited reply");
    if (n > v->hard_cap || v->reply_bytes + n > v->hard_cap)
        return reader_abort(v, VALKEY_ERR_DOWN, VALKEY_ERR_TOO_BIG, "reply too big");
    v->reply_bytes += n;
    return true;
}

static void *vk_create_string(const redisReadTask *t, char *s, size_t len)
{
    struct valkey *v = t->privdata;
    unsigned long long n = 1 + (unsigned long long)len + 2; /* +OK\r\n, -ERR x\r\n */

    if (t->type == REDIS_REPLY_STRING)
        n += dec_digits(len) + 2; /* $5\r\nhello\r\n */
    if (!account(v, t, n))
        return NULL;
    return v->orig_fns->createString(t, s, len);
}

static void *vk_create_array(const redisReadTask *t, int elements)
{
    struct valkey *v = t->privdata;

    if (elements < 0) {
        reader_abort(v, VALKEY_ERR_PROTOCOL, VALKEY_OK, "bad array length");
        return NULL;
    }
    /* Each element takes at least 3 bytes ("+\r\n"): refuse before hiredis
     * callocs room for a length that cannot fit. */
    if (!account(v, t, 1 + dec_digits((unsigned)elements) + 2 + 3ULL * (unsigned)elements))
        return NULL;
    v->reply_bytes -= 3ULL * (unsigned)elements;
    return v->orig_fns->createArray(t, elements);
}

static void *vk_create_integer(const redisReadTask *t, long long value)
{
    struct valkey *v = t->privdata;
    unsigned long long mag =
        value < 0 ? 0ULL - (unsigned long long)value : (unsigned long long)value;

    if (!account(v, t, 1 + (value < 0) + dec_digits(mag) + 2))
        return NULL;
    return v->orig_fns->createInteger(t, value);
}

static void *vk_create_nil(const redisReadTask *t)
{
    struct valkey *v = t->privdata;

    if (!account(v, t, 5)) /* $-1\r\n */
        return NULL;
    return v->orig_fns->createNil(t);
}

static void vk_free_object(void *reply)
{
    freeReplyObject(reply);
}

/* Not const: hiredis 0.14 declares the reader's pointer non-const. Never written. */
static redisReplyObjectFunctions vk_fns = {
    vk_create_string, vk_create_array, vk_create_integer, vk_create_nil, vk_free_object,
};

/* ---- replies -------------------------------------------------------------- */

static void on_hs_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct valkey *v = ac->data;
    const redisReply *reply = r;
    int step = (int)(intptr_t)privdata;
    static const char *const names[] = {"AUTH", "SELECT", "PING"};
    char q[128], reason[192];

    v->wire--;
    v->reply_bytes = 0;
    if (!reply) {
        (void)take_err(v, ac); /* consumes head_err if we were the oldest */
        conn_lost(v, ac, lost_reason(v, ac));
        return;
    }
    if (v->ac != ac)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        /* Wrong password, LOADING, bad db: retry later with backoff. */
        log_quote(q, sizeof(q), reply->str, reply->len);
        snprintf(reason, sizeof(reason), "%s refused: %s", names[step], q);
        conn_drop(v, VALKEY_ERR_DOWN, VALKEY_OK, reason);
    } else if (reply->type != REDIS_REPLY_STATUS ||
               strcmp(reply->str, step == HS_PING ? "PONG" : "OK") != 0) {
        snprintf(reason, sizeof(reason), "unexpected %s reply", names[step]);
        conn_drop(v, VALKEY_ERR_DOWN, VALKEY_OK, reason);
    } else if (step == HS_PING) {
        conn_up(v);
    }
}

static void on_cmd_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct vk_cmd *c = privdata;
    struct valkey *v = c->v;
    const redisReply *reply = r;
    size_t bytes = v->reply_bytes;
    enum valkey_err err = VALKEY_OK;

    v->wire--;
    v->wire_user--;
    v->reply_bytes = 0;
    if (!reply) {
        err = take_err(v, ac);
        conn_lost(v, ac, lost_reason(v, ac));
    }
    if (!c->cb) {
        /* Timed out or cancelled earlier: nobody waits for this one. */
        if (reply)
            v->st.late_replies++;
        free(c);
        return;
    }
    list_del(c);
    v->npending--;
    if (reply) {
        v->timeouts_in_row = 0;
        record_latency(v, now_mono() - c->t0);
        if (bytes > v->cfg.max_reply_size)
            err = VALKEY_ERR_TOO_BIG;
    }
    deliver(v, c, err, err == VALKEY_OK ? reply : NULL);
    free(c);
}

/* ---- command timeout ---------------------------------------------------- */

static void arm_cmd_timer(struct valkey *v)
{
    double after;

    ev_timer_stop(v->loop, &v->cmd_timer);
    if (list_empty(&v->pending))
        return;
    after = v->pending.next->deadline - ev_now(v->loop);
    ev_timer_set(&v->cmd_timer, after > 0 ? after : 0., 0.);
    ev_timer_start(v->loop, &v->cmd_timer);
}

static void on_cmd_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct valkey *v = t->data;
    double now = ev_now(loop);

    while (!list_empty(&v->pending)) {
        struct vk_cmd *c = v->pending.next;

        if (c->deadline > now + DEADLINE_SLACK)
            break;
        list_del(c);
        v->npending--;
        v->timeouts_in_row++;
        /* c stays allocated: hiredis still holds it and swallows the reply. */
        deliver(v, c, VALKEY_ERR_TIMEOUT, NULL);
    }
    if (v->state == VALKEY_UP && v->timeouts_in_row >= v->cfg.wedge_timeouts) {
        char reason[64];

        snprintf(reason, sizeof(reason), "wedged: %u commands timed out in a row",
                 v->timeouts_in_row);
        v->st.wedged++;
        conn_drop(v, VALKEY_ERR_DOWN, VALKEY_OK, reason);
    }
    arm_cmd_timer(v);
}

/* ---- connecting ---------------------------------------------------------- */

static bool send_hs(struct valkey *v, redisAsyncContext *ac, enum hs_step step, int argc,
                    const char **argv)
{
    if (redisAsyncCommandArgv(ac, on_hs_reply, (void *)(intptr_t)step, argc, argv, NULL) !=
        REDIS_OK)
        return false;
    v->wire++;
    return true;
}

static void conn_start(struct valkey *v)
{
    redisAsyncContext *ac;
    const char *argv[3];
    char db[16];
    int argc = 0;
    bool ok = true;

    v->st.connects++;
    if (v->st.connects > 1)
        v->st.reconnects++;
    v->tries++;
    v->state = VALKEY_CONNECTING;
    v->wire = v->wire_user = 0;
    v->reply_bytes = 0;
    v->drop_err = v->head_err = VALKEY_OK;
    v->abort_reason = NULL;
    v->timeouts_in_row = 0;

    /* Non-blocking connect; never a name lookup (numeric address only). */
    if (v->ep.is_unix)
        ac = redisAsyncConnectUnix(((const struct sockaddr_un *)&v->ep.addr)->sun_path);
    else
        ac = redisAsyncConnect(v->host, v->port);
    if (!ac || ac->err) {
        char reason[128];

        str_copy(reason, ac ? ac->c.errstr : "out of memory", sizeof(reason));
        if (ac)
            redisAsyncFree(ac); /* not attached yet: no callback, no hook */
        conn_down(v, reason);
        return;
    }
    ac->data = v;
    attach(v, ac);
    v->ac = ac;
    /* No onConnect: a failed connect reaches us as NULL replies to the
     * handshake (and hiredis frees the context right after onConnect). */
    if (!v->ep.is_unix)
        redisEnableKeepAlive(&ac->c); /* notice a vanished peer on an idle connection */
    ac->c.reader->maxbuf = READER_MAXBUF;
    v->orig_fns = ac->c.reader->fn;
    ac->c.reader->fn = &vk_fns;
    ac->c.reader->privdata = v;

    /* Pipelined; the connection counts as UP only when PING is answered. */
    if (v->password && *v->password) {
        argv[argc++] = "AUTH";
        if (v->username)
            argv[argc++] = v->username;
        argv[argc++] = v->password;
        ok = send_hs(v, ac, HS_AUTH, argc, argv);
    }
    if (ok && v->cfg.db) {
        snprintf(db, sizeof(db), "%u", v->cfg.db);
        argv[0] = "SELECT";
        argv[1] = db;
        ok = send_hs(v, ac, HS_SELECT, 2, argv);
    }
    if (ok) {
        argv[0] = "PING";
        ok = send_hs(v, ac, HS_PING, 1, argv);
    }
    if (!ok) {
        conn_drop(v, VALKEY_ERR_DOWN, VALKEY_OK, "out of memory");
        return;
    }
    ev_timer_stop(v->loop, &v->connect_timer);
    ev_timer_set(&v->connect_timer, v->cfg.connect_timeout, 0.);
    ev_timer_start(v->loop, &v->connect_timer);
}

/* ---- public API ---------------------------------------------------------- */

static bool cfg_ok(struct valkey_cfg *c, struct endpoint *ep)
{
    char err[160];

    if (!c->addr) {
        log_error("valkey_config", "reason=\"no address\"");
        return false;
    }
    if (parse_endpoint(c->addr, ep, err, sizeof(err)) < 0) {
        char q[200];

        log_error("valkey_config", "reason=%s", log_quote(q, sizeof(q), err, strlen(err)));
        return false;
    }
    if (c->connect_timeout < 0 || c->command_timeout < 0 || c->backoff_min < 0 ||
        c->backoff_max < 0 || (c->username && !c->password)) {
        log_error("valkey_config",
                  "addr=%s reason=\"negative time or username "
                  "without password\"",
                  ep->text);
        return false;
    }
    if (c->connect_timeout == 0)
        c->connect_timeout = DEF_CONNECT_TIMEOUT;
    if (c->command_timeout == 0)
        c->command_timeout = DEF_COMMAND_TIMEOUT;
    if (c->backoff_min == 0)
        c->backoff_min = DEF_BACKOFF_MIN;
    if (c->backoff_max == 0)
        c->backoff_max = DEF_BACKOFF_MAX;
    if (c->backoff_max < c->backoff_min)
        c->backoff_max = c->backoff_min;
    if (c->wedge_timeouts == 0)
        c->wedge_timeouts = DEF_WEDGE_TIMEOUTS;
    if (c->max_reply_size == 0)
        c->max_reply_size = DEF_MAX_REPLY;
    if (c->max_pending == 0)
        c->max_pending = DEF_MAX_PENDING;
    return true;
}

struct valkey *valkey_new(struct ev_loop *loop, const struct valkey_cfg *cfg)
{
    struct valkey *v = calloc(1, sizeof(*v));
    bool oom = false;

    if (!v)
        return NULL;
    v->loop = loop;
    v->cfg = *cfg;
    if (!cfg_ok(&v->cfg, &v->ep)) {
        free(v);
        errno = EINVAL;
        return NULL;
    }
    v->addr = strdup_opt(cfg->addr, &oom);
    v->username = strdup_opt(cfg->username, &oom);
    v->password = strdup_opt(cfg->password, &oom);
    if (cfg->name && *cfg->name) {
        v->logp = malloc(strlen(cfg->name) + 2);
        if (v->logp)
            sprintf(v->logp, "%s ", cfg->name);
    } else {
        v->logp = strdup("");
    }
    if (oom || !v->logp) {
        valkey_free(v);
        errno = ENOMEM;
        return NULL;
    }
    /* Our copies only: the caller's cfg may go away. */
    v->cfg.addr = v->addr;
    v->cfg.username = v->username;
    v->cfg.password = v->password;
    v->cfg.name = NULL;
    v->hard_cap = v->cfg.max_reply_size > SIZE_MAX / HARD_CAP_FACTOR
                      ? SIZE_MAX
                      : v->cfg.max_reply_size * HARD_CAP_FACTOR;
    if (!v->ep.is_unix) {
        const struct sockaddr *sa = (const struct sockaddr *)&v->ep.addr;

        if (sa->sa_family == AF_INET6) {
            const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;

            inet_ntop(AF_INET6, &s6->sin6_addr, v->host, sizeof(v->host));
            v->port = ntohs(s6->sin6_port);
        } else {
            const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;

            inet_ntop(AF_INET, &s4->sin_addr, v->host, sizeof(v->host));
            v->port = ntohs(s4->sin_port);
        }
    }
    list_init(&v->pending);
    list_init(&v->deferred);
    v->rng = ((uint64_t)(uintptr_t)v ^ (uint64_t)(now_mono() * 1e9)) | 1;
    ev_timer_init(&v->connect_timer, on_connect_timeout, 0., 0.);
    v->connect_timer.data = v;
    ev_timer_init(&v->retry_timer, on_retry, 0., 0.);
    v->retry_timer.data = v;
    ev_timer_init(&v->cmd_timer, on_cmd_timeout, 0., 0.);
    v->cmd_timer.data = v;
    ev_timer_init(&v->flush_timer, on_flush, 0., 0.);
    v->flush_timer.data = v;
    /* The loop may not have run for a while (created, then the worker thread
     * started): a stale ev_now() would expire the connect timeout at once. */
    ev_now_update(loop);
    conn_start(v);
    return v;
}

void valkey_free(struct valkey *v)
{
    if (!v)
        return;
    if (v->cb_depth > 0) {
        /* hiredis and our loops still hold v up the stack: a use after free
         * later would be far harder to find than this. */
        log_error("valkey_free_in_callback", "%saddr=%s", v->logp, v->ep.text);
        abort();
    }
    if (v->loop && v->pending.next) { /* fully constructed */
        v->closing = true;
        ev_timer_stop(v->loop, &v->connect_timer);
        ev_timer_stop(v->loop, &v->retry_timer);
        ev_timer_stop(v->loop, &v->cmd_timer);
        ev_timer_stop(v->loop, &v->flush_timer);
        /* Runs every pending callback (VALKEY_ERR_CLOSED) before it returns. */
        conn_drop(v, VALKEY_ERR_CLOSED, VALKEY_OK, "closed");
        while (!list_empty(&v->deferred)) {
            struct vk_cmd *c = v->deferred.next;

            list_del(c);
            deliver(v, c, VALKEY_ERR_CLOSED, NULL);
            free(c);
        }
    }
    if (v->password)
        explicit_bzero(v->password, strlen(v->password));
    free(v->addr);
    free(v->username);
    free(v->password);
    free(v->logp);
    free(v);
}

/* hiredis 0.14 switches the context to pub/sub or monitor mode on these
 * names, after which its reply routing no longer matches ours. */
static bool forbidden(const char *name, size_t len)
{
    static const char *const bad[] = {"subscribe", "psubscribe", "unsubscribe", "punsubscribe",
                                      "monitor"};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (len == strlen(bad[i]) && strncasecmp(name, bad[i], len) == 0)
            return true;
    return false;
}

int valkey_command(struct valkey *v, valkey_cb *cb, void *privdata, int argc, const char **argv,
                   const size_t *argvlen)
{
    struct vk_cmd *c;

    if (v->closing) {
        errno = ESHUTDOWN;
        return -1;
    }
    if (!cb || argc < 1 || !argv || !argv[0] ||
        forbidden(argv[0], argvlen ? argvlen[0] : strlen(argv[0]))) {
        errno = EINVAL;
        return -1;
    }
    c = calloc(1, sizeof(*c));
    if (!c) {
        errno = ENOMEM;
        return -1;
    }
    c->v = v;
    c->cb = cb;
    c->privdata = privdata;
    c->seq = ++v->seq;
    v->st.commands++;
    if (v->state != VALKEY_UP) {
        defer(v, c, VALKEY_ERR_DOWN);
        return 0;
    }
    if (v->wire_user >= v->cfg.max_pending) {
        defer(v, c, VALKEY_ERR_OVERLOAD);
        return 0;
    }
    c->t0 = now_mono();
    c->deadline = ev_now(v->loop) + v->cfg.command_timeout;
    if (redisAsyncCommandArgv(v->ac, on_cmd_reply, c, argc, argv, argvlen) != REDIS_OK) {
        /* The context is going away (or hiredis is out of memory). */
        defer(v, c, VALKEY_ERR_DOWN);
        return 0;
    }
    v->wire++;
    v->wire_user++;
    list_add_tail(&v->pending, c);
    v->npending++;
    if (!ev_is_active(&v->cmd_timer))
        arm_cmd_timer(v);
    return 0;
}

unsigned valkey_cancel(struct valkey *v, const void *privdata)
{
    struct vk_cmd *c, *next;
    unsigned n = 0;

    for (c = v->pending.next; c != &v->pending; c = next) {
        next = c->next;
        if (c->privdata != privdata)
            continue;
        /* hiredis still holds it: it becomes a late record, freed on reply. */
        list_del(c);
        v->npending--;
        c->cb = NULL;
        n++;
    }
    for (c = v->deferred.next; c != &v->deferred; c = next) {
        next = c->next;
        if (c->privdata != privdata)
            continue;
        list_del(c);
        free(c);
        n++;
    }
    v->st.cancelled += n;
    return n;
}

enum valkey_state valkey_state(const struct valkey *v)
{
    return v->state;
}

const struct valkey_stats *valkey_stats(const struct valkey *v)
{
    return &v->st;
}

const char *valkey_state_name(enum valkey_state s)
{
    switch (s) {
    case VALKEY_DOWN:
        return "down";
    case VALKEY_CONNECTING:
        return "connecting";
    case VALKEY_UP:
        return "up";
    }
    return "?";
}

const char *valkey_err_name(enum valkey_err e)
{
    static const char *const names[] = {"ok",       "down",     "timeout", "too_big",
                                        "protocol", "overload", "closed"};

    return (unsigned)e < sizeof(names) / sizeof(names[0]) ? names[e] : "?";
}
