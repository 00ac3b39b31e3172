/* One ISR lookup in Valkey, asynchronous, as the cache handler and Next.js
 * would decide it: the page's value, its membership in __sharedTags__, the
 * revalidation times of its tags and, for a stale page, the cross-node lock
 * that lets exactly one request revalidate at the origin. */
#ifndef CEDRA_LOOKUP_H
#define CEDRA_LOOKUP_H

#include <stddef.h>
#include <stdint.h>

#include "isr.h"

struct valkey;

enum lookup_result {
    LOOKUP_HIT,        /* fresh: serve it */
    LOOKUP_STALE,      /* stale, someone else revalidates: serve it */
    LOOKUP_REVALIDATE, /* stale, this request holds the lock: send it to the origin */
    LOOKUP_MISS,       /* absent, expired, revalidated, or not servable */
    LOOKUP_ERROR,      /* Valkey failed: send it to the origin */
};

struct lookup_params {
    const char *prefix;      /* the handler's keyPrefix, e.g. "storefront:" */
    const char *key;         /* Next.js cache key without the prefix */
    const char *lock_prefix; /* namespace of the revalidation locks */
    unsigned lock_ms;        /* how long one request owns a stale page's revalidation */
    const struct isr_conf *isr;
};

/* entry: on HIT/STALE/REVALIDATE the parsed entry, owned by the callee (free
 * it with isr_entry_free); NULL otherwise. state: what isr_state() said (for
 * HIT/STALE/REVALIDATE). why: a short token for logs and metrics. */
typedef void lookup_cb(void *priv, enum lookup_result res, struct isr_entry *entry,
                       enum isr_state state, const char *why);

/* Starts a lookup; cb is called exactly once, later, from the loop (never
 * from inside lookup_start). Returns 0, or -1 when it could not start (cb is
 * then never called). */
int lookup_start(struct valkey *v, const struct lookup_params *p, lookup_cb *cb, void *priv);

/* Only the revalidation lock of a page already known to be stale (from the
 * in-process cache): cb gets REVALIDATE, STALE or ERROR, and no entry. */
int lookup_lock(struct valkey *v, const struct lookup_params *p, lookup_cb *cb, void *priv);

const char *lookup_result_str(enum lookup_result r);

#endif
