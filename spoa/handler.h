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
struct l1;
struct lane;
struct fill;
struct spoa_stats;

/* One per worker. Connects to Valkey when conf has an edge cache. deliver
 * (shared by the workers, may be NULL) serves pages too big for an ACK; l1
 * (shared, may be NULL) keeps hot pages in memory; lane (shared, may be NULL)
 * is told about the edge hits HAProxy may answer without asking. */
struct handler *handler_new(struct ev_loop *loop, unsigned worker_id, const struct spoa_conf *conf,
                            struct deliver *deliver, struct l1 *l1, struct lane *lane,
                            struct fill *fill, struct spoa_stats *stats);
/* Pending lookups complete (passing to the origin) before this returns. */
void handler_free(struct handler *h);

/* Completes req, now or later on the loop. conf is the worker's current
 * configuration; a reference is held while the request is pending. */
void handler_notify(struct handler *h, struct spoe_req *req, struct spoe_cur msgs,
                    struct spoa_conf *conf);

#endif
