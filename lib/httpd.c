/* /metrics endpoint on libmicrohttpd. */
#include "httpd.h"

#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "net.h"

#define DEF_MAX_CONNECTIONS 16
#define DEF_TIMEOUT 10
/* Per-connection memory MHD may use to read a request: bounds header size. */
#define CONN_MEMORY_LIMIT (32 * 1024)
#define LISTEN_BACKLOG 64

struct httpd {
    struct MHD_Daemon *daemon;
    struct metrics *metrics;
    unsigned port;
};

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512], q[600];
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);

    if (n < 0)
        return;
    if ((size_t)n >= sizeof(msg))
        n = (int)sizeof(msg) - 1;
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        n--;
    log_warning("httpd_error", "msg=%s", log_quote(q, sizeof(q), msg, (size_t)n));
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *ctype,
                             void *body, size_t len, enum MHD_ResponseMemoryMode mem,
                             const char *allow)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, mem);
    enum MHD_Result rc;

    if (!resp) {
        if (mem == MHD_RESPMEM_MUST_FREE)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    /* A scrape is a snapshot: no cache may serve an old one. */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (allow)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    rc = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    static const char not_found[] = "not found\n";
    static const char not_allowed[] = "method not allowed\n";
    static const char failed[] = "cannot render metrics\n";
    struct httpd *h = cls;
    char *body;
    size_t len;

    static int marker; /* *con_cls after the first call */
    /* Errors are answered on the first call, before any request body is read:
     * MHD then closes the connection instead of reading the body. */
    if (strcmp(url, "/metrics") != 0)
        return reply(conn, MHD_HTTP_NOT_FOUND, "text/plain; charset=utf-8", (void *)not_found,
                     sizeof(not_found) - 1, MHD_RESPMEM_PERSISTENT, NULL);
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain; charset=utf-8",
                     (void *)not_allowed, sizeof(not_allowed) - 1, MHD_RESPMEM_PERSISTENT,
                     "GET, HEAD");
    /* A scrape is answered on the second call, once MHD has the whole
     * request: answering earlier makes MHD close the connection, and
     * Prometheus keeps its scrape connection alive. */
    if (!*con_cls) {
        *con_cls = &marker;
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0; /* a GET body: ignored */
        return MHD_YES;
    }
    body = metrics_render(h->metrics, &len);
    if (!body)
        return reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8",
                     (void *)failed, sizeof(failed) - 1, MHD_RESPMEM_PERSISTENT, NULL);
    /* MHD frees body with free() once sent. */
    return reply(conn, MHD_HTTP_OK, METRICS_CONTENT_TYPE, body, len, MHD_RESPMEM_MUST_FREE, NULL);
}

struct httpd *httpd_start(const struct httpd_config *cfg, struct metrics *m, char *err,
                          size_t errlen)
{
    struct httpd *h;
    int fd;

    if (!cfg->listen || cfg->listen->is_unix) {
        snprintf(err, errlen, "the metrics server needs a TCP address");
        return NULL;
    }
    h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->metrics = m;
    /* Our own listening socket: same errors and options as every other
     * listener, and the real port when 0 was asked for. */
    fd = cfg->fd > 0 ? cfg->fd : net_listen(cfg->listen, LISTEN_BACKLOG, false, 0, err, errlen);
    if (fd < 0) {
        free(h);
        return NULL;
    }
    h->port = net_local_port(fd);
    /* MHD_USE_ITC: without it, a thread that stopped polling the listening
     * socket at the connection limit sleeps until a timeout once slots are
     * free again, and so does MHD_stop_daemon() (seconds of no /metrics and
     * of shutdown delay after a burst of slow clients). */
    h->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC | MHD_USE_ERROR_LOG, 0, NULL,
        NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL, MHD_OPTION_LISTEN_SOCKET,
        fd, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)(cfg->max_connections ? cfg->max_connections : DEF_MAX_CONNECTIONS),
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(cfg->timeout ? cfg->timeout : DEF_TIMEOUT),
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY_LIMIT, MHD_OPTION_END);
    if (!h->daemon) {
        snprintf(err, errlen, "cannot start the HTTP server on %s", cfg->listen->text);
        close(fd);
        free(h);
        return NULL;
    }
    log_info("httpd_listen", "addr=%s port=%u", cfg->listen->text, h->port);
    return h;
}

unsigned httpd_port(const struct httpd *h)
{
    return h->port;
}

void httpd_stop(struct httpd *h)
{
    if (!h)
        return;
    /* Joins the server thread; MHD closes the listening socket it was given. */
    MHD_stop_daemon(h->daemon);
    free(h);
}
