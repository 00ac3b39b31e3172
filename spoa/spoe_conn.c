/* SPOP 2.0 connection engine on libev: handshake, reassembly, pipelined
 * NOTIFY/ACK, protocol errors and graceful shutdown for one socket. */
#include "spoe.h"

#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum conn_state {
    ST_HELLO,   /* waiting for HAPROXY-HELLO */
    ST_READY,   /* NOTIFY/ACK exchange */
    ST_CLOSING, /* final frame queued: flush, then close */
    ST_CLOSED,  /* socket gone; memory kept while requests are pending */
};

/* How long a peer may take to read our final frame before we close anyway. */
#define LINGER_TIMEOUT 2.0

struct spoe_conn {
    struct ev_loop *loop;
    const struct spoe_conn_cfg *cfg;
    int fd;
    enum conn_state state;
    ev_io rio;
    ev_io wio;
    ev_timer timer;
    ev_tstamp last_rx;

    uint32_t frame_size; /* negotiated; ours until the HELLO */
    unsigned refs;       /* 1 for the socket + 1 per pending request */
    unsigned inflight;
    bool in_read;  /* ACKs queued during a read batch are flushed once */
    bool draining; /* spoe_conn_shutdown() called */
    bool read_paused;

    uint8_t *rbuf;
    size_t rlen;
    size_t rcap;

    uint8_t *wbuf;
    size_t woff;
    size_t wlen;
    size_t wcap;

    /* One fragmented NOTIFY at a time (SPOP forbids interlacing). */
    bool frag_on;
    uint64_t frag_sid;
    uint64_t frag_fid;
    uint8_t *frag;
    size_t frag_len;
    size_t frag_cap;

    char engine_id[64];
    void *udata;
};

struct spoe_req {
    struct spoe_conn *conn;
    uint64_t stream_id;
    uint64_t frame_id;
};

static void conn_teardown(struct spoe_conn *c);
static void conn_unref(struct spoe_conn *c);
static void conn_flush(struct spoe_conn *c);
static void update_read(struct spoe_conn *c);

static void emit(struct spoe_conn *c, enum spoe_event_kind kind, enum spoe_status st,
                 const char *msg, size_t mlen, const struct spoe_hello *h)
{
    struct spoe_event ev = {kind, st, msg, mlen, h};

    if (c->cfg->on_event)
        c->cfg->on_event(c, &ev, c->cfg->udata);
}

/* Output queue bound beyond which we stop reading: a peer that does not read
 * its ACKs must not make us buffer without end. */
static size_t out_highwater(const struct spoe_conn *c)
{
    return (size_t)c->frame_size * 8 + 65536;
}

static size_t out_pending(const struct spoe_conn *c)
{
    return c->wlen - c->woff;
}

/* Makes room for `need` more bytes in the output queue. */
static int out_reserve(struct spoe_conn *c, size_t need)
{
    size_t ncap;
    uint8_t *nb;

    if (c->woff > 0 && c->woff == c->wlen)
        c->woff = c->wlen = 0;
    if (c->wcap - c->wlen >= need)
        return 0;
    if (c->woff > 0) {
        memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
        c->wlen -= c->woff;
        c->woff = 0;
        if (c->wcap - c->wlen >= need)
            return 0;
    }
    ncap = c->wcap ? c->wcap : 4096;
    while (ncap - c->wlen < need)
        ncap *= 2;
    nb = realloc(c->wbuf, ncap);
    if (!nb)
        return -1;
    c->wbuf = nb;
    c->wcap = ncap;
    return 0;
}

static void queue_disconnect(struct spoe_conn *c, enum spoe_status st, const char *msg)
{
    struct spoe_wbuf w;
    struct spoe_data d;
    size_t need = 64 + strlen(msg);
    long n;

    if (out_reserve(c, need) < 0)
        return;
    spoe_wbuf_init(&w, c->wbuf + c->wlen, need);
    spoe_frame_begin(&w, SPOE_FRM_AGENT_DISCONNECT, SPOE_FL_FIN, 0, 0);
    d = spoe_uint((uint32_t)st);
    spoe_put_kv(&w, "status-code", &d);
    d = spoe_str(msg, strlen(msg));
    spoe_put_kv(&w, "message", &d);
    n = spoe_frame_end(&w, 0, c->frame_size);
    if (n > 0)
        c->wlen += (size_t)n;
}

