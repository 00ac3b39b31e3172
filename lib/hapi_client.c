/* HAProxy Runtime API client: one command per connection.
 * See hapi_client.h for why the non-interactive mode. */
#include "hapi_client.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

struct hapi_req {
    struct hapi_req *next;
    hapi_cb *cb;
    void *priv;
    size_t len; /* of cmd, "\n" included */
    char cmd[]; /* "<command>\n" */
};

struct hapi {
    struct ev_loop *loop;
    struct sockaddr_un sa;
    socklen_t salen;
    double timeout;
    size_t max_answer, max_queue;

    struct hapi_req *head, *tail; /* waiting */
    size_t nwait;
    struct hapi_req *cur; /* running: owns fd, io, timer */
    int fd;
    bool connecting;
    size_t woff;
    char *buf; /* answer of cur, NUL-terminated */
    size_t blen, bcap;

    ev_io io;
    ev_timer timer;
    ev_timer kick; /* starts the queue from the loop, never from hapi_command() */

    int depth;  /* > 0 while user callbacks may be on the stack */
    bool freed; /* hapi_free() called: destroy when depth drops to 0 */

    struct hapi_counters ctr;
    char last_err[512]; /* last error logged, for hapi_report_error() */
    bool in_error;
    uint64_t suppressed;
};

static void pump(struct hapi *h);

const char *hapi_strerror(int status)
{
    switch (status) {
    case HAPI_OK:
        return "ok";
    case HAPI_ECONNECT:
        return "connect failed";
    case HAPI_EIO:
        return "i/o error";
    case HAPI_ETIMEOUT:
        return "timeout";
    case HAPI_ETOOBIG:
        return "answer too large";
    case HAPI_EEMPTY:
        return "closed without an answer";
    case HAPI_EABORT:
        return "aborted";
    case HAPI_EANSWER:
        return "unexpected answer";
    }
    return "unknown error";
}

static void kick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    pump(w->data);
}

static void destroy(struct hapi *h)
{
    ev_io_stop(h->loop, &h->io);
    ev_timer_stop(h->loop, &h->timer);
    ev_timer_stop(h->loop, &h->kick);
    if (h->fd >= 0)
        close(h->fd);
    free(h->buf);
    free(h);
}

static void close_conn(struct hapi *h)
{
    ev_io_stop(h->loop, &h->io);
    ev_timer_stop(h->loop, &h->timer);
    if (h->fd >= 0) {
        close(h->fd);
        h->fd = -1;
    }
}

/* Hands r's outcome to its owner and frees r. The caller holds depth. */
static void deliver(struct hapi *h, struct hapi_req *r, int status, const char *ans, size_t len)
{
    h->ctr.commands++;
    if (status != HAPI_OK) {
        h->ctr.failures++;
        if (status != HAPI_EABORT) {
            char cmd[HAPI_CMD_MAX + 1];

            /* Transport failures are logged here, once per incident. */
            memcpy(cmd, r->cmd, r->len - 1);
            cmd[r->len - 1] = '\0';
            hapi_report_error(h, cmd, status, NULL);
        }
    }
    r->cb(h, status, status == HAPI_OK ? ans : NULL, status == HAPI_OK ? len : 0, r->priv);
    free(r);
}

/* The running command ended: close its connection, call back, go on. */
static void finish(struct hapi *h, int status)
{
    struct hapi_req *r = h->cur;

    close_conn(h);
    h->cur = NULL;
    if (status == HAPI_OK && h->blen == 0)
        status = HAPI_EEMPTY;
    h->depth++;
    deliver(h, r, status, h->buf, h->blen);
    h->depth--;
    if (h->freed) {
        if (!h->depth)
            destroy(h);
        return;
    }
    pump(h);
}

