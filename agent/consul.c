/* Consul HTTP client: libcurl's multi-socket API on a libev loop.
 *
 * One CURLM per struct consul. curl tells us which sockets to poll
 * (CURLMOPT_SOCKETFUNCTION -> one ev_io each) and when to call it back
 * (CURLMOPT_TIMERFUNCTION -> one ev_timer); every event goes back to curl
 * through curl_multi_socket_action(), then finished transfers are collected
 * with curl_multi_info_read(). Each request is a struct creq with its own easy
 * handle; connections are kept alive in the multi's cache.
 *
 * Blocking queries follow Consul's "Blocking Queries" page: the first query
 * has no index; the next ones send the last X-Consul-Index with ?wait; an
 * index lower than the previous one resets to "no index"; an index below 1 is
 * used as 1; the loop is rate limited (token bucket, burst then a steady
 * rate), never sleeps in the happy case, and backs off with jitter on errors.
 * The client timeout is above wait * 17/16 because Consul adds up to wait/16
 * of jitter. */
#include "consul.h"

#include <curl/curl.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#define REASON_MAX 256
#define TOKEN_MAX 1024
#define NOTE_MAX 512

/* ---- small helpers ----------------------------------------------------------- */

static char *xstrdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static double now_wall(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Percent-encodes everything but RFC 3986 unreserved characters. */
static char *url_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t len = strlen(s);
    char *out = malloc(len * 3 + 1), *o = out;

    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];

        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
            ch == '-' || ch == '.' || ch == '_' || ch == '~') {
            *o++ = (char)ch;
        } else {
            *o++ = '%';
            *o++ = hex[ch >> 4];
            *o++ = hex[ch & 15];
        }
    }
    *o = '\0';
    return out;
}

static char *str_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *str_printf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

