/* Edge pages by entry id, for HAProxy's cache ("haproxy-cache on"): an edge HIT
 * is answered with the entry's id rather than its body, HAProxy serves the
 * page from its own cache keyed by that id, and on a miss of that cache the
 * delivery server fills it from here (fill_get()).
 *
 * Exactness. An entry's id is never reused, so a key of HAProxy's cache
 * names one version of one page: a new version is a new id, and no old body
 * can be served for it. The id only reaches HAProxy in an ACK decided by a
 * worker, which checked the entry under the same rules as any edge answer.
 * An entry offered here stays until the in-process cache drops it (the drop
 * hook, fill_drop_hook()), and a grace period after that, so that a request
 * whose ACK left just before the drop still finds its page: the same page
 * the ACK itself would have carried.
 *
 * Thread-safety: every function from any thread, fill_free() aside. */
#ifndef CEDRA_FILL_H
#define CEDRA_FILL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "isr.h"
#include "l1.h"

/* Seconds a dropped entry still fills: far above the time between an ACK
 * and HAProxy's request to the delivery server. */
#define FILL_GRACE 5.0

struct fill;

/* max_entries: entries offered and still in the in-process cache; grace:
 * seconds a dropped entry still fills. NULL on bad settings or no memory. */
struct fill *fill_new(size_t max_entries, double grace);
/* After the workers and the delivery server stopped. */
void fill_free(struct fill *f);

/* Makes ref's entry available to fills under its id, with the settings its
 * headers are made with (the last offer's, when offered again). False when
 * it cannot be: the entry left the in-process cache meanwhile, or the table
 * is full; the request is then answered another way. Takes its own
 * reference on ref. */
bool fill_offer(struct fill *f, struct l1_ref *ref, const struct isr_conf *isr);
/* The in-process cache's drop hook (ud = the fill table). */
void fill_drop_hook(void *ud, const struct l1_ref *r);
/* The entry offered under id, referenced, and its settings; NULL when
 * unknown (never offered, or dropped longer than grace ago). *grace tells
 * whether it was dropped already. */
struct l1_ref *fill_get(struct fill *f, uint64_t id, struct isr_conf *isr, bool *grace);

struct fill_stats {
    uint64_t entries, grace_entries;
    uint64_t offered, refused, fills, grace_fills, unknown_fills;
};
void fill_get_stats(struct fill *f, struct fill_stats *out);

#endif
