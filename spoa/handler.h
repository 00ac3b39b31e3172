/* The decision for one request: reads a NOTIFY's `cedra-req` message and
 * answers with the txn variables HAProxy acts on — a locale redirect, a page
 * served from the edge out of the shared ISR cache, or a pass to the origin. */
#ifndef CEDRA_HANDLER_H
#define CEDRA_HANDLER_H

#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "spoe.h"

struct ev_loop;
struct handler;
struct deliver;

/* Per-worker counters; read by other threads only as approximate figures. */
struct handler_stats {
    uint64_t notifies;
    uint64_t requests;       /* cedra-req messages */
    uint64_t other_messages; /* messages we do not know: ACKed without actions */
    uint64_t locale_found;
    uint64_t locale_none;
    uint64_t redirects;
    uint64_t redirect_refused; /* unsafe path or query: passed unchanged */
    uint64_t cache[5];         /* by x-cedra-cache: HIT, STALE, MISS, BYPASS, ERROR */
    uint64_t not_modified;     /* 304 from the edge */
    uint64_t revalidations;    /* stale pages sent to the origin to regenerate */
    uint64_t ack_too_big;
    uint64_t delivered; /* pages handed to the local delivery path */
};

enum handler_cache { CACHE_HIT, CACHE_STALE, CACHE_MISS, CACHE_BYPASS, CACHE_ERROR };

/* One per worker. Connects to Valkey when conf has an edge cache. deliver
 * (shared by the workers, may be NULL) serves pages too big for an ACK. */
struct handler *handler_new(struct ev_loop *loop, unsigned worker_id, const struct spoa_conf *conf,
                            struct deliver *deliver);
/* Pending lookups complete (passing to the origin) before this returns. */
void handler_free(struct handler *h);

/* Completes req, now or later on the loop. conf is the worker's current
 * configuration; a reference is held while the request is pending. */
void handler_notify(struct handler *h, struct spoe_req *req, struct spoe_cur msgs,
                    struct spoa_conf *conf);

const struct handler_stats *handler_stats(const struct handler *h);

#endif