/* Go's strconv.ParseBool, which Consul's clients use for CONSUL_HTTP_SSL. */
static int parse_go_bool(const char *s, bool *out)
{
    static const char *const t[] = {"1", "t", "T", "TRUE", "true", "True"};
    static const char *const f[] = {"0", "f", "F", "FALSE", "false", "False"};

    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        if (strcmp(s, t[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcmp(s, f[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

static const char *env(const char *name)
{
    const char *v = getenv(name);

    return v && *v ? v : NULL; /* Consul's clients ignore empty variables */
}

static bool token_ok(const char *s)
{
    size_t len = strlen(s);

    if (len == 0 || len > TOKEN_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return false; /* no CR/LF: it goes into a header line */
    return true;
}

/* ---- configuration ------------------------------------------------------------ */

void consul_cfg_defaults(struct consul_cfg *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->ssl = -1;
    cfg->ssl_verify = -1;
    cfg->wait = 60;
    cfg->timeout_margin = 2;
    cfg->passing_only = true;
    cfg->retry_min = 0.5;
    cfg->retry_max = 30;
    cfg->same_index_interval = 1;
    cfg->rate_burst = 5;
    cfg->rate_interval = 1;
    instances_cfg_defaults(&cfg->inst);
    cfg->request_timeout = 10;
    cfg->connect_timeout = 5;
    cfg->max_body = INSTANCES_BYTES_DEFAULT;
    cfg->shutdown_timeout = 2;
}

const char *consul_err_name(enum consul_err kind)
{
    static const char *const names[CONSUL_ERR_KINDS] = {
        "connect",  "timeout",    "transport", "http_403", "http_404",   "http_4xx",
        "http_5xx", "http_other", "too_big",   "no_index", "bad_answer",
    };

    return (unsigned)kind < CONSUL_ERR_KINDS ? names[kind] : "?";
}

/* ---- objects ------------------------------------------------------------------ */

struct sock {
    ev_io io;
    curl_socket_t fd;
    struct consul *c;
    struct sock *prev, *next;
};

struct creq;
/* kind < 0: an HTTP answer was received (any status); else a transport error. */
typedef void creq_done_fn(struct creq *r, int kind, const char *reason);

struct creq {
    struct consul *c;
    struct creq *prev, *next;
    CURL *easy;
    char *url;
    char *put_body; /* NULL for GET */
    char *body;     /* answer, NUL-terminated */
    size_t len, cap;
    bool too_big;
    bool blocking;
    bool has_index, bad_index;
    uint64_t index;
    long status;
    double started;
    creq_done_fn *done;
    void *owner;
    char errbuf[CURL_ERROR_SIZE];
};

struct consul_watch {
    struct consul *c;
    struct consul_watch *prev, *next;
    char *service, *service_esc;
    consul_pool_cb *on_pool;
    consul_error_cb *on_error;
    void *udata;
    struct creq *req;
    ev_timer timer;
    uint64_t index; /* what the next query sends; 0: no index (first, or reset) */
    bool have;      /* last is valid */
    struct pool_set last;
    double last_start;
    bool last_same; /* the last answer repeated the index */
    double tokens, tokens_at;
    bool failing;
    enum consul_err last_err;
    double failing_since;
    bool busy, dead;  /* in a user callback / freed from one */
    bool zero_warned; /* logged X-Consul-Index 0 once */
    struct consul_watch_stats st;
};

enum reg_state { REG_NONE, REG_NEED, REG_OK };

struct reg {
    char *id, *name, *check_esc, *body;
    char *reg_url, *dereg_url;
    double ttl;
    consul_health_cb *health;
    void *udata;
    ev_timer timer;
    struct creq *req;
    enum reg_state state;
    bool maybe_registered; /* a registration was sent, whatever became of it */
    unsigned failures;
    bool failing;
    int last_health; /* -1 before the first update */
};

struct consul {
    struct ev_loop *loop;
    CURLM *multi;
    ev_timer curl_timer;
    struct consul_cfg cfg;
    char *base; /* scheme://host[:port][/prefix] */
    char *unix_path;
    char *token, *cacert, *capath, *cert, *key, *dc;
    char *canary_tag, *build_key, *cw_key;
    bool verify;
    char addr_text[300];
    struct curl_slist *hdr_get, *hdr_put;
    struct sock *socks;
    struct creq *reqs;
    struct consul_watch *watches;
    struct reg reg;
    uint64_t rng;
    struct consul_stats st;
    bool shutting_down;
    consul_done_cb *done;
    void *done_udata;
    bool done_ok;
    ev_timer done_timer;
};

/* retry_min * 2^(n-1) up to cap, then a uniform draw in [d/2, d]:
 * clients that failed together do not come back together. */
static double backoff(struct consul *c, unsigned failures, double cap)
{
    return backoff_jitter(c->cfg.retry_min, cap, failures ? failures - 1 : 0, &c->rng);
}

/* ---- curl <-> libev glue ------------------------------------------------------- */

static void check_multi_info(struct consul *c);

static void io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct sock *sk = io->data;
    struct consul *c = sk->c;
    int action =
        (revents & EV_READ ? CURL_CSELECT_IN : 0) | (revents & EV_WRITE ? CURL_CSELECT_OUT : 0);
    int running;

    /* sk may be freed inside (CURL_POLL_REMOVE): use only c and the fd. */
    curl_multi_socket_action(c->multi, sk->fd, action, &running);
    check_multi_info(c);
}

static void sock_free(struct consul *c, struct sock *sk)
{
    ev_io_stop(c->loop, &sk->io);
    if (sk->prev)
        sk->prev->next = sk->next;
    else
        c->socks = sk->next;
    if (sk->next)
        sk->next->prev = sk->prev;
    free(sk);
}

static int sock_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct consul *c = userp;
    struct sock *sk = socketp;
    int events = 0;

    if (what == CURL_POLL_REMOVE) {
        if (sk)
            sock_free(c, sk);
        return 0;
    }
    if (what & CURL_POLL_IN)
        events |= EV_READ;
    if (what & CURL_POLL_OUT)
        events |= EV_WRITE;
    if (!sk) {
        sk = calloc(1, sizeof(*sk));
        if (!sk)
            return -1; /* curl fails the transfer */
        sk->c = c;
        sk->fd = s;
        ev_init(&sk->io, io_cb);
        sk->io.data = sk;
        sk->next = c->socks;
        if (c->socks)
            c->socks->prev = sk;
        c->socks = sk;
        curl_multi_assign(c->multi, s, sk);
    } else {
        ev_io_stop(c->loop, &sk->io);
    }
    /* ev_io_set even on the same fd: curl may have closed and reopened it. */
    ev_io_set(&sk->io, s, events);
    ev_io_start(c->loop, &sk->io);
    return 0;
}

static void curl_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct consul *c = t->data;
    int running;

    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi_info(c);
}

static int timer_fn(CURLM *multi, long timeout_ms, void *userp)
{
    struct consul *c = userp;

    /* Calling curl back from here is not allowed: a 0 timeout fires on the
     * next loop iteration instead. */
    ev_timer_stop(c->loop, &c->curl_timer);
    if (timeout_ms >= 0) {
        ev_timer_set(&c->curl_timer, (double)timeout_ms / 1000.0, 0.);
        ev_timer_start(c->loop, &c->curl_timer);
    }
    return 0;
}

/* ---- requests ------------------------------------------------------------------- */

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct creq *r = ud;
    size_t n = size * nmemb;
    size_t max = r->c->cfg.max_body;

    if (n > max - r->len || r->len > max) {
        r->too_big = true;
        return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
    }
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        char *p;

        while (cap < r->len + n + 1)
            cap *= 2;
        if (cap > max + 1)
            cap = max + 1;
        p = realloc(r->body, cap);
        if (!p)
            return 0;
        r->body = p;
        r->cap = cap;
    }
    memcpy(r->body + r->len, ptr, n);
    r->len += n;
    r->body[r->len] = '\0';
    return n;
}

static bool header_is(const char *line, size_t len, const char *name, const char **val,
                      size_t *vlen)
{
    size_t nl = strlen(name);

    if (len <= nl || line[nl] != ':' || strncasecmp(line, name, nl) != 0)
        return false;
    line += nl + 1;
    len -= nl + 1;
    while (len && (*line == ' ' || *line == '\t')) {
        line++;
        len--;
    }
    while (len && (line[len - 1] == '\r' || line[len - 1] == '\n' || line[len - 1] == ' ' ||
                   line[len - 1] == '\t'))
        len--;
    *val = line;
    *vlen = len;
    return true;
}

/* Strict decimal: digits only, no sign, no overflow. */
static int parse_u64(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;

    if (len == 0 || len > 20)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        if (v > (UINT64_MAX - (uint64_t)(s[i] - '0')) / 10)
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

static size_t header_cb(char *buf, size_t size, size_t nmemb, void *ud)
{
    struct creq *r = ud;
    size_t n = size * nmemb;
    const char *v;
    size_t vlen;
    uint64_t u;

    if (n >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
        /* A new header block (e.g. after a 100 Continue): forget the last. */
        r->has_index = r->bad_index = false;
        return n;
    }
    if (header_is(buf, n, "X-Consul-Index", &v, &vlen)) {
        if (parse_u64(v, vlen, &u) == 0) {
            r->has_index = true;
            r->index = u;
        } else {
            r->bad_index = true;
        }
    } else if (header_is(buf, n, "Content-Length", &v, &vlen)) {
        if (parse_u64(v, vlen, &u) == 0 && u > r->c->cfg.max_body) {
            r->too_big = true; /* refuse before reading any of it */
            return 0;
        }
    }
    return n;
}

static void creq_free(struct creq *r)
{
    if (r->easy)
        curl_easy_cleanup(r->easy);
    free(r->url);
    free(r->put_body);
    free(r->body);
    free(r);
}

static void creq_unlink(struct creq *r)
{
    struct consul *c = r->c;

    if (r->prev)
        r->prev->next = r->next;
    else
        c->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

/* Aborts an in-flight request without calling its done function. */
static void creq_cancel(struct creq *r)
{
    creq_unlink(r);
    curl_multi_remove_handle(r->c->multi, r->easy);
    creq_free(r);
}

/* Starts a request; url and put_body are taken over (freed here on failure).
 * put_body NULL means GET. Returns NULL on failure. */
static struct creq *creq_start(struct consul *c, char *url, char *put_body, double timeout,
                               bool blocking, creq_done_fn *done, void *owner)
{
    struct creq *r = calloc(1, sizeof(*r));
    CURL *e;
    long tmo_ms = (long)(timeout * 1000.0 + 0.999);
    long conn_ms = (long)(c->cfg.connect_timeout * 1000.0 + 0.999);

    if (!r || !url) {
        free(r);
        free(url);
        free(put_body);
        return NULL;
    }
    r->c = c;
    r->url = url;
    r->put_body = put_body;
    r->blocking = blocking;
    r->done = done;
    r->owner = owner;
    r->easy = e = curl_easy_init();
    if (!e) {
        creq_free(r);
        return NULL;
    }
    if (conn_ms > tmo_ms)
        conn_ms = tmo_ms;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, tmo_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, conn_ms);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "cedra-agent");
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)c->cfg.max_body);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    if (c->unix_path)
        curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, c->unix_path);
    if (c->cacert)
        curl_easy_setopt(e, CURLOPT_CAINFO, c->cacert);
    if (c->capath)
        curl_easy_setopt(e, CURLOPT_CAPATH, c->capath);
    if (c->cert)
        curl_easy_setopt(e, CURLOPT_SSLCERT, c->cert);
    if (c->key)
        curl_easy_setopt(e, CURLOPT_SSLKEY, c->key);
    if (!c->verify) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (put_body) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "PUT");
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, put_body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(put_body));
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->hdr_put);
    } else {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->hdr_get);
    }
    r->started = now_mono();
    if (curl_multi_add_handle(c->multi, e) != CURLM_OK) {
        creq_free(r);
        return NULL;
    }
    r->next = c->reqs;
    if (c->reqs)
        c->reqs->prev = r;
    c->reqs = r;
    return r;
}

