/* L1: the in-process page cache shared by every worker (issue 4).
 *
 * It holds parsed ISR entries (struct isr_entry, ready to answer) under their
 * full Valkey key (<pool prefix><Next.js cache key>), bounded in bytes, and is
 * kept exact by Valkey client-side caching (spoa/tracking.h): any write,
 * delete, expiry or eviction of a key, and any change of a pool's
 * __revalidated_tags__, drops the copy here.
 *
 * Concurrency. The cache is split into shards (by a keyed SipHash of the key),
 * each with its own mutex, hash table and S3-FIFO queues; a get or put holds
 * one shard lock for a few hundred nanoseconds. Entries are reference
 * counted: l1_get() and l1_put() hand out a struct l1_ref that keeps the entry
 * alive and unchanged, whatever other threads evict or invalidate meanwhile,
 * until l1_release(). Every function is thread-safe.
 *
 * Eviction: S3-FIFO per shard (a small probation FIFO of ~10% of the bytes, a
 * main FIFO with 2-bit frequency and reinsertion, a ghost set of recently
 * evicted key hashes). One-hit pages (crawlers, scans) leave from the small
 * queue without pushing hot pages out; a get only bumps a counter (no list
 * move), so hits stay cheap under the lock.
 *
 * Exactness: epochs. An entry read from Valkey before an invalidation must not
 * be inserted after it. l1_epoch() is a global counter; every invalidation
 * takes the next value and records it (hashed per key, hashed per tag, or
 * bulk for flush/prefix/tag-hash/enable changes) BEFORE dropping entries.
 * l1_put(epoch) refuses an entry when anything that could concern it was
 * invalidated after `epoch`, which the caller read before sending the Valkey
 * read. Hash collisions only cause extra refusals (a miss, never a stale hit).
 *
 * Safe by default: a new cache is disabled and tracks no prefix. l1_get()
 * misses and l1_put() refuses until the tracking module (which alone knows
 * that invalidations flow) enables it with the prefixes it tracks.
 */
#ifndef CEDRA_L1_H
#define CEDRA_L1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "isr.h"

struct l1;
/* A counted reference to one cached entry (opaque). */
struct l1_ref;

#define L1_MAX_SHARDS 256
#define L1_DEFAULT_SHARDS 16
/* Smallest byte budget of one shard: entries are refused when larger than a
 * quarter of their shard's budget. */
#define L1_MIN_SHARD_BYTES (64u << 10)
#define L1_MAX_PREFIXES 16

/* max_bytes: budget of the cached entries, charged as l1_charge() says.
 * nshards: 0 = L1_DEFAULT_SHARDS; rounded up to a power of two, lowered
 * until each shard gets at least L1_MIN_SHARD_BYTES. NULL on a budget below
 * L1_MIN_SHARD_BYTES or out of memory. The cache starts disabled. */
struct l1 *l1_new(size_t max_bytes, unsigned nshards);
/* Frees the cache. References still held stay valid until released. */
void l1_free(struct l1 *l1);

/* ---- reading ---------------------------------------------------------------- */

/* The entry cached under key, referenced; NULL on a miss, while the cache is
 * disabled, or while the key's prefix is suspended (l1_suspend_prefix). */
struct l1_ref *l1_get(struct l1 *l1, const char *key, size_t keylen);
const struct isr_entry *l1_ref_entry(const struct l1_ref *r);
/* The full key (NUL-terminated); *prefixlen the length of its pool prefix. */
const char *l1_ref_key(const struct l1_ref *r, size_t *keylen, size_t *prefixlen);
/* True when the entry is (or was) in the cache; false for the detached
 * reference l1_put() returns when it refused the entry. */
bool l1_ref_cached(const struct l1_ref *r);
/* True while the entry is in the cache: false once dropped (invalidated,
 * evicted, replaced, flushed) and for a detached reference. */
bool l1_ref_live(const struct l1_ref *r);
/* The entry's id, unique among the entries this cache ever held (0 for a
 * detached reference): unlike the address, never reused; and counted from a
 * random start, so that another process's cache (a restart) does not hand
 * out the same ids. */
uint64_t l1_ref_id(const struct l1_ref *r);
/* One more reference to the same entry (e.g. for the delivery server). */
struct l1_ref *l1_ref_hold(struct l1_ref *r);
/* Drops a reference; the last one frees the entry. NULL is a no-op. */
void l1_release(struct l1_ref *r);

/* ---- writing ---------------------------------------------------------------- */

/* The invalidation clock. Read it BEFORE the Valkey read whose result may be
 * put, and pass the value to l1_put(). */
uint64_t l1_epoch(const struct l1 *l1);

enum l1_put_result {
    L1_PUT_OK,        /* cached (replacing the key's previous entry, if any) */
    L1_PUT_DISABLED,  /* the cache is disabled (tracking down) */
    L1_PUT_UNTRACKED, /* the prefix is not one the tracking module covers */
    L1_PUT_STALE,     /* something about it was invalidated after epoch */
    L1_PUT_TOO_BIG,   /* charge above a quarter of a shard's budget */
    L1_PUT_OLDER,     /* the cached entry has a later lastModified: kept */
    L1_PUT_INVALID,   /* empty key, prefixlen >= keylen, or NULL entry */
};
const char *l1_put_result_str(enum l1_put_result r);

