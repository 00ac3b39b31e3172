/* Unit tests of the libspoe connection engine (spoa/spoe_conn.c).
 *
 * Each test plays HAProxy on one end of a socketpair; the other end, made
 * non-blocking, belongs to a spoe_conn on a private libev loop. The test
 * writes frames built with the codec's encoder, drives the loop with
 * ev_run(EVRUN_NOWAIT) a bounded number of times and parses what the agent
 * answers. The engine only ever does synchronous send()/recv() inside its
 * callbacks, so after ev_run() returns its bytes are already readable: no
 * sleep is needed anywhere (the hello-timeout test lets ev_run block on the
 * timer itself). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <ev.h>

#include "spoe.h"

#define SPIN_MAX 200        /* loop iterations before we call it a hang */
#define MAX_NOTES 32        /* NOTIFYs a test may receive */
#define NOTE_PAYLOAD 4096   /* bytes of each NOTIFY payload we keep */
#define MAX_EVENTS 32       /* engine events a test may record */
#define RX_CAP (1u << 17)   /* test-side receive buffer */
#define RX_FRAME_MAX 20000u /* largest agent frame a test expects */
#define ENGINE_ID "3b6fe4a2-7c1d-4d0e-9f3a-5a1b2c3d4e5f"

/* ---- test context -------------------------------------------------------- */

struct note {
    struct spoe_req *req; /* NULL once acked */
    uint64_t sid;
    uint64_t fid;
    uint8_t payload[NOTE_PAYLOAD];
    size_t len;
    bool truncated;
    size_t max_actions;
};

struct evrec {
    enum spoe_event_kind kind;
    enum spoe_status status;
    char msg[128];
    size_t msg_len;
    bool has_msg;
    /* SPOE_EV_HELLO only */
    uint32_t hello_mfs;
    char hello_caps[64];
    char hello_engine[64];
    bool hello_hc;
};

struct tctx {
    struct ev_loop *loop;
    int fd;       /* test (HAProxy) side, blocking for writes */
    int agent_fd; /* handed to the engine, which closes it */
    struct spoe_conn *conn;
    struct spoe_conn_cfg cfg;
    uint32_t frame_limit; /* largest frame the agent may send us */

    uint8_t rx[RX_CAP];
    size_t rxlen;
    bool eof;

    struct note notes[MAX_NOTES];
    unsigned nnotes;
    bool notes_overflow;
    bool auto_ack; /* ack from on_notify with a set-var carrying the frame id */
    int auto_ack_ret;

    bool check_args; /* verify the test_byte_by_byte message in on_notify */
    bool args_checked;
    char args_err[256];

    struct evrec events[MAX_EVENTS];
    unsigned nevents;
    bool closed;
    unsigned freed;
};

/* Contexts still alive, freed by the teardown when a test fails midway so that
 * ASan reports the failure, not leaks. */
static struct tctx *live_ctx[4];

static void live_add(struct tctx *t)
{
    for (size_t i = 0; i < sizeof(live_ctx) / sizeof(live_ctx[0]); i++) {
        if (!live_ctx[i]) {
            live_ctx[i] = t;
            return;
        }
    }
    fail_msg("too many live contexts");
}

static void live_del(struct tctx *t)
{
    for (size_t i = 0; i < sizeof(live_ctx) / sizeof(live_ctx[0]); i++)
        if (live_ctx[i] == t)
            live_ctx[i] = NULL;
}

static const char *ev_name(enum spoe_event_kind k)
{
    switch (k) {
    case SPOE_EV_HELLO:
        return "HELLO";
    case SPOE_EV_DISCONNECT:
        return "DISCONNECT";
    case SPOE_EV_ERROR:
        return "ERROR";
    case SPOE_EV_CLOSED:
        return "CLOSED";
    case SPOE_EV_ABORTED:
        return "ABORTED";
    case SPOE_EV_ACK_TOO_BIG:
        return "ACK_TOO_BIG";
    }
    return "?";
}

static void copy_cstr(char *dst, size_t cap, const char *s, size_t len)
{
    if (len >= cap)
        len = cap - 1;
    if (len)
        memcpy(dst, s, len);
    dst[len] = '\0';
}

/* ---- callbacks ----------------------------------------------------------- */

static bool data_eq(const struct spoe_data *a, const struct spoe_data *b)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case SPOE_NULL:
        return true;
    case SPOE_BOOL:
        return a->u.b == b->u.b;
    case SPOE_INT32:
        return a->u.i32 == b->u.i32;
    case SPOE_UINT32:
        return a->u.u32 == b->u.u32;
    case SPOE_INT64:
        return a->u.i64 == b->u.i64;
    case SPOE_UINT64:
        return a->u.u64 == b->u.u64;
    case SPOE_IPV4:
        return memcmp(&a->u.v4, &b->u.v4, 4) == 0;
    case SPOE_IPV6:
        return memcmp(&a->u.v6, &b->u.v6, 16) == 0;
    case SPOE_STR:
    case SPOE_BIN:
        return a->u.s.len == b->u.s.len &&
               (a->u.s.len == 0 || memcmp(a->u.s.ptr, b->u.s.ptr, a->u.s.len) == 0);
    }
    return false;
}

/* The message list of test_byte_by_byte: every type, an empty argument name,
 * and a second message without arguments. */
struct exp_arg {
    const char *name;
    struct spoe_data val;
};

static const uint8_t bb_bin[] = {0x00, 0x01, 0x02, 0xff};
static struct exp_arg bb_args[9];
static size_t bb_nargs;

static void bb_init(void)
{
    struct spoe_data d;
    size_t n = 0;

    bb_args[n++] = (struct exp_arg){"method", spoe_str("GET", 3)};
    bb_args[n++] = (struct exp_arg){"path", spoe_str("/fr/products/chair?x=1", 22)};
    d = (struct spoe_data){.type = SPOE_IPV4};
    assert_int_equal(inet_pton(AF_INET, "192.0.2.7", &d.u.v4), 1);
    bb_args[n++] = (struct exp_arg){"src", d};
    bb_args[n++] = (struct exp_arg){"n", spoe_sint(-5)};
    d = (struct spoe_data){.type = SPOE_UINT64};
    d.u.u64 = (UINT64_C(1) << 40) + 3;
    bb_args[n++] = (struct exp_arg){"big", d};
    bb_args[n++] = (struct exp_arg){"", spoe_bool(true)};
    d = (struct spoe_data){.type = SPOE_IPV6};
    assert_int_equal(inet_pton(AF_INET6, "2001:db8::1", &d.u.v6), 1);
    bb_args[n++] = (struct exp_arg){"v6", d};
    bb_args[n++] = (struct exp_arg){"bin", spoe_bin(bb_bin, sizeof(bb_bin))};
    bb_args[n++] = (struct exp_arg){"nil", (struct spoe_data){.type = SPOE_NULL}};
    bb_nargs = n;
}

static void bb_payload(struct spoe_wbuf *w)
{
    uint8_t nargs = (uint8_t)bb_nargs, zero = 0;

    spoe_put_str(w, "check-request", 13);
    spoe_put_bytes(w, &nargs, 1);
    for (size_t i = 0; i < bb_nargs; i++)
        spoe_put_kv(w, bb_args[i].name, &bb_args[i].val);
    spoe_put_str(w, "second", 6);
    spoe_put_bytes(w, &zero, 1);
}

/* Walks the messages as the application would and records the first mismatch
 * (cmocka asserts are not used under ev_run). */
static void check_bb_args(struct tctx *t, struct spoe_cur msgs)
{
    struct spoe_msg m;
    const char *n;
    size_t nl;
    struct spoe_data d;
    int r;

    t->args_checked = true;
    if (spoe_msg_next(&msgs, &m) != 1 || m.name_len != 13 ||
        memcmp(m.name, "check-request", 13) != 0 || m.nargs != bb_nargs) {
        snprintf(t->args_err, sizeof(t->args_err), "first message wrong");
        return;
    }
    for (size_t i = 0; i < bb_nargs; i++) {
        if (spoe_arg_next(&m, &n, &nl, &d) != 1) {
            snprintf(t->args_err, sizeof(t->args_err), "argument %zu missing", i);
            return;
        }
        if (nl != strlen(bb_args[i].name) || (nl && memcmp(n, bb_args[i].name, nl) != 0)) {
            snprintf(t->args_err, sizeof(t->args_err), "argument %zu: name '%.*s'", i, (int)nl, n);
            return;
        }
        if (!data_eq(&d, &bb_args[i].val)) {
            snprintf(t->args_err, sizeof(t->args_err), "argument %zu (%s): wrong value", i,
                     bb_args[i].name);
            return;
        }
    }
    if (spoe_arg_next(&m, &n, &nl, &d) != 0) {
        snprintf(t->args_err, sizeof(t->args_err), "extra argument");
        return;
    }
    if (spoe_msg_next(&msgs, &m) != 1 || m.name_len != 6 || memcmp(m.name, "second", 6) != 0 ||
        m.nargs != 0) {
        snprintf(t->args_err, sizeof(t->args_err), "second message wrong");
        return;
    }
    if ((r = spoe_msg_next(&msgs, &m)) != 0)
        snprintf(t->args_err, sizeof(t->args_err), "after the last message: %d", r);
}

