/*
 * L1 page cache (see l1.h).
 *
 * Layout: nshards shards, each a cache line aligned struct with its mutex, a
 * chained hash table (power-of-two buckets, load factor <= 1), two FIFO
 * queues (S3-FIFO's small and main) and a direct-mapped ghost table of key
 * fingerprints. The shard of a key is taken from the top bits of its keyed
 * SipHash-1-3, its bucket from the low bits: keys come from URLs, and an
 * unkeyed hash would let a client pile pages into one chain.
 *
 * Ownership: a node (struct l1_ref) holds one parsed entry. The cache owns one
 * reference while the node is linked; l1_get/l1_put give the caller one more.
 * Nodes are unlinked under the shard lock, put on a local "grave" list, and
 * their cache reference is dropped after the lock is released, so that
 * freeing a large jansson tree never happens under a lock.
 *
 * Epoch marks: clock is the global counter; bulk (flush, prefix, enable,
 * prefix set, suspension), kmark[] (hashed by key) and tmark[] (hashed by
 * tag) hold the clock value of the latest invalidation that concerns them.
 * An invalidation stores its mark BEFORE it visits the shards; l1_put reads
 * the marks under the shard lock. So a put either runs before the visit of its
 * shard (and is dropped by it) or sees the mark (and is refused).
 */
#include "l1.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "util.h"

#define KMARKS 8192 /* per-key invalidation marks (hashed) */
#define TMARKS 1024 /* per-tag invalidation marks (hashed) */
#define INITIAL_BUCKETS 64
#define GHOST_MIN 64
#define GHOST_MAX 65536
#define GHOST_BYTES_PER_SLOT (16u << 10) /* one ghost slot per 16 KiB of budget */
#define FREQ_MAX 3
#define SMALL_PERCENT 10
/* Heap used by a parsed entry beyond its raw value: struct isr_entry and its
 * private part (~5.6 KiB of fixed arrays), jansson's nodes and malloc
 * rounding. Measured with mallinfo2() on values of 0.5 KiB to 150 KiB: 9.4 KiB. */
#define ENTRY_FIXED 9728
#define CACHE_LINE 64

enum where { Q_NONE, Q_SMALL, Q_MAIN };

struct qlink {
    struct qlink *prev, *next;
};

struct l1_ref {
    _Atomic unsigned refs;
    struct qlink q;       /* in its shard's small or main queue */
    struct l1_ref *hnext; /* hash chain; the grave list once unlinked */
    struct isr_entry *entry;
    uint64_t hash;
    size_t charge;
    double born;
    uint32_t keylen, prefixlen;
    unsigned hits;
    uint8_t freq;
    uint8_t where;
    bool cached;       /* set once before it is published */
    _Atomic bool gone; /* unlinked: set under the shard lock, before the drop hook runs */
    uint64_t id;       /* unique for the process's life, never reused */
    char key[];
};

struct shard {
    _Alignas(CACHE_LINE) pthread_mutex_t mu;
    struct l1_ref **buckets;
    size_t mask; /* buckets - 1 */
    size_t count;
    size_t bytes;
    size_t small_bytes;
    size_t budget;
    struct qlink small, main; /* sentinels: head->next is the newest */
    uint32_t *ghost;
    size_t ghost_mask;
    uint64_t hits, misses, puts, replaced, evictions, invalidations;
};

struct pfx {
    char *s;
    size_t len;
    unsigned susp;
};

struct l1 {
    uint64_t sipkey[2];
    unsigned nshards;
    unsigned shard_shift;
    size_t max_bytes;
    struct shard *shards;

    _Atomic bool enabled;
    _Atomic uint64_t clock;
    _Atomic uint64_t bulk;
    _Atomic uint64_t kmark[KMARKS];
    _Atomic uint64_t tmark[TMARKS];

    pthread_rwlock_t plock; /* the prefix set */
    struct pfx pfx[L1_MAX_PREFIXES];
    size_t npfx;
    _Atomic unsigned nsusp; /* sum of suspensions: 0 keeps l1_get off plock */

    _Atomic uint64_t bypassed;
    _Atomic uint64_t flushes;
    _Atomic uint64_t refused[L1_PUT_INVALID + 1];
    _Atomic uint64_t next_id;

    l1_drop_hook *drop_hook; /* set before any other thread uses the cache */
    void *drop_ud;
};