/* Bytes charged to the budget for an entry parsed from a value of value_len
 * bytes: the value, the parsed entry's fixed part (~9.5 KiB, measured) and
 * the key. value_len 0 = unknown: the entry's own count (isr_entry.mem: html,
 * decoded rscData and segmentData, tags, headers). */
size_t l1_charge(const struct isr_entry *e, size_t keylen, size_t value_len);

/* Caches e under key (key[0..prefixlen) is the pool prefix, e.g.
 * "storefront:"), replacing the key's previous entry. Takes ownership of e in
 * every case and returns a reference to it for the caller to answer from:
 * cached when *res (may be NULL) is L1_PUT_OK, detached otherwise (the entry
 * is freed when that reference is released). NULL only when out of memory;
 * e is then still the caller's. value_len: see l1_charge(). */
struct l1_ref *l1_put(struct l1 *l1, const char *key, size_t keylen, size_t prefixlen,
                      struct isr_entry *e, size_t value_len, uint64_t epoch,
                      enum l1_put_result *res);

/* ---- invalidation (any thread; each returns the entries dropped) ------------ */

size_t l1_invalidate_key(struct l1 *l1, const char *key, size_t keylen);
/* Entries carrying tag; prefix NULL = every pool, else only keys under it. */
size_t l1_invalidate_tag(struct l1 *l1, const char *prefix, const char *tag);
/* Every key starting with prefix[0..len). */
size_t l1_invalidate_prefix(struct l1 *l1, const char *prefix, size_t len);
/* The revalidation rule of the cache handler applied to the cached entries of
 * one pool: drops each entry under prefix having a tag whose time in
 * <prefix>__revalidated_tags__ (tags[i] -> times[i], ms, as isr_tag_time()
 * reads them) is later than its lastModified. */
size_t l1_invalidate_revalidated(struct l1 *l1, const char *prefix, size_t n,
                                 const char *const *tags, const size_t *taglens,
                                 const int64_t *times);
size_t l1_flush(struct l1 *l1);

/* ---- control (the tracking module) ----------------------------------------- */

/* Enabling starts from an empty cache and refuses every put whose epoch is
 * older; disabling flushes at once. Both bump the epoch. */
void l1_set_enabled(struct l1 *l1, bool on);
bool l1_enabled(const struct l1 *l1);
/* The pool prefixes whose keys Valkey reports changes of. A put under any
 * other prefix is refused; the entries of a prefix that leaves the set are
 * dropped. Bumps the epoch (a prefix that joins was not tracked when earlier
 * lookups read it). Suspensions of kept prefixes survive. Returns 0, or -1
 * (errno EINVAL: too many or empty prefixes; ENOMEM). */
int l1_set_prefixes(struct l1 *l1, const char *const *prefixes, size_t n);
/* While a prefix is suspended (counted), l1_get() misses for its keys; each
 * suspension bumps the epoch. The tracking module suspends a pool while it
 * re-reads its __revalidated_tags__ after a change. Unknown prefixes: no-op. */
void l1_suspend_prefix(struct l1 *l1, const char *prefix);
void l1_resume_prefix(struct l1 *l1, const char *prefix);

/* Called once for every entry that leaves the cache, whatever the reason,
 * from the thread that dropped it, with no cache lock held. The entry is
 * already marked (l1_ref_live() false) when the hook runs: a thread that
 * checks l1_ref_live() under a lock the hook also takes can never act on an
 * entry after the hook did. Set before the workers start; l1_free() does not
 * call it. */
typedef void l1_drop_hook(void *ud, const struct l1_ref *r);
void l1_set_drop_hook(struct l1 *l1, l1_drop_hook *hook, void *ud);

/* ---- observation -------------------------------------------------------------- */

struct l1_stats {
    uint64_t entries, bytes, max_bytes;
    uint64_t hits, misses;
    uint64_t bypassed; /* gets answered NULL: disabled or suspended */
    uint64_t puts, replaced;
    uint64_t refused[L1_PUT_INVALID + 1]; /* by l1_put_result ([L1_PUT_OK] unused) */
    uint64_t evictions;                   /* dropped for room */
    uint64_t invalidations;               /* entries dropped by l1_invalidate_*() / flush */
    uint64_t flushes;                     /* l1_flush() and disable */
    uint64_t epoch;
    unsigned shards;
    bool enabled;
};
/* A consistent count per shard (each read under its lock). */
void l1_get_stats(struct l1 *l1, struct l1_stats *out);

struct l1_info {
    const char *key; /* NUL-terminated */
    size_t keylen, prefixlen;
    size_t bytes;  /* charge */
    double age;    /* seconds in the cache */
    unsigned hits; /* l1_get() hits */
    bool main;     /* in S3-FIFO's main queue (proven reuse), else probation */
};
/* cb returns nonzero to stop. Called without any lock held, with the entry
 * referenced for the call. */
typedef int l1_iter_cb(const struct l1_info *info, const struct isr_entry *e, void *ud);
/* Visits the entries whose key starts with prefix[0..len) (len 0: all), shard
 * by shard; entries put or dropped meanwhile may or may not be seen. Returns
 * the number visited. */
size_t l1_foreach(struct l1 *l1, const char *prefix, size_t len, l1_iter_cb *cb, void *ud);

#endif
