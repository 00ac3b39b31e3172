/*
 * A per-worker asynchronous Valkey client for the request path, on top of
 * hiredis 0.14 (async API) and the worker's libev loop.
 *
 * One struct valkey is one connection owned by one loop (one thread). It
 * pipelines commands, bounds every command by a timeout, bounds replies and
 * the number of commands in flight, and reconnects by itself with bounded
 * exponential backoff and jitter. Whatever Valkey does (slow, down, stopped,
 * answering garbage), valkey_command() never blocks and its callback is
 * called exactly once, later, from the loop: the request path can always fall
 * back to the origin in time (DESIGN.md §3.2).
 *
 * Contract of valkey_command():
 *   - returns 0: cb will be called exactly once, never from inside
 *     valkey_command() itself, unless valkey_cancel() forgets it first;
 *   - returns -1 (errno EINVAL, ENOMEM, ESHUTDOWN): cb will never be called.
 *     EINVAL: argc < 1, or a command that would turn the connection into a
 *     pub/sub or MONITOR one. ESHUTDOWN: called from a callback that
 *     valkey_free() is running.
 *   - commands are accepted only while the connection is UP; otherwise they
 *     fail with VALKEY_ERR_DOWN on the next loop iteration (no queueing while
 *     (re)connecting: a request must not wait for Valkey to come back).
 *   - one connection, pipelined: replies come in the order the commands were
 *     queued; TIMEOUT comes at the command's deadline; the immediate errors
 *     (DOWN, OVERLOAD) on the next loop iteration.
 *
 * A reply of type REDIS_REPLY_ERROR (e.g. WRONGTYPE) is a reply (VALKEY_OK):
 * what the reply means is the caller's concern, a broken connection is ours.
 *
 * Everything here must be called from the loop's thread.
 */
#ifndef CEDRA_VALKEY_H
#define CEDRA_VALKEY_H

#include <stddef.h>
#include <stdint.h>

struct ev_loop;
struct redisReply; /* <hiredis/hiredis.h> to look inside */
struct valkey;

enum valkey_state {
    VALKEY_DOWN,       /* no connection; waiting for the backoff timer */
    VALKEY_CONNECTING, /* TCP connect, AUTH, SELECT, PING in progress */
    VALKEY_UP,         /* PING answered: commands are sent */
};

enum valkey_err {
    VALKEY_OK = 0,
    VALKEY_ERR_DOWN,     /* not connected, reconnecting, or the connection was lost */
    VALKEY_ERR_TIMEOUT,  /* no reply within command_timeout (a late reply is dropped) */
    VALKEY_ERR_TOO_BIG,  /* the reply is larger than max_reply_size */
    VALKEY_ERR_PROTOCOL, /* the server sent bytes that are not RESP */
    VALKEY_ERR_OVERLOAD, /* max_pending commands already in flight */
    VALKEY_ERR_CLOSED,   /* valkey_free() with the command still pending */
    VALKEY_ERR_MAX
};

/* err == VALKEY_OK: reply is valid until the callback returns (never NULL).
 * Otherwise reply is NULL. privdata is what was given to valkey_command(). */
typedef void valkey_cb(struct valkey *v, void *privdata, enum valkey_err err,
                       const struct redisReply *reply);

struct valkey_cfg {
    /* "127.0.0.1:6379", "[::1]:6379", "unix:/run/valkey.sock" or "/run/valkey.sock".
     * Numeric addresses only (lib/util.h parse_endpoint): hiredis resolves names
     * with a blocking getaddrinfo(), which must never run on a worker. */
    const char *addr;
    const char *username; /* NULL: "AUTH password" (requirepass); else ACL user */
    const char *password; /* NULL or "": no AUTH. Copied; wiped on valkey_free */
    unsigned db;          /* SELECT db when not 0 */
    const char *name;     /* key=value prefix of our log lines, e.g. "worker=3"; may be NULL */

    /* Zero selects the default given in brackets. */
    double connect_timeout;  /* s, TCP connect + AUTH/SELECT/PING [0.5] */
    double command_timeout;  /* s, from queueing to reply [0.1] */
    double backoff_min;      /* s, first reconnect delay [0.05] */
    double backoff_max;      /* s, bound of the reconnect delay [2] */
    unsigned wedge_timeouts; /* consecutive timeouts that drop the connection [3] */
    /* Bytes of RESP [4 MiB]. A larger reply gets TOO_BIG; it is read and
     * dropped so that the connection and the commands behind it survive,
     * unless it is (or announces) more than 4 times that: then TOO_BIG, and
     * the connection is dropped before it is buffered. */
    size_t max_reply_size;
    unsigned max_pending; /* commands on the wire, late ones included [1024] */
};

/* Latency of answered commands (OK or TOO_BIG), from queueing to reply.
 * Buckets are not cumulative: count[i] counts latencies <= bounds[i] and >
 * bounds[i-1]; the last bucket is +Inf. */
#define VALKEY_LAT_BUCKETS 14
extern const double valkey_latency_bounds[VALKEY_LAT_BUCKETS - 1];

struct valkey_latency {
    uint64_t count[VALKEY_LAT_BUCKETS];
    uint64_t n;
    double sum; /* seconds */
};

struct valkey_stats {
    uint64_t commands;                /* accepted by valkey_command() */
    uint64_t results[VALKEY_ERR_MAX]; /* callbacks by err: [VALKEY_OK] replies, [..TIMEOUT].. */
    uint64_t late_replies;            /* replies to timed out or cancelled commands */
    uint64_t cancelled;               /* forgotten by valkey_cancel() */
    uint64_t connects;                /* connection attempts */
    uint64_t reconnects;              /* attempts after the first one */
    uint64_t ups;                     /* transitions to UP */
    uint64_t downs;                   /* UP connections lost */
    uint64_t wedged;                  /* connections dropped after wedge_timeouts */
    struct valkey_latency latency;
};

/* Starts connecting at once. NULL if cfg is invalid (logged) or out of memory.
 * The loop must outlive the client. */
struct valkey *valkey_new(struct ev_loop *loop, const struct valkey_cfg *cfg);

/* Every pending command gets VALKEY_ERR_CLOSED before this returns (from
 * inside those callbacks valkey_command() fails with ESHUTDOWN). Must not be
 * called from a valkey callback (it aborts: hiredis holds the context up the
 * stack). */
void valkey_free(struct valkey *v);

/* Queues one command; see the contract above. argvlen may be NULL (C strings). */
int valkey_command(struct valkey *v, valkey_cb *cb, void *privdata, int argc, const char **argv,
                   const size_t *argvlen);

/* Forgets every pending command queued with this privdata: their callbacks
 * will not be called (a reply that comes later is dropped). Returns how many.
 * Safe from any callback. Costs O(commands pending). */
unsigned valkey_cancel(struct valkey *v, const void *privdata);

enum valkey_state valkey_state(const struct valkey *v);
const struct valkey_stats *valkey_stats(const struct valkey *v);
const char *valkey_state_name(enum valkey_state s);
const char *valkey_err_name(enum valkey_err e);

#endif
