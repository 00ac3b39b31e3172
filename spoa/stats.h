/* cedra-spoa's counters, in the shared metrics registry: updated lock-free by
 * the workers, read by the operator socket and the /metrics endpoint. */
#ifndef CEDRA_SPOA_STATS_H
#define CEDRA_SPOA_STATS_H

#include <stdatomic.h>

#include "metrics.h"

enum stat_decision { DEC_EDGE, DEC_DELIVER, DEC_PASS, DEC_REDIRECT, DEC_CACHE, DEC_N };
enum stat_cache { CACHE_HIT, CACHE_STALE, CACHE_MISS, CACHE_BYPASS, CACHE_ERROR, CACHE_N };

struct spoa_stats {
    struct metrics *m;
    struct metrics_counter *requests[DEC_N][CACHE_N];
    struct metrics_counter *not_modified;
    struct metrics_counter *revalidations;
    struct metrics_counter *redirect_refused;
    struct metrics_counter *ack_too_big;
    struct metrics_counter *other_messages;
    struct metrics_counter *lookup_errors;
    struct metrics_counter *l1_hits;
    struct metrics_counter *gzip_answers;
    struct metrics_counter *gzip_errors;
    struct metrics_histogram *lookup_seconds;
    struct metrics_counter *spop_connections;
    struct metrics_counter *spop_notifies;
    struct metrics_gauge *spop_open;
    struct metrics_counter *spop_refused;
    /* Open SPOP connections of all workers: what max-connections is checked
     * against (the gauge above is for reading only). */
    atomic_uint spop_live;
    struct metrics_counter *spop_errors;
    struct metrics_counter *spop_aborted;
};

extern const char *const stat_decision_names[DEC_N];
extern const char *const stat_cache_names[CACHE_N];

/* Registers every family in a new registry. NULL on failure. */
struct spoa_stats *spoa_stats_new(void);
void spoa_stats_free(struct spoa_stats *s);

#endif