static enum consul_err kind_of_status(long status)
{
    if (status == 403)
        return CONSUL_ERR_HTTP_403;
    if (status == 404)
        return CONSUL_ERR_HTTP_404;
    if (status >= 400 && status < 500)
        return CONSUL_ERR_HTTP_4XX;
    if (status >= 500 && status < 600)
        return CONSUL_ERR_HTTP_5XX;
    return CONSUL_ERR_HTTP_OTHER;
}

/* "HTTP 403: ACL not found", the body cut and made printable. */
static void http_reason(const struct creq *r, char *out, size_t outlen)
{
    char snippet[128];
    size_t n = 0;

    for (size_t i = 0; i < r->len && n < sizeof(snippet) - 1; i++) {
        unsigned char ch = (unsigned char)r->body[i];

        if (ch == '\n' || ch == '\r')
            break;
        snippet[n++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    snippet[n] = '\0';
    snprintf(out, outlen, "HTTP %ld%s%s", r->status, n ? ": " : "", snippet);
}

static void check_multi_info(struct consul *c)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(c->multi, &left))) {
        struct creq *r;
        char *priv = NULL;
        CURLcode res;
        char reason[REASON_MAX];
        int kind = -1;
        double lat;

        if (msg->msg != CURLMSG_DONE)
            continue;
        res = msg->data.result; /* msg dies with remove_handle */
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        r = (struct creq *)(void *)priv;
        creq_unlink(r);
        curl_multi_remove_handle(c->multi, r->easy);
        lat = now_mono() - r->started;
        c->st.requests++;
        if (!r->blocking) {
            c->st.latency_sum += lat;
            c->st.latency_count++;
        }
        if (res == CURLE_OK) {
            curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
            reason[0] = '\0';
        } else {
            if (r->too_big || res == CURLE_FILESIZE_EXCEEDED) {
                kind = CONSUL_ERR_TOO_BIG;
                snprintf(reason, sizeof(reason), "answer larger than %zu bytes", c->cfg.max_body);
            } else {
                if (res == CURLE_OPERATION_TIMEDOUT)
                    kind = CONSUL_ERR_TIMEOUT;
                else if (res == CURLE_COULDNT_CONNECT || res == CURLE_COULDNT_RESOLVE_HOST ||
                         res == CURLE_COULDNT_RESOLVE_PROXY)
                    kind = CONSUL_ERR_CONNECT;
                else
                    kind = CONSUL_ERR_TRANSPORT;
                snprintf(reason, sizeof(reason), "%s",
                         r->errbuf[0] ? r->errbuf : curl_easy_strerror(res));
            }
            c->st.errors[kind]++;
        }
        r->done(r, kind, reason);
        creq_free(r);
    }
}

/* ---- watches ---------------------------------------------------------------------- */

static void watch_start(struct consul_watch *w);

static void watch_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    watch_start(t->data);
}

static void watch_really_free(struct consul_watch *w)
{
    pool_set_free(&w->last);
    free(w->service);
    free(w->service_esc);
    free(w);
}

/* Unlinks and stops everything; the memory goes now, or after the user
 * callback that asked for it returns. */
static void watch_destroy(struct consul_watch *w)
{
    struct consul *c = w->c;

    if (w->dead)
        return;
    ev_timer_stop(c->loop, &w->timer);
    if (w->req) {
        creq_cancel(w->req);
        w->req = NULL;
    }
    if (w->prev)
        w->prev->next = w->next;
    else
        c->watches = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->dead = true;
    if (!w->busy)
        watch_really_free(w);
}

static void tokens_refill(struct consul_watch *w, double now)
{
    const struct consul_cfg *cfg = &w->c->cfg;

    if (cfg->rate_interval > 0) {
        w->tokens += (now - w->tokens_at) / cfg->rate_interval;
        if (w->tokens > (double)cfg->rate_burst)
            w->tokens = (double)cfg->rate_burst;
    }
    w->tokens_at = now;
}

/* Next query no earlier than min_delay from now, and when the token bucket
 * and the same-index interval allow it. */
static void watch_schedule(struct consul_watch *w, double min_delay)
{
    const struct consul_cfg *cfg = &w->c->cfg;
    double now = now_mono(), delay = min_delay;

    if (cfg->rate_interval > 0 && cfg->rate_burst > 0) {
        tokens_refill(w, now);
        if (w->tokens < 1 && (1 - w->tokens) * cfg->rate_interval > delay)
            delay = (1 - w->tokens) * cfg->rate_interval;
    }
    if (w->last_same && w->last_start + cfg->same_index_interval - now > delay)
        delay = w->last_start + cfg->same_index_interval - now;
    if (delay < 0)
        delay = 0;
    /* libev counts from its cached ev_now(), which lags after a long
     * callback: refresh it so that the delay is measured from now. */
    ev_now_update(w->c->loop);
    ev_timer_stop(w->c->loop, &w->timer);
    ev_timer_set(&w->timer, delay, 0.);
    ev_timer_start(w->c->loop, &w->timer);
}