static void start_linger(struct spoe_conn *c)
{
    ev_timer_stop(c->loop, &c->timer);
    ev_timer_set(&c->timer, LINGER_TIMEOUT, 0.);
    ev_timer_start(c->loop, &c->timer);
}

/* Ends the connection: AGENT-DISCONNECT with `st`, then close once sent. */
static void conn_fail(struct spoe_conn *c, enum spoe_status st, const char *msg)
{
    if (c->state >= ST_CLOSING)
        return;
    emit(c, SPOE_EV_ERROR, st, msg, strlen(msg), NULL);
    queue_disconnect(c, st, msg);
    c->state = ST_CLOSING;
    c->frag_on = false;
    ev_io_stop(c->loop, &c->rio);
    start_linger(c);
    if (!c->in_read)
        conn_flush(c);
}

/* Closes after the queued output is gone, without a DISCONNECT (health check). */
static void conn_close_after_flush(struct spoe_conn *c)
{
    c->state = ST_CLOSING;
    ev_io_stop(c->loop, &c->rio);
    start_linger(c);
    if (!c->in_read)
        conn_flush(c);
}

static void conn_flush(struct spoe_conn *c)
{
    while (out_pending(c) > 0) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, out_pending(c), MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                ev_io_start(c->loop, &c->wio);
                return;
            }
            conn_teardown(c);
            return;
        }
        c->woff += (size_t)n;
    }
    c->woff = c->wlen = 0;
    ev_io_stop(c->loop, &c->wio);
    if (c->state == ST_CLOSING) {
        conn_teardown(c);
        return;
    }
    update_read(c);
}

static void maybe_finish_drain(struct spoe_conn *c)
{
    if (c->draining && c->inflight == 0 && c->state == ST_READY) {
        queue_disconnect(c, SPOE_ST_NONE, "agent shutting down");
        conn_close_after_flush(c);
    } else if (c->draining && c->state == ST_HELLO) {
        conn_teardown(c);
    }
}

/* Reading stops while too many requests are pending or too much output is
 * queued, and resumes when both are back under their bound. */
static void update_read(struct spoe_conn *c)
{
    bool pause;

    if (c->state >= ST_CLOSING || c->draining) {
        ev_io_stop(c->loop, &c->rio);
        return;
    }
    pause = c->inflight >= c->cfg->max_inflight || out_pending(c) > out_highwater(c);
    if (pause && !c->read_paused) {
        ev_io_stop(c->loop, &c->rio);
    } else if (!pause && c->read_paused) {
        ev_io_start(c->loop, &c->rio);
        /* Complete frames may already sit in our buffer with nothing new on
         * the socket to wake us: run the reader once. */
        if (c->rlen > 0)
            ev_feed_event(c->loop, &c->rio, EV_READ);
    }
    c->read_paused = pause;
}

static void send_agent_hello(struct spoe_conn *c)
{
    char caps[64] = "";
    struct spoe_wbuf w;
    struct spoe_data d;
    long n;

    snprintf(caps, sizeof(caps), "%s%s%s", c->cfg->pipelining ? "pipelining" : "",
             c->cfg->pipelining && c->cfg->fragmentation ? "," : "",
             c->cfg->fragmentation ? "fragmentation" : "");
    if (out_reserve(c, 128) < 0) {
        conn_teardown(c);
        return;
    }
    spoe_wbuf_init(&w, c->wbuf + c->wlen, 128);
    spoe_frame_begin(&w, SPOE_FRM_AGENT_HELLO, SPOE_FL_FIN, 0, 0);
    d = spoe_str(SPOE_VERSION, strlen(SPOE_VERSION));
    spoe_put_kv(&w, "version", &d);
    d = spoe_uint(c->frame_size);
    spoe_put_kv(&w, "max-frame-size", &d);
    d = spoe_str(caps, strlen(caps));
    spoe_put_kv(&w, "capabilities", &d);
    n = spoe_frame_end(&w, 0, c->frame_size);
    if (n > 0)
        c->wlen += (size_t)n;
}

