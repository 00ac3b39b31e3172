#include "deliver.h"

#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "fill_key.h"
#include "log.h"
#include "net.h"

#define DEF_MAX_PARKED 1024
#define DEF_TTL 10.0
#define DEF_THREADS 2

struct parked {
    char token[DELIVER_TOKEN_SIZE];
    struct deliver_item item;
    void (*release)(void *);
    void *arg;
    enum isr_state state;
    bool not_modified;
    struct isr_conf conf;
    double expires;
};

struct deliver {
    struct MHD_Daemon *daemon;
    pthread_mutex_t lock;
    struct parked **slot; /* open addressing, capacity cap (a power of two) */
    unsigned cap;
    unsigned count;
    unsigned max_parked;
    double ttl;
    struct lane *lane;
    struct fill *fill;
    struct deliver_stats st;
};

static double now_s(void)
{
    return now_mono();
}

static uint64_t token_hash(const char *t)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a: tokens are random already */

    for (; *t; t++)
        h = (h ^ (unsigned char)*t) * 1099511628211ULL;
    return h;
}

static void parked_free(struct parked *p)
{
    if (p) {
        p->release(p->arg);
        free(p);
    }
}

/* Removes and returns the item at i, re-inserting the run behind it
 * (backward-shift deletion keeps probing correct). Lock held. */
static struct parked *take_at(struct deliver *d, unsigned i)
{
    struct parked *p = d->slot[i];
    unsigned j = i;

    d->slot[i] = NULL;
    d->count--;
    for (;;) {
        struct parked *q;
        unsigned home;

        j = (j + 1) & (d->cap - 1);
        q = d->slot[j];
        if (!q)
            break;
        home = (unsigned)token_hash(q->token) & (d->cap - 1);
        /* Move q back to i when i lies on its probe path. */
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            d->slot[i] = q;
            d->slot[j] = NULL;
            i = j;
        }
    }
    return p;
}

static void sweep(struct deliver *d, double now)
{
    for (unsigned i = 0; i < d->cap; i++) {
        while (d->slot[i] && d->slot[i]->expires <= now) {
            parked_free(take_at(d, i));
            d->st.expired++;
        }
    }
}

int deliver_put(struct deliver *d, const struct deliver_item *item, void (*release)(void *),
                void *arg, enum isr_state st, bool not_modified, const struct isr_conf *conf,
                char token[DELIVER_TOKEN_SIZE])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char rnd[16];
    struct parked *p;
    double now = now_s();
    unsigned i;

    /* Unguessable: a client cannot ask for a page parked for another one. */
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        return -1;
    p = calloc(1, sizeof(*p));
    if (!p)
        return -1;
    for (i = 0; i < sizeof(rnd); i++) {
        p->token[2 * i] = hex[rnd[i] >> 4];
        p->token[2 * i + 1] = hex[rnd[i] & 15];
    }
    p->token[32] = '\0';
    p->item = *item;
    p->release = release;
    p->arg = arg;
    p->state = st;
    p->not_modified = not_modified;
    p->conf = *conf;
    p->expires = now + d->ttl;
    pthread_mutex_lock(&d->lock);
    /* Unclaimed pages (a client gone between the ACK and HAProxy's request)
     * must not pile up: sweep now and then, and whenever full. */
    if (d->count >= d->max_parked || d->st.parked % 64 == 0)
        sweep(d, now);
    if (d->count >= d->max_parked) {
        d->st.refused++;
        pthread_mutex_unlock(&d->lock);
        free(p);
        return -1;
    }
    i = (unsigned)token_hash(p->token) & (d->cap - 1);
    while (d->slot[i])
        i = (i + 1) & (d->cap - 1);
    d->slot[i] = p;
    d->count++;
    d->st.parked++;
    pthread_mutex_unlock(&d->lock);
    memcpy(token, p->token, DELIVER_TOKEN_SIZE);
    return 0;
}

static struct parked *take(struct deliver *d, const char *token)
{
    struct parked *p = NULL;
    unsigned i;

