/* Prometheus /metrics over HTTP, served by libmicrohttpd from its own thread
 * (one epoll loop, no thread per connection): HTTP parsing and limits are the
 * library's, the daemon's loops are never involved.
 *
 *   GET|HEAD /metrics -> 200, text/plain; version=0.0.4; charset=utf-8
 *   other methods on /metrics -> 405 with "Allow: GET, HEAD"
 *   any other path -> 404 */
#ifndef CEDRA_HTTPD_H
#define CEDRA_HTTPD_H

#include <stddef.h>

#include "metrics.h"
#include "util.h"

struct httpd;

struct httpd_config {
    const struct endpoint *listen; /* TCP; port 0 picks a free port (tests) */
    unsigned max_connections;      /* 0 = 16; more wait in the backlog, unserved */
    unsigned timeout;              /* seconds without progress; 0 = 10 */
    int fd; /* > 0: listen already bound (before a privilege drop), owned from here on */
};

/* Listens and starts serving m (not owned; it must outlive the server).
 * NULL with a reason in err. */
struct httpd *httpd_start(const struct httpd_config *cfg, struct metrics *m, char *err,
                          size_t errlen);
/* The bound TCP port. */
unsigned httpd_port(const struct httpd *h);
/* Stops the thread and closes every connection and the listening socket.
 * NULL is a no-op. */
void httpd_stop(struct httpd *h);

#endif
