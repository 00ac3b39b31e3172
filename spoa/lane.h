/* The fast lane (docs/fast-lane.md): hot pages that HAProxy answers without
 * an SPOE exchange, from a map this module keeps over the Runtime API
 * (path -> "<entry id>:<fresh until, epoch s>:<locale>") and from HAProxy's
 * own cache, which the delivery server fills by entry id (lane_fill()).
 *
 * Exactness. A path is published only after a worker answered an edge HIT
 * for it, and withdrawn when the in-process cache drops its entry (the L1
 * drop hook, lane_drop_hook()). Both take the lane's mutex, and a publish
 * checks l1_ref_live() under it, so the Runtime API commands follow the
 * cache's own order: a publish never lands after the withdrawal of its entry.
 * HAProxy opens the lane only while a sentinel key is in the map and the
 * delivery server's health endpoint answers 200 (lane_up()): the sentinel is
 * written after the map was cleared and the cookie patterns loaded, so a
 * restarted HAProxy (empty map) keeps the lane closed until this module has
 * set it up again, and a failing command, a queue that stops moving, or the
 * death of cedra-spoa closes it within one health-check interval.
 *
 * Thread-safety: lane_publish(), lane_drop_hook(), lane_reset(), lane_fill(),
 * lane_up() and lane_get_stats() from any thread; lane_new() and lane_free()
 * from the thread that runs loop (the Runtime API client lives there). */
#ifndef CEDRA_LANE_H
#define CEDRA_LANE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "l1.h"

#define LANE_SENTINEL "@cedra-lane-ready"
#define LANE_MAX_COOKIES 24
#define LANE_HEALTH_PATH "/.cedra/lane/health"
#define LANE_FILL_PREFIX "/.cedra/lane/"
#define LANE_PATH_MAX 512 /* longer paths always go through SPOE */

struct lane;

struct lane_cfg {
    const char *socket;                     /* HAProxy's Runtime API (stats socket, level admin) */
    const char *map;                        /* the map file's name as HAProxy knows it */
    const char *cookies;                    /* the cookie pattern file's name as HAProxy knows it */
    const char *patterns[LANE_MAX_COOKIES]; /* cookie names that keep a request off the lane */
    size_t npatterns;
    double timeout;     /* seconds per Runtime API command */
    double grace;       /* seconds a withdrawn entry still fills HAProxy's cache */
    double max_lag;     /* a command waiting longer closes the lane */
    size_t max_entries; /* published paths */
};

/* NULL with err set on bad settings or allocation failure. The lane starts
 * closed and sets itself up (clear, patterns, sentinel) from the loop. */
struct lane *lane_new(struct ev_loop *loop, const struct lane_cfg *cfg, char *err, size_t errlen);
/* After the workers and the delivery server stopped. */
void lane_free(struct lane *ln);

enum lane_publish_result {
    LANE_PUBLISHED,
    LANE_ALREADY, /* the entry is published already (under this path or another one) */
    LANE_CLOSED,  /* not set up, or a failure is being recovered from */
    LANE_OLD_CONF,
    LANE_NOT_LIVE, /* the entry left the in-process cache meanwhile */
    LANE_FULL,
    LANE_BAD_PATH, /* characters the map key or the Runtime API cannot carry */
};

/* Publishes path -> ref's entry. fresh_until: epoch seconds, the lane serves
 * while HAProxy's "date" is below it. gen: the configuration generation the
 * answer was decided under (lane_reset()); isr: the settings its headers were
 * made with, kept for the fills. Takes its own reference on ref. */
enum lane_publish_result lane_publish(struct lane *ln, struct l1_ref *ref, const char *path,
                                      size_t pathlen, int64_t fresh_until, const char *locale,
                                      const struct isr_conf *isr, uint64_t gen);
/* The in-process cache's drop hook (ud = the lane). */
void lane_drop_hook(void *ud, const struct l1_ref *r);
/* A new configuration generation: everything published is withdrawn (the
 * pools, and so the answers, may differ). */
void lane_reset(struct lane *ln, uint64_t gen);

/* The entry published (or withdrawn less than grace ago) under id for path,
 * referenced, with the settings it was published with; NULL when unknown.
 * *grace tells which. */
struct l1_ref *lane_fill(struct lane *ln, uint64_t id, const char *path, size_t pathlen,
                         struct isr_conf *isr, bool *grace);
/* What the health endpoint answers: set up, no command waiting too long,
 * and (haproxy_pid not 0) asked by the HAProxy process it was set up in.
 * With a pid, a call is that process's health check: one that never comes
 * (HAProxy without CEDRA_LANE=on) is logged once, 10 s after the set-up. */
bool lane_up(struct lane *ln, uint64_t haproxy_pid);
#define LANE_PID_HEADER "x-cedra-haproxy-pid"

struct lane_stats {
    uint64_t entries, grace_entries;
    uint64_t published, withdrawn, resets, refused;
    uint64_t fills, grace_fills, unknown_fills;
    uint64_t commands, failures, setups;
    uint64_t checks; /* health checks from the process the lane was set up in, while set up */
    bool up;
};
void lane_get_stats(struct lane *ln, struct lane_stats *out);

#endif
