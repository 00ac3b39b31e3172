#include "worker.h"

#include <errno.h>
#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "net.h"
#include "spoe.h"
#include "stats.h"

struct listener {
    ev_io io;
    struct worker *w;
};

/* The worker's bookkeeping for one SPOP connection. */
struct conn_node {
    struct conn_node *prev;
    struct conn_node *next;
    struct spoe_conn *conn;
};

struct worker {
    unsigned id;
    pthread_t thread;
    bool started;
    struct ev_loop *loop;
    ev_async wake;
    ev_timer accept_retry;
    ev_timer drain_timer;

    struct listener *ls;
    unsigned nls;

    struct spoa_conf *conf;                /* owned by this thread */
    _Atomic(struct spoa_conf *) next_conf; /* handed over by worker_reload() */
    atomic_bool stop_requested;
    bool stopping;

    struct spoe_conn_cfg spoe;
    struct conn_node conns; /* list head */
    unsigned nconns;
    unsigned max_conns;    /* of the process, all workers together */
    unsigned refused;      /* since the last spop_conn_limit warning */
    double refused_logged; /* ev_now() of that warning */

    struct handler *handler;
    struct spoa_stats *stats;
};

static void on_notify(struct spoe_req *req, struct spoe_cur msgs, void *udata)
{
    struct worker *w = udata;

    handler_notify(w->handler, req, msgs, w->conf);
}

static void on_event(struct spoe_conn *conn, const struct spoe_event *ev, void *udata)
{
    struct worker *w = udata;
    char q[160];

    switch (ev->kind) {
    case SPOE_EV_HELLO:
        log_debug("spop_hello", "worker=%u frame_size=%u healthcheck=%d engine=%s", w->id,
                  spoe_conn_frame_size(conn), ev->hello->healthcheck,
                  log_quote(q, sizeof(q), ev->hello->engine_id ? ev->hello->engine_id : "",
                            ev->hello->engine_id_len));
        break;
    case SPOE_EV_DISCONNECT:
        log_debug("spop_haproxy_disconnect", "worker=%u status=%d message=%s", w->id, ev->status,
                  log_quote(q, sizeof(q), ev->message ? ev->message : "", ev->message_len));
        break;
    case SPOE_EV_ERROR:
        metrics_counter_inc(w->stats->spop_errors);
        log_warning("spop_error", "worker=%u status=%d reason=%s", w->id, ev->status,
                    log_quote(q, sizeof(q), ev->message, strlen(ev->message)));
        break;
    case SPOE_EV_ACK_TOO_BIG:
        log_warning("spop_ack_too_big", "worker=%u frame_size=%u", w->id,
                    spoe_conn_frame_size(conn));
        break;
    case SPOE_EV_ABORTED:
        metrics_counter_inc(w->stats->spop_aborted);
        log_debug("spop_aborted", "worker=%u", w->id);
        break;
    case SPOE_EV_CLOSED:
        break;
    }
}

static void maybe_exit(struct worker *w)
{
    if (w->stopping && w->nconns == 0)
        ev_break(w->loop, EVBREAK_ALL);
}

static void on_free(struct spoe_conn *conn, void *udata)
{
    struct worker *w = udata;
    struct conn_node *n = spoe_conn_udata(conn);

    n->prev->next = n->next;
    n->next->prev = n->prev;
    free(n);
    w->nconns--;
    atomic_fetch_sub(&w->stats->spop_live, 1);
    metrics_gauge_add(w->stats->spop_open, -1);
    maybe_exit(w);
}

static void stop_listeners(struct worker *w)
{
    for (unsigned i = 0; i < w->nls; i++)
        ev_io_stop(w->loop, &w->ls[i].io);
    ev_timer_stop(w->loop, &w->accept_retry);
}

static void on_accept_retry(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct worker *w = t->data;

    for (unsigned i = 0; i < w->nls; i++)
        ev_io_start(loop, &w->ls[i].io);
}

/* Over the limit, the connection is closed at once: HAProxy sees it fail and
 * the request fails open, while the descriptors Valkey, the delivery path and
 * the operator socket need are still there. One warning a second at most. */
static bool over_limit(struct worker *w, int fd)
{
    double now;

    if (atomic_fetch_add(&w->stats->spop_live, 1) < w->max_conns)
        return false;
    atomic_fetch_sub(&w->stats->spop_live, 1);
    close(fd);
    metrics_counter_inc(w->stats->spop_refused);
    w->refused++;
    now = ev_now(w->loop);
    if (now - w->refused_logged >= 1.0) {
        log_warning("spop_conn_limit", "worker=%u max_connections=%u refused=%u", w->id,
                    w->max_conns, w->refused);
        w->refused_logged = now;
        w->refused = 0;
    }
    return true;
}

static void on_accept(struct ev_loop *loop, ev_io *io, int revents)
{
    struct listener *l = (struct listener *)io;
    struct worker *w = l->w;

    /* Bounded so that one busy listener cannot starve the connections. */
    for (int i = 0; i < 64; i++) {
        struct conn_node *n;
        int fd = net_accept(io->fd);

        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: pause instead of spinning on a ready socket. */
                log_warning("accept_paused", "worker=%u error=%s", w->id, strerror(errno));
                for (unsigned j = 0; j < w->nls; j++)
                    ev_io_stop(loop, &w->ls[j].io);
                ev_timer_set(&w->accept_retry, 0.1, 0.);
                ev_timer_start(loop, &w->accept_retry);
            }
            return;
        }
        if (over_limit(w, fd))
            continue;
        n = malloc(sizeof(*n));
        if (!n) {
            atomic_fetch_sub(&w->stats->spop_live, 1);
            close(fd);
            return;
        }
        n->conn = spoe_conn_new(loop, fd, &w->spoe);
        if (!n->conn) {
            atomic_fetch_sub(&w->stats->spop_live, 1);
            free(n);
            return;
        }
        spoe_conn_set_udata(n->conn, n);
        n->next = w->conns.next;
        n->prev = &w->conns;
        w->conns.next->prev = n;
        w->conns.next = n;
        w->nconns++;
        metrics_counter_inc(w->stats->spop_connections);
        metrics_gauge_add(w->stats->spop_open, 1);
    }
}

