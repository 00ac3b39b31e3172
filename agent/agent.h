/* cedra-agent's run time: one libev loop holding the Consul watches, the
 * reconcile rounds against HAProxy, the pushes to cedra-spoa, the
 * self-registration, the operator socket and /metrics.
 *
 * Flow: a Consul answer (consul_pool_cb) passes the panic threshold
 * (instances_accept) and becomes the service's "good" set, or is refused and
 * kept aside; a good set starts a round. A round is
 *   show info (HAProxy restarted?) -> per service and backend
 *   show servers state + show stat -> slots -> reconcile_plan -> hapi_apply_plan
 * and rounds also run on a timer (faster while a slot drains) and retry with
 * backoff when HAProxy does not answer. After a successful round the
 * storefront's builds and canary share go to cedra-spoa. */
#ifndef CEDRA_AGENT_AGENT_H
#define CEDRA_AGENT_AGENT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "conf.h"
#include "consul.h"
#include "hapi.h"
#include "metrics.h"
#include "pool.h"
#include "reconcile.h"
#include "spoa_client.h"

struct agent;

/* Per watched service. */
struct agent_svc {
    struct agent *a;
    unsigned idx;
    const struct agent_service_conf *conf; /* points into a->conf */
    struct consul_watch *w;

    /* Consul side. */
    struct pool_set good;              /* last accepted set (pools assigned by build) */
    char stable_build[POOL_BUILD_MAX]; /* the build the stable pool serves */
    bool promoted; /* the other build lost its canary tag: a rollout after promotion */
    bool have_good;
    struct pool_set refused; /* last refused answer, while in panic */
    bool have_refused;
    bool panic;
    char panic_reason[256];
    double panic_since; /* monotonic */
    uint64_t refused_total;
    bool force_accept; /* resync: take the next answer whatever it holds */
    enum consul_err last_err;
    char last_err_reason[256];
    double last_err_at;               /* monotonic, 0 none */
    _Atomic double last_success_mono; /* for the age metric (read by the HTTP thread) */

    /* HAProxy side. */
    struct slot_state *slots; /* 2 x max_slots */
    size_t nslots;
    bool observed;           /* slots read from HAProxy at least once */
    bool restore;            /* HAProxy restarted: restore even while paused */
    struct pool_set applied; /* the set the last successful plan brought HAProxy to */
    bool have_applied;
    uint64_t applied_index;
    size_t overflow[POOL_KINDS]; /* instances without a slot in the last plan */
    char overflow_logged[POOL_KINDS][POOL_ID_MAX + 32];
    size_t invalid, duplicate;
    size_t draining;
    double next_deadline;

    /* Metrics (series handles). */
    struct metrics_gauge *g_index, *g_panic, *g_failing, *g_instances[POOL_KINDS];
    struct metrics_gauge *g_used[POOL_KINDS], *g_free[POOL_KINDS], *g_draining[POOL_KINDS],
        *g_overflow[POOL_KINDS];
    struct metrics_counter *c_errors[CONSUL_ERR_KINDS];
    struct metrics_counter *c_updates, *c_refused, *c_resets;
    uint64_t seen_resets;
};

enum weight_source { WEIGHT_CONFIG, WEIGHT_META, WEIGHT_OPERATOR };

struct agent_round {
    bool running;
    bool again; /* another round asked while this one ran */
    unsigned svc;
    int kind;
    struct hapi_server *rows;
    size_t rows_max;
    int nrows;
    struct hapi_stat *stats;
    int nstats;
    struct plan plan;
    bool plan_live;          /* plan holds ops being applied */
    struct pool_set planned; /* copy of the set the running plan was made from */
    bool from_good;          /* planned is a copy of the service's good set */
    double t0;
    char step[HAPI_CMD_MAX + 1]; /* the command running, for error reports */
};

struct agent {
    struct ev_loop *loop;
    struct agent_conf *conf;
    const char *conf_path;
    double started;      /* monotonic */
    double started_wall; /* Unix time */

    struct consul *consul;
    struct agent_svc svc[AGENT_MAX_SERVICES];
    unsigned nsvc;

    struct hapi *h;
    struct agent_round r;
    ev_timer round_timer;
    struct hapi_info hinfo;
    double hinfo_at;
    bool have_hinfo;
    uint64_t haproxy_restarts;
    _Atomic double last_round_ok; /* monotonic, 0 never */
    unsigned round_failures;      /* consecutive */
    char round_error[512];
    uint64_t rounds_ok, rounds_failed;

    bool paused;
    double paused_since;
    int op_weight; /* operator override, -1 = none */

    uint64_t state_hash;    /* of the server-state-file last written */
    bool state_pending;     /* a "show servers state" for it is queued */
    char state_warned[256]; /* last reason it could not be written */

    struct spoa_client *spoa;
    struct spoa_want spoa_want;
    bool spoa_want_valid;
    char spoa_warned[256]; /* last "cannot push" reason logged */
    uint64_t spoa_pushes_seen, spoa_failures_seen;
    /* The drain of the last canary server, held back until cedra-spoa
     * confirms that it sends no user to the canary pool any more. */
    double canary_hold_since; /* monotonic, 0 = nothing held */

    ev_timer tick; /* metrics refresh, once a second */
    struct consul_stats cstats_seen;
    struct hapi_counters hctr_seen;

    bool stopping;
    void (*stop_cb)(void *ud);
    void *stop_ud;

    /* Metrics. */
    struct metrics *m;
    struct metrics_histogram *h_consul_latency, *h_round;
    struct metrics_counter *c_rounds_ok, *c_rounds_failed, *c_hapi_transport, *c_hapi_answer,
        *c_hapi_commands, *c_restarts, *c_spoa_pushes, *c_spoa_failures, *c_hold_confirmed,
        *c_hold_timeout;
    struct metrics_gauge *g_weight, *g_paused, *g_registered, *g_spoa_sync, *g_canary_live;
    struct metrics_family *f_age;
};

/* Builds everything from conf (owned by the agent from now on) and starts
 * the Consul watches, the rounds and the cedra-spoa pushes. NULL with a
 * reason. */
struct agent *agent_start(struct ev_loop *loop, struct agent_conf *conf, const char *conf_path,
                          char *err, size_t errlen);
/* Self-registration in Consul (when "register" is not off), once the
 * operator socket and /metrics are up. 0, or -1 with a reason. */
int agent_register_self(struct agent *a, char *err, size_t errlen);
/* SIGHUP: takes what can change at run time from nc (not owned). */
void agent_reload(struct agent *a, const struct agent_conf *nc);
/* SIGTERM: stops the rounds, deregisters from Consul, then calls done. */
void agent_stop(struct agent *a, void (*done)(void *ud), void *ud);
void agent_free(struct agent *a);

/* Used by the operator commands (agent_cli.c). */
void agent_round_now(struct agent *a);
void agent_set_paused(struct agent *a, bool paused);
void agent_resync(struct agent *a);
void agent_set_operator_weight(struct agent *a, int weight); /* -1 = auto */
int agent_canary_weight(const struct agent *a, enum weight_source *src);
bool agent_panic_any(const struct agent *a);
void agent_refresh_metrics(struct agent *a);
/* Majority build of a pool in ps ("" when none); count of its instances. */
const char *agent_pool_build(const struct pool_set *ps, enum pool_kind kind, size_t *count);

#endif