static void on_notify(struct spoe_req *req, struct spoe_cur msgs, void *udata)
{
    struct tctx *t = udata;
    struct note *n;
    size_t len = (size_t)(msgs.end - msgs.p);

    if (t->nnotes >= MAX_NOTES) {
        t->notes_overflow = true;
        spoe_req_ack(req, NULL, 0);
        return;
    }
    n = &t->notes[t->nnotes++];
    n->req = req;
    n->sid = spoe_req_stream_id(req);
    n->fid = spoe_req_frame_id(req);
    n->max_actions = spoe_req_max_actions(req);
    n->truncated = len > sizeof(n->payload);
    n->len = n->truncated ? sizeof(n->payload) : len;
    if (n->len)
        memcpy(n->payload, msgs.p, n->len);
    if (t->check_args)
        check_bb_args(t, msgs);
    if (t->auto_ack) {
        uint8_t act[64];
        struct spoe_wbuf w;
        struct spoe_data d = spoe_uint((uint32_t)n->fid);

        spoe_wbuf_init(&w, act, sizeof(act));
        spoe_put_set_var(&w, SPOE_SCOPE_TXN, "fid", 3, &d);
        t->auto_ack_ret = spoe_req_ack(req, act, w.len);
        n->req = NULL;
    }
}

static void on_event(struct spoe_conn *conn, const struct spoe_event *ev, void *udata)
{
    struct tctx *t = udata;
    struct evrec *e;

    if (ev->kind == SPOE_EV_CLOSED)
        t->closed = true;
    if (t->nevents >= MAX_EVENTS)
        return;
    e = &t->events[t->nevents++];
    memset(e, 0, sizeof(*e));
    e->kind = ev->kind;
    e->status = ev->status;
    if (ev->message) {
        e->has_msg = true;
        e->msg_len = ev->message_len;
        copy_cstr(e->msg, sizeof(e->msg), ev->message, ev->message_len);
    }
    if (ev->kind == SPOE_EV_HELLO && ev->hello) {
        e->hello_mfs = ev->hello->max_frame_size;
        e->hello_hc = ev->hello->healthcheck;
        copy_cstr(e->hello_caps, sizeof(e->hello_caps), ev->hello->caps ? ev->hello->caps : "",
                  ev->hello->caps_len);
        copy_cstr(e->hello_engine, sizeof(e->hello_engine),
                  ev->hello->engine_id ? ev->hello->engine_id : "", ev->hello->engine_id_len);
    }
}

static void on_free(struct spoe_conn *conn, void *udata)
{
    struct tctx *t = udata;

    t->freed++;
    t->conn = NULL;
}

/* ---- context life -------------------------------------------------------- */

/* Allocates a context with a default configuration; the test may change
 * t->cfg before ctx_start(). */
static struct tctx *ctx_new(void)
{
    struct tctx *t = calloc(1, sizeof(*t));

    assert_non_null(t);
    t->fd = t->agent_fd = -1;
    t->cfg.max_frame_size = 4096;
    t->cfg.max_reassembly = 65536;
    t->cfg.max_inflight = 64;
    t->cfg.hello_timeout = 5.0;
    t->cfg.idle_timeout = 0;
    t->cfg.pipelining = true;
    t->cfg.fragmentation = true;
    t->cfg.on_notify = on_notify;
    t->cfg.on_event = on_event;
    t->cfg.on_free = on_free;
    t->cfg.udata = t;
    live_add(t);
    return t;
}

static void ctx_start(struct tctx *t)
{
    int sv[2];

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    t->fd = sv[0];
    t->agent_fd = sv[1];
    assert_int_equal(fcntl(sv[1], F_SETFL, fcntl(sv[1], F_GETFL) | O_NONBLOCK), 0);
    t->loop = ev_loop_new(0);
    assert_non_null(t->loop);
    t->frame_limit = t->cfg.max_frame_size;
    t->conn = spoe_conn_new(t->loop, sv[1], &t->cfg);
    assert_non_null(t->conn);
}

/* Releases everything: closes the connection if still open, completes the
 * requests the test kept (they must report -2 then), and checks that on_free
 * ran exactly once. */
static void ctx_release(struct tctx *t, bool check)
{
    if (t->conn && !t->closed)
        spoe_conn_close(t->conn);
    for (unsigned i = 0; i < t->nnotes; i++) {
        if (t->notes[i].req) {
            int r = spoe_req_ack(t->notes[i].req, NULL, 0);

            t->notes[i].req = NULL;
            if (check)
                assert_int_equal(r, -2);
        }
    }
    if (check)
        assert_int_equal(t->freed, 1);
    if (t->loop)
        ev_loop_destroy(t->loop);
    if (t->fd >= 0)
        close(t->fd);
    live_del(t);
    free(t);
}

static void ctx_free(struct tctx *t)
{
    ctx_release(t, true);
}

static int teardown_live(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(live_ctx) / sizeof(live_ctx[0]); i++)
        if (live_ctx[i])
            ctx_release(live_ctx[i], false);
    return 0;
}

/* ---- I/O helpers --------------------------------------------------------- */

static void t_send(struct tctx *t, const void *buf, size_t len)
{
    const uint8_t *p = buf;

    while (len > 0) {
        ssize_t n = send(t->fd, p, len, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n > 0);
        p += n;
        len -= (size_t)n;
    }
}