/* HAProxy closes (at any time): report its reason, answer, close. */
static void handle_haproxy_disconnect(struct spoe_conn *c, const struct spoe_frame *f)
{
    struct spoe_cur kv = {f->payload, f->payload + f->len};
    const char *n, *msg = NULL;
    size_t nl, ml = 0;
    struct spoe_data d;
    enum spoe_status st = SPOE_ST_NONE;

    while (spoe_kv_next(&kv, &n, &nl, &d) == 1) {
        if (nl == 11 && memcmp(n, "status-code", 11) == 0 && d.type == SPOE_UINT32) {
            st = (enum spoe_status)d.u.u32;
        } else if (nl == 7 && memcmp(n, "message", 7) == 0 && d.type == SPOE_STR) {
            msg = d.u.s.ptr;
            ml = d.u.s.len;
        }
    }
    emit(c, SPOE_EV_DISCONNECT, st, msg, ml, NULL);
    queue_disconnect(c, SPOE_ST_NONE, "bye");
    conn_close_after_flush(c);
}

static void handle_hello(struct spoe_conn *c, const struct spoe_frame *f)
{
    struct spoe_hello h;
    enum spoe_status st;
    size_t el;

    if (f->type == SPOE_FRM_HAPROXY_DISCONNECT) {
        handle_haproxy_disconnect(c, f);
        return;
    }
    if (f->type != SPOE_FRM_HAPROXY_HELLO) {
        conn_fail(c, SPOE_ST_INVALID, "expected HAPROXY-HELLO");
        return;
    }
    if (!(f->flags & SPOE_FL_FIN)) {
        conn_fail(c, SPOE_ST_FRAG_NOT_SUPPORTED, "fragmented HAPROXY-HELLO");
        return;
    }
    if (f->stream_id != 0 || f->frame_id != 0) {
        conn_fail(c, SPOE_ST_INVALID, "HAPROXY-HELLO with non-zero ids");
        return;
    }
    st = spoe_hello_parse(f->payload, f->len, &h);
    if (st != SPOE_ST_NONE) {
        conn_fail(c, st, spoe_status_str(st));
        return;
    }
    if (h.max_frame_size < SPOE_FRAME_MIN) {
        conn_fail(c, SPOE_ST_BAD_FRAME_SIZE, spoe_status_str(SPOE_ST_BAD_FRAME_SIZE));
        return;
    }
    if (h.max_frame_size < c->frame_size)
        c->frame_size = h.max_frame_size;
    el = h.engine_id_len < sizeof(c->engine_id) - 1 ? h.engine_id_len : sizeof(c->engine_id) - 1;
    memcpy(c->engine_id, h.engine_id ? h.engine_id : "", el);
    c->engine_id[el] = '\0';
    send_agent_hello(c);
    if (c->state >= ST_CLOSING)
        return;
    c->state = ST_READY;
    ev_timer_stop(c->loop, &c->timer);
    if (c->cfg->idle_timeout > 0) {
        ev_timer_set(&c->timer, c->cfg->idle_timeout, 0.);
        ev_timer_start(c->loop, &c->timer);
    }
    emit(c, SPOE_EV_HELLO, SPOE_ST_NONE, NULL, 0, &h);
    /* A health check ends with our HELLO; HAProxy closes its side too. */
    if (h.healthcheck)
        conn_close_after_flush(c);
}

static void deliver(struct spoe_conn *c, uint64_t sid, uint64_t fid, const uint8_t *p, size_t len)
{
    struct spoe_req *r;
    struct spoe_cur msgs = {p, len ? p + len : p}; /* p is NULL for an empty reassembly */

    if (spoe_notify_validate(p, len) < 0) {
        conn_fail(c, SPOE_ST_INVALID, "malformed NOTIFY payload");
        return;
    }
    r = malloc(sizeof(*r));
    if (!r) {
        conn_fail(c, SPOE_ST_RES_ALLOC, spoe_status_str(SPOE_ST_RES_ALLOC));
        return;
    }
    r->conn = c;
    r->stream_id = sid;
    r->frame_id = fid;
    c->refs++;
    c->inflight++;
    c->cfg->on_notify(r, msgs, c->cfg->udata);
}