static int grow(struct hapi *h)
{
    size_t ncap = h->bcap ? h->bcap * 2 : 4096;
    char *nb;

    if (ncap > h->max_answer + 2)
        ncap = h->max_answer + 2;
    if (ncap <= h->bcap)
        return 0;
    nb = realloc(h->buf, ncap);
    if (!nb)
        return -1;
    h->buf = nb;
    h->bcap = ncap;
    return 0;
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct hapi *h = w->data;
    struct hapi_req *r = h->cur;

    if (h->connecting) {
        int soerr = 0;
        socklen_t sl = sizeof(soerr);

        if (getsockopt(h->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr) {
            finish(h, HAPI_ECONNECT);
            return;
        }
        h->connecting = false;
    }
    if (h->woff < r->len) {
        ssize_t n = send(h->fd, r->cmd + h->woff, r->len - h->woff, MSG_NOSIGNAL);

        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                finish(h, HAPI_EIO);
            return;
        }
        h->woff += (size_t)n;
        if (h->woff < r->len)
            return;
        ev_io_stop(loop, &h->io);
        ev_io_set(&h->io, h->fd, EV_READ);
        ev_io_start(loop, &h->io);
        return;
    }
    for (;;) {
        ssize_t n;

        /* Room for one byte beyond the bound (to detect it) and the NUL. */
        if (h->bcap - h->blen < 2 && grow(h) < 0) {
            finish(h, HAPI_EIO);
            return;
        }
        n = read(h->fd, h->buf + h->blen, h->bcap - h->blen - 1);
        if (n > 0) {
            h->blen += (size_t)n;
            h->buf[h->blen] = '\0';
            if (h->blen > h->max_answer) {
                finish(h, HAPI_ETOOBIG);
                return;
            }
            continue;
        }
        if (n == 0) {
            finish(h, HAPI_OK);
            return;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        finish(h, HAPI_EIO);
        return;
    }
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    finish(w->data, HAPI_ETIMEOUT);
}

/* Opens the connection of r. Returns 0 (r is now h->cur) or a status. */
static int start(struct hapi *h, struct hapi_req *r)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return HAPI_ECONNECT;
    h->connecting = false;
    if (connect(fd, (struct sockaddr *)&h->sa, h->salen) < 0) {
        /* AF_UNIX answers at once; EAGAIN means a full backlog, which
         * cannot be waited for: fail, the caller retries on its timer. */
        if (errno != EINPROGRESS) {
            close(fd);
            return HAPI_ECONNECT;
        }
        h->connecting = true;
    }
    h->fd = fd;
    h->cur = r;
    h->woff = 0;
    h->blen = 0;
    if (h->buf)
        h->buf[0] = '\0';
    ev_io_set(&h->io, fd, EV_WRITE);
    ev_io_start(h->loop, &h->io);
    ev_timer_set(&h->timer, h->timeout, 0.);
    ev_timer_start(h->loop, &h->timer);
    return 0;
}

static void pump(struct hapi *h)
{
    h->depth++;
    while (!h->freed && !h->cur && h->head) {
        struct hapi_req *r = h->head;
        int st;

        h->head = r->next;
        if (!h->head)
            h->tail = NULL;
        h->nwait--;
        st = start(h, r);
        if (st != 0)
            deliver(h, r, st, NULL, 0);
    }
    h->depth--;
    if (h->freed && !h->depth)
        destroy(h);
}

struct hapi *hapi_new(struct ev_loop *loop, const char *sock_path, double timeout)
{
    struct hapi *h;
    size_t pl = sock_path ? strlen(sock_path) : 0;

    if (!loop || !pl || pl >= sizeof(((struct sockaddr_un *)0)->sun_path) || !(timeout > 0))
        return NULL;
    h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->loop = loop;
    h->sa.sun_family = AF_UNIX;
    memcpy(h->sa.sun_path, sock_path, pl + 1);
    h->salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + pl + 1);
    h->timeout = timeout;
    h->max_answer = HAPI_DEFAULT_MAX_ANSWER;
    h->max_queue = HAPI_DEFAULT_MAX_QUEUE;
    h->fd = -1;
    ev_io_init(&h->io, io_cb, -1, EV_WRITE);
    h->io.data = h;
    ev_timer_init(&h->timer, timer_cb, timeout, 0.);
    h->timer.data = h;
    ev_timer_init(&h->kick, kick_cb, 0., 0.);
    h->kick.data = h;
    return h;
}

