/* Consul HTTP client on a libev loop (libcurl multi-socket: one CURLM per
 * struct consul, its sockets and timer driven by ev_io/ev_timer).
 *
 * Two jobs:
 *  - watches: blocking queries on /v1/health/service/<name>, as Consul's
 *    "Blocking Queries" page says (index/wait, reset when the index goes
 *    backwards, index >= 1, rate limit), each answer parsed into a pool_set;
 *  - self-registration: the agent's own service with a TTL check kept
 *    passing while the caller says it is healthy, deregistered on shutdown.
 *
 * Everything runs on the loop's thread; callbacks are called from it. Do not
 * call consul_free() from a callback (consul_shutdown() is fine). */
#ifndef CEDRA_AGENT_CONSUL_H
#define CEDRA_AGENT_CONSUL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "instances.h"
#include "pool.h"

struct ev_loop;
struct consul;
struct consul_watch;

struct consul_cfg {
    /* NULL: from the environment as Consul's own clients read it, then the
     * default. addr: CONSUL_HTTP_ADDR ("host:port", "http(s)://host:port[/prefix]",
     * "unix:///path"), default "127.0.0.1:8500". token: CONSUL_HTTP_TOKEN_FILE,
     * then CONSUL_HTTP_TOKEN. TLS: CONSUL_CACERT, CONSUL_CAPATH,
     * CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY. */
    const char *addr;
    const char *token;
    const char *cacert;
    const char *capath;
    const char *client_cert;
    const char *client_key;
    int ssl;                /* 1 https, 0 http, -1: CONSUL_HTTP_SSL (default http) */
    int ssl_verify;         /* 1/0, -1: CONSUL_HTTP_SSL_VERIFY (default verify) */
    const char *datacenter; /* ?dc=, NULL/"" for the agent's own */

    /* Watches. */
    double wait;                /* blocking ?wait=, seconds (Consul caps it at 600) */
    double timeout_margin;      /* client timeout = wait * 17/16 + this */
    bool stale;                 /* ?stale: any server answers, no leader round trip */
    bool passing_only;          /* ?passing=1. Consul then drops "warning" instances too */
    double retry_min;           /* backoff after an error: retry_min, x2 each time ... */
    double retry_max;           /* ... up to retry_max, with jitter */
    double same_index_interval; /* min. time between two queries starts when the index did
                                   not change (a Consul bug must not become a busy loop) */
    unsigned rate_burst;        /* token bucket over query starts: burst ... */
    double rate_interval;       /* ... and one token per rate_interval seconds */
    struct instances_cfg inst;

    /* All requests. */
    double request_timeout; /* non-blocking requests (registration, first query) */
    double connect_timeout;
    size_t max_body;         /* bytes; a bigger answer is aborted and counted as an error */
    double shutdown_timeout; /* bound on the deregistration at shutdown */
};

/* Fills cfg with the defaults (every string NULL, i.e. from the environment;
 * wait 60 s, margin 2 s, retry 0.5..30 s, same-index interval 1 s, burst 5
 * every 1 s, request timeout 10 s, connect 5 s, 8 MiB, shutdown 2 s,
 * passing_only, instances_cfg_defaults()). */
void consul_cfg_defaults(struct consul_cfg *cfg);

enum consul_err {
    CONSUL_ERR_CONNECT,   /* refused, unresolvable, unreachable */
    CONSUL_ERR_TIMEOUT,   /* client timeout (incl. a stalled server) */
    CONSUL_ERR_TRANSPORT, /* closed/reset without an answer, TLS, other libcurl errors */
    CONSUL_ERR_HTTP_403,  /* ACL: unknown token, or a write without permission */
    CONSUL_ERR_HTTP_404,
    CONSUL_ERR_HTTP_4XX, /* other 4xx */
    CONSUL_ERR_HTTP_5XX,
    CONSUL_ERR_HTTP_OTHER, /* 1xx/3xx or any unexpected status */
    CONSUL_ERR_TOO_BIG,    /* answer above max_body */
    CONSUL_ERR_NO_INDEX,   /* 200 without a valid X-Consul-Index */
    CONSUL_ERR_BAD_ANSWER, /* invalid JSON or not the expected shape */
    CONSUL_ERR_KINDS
};
const char *consul_err_name(enum consul_err kind);

/* Returns NULL with a reason in err (bad address, token with CR/LF, libcurl
 * failure). Strings in cfg are copied. */
struct consul *consul_new(struct ev_loop *loop, const struct consul_cfg *cfg, char *err,
                          size_t errlen);