static int frag_append(struct spoe_conn *c, const uint8_t *p, size_t len)
{
    if (len > c->cfg->max_reassembly - c->frag_len) {
        conn_fail(c, SPOE_ST_TOO_BIG, "reassembled NOTIFY too big");
        return -1;
    }
    if (len == 0)
        return 0; /* an empty piece: the buffer (and p) may still be NULL */
    if (c->frag_cap - c->frag_len < len) {
        size_t ncap = c->frag_cap ? c->frag_cap : 4096;
        uint8_t *nb;

        while (ncap - c->frag_len < len)
            ncap *= 2;
        if (ncap > c->cfg->max_reassembly)
            ncap = c->cfg->max_reassembly;
        nb = realloc(c->frag, ncap);
        if (!nb) {
            conn_fail(c, SPOE_ST_RES_ALLOC, spoe_status_str(SPOE_ST_RES_ALLOC));
            return -1;
        }
        c->frag = nb;
        c->frag_cap = ncap;
    }
    memcpy(c->frag + c->frag_len, p, len);
    c->frag_len += len;
    return 0;
}

static void handle_ready(struct spoe_conn *c, const struct spoe_frame *f)
{
    switch (f->type) {
    case SPOE_FRM_HAPROXY_DISCONNECT:
        handle_haproxy_disconnect(c, f);
        return;
    case SPOE_FRM_NOTIFY:
        if (c->frag_on) {
            conn_fail(c, SPOE_ST_INTERLACED_FRAMES, spoe_status_str(SPOE_ST_INTERLACED_FRAMES));
            return;
        }
        if (f->flags & SPOE_FL_FIN) {
            deliver(c, f->stream_id, f->frame_id, f->payload, f->len);
            return;
        }
        if (!c->cfg->fragmentation) {
            conn_fail(c, SPOE_ST_FRAG_NOT_SUPPORTED, spoe_status_str(SPOE_ST_FRAG_NOT_SUPPORTED));
            return;
        }
        c->frag_on = true;
        c->frag_sid = f->stream_id;
        c->frag_fid = f->frame_id;
        c->frag_len = 0;
        frag_append(c, f->payload, f->len);
        return;
    case SPOE_FRM_UNSET:
        if (!c->frag_on) {
            conn_fail(c, SPOE_ST_FRAMEID_NOTFOUND, "fragment of no pending frame");
            return;
        }
        if (f->stream_id != c->frag_sid || f->frame_id != c->frag_fid) {
            conn_fail(c, SPOE_ST_INTERLACED_FRAMES, spoe_status_str(SPOE_ST_INTERLACED_FRAMES));
            return;
        }
        if (f->flags & SPOE_FL_ABORT) {
            /* HAProxy gave up on this frame: no ACK is expected. */
            c->frag_on = false;
            c->frag_len = 0;
            emit(c, SPOE_EV_ABORTED, SPOE_ST_NONE, NULL, 0, NULL);
            return;
        }
        if (frag_append(c, f->payload, f->len) < 0)
            return;
        if (f->flags & SPOE_FL_FIN) {
            c->frag_on = false;
            deliver(c, c->frag_sid, c->frag_fid, c->frag, c->frag_len);
            c->frag_len = 0;
        }
        return;
    case SPOE_FRM_HAPROXY_HELLO:
    case SPOE_FRM_AGENT_HELLO:
    case SPOE_FRM_AGENT_DISCONNECT:
    case SPOE_FRM_ACK:
        conn_fail(c, SPOE_ST_INVALID, "unexpected frame type");
        return;
    default:
        return; /* unknown frames may be skipped (SPOE.txt 3.2.2) */
    }
}