static void watch_fail(struct consul_watch *w, enum consul_err kind, const char *reason)
{
    struct consul *c = w->c;
    char q[REASON_MAX + 8];
    double delay;

    w->st.errors[kind]++;
    w->st.failures++;
    delay = backoff(c, w->st.failures, c->cfg.retry_max);
    log_quote(q, sizeof(q), reason, strlen(reason));
    /* One line when the watch starts failing or the kind of failure changes;
     * repeats of the same error are debug only. */
    if (!w->failing) {
        w->failing = true;
        w->failing_since = now_mono();
        log_warning("consul_watch_failing", "service=%s addr=%s error=%s reason=%s retry_in=%.3f",
                    w->service, c->addr_text, consul_err_name(kind), q, delay);
    } else if (kind != w->last_err) {
        log_warning("consul_watch_failing",
                    "service=%s addr=%s error=%s reason=%s retry_in=%.3f "
                    "failures=%u",
                    w->service, c->addr_text, consul_err_name(kind), q, delay, w->st.failures);
    } else {
        log_debug("consul_watch_retry", "service=%s error=%s reason=%s retry_in=%.3f failures=%u",
                  w->service, consul_err_name(kind), q, delay, w->st.failures);
    }
    w->last_err = kind;
    w->last_same = false;
    if (w->on_error) {
        w->busy = true;
        w->on_error(w, kind, reason, w->udata);
        w->busy = false;
        if (w->dead) {
            watch_really_free(w);
            return;
        }
    }
    if (!c->shutting_down)
        watch_schedule(w, delay);
}

static void watch_done(struct creq *r, int kind, const char *reason)
{
    struct consul_watch *w = r->owner;
    struct consul *c = w->c;
    struct instances_report rep;
    struct pool_set ps;
    char err[REASON_MAX];
    uint64_t idx;
    bool changed, content, same;

    w->req = NULL;
    w->st.queries++;
    if (kind >= 0) {
        watch_fail(w, (enum consul_err)kind, reason);
        return;
    }
    if (r->status != 200) {
        enum consul_err k = kind_of_status(r->status);

        c->st.errors[k]++;
        http_reason(r, err, sizeof(err));
        watch_fail(w, k, err);
        return;
    }
    if (!r->has_index) {
        c->st.errors[CONSUL_ERR_NO_INDEX]++;
        watch_fail(w, CONSUL_ERR_NO_INDEX,
                   r->bad_index ? "invalid X-Consul-Index header" : "no X-Consul-Index header");
        return;
    }
    if (instances_parse(r->body ? r->body : "", r->len, &c->cfg.inst, &ps, &rep, err, sizeof(err)) <
        0) {
        c->st.errors[CONSUL_ERR_BAD_ANSWER]++;
        watch_fail(w, CONSUL_ERR_BAD_ANSWER, err);
        return;
    }

    idx = r->index;
    if (idx < 1) {
        /* A Consul bug, per its docs: blocking on 0 would not block at all. */
        if (!w->zero_warned)
            log_warning("consul_index_zero", "service=%s using=1", w->service);
        w->zero_warned = true;
        idx = 1;
    }
    if (w->index > 0 && idx < w->index) {
        /* Snapshot restore, or a more granular index after an upgrade:
         * restart the loop without an index or we could wait forever. */
        w->st.resets++;
        log_notice("consul_index_reset", "service=%s from=%llu to=%llu", w->service,
                   (unsigned long long)w->index, (unsigned long long)idx);
        w->index = 0;
    } else {
        w->index = idx;
    }
    if (w->failing) {
        log_notice("consul_watch_recovered", "service=%s failures=%u down_for=%.3f", w->service,
                   w->st.failures, now_mono() - w->failing_since);
        w->failing = false;
    }
    w->st.failures = 0;
    w->st.last_success = now_wall();
    w->st.last_success_mono = now_mono();
    w->st.last_report = rep;
    same = w->have && idx == w->st.index;
    content = !w->have || !instances_equal(&w->last, &ps);
    changed = content || idx != w->st.index;
    w->last_same = same;
    w->st.index = idx;
    w->have = true;
    ps.index = idx;
    if (!changed) {
        pool_set_free(&ps);
    } else {
        pool_set_free(&w->last);
        w->last = ps;
        w->st.updates++;
        if (rep.critical || rep.invalid || rep.duplicate || rep.bad_canary_weight) {
            char q[sizeof(rep.first_invalid) + 16];

            log_warning("consul_instances_dropped",
                        "service=%s index=%llu critical=%zu invalid=%zu duplicate=%zu "
                        "bad_canary_weight=%zu first=%s",
                        w->service, (unsigned long long)idx, rep.critical, rep.invalid,
                        rep.duplicate, rep.bad_canary_weight,
                        log_quote(q, sizeof(q), rep.first_invalid, strlen(rep.first_invalid)));
        }
        /* A new index with the same content is routine (Consul gives no
         * guarantee of a change): not worth a line at info. */
        log_event(content ? LOG_LVL_INFO : LOG_LVL_DEBUG, "consul_service_update",
                  "service=%s index=%llu stable=%zu canary=%zu", w->service,
                  (unsigned long long)idx, pool_set_count(&w->last, POOL_STABLE),
                  pool_set_count(&w->last, POOL_CANARY));
        if (w->on_pool) {
            w->busy = true;
            w->on_pool(w, &w->last, w->udata);
            w->busy = false;
            if (w->dead) {
                watch_really_free(w);
                return;
            }
        }
    }
    if (!c->shutting_down)
        watch_schedule(w, 0);
}

