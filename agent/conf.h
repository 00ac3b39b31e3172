/* cedra-agent configuration: defaults, the file's keywords (lib/cfgfile
 * format), validation. See docs/cedra-agent.8 and docs/cedra-agent.conf. */
#ifndef CEDRA_AGENT_CONF_H
#define CEDRA_AGENT_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log.h"
#include "pool.h"
#include "privs.h"
#include "util.h"

#define AGENT_MAX_SERVICES 8
#define AGENT_MAX_TAGS 16
#define AGENT_MAX_META 16
#define AGENT_NAME_MAX 128   /* service, backend and server names */
#define AGENT_PREFIX_MAX 64  /* server-template prefix */
#define AGENT_TMPL_MAX 256   /* key-prefix and routes templates */
#define AGENT_SOCK_MAX 108   /* sun_path */
#define AGENT_MAX_SLOTS 4096 /* per backend */

#define AGENT_DEFAULT_CONF SYSCONFDIR "/cedra/cedra-agent.conf"

/* One watched Consul service and the two HAProxy backends it fills. The
 * first service is the storefront: its canary state goes to cedra-spoa. */
struct agent_service_conf {
    char name[AGENT_NAME_MAX];
    char backend[POOL_KINDS][AGENT_NAME_MAX];
    /* Servers of the backend whose name is this prefix followed by digits
     * are the agent's slots ("stable" -> stable1, stable2, ...); other
     * servers are left alone. "" = every server of the backend. */
    char slot_prefix[POOL_KINDS][AGENT_PREFIX_MAX];
};

struct agent_conf {
    /* ---- Consul (fixed at start-up) ---- */
    struct agent_service_conf svc[AGENT_MAX_SERVICES];
    unsigned nsvc;
    char canary_tag[64];
    char build_key[64];
    char canary_weight_key[64]; /* "" = no weight from service Meta */
    char consul_addr[256];      /* "" = CONSUL_HTTP_ADDR, then 127.0.0.1:8500 */
    char consul_dc[64];
    double consul_wait;
    double consul_retry_min, consul_retry_max;
    unsigned consul_rate_burst;
    double consul_rate_interval;
    double consul_same_index_interval;
    double consul_timeout; /* non-blocking requests */
    double consul_connect_timeout;
    bool consul_stale;
    bool consul_passing_only;
    uint64_t consul_max_body;
    unsigned consul_max_instances;

    /* ---- canary and safety (reloadable) ---- */
    int canary_weight;  /* percent of new users sent to a live canary */
    double panic_ratio; /* refuse an answer whose stable pool < ratio x the last one */

    /* ---- HAProxy Runtime API ---- */
    char haproxy_socket[AGENT_SOCK_MAX]; /* fixed */
    double haproxy_timeout;              /* per command; reloadable */
    double drain_grace;                  /* maint after this long in drain */
    double drain_min;                    /* never maint before this long in drain */
    double interval;                     /* reconcile round every ... */
    double drain_interval;               /* ... and this often while a slot drains */
    unsigned max_slots;                  /* per backend; fixed */
    /* HAProxy's server-state-file: rewritten after a round that changed it,
     * so that a restarted HAProxy comes back with the slots ("" = none). */
    char server_state_file[AGENT_TMPL_MAX]; /* reloadable */

    /* ---- cedra-spoa operator socket (reloadable) ---- */
    char spoa_socket[AGENT_SOCK_MAX]; /* "" = do not push to cedra-spoa */
    double spoa_timeout;
    double spoa_verify_interval;
    /* How long the last canary server's drain waits for cedra-spoa to
     * confirm "canary off" (0: it does not wait). */
    double canary_drain_wait;
    char key_prefix[AGENT_TMPL_MAX]; /* template: %{build}, %{pool}, %{service} */
    char routes[AGENT_TMPL_MAX];     /* template, or "pathname" */

    /* ---- self-registration (fixed) ---- */
    bool reg_enabled;
    char reg_name[AGENT_NAME_MAX];
    char reg_id[AGENT_NAME_MAX]; /* "" = <name>-<hostname> */
    char reg_address[POOL_ADDR_MAX];
    int reg_port; /* -1 = the metrics port, else 0 */
    char reg_tags[AGENT_MAX_TAGS][64];
    unsigned nreg_tags;
    char reg_meta[AGENT_MAX_META][2][128];
    unsigned nreg_meta;
    double reg_ttl;
    double reg_deregister_after;
    double health_window; /* 0 = max(3 x interval, 5 s); reloadable */

    /* ---- operator socket, metrics, logs ---- */
    char stats_socket[AGENT_SOCK_MAX]; /* "" = none; fixed */
    unsigned stats_mode;
    char stats_user[64], stats_group[64];
    bool has_metrics; /* fixed */
    struct endpoint metrics;
    enum log_level log_level; /* reloadable */
    bool log_syslog;          /* fixed */
    struct privs privs;       /* user, group, allow-root; fixed */
};

void agent_conf_defaults(struct agent_conf *c);
/* Loads path over the defaults and validates. 0, or -1 with a reason. */
int agent_conf_load(const char *path, struct agent_conf *c, char *err, size_t errlen);
int agent_conf_load_string(const char *text, struct agent_conf *c, char *err, size_t errlen);

/* Expands a template ("%{build}", "%{pool}", "%{service}", "%%") into out.
 * Returns 0, or -1 when out is too small, a variable is unknown, or the
 * result holds a character the operator socket cannot carry in one word
 * (blank, control character, ';', '\', '#'). */
int agent_tmpl_render(const char *tmpl, const char *build, const char *pool, const char *service,
                      char *out, size_t outlen);
/* A word usable in a cedra-spoa or HAProxy command (see above). */
bool agent_word_ok(const char *s);

/* Seconds of "health-window" in effect. */
double agent_conf_health_window(const struct agent_conf *c);

#endif