void hapi_free(struct hapi *h)
{
    if (!h || h->freed)
        return;
    h->freed = true;
    h->depth++;
    if (h->cur) {
        struct hapi_req *r = h->cur;

        close_conn(h);
        h->cur = NULL;
        deliver(h, r, HAPI_EABORT, NULL, 0);
    }
    while (h->head) {
        struct hapi_req *r = h->head;

        h->head = r->next;
        h->nwait--;
        deliver(h, r, HAPI_EABORT, NULL, 0);
    }
    h->tail = NULL;
    h->depth--;
    if (!h->depth)
        destroy(h);
}

void hapi_set_limits(struct hapi *h, size_t max_answer, size_t max_queue)
{
    if (max_answer)
        h->max_answer = max_answer;
    if (max_queue)
        h->max_queue = max_queue;
}

const char *hapi_path(const struct hapi *h)
{
    return h->sa.sun_path;
}

size_t hapi_queued(const struct hapi *h)
{
    return h->nwait + (h->cur != NULL);
}

void hapi_get_counters(const struct hapi *h, struct hapi_counters *out)
{
    *out = h->ctr;
}

int hapi_command(struct hapi *h, const char *cmd, hapi_cb *cb, void *priv)
{
    size_t len = cmd ? strlen(cmd) : 0;
    struct hapi_req *r;

    if (h->freed || !cb || !len || len > HAPI_CMD_MAX || strpbrk(cmd, "\r\n;\\"))
        return -1;
    if (h->nwait >= h->max_queue)
        return -1;
    r = malloc(sizeof(*r) + len + 1);
    if (!r)
        return -1;
    r->next = NULL;
    r->cb = cb;
    r->priv = priv;
    memcpy(r->cmd, cmd, len);
    r->cmd[len] = '\n';
    r->len = len + 1;
    if (h->tail)
        h->tail->next = r;
    else
        h->head = r;
    h->tail = r;
    h->nwait++;
    if (!h->cur && !ev_is_active(&h->kick))
        ev_timer_start(h->loop, &h->kick);
    return 0;
}

void hapi_report_error(struct hapi *h, const char *cmd, int status, const char *detail)
{
    char key[sizeof(h->last_err)];
    char qc[HAPI_CMD_MAX + 8], qd[256];

    if (status == HAPI_EANSWER)
        h->ctr.bad_answers++;
    snprintf(key, sizeof(key), "%s|%d|%s", cmd ? cmd : "", status, detail ? detail : "");
    if (h->in_error && strcmp(key, h->last_err) == 0) {
        h->suppressed++;
        log_debug("haproxy_api_error_repeat", "socket=%s count=%" PRIu64, h->sa.sun_path,
                  h->suppressed);
        return;
    }
    str_copy(h->last_err, key, sizeof(h->last_err));
    h->in_error = true;
    h->suppressed = 0;
    log_quote(qc, sizeof(qc), cmd ? cmd : "", cmd ? strlen(cmd) : 0);
    log_quote(qd, sizeof(qd), detail ? detail : "", detail ? strlen(detail) : 0);
    log_warning("haproxy_api_error", "socket=%s cmd=%s error=\"%s\" detail=%s", h->sa.sun_path, qc,
                hapi_strerror(status), qd);
}

void hapi_report_success(struct hapi *h)
{
    if (!h->in_error)
        return;
    log_notice("haproxy_api_recovered", "socket=%s repeats=%" PRIu64, h->sa.sun_path,
               h->suppressed);
    h->in_error = false;
    h->suppressed = 0;
    h->last_err[0] = '\0';
}