static void watch_start(struct consul_watch *w)
{
    struct consul *c = w->c;
    const struct consul_cfg *cfg = &c->cfg;
    char *url, params[256];
    size_t n = 0;
    char sep = '?';
    double now = now_mono(), timeout;
    bool blocking = w->index > 0;

    if (c->shutting_down || w->req)
        return;
    if (cfg->passing_only) {
        n += (size_t)snprintf(params + n, sizeof(params) - n, "%cpassing=1", sep);
        sep = '&';
    }
    if (blocking) {
        long long wait_ms = (long long)(cfg->wait * 1000.0);

        if (wait_ms < 1)
            wait_ms = 1; /* "0ms" would mean Consul's default of 5 minutes */
        n += (size_t)snprintf(params + n, sizeof(params) - n, "%cindex=%llu&wait=%lldms", sep,
                              (unsigned long long)w->index, wait_ms);
        sep = '&';
        timeout = cfg->wait * 17.0 / 16.0 + cfg->timeout_margin;
    } else {
        timeout = cfg->request_timeout;
    }
    if (cfg->stale) {
        snprintf(params + n, sizeof(params) - n, "%cstale", sep);
        sep = '&';
    }
    url = str_printf("%s/v1/health/service/%s%s%s%s", c->base, w->service_esc, params,
                     c->dc ? (sep == '?' ? "?dc=" : "&dc=") : "", c->dc ? c->dc : "");
    if (cfg->rate_interval > 0 && cfg->rate_burst > 0) {
        tokens_refill(w, now);
        w->tokens -= 1;
    }
    w->last_start = now;
    w->req = creq_start(c, url, NULL, timeout, blocking, watch_done, w);
    if (!w->req) {
        c->st.errors[CONSUL_ERR_TRANSPORT]++;
        watch_fail(w, CONSUL_ERR_TRANSPORT, "cannot start a request (out of memory?)");
    }
}

struct consul_watch *consul_watch(struct consul *c, const char *service, consul_pool_cb *on_pool,
                                  consul_error_cb *on_error, void *udata)
{
    struct consul_watch *w;

    if (!service || !*service || c->shutting_down)
        return NULL;
    w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->c = c;
    w->service = strdup(service);
    w->service_esc = url_escape(service);
    if (!w->service || !w->service_esc) {
        free(w->service);
        free(w->service_esc);
        free(w);
        return NULL;
    }
    w->on_pool = on_pool;
    w->on_error = on_error;
    w->udata = udata;
    pool_set_init(&w->last);
    w->tokens = (double)c->cfg.rate_burst;
    w->tokens_at = now_mono();
    ev_init(&w->timer, watch_timer_cb);
    w->timer.data = w;
    w->next = c->watches;
    if (c->watches)
        c->watches->prev = w;
    c->watches = w;
    log_info("consul_watch", "service=%s addr=%s wait=%.3f stale=%d passing_only=%d", w->service,
             c->addr_text, c->cfg.wait, c->cfg.stale, c->cfg.passing_only);
    ev_timer_set(&w->timer, 0., 0.);
    ev_timer_start(c->loop, &w->timer);
    return w;
}

void consul_watch_free(struct consul_watch *w)
{
    if (w)
        watch_destroy(w);
}

const char *consul_watch_service(const struct consul_watch *w)
{
    return w->service;
}

void consul_watch_stats(const struct consul_watch *w, struct consul_watch_stats *st)
{
    *st = w->st;
}

/* ---- self-registration --------------------------------------------------------------- */

static void reg_tick(struct consul *c);

static void reg_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    reg_tick(t->data);
}

static void reg_schedule(struct consul *c, double delay)
{
    ev_timer_stop(c->loop, &c->reg.timer);
    ev_timer_set(&c->reg.timer, delay > 0 ? delay : 0., 0.);
    ev_timer_start(c->loop, &c->reg.timer);
}

static void reg_error(struct consul *c, const char *what, enum consul_err kind, const char *reason)
{
    struct reg *g = &c->reg;
    double delay;
    char q[REASON_MAX + 8];

    g->failures++;
    /* Retry sooner than the TTL runs out, but never in a loop. */
    delay = backoff(c, g->failures, c->cfg.retry_max < g->ttl / 3 ? c->cfg.retry_max : g->ttl / 3);
    if (!g->failing) {
        g->failing = true;
        log_warning("consul_register_failing", "id=%s op=%s error=%s reason=%s retry_in=%.3f",
                    g->id, what, consul_err_name(kind),
                    log_quote(q, sizeof(q), reason, strlen(reason)), delay);
    }
    reg_schedule(c, delay);
}

static void reg_done(struct creq *r, int kind, const char *reason)
{
    struct consul *c = r->c;
    struct reg *g = &c->reg;
    char err[REASON_MAX];
    bool was_register = g->state != REG_OK;

    g->req = NULL;
    if (kind < 0 && r->status != 200) {
        kind = (int)kind_of_status(r->status);
        c->st.errors[kind]++;
        http_reason(r, err, sizeof(err));
        reason = err;
    }
    if (kind >= 0) {
        if (!was_register && kind == CONSUL_ERR_HTTP_404) {
            /* The Consul agent lost our check: it restarted without its
             * state. Register again, at once for the first time. */
            log_warning("consul_check_unknown", "id=%s reregistering=1", g->id);
            g->state = REG_NEED;
            g->failures++;
            reg_schedule(c, g->failures > 1 ? backoff(c, g->failures, g->ttl / 3) : 0);
            return;
        }
        reg_error(c, was_register ? "register" : "check", (enum consul_err)kind, reason);
        return;
    }
    if (g->failing) {
        log_notice("consul_register_recovered", "id=%s failures=%u", g->id, g->failures);
        g->failing = false;
    }
    if (was_register) {
        g->state = REG_OK;
        c->st.registrations++;
        log_notice("consul_registered", "id=%s name=%s addr=%s ttl=%.3f", g->id, g->name,
                   c->addr_text, g->ttl);
        g->last_health = -1;
        reg_schedule(c, 0); /* the check starts critical: update it now */
        return;
    }
    g->failures = 0;
    c->st.ttl_updates++;
    reg_schedule(c, g->ttl / 3);
}

