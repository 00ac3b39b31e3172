/* Exact invalidation of the L1 cache (spoa/l1.h) by Valkey client-side
 * caching, in RESP2 (hiredis 0.14 has no RESP3 push), BCAST mode.
 *
 * One instance per process, on one libev loop (the main thread's): every
 * function but tracking_up() must be called from that loop's thread. Workers
 * never call into it and never wait for it: they use the L1, which this
 * module enables only while invalidations provably flow.
 *
 * Two connections, both our own (not spoa/valkey.h: it refuses SUBSCRIBE on
 * purpose, and its reconnects would not tell us to re-track):
 *   subscriber  AUTH, CLIENT SETNAME, CLIENT ID -> <id>,
 *               SUBSCRIBE __redis__:invalidate <heartbeat channel>
 *   tracking    AUTH, SELECT, CLIENT SETNAME, PING, then
 *               CLIENT TRACKING on REDIRECT <id> BCAST PREFIX <p1> PREFIX <p2> ...
 * With BCAST the tracking connection's own reads do not matter: Valkey sends
 * to the subscriber, as a "message" on __redis__:invalidate, the name of every
 * key under a prefix that is written, deleted, expires or is evicted (an
 * array of keys; a null payload on FLUSHALL/FLUSHDB). Tracking is a property
 * of the tracking connection: it stays open for as long as we are UP.
 * Prefixes must not overlap in one CLIENT TRACKING (Valkey refuses "a:" with
 * "a:b"): a prefix covered by a shorter one is left out of the command.
 *
 * What a message does to the L1:
 *   <key>                              l1_invalidate_key
 *   <prefix>__revalidated_tags__       revalidatePath recorded a tag: the pool
 *                                      is suspended in L1 (gets miss; reads in
 *                                      flight are refused by the epoch),
 *                                      HGETALL re-reads the hash, and the
 *                                      handler's rule is applied to the cached
 *                                      entries (l1_invalidate_revalidated);
 *                                      then the pool is resumed.
 *   <prefix>__sharedTags__             ignored by default: the cache handler
 *                                      only removes a key from it together
 *                                      with an UNLINK of that key (revalidateTag,
 *                                      its TTL sweep, delete), which arrives
 *                                      as a key invalidation; every set()
 *                                      writes it, so dropping the pool on it
 *                                      would empty the L1 at each ISR
 *                                      regeneration. shared_tags_drop_prefix
 *                                      selects the conservative behaviour.
 *   null (FLUSHALL/FLUSHDB)            l1_flush
 *
 * Liveness: a heartbeat every heartbeat_interval: PUBLISH on the tracking
 * connection to a channel only our subscriber listens to; both the reply
 * (>= 1 receiver) and the message must come back within heartbeat_timeout.
 * That catches what TCP does not (a SIGSTOPped server, a silent network cut),
 * within interval + timeout.
 *
 * If either connection breaks, a handshake or command fails or times out, or
 * a heartbeat is late: the L1 is disabled and flushed at once (DOWN; lookups
 * go to Valkey), both connections are closed, and the handshake is retried
 * with exponential backoff and jitter. When tracking is confirmed again the
 * L1 is enabled, empty, and refuses every put whose lookup started before.
 * One log line per state change (one warning per outage, not per attempt).
 */
#ifndef CEDRA_TRACKING_H
#define CEDRA_TRACKING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ev_loop;
struct l1;
struct tracking;

enum tracking_state {
    TRACKING_DOWN,       /* waiting for the backoff timer */
    TRACKING_CONNECTING, /* handshake in progress */
    TRACKING_UP,         /* invalidations flow: the L1 is enabled */
};

struct tracking_cfg {
    /* As struct valkey_cfg: numeric "host:port", "[v6]:port", "unix:/path". */
    const char *addr;
    const char *username; /* NULL: "AUTH password" */
    const char *password; /* NULL or "": no AUTH. Copied; wiped on free */
    unsigned db;          /* for the HGETALL of __revalidated_tags__ */
    /* The pools' key prefixes (at most L1_MAX_PREFIXES, 1 to 256 bytes). */
    const char *const *prefixes;
    size_t nprefixes;
    bool shared_tags_drop_prefix; /* see above; false by default */

    /* Zero selects the default given in brackets. */
    double connect_timeout;    /* s, the whole handshake [1] */
    double command_timeout;    /* s, HGETALL and CLIENT TRACKING changes [1] */
    double backoff_min;        /* s [0.05] */
    double backoff_max;        /* s [2] */
    double heartbeat_interval; /* s [0.5] */
    double heartbeat_timeout;  /* s [1] */
    size_t max_reply;          /* bytes buffered for one reply [64 MiB] */
};

/* Starts connecting at once (the L1 stays disabled until UP). NULL on an
 * invalid configuration (logged) or out of memory. The loop and the L1 must
 * outlive it. */
struct tracking *tracking_new(struct ev_loop *loop, const struct tracking_cfg *cfg, struct l1 *l1);
/* Disables (and flushes) the L1, closes both connections. */
void tracking_free(struct tracking *t);

/* New pool prefixes (set pool, reload). UP: prefixes that leave are dropped
 * from the L1 at once; the new set is applied atomically on the server
 * (MULTI, CLIENT TRACKING off, CLIENT TRACKING on ... PREFIX ..., EXEC) and the
 * L1 accepts the new prefixes once EXEC is answered. Connecting: the handshake
 * restarts with the new set. Down: the next attempt uses it. Returns 0, or -1
 * (EINVAL: too many, empty; ENOMEM) with nothing changed. */
int tracking_set_prefixes(struct tracking *t, const char *const *prefixes, size_t n);

/* tracking_up(): any thread. tracking_state(): the loop's thread. */
bool tracking_up(const struct tracking *t);
enum tracking_state tracking_state(const struct tracking *t);
const char *tracking_state_name(enum tracking_state s);

struct tracking_stats {
    uint64_t messages;       /* invalidation messages received */
    uint64_t keys;           /* keys named in them */
    uint64_t flushes;        /* null messages (FLUSHALL/FLUSHDB) */
    uint64_t reval_reads;    /* HGETALL of a __revalidated_tags__ */
    uint64_t reval_dropped;  /* entries dropped by the revalidation rule */
    uint64_t shared_changes; /* __sharedTags__ messages */
    uint64_t attempts;       /* handshakes started */
    uint64_t ups, downs;
    uint64_t heartbeats;                          /* completed */
    uint64_t heartbeat_us_last, heartbeat_us_max; /* PUBLISH to message */
};
/* Any thread (relaxed counters). */
void tracking_get_stats(const struct tracking *t, struct tracking_stats *out);

#endif