static void on_drain_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct worker *w = t->data;

    log_warning("drain_timeout", "worker=%u connections=%u", w->id, w->nconns);
    while (w->conns.next != &w->conns) {
        struct conn_node *n = w->conns.next;

        spoe_conn_close(n->conn); /* frees n through on_free once unreferenced */
        if (w->conns.next == n) {
            /* Still referenced by pending requests: unlink it ourselves. */
            n->prev->next = n->next;
            n->next->prev = n->prev;
            n->prev = n->next = n;
        }
    }
    ev_break(loop, EVBREAK_ALL);
}

static void begin_stop(struct worker *w)
{
    struct conn_node *n, *next;

    if (w->stopping)
        return;
    w->stopping = true;
    stop_listeners(w);
    for (n = w->conns.next; n != &w->conns; n = next) {
        next = n->next;
        spoe_conn_shutdown(n->conn);
    }
    ev_timer_set(&w->drain_timer, w->conf->drain_timeout, 0.);
    ev_timer_start(w->loop, &w->drain_timer);
    maybe_exit(w);
}

static void on_wake(struct ev_loop *loop, ev_async *a, int revents)
{
    struct worker *w = a->data;
    struct spoa_conf *c = atomic_exchange(&w->next_conf, NULL);

    if (c) {
        spoa_conf_release(w->conf);
        w->conf = c;
    }
    if (atomic_load(&w->stop_requested))
        begin_stop(w);
}

struct worker *worker_new(unsigned id, struct spoa_conf *conf, const int *fds, unsigned nfds,
                          struct deliver *deliver, struct l1 *l1, struct lane *lane,
                          struct fill *fill, struct spoa_stats *stats)
{
    struct worker *w = calloc(1, sizeof(*w));

    if (!w)
        return NULL;
    w->id = id;
    w->loop = ev_loop_new(EVFLAG_AUTO);
    w->ls = calloc(nfds ? nfds : 1, sizeof(*w->ls));
    if (w->loop)
        w->handler = handler_new(w->loop, id, conf, deliver, l1, lane, fill, stats);
    w->stats = stats;
    if (!w->loop || !w->ls || !w->handler) {
        worker_free(w);
        return NULL;
    }
    spoa_conf_hold(conf);
    w->conf = conf;
    atomic_init(&w->next_conf, NULL);
    atomic_init(&w->stop_requested, false);
    w->conns.next = w->conns.prev = &w->conns;
    w->max_conns = spoa_conf_max_connections(conf);
    w->spoe = (struct spoe_conn_cfg){
        .max_frame_size = conf->max_frame_size,
        .max_reassembly = conf->max_reassembly,
        .max_inflight = conf->max_inflight,
        .hello_timeout = conf->hello_timeout,
        .idle_timeout = conf->idle_timeout,
        .pipelining = true,
        .fragmentation = true,
        .on_notify = on_notify,
        .on_event = on_event,
        .on_free = on_free,
        .udata = w,
    };
    w->nls = nfds;
    for (unsigned i = 0; i < nfds; i++) {
        w->ls[i].w = w;
        ev_io_init(&w->ls[i].io, on_accept, fds[i], EV_READ);
        ev_io_start(w->loop, &w->ls[i].io);
    }
    ev_async_init(&w->wake, on_wake);
    w->wake.data = w;
    ev_async_start(w->loop, &w->wake);
    ev_timer_init(&w->accept_retry, on_accept_retry, 0.1, 0.);
    w->accept_retry.data = w;
    ev_timer_init(&w->drain_timer, on_drain_timeout, 5.0, 0.);
    w->drain_timer.data = w;
    return w;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    ev_run(w->loop, 0);
    /* Pending lookups answer now (to the origin), on this thread. */
    handler_free(w->handler);
    w->handler = NULL;
    return NULL;
}

int worker_start(struct worker *w)
{
    int r = pthread_create(&w->thread, NULL, worker_main, w);

    if (r != 0) {
        errno = r;
        return -1;
    }
    w->started = true;
    return 0;
}

void worker_reload(struct worker *w, struct spoa_conf *conf)
{
    struct spoa_conf *old;

    spoa_conf_hold(conf);
    old = atomic_exchange(&w->next_conf, conf);
    if (old)
        spoa_conf_release(old);
    ev_async_send(w->loop, &w->wake);
}

void worker_stop(struct worker *w)
{
    atomic_store(&w->stop_requested, true);
    ev_async_send(w->loop, &w->wake);
}

void worker_join(struct worker *w)
{
    if (w->started)
        pthread_join(w->thread, NULL);
    w->started = false;
}

void worker_free(struct worker *w)
{
    struct spoa_conf *c;

    if (!w)
        return;
    handler_free(w->handler);
    if (w->loop)
        ev_loop_destroy(w->loop);
    c = atomic_exchange(&w->next_conf, NULL);
    if (c)
        spoa_conf_release(c);
    if (w->conf)
        spoa_conf_release(w->conf);
    free(w->ls);
    free(w);
}