static void reg_tick(struct consul *c)
{
    static const char *const verbs[] = {"pass", "warn", "fail"};
    struct reg *g = &c->reg;
    char note[NOTE_MAX] = "";
    char *url, *esc;
    enum consul_health h;

    if (c->shutting_down || g->req)
        return;
    if (g->state == REG_NEED) {
        g->maybe_registered = true;
        g->req = creq_start(c, strdup(g->reg_url), strdup(g->body), c->cfg.request_timeout, false,
                            reg_done, g);
        if (!g->req)
            reg_error(c, "register", CONSUL_ERR_TRANSPORT, "cannot start a request");
        return;
    }
    h = g->health ? g->health(g->udata, note, sizeof(note)) : CONSUL_HEALTH_PASS;
    if ((unsigned)h > CONSUL_HEALTH_FAIL)
        h = CONSUL_HEALTH_FAIL;
    note[sizeof(note) - 1] = '\0';
    if ((int)h != g->last_health) {
        char q[NOTE_MAX + 8];

        if (g->last_health >= 0 || h != CONSUL_HEALTH_PASS)
            log_notice("consul_health", "id=%s status=%s note=%s", g->id, verbs[h],
                       log_quote(q, sizeof(q), note, strlen(note)));
        g->last_health = (int)h;
    }
    esc = url_escape(note);
    url = esc ? str_printf("%s/v1/agent/check/%s/%s%s%s", c->base, verbs[h], g->check_esc,
                           *note ? "?note=" : "", esc)
              : NULL;
    free(esc);
    g->req = creq_start(c, url, strdup(""), c->cfg.request_timeout, false, reg_done, g);
    if (!g->req)
        reg_error(c, "check", CONSUL_ERR_TRANSPORT, "cannot start a request");
}

static char *go_duration(double s)
{
    long long ms = (long long)(s * 1000.0 + 0.5);

    return str_printf("%lldms", ms < 1 ? 1 : ms);
}

int consul_register(struct consul *c, const struct consul_reg_cfg *rc, consul_health_cb *health,
                    void *udata, char *err, size_t errlen)
{
    struct reg *g = &c->reg;
    json_t *root = NULL, *tags, *meta, *check;
    char *ttl = NULL, *dcsa = NULL, *cid = NULL, *id_esc = NULL;
    const char *id;
    int rv = -1;

    if (g->state != REG_NONE || c->shutting_down) {
        str_errf(err, errlen, "already registered or shutting down");
        return -1;
    }
    if (!rc->name || !*rc->name || !token_ok(rc->name)) {
        str_errf(err, errlen, "service name missing or not printable");
        return -1;
    }
    id = rc->id && *rc->id ? rc->id : rc->name;
    if (!token_ok(id)) {
        str_errf(err, errlen, "service id not printable");
        return -1;
    }
    if (rc->address && *rc->address && !instances_addr_ok(rc->address)) {
        str_errf(err, errlen, "address %s is not an IP address or host name", rc->address);
        return -1;
    }
    if (!(rc->ttl >= 0.3)) { /* updates every ttl/3: not a tight loop */
        str_errf(err, errlen, "ttl must be at least 0.3 s");
        return -1;
    }
    cid = str_printf("service:%s", id);
    ttl = go_duration(rc->ttl);
    dcsa = go_duration(rc->deregister_after > 0 ? rc->deregister_after : 60);
    id_esc = url_escape(id);
    root = json_object();
    tags = json_array();
    meta = json_object();
    check = json_object();
    if (!cid || !ttl || !dcsa || !id_esc || !root || !tags || !meta || !check) {
        json_decref(tags);
        json_decref(meta);
        json_decref(check);
        str_errf(err, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < rc->ntags; i++)
        json_array_append_new(tags, json_string(rc->tags[i]));
    for (size_t i = 0; i < rc->nmeta; i++)
        json_object_set_new(meta, rc->meta[2 * i], json_string(rc->meta[2 * i + 1]));
    json_object_set_new(check, "CheckID", json_string(cid));
    json_object_set_new(check, "Name", json_string("cedra-agent TTL"));
    json_object_set_new(check, "TTL", json_string(ttl));
    json_object_set_new(check, "DeregisterCriticalServiceAfter", json_string(dcsa));
    json_object_set_new(root, "Name", json_string(rc->name));
    json_object_set_new(root, "ID", json_string(id));
    if (rc->address && *rc->address)
        json_object_set_new(root, "Address", json_string(rc->address));
    json_object_set_new(root, "Port", json_integer(rc->port));
    json_object_set_new(root, "Tags", tags);
    json_object_set_new(root, "Meta", meta);
    json_object_set_new(root, "Check", check);
    g->body = json_dumps(root, JSON_COMPACT);
    g->id = strdup(id);
    g->name = strdup(rc->name);
    g->check_esc = url_escape(cid);
    g->reg_url = str_printf("%s/v1/agent/service/register", c->base);
    g->dereg_url = str_printf("%s/v1/agent/service/deregister/%s", c->base, id_esc);
    if (!g->body || !g->id || !g->name || !g->check_esc || !g->reg_url || !g->dereg_url) {
        str_errf(err, errlen, "out of memory or invalid tags/meta");
        goto out;
    }
    g->ttl = rc->ttl;
    g->health = health;
    g->udata = udata;
    g->state = REG_NEED;
    g->last_health = -1;
    reg_schedule(c, 0);
    rv = 0;
out:
    if (rv < 0) {
        free(g->body);
        free(g->id);
        free(g->name);
        free(g->check_esc);
        free(g->reg_url);
        free(g->dereg_url);
        g->body = g->id = g->name = g->check_esc = g->reg_url = g->dereg_url = NULL;
    }
    json_decref(root);
    free(cid);
    free(ttl);
    free(dcsa);
    free(id_esc);
    return rv;
}

bool consul_registered(const struct consul *c)
{
    return c->reg.state == REG_OK;
}

/* ---- shutdown ------------------------------------------------------------------------ */

static void done_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct consul *c = t->data;
    consul_done_cb *done = c->done;

    c->done = NULL;
    if (done)
        done(c, c->done_ok, c->done_udata); /* may free c: touch nothing after */
}

static void finish_shutdown(struct consul *c, bool ok)
{
    c->done_ok = ok;
    /* Always from a timer: the callback may free c, which must not happen
     * while curl is inside check_multi_info(). */
    ev_timer_set(&c->done_timer, 0., 0.);
    ev_timer_start(c->loop, &c->done_timer);
}