static void handle_frame(struct spoe_conn *c, const uint8_t *buf, size_t len)
{
    struct spoe_frame f;

    if (spoe_frame_parse(buf, len, &f) != SPOE_ST_NONE) {
        conn_fail(c, SPOE_ST_INVALID, "malformed frame metadata");
        return;
    }
    if (c->state == ST_HELLO)
        handle_hello(c, &f);
    else if (c->state == ST_READY && !c->draining)
        handle_ready(c, &f);
}

/* Parses every complete frame in the read buffer. */
static void process_input(struct spoe_conn *c)
{
    size_t off = 0;

    while (c->state < ST_CLOSING && c->rlen - off >= 4) {
        const uint8_t *p = c->rbuf + off;
        uint32_t flen = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];

        if (flen > c->frame_size) {
            conn_fail(c, SPOE_ST_TOO_BIG, spoe_status_str(SPOE_ST_TOO_BIG));
            break;
        }
        if (c->rlen - off - 4 < flen)
            break;
        handle_frame(c, p + 4, flen);
        off += 4 + (size_t)flen;
        if (c->inflight >= c->cfg->max_inflight)
            break; /* leave the rest buffered until requests complete */
    }
    if (off > 0) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
}

static void on_read(struct ev_loop *loop, ev_io *w, int revents)
{
    struct spoe_conn *c = w->data;

    c->refs++; /* callbacks may close the connection under us */
    c->in_read = true;
    c->last_rx = ev_now(loop);
    process_input(c); /* frames left buffered while we were paused */
    while (c->state < ST_CLOSING && !c->draining && c->inflight < c->cfg->max_inflight &&
           c->rlen < c->rcap) {
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) { /* EOF or reset: normal for HAProxy */
            c->in_read = false;
            conn_teardown(c);
            /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): we still hold a reference */
            conn_unref(c);
            return;
        }
        c->rlen += (size_t)n;
        process_input(c);
    }
    c->in_read = false;
    if (c->state != ST_CLOSED)
        conn_flush(c);
    if (c->state == ST_READY) {
        update_read(c);
        maybe_finish_drain(c);
    }
    /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): we still hold a reference */
    conn_unref(c);
}

static void on_write(struct ev_loop *loop, ev_io *w, int revents)
{
    struct spoe_conn *c = w->data;

    c->refs++;
    conn_flush(c);
    conn_unref(c);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct spoe_conn *c = w->data;

    if (c->state == ST_HELLO) {
        conn_fail(c, SPOE_ST_TIMEOUT, "no HAPROXY-HELLO in time");
        return;
    }
    if (c->state == ST_CLOSING) { /* peer never read our last frame */
        conn_teardown(c);
        return;
    }
    if (c->state == ST_READY && c->cfg->idle_timeout > 0) {
        ev_tstamp due = c->last_rx + c->cfg->idle_timeout;

        if (c->inflight == 0 && due <= ev_now(loop)) {
            queue_disconnect(c, SPOE_ST_TIMEOUT, "idle timeout");
            conn_close_after_flush(c);
            return;
        }
        ev_timer_set(w, due > ev_now(loop) ? due - ev_now(loop) : c->cfg->idle_timeout, 0.);
        ev_timer_start(loop, w);
    }
}

struct spoe_conn *spoe_conn_new(struct ev_loop *loop, int fd, const struct spoe_conn_cfg *cfg)
{
    struct spoe_conn *c = calloc(1, sizeof(*c));

    if (!c) {
        close(fd);
        return NULL;
    }
    c->rcap = (size_t)cfg->max_frame_size + 4;
    c->rbuf = malloc(c->rcap);
    if (!c->rbuf) {
        free(c);
        close(fd);
        return NULL;
    }
    c->loop = loop;
    c->cfg = cfg;
    c->fd = fd;
    c->refs = 1;
    c->frame_size = cfg->max_frame_size;
    c->state = ST_HELLO;
    c->last_rx = ev_now(loop);
    ev_io_init(&c->rio, on_read, fd, EV_READ);
    ev_io_init(&c->wio, on_write, fd, EV_WRITE);
    ev_timer_init(&c->timer, on_timer, cfg->hello_timeout > 0 ? cfg->hello_timeout : 5.0, 0.);
    c->rio.data = c->wio.data = c->timer.data = c;
    ev_io_start(loop, &c->rio);
    ev_timer_start(loop, &c->timer);
    return c;
}

