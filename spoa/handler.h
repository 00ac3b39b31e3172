/* The decision for one request: reads a NOTIFY's `cedra-req` message and
 * answers with the txn variables HAProxy acts on. */
#ifndef CEDRA_HANDLER_H
#define CEDRA_HANDLER_H

#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "spoe.h"

/* Per-worker counters; read by other threads only as approximate figures. */
struct handler_stats {
    uint64_t notifies;
    uint64_t requests;       /* cedra-req messages */
    uint64_t other_messages; /* messages we do not know: ACKed without actions */
    uint64_t locale_found;
    uint64_t locale_none;
    uint64_t redirects;
    uint64_t redirect_refused; /* unsafe path or query: passed unchanged */
    uint64_t ack_too_big;
};

/* Completes req. scratch is a worker-owned buffer for the ACK's actions. */
void handler_notify(struct spoe_req *req, struct spoe_cur msgs, const struct spoa_conf *conf,
                    uint8_t *scratch, size_t scratch_len, struct handler_stats *st);

#endif
