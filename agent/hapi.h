/* hapi: strict parsers for the HAProxy Runtime API answers cedra-agent relies
 * on, and plans that bring server-template slots to a desired state. The
 * transport (struct hapi, hapi_command(), ...) is the client of
 * lib/hapi_client.h, shared with cedra-spoa.
 */
#ifndef CEDRA_AGENT_HAPI_H
#define CEDRA_AGENT_HAPI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hapi_client.h"
#include "reconcile.h"

#define HAPI_NAME_MAX 128 /* proxy and server names we accept */
#define HAPI_ADDR_MAX 64

/* ---- strict answer parsers (pure) ------------------------------------------
 * Every parser rejects what it does not expect, with a reason in err: an
 * unexpected answer is an error, never a partial result. */

/* srv_admin_state bits (management.txt, "show servers state"). */
#define HAPI_ADMF_FMAINT 0x01u
#define HAPI_ADMF_IMAINT 0x02u
#define HAPI_ADMF_CMAINT                                                                           \
    0x04u /* "disabled" in the configuration: still set on a                                       \
             template slot after "state ready" (2.6.12) */
#define HAPI_ADMF_FDRAIN 0x08u
#define HAPI_ADMF_IDRAIN 0x10u
#define HAPI_ADMF_RMAINT 0x20u
#define HAPI_ADMF_HMAINT 0x40u
#define HAPI_ADMF_MAINT (HAPI_ADMF_FMAINT | HAPI_ADMF_IMAINT | HAPI_ADMF_RMAINT)
#define HAPI_ADMF_DRAIN (HAPI_ADMF_FDRAIN | HAPI_ADMF_IDRAIN)

/* One data line of "show servers state <backend>", format version 1. */
struct hapi_server {
    unsigned be_id;
    char be_name[HAPI_NAME_MAX];
    unsigned srv_id;
    char srv_name[HAPI_NAME_MAX];
    char addr[HAPI_ADDR_MAX];
    unsigned op_state; /* 0 stopped, 1 starting, 2 running, 3 stopping */
    unsigned admin;    /* HAPI_ADMF_* mask */
    unsigned uweight, iweight;
    unsigned check_result; /* 0..4 */
    unsigned check_state;
    uint16_t port;
};

/* Returns the number of rows (0..max) or -1. More rows than max is an error:
 * the caller sizes out[] for the slots it expects. */
int hapi_parse_servers_state(const char *text, size_t len, struct hapi_server *out, size_t max,
                             char *err, size_t errlen);
enum slot_admin hapi_admin_decode(unsigned admin);

/* One server line of "show stat <backend> 4 -1" (CSV). */
struct hapi_stat {
    char pxname[HAPI_NAME_MAX];
    char svname[HAPI_NAME_MAX];
    unsigned qcur, scur;
    char status[32]; /* "UP", "DRAIN", "MAINT", "UP 1/3", "no check", ... */
};
int hapi_parse_stat(const char *text, size_t len, struct hapi_stat *out, size_t max, char *err,
                    size_t errlen);

/* "show info" */
struct hapi_info {
    uint64_t pid;
    uint64_t uptime_sec;
    uint64_t start_time_sec; /* 0 when absent (older versions) */
    char version[64];
};
int hapi_parse_info(const char *text, size_t len, struct hapi_info *out, char *err, size_t errlen);

/* True when cur (read at monotonic time cur_at) is not the process prev (read
 * at prev_at) described: another pid (restart, or reload in master-worker
 * mode, where the worker changes), another start time, or an uptime behind
 * what the time elapsed implies (a restart that reused the pid, as happens
 * in containers). Measured on 2.6.12: a master-worker reload keeps
 * Uptime_sec growing, only Pid changes; a restart resets it. */
bool hapi_info_restarted(const struct hapi_info *prev, double prev_at, const struct hapi_info *cur,
                         double cur_at);

/* Answers of "set server": "state ..." and "weight ..." succeed with an empty
 * answer ("\n"); "addr A port P" with exactly one line "IP changed from ...",
 * "no need to change the addr..." ending in " by 'stats socket command'". */
enum hapi_set_kind { HAPI_SET_SILENT, HAPI_SET_ADDR };
int hapi_check_set_reply(enum hapi_set_kind kind, const char *text, size_t len, char *err,
                         size_t errlen);

/* ---- slots <-> HAProxy --------------------------------------------------- */

/* Brings the caller's slot table up to date for one backend: rows are that
 * backend's "show servers state" (they define its slots: a slot missing from
 * rows is dropped, a new one appended with empty bookkeeping), stats its
 * "show stat" lines (may be NULL/0: idle then stays unknown). Bookkeeping of
 * existing slots is kept (reconcile_observe). Returns 0, or -1 when the table
 * would exceed max or a row is unusable. */
int hapi_observe_backend(struct slot_state *slots, size_t *nslots, size_t max, enum pool_kind kind,
                         const struct hapi_server *rows, size_t nrows,
                         const struct hapi_stat *stats, size_t nstats, double now, char *err,
                         size_t errlen);

/* Runs a plan: one command after the other, each answer checked with
 * hapi_check_set_reply(); after each success slots[] is updated through
 * reconcile_apply_op(). Stops at the first failure so that no drain runs
 * before the fills planned ahead of it. cb gets status HAPI_OK with
 * done == p->n, or the failure, done = index of the failed op, and err.
 * slots must stay valid until cb; the plan is copied. Returns 0 (cb will be
 * called), 1 when the plan is empty (no callback), -1 on allocation failure
 * or a full queue. */
typedef void hapi_plan_cb(struct hapi *h, int status, size_t done, const char *err, void *priv);
int hapi_apply_plan(struct hapi *h, const struct plan *p, struct slot_state *slots, size_t nslots,
                    hapi_plan_cb *cb, void *priv);

#endif
