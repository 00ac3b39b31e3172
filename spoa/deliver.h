/* The local delivery path for pages too big for an SPOE ACK and an HAProxy
 * buffer. The worker that decided a HIT parks the entry here under a random
 * one-time token and tells HAProxy to route the request to this small HTTP
 * server (libmicrohttpd) with the token in a header; the page then streams
 * through HAProxy's normal buffers, so no tune.bufsize increase is needed. */
#ifndef CEDRA_DELIVER_H
#define CEDRA_DELIVER_H

#include <stdbool.h>
#include <stddef.h>

#include "fill.h"
#include "isr.h"
#include "lane.h"
#include "util.h"

#define DELIVER_TOKEN_SIZE 33 /* 32 hex digits + NUL */
#define DELIVER_HEADER "x-cedra-token"

struct deliver;

struct deliver_cfg {
    const struct endpoint *listen; /* loopback TCP or a UNIX socket */
    unsigned threads;              /* MHD thread pool; 0 = 2 */
    unsigned max_parked;           /* entries waiting for HAProxy; 0 = 1024 */
    double ttl;                    /* seconds a parked entry waits; 0 = 10 */
    int fd; /* > 0: listen already bound (before a privilege drop), owned from here on */
    /* The fast lane, or NULL: then its health check answers 503 (the lane
     * stays closed) and its fills 404. Outlives the server. */
    struct lane *lane;
    /* Edge pages by id (haproxy-cache on), or NULL: their fills answer 404.
     * Outlives the server. */
    struct fill *fill;
};

struct deliver *deliver_start(const struct deliver_cfg *cfg, char *err, size_t errlen);
/* Stops the server thread(s) and frees every parked entry. */
void deliver_stop(struct deliver *d);

/* What is parked: the entry, which of its answers (isr_variant_headers())
 * and the body bytes (inside the entry: e->body, e->rsc or a segment). */
struct deliver_item {
    const struct isr_entry *entry;
    enum isr_variant variant;
    const void *body;
    size_t body_len;
    bool gzip; /* body is the gzip copy: sent with Content-Encoding: gzip */
};

/* Parks an item to be answered as a HIT/STALE (st) or a 304 (not_modified).
 * The entry stays valid until release(arg) is called — once delivered,
 * expired or at deliver_stop(): the caller's reference (in-process cache
 * handle, or the entry itself) moves here on success. Returns 0 with the
 * token written, or -1 when full (the reference is still the caller's).
 * Thread-safe. */
int deliver_put(struct deliver *d, const struct deliver_item *item, void (*release)(void *),
                void *arg, enum isr_state st, bool not_modified, const struct isr_conf *conf,
                char token[DELIVER_TOKEN_SIZE]);

struct deliver_stats {
    unsigned long parked;    /* put */
    unsigned long delivered; /* taken by HAProxy */
    unsigned long expired;   /* never asked for within the TTL */
    unsigned long unknown;   /* asked with a token we do not have: 503 */
    unsigned long refused;   /* store full */
};
void deliver_get_stats(struct deliver *d, struct deliver_stats *out);

#endif