/* Closes the socket; memory lives on while requests are pending. */
static void conn_teardown(struct spoe_conn *c)
{
    if (c->state == ST_CLOSED)
        return;
    ev_io_stop(c->loop, &c->rio);
    ev_io_stop(c->loop, &c->wio);
    ev_timer_stop(c->loop, &c->timer);
    close(c->fd);
    c->fd = -1;
    c->state = ST_CLOSED;
    c->woff = c->wlen = 0;
    emit(c, SPOE_EV_CLOSED, SPOE_ST_NONE, NULL, 0, NULL);
    conn_unref(c);
}

static void conn_unref(struct spoe_conn *c)
{
    if (--c->refs > 0)
        return;
    if (c->cfg->on_free)
        c->cfg->on_free(c, c->cfg->udata);
    free(c->rbuf);
    free(c->wbuf);
    free(c->frag);
    free(c);
}

void spoe_conn_shutdown(struct spoe_conn *c)
{
    if (c->state >= ST_CLOSING || c->draining)
        return;
    c->draining = true;
    update_read(c);
    c->refs++;
    maybe_finish_drain(c);
    /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): we still hold a reference */
    conn_unref(c);
}

void spoe_conn_close(struct spoe_conn *c)
{
    conn_teardown(c);
}

void spoe_conn_set_udata(struct spoe_conn *c, void *udata)
{
    c->udata = udata;
}

void *spoe_conn_udata(const struct spoe_conn *c)
{
    return c->udata;
}

unsigned spoe_conn_inflight(const struct spoe_conn *c)
{
    return c->inflight;
}

uint32_t spoe_conn_frame_size(const struct spoe_conn *c)
{
    return c->frame_size;
}

const char *spoe_conn_engine_id(const struct spoe_conn *c)
{
    return c->engine_id;
}

uint64_t spoe_req_stream_id(const struct spoe_req *r)
{
    return r->stream_id;
}

uint64_t spoe_req_frame_id(const struct spoe_req *r)
{
    return r->frame_id;
}

size_t spoe_req_max_actions(const struct spoe_req *r)
{
    /* The frame holds type, flags and the two ids before the actions. */
    size_t hdr = 5;
    uint8_t tmp[SPOE_VARINT_MAX];

    hdr += (size_t)spoe_varint_encode(r->stream_id, tmp, sizeof(tmp));
    hdr += (size_t)spoe_varint_encode(r->frame_id, tmp, sizeof(tmp));
    return r->conn->frame_size > hdr ? r->conn->frame_size - hdr : 0;
}

bool spoe_req_alive(const struct spoe_req *r)
{
    return r->conn->state == ST_READY;
}

int spoe_req_ack(struct spoe_req *r, const uint8_t *actions, size_t len)
{
    struct spoe_conn *c = r->conn;
    int ret = 0;

    c->inflight--;
    if (c->state == ST_READY) {
        size_t need = SPOE_HDR_MAX + 4 + len;
        struct spoe_wbuf w;
        long n;

        if (len > spoe_req_max_actions(r)) {
            emit(c, SPOE_EV_ACK_TOO_BIG, SPOE_ST_TOO_BIG, NULL, 0, NULL);
            len = 0;
            ret = -1;
        }
        if (out_reserve(c, need) == 0) {
            spoe_wbuf_init(&w, c->wbuf + c->wlen, need);
            spoe_frame_begin(&w, SPOE_FRM_ACK, SPOE_FL_FIN, r->stream_id, r->frame_id);
            spoe_put_bytes(&w, actions, len);
            n = spoe_frame_end(&w, 0, c->frame_size);
            if (n > 0)
                c->wlen += (size_t)n;
        } else {
            ret = -1;
        }
        if (!c->in_read)
            conn_flush(c);
        /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): we still hold a reference */
        if (c->state == ST_READY) {
            update_read(c);
            maybe_finish_drain(c);
        }
    } else {
        ret = -2;
    }
    free(r);
    /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): we still hold a reference */
    conn_unref(c);
    return ret;
}