    if (strlen(token) != DELIVER_TOKEN_SIZE - 1)
        return NULL;
    pthread_mutex_lock(&d->lock);
    i = (unsigned)token_hash(token) & (d->cap - 1);
    while (d->slot[i]) {
        if (strcmp(d->slot[i]->token, token) == 0) {
            p = take_at(d, i);
            break;
        }
        i = (i + 1) & (d->cap - 1);
    }
    if (p && p->expires <= now_s()) {
        parked_free(p);
        p = NULL;
        d->st.expired++;
    }
    if (p)
        d->st.delivered++;
    else
        d->st.unknown++;
    pthread_mutex_unlock(&d->lock);
    return p;
}

static void free_parked_cb(void *cls)
{
    parked_free(cls);
}

static enum MHD_Result simple(struct MHD_Connection *conn, unsigned status, const char *text)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result rc;

    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static void release_ref_cb(void *cls)
{
    l1_release(cls);
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* 16 lower-case hex digits: an entry id. */
static int parse_id(const char *p, uint64_t *id)
{
    *id = 0;
    for (int i = 0; i < 16; i++) {
        int v = hexval(p[i]);

        if (v < 0)
            return -1;
        *id = *id << 4 | (uint64_t)v;
    }
    return 0;
}

/* A fill of HAProxy's cache: the entry's answer v (sg: the segment of an
 * ISR_SEGMENT) as a FRESH HIT, in gzip when asked for and Next would
 * compress it. Takes ref. */
static enum MHD_Result serve_fill(struct MHD_Connection *conn, struct l1_ref *ref,
                                  const struct isr_conf *isr, enum isr_variant v,
                                  const struct isr_segment *sg, bool gz)
{
    const struct isr_entry *e = l1_ref_entry(ref);
    const struct isr_coded *copy;
    struct isr_headers hs;
    struct MHD_Response *r;
    enum MHD_Result rc;
    const void *body;
    size_t len;

    if (isr_variant_headers(e, v, ISR_FRESH, false, isr, &hs) < 0) {
        l1_release(ref);
        return simple(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "edge page not servable\n");
    }
    switch (v) {
    case ISR_RSC:
        body = e->rsc;
        len = e->rsc_len;
        copy = &e->rsc_gz;
        break;
    case ISR_SEGMENT:
        body = sg->data;
        len = sg->len;
        copy = &sg->gz;
        break;
    default:
        body = e->body;
        len = e->body_len;
        copy = &e->body_gz;
        /* Next compresses a page when its compress option is on and the
         * page is big enough; one is offered for gzip clients only with its
         * gzip copy, so none here means gzip-level 0: the page as it is. */
        gz = gz && isr->compress && e->body_len >= ISR_COMPRESS_MIN;
        break;
    }
    gz = gz && copy->data;
    if (gz) {
        body = copy->data;
        len = copy->len;
    }
    r = MHD_create_response_from_buffer_with_free_callback_cls(len, (void *)body, release_ref_cb,
                                                               ref);
    if (!r) {
        l1_release(ref);
        return MHD_NO;
    }
    for (size_t i = 0; i < hs.n; i++)
        MHD_add_response_header(r, hs.h[i].name, hs.h[i].value);
    if (gz)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_ENCODING, "gzip");
    rc = MHD_queue_response(conn, (unsigned)isr_rsc_status(e, v), r);
    MHD_destroy_response(r);
    return rc;
}

/* HAProxy's health check of the lane, and its cache fills:
 * GET /.cedra/lane/<16 hex digits: entry id><path>. */
static enum MHD_Result lane_request(struct deliver *d, struct MHD_Connection *conn, const char *url)
{
    const char *p = url + strlen(LANE_FILL_PREFIX);
    struct isr_conf isr;
    struct l1_ref *ref;
    uint64_t id = 0;
    bool grace, gz = false;

    if (strcmp(url, LANE_HEALTH_PATH) == 0) {
        /* Only the HAProxy process the lane was set up in may use it. */
        const char *pid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, LANE_PID_HEADER);
        uint64_t v = 0;