/* One loop iteration, then whatever the agent wrote. */
static void pump(struct tctx *t)
{
    ssize_t n;

    ev_run(t->loop, EVRUN_NOWAIT);
    if (t->eof || t->fd < 0)
        return;
    assert_true(t->rxlen < sizeof(t->rx));
    n = recv(t->fd, t->rx + t->rxlen, sizeof(t->rx) - t->rxlen, MSG_DONTWAIT);
    if (n > 0)
        t->rxlen += (size_t)n;
    else if (n == 0 || errno == ECONNRESET) /* the agent closed (with unread data: reset) */
        t->eof = true;
    else
        assert_true(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
}

static void spin(struct tctx *t, int n)
{
    for (int i = 0; i < n; i++)
        pump(t);
}

struct rxframe {
    uint8_t raw[RX_FRAME_MAX];
    size_t len;
    struct spoe_frame f;
};

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static bool pop_frame(struct tctx *t, struct rxframe *fr)
{
    uint32_t flen;

    if (t->rxlen < 4)
        return false;
    flen = be32(t->rx);
    if (flen > t->frame_limit)
        fail_msg("agent sent a %u-byte frame, limit %u", flen, t->frame_limit);
    assert_true(flen <= sizeof(fr->raw));
    if (t->rxlen - 4 < flen)
        return false;
    memcpy(fr->raw, t->rx + 4, flen);
    fr->len = flen;
    memmove(t->rx, t->rx + 4 + flen, t->rxlen - 4 - flen);
    t->rxlen -= 4 + flen;
    assert_int_equal(spoe_frame_parse(fr->raw, flen, &fr->f), SPOE_ST_NONE);
    return true;
}

/* 1 with a frame, 0 when the agent closed first, -1 when nothing came. */
static int next_frame(struct tctx *t, struct rxframe *fr)
{
    for (int i = 0; i < SPIN_MAX; i++) {
        if (pop_frame(t, fr))
            return 1;
        if (t->eof)
            return 0;
        pump(t);
    }
    return -1;
}

static void expect_frame(struct tctx *t, struct rxframe *fr, uint8_t type)
{
    int r = next_frame(t, fr);

    if (r != 1)
        fail_msg("expected a frame of type %u, got %s", type, r == 0 ? "close" : "nothing");
    if (fr->f.type != type)
        fail_msg("expected a frame of type %u, got type %u", type, fr->f.type);
}

/* The agent closes without sending anything more. */
static void expect_eof(struct tctx *t)
{
    struct rxframe fr;
    int r = next_frame(t, &fr);

    if (r == 1)
        fail_msg("expected close, got a frame of type %u", fr.f.type);
    if (r < 0)
        fail_msg("expected close, the connection stayed open");
    assert_int_equal(t->rxlen, 0); /* no partial frame either */
    spin(t, 3);
    assert_true(t->closed);
}

/* Nothing comes and the connection stays open. */
static void expect_silence(struct tctx *t)
{
    spin(t, 20);
    assert_int_equal(t->rxlen, 0);
    assert_false(t->eof);
    assert_false(t->closed);
}

static void run_until_notes(struct tctx *t, unsigned n)
{
    for (int i = 0; i < SPIN_MAX && t->nnotes < n; i++)
        pump(t);
    assert_int_equal(t->nnotes, n);
}

static unsigned count_events(const struct tctx *t, enum spoe_event_kind k)
{
    unsigned c = 0;

    for (unsigned i = 0; i < t->nevents; i++)
        c += t->events[i].kind == k;
    return c;
}

static const struct evrec *find_event(const struct tctx *t, enum spoe_event_kind k)
{
    for (unsigned i = 0; i < t->nevents; i++)
        if (t->events[i].kind == k)
            return &t->events[i];
    fail_msg("no %s event", ev_name(k));
    return NULL;
}

/* ---- frame builders (test side) ------------------------------------------ */

static void add_frame(struct spoe_wbuf *w, uint8_t type, uint32_t flags, uint64_t sid, uint64_t fid,
                      const void *payload, size_t plen)
{
    size_t start = w->len;

    spoe_frame_begin(w, type, flags, sid, fid);
    spoe_put_bytes(w, payload, plen);
    assert_true(spoe_frame_end(w, start, SPOE_FRAME_MAX) > 0);
}

struct hello_opts {
    const char *versions; /* NULL: item left out */
    long mfs;             /* < 0: item left out */
    const char *caps;     /* NULL: item left out */
    const char *engine;   /* NULL: item left out */
    bool healthcheck;
};

/* What HAProxy 2.6 sends. */
static const struct hello_opts haproxy26 = {"2.0", 16380, "pipelining,async", ENGINE_ID, false};

static void add_hello(struct spoe_wbuf *w, const struct hello_opts *o)
{
    size_t start = w->len;
    struct spoe_data d;

    spoe_frame_begin(w, SPOE_FRM_HAPROXY_HELLO, SPOE_FL_FIN, 0, 0);
    if (o->versions) {
        d = spoe_str(o->versions, strlen(o->versions));
        spoe_put_kv(w, "supported-versions", &d);
    }
    if (o->mfs >= 0) {
        d = spoe_uint((uint32_t)o->mfs);
        spoe_put_kv(w, "max-frame-size", &d);
    }
    if (o->caps) {
        d = spoe_str(o->caps, strlen(o->caps));
        spoe_put_kv(w, "capabilities", &d);
    }
    if (o->healthcheck) {
        d = spoe_bool(true);
        spoe_put_kv(w, "healthcheck", &d);
    }
    if (o->engine) {
        d = spoe_str(o->engine, strlen(o->engine));
        spoe_put_kv(w, "engine-id", &d);
    }
    assert_true(spoe_frame_end(w, start, SPOE_FRAME_MAX) > 0);
}

static void send_hello(struct tctx *t, const struct hello_opts *o)
{
    uint8_t buf[512];
    struct spoe_wbuf w;

    spoe_wbuf_init(&w, buf, sizeof(buf));
    add_hello(&w, o);
    t_send(t, buf, w.len);
}

/* A NOTIFY payload: message "check" with "i" = UINT32 i and a path string. */
static size_t simple_payload(uint8_t *buf, size_t cap, unsigned i)
{
    struct spoe_wbuf w;
    struct spoe_data d;
    char path[32];
    uint8_t nargs = 2;

    spoe_wbuf_init(&w, buf, cap);
    spoe_put_str(&w, "check", 5);
    spoe_put_bytes(&w, &nargs, 1);
    d = spoe_uint(i);
    spoe_put_kv(&w, "i", &d);
    snprintf(path, sizeof(path), "/page/%u", i);
    d = spoe_str(path, strlen(path));
    spoe_put_kv(&w, "path", &d);
    assert_false(w.overflow);
    return w.len;
}

/* A valid NOTIFY payload of exactly `size` bytes: one message with a binary
 * argument. */
static void sized_payload(uint8_t *buf, size_t cap, size_t size)
{
    static uint8_t fill[RX_FRAME_MAX];
    uint8_t nargs = 1;

    memset(fill, 'x', sizeof(fill));
    for (size_t bl = 0; bl < size; bl++) {
        struct spoe_wbuf w;
        struct spoe_data d = spoe_bin(fill, bl);

        spoe_wbuf_init(&w, buf, cap);
        spoe_put_str(&w, "m", 1);
        spoe_put_bytes(&w, &nargs, 1);
        spoe_put_kv(&w, "b", &d);
        if (!w.overflow && w.len == size)
            return;
    }
    fail_msg("no payload of %zu bytes", size);
}

static void send_notify(struct tctx *t, uint64_t sid, uint64_t fid, unsigned i)
{
    uint8_t p[128], buf[256];
    struct spoe_wbuf w;
    size_t plen = simple_payload(p, sizeof(p), i);

    spoe_wbuf_init(&w, buf, sizeof(buf));
    add_frame(&w, SPOE_FRM_NOTIFY, SPOE_FL_FIN, sid, fid, p, plen);
    t_send(t, buf, w.len);
}

/* ---- answer decoders ------------------------------------------------------ */

struct agent_hello {
    bool has_version, has_mfs, has_caps;
    char version[16];
    uint32_t mfs;
    char caps[128];
};

static void decode_agent_hello(const struct rxframe *fr, struct agent_hello *h)
{
    struct spoe_cur c = {fr->f.payload, fr->f.payload + fr->f.len};
    const char *n;
    size_t nl;
    struct spoe_data d;
    int r;

    memset(h, 0, sizeof(*h));
    assert_int_equal(fr->f.type, SPOE_FRM_AGENT_HELLO);
    assert_int_equal(fr->f.flags, SPOE_FL_FIN);
    assert_int_equal(fr->f.stream_id, 0);
    assert_int_equal(fr->f.frame_id, 0);
    while ((r = spoe_kv_next(&c, &n, &nl, &d)) == 1) {
        if (nl == 7 && memcmp(n, "version", 7) == 0) {
            assert_int_equal(d.type, SPOE_STR);
            assert_false(h->has_version);
            h->has_version = true;
            copy_cstr(h->version, sizeof(h->version), d.u.s.ptr, d.u.s.len);
        } else if (nl == 14 && memcmp(n, "max-frame-size", 14) == 0) {
            assert_int_equal(d.type, SPOE_UINT32);
            assert_false(h->has_mfs);
            h->has_mfs = true;
            h->mfs = d.u.u32;
        } else if (nl == 12 && memcmp(n, "capabilities", 12) == 0) {
            assert_int_equal(d.type, SPOE_STR);
            assert_false(h->has_caps);
            h->has_caps = true;
            copy_cstr(h->caps, sizeof(h->caps), d.u.s.ptr, d.u.s.len);
        }
    }
    assert_int_equal(r, 0);
    assert_true(h->has_version);
    assert_true(h->has_mfs);
    assert_true(h->has_caps);
}

/* Handshake as HAProxy 2.6 with the given max-frame-size; returns the size the
 * agent answered and makes it the limit of the agent's frames. */
static uint32_t do_hello_mfs(struct tctx *t, uint32_t mfs)
{
    struct hello_opts o = haproxy26;
    struct rxframe fr;
    struct agent_hello h;

    o.mfs = mfs;
    send_hello(t, &o);
    expect_frame(t, &fr, SPOE_FRM_AGENT_HELLO);
    decode_agent_hello(&fr, &h);
    assert_string_equal(h.version, "2.0");
    t->frame_limit = h.mfs;
    return h.mfs;
}

static void do_hello(struct tctx *t)
{
    assert_int_equal(do_hello_mfs(t, 16380), t->cfg.max_frame_size);
}

/* Checks an AGENT-DISCONNECT: FIN, zero ids, a UINT32 status-code equal to st
 * and a non-empty STRING message. */
static void check_disconnect(const struct rxframe *fr, enum spoe_status st)
{
    struct spoe_cur c = {fr->f.payload, fr->f.payload + fr->f.len};
    const char *n;
    size_t nl;
    struct spoe_data d;
    bool has_st = false, has_msg = false;
    int r;

    if (fr->f.type != SPOE_FRM_AGENT_DISCONNECT)
        fail_msg("expected AGENT-DISCONNECT %d, got frame type %u", (int)st, fr->f.type);
    assert_int_equal(fr->f.flags, SPOE_FL_FIN);
    assert_int_equal(fr->f.stream_id, 0);
    assert_int_equal(fr->f.frame_id, 0);
    while ((r = spoe_kv_next(&c, &n, &nl, &d)) == 1) {
        if (nl == 11 && memcmp(n, "status-code", 11) == 0) {
            assert_int_equal(d.type, SPOE_UINT32);
            if (d.u.u32 != (uint32_t)st)
                fail_msg("DISCONNECT status-code %u, expected %d", d.u.u32, (int)st);
            has_st = true;
        } else if (nl == 7 && memcmp(n, "message", 7) == 0) {
            assert_int_equal(d.type, SPOE_STR);
            assert_true(d.u.s.len > 0);
            has_msg = true;
        }
    }
    assert_int_equal(r, 0);
    assert_true(has_st);
    assert_true(has_msg);
}

static void expect_disconnect(struct tctx *t, enum spoe_status st)
{
    struct rxframe fr;
    int r = next_frame(t, &fr);

    if (r != 1)
        fail_msg("expected AGENT-DISCONNECT %d, got %s", (int)st, r == 0 ? "close" : "nothing");
    check_disconnect(&fr, st);
}

/* A protocol error: AGENT-DISCONNECT st, close, one ERROR event with st, no
 * request delivered. */
static void expect_error(struct tctx *t, enum spoe_status st)
{
    const struct evrec *e;

    expect_disconnect(t, st);
    expect_eof(t);
    assert_int_equal(count_events(t, SPOE_EV_ERROR), 1);
    e = find_event(t, SPOE_EV_ERROR);
    assert_int_equal(e->status, st);
    assert_true(e->has_msg && e->msg_len > 0);
    assert_int_equal(t->nnotes, 0);
    assert_int_equal(t->freed, 1);
}

/* One ACTION of an ACK payload. */
struct action {
    uint8_t type, nargs, scope;
    const char *name;
    size_t nlen;
    struct spoe_data val;
};

/* 1 with an action, 0 at the end, -1 on malformed bytes. */
static int action_next(struct spoe_cur *c, struct action *a)
{
    struct spoe_cur t = *c;

    if (t.p >= t.end)
        return 0;
    if (t.end - t.p < 3)
        return -1;
    memset(a, 0, sizeof(*a));
    a->type = t.p[0];
    a->nargs = t.p[1];
    a->scope = t.p[2];
    t.p += 3;
    if (a->scope > SPOE_SCOPE_RES || spoe_get_str(&t, &a->name, &a->nlen) < 0)
        return -1;
    if (a->type == SPOE_ACT_SET_VAR) {
        if (a->nargs != 3 || spoe_get_data(&t, &a->val) < 0)
            return -1;
    } else if (a->type == SPOE_ACT_UNSET_VAR) {
        if (a->nargs != 2)
            return -1;
    } else {
        return -1;
    }
    *c = t;
    return 1;
}

static void assert_action(struct spoe_cur *c, uint8_t type, enum spoe_scope scope, const char *name,
                          const struct spoe_data *val)
{
    struct action a;

    assert_int_equal(action_next(c, &a), 1);
    assert_int_equal(a.type, type);
    assert_int_equal(a.scope, scope);
    assert_int_equal(a.nlen, strlen(name));
    assert_memory_equal(a.name, name, a.nlen);
    if (val)
        assert_true(data_eq(&a.val, val));
}

static void expect_ack(struct tctx *t, uint64_t sid, uint64_t fid, struct rxframe *fr)
{
    expect_frame(t, fr, SPOE_FRM_ACK);
    assert_int_equal(fr->f.flags, SPOE_FL_FIN);
    if (fr->f.stream_id != sid || fr->f.frame_id != fid)
        fail_msg("ACK for %llu/%llu, expected %llu/%llu", (unsigned long long)fr->f.stream_id,
                 (unsigned long long)fr->f.frame_id, (unsigned long long)sid,
                 (unsigned long long)fid);
}

/* The ACK auto_ack sends: one set-var txn.fid = UINT32 fid. */
static void expect_auto_ack(struct tctx *t, uint64_t sid, uint64_t fid)
{
    struct rxframe fr;
    struct spoe_cur c;
    struct spoe_data d = spoe_uint((uint32_t)fid);

    expect_ack(t, sid, fid, &fr);
    c = (struct spoe_cur){fr.f.payload, fr.f.payload + fr.f.len};
    assert_action(&c, SPOE_ACT_SET_VAR, SPOE_SCOPE_TXN, "fid", &d);
    assert_int_equal(c.p, c.end);
}

/* Acks note i with the given actions; the note forgets its request first so
 * that a failed assertion cannot lead the teardown to ack it twice. */
static int ack_with(struct tctx *t, unsigned i, const uint8_t *act, size_t len)
{
    struct spoe_req *req;

    assert_true(i < t->nnotes);
    req = t->notes[i].req;
    assert_non_null(req);
    t->notes[i].req = NULL;
    return spoe_req_ack(req, act, len);
}

static int ack_empty(struct tctx *t, unsigned i)
{
    return ack_with(t, i, NULL, 0);
}

/* ---- 1. HELLO --------------------------------------------------------------- */

static void test_hello_negotiation(void **state)
{
    struct tctx *t = ctx_new();
    struct rxframe fr;
    struct agent_hello h;
    const struct evrec *e;

    (void)state;
    ctx_start(t);
    send_hello(t, &haproxy26);
    expect_frame(t, &fr, SPOE_FRM_AGENT_HELLO);
    decode_agent_hello(&fr, &h);
    assert_string_equal(h.version, "2.0");
    assert_int_equal(h.mfs, 4096); /* min(16380, ours) */
    assert_true(spoe_list_has(h.caps, strlen(h.caps), "pipelining"));
    assert_true(spoe_list_has(h.caps, strlen(h.caps), "fragmentation"));
    assert_false(spoe_list_has(h.caps, strlen(h.caps), "async"));
    assert_int_equal(spoe_conn_frame_size(t->conn), 4096);
    assert_string_equal(spoe_conn_engine_id(t->conn), ENGINE_ID);

    assert_int_equal(count_events(t, SPOE_EV_HELLO), 1);
    e = find_event(t, SPOE_EV_HELLO);
    assert_int_equal(e->status, SPOE_ST_NONE);
    assert_int_equal(e->hello_mfs, 16380);
    assert_string_equal(e->hello_caps, "pipelining,async");
    assert_string_equal(e->hello_engine, ENGINE_ID);
    assert_false(e->hello_hc);
    expect_silence(t);
    ctx_free(t);
}

static void test_hello_smaller_peer_size(void **state)
{
    struct tctx *t = ctx_new();
    struct hello_opts o = haproxy26;
    struct rxframe fr;
    struct agent_hello h;

    (void)state;
    ctx_start(t);
    o.mfs = 1024;
    send_hello(t, &o);
    expect_frame(t, &fr, SPOE_FRM_AGENT_HELLO);
    decode_agent_hello(&fr, &h);
    assert_int_equal(h.mfs, 1024);
    assert_int_equal(spoe_conn_frame_size(t->conn), 1024);
    t->frame_limit = 1024;
    /* The connection works at that size. */
    t->auto_ack = true;
    send_notify(t, 1, 1, 1);
    expect_auto_ack(t, 1, 1);
    assert_int_equal(t->auto_ack_ret, 0);
    expect_silence(t);
    ctx_free(t);
}

static void test_hello_caps_disabled(void **state)
{
    struct tctx *t = ctx_new();
    struct rxframe fr;
    struct agent_hello h;

    (void)state;
    t->cfg.pipelining = false;
    t->cfg.fragmentation = false;
    ctx_start(t);
    send_hello(t, &haproxy26);
    expect_frame(t, &fr, SPOE_FRM_AGENT_HELLO);
    decode_agent_hello(&fr, &h);
    assert_string_equal(h.version, "2.0");
    assert_false(spoe_list_has(h.caps, strlen(h.caps), "pipelining"));
    assert_false(spoe_list_has(h.caps, strlen(h.caps), "fragmentation"));
    ctx_free(t);
}

/* ---- 2. health check -------------------------------------------------------- */

static void test_healthcheck(void **state)
{
    struct tctx *t = ctx_new();
    struct hello_opts o = {"2.0", 16380, "", NULL, true};
    struct rxframe fr;
    struct agent_hello h;
    const struct evrec *e;

    (void)state;
    ctx_start(t);
    send_hello(t, &o);
    expect_frame(t, &fr, SPOE_FRM_AGENT_HELLO);
    decode_agent_hello(&fr, &h);
    assert_string_equal(h.version, "2.0");
    assert_int_equal(h.mfs, 4096);
    expect_eof(t);
    e = find_event(t, SPOE_EV_HELLO);
    assert_true(e->hello_hc);
    assert_int_equal(count_events(t, SPOE_EV_ERROR), 0);
    assert_int_equal(t->freed, 1);
    ctx_free(t);
}

/* ---- 3. pipelining ------------------------------------------------------------ */

static void test_pipelining_reverse_acks(void **state)
{
    enum { N = 20 };
    struct tctx *t = ctx_new();
    uint8_t buf[N * 64], p[128];
    struct spoe_wbuf w;

    (void)state;
    ctx_start(t);
    do_hello(t);
    spoe_wbuf_init(&w, buf, sizeof(buf));
    for (unsigned i = 0; i < N; i++) {
        size_t plen = simple_payload(p, sizeof(p), i);

        /* Stream ids cross the 1- and 2-byte varint boundaries. */
        add_frame(&w, SPOE_FRM_NOTIFY, SPOE_FL_FIN, 200 + 37 * i, i + 1, p, plen);
    }
    t_send(t, buf, w.len);
    run_until_notes(t, N);
    spin(t, 5);
    assert_int_equal(t->nnotes, N);
    assert_int_equal(spoe_conn_inflight(t->conn), N);
    for (unsigned i = 0; i < N; i++) {
        size_t plen = simple_payload(p, sizeof(p), i);

        assert_int_equal(t->notes[i].sid, 200 + 37 * i);
        assert_int_equal(t->notes[i].fid, i + 1);
        assert_int_equal(t->notes[i].len, plen);
        assert_memory_equal(t->notes[i].payload, p, plen);
        assert_true(spoe_req_alive(t->notes[i].req));
    }
    /* Nothing is answered before the application acks. */
    expect_silence(t);

    for (unsigned k = 0; k < N; k++) {
        unsigned i = N - 1 - k;
        uint8_t act[128];
        char tag[16];
        struct spoe_data d1 = spoe_uint(i * 1000), d2;

        snprintf(tag, sizeof(tag), "r%u", i);
        d2 = spoe_str(tag, strlen(tag));
        spoe_wbuf_init(&w, act, sizeof(act));
        spoe_put_set_var(&w, SPOE_SCOPE_TXN, "idx", 3, &d1);
        spoe_put_set_var(&w, SPOE_SCOPE_REQ, "tag", 3, &d2);
        if (i % 2)
            spoe_put_unset_var(&w, SPOE_SCOPE_SESS, "gone", 4);
        assert_false(w.overflow);
        assert_int_equal(ack_with(t, i, act, w.len), 0);
        if (k % 3 == 0)
            pump(t);
    }
    assert_int_equal(spoe_conn_inflight(t->conn), 0);

    for (unsigned k = 0; k < N; k++) {
        unsigned i = N - 1 - k;
        struct rxframe fr;
        struct spoe_cur c;
        char tag[16];
        struct spoe_data d1 = spoe_uint(i * 1000), d2;

        snprintf(tag, sizeof(tag), "r%u", i);
        d2 = spoe_str(tag, strlen(tag));
        expect_ack(t, 200 + 37 * i, i + 1, &fr);
        c = (struct spoe_cur){fr.f.payload, fr.f.payload + fr.f.len};
        assert_action(&c, SPOE_ACT_SET_VAR, SPOE_SCOPE_TXN, "idx", &d1);
        assert_action(&c, SPOE_ACT_SET_VAR, SPOE_SCOPE_REQ, "tag", &d2);
        if (i % 2)
            assert_action(&c, SPOE_ACT_UNSET_VAR, SPOE_SCOPE_SESS, "gone", NULL);
        assert_int_equal(c.p, c.end);
    }
    expect_silence(t); /* exactly 20 */
    ctx_free(t);
}

/* ---- 4. byte by byte ------------------------------------------------------------ */

static void test_byte_by_byte(void **state)
{
    struct tctx *t = ctx_new();
    uint8_t p[512], buf[600];
    struct spoe_wbuf w;
    size_t plen;

    (void)state;
    bb_init();
    ctx_start(t);
    do_hello(t);
    spoe_wbuf_init(&w, p, sizeof(p));
    bb_payload(&w);
    assert_false(w.overflow);
    plen = w.len;
    spoe_wbuf_init(&w, buf, sizeof(buf));
    add_frame(&w, SPOE_FRM_NOTIFY, SPOE_FL_FIN, 4242, 17, p, plen);

    t->check_args = true;
    for (size_t i = 0; i < w.len; i++) {
        t_send(t, buf + i, 1);
        spin(t, 2);
        if (i + 1 < w.len && t->nnotes != 0)
            fail_msg("delivered after %zu of %zu bytes", i + 1, w.len);
    }
    run_until_notes(t, 1);
    spin(t, 5);
    assert_int_equal(t->nnotes, 1);
    assert_true(t->args_checked);
    if (t->args_err[0])
        fail_msg("on_notify: %s", t->args_err);
    assert_int_equal(t->notes[0].sid, 4242);
    assert_int_equal(t->notes[0].fid, 17);
    assert_int_equal(t->notes[0].len, plen);
    assert_memory_equal(t->notes[0].payload, p, plen);

    assert_int_equal(ack_empty(t, 0), 0);
    {
        struct rxframe fr;

        expect_ack(t, 4242, 17, &fr);
        assert_int_equal(fr.f.len, 0);
    }
    expect_silence(t);
    ctx_free(t);
}

/* ---- 5. fragmentation ------------------------------------------------------------ */

/* Two messages with long strings, to be cut in the middle of a string. */
static size_t frag_payload(uint8_t *buf, size_t cap, char fillc)
{
    struct spoe_wbuf w;
    char s[200];
    struct spoe_data d;
    uint8_t one = 1;

    memset(s, fillc, sizeof(s));
    spoe_wbuf_init(&w, buf, cap);
    spoe_put_str(&w, "first", 5);
    spoe_put_bytes(&w, &one, 1);
    d = spoe_str(s, 150);
    spoe_put_kv(&w, "a", &d);
    spoe_put_str(&w, "second", 6);
    spoe_put_bytes(&w, &one, 1);
    d = spoe_str(s, 180);
    spoe_put_kv(&w, "b", &d);
    assert_false(w.overflow);
    return w.len;
}

static void send_frame(struct tctx *t, uint8_t type, uint32_t flags, uint64_t sid, uint64_t fid,
                       const void *payload, size_t plen)
{
    uint8_t buf[RX_FRAME_MAX];
    struct spoe_wbuf w;

    spoe_wbuf_init(&w, buf, sizeof(buf));
    add_frame(&w, type, flags, sid, fid, payload, plen);
    t_send(t, buf, w.len);
}

static void test_fragmented_notify(void **state)
{
    struct tctx *t = ctx_new();
    uint8_t p[512];
    size_t plen;
    struct rxframe fr;

    (void)state;
    ctx_start(t);
    do_hello(t);
    plen = frag_payload(p, sizeof(p), 'a');
    assert_true(plen > 300);

    send_frame(t, SPOE_FRM_NOTIFY, 0, 7, 3, p, 5);
    spin(t, 10);
    assert_int_equal(t->nnotes, 0);
    send_frame(t, SPOE_FRM_UNSET, 0, 7, 3, p + 5, 145);
    spin(t, 10);
    assert_int_equal(t->nnotes, 0);
    assert_int_equal(t->rxlen, 0); /* no ACK for fragments */
    send_frame(t, SPOE_FRM_UNSET, SPOE_FL_FIN, 7, 3, p + 150, plen - 150);
    run_until_notes(t, 1);
    spin(t, 5);
    assert_int_equal(t->nnotes, 1);
    assert_int_equal(t->notes[0].sid, 7);
    assert_int_equal(t->notes[0].fid, 3);
    assert_int_equal(t->notes[0].len, plen);
    assert_memory_equal(t->notes[0].payload, p, plen);
    assert_int_equal(ack_empty(t, 0), 0);
    expect_ack(t, 7, 3, &fr);
    assert_int_equal(fr.f.len, 0);
    expect_silence(t);
    ctx_free(t);
}

static void test_fragment_abort(void **state)
{
    struct tctx *t = ctx_new();
    uint8_t p[512], q[512], s[128];
    size_t qlen, slen;
    struct rxframe fr;

    (void)state;
    ctx_start(t);
    do_hello(t);
    frag_payload(p, sizeof(p), 'a');
    qlen = frag_payload(q, sizeof(q), 'z');

    send_frame(t, SPOE_FRM_NOTIFY, 0, 9, 1, p, 100);
    send_frame(t, SPOE_FRM_UNSET, SPOE_FL_ABORT | SPOE_FL_FIN, 9, 1, NULL, 0);
    spin(t, 10);
    assert_int_equal(t->nnotes, 0);
    assert_int_equal(count_events(t, SPOE_EV_ABORTED), 1);
    assert_int_equal(count_events(t, SPOE_EV_ERROR), 0);
    expect_silence(t); /* no ACK for an aborted frame */

    /* A plain NOTIFY afterwards. */
    slen = simple_payload(s, sizeof(s), 5);
    send_frame(t, SPOE_FRM_NOTIFY, SPOE_FL_FIN, 10, 1, s, slen);
    run_until_notes(t, 1);
    assert_int_equal(t->notes[0].sid, 10);
    assert_int_equal(t->notes[0].fid, 1);
    assert_int_equal(t->notes[0].len, slen);
    assert_memory_equal(t->notes[0].payload, s, slen);
    assert_int_equal(ack_empty(t, 0), 0);
    expect_ack(t, 10, 1, &fr);

    /* A fragmented one afterwards holds only its own bytes. */
    send_frame(t, SPOE_FRM_NOTIFY, 0, 11, 2, q, 60);
    send_frame(t, SPOE_FRM_UNSET, SPOE_FL_FIN, 11, 2, q + 60, qlen - 60);
    run_until_notes(t, 2);
    assert_int_equal(t->notes[1].sid, 11);
    assert_int_equal(t->notes[1].fid, 2);
    assert_int_equal(t->notes[1].len, qlen);
    assert_memory_equal(t->notes[1].payload, q, qlen);
    assert_int_equal(ack_empty(t, 1), 0);
    expect_ack(t, 11, 2, &fr);
    expect_silence(t);
    ctx_free(t);
}

static void test_fragmentation_disabled(void **state)
{
    struct tctx *t = ctx_new();
    uint8_t p[512];
    size_t plen;

    (void)state;
    t->cfg.fragmentation = false;
    ctx_start(t);
    do_hello(t);
    plen = frag_payload(p, sizeof(p), 'a');
    send_frame(t, SPOE_FRM_NOTIFY, 0, 1, 1, p, plen / 2);
    expect_error(t, SPOE_ST_FRAG_NOT_SUPPORTED);
    ctx_free(t);
}

static void test_reassembly_limit(void **state)
{
    uint8_t p[1100];
    struct rxframe fr;

    (void)state;
    /* Exactly max_reassembly bytes: delivered. */
    {
        struct tctx *t = ctx_new();

        t->cfg.max_reassembly = 1000;
        ctx_start(t);
        do_hello(t);
        sized_payload(p, sizeof(p), 1000);
        send_frame(t, SPOE_FRM_NOTIFY, 0, 3, 4, p, 400);
        send_frame(t, SPOE_FRM_UNSET, 0, 3, 4, p + 400, 400);
        send_frame(t, SPOE_FRM_UNSET, SPOE_FL_FIN, 3, 4, p + 800, 200);
        run_until_notes(t, 1);
        assert_int_equal(t->notes[0].len, 1000);
        assert_memory_equal(t->notes[0].payload, p, 1000);
        assert_int_equal(ack_empty(t, 0), 0);
        expect_ack(t, 3, 4, &fr);
        expect_silence(t);
        ctx_free(t);
    }
    /* One byte more: DISCONNECT 3. */
    {
        struct tctx *t = ctx_new();

        t->cfg.max_reassembly = 1000;
        ctx_start(t);
        do_hello(t);
        sized_payload(p, sizeof(p), 1001);
        send_frame(t, SPOE_FRM_NOTIFY, 0, 3, 4, p, 600);
        send_frame(t, SPOE_FRM_UNSET, SPOE_FL_FIN, 3, 4, p + 600, 401);
        expect_error(t, SPOE_ST_TOO_BIG);
        ctx_free(t);
    }
}

/* ---- 6. protocol errors -------------------------------------------------------- */

/* Runs one error case on a fresh connection: optional HELLO (max-frame-size
 * hello_mfs), then `bytes`, then expects AGENT-DISCONNECT st and a close. */
static void error_case(const char *what, long hello_mfs, const void *bytes, size_t len,
                       enum spoe_status st)
{
    struct tctx *t = ctx_new();

    print_message("  error case: %s -> %d\n", what, (int)st);
    ctx_start(t);
    if (hello_mfs > 0)
        do_hello_mfs(t, (uint32_t)hello_mfs);
    t_send(t, bytes, len);
    expect_error(t, st);
    ctx_free(t);
}

static void hello_case(const char *what, const struct hello_opts *o, enum spoe_status st)
{
    uint8_t buf[512];
    struct spoe_wbuf w;

    spoe_wbuf_init(&w, buf, sizeof(buf));
    add_hello(&w, o);
    error_case(what, 0, buf, w.len, st);
}

static void test_error_frame_too_big(void **state)
{
    uint8_t buf[64];
    struct tctx *t;
    uint8_t p[1024], f[1100];
    struct spoe_wbuf w;

    (void)state;
    /* 1025 > the negotiated 1024, though below our 4096. */
    memset(buf, 0, sizeof(buf));
    buf[0] = 0;
    buf[1] = 0;
    buf[2] = 0x04;
    buf[3] = 0x01;
    buf[4] = SPOE_FRM_NOTIFY;
    buf[8] = SPOE_FL_FIN;
    buf[9] = 1;
    buf[10] = 1;
    error_case("frame of 1025 bytes, 1024 negotiated", 1024, buf, sizeof(buf), SPOE_ST_TOO_BIG);

    /* Exactly 1024 is fine. */
    t = ctx_new();
    ctx_start(t);
    assert_int_equal(do_hello_mfs(t, 1024), 1024);
    sized_payload(p, sizeof(p), 1024 - 7); /* type, flags, two 1-byte ids */
    spoe_wbuf_init(&w, f, sizeof(f));
    add_frame(&w, SPOE_FRM_NOTIFY, SPOE_FL_FIN, 1, 1, p, 1024 - 7);
    assert_int_equal(w.len, 4 + 1024);
    t_send(t, f, w.len);
    run_until_notes(t, 1);
    assert_int_equal(t->notes[0].len, 1024 - 7);
    assert_int_equal(ack_empty(t, 0), 0);
    {
        struct rxframe fr;

        expect_ack(t, 1, 1, &fr);
    }
    expect_silence(t);
    ctx_free(t);
}

static void test_error_malformed_metadata(void **state)
{
    /* Stream id varint never terminated. */
    static const uint8_t bad_varint[] = {0, 0, 0, 7, SPOE_FRM_NOTIFY, 0, 0, 0, 1, 0xf5, 0xff};
    /* Shorter than type + flags + two ids. */
    static const uint8_t too_short[] = {0, 0, 0, 3, SPOE_FRM_NOTIFY, 0, 0};
    static const uint8_t hello_short[] = {0, 0, 0, 6, SPOE_FRM_HAPROXY_HELLO, 0, 0, 0, 1, 0};

    (void)state;
    error_case("unterminated stream-id", 16380, bad_varint, sizeof(bad_varint), SPOE_ST_INVALID);
    error_case("3-byte frame", 16380, too_short, sizeof(too_short), SPOE_ST_INVALID);
    error_case("truncated HELLO metadata", 0, hello_short, sizeof(hello_short), SPOE_ST_INVALID);
}

static void test_error_notify_before_hello(void **state)
{
    uint8_t p[128], buf[256];
    struct spoe_wbuf w;
    size_t plen = simple_payload(p, sizeof(p), 1);

    (void)state;
    spoe_wbuf_init(&w, buf, sizeof(buf));
    add_frame(&w, SPOE_FRM_NOTIFY, SPOE_FL_FIN, 1, 1, p, plen);
    error_case("NOTIFY before HELLO", 0, buf, w.len, SPOE_ST_INVALID);
}

static void test_error_malformed_messages(void **state)
{
    uint8_t p[128], buf[256];
    struct spoe_wbuf w;
    struct spoe_data d = spoe_uint(1);
    uint8_t b;

    (void)state;
    /* nb-args 2, one argument. */
    spoe_wbuf_init(&w, p, sizeof(p));
    spoe_put_str(&w, "check", 5);
    b = 2;
    spoe_put_bytes(&w, &b, 1);
    spoe_put_kv(&w, "i", &d);
    {
        size_t plen = w.len;

        spoe_wbuf_init(&w, buf, sizeof(buf));
        add_frame(&w, SPOE_FRM_NOTIFY, SPOE_FL_FIN, 1, 1, p, plen);
        error_case("missing argument", 16380, buf, w.len, SPOE_ST_INVALID);
    }
    /* Message name longer than the payload. */
    {
        static const uint8_t np[] = {50, 'c', 'h', 'k'};

        spoe_wbuf_init(&w, buf, sizeof(buf));
        add_frame(&w, SPOE_FRM_NOTIFY, SPOE_FL_FIN, 1, 1, np, sizeof(np));
        error_case("name past the end", 16380, buf, w.len, SPOE_ST_INVALID);
    }
    /* Reserved data type 12. */
    {
        static const uint8_t rp[] = {1, 'm', 1, 1, 'a', 12};

        spoe_wbuf_init(&w, buf, sizeof(buf));
        add_frame(&w, SPOE_FRM_NOTIFY, SPOE_FL_FIN, 1, 1, rp, sizeof(rp));
        error_case("reserved type", 16380, buf, w.len, SPOE_ST_INVALID);
    }
}

static void test_error_hello_items(void **state)
{
    struct hello_opts o;

    (void)state;
    o = haproxy26;
    o.versions = NULL;
    hello_case("no supported-versions", &o, SPOE_ST_NO_VSN);
    o = haproxy26;
    o.mfs = -1;
    hello_case("no max-frame-size", &o, SPOE_ST_NO_FRAME_SIZE);
    o = haproxy26;
    o.caps = NULL;
    hello_case("no capabilities", &o, SPOE_ST_NO_CAP);
    o = haproxy26;
    o.versions = "1.0";
    hello_case("version 1.0", &o, SPOE_ST_BAD_VSN);
    o = haproxy26;
    o.mfs = 100;
    hello_case("max-frame-size 100", &o, SPOE_ST_BAD_FRAME_SIZE);
}

static void test_error_interlaced(void **state)
{
    uint8_t p[512], buf[1024];
    struct spoe_wbuf w;
    size_t plen = frag_payload(p, sizeof(p), 'a');

    (void)state;
    /* A NOTIFY while a fragmented one is pending. */
    spoe_wbuf_init(&w, buf, sizeof(buf));
    add_frame(&w, SPOE_FRM_NOTIFY, 0, 1, 1, p, 100);
    add_frame(&w, SPOE_FRM_NOTIFY, SPOE_FL_FIN, 2, 1, p, plen);
    error_case("NOTIFY during fragments", 16380, buf, w.len, SPOE_ST_INTERLACED_FRAMES);

    /* An UNSET with another frame id. */
    spoe_wbuf_init(&w, buf, sizeof(buf));
    add_frame(&w, SPOE_FRM_NOTIFY, 0, 1, 1, p, 100);
    add_frame(&w, SPOE_FRM_UNSET, SPOE_FL_FIN, 1, 2, p + 100, plen - 100);
    error_case("UNSET other frame-id", 16380, buf, w.len, SPOE_ST_INTERLACED_FRAMES);

    /* An UNSET with another stream id. */
    spoe_wbuf_init(&w, buf, sizeof(buf));
    add_frame(&w, SPOE_FRM_NOTIFY, 0, 1, 1, p, 100);
    add_frame(&w, SPOE_FRM_UNSET, SPOE_FL_FIN, 5, 1, p + 100, plen - 100);
    error_case("UNSET other stream-id", 16380, buf, w.len, SPOE_ST_INTERLACED_FRAMES);
}

static void test_error_unset_without_pending(void **state)
{
    uint8_t p[512], buf[1024];
    struct spoe_wbuf w;
    size_t plen = frag_payload(p, sizeof(p), 'a');

    (void)state;
    spoe_wbuf_init(&w, buf, sizeof(buf));
    add_frame(&w, SPOE_FRM_UNSET, SPOE_FL_FIN, 1, 1, p, plen);
    error_case("UNSET alone", 16380, buf, w.len, SPOE_ST_FRAMEID_NOTFOUND);
}

/* ---- 7. unknown frame type --------------------------------------------------------- */

static void test_unknown_frame_skipped(void **state)
{
    struct tctx *t = ctx_new();
    static const uint8_t junk[] = {0xde, 0xad, 0xbe, 0xef, 0x00, 0xff};
    uint8_t p[128], buf[512];
    struct spoe_wbuf w;
    size_t plen = simple_payload(p, sizeof(p), 8);

    (void)state;
    ctx_start(t);
    do_hello(t);
    t->auto_ack = true;
    spoe_wbuf_init(&w, buf, sizeof(buf));
    add_frame(&w, 42, SPOE_FL_FIN, 0, 0, junk, sizeof(junk));
    add_frame(&w, SPOE_FRM_NOTIFY, SPOE_FL_FIN, 12, 34, p, plen);
    t_send(t, buf, w.len);
    expect_auto_ack(t, 12, 34); /* the first thing the agent sends */
    assert_int_equal(t->nnotes, 1);
    assert_int_equal(t->auto_ack_ret, 0);
    /* And again in a separate write. */
    send_frame(t, 42, SPOE_FL_FIN, 3, 3, junk, sizeof(junk));
    spin(t, 5);
    send_notify(t, 13, 35, 9);
    expect_auto_ack(t, 13, 35);
    assert_int_equal(count_events(t, SPOE_EV_ERROR), 0);
    expect_silence(t);
    ctx_free(t);
}

/* ---- 8. HAPROXY-DISCONNECT ---------------------------------------------------------- */

static void send_haproxy_disconnect(struct tctx *t, uint32_t st, const char *msg)
{
    uint8_t buf[256];
    struct spoe_wbuf w;
    struct spoe_data d;

    spoe_wbuf_init(&w, buf, sizeof(buf));
    spoe_frame_begin(&w, SPOE_FRM_HAPROXY_DISCONNECT, SPOE_FL_FIN, 0, 0);
    d = spoe_uint(st);
    spoe_put_kv(&w, "status-code", &d);
    d = spoe_str(msg, strlen(msg));
    spoe_put_kv(&w, "message", &d);
    assert_true(spoe_frame_end(&w, 0, SPOE_FRAME_MAX) > 0);
    t_send(t, buf, w.len);
}

static void disconnect_case(bool hello, uint32_t st, const char *msg)
{
    struct tctx *t = ctx_new();
    const struct evrec *e;

    ctx_start(t);
    if (hello)
        do_hello(t);
    send_haproxy_disconnect(t, st, msg);
    expect_disconnect(t, SPOE_ST_NONE);
    expect_eof(t);
    assert_int_equal(count_events(t, SPOE_EV_DISCONNECT), 1);
    e = find_event(t, SPOE_EV_DISCONNECT);
    assert_int_equal(e->status, st);
    assert_true(e->has_msg);
    assert_int_equal(e->msg_len, strlen(msg));
    assert_string_equal(e->msg, msg);
    assert_int_equal(count_events(t, SPOE_EV_ERROR), 0);
    assert_int_equal(t->freed, 1);
    ctx_free(t);
}

static void test_haproxy_disconnect(void **state)
{
    (void)state;
    disconnect_case(true, 0, "bye");
    /* HAProxy's status is reported as is; we still answer 0. */
    disconnect_case(true, SPOE_ST_TIMEOUT, "a timeout occurred");
}

static void test_haproxy_disconnect_before_hello(void **state)
{
    (void)state;
    disconnect_case(false, 0, "bye");
}

/* ---- 9. back-pressure --------------------------------------------------------------- */

static void test_backpressure(void **state)
{
    struct tctx *t = ctx_new();
    uint8_t buf[1024], p[128];
    struct spoe_wbuf w;
    int avail = -1;

    (void)state;
    t->cfg.max_inflight = 2;
    ctx_start(t);
    do_hello(t);
    spoe_wbuf_init(&w, buf, sizeof(buf));
    for (unsigned i = 0; i < 5; i++) {
        size_t plen = simple_payload(p, sizeof(p), i);

        add_frame(&w, SPOE_FRM_NOTIFY, SPOE_FL_FIN, 50 + i, 1, p, plen);
    }
    t_send(t, buf, w.len);
    run_until_notes(t, 2);
    spin(t, 20);
    assert_int_equal(t->nnotes, 2);
    assert_int_equal(spoe_conn_inflight(t->conn), 2);
    /* The scenario: the agent already holds the other 3 frames, the socket is
     * empty, so only the engine itself can wake its reader. */
    assert_int_equal(ioctl(t->agent_fd, FIONREAD, &avail), 0);
    assert_int_equal(avail, 0);
    expect_silence(t);

    assert_int_equal(ack_empty(t, 0), 0);
    run_until_notes(t, 3);
    spin(t, 10);
    assert_int_equal(t->nnotes, 3);
    assert_int_equal(t->notes[2].sid, 52);
    {
        struct rxframe fr;

        expect_ack(t, 50, 1, &fr);
    }

    assert_int_equal(ack_empty(t, 1), 0);
    assert_int_equal(ack_empty(t, 2), 0);
    run_until_notes(t, 5);
    spin(t, 10);
    assert_int_equal(t->nnotes, 5);
    for (unsigned i = 0; i < 5; i++) {
        size_t plen = simple_payload(p, sizeof(p), i);

        assert_int_equal(t->notes[i].sid, 50 + i);
        assert_int_equal(t->notes[i].len, plen);
        assert_memory_equal(t->notes[i].payload, p, plen);
    }
    assert_int_equal(ack_empty(t, 4), 0);
    assert_int_equal(ack_empty(t, 3), 0);
    {
        struct rxframe fr;

        expect_ack(t, 51, 1, &fr);
        expect_ack(t, 52, 1, &fr);
        expect_ack(t, 54, 1, &fr);
        expect_ack(t, 53, 1, &fr);
    }
    assert_int_equal(spoe_conn_inflight(t->conn), 0);
    /* Reading goes on normally afterwards. */
    send_notify(t, 60, 1, 0);
    run_until_notes(t, 6);
    assert_int_equal(ack_empty(t, 5), 0);
    {
        struct rxframe fr;

        expect_ack(t, 60, 1, &fr);
    }
    expect_silence(t);
    ctx_free(t);
}

/* ---- 10. peer closes with requests pending ------------------------------------------ */

static void test_peer_close_pending(void **state)
{
    struct tctx *t = ctx_new();

    (void)state;
    ctx_start(t);
    do_hello(t);
    send_notify(t, 1, 1, 1);
    send_notify(t, 2, 1, 2);
    run_until_notes(t, 2);
    assert_true(spoe_req_alive(t->notes[0].req));

    close(t->fd);
    t->fd = -1;
    for (int i = 0; i < SPIN_MAX && !t->closed; i++)
        pump(t);
    assert_true(t->closed);
    assert_int_equal(t->freed, 0); /* requests still hold the memory */
    assert_false(spoe_req_alive(t->notes[0].req));
    assert_false(spoe_req_alive(t->notes[1].req));
    assert_int_equal(spoe_req_stream_id(t->notes[1].req), 2);

    assert_int_equal(ack_empty(t, 1), -2);
    assert_int_equal(t->freed, 0);
    {
        uint8_t act[32];
        struct spoe_wbuf w;
        struct spoe_data d = spoe_uint(1);

        spoe_wbuf_init(&w, act, sizeof(act));
        spoe_put_set_var(&w, SPOE_SCOPE_TXN, "x", 1, &d);
        assert_int_equal(ack_with(t, 0, act, w.len), -2);
    }
    assert_int_equal(t->freed, 1);
    assert_null(t->conn);
    spin(t, 3);
    assert_int_equal(count_events(t, SPOE_EV_CLOSED), 1);
    ctx_free(t);
}

/* ---- 11. graceful shutdown -------------------------------------------------------- */

static void test_shutdown_pending(void **state)
{
    struct tctx *t = ctx_new();
    struct rxframe fr;

    (void)state;
    ctx_start(t);
    do_hello(t);
    send_notify(t, 1, 1, 1);
    send_notify(t, 2, 1, 2);
    run_until_notes(t, 2);

    spoe_conn_shutdown(t->conn);
    send_notify(t, 3, 1, 3);
    spin(t, 20);
    assert_int_equal(t->nnotes, 2); /* no new NOTIFY taken */
    assert_int_equal(t->rxlen, 0);  /* no DISCONNECT while requests are pending */
    assert_false(t->eof);

    assert_int_equal(ack_empty(t, 1), 0);
    expect_ack(t, 2, 1, &fr);
    spin(t, 10);
    assert_int_equal(t->rxlen, 0);
    assert_false(t->eof);

    assert_int_equal(ack_empty(t, 0), 0);
    expect_ack(t, 1, 1, &fr);
    expect_disconnect(t, SPOE_ST_NONE);
    expect_eof(t);
    assert_int_equal(t->nnotes, 2);
    assert_int_equal(count_events(t, SPOE_EV_ERROR), 0);
    assert_int_equal(t->freed, 1);
    ctx_free(t);
}

static void test_shutdown_idle(void **state)
{
    struct tctx *t = ctx_new();

    (void)state;
    ctx_start(t);
    do_hello(t);
    spoe_conn_shutdown(t->conn);
    expect_disconnect(t, SPOE_ST_NONE);
    expect_eof(t);
    assert_int_equal(t->freed, 1);
    ctx_free(t);
}

/* ---- 12. ACK too big -------------------------------------------------------------- */

/* A set-var txn.big = BINARY of exactly `size` bytes of actions. */
static void sized_actions(uint8_t *buf, size_t cap, size_t size)
{
    static uint8_t fill[RX_FRAME_MAX];

    memset(fill, 'y', sizeof(fill));
    assert_true(size + 16 <= cap);
    for (size_t bl = 0; bl < size; bl++) {
        struct spoe_wbuf w;
        struct spoe_data d = spoe_bin(fill, bl);

        spoe_wbuf_init(&w, buf, cap);
        spoe_put_set_var(&w, SPOE_SCOPE_TXN, "big", 3, &d);
        if (!w.overflow && w.len == size)
            return;
    }
    fail_msg("no actions of %zu bytes", size);
}

static void test_ack_too_big(void **state)
{
    struct tctx *t = ctx_new();
    static uint8_t act[8192];
    struct rxframe fr;
    size_t max;

    (void)state;
    ctx_start(t);
    do_hello(t); /* 4096 negotiated */
    send_notify(t, 300, 70000, 1);
    send_notify(t, 5, 6, 2);
    run_until_notes(t, 2);

    /* type + flags + 2-byte stream id + 3-byte frame id */
    max = spoe_req_max_actions(t->notes[0].req);
    assert_int_equal(max, 4096 - (1 + 4 + 2 + 3));
    sized_actions(act, sizeof(act), max);
    assert_int_equal(ack_with(t, 0, act, max), 0);
    expect_ack(t, 300, 70000, &fr);
    assert_int_equal(fr.len, 4096); /* exactly the negotiated size */
    assert_int_equal(fr.f.len, max);
    assert_memory_equal(fr.f.payload, act, max);
    assert_int_equal(count_events(t, SPOE_EV_ACK_TOO_BIG), 0);

    max = spoe_req_max_actions(t->notes[1].req);
    assert_int_equal(max, 4096 - (1 + 4 + 1 + 1));
    sized_actions(act, sizeof(act), max + 1);
    assert_int_equal(ack_with(t, 1, act, max + 1), -1);
    expect_ack(t, 5, 6, &fr);
    assert_int_equal(fr.f.len, 0); /* empty ACK */
    assert_int_equal(count_events(t, SPOE_EV_ACK_TOO_BIG), 1);
    assert_int_equal(count_events(t, SPOE_EV_ERROR), 0);

    /* Still up. */
    t->auto_ack = true;
    send_notify(t, 7, 8, 3);
    expect_auto_ack(t, 7, 8);
    assert_int_equal(t->auto_ack_ret, 0);
    expect_silence(t);
    ctx_free(t);
}

/* ---- 13. hello timeout ------------------------------------------------------------ */

static void test_hello_timeout(void **state)
{
    struct tctx *t = ctx_new();
    ev_tstamp t0;

    (void)state;
    t->cfg.hello_timeout = 0.01;
    ctx_start(t);
    ev_run(t->loop, EVRUN_NOWAIT);
    assert_false(t->closed); /* not at once */
    t0 = ev_time();
    /* The timer wakes ev_run by itself. */
    for (int i = 0; i < 50 && !t->closed; i++)
        ev_run(t->loop, EVRUN_ONCE);
    assert_true(t->closed);
    assert_true(ev_time() - t0 < 0.5);
    expect_disconnect(t, SPOE_ST_TIMEOUT);
    expect_eof(t);
    assert_int_equal(count_events(t, SPOE_EV_ERROR), 1);
    assert_int_equal(find_event(t, SPOE_EV_ERROR)->status, SPOE_ST_TIMEOUT);
    assert_int_equal(count_events(t, SPOE_EV_HELLO), 0);
    ctx_free(t);
}

int main(void)
{
#define T(f) cmocka_unit_test_teardown(f, teardown_live)
    const struct CMUnitTest tests[] = {
        T(test_hello_negotiation),
        T(test_hello_smaller_peer_size),
        T(test_hello_caps_disabled),
        T(test_healthcheck),
        T(test_pipelining_reverse_acks),
        T(test_byte_by_byte),
        T(test_fragmented_notify),
        T(test_fragment_abort),
        T(test_fragmentation_disabled),
        T(test_reassembly_limit),
        T(test_error_frame_too_big),
        T(test_error_malformed_metadata),
        T(test_error_notify_before_hello),
        T(test_error_malformed_messages),
        T(test_error_hello_items),
        T(test_error_interlaced),
        T(test_error_unset_without_pending),
        T(test_unknown_frame_skipped),
        T(test_haproxy_disconnect),
        T(test_haproxy_disconnect_before_hello),
        T(test_backpressure),
        T(test_peer_close_pending),
        T(test_shutdown_pending),
        T(test_shutdown_idle),
        T(test_ack_too_big),
        T(test_hello_timeout),
    };
#undef T

    return cmocka_run_group_tests_name("spoe_conn", tests, NULL, NULL);
}