/* Cancels everything at once, without deregistering; no callback is called. */
void consul_free(struct consul *c);
/* "http://127.0.0.1:8500" or "unix:/path", for logs. */
const char *consul_address(const struct consul *c);

/* ---- watches ------------------------------------------------------------- */

/* ps is owned by the watch and valid during the call only (pool_set_copy()
 * to keep it). Called for each successful answer whose index or content
 * differs from the previous one; ps->index is the answer's X-Consul-Index.
 * An empty ps is a real (200, valid JSON) empty answer: whether to apply it is
 * the consumer's decision (instances_accept()). Errors never come here. */
typedef void consul_pool_cb(struct consul_watch *w, const struct pool_set *ps, void *udata);
/* Each failed query, with a printable reason. The watch retries by itself. */
typedef void consul_error_cb(struct consul_watch *w, enum consul_err kind, const char *reason,
                             void *udata);

/* Starts watching service (the first query goes out on the next loop
 * iteration). Returns NULL on allocation failure or an empty name. */
struct consul_watch *consul_watch(struct consul *c, const char *service, consul_pool_cb *on_pool,
                                  consul_error_cb *on_error, void *udata);
/* Stops and frees one watch (its in-flight query is aborted). */
void consul_watch_free(struct consul_watch *w);
const char *consul_watch_service(const struct consul_watch *w);

struct consul_watch_stats {
    uint64_t index;           /* last X-Consul-Index (0 before the first answer) */
    double last_success;      /* Unix time of the last good answer, 0 if none */
    double last_success_mono; /* the same on now_mono()'s clock */
    uint64_t queries;         /* completed queries, good or bad */
    uint64_t updates;         /* pool callbacks */
    uint64_t resets;          /* index went backwards */
    uint64_t errors[CONSUL_ERR_KINDS];
    unsigned failures;                   /* consecutive failures, 0 when healthy */
    struct instances_report last_report; /* of the last good answer */
};
void consul_watch_stats(const struct consul_watch *w, struct consul_watch_stats *st);

/* ---- self-registration ----------------------------------------------------- */

enum consul_health { CONSUL_HEALTH_PASS, CONSUL_HEALTH_WARN, CONSUL_HEALTH_FAIL };
/* Asked before each TTL update; may write a short note (check output). */
typedef enum consul_health consul_health_cb(void *udata, char *note, size_t notelen);

struct consul_reg_cfg {
    const char *name;    /* service name, required */
    const char *id;      /* service ID, default name */
    const char *address; /* the metrics endpoint; NULL/"": the Consul agent's node address */
    uint16_t port;
    const char *const *tags; /* ntags strings */
    size_t ntags;
    const char *const *meta; /* nmeta key/value pairs: meta[2i], meta[2i+1] */
    size_t nmeta;
    double ttl;              /* TTL check period, seconds; updates every ttl/3 */
    double deregister_after; /* DeregisterCriticalServiceAfter, seconds (Consul's min is 60) */
};

/* Registers (PUT /v1/agent/service/register) with a TTL check "service:<id>",
 * then every ttl/3 sends pass, warn or fail as health() says; re-registers
 * when Consul answers 404 for the check (its agent restarted and forgot us);
 * retries with backoff on errors. One registration per struct consul.
 * Returns 0, or -1 with a reason. */
int consul_register(struct consul *c, const struct consul_reg_cfg *rc, consul_health_cb *health,
                    void *udata, char *err, size_t errlen);
/* true once Consul accepted the registration (and no 404 since). */
bool consul_registered(const struct consul *c);

/* ---- shutdown and stats ---------------------------------------------------- */

/* Clean exit: frees every watch (their pointers are dead after this call; no
 * callback of theirs comes) and stops the TTL updates, deregisters the service
 * (bounded by shutdown_timeout), then calls done(deregistered, udata) from
 * the loop, once. deregistered is true when Consul confirmed it or nothing
 * was registered. consul_free() may be called from done. */
typedef void consul_done_cb(struct consul *c, bool deregistered, void *udata);
void consul_shutdown(struct consul *c, consul_done_cb *done, void *udata);

struct consul_stats {
    uint64_t requests;                 /* completed HTTP requests */
    uint64_t errors[CONSUL_ERR_KINDS]; /* all requests */
    /* Latency of requests that are not blocking queries (a blocking query's
     * duration is Consul's wait, not a latency). */
    double latency_sum;
    uint64_t latency_count;
    uint64_t ttl_updates;   /* accepted pass/warn/fail */
    uint64_t registrations; /* accepted registrations */
};
void consul_stats(const struct consul *c, struct consul_stats *st);

#endif