        for (const char *q = pid; q && *q >= '0' && *q <= '9' && v < UINT64_MAX / 10 - 9; q++)
            v = v * 10 + (uint64_t)(*q - '0');
        return d->lane && v && lane_up(d->lane, v)
                   ? simple(conn, MHD_HTTP_OK, "up\n")
                   : simple(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "down\n");
    }
    if (!d->lane)
        return simple(conn, MHD_HTTP_NOT_FOUND, "no lane\n");
    if (parse_id(p, &id) < 0)
        return simple(conn, MHD_HTTP_NOT_FOUND, "bad lane id\n");
    p += 16;
    /* <id>.gz: the copy for a client that accepts gzip (haproxy.cfg lists
     * the Accept-Encoding values, all of which make Next choose gzip). */
    if (strncmp(p, ".gz/", 4) == 0) {
        gz = true;
        p += 3;
    }
    if (*p != '/')
        return simple(conn, MHD_HTTP_NOT_FOUND, "bad lane path\n");
    ref = lane_fill(d->lane, id, p, strlen(p), &isr, &grace);
    if (!ref) {
        /* HAProxy read a map entry we no longer know: only possible once the
         * lane has failed, and its health check closes it. */
        log_warning("lane_unknown_fill", "id=%016" PRIx64, id);
        return simple(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "edge page gone, retry\n");
    }
    return serve_fill(conn, ref, &isr, ISR_HTML, NULL, gz);
}

/* HAProxy's cache fills for "haproxy-cache on" answers: GET FILL_PREFIX
 * <key> (fill_key.h). The generation is part of HAProxy's cache key only (a
 * reload may change the headers); the answer is the one the entry offered
 * under the id gives. */
static enum MHD_Result page_request(struct deliver *d, struct MHD_Connection *conn, const char *url)
{
    char seg[ISR_MAX_SEGMENT_PATH];
    const struct isr_segment *sg = NULL;
    struct fill_key k;
    struct isr_conf isr;
    struct l1_ref *ref;
    bool grace;

    if (!d->fill)
        return simple(conn, MHD_HTTP_NOT_FOUND, "no edge cache\n");
    if (fill_key_parse(url + strlen(FILL_PREFIX), &k, seg) < 0)
        return simple(conn, MHD_HTTP_NOT_FOUND, "bad page key\n");
    ref = fill_get(d->fill, k.id, &isr, &grace);
    if (!ref) {
        /* Only an id from an ACK gets here, and it stays known for the
         * grace period after its entry left the in-process cache: HAProxy
         * held the request longer than that, or cedra-spoa restarted. */
        log_warning("page_unknown_fill", "id=%016" PRIx64, k.id);
        return simple(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "edge page gone, retry\n");
    }
    if (k.variant == ISR_SEGMENT) {
        sg = isr_segment_find(l1_ref_entry(ref), k.segment, k.segment_len);
        if (!sg) {
            l1_release(ref);
            return simple(conn, MHD_HTTP_NOT_FOUND, "no such segment\n");
        }
    }
    return serve_fill(conn, ref, &isr, k.variant, sg, k.gzip);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    struct deliver *d = cls;
    const char *token;
    struct parked *p;
    struct isr_headers hs;
    struct MHD_Response *r;
    enum MHD_Result rc;
    unsigned status;

