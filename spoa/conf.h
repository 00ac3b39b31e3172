/* cedra-spoa configuration: defaults, the file's keywords, validation. */
#ifndef CEDRA_SPOA_CONF_H
#define CEDRA_SPOA_CONF_H

#include <stdbool.h>
#include <stdint.h>

#include "isr.h"
#include "locale.h"
#include "routes.h"
#include "log.h"
#include "privs.h"
#include "util.h"

#define SPOA_MAX_LISTEN 8
#define SPOA_MAX_EXCLUDE 16
#define SPOA_MAX_POOLS 2
#define SPOA_MAX_SESSION_COOKIES 8

/* One build's view of the ISR cache: where its keys live and how to name them. */
struct spoa_pool {
    char name[16];         /* "stable", "canary" */
    char key_prefix[128];  /* the cache handler's keyPrefix */
    char routes_path[256]; /* route table file; "" for the pathname scheme */
    char build_id[128];    /* informative; the table's build line when it has one */
    struct routes *routes; /* owned */
};

/* Immutable once published to the workers; shared by reference count so that
 * a reload swaps it without locks on the request path. */
struct spoa_conf {
    _Atomic unsigned refs;

    /* Fixed for the life of the process (a change needs a restart). */
    struct endpoint listen[SPOA_MAX_LISTEN];
    unsigned nlisten;
    unsigned threads;
    unsigned backlog;
    unsigned unix_mode;
    uint32_t max_frame_size;
    uint64_t max_reassembly;
    unsigned max_inflight;
    unsigned max_connections; /* SPOP connections of the process; 0: from RLIMIT_NOFILE */
    double hello_timeout;
    double idle_timeout;
    double drain_timeout;
    bool log_syslog;
    char message[64];   /* the spoe-message we act on */
    struct privs privs; /* user, group, allow-root */

    /* Reloaded on SIGHUP. */
    enum log_level log_level;
    struct locale_set locales;
    char locale_cookie[64]; /* NEXT_LOCALE */
    unsigned redirect_code; /* 302 or 307 */
    unsigned nexclude;      /* path prefixes never redirected */
    const char *exclude[SPOA_MAX_EXCLUDE];
    char exclude_buf[SPOA_MAX_EXCLUDE][128];

    /* ISR edge cache. Valkey settings are fixed at start-up. */
    char valkey_addr[128]; /* "" = no edge cache: every request passes */
    unsigned valkey_db;
    double valkey_timeout;
    double valkey_connect_timeout;
    uint64_t valkey_max_reply;
    uint64_t l1_size; /* in-process page cache, bytes; 0 = none */
    struct spoa_pool pools[SPOA_MAX_POOLS];
    unsigned npools;
    unsigned canary_weight; /* percent of new users pinned to the canary pool */
    /* Set by "set pool canary off|key-prefix ...": until then (after a start or a
     * reload) a missing canary pool may only mean cedra-agent has not spoken yet. */
    bool canary_known;
    struct isr_conf isr;
    /* gzip level of the copies the edge answers with when Next would
     * compress (isr.compress); 0: those clients get the page uncompressed. */
    int gzip_level;
    unsigned lock_ms; /* revalidation lock of a stale page */
    char lock_prefix[64];
    char stats_socket[108]; /* operator socket path; "" = none */
    unsigned stats_mode;
    unsigned stats_maxconn;
    bool has_metrics; /* Prometheus /metrics over HTTP */
    struct endpoint metrics;
    bool has_deliver; /* local delivery path for pages bigger than one ACK */
    struct endpoint deliver;
    unsigned nsession; /* cookies that make a request private */
    char session_cookie[SPOA_MAX_SESSION_COOKIES][64];

    /* Fast lane (docs/fast-lane.md), fixed at start-up: on when lane_socket
     * and lane_map are set. */
    char lane_socket[108];  /* HAProxy's Runtime API */
    char lane_map[256];     /* the map's file name as HAProxy knows it */
    char lane_cookies[256]; /* the cookie pattern file, likewise */
    double lane_grace;
    unsigned lane_max_entries;

    /* Edge hits answered from HAProxy's cache by entry id (spoa/fill.h),
     * fixed at start-up. */
    bool haproxy_cache;
    unsigned haproxy_cache_entries;

    /* Set by the main thread when it publishes this configuration: answers
     * decided under an older one are not published to the lane. */
    uint64_t gen;
};

/* A new configuration with the defaults and one reference. */
struct spoa_conf *spoa_conf_new(void);
void spoa_conf_hold(struct spoa_conf *c);
void spoa_conf_release(struct spoa_conf *c);
void spoa_conf_defaults(struct spoa_conf *c);
/* A copy with one reference, sharing the route tables (operator changes). */
struct spoa_conf *spoa_conf_dup(const struct spoa_conf *c);
/* Operator/agent change, "set pool <argv...>": "<pool> key-prefix <p> routes
 * <file|pathname> [build <id>]", "canary off" or "canary weight <0-100>". */
int spoa_conf_set_pool(struct spoa_conf *c, int argc, char **argv, char *err, size_t errlen);
/* The pool called name, or NULL. */
const struct spoa_pool *spoa_conf_pool(const struct spoa_conf *c, const char *name);
/* max-connections, or without it half of what RLIMIT_NOFILE leaves once 256
 * descriptors are set aside (the rest is for the delivery path, Valkey and
 * the operator sockets), at least 16. */
unsigned spoa_conf_max_connections(const struct spoa_conf *c);
/* Frees what a configuration owns (route tables); the struct itself stays. */
void spoa_conf_clear(struct spoa_conf *c);
/* Loads path over the defaults. Returns 0, or -1 with a reason in err. */
int spoa_conf_load(const char *path, struct spoa_conf *c, char *err, size_t errlen);
/* Same, from text (tests). */
int spoa_conf_load_string(const char *text, struct spoa_conf *c, char *err, size_t errlen);

#endif