/* ---- hashing --------------------------------------------------------------- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

/* SipHash-1-3 (host byte order: the values never leave the process). */
static uint64_t siphash(const uint64_t k[2], const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t v0 = 0x736f6d6570736575ULL ^ k[0];
    uint64_t v1 = 0x646f72616e646f6dULL ^ k[1];
    uint64_t v2 = 0x6c7967656e657261ULL ^ k[0];
    uint64_t v3 = 0x7465646279746573ULL ^ k[1];
    uint64_t b = (uint64_t)len << 56, m;
    size_t i, full = len & ~(size_t)7;

    for (i = 0; i < full; i += 8) {
        memcpy(&m, p + i, 8);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    for (i = 0; i < (len & 7); i++)
        b |= (uint64_t)p[full + i] << (8 * i);
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t key_hash(const struct l1 *l1, const char *key, size_t len)
{
    return siphash(l1->sipkey, key, len);
}

static struct shard *shard_of(struct l1 *l1, uint64_t h)
{
    return &l1->shards[l1->nshards == 1 ? 0 : h >> l1->shard_shift];
}

static _Atomic uint64_t *kmark_of(struct l1 *l1, uint64_t h)
{
    return &l1->kmark[(h >> 24) & (KMARKS - 1)];
}

static _Atomic uint64_t *tmark_of(struct l1 *l1, const char *tag, size_t len)
{
    return &l1->tmark[siphash(l1->sipkey, tag, len) & (TMARKS - 1)];
}

/* ---- epochs ---------------------------------------------------------------- */

/* Takes the next clock value and raises slot to it. */
static uint64_t mark(struct l1 *l1, _Atomic uint64_t *slot)
{
    uint64_t e = atomic_fetch_add(&l1->clock, 1) + 1;
    uint64_t cur = atomic_load(slot);

    while (cur < e && !atomic_compare_exchange_weak(slot, &cur, e))
        ;
    return e;
}

uint64_t l1_epoch(const struct l1 *l1)
{
    return atomic_load(&((struct l1 *)l1)->clock);
}

/* Under the shard lock: was anything about this entry invalidated after epoch? */
static bool stale_since(struct l1 *l1, const struct l1_ref *n, uint64_t epoch)
{
    const struct isr_entry *e = n->entry;

    if (atomic_load(&l1->bulk) > epoch || atomic_load(kmark_of(l1, n->hash)) > epoch)
        return true;
    for (size_t i = 0; i < e->ntags; i++)
        if (atomic_load(tmark_of(l1, e->tags[i], strlen(e->tags[i]))) > epoch)
            return true;
    return false;
}

/* ---- queues ---------------------------------------------------------------- */

static void q_init(struct qlink *h)
{
    h->prev = h->next = h;
}

static bool q_empty(const struct qlink *h)
{
    return h->next == h;
}

static void q_push_head(struct qlink *h, struct qlink *x)
{
    x->next = h->next;
    x->prev = h;
    h->next->prev = x;
    h->next = x;
}

static void q_del(struct qlink *x)
{
    x->prev->next = x->next;
    x->next->prev = x->prev;
    x->prev = x->next = x;
}

static struct l1_ref *q_node(struct qlink *x)
{
    return (struct l1_ref *)(void *)((char *)x - offsetof(struct l1_ref, q));
}

/* ---- nodes ----------------------------------------------------------------- */

static void node_free(struct l1_ref *n)
{
    isr_entry_free(n->entry);
    free(n);
}

void l1_release(struct l1_ref *r)
{
    if (r && atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1)
        node_free(r);
}

struct l1_ref *l1_ref_hold(struct l1_ref *r)
{
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    return r;
}

const struct isr_entry *l1_ref_entry(const struct l1_ref *r)
{
    return r->entry;
}

const char *l1_ref_key(const struct l1_ref *r, size_t *keylen, size_t *prefixlen)
{
    if (keylen)
        *keylen = r->keylen;
    if (prefixlen)
        *prefixlen = r->prefixlen;
    return r->key;
}

bool l1_ref_cached(const struct l1_ref *r)
{
    return r->cached;
}

bool l1_ref_live(const struct l1_ref *r)
{
    return r->cached && !atomic_load(&r->gone);
}

uint64_t l1_ref_id(const struct l1_ref *r)
{
    return r->id;
}

void l1_set_drop_hook(struct l1 *l1, l1_drop_hook *hook, void *ud)
{
    l1->drop_hook = hook;
    l1->drop_ud = ud;
}

/* Frees what a grave list holds: the cache's reference of each node. The
 * drop hook runs here, outside every shard lock, so that it may take its own
 * locks; each node was marked gone under its shard lock before. */
static void bury(const struct l1 *l1, struct l1_ref *grave)
{
    while (grave) {
        struct l1_ref *next = grave->hnext;

        if (l1->drop_hook)
            l1->drop_hook(l1->drop_ud, grave);
        l1_release(grave);
        grave = next;
    }
}

/* ---- shard internals (shard lock held) ---------------------------------------- */

static struct l1_ref *find(struct shard *sh, uint64_t h, const char *key, size_t len)
{
    for (struct l1_ref *n = sh->buckets[h & sh->mask]; n; n = n->hnext)
        if (n->hash == h && n->keylen == len && memcmp(n->key, key, len) == 0)
            return n;
    return NULL;
}

static void grow(struct shard *sh)
{
    size_t nb = (sh->mask + 1) * 2;
    struct l1_ref **b = calloc(nb, sizeof(*b));

    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i <= sh->mask; i++) {
        struct l1_ref *n = sh->buckets[i];

        while (n) {
            struct l1_ref *next = n->hnext;

            n->hnext = b[n->hash & (nb - 1)];
            b[n->hash & (nb - 1)] = n;
            n = next;
        }
    }
    free(sh->buckets);
    sh->buckets = b;
    sh->mask = nb - 1;
}

static void link_node(struct shard *sh, struct l1_ref *n, enum where w)
{
    struct l1_ref **b = &sh->buckets[n->hash & sh->mask];

    n->hnext = *b;
    *b = n;
    n->where = (uint8_t)w;
    q_push_head(w == Q_MAIN ? &sh->main : &sh->small, &n->q);
    sh->count++;
    sh->bytes += n->charge;
    if (w == Q_SMALL)
        sh->small_bytes += n->charge;
    if (sh->count > sh->mask + 1)
        grow(sh);
}

/* Unlinks n and puts it on *grave; its cache reference is dropped by bury(). */
static void drop(struct shard *sh, struct l1_ref *n, struct l1_ref **grave)
{
    struct l1_ref **pp = &sh->buckets[n->hash & sh->mask];

    while (*pp != n)
        pp = &(*pp)->hnext;
    *pp = n->hnext;
    q_del(&n->q);
    if (n->where == Q_SMALL)
        sh->small_bytes -= n->charge;
    n->where = Q_NONE;
    atomic_store(&n->gone, true);
    sh->count--;
    sh->bytes -= n->charge;
    n->hnext = *grave;
    *grave = n;
}

static void ghost_add(struct shard *sh, uint64_t h)
{
    sh->ghost[(h >> 40) & sh->ghost_mask] = (uint32_t)(h >> 16) | 1u;
}

/* True (and forgets it) when h was evicted recently from the small queue. */
static bool ghost_take(struct shard *sh, uint64_t h)
{
    uint32_t *g = &sh->ghost[(h >> 40) & sh->ghost_mask];

    if (*g != ((uint32_t)(h >> 16) | 1u))
        return false;
    *g = 0;
    return true;
}

/* S3-FIFO, in bytes. fresh (just put) is spared while anything else can go. */
static void evict(struct shard *sh, const struct l1_ref *fresh, struct l1_ref **grave)
{
    size_t small_target = sh->budget / 100 * SMALL_PERCENT;

    while (sh->bytes > sh->budget) {
        bool from_small =
            !q_empty(&sh->small) && (sh->small_bytes > small_target || q_empty(&sh->main));
        struct l1_ref *t;

        if (from_small && q_node(sh->small.prev) == fresh && !q_empty(&sh->main))
            from_small = false;
        if (from_small) {
            t = q_node(sh->small.prev);
            if (t->freq > 0) {
                /* Reused while on probation: promote. */
                q_del(&t->q);
                sh->small_bytes -= t->charge;
                t->freq = 0;
                t->where = Q_MAIN;
                q_push_head(&sh->main, &t->q);
                continue;
            }
            ghost_add(sh, t->hash);
        } else {
            t = q_node(sh->main.prev);
            if (t->freq > 0) {
                /* CLOCK-like second chance, one per unit of frequency. */
                t->freq--;
                q_del(&t->q);
                q_push_head(&sh->main, &t->q);
                continue;
            }
        }
        drop(sh, t, grave);
        sh->evictions++;
    }
}

/* ---- construction ----------------------------------------------------------- */

static bool shard_init(struct shard *sh, size_t budget)
{
    size_t g = GHOST_MIN;

    while (g < GHOST_MAX && g * GHOST_BYTES_PER_SLOT < budget)
        g *= 2;
    if (pthread_mutex_init(&sh->mu, NULL) != 0)
        return false;
    sh->buckets = calloc(INITIAL_BUCKETS, sizeof(*sh->buckets));
    sh->ghost = calloc(g, sizeof(*sh->ghost));
    if (!sh->buckets || !sh->ghost) {
        free(sh->buckets);
        free(sh->ghost);
        pthread_mutex_destroy(&sh->mu);
        return false;
    }
    sh->mask = INITIAL_BUCKETS - 1;
    sh->ghost_mask = g - 1;
    sh->budget = budget;
    q_init(&sh->small);
    q_init(&sh->main);
    return true;
}

static void shard_clear(struct shard *sh, struct l1_ref **grave)
{
    while (!q_empty(&sh->small))
        drop(sh, q_node(sh->small.next), grave);
    while (!q_empty(&sh->main))
        drop(sh, q_node(sh->main.next), grave);
}

static void shard_destroy(const struct l1 *l1, struct shard *sh)
{
    struct l1_ref *grave = NULL;

    shard_clear(sh, &grave);
    bury(l1, grave);
    free(sh->buckets);
    free(sh->ghost);
    pthread_mutex_destroy(&sh->mu);
}

struct l1 *l1_new(size_t max_bytes, unsigned nshards)
{
    struct l1 *l1;
    unsigned n = 1, shift = 64;
    size_t sz;

    if (max_bytes < L1_MIN_SHARD_BYTES) {
        errno = EINVAL;
        return NULL;
    }
    if (nshards == 0)
        nshards = L1_DEFAULT_SHARDS;
    if (nshards > L1_MAX_SHARDS)
        nshards = L1_MAX_SHARDS;
    while (n < nshards) {
        n *= 2;
        shift--;
    }
    while (n > 1 && max_bytes / n < L1_MIN_SHARD_BYTES) {
        n /= 2;
        shift++;
    }
    l1 = calloc(1, sizeof(*l1));
    if (!l1)
        return NULL;
    if (getrandom(l1->sipkey, sizeof(l1->sipkey), 0) != (ssize_t)sizeof(l1->sipkey)) {
        l1->sipkey[0] = (uint64_t)(uintptr_t)l1 ^ (uint64_t)(now_mono() * 1e9);
        l1->sipkey[1] = l1->sipkey[0] * 0x9e3779b97f4a7c15ULL;
    }
    /* Entry ids are keys of HAProxy's cache (the fast lane, haproxy-cache),
     * which outlives this process: a restarted cedra-spoa must not hand out
     * the previous process's ids for other versions of its pages, as a count
     * from 1 at every start would (the first page hit after each start would
     * get id 1, and HAProxy would serve the copy it keeps under it). A
     * random start in [2^62, 2^63) makes two starts' ranges of up to 2^32
     * ids meet with a chance below 2^-29. */
    {
        uint64_t base;

        if (getrandom(&base, sizeof(base), 0) != (ssize_t)sizeof(base))
            base = l1->sipkey[0] ^ (uint64_t)(now_mono() * 1e9);
        atomic_init(&l1->next_id, (base & ((1ULL << 62) - 1)) | (1ULL << 62));
    }
    l1->nshards = n;
    l1->shard_shift = shift;
    l1->max_bytes = max_bytes;
    sz = (sizeof(struct shard) * n + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE;
    l1->shards = aligned_alloc(CACHE_LINE, sz);
    if (!l1->shards || pthread_rwlock_init(&l1->plock, NULL) != 0) {
        free(l1->shards);
        free(l1);
        return NULL;
    }
    memset(l1->shards, 0, sz);
    for (unsigned i = 0; i < n; i++) {
        if (!shard_init(&l1->shards[i], max_bytes / n)) {
            while (i-- > 0)
                shard_destroy(l1, &l1->shards[i]);
            pthread_rwlock_destroy(&l1->plock);
            free(l1->shards);
            free(l1);
            errno = ENOMEM;
            return NULL;
        }
    }
    return l1;
}

void l1_free(struct l1 *l1)
{
    if (!l1)
        return;
    /* Whoever set the hook is going away with the cache. */
    l1->drop_hook = NULL;
    for (unsigned i = 0; i < l1->nshards; i++)
        shard_destroy(l1, &l1->shards[i]);
    for (size_t i = 0; i < l1->npfx; i++)
        free(l1->pfx[i].s);
    pthread_rwlock_destroy(&l1->plock);
    free(l1->shards);
    free(l1);
}

/* ---- prefixes ---------------------------------------------------------------- */

static struct pfx *pfx_find(struct l1 *l1, const char *s, size_t len)
{
    for (size_t i = 0; i < l1->npfx; i++)
        if (l1->pfx[i].len == len && memcmp(l1->pfx[i].s, s, len) == 0)
            return &l1->pfx[i];
    return NULL;
}

static bool tracked(struct l1 *l1, const char *key, size_t prefixlen)
{
    bool ok;

    pthread_rwlock_rdlock(&l1->plock);
    ok = pfx_find(l1, key, prefixlen) != NULL;
    pthread_rwlock_unlock(&l1->plock);
    return ok;
}

/* Conservative: a key under any suspended prefix (overlapping pools too). */
static bool suspended(struct l1 *l1, const char *key, size_t keylen)
{
    bool hit = false;

    pthread_rwlock_rdlock(&l1->plock);
    for (size_t i = 0; i < l1->npfx && !hit; i++)
        hit = l1->pfx[i].susp > 0 && keylen >= l1->pfx[i].len &&
              memcmp(key, l1->pfx[i].s, l1->pfx[i].len) == 0;
    pthread_rwlock_unlock(&l1->plock);
    return hit;
}

int l1_set_prefixes(struct l1 *l1, const char *const *prefixes, size_t n)
{
    struct pfx next[L1_MAX_PREFIXES], gone[L1_MAX_PREFIXES];
    size_t nn = 0, ngone = 0, i;
    unsigned susp = 0;

    if (n > L1_MAX_PREFIXES) {
        errno = EINVAL;
        return -1;
    }
    for (i = 0; i < n; i++) {
        size_t len = prefixes[i] ? strlen(prefixes[i]) : 0;
        bool dup = false;

        if (len == 0) {
            errno = EINVAL;
            goto fail;
        }
        for (size_t j = 0; j < nn; j++)
            dup = dup || (next[j].len == len && memcmp(next[j].s, prefixes[i], len) == 0);
        if (dup)
            continue;
        next[nn].s = strdup(prefixes[i]);
        next[nn].len = len;
        next[nn].susp = 0;
        if (!next[nn].s) {
            errno = ENOMEM;
            goto fail;
        }
        nn++;
    }
    /* The mark first: a put that sees a prefix that just joined also sees it. */
    mark(l1, &l1->bulk);
    pthread_rwlock_wrlock(&l1->plock);
    for (i = 0; i < nn; i++) {
        const struct pfx *old = pfx_find(l1, next[i].s, next[i].len);

        if (old) {
            next[i].susp = old->susp;
            susp += old->susp;
        }
    }
    for (i = 0; i < l1->npfx; i++) {
        bool kept = false;

        for (size_t j = 0; j < nn && !kept; j++)
            kept =
                next[j].len == l1->pfx[i].len && memcmp(next[j].s, l1->pfx[i].s, next[j].len) == 0;
        if (kept)
            free(l1->pfx[i].s);
        else
            gone[ngone++] = l1->pfx[i];
    }
    memcpy(l1->pfx, next, nn * sizeof(next[0]));
    l1->npfx = nn;
    atomic_store(&l1->nsusp, susp);
    pthread_rwlock_unlock(&l1->plock);
    /* No longer tracked: whatever happens to these keys now goes unnoticed. */
    for (i = 0; i < ngone; i++) {
        l1_invalidate_prefix(l1, gone[i].s, gone[i].len);
        free(gone[i].s);
    }
    return 0;
fail:
    while (nn-- > 0)
        free(next[nn].s);
    return -1;
}

void l1_suspend_prefix(struct l1 *l1, const char *prefix)
{
    struct pfx *p;

    mark(l1, &l1->bulk);
    pthread_rwlock_wrlock(&l1->plock);
    p = pfx_find(l1, prefix, strlen(prefix));
    if (p) {
        p->susp++;
        atomic_fetch_add(&l1->nsusp, 1);
    }
    pthread_rwlock_unlock(&l1->plock);
}

void l1_resume_prefix(struct l1 *l1, const char *prefix)
{
    struct pfx *p;

    pthread_rwlock_wrlock(&l1->plock);
    p = pfx_find(l1, prefix, strlen(prefix));
    if (p && p->susp > 0) {
        p->susp--;
        atomic_fetch_sub(&l1->nsusp, 1);
    }
    pthread_rwlock_unlock(&l1->plock);
}

static void clear_suspensions(struct l1 *l1)
{
    pthread_rwlock_wrlock(&l1->plock);
    for (size_t i = 0; i < l1->npfx; i++)
        l1->pfx[i].susp = 0;
    atomic_store(&l1->nsusp, 0);
    pthread_rwlock_unlock(&l1->plock);
}

/* ---- get / put ----------------------------------------------------------------- */

struct l1_ref *l1_get(struct l1 *l1, const char *key, size_t keylen)
{
    struct l1_ref *n;
    struct shard *sh;
    uint64_t h;

    if (!atomic_load_explicit(&l1->enabled, memory_order_relaxed) ||
        (atomic_load_explicit(&l1->nsusp, memory_order_relaxed) > 0 &&
         suspended(l1, key, keylen))) {
        atomic_fetch_add_explicit(&l1->bypassed, 1, memory_order_relaxed);
        return NULL;
    }
    h = key_hash(l1, key, keylen);
    sh = shard_of(l1, h);
    pthread_mutex_lock(&sh->mu);
    n = find(sh, h, key, keylen);
    if (n) {
        if (n->freq < FREQ_MAX)
            n->freq++;
        n->hits++;
        sh->hits++;
        /* The cache's own reference keeps n alive while we hold the lock. */
        atomic_fetch_add_explicit(&n->refs, 1, memory_order_relaxed);
    } else {
        sh->misses++;
    }
    pthread_mutex_unlock(&sh->mu);
    return n;
}

size_t l1_charge(const struct isr_entry *e, size_t keylen, size_t value_len)
{
    size_t c = ENTRY_FIXED + sizeof(struct l1_ref) + keylen + 1;

    if (value_len)
        return c + value_len;
    /* Unknown: what the parsed entry says it holds (html, decoded RSC
     * payloads, tags, headers). */
    return c + e->mem;
}

const char *l1_put_result_str(enum l1_put_result r)
{
    static const char *const names[] = {"ok",      "disabled", "untracked", "stale",
                                        "too_big", "older",    "invalid"};

    return (unsigned)r < sizeof(names) / sizeof(names[0]) ? names[r] : "?";
}

struct l1_ref *l1_put(struct l1 *l1, const char *key, size_t keylen, size_t prefixlen,
                      struct isr_entry *e, size_t value_len, uint64_t epoch,
                      enum l1_put_result *res)
{
    enum l1_put_result r = L1_PUT_OK;
    struct l1_ref *n, *old = NULL, *grave = NULL;
    struct shard *sh;

    if (!e) {
        if (res)
            *res = L1_PUT_INVALID;
        return NULL;
    }
    n = malloc(sizeof(*n) + keylen + 1);
    if (!n)
        return NULL;
    memset(n, 0, sizeof(*n));
    atomic_init(&n->refs, 1);
    q_init(&n->q);
    n->entry = e;
    n->keylen = (uint32_t)keylen;
    n->prefixlen = (uint32_t)prefixlen;
    memcpy(n->key, key, keylen);
    n->key[keylen] = '\0';
    n->charge = l1_charge(e, keylen, value_len);
    n->born = now_mono();
    n->hash = key_hash(l1, key, keylen);
    sh = shard_of(l1, n->hash);

    if (keylen == 0 || prefixlen == 0 || prefixlen >= keylen || keylen > UINT32_MAX)
        r = L1_PUT_INVALID;
    else if (!atomic_load(&l1->enabled))
        r = L1_PUT_DISABLED;
    else if (!tracked(l1, key, prefixlen))
        r = L1_PUT_UNTRACKED;
    else if (n->charge > sh->budget / 4)
        r = L1_PUT_TOO_BIG;
    if (r != L1_PUT_OK)
        goto refused;

    pthread_mutex_lock(&sh->mu);
    if (!atomic_load(&l1->enabled))
        r = L1_PUT_DISABLED;
    else if (stale_since(l1, n, epoch))
        r = L1_PUT_STALE;
    else if ((old = find(sh, n->hash, key, keylen)) != NULL &&
             old->entry->last_modified > e->last_modified)
        r = L1_PUT_OLDER;
    if (r != L1_PUT_OK) {
        pthread_mutex_unlock(&sh->mu);
        goto refused;
    }
    n->cached = true;
    n->id = atomic_fetch_add(&l1->next_id, 1) + 1;
    atomic_store_explicit(&n->refs, 2, memory_order_relaxed); /* the cache's and the caller's */
    if (old) {
        /* The same page, regenerated: it keeps its standing. */
        enum where w = old->where;

        n->freq = old->freq;
        drop(sh, old, &grave);
        sh->replaced++;
        link_node(sh, n, w);
    } else {
        link_node(sh, n, ghost_take(sh, n->hash) ? Q_MAIN : Q_SMALL);
    }
    sh->puts++;
    evict(sh, n, &grave);
    pthread_mutex_unlock(&sh->mu);
    bury(l1, grave);
    if (res)
        *res = L1_PUT_OK;
    return n;

refused:
    atomic_fetch_add_explicit(&l1->refused[r], 1, memory_order_relaxed);
    if (res)
        *res = r;
    return n; /* detached: the entry lives until the caller releases it */
}

/* ---- invalidation ------------------------------------------------------------------ */

size_t l1_invalidate_key(struct l1 *l1, const char *key, size_t keylen)
{
    uint64_t h = key_hash(l1, key, keylen);
    struct shard *sh = shard_of(l1, h);
    struct l1_ref *n, *grave = NULL;

    mark(l1, kmark_of(l1, h));
    pthread_mutex_lock(&sh->mu);
    n = find(sh, h, key, keylen);
    if (n) {
        drop(sh, n, &grave);
        sh->invalidations++;
    }
    pthread_mutex_unlock(&sh->mu);
    bury(l1, grave);
    return n != NULL;
}

typedef bool match_fn(const struct l1_ref *n, const void *arg);

/* Drops every cached node match() selects, shard by shard. */
static size_t sweep(struct l1 *l1, match_fn *match, const void *arg)
{
    size_t dropped = 0;

    for (unsigned i = 0; i < l1->nshards; i++) {
        struct shard *sh = &l1->shards[i];
        struct l1_ref *grave = NULL;
        struct qlink *queues[2] = {&sh->small, &sh->main};

        pthread_mutex_lock(&sh->mu);
        for (int q = 0; q < 2; q++) {
            struct qlink *x = queues[q]->next;

            while (x != queues[q]) {
                struct qlink *next = x->next;
                struct l1_ref *n = q_node(x);

                if (!match || match(n, arg)) {
                    drop(sh, n, &grave);
                    sh->invalidations++;
                    dropped++;
                }
                x = next;
            }
        }
        pthread_mutex_unlock(&sh->mu);
        bury(l1, grave);
    }
    return dropped;
}

struct prefix_arg {
    const char *s;
    size_t len;
};

static bool under(const struct l1_ref *n, const struct prefix_arg *p)
{
    return p->len == 0 || (n->keylen >= p->len && memcmp(n->key, p->s, p->len) == 0);
}

static bool match_prefix(const struct l1_ref *n, const void *arg)
{
    return under(n, arg);
}

size_t l1_invalidate_prefix(struct l1 *l1, const char *prefix, size_t len)
{
    struct prefix_arg p = {prefix, len};

    mark(l1, &l1->bulk);
    return sweep(l1, match_prefix, &p);
}

struct tag_arg {
    struct prefix_arg p;
    const char *tag;
};

static bool match_tag(const struct l1_ref *n, const void *arg)
{
    const struct tag_arg *t = arg;

    if (t->p.s && !under(n, &t->p))
        return false;
    for (size_t i = 0; i < n->entry->ntags; i++)
        if (strcmp(n->entry->tags[i], t->tag) == 0)
            return true;
    return false;
}

size_t l1_invalidate_tag(struct l1 *l1, const char *prefix, const char *tag)
{
    struct tag_arg t = {{prefix, prefix ? strlen(prefix) : 0}, tag};

    mark(l1, tmark_of(l1, tag, strlen(tag)));
    return sweep(l1, match_tag, &t);
}

/* An open-addressing index of the revalidated tags, for one sweep. */
struct reval_arg {
    struct prefix_arg p;
    struct l1 *l1;
    const char *const *tags;
    const size_t *lens;
    const int64_t *times;
    size_t *slot; /* index into tags + 1; 0 = empty */
    size_t mask;
};

static bool match_reval(const struct l1_ref *n, const void *arg)
{
    const struct reval_arg *r = arg;
    const struct isr_entry *e = n->entry;

    if (!under(n, &r->p))
        return false;
    for (size_t i = 0; i < e->ntags; i++) {
        size_t len = strlen(e->tags[i]);
        size_t j = siphash(r->l1->sipkey, e->tags[i], len) & r->mask;

        for (; r->slot[j]; j = (j + 1) & r->mask) {
            size_t k = r->slot[j] - 1;

            if (r->lens[k] == len && memcmp(r->tags[k], e->tags[i], len) == 0) {
                /* The handler: parseInt(time) > lastModified is a miss. */
                if (r->times[k] != ISR_TAG_NONE && r->times[k] > e->last_modified)
                    return true;
                break;
            }
        }
    }
    return false;
}

size_t l1_invalidate_revalidated(struct l1 *l1, const char *prefix, size_t n,
                                 const char *const *tags, const size_t *taglens,
                                 const int64_t *times)
{
    struct reval_arg r = {{prefix, strlen(prefix)}, l1, tags, taglens, times, NULL, 0};
    size_t size = 16, dropped;

    while (size < 2 * n && size < SIZE_MAX / 4)
        size *= 2;
    r.slot = calloc(size, sizeof(*r.slot));
    if (!r.slot)
        return l1_invalidate_prefix(l1, prefix, r.p.len); /* conservative */
    r.mask = size - 1;
    for (size_t i = 0; i < n; i++) {
        size_t j = siphash(l1->sipkey, tags[i], taglens[i]) & r.mask;

        while (r.slot[j])
            j = (j + 1) & r.mask;
        r.slot[j] = i + 1;
    }
    /* Lookups that read the tag times before the change must not put. */
    mark(l1, &l1->bulk);
    dropped = sweep(l1, match_reval, &r);
    free(r.slot);
    return dropped;
}

size_t l1_flush(struct l1 *l1)
{
    mark(l1, &l1->bulk);
    atomic_fetch_add(&l1->flushes, 1);
    return sweep(l1, NULL, NULL);
}

void l1_set_enabled(struct l1 *l1, bool on)
{
    if (on) {
        /* Lookups that started while disabled read what nobody tracked. */
        mark(l1, &l1->bulk);
        atomic_store(&l1->enabled, true);
        return;
    }
    atomic_store(&l1->enabled, false);
    clear_suspensions(l1);
    l1_flush(l1);
}

bool l1_enabled(const struct l1 *l1)
{
    return atomic_load(&((struct l1 *)l1)->enabled);
}

/* ---- observation --------------------------------------------------------------------- */

void l1_get_stats(struct l1 *l1, struct l1_stats *out)
{
    memset(out, 0, sizeof(*out));
    for (unsigned i = 0; i < l1->nshards; i++) {
        struct shard *sh = &l1->shards[i];

        pthread_mutex_lock(&sh->mu);
        out->entries += sh->count;
        out->bytes += sh->bytes;
        out->hits += sh->hits;
        out->misses += sh->misses;
        out->puts += sh->puts;
        out->replaced += sh->replaced;
        out->evictions += sh->evictions;
        out->invalidations += sh->invalidations;
        pthread_mutex_unlock(&sh->mu);
    }
    out->max_bytes = l1->max_bytes;
    out->bypassed = atomic_load(&l1->bypassed);
    for (int r = 0; r <= L1_PUT_INVALID; r++)
        out->refused[r] = atomic_load(&l1->refused[r]);
    out->flushes = atomic_load(&l1->flushes);
    out->epoch = atomic_load(&l1->clock);
    out->shards = l1->nshards;
    out->enabled = atomic_load(&l1->enabled);
}

struct visit {
    struct l1_ref *n;
    unsigned hits;
    bool main;
};

size_t l1_foreach(struct l1 *l1, const char *prefix, size_t len, l1_iter_cb *cb, void *ud)
{
    struct prefix_arg p = {prefix, prefix ? len : 0};
    size_t visited = 0;
    bool stop = false;

    for (unsigned i = 0; i < l1->nshards && !stop; i++) {
        struct shard *sh = &l1->shards[i];
        struct qlink *queues[2] = {&sh->small, &sh->main};
        struct visit *v;
        size_t nv = 0, k;
        double now = now_mono();

        pthread_mutex_lock(&sh->mu);
        v = sh->count ? malloc(sh->count * sizeof(*v)) : NULL;
        for (int q = 0; q < 2 && v; q++)
            for (struct qlink *x = queues[q]->next; x != queues[q]; x = x->next) {
                struct l1_ref *n = q_node(x);

                if (!under(n, &p))
                    continue;
                v[nv].n = l1_ref_hold(n);
                v[nv].hits = n->hits;
                v[nv].main = n->where == Q_MAIN;
                nv++;
            }
        pthread_mutex_unlock(&sh->mu);
        for (k = 0; k < nv; k++) {
            struct l1_ref *n = v[k].n;
            struct l1_info info = {
                .key = n->key,
                .keylen = n->keylen,
                .prefixlen = n->prefixlen,
                .bytes = n->charge,
                .age = now - n->born,
                .hits = v[k].hits,
                .main = v[k].main,
            };

            if (!stop) {
                visited++;
                stop = cb(&info, n->entry, ud) != 0;
            }
            l1_release(n);
        }
        free(v);
    }
    return visited;
}