    /* Answer on the second call, once MHD has the whole request: a response
     * queued from the first one (headers only) makes MHD close the
     * connection after it, and HAProxy would then open one per page. */
    if (*con_cls == NULL) {
        static int seen;

        *con_cls = &seen;
        return MHD_YES;
    }
    if (*upload_size != 0) {
        *upload_size = 0; /* a body on a GET: read and ignored */
        return MHD_YES;
    }
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return simple(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
    if (strncmp(url, LANE_FILL_PREFIX, strlen(LANE_FILL_PREFIX)) == 0)
        return lane_request(d, conn, url);
    if (strncmp(url, FILL_PREFIX, strlen(FILL_PREFIX)) == 0)
        return page_request(d, conn, url);
    token = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, DELIVER_HEADER);
    if (!token)
        return simple(conn, MHD_HTTP_NOT_FOUND, "no token\n");
    p = take(d, token);
    if (!p) {
        /* Parked too long or a restart in between: HAProxy asked for a page
         * we no longer hold. */
        log_warning("deliver_unknown_token", "url_len=%zu", strlen(url));
        return simple(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "edge page expired, retry\n");
    }
    if (isr_variant_headers(p->item.entry, p->item.variant, p->state, p->not_modified, &p->conf,
                            &hs) < 0) {
        parked_free(p);
        return simple(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "edge page not servable\n");
    }
    status = p->not_modified ? 304u : (unsigned)isr_rsc_status(p->item.entry, p->item.variant);
    if (p->not_modified) {
        r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    } else {
        /* Zero copy: the body is the parked entry's, freed once sent. */
        r = MHD_create_response_from_buffer_with_free_callback_cls(
            p->item.body_len, (void *)p->item.body, free_parked_cb, p);
    }
    if (!r) {
        parked_free(p);
        return MHD_NO;
    }
    for (size_t i = 0; i < hs.n; i++)
        MHD_add_response_header(r, hs.h[i].name, hs.h[i].value);
    /* Last, where `compression` sets it. */
    if (p->item.gzip && !p->not_modified)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_ENCODING, "gzip");
    rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    if (p->not_modified)
        parked_free(p);
    return rc;
}

/* The lane's fill URLs carry the raw path, as HAProxy's map has it: the
 * tokens come in a header, so nothing here needs MHD's unescaping. */
static size_t unescape_none(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls;
    (void)conn;
    return strlen(s);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[256], q[300];
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);

    if (n <= 0)
        return;
    if ((size_t)n >= sizeof(msg))
        n = (int)sizeof(msg) - 1;
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        n--;
    log_warning("deliver_httpd", "msg=%s", log_quote(q, sizeof(q), msg, (size_t)n));
}

struct deliver *deliver_start(const struct deliver_cfg *cfg, char *err, size_t errlen)
{
    struct deliver *d = calloc(1, sizeof(*d));
    int fd;

    if (!d) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->max_parked = cfg->max_parked ? cfg->max_parked : DEF_MAX_PARKED;
    d->ttl = cfg->ttl > 0 ? cfg->ttl : DEF_TTL;
    d->lane = cfg->lane;
    d->fill = cfg->fill;
    for (d->cap = 16; d->cap < d->max_parked * 2; d->cap *= 2)
        ;
    d->slot = calloc(d->cap, sizeof(*d->slot));
    if (!d->slot) {
        free(d);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&d->lock, NULL);
    fd = cfg->fd > 0 ? cfg->fd : net_listen(cfg->listen, 256, false, 0600, err, errlen);
    if (fd < 0) {
        pthread_mutex_destroy(&d->lock);
        free(d->slot);
        free(d);
        return NULL;
    }
    d->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL,
        on_request, d, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL, MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape_none, NULL, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)(cfg->threads ? cfg->threads : DEF_THREADS), MHD_OPTION_CONNECTION_LIMIT, 4096u,
        MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(32 * 1024),
        MHD_OPTION_END);
    if (!d->daemon) {
        snprintf(err, errlen, "cannot start the delivery server on %s", cfg->listen->text);
        close(fd);
        pthread_mutex_destroy(&d->lock);
        free(d->slot);
        free(d);
        return NULL;
    }
    log_info("deliver_listen", "addr=%s", cfg->listen->text);
    return d;
}

void deliver_stop(struct deliver *d)
{
    if (!d)
        return;
    MHD_stop_daemon(d->daemon);
    for (unsigned i = 0; i < d->cap; i++)
        parked_free(d->slot[i]);
    pthread_mutex_destroy(&d->lock);
    free(d->slot);
    free(d);
}

void deliver_get_stats(struct deliver *d, struct deliver_stats *out)
{
    pthread_mutex_lock(&d->lock);
    *out = d->st;
    pthread_mutex_unlock(&d->lock);
}
