/* Pushes the pools cedra-spoa serves from (build, key prefix, route table of
 * the stable and canary builds) and the canary share over cedra-spoa's
 * operator socket (DESIGN 3.5):
 *
 *   set pool stable key-prefix <p> routes <file|pathname> [build <id>]
 *   set pool canary key-prefix <p> routes <file|pathname> [build <id>]
 *   set pool canary off
 *   set pool canary weight <0-100>
 *
 * One command per connection (the hapi client: connect, "<cmd>\n", read until
 * cedra-spoa closes); success is an answer that is exactly one empty line,
 * failure a line starting with "error:". The client keeps what cedra-spoa
 * acknowledged and sends only the difference with the desired state, retries
 * with backoff, and re-sends everything when cedra-spoa restarted (its
 * "show info" pid changed) or its "show pools" disagrees with what was
 * acknowledged. Everything runs on the caller's libev loop. */
#ifndef CEDRA_AGENT_SPOA_CLIENT_H
#define CEDRA_AGENT_SPOA_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "conf.h"
#include "pool.h"

struct spoa_pool_want {
    bool on; /* stable: known (a build to serve); canary: live */
    char key_prefix[AGENT_TMPL_MAX];
    char routes[AGENT_TMPL_MAX];
    char build[POOL_BUILD_MAX];
};

struct spoa_want {
    struct spoa_pool_want pool[POOL_KINDS];
    int weight; /* canary share, 0..100 */
};

struct spoa_client;

/* NULL on a bad path or out of memory. */
struct spoa_client *spoa_client_new(struct ev_loop *loop, const char *path, double timeout,
                                    double verify_interval);
void spoa_client_free(struct spoa_client *sc);
const char *spoa_client_path(const struct spoa_client *sc);

/* The state cedra-spoa should have; the difference is pushed at once (or
 * after the running command). A stable pool that is not "on" is left as it
 * is in cedra-spoa (nothing known to push). */
void spoa_client_set(struct spoa_client *sc, const struct spoa_want *w);
/* cb(ud) after every command cedra-spoa acknowledged (NULL: none). */
void spoa_client_on_ack(struct spoa_client *sc, void (*cb)(void *ud), void *ud);
/* True when cedra-spoa acknowledged that no canary pool is live. */
bool spoa_client_canary_off(const struct spoa_client *sc);
/* Forgets what cedra-spoa acknowledged: everything is pushed again. */
void spoa_client_resync(struct spoa_client *sc);

struct spoa_client_stats {
    uint64_t pushes;   /* acknowledged "set pool" commands */
    uint64_t failures; /* failed commands (transport, error answers, unexpected answers) */
    uint64_t resyncs;  /* full re-pushes after a cedra-spoa restart or a mismatch */
    uint64_t verifies; /* completed verifications */
    bool in_sync;      /* the desired state is acknowledged */
    bool have_desired; /* spoa_client_set() was called */
    bool acked_known;  /* what cedra-spoa holds is known */
    struct spoa_want acked;
    long long spoa_pid;   /* from "show info", -1 unknown */
    char last_error[256]; /* "" when the last command succeeded */
    double last_ok;       /* monotonic time of the last successful command, 0 never */
};
void spoa_client_stats(const struct spoa_client *sc, struct spoa_client_stats *st);

/* Pure helpers (unit-testable): the commands that move cedra-spoa from acked
 * (NULL: unknown) to want, in order, into cmds[max][len]. Returns the count. */
size_t spoa_client_diff(const struct spoa_want *acked, const struct spoa_want *want,
                        char cmds[][512], size_t max);

#endif