static void dereg_done(struct creq *r, int kind, const char *reason)
{
    struct consul *c = r->c;
    struct reg *g = &c->reg;
    char err[REASON_MAX];
    bool ok;

    g->req = NULL;
    /* 404: Consul does not know the ID, so it is not registered either. */
    ok = kind < 0 && (r->status == 200 || r->status == 404);
    if (ok) {
        log_notice("consul_deregistered", "id=%s", g->id);
    } else {
        char q[REASON_MAX + 8];

        if (kind < 0) {
            c->st.errors[kind_of_status(r->status)]++;
            http_reason(r, err, sizeof(err));
            reason = err;
        }
        log_warning("consul_deregister_failed", "id=%s reason=%s", g->id,
                    log_quote(q, sizeof(q), reason, strlen(reason)));
    }
    g->state = REG_NONE;
    finish_shutdown(c, ok);
}

void consul_shutdown(struct consul *c, consul_done_cb *done, void *udata)
{
    struct reg *g = &c->reg;

    if (c->shutting_down)
        return;
    c->shutting_down = true;
    c->done = done;
    c->done_udata = udata;
    while (c->watches)
        /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): the call unlinks the head */
        watch_destroy(c->watches);
    ev_timer_stop(c->loop, &g->timer);
    if (g->req) {
        creq_cancel(g->req);
        g->req = NULL;
    }
    if (g->maybe_registered) {
        double t = c->cfg.shutdown_timeout > 0 ? c->cfg.shutdown_timeout : 2;

        g->req = creq_start(c, strdup(g->dereg_url), strdup(""), t, false, dereg_done, g);
        if (g->req)
            return;
        log_warning("consul_deregister_failed", "id=%s reason=\"cannot start a request\"", g->id);
        finish_shutdown(c, false);
        return;
    }
    finish_shutdown(c, true);
}

/* ---- lifetime ------------------------------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static char *read_token_file(const char *path, char *err, size_t errlen)
{
    char buf[TOKEN_MAX + 2];
    ssize_t n;
    size_t len, b = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        str_errf(err, errlen, "CONSUL_HTTP_TOKEN_FILE %s: %s", path, strerror(errno));
        return NULL;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0) {
        str_errf(err, errlen, "CONSUL_HTTP_TOKEN_FILE %s: %s", path, strerror(errno));
        return NULL;
    }
    len = (size_t)n;
    while (b < len && (buf[b] == ' ' || buf[b] == '\t' || buf[b] == '\r' || buf[b] == '\n'))
        b++;
    while (len > b && (buf[len - 1] == ' ' || buf[len - 1] == '\t' || buf[len - 1] == '\r' ||
                       buf[len - 1] == '\n'))
        len--;
    buf[len] = '\0';
    return strdup(buf + b);
}

/* CONSUL_HTTP_ADDR as Consul's Go client reads it. */
static int parse_addr(struct consul *c, const char *addr, bool https, char *err, size_t errlen)
{
    const char *rest = addr, *slash;
    const char *scheme = https ? "https" : "http";
    size_t hostlen;

    if (strncmp(addr, "unix://", 7) == 0) {
        if (!addr[7]) {
            str_errf(err, errlen, "consul address %s: empty socket path", addr);
            return -1;
        }
        c->unix_path = strdup(addr + 7);
        c->base = str_printf("%s://localhost", scheme);
        snprintf(c->addr_text, sizeof(c->addr_text), "unix:%s", addr + 7);
        return c->unix_path && c->base ? 0 : -1;
    }
    if (strncmp(addr, "https://", 8) == 0) {
        scheme = "https";
        rest = addr + 8;
    } else if (strncmp(addr, "http://", 7) == 0) {
        rest = addr + 7; /* keeps https when CONSUL_HTTP_SSL asked for it */
    } else if (strstr(addr, "://")) {
        str_errf(err, errlen, "consul address %s: unknown scheme", addr);
        return -1;
    }
    slash = strchr(rest, '/');
    hostlen = slash ? (size_t)(slash - rest) : strlen(rest);
    if (hostlen == 0) {
        str_errf(err, errlen, "consul address %s: no host", addr);
        return -1;
    }
    for (const char *p = rest; *p; p++) {
        if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e || *p == '?' || *p == '#' ||
            *p == '@') {
            str_errf(err, errlen, "consul address %s: invalid character", addr);
            return -1;
        }
    }
    /* A path after the host is a reverse-proxy prefix, as in Consul's client. */
    c->base = str_printf("%s://%s", scheme, rest);
    if (!c->base)
        return -1;
    hostlen = strlen(c->base);
    while (hostlen && c->base[hostlen - 1] == '/')
        c->base[--hostlen] = '\0';
    snprintf(c->addr_text, sizeof(c->addr_text), "%s", c->base);
    return 0;
}

struct consul *consul_new(struct ev_loop *loop, const struct consul_cfg *cfg, char *err,
                          size_t errlen)
{
    struct consul *c;
    const char *addr, *tok, *tokfile, *v;
    bool https = false, b;
    char line[TOKEN_MAX + 32];

    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK) {
        str_errf(err, errlen, "curl_global_init failed");
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (!c) {
        str_errf(err, errlen, "out of memory");
        return NULL;
    }
    c->loop = loop;
    c->cfg = *cfg;
    ev_init(&c->curl_timer, curl_timer_cb);
    c->curl_timer.data = c;
    ev_init(&c->done_timer, done_timer_cb);
    c->done_timer.data = c;
    ev_init(&c->reg.timer, reg_timer_cb);
    c->reg.timer.data = c;
    c->reg.last_health = -1;
    c->rng = (uint64_t)(now_wall() * 1e6) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)c;
    if (!c->rng)
        c->rng = 0x9e3779b97f4a7c15ULL;

    /* Strings are ours from here on. */
    c->canary_tag = xstrdup(cfg->inst.canary_tag);
    c->build_key = xstrdup(cfg->inst.build_key);
    c->cw_key = xstrdup(cfg->inst.canary_weight_key);
    c->cfg.inst.canary_tag = c->canary_tag;
    c->cfg.inst.build_key = c->build_key;
    c->cfg.inst.canary_weight_key = c->cw_key;
    if (!c->cfg.inst.max_bytes || c->cfg.inst.max_bytes > c->cfg.max_body)
        c->cfg.inst.max_bytes = c->cfg.max_body;
    c->cfg.addr = c->cfg.token = c->cfg.cacert = c->cfg.capath = NULL;
    c->cfg.client_cert = c->cfg.client_key = c->cfg.datacenter = NULL;
    if (c->cfg.max_body == 0)
        c->cfg.max_body = INSTANCES_BYTES_DEFAULT;
    if (!(c->cfg.wait > 0))
        c->cfg.wait = 60;
    if (!(c->cfg.request_timeout > 0))
        c->cfg.request_timeout = 10;
    if (!(c->cfg.connect_timeout > 0))
        c->cfg.connect_timeout = 5;
    if (!(c->cfg.retry_min > 0))
        c->cfg.retry_min = 0.5;
    if (!(c->cfg.retry_max >= c->cfg.retry_min))
        c->cfg.retry_max = c->cfg.retry_min;
    if (!(c->cfg.timeout_margin >= 0))
        c->cfg.timeout_margin = 2;

    if (cfg->ssl >= 0) {
        https = cfg->ssl > 0;
    } else if ((v = env("CONSUL_HTTP_SSL"))) {
        if (parse_go_bool(v, &b) < 0) {
            str_errf(err, errlen, "CONSUL_HTTP_SSL=%s is not a boolean", v);
            goto fail;
        }
        https = b;
    }
    c->verify = true;
    if (cfg->ssl_verify >= 0) {
        c->verify = cfg->ssl_verify > 0;
    } else if ((v = env("CONSUL_HTTP_SSL_VERIFY"))) {
        if (parse_go_bool(v, &b) < 0) {
            str_errf(err, errlen, "CONSUL_HTTP_SSL_VERIFY=%s is not a boolean", v);
            goto fail;
        }
        c->verify = b;
    }
    addr = cfg->addr ? cfg->addr : env("CONSUL_HTTP_ADDR");
    if (parse_addr(c, addr ? addr : "127.0.0.1:8500", https, err, errlen) < 0)
        goto fail;

    tok = cfg->token;
    if (!tok && (tokfile = env("CONSUL_HTTP_TOKEN_FILE"))) {
        c->token = read_token_file(tokfile, err, errlen);
        if (!c->token)
            goto fail;
    } else if (!tok) {
        tok = env("CONSUL_HTTP_TOKEN");
    }
    if (tok)
        c->token = strdup(tok);
    if (c->token && *c->token == '\0') {
        free(c->token);
        c->token = NULL;
    }
    if (c->token && !token_ok(c->token)) {
        str_errf(err, errlen, "consul token: empty, too long or not printable");
        goto fail;
    }
    c->cacert = xstrdup(cfg->cacert ? cfg->cacert : env("CONSUL_CACERT"));
    c->capath = xstrdup(cfg->capath ? cfg->capath : env("CONSUL_CAPATH"));
    c->cert = xstrdup(cfg->client_cert ? cfg->client_cert : env("CONSUL_CLIENT_CERT"));
    c->key = xstrdup(cfg->client_key ? cfg->client_key : env("CONSUL_CLIENT_KEY"));
    if (!c->cert != !c->key) { /* as Consul's client says */
        str_errf(err, errlen, "both CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY must be provided");
        goto fail;
    }
    if (cfg->datacenter && *cfg->datacenter)
        c->dc = url_escape(cfg->datacenter);

    if (c->token) {
        snprintf(line, sizeof(line), "X-Consul-Token: %s", c->token);
        c->hdr_get = curl_slist_append(NULL, line);
        c->hdr_put = curl_slist_append(NULL, line);
        if (!c->hdr_get || !c->hdr_put)
            goto oom;
    }
    /* No "Expect: 100-continue" round trip for our small bodies. */
    c->hdr_put = curl_slist_append(c->hdr_put, "Expect:");
    c->hdr_put =
        c->hdr_put ? curl_slist_append(c->hdr_put, "Content-Type: application/json") : NULL;
    c->hdr_get = curl_slist_append(c->hdr_get, "Accept: application/json");
    if (!c->hdr_put || !c->hdr_get)
        goto oom;

    c->multi = curl_multi_init();
    if (!c->multi)
        goto oom;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_fn);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    log_info("consul_client", "addr=%s token=%s tls_verify=%d", c->addr_text,
             c->token ? "set" : "none", c->verify);
    return c;

oom:
    str_errf(err, errlen, "out of memory");
fail:
    consul_free(c);
    return NULL;
}

const char *consul_address(const struct consul *c)
{
    return c->addr_text;
}

void consul_stats(const struct consul *c, struct consul_stats *st)
{
    *st = c->st;
}

void consul_free(struct consul *c)
{
    struct reg *g;

    if (!c)
        return;
    g = &c->reg;
    while (c->watches)
        /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): the call unlinks the head */
        watch_destroy(c->watches);
    g->req = NULL;
    while (c->reqs)
        /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): the call unlinks the head */
        creq_cancel(c->reqs);
    if (c->multi) {
        /* Our sockets go below; curl must not call back into freed state. */
        curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, NULL);
        curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, NULL);
        curl_multi_cleanup(c->multi);
    }
    while (c->socks)
        /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): the call unlinks the head */
        sock_free(c, c->socks);
    if (c->loop) {
        ev_timer_stop(c->loop, &c->curl_timer);
        ev_timer_stop(c->loop, &c->done_timer);
        ev_timer_stop(c->loop, &g->timer);
    }
    curl_slist_free_all(c->hdr_get);
    curl_slist_free_all(c->hdr_put);
    free(g->body);
    free(g->id);
    free(g->name);
    free(g->check_esc);
    free(g->reg_url);
    free(g->dereg_url);
    free(c->base);
    free(c->unix_path);
    free(c->token);
    free(c->cacert);
    free(c->capath);
    free(c->cert);
    free(c->key);
    free(c->dc);
    free(c->canary_tag);
    free(c->build_key);
    free(c->cw_key);
    free(c);
}
