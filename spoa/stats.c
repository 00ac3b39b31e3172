#include "stats.h"

#include <stdlib.h>

const char *const stat_decision_names[DEC_N] = {"edge", "deliver", "pass", "redirect", "cache"};
const char *const stat_cache_names[CACHE_N] = {"HIT", "STALE", "MISS", "BYPASS", "ERROR"};

/* Valkey round trips on loopback take ~0.1 ms; a lookup is one to three. */
static const double lookup_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                       0.01,   0.025,   0.05,   0.1,   0.25,   1.0};

struct spoa_stats *spoa_stats_new(void)
{
    static const char *const req_labels[] = {"decision", "cache", NULL};
    struct spoa_stats *s = calloc(1, sizeof(*s));
    struct metrics_family *f;

    if (!s)
        return NULL;
    atomic_init(&s->spop_live, 0);
    if (!(s->m = metrics_new()))
        goto fail;
    f = metrics_counter_family(s->m, "cedra_spoa_requests_total",
                               "Requests decided, by decision and x-cedra-cache status.",
                               req_labels, DEC_N * CACHE_N);
    if (!f)
        goto fail;
    for (int d = 0; d < DEC_N; d++)
        for (int c = 0; c < CACHE_N; c++) {
            const char *v[] = {stat_decision_names[d], stat_cache_names[c], NULL};

            s->requests[d][c] = metrics_counter_get(f, v);
        }
    s->not_modified = metrics_counter(s->m, "cedra_spoa_not_modified_total",
                                      "Edge answers that were 304 Not Modified.");
    s->revalidations = metrics_counter(s->m, "cedra_spoa_revalidations_total",
                                       "Stale pages sent to the origin to be regenerated.");
    s->redirect_refused = metrics_counter(s->m, "cedra_spoa_redirect_refused_total",
                                          "Unprefixed pages not redirected: unsafe path or query.");
    s->ack_too_big = metrics_counter(s->m, "cedra_spoa_ack_too_big_total",
                                     "Answers that did not fit one SPOE frame (sent empty).");
    s->other_messages = metrics_counter(s->m, "cedra_spoa_unknown_messages_total",
                                        "SPOE messages that are not ours (acknowledged, ignored).");
    s->lookup_errors = metrics_counter(s->m, "cedra_spoa_valkey_errors_total",
                                       "ISR lookups that failed in Valkey (request passed on).");
    s->l1_hits = metrics_counter(s->m, "cedra_spoa_l1_hits_total",
                                 "Fresh pages answered from the in-process cache, no Valkey trip.");
    s->gzip_answers =
        metrics_counter(s->m, "cedra_spoa_gzip_answers_total",
                        "Edge answers sent in gzip, as Next.js would for the Accept-Encoding.");
    s->gzip_errors = metrics_counter(s->m, "cedra_spoa_gzip_errors_total",
                                     "Pages whose gzip copy could not be made (those clients "
                                     "went to the origin).");
    s->lookup_seconds =
        metrics_histogram(s->m, "cedra_spoa_valkey_lookup_duration_seconds",
                          "Time of an ISR lookup in Valkey, all its round trips.", lookup_bounds,
                          sizeof(lookup_bounds) / sizeof(lookup_bounds[0]));
    s->spop_connections =
        metrics_counter(s->m, "cedra_spoa_spop_connections_total", "SPOP connections accepted.");
    s->spop_notifies = metrics_counter(s->m, "cedra_spoa_spop_notifies_total",
                                       "NOTIFY frames received (reassembled when fragmented).");
    s->spop_open = metrics_gauge(s->m, "cedra_spoa_spop_connections", "SPOP connections open.");
    s->spop_refused =
        metrics_counter(s->m, "cedra_spoa_spop_refused_total",
                        "SPOP connections closed as soon as accepted: max-connections reached.");
    s->spop_errors = metrics_counter(s->m, "cedra_spoa_spop_errors_total",
                                     "SPOP connections ended by a protocol error of the peer.");
    s->spop_aborted = metrics_counter(s->m, "cedra_spoa_spop_aborted_total",
                                      "Fragmented NOTIFYs aborted by HAProxy.");
    if (!s->not_modified || !s->revalidations || !s->redirect_refused || !s->ack_too_big ||
        !s->other_messages || !s->lookup_errors || !s->l1_hits || !s->lookup_seconds ||
        !s->gzip_answers || !s->gzip_errors || !s->spop_connections || !s->spop_notifies ||
        !s->spop_open || !s->spop_refused || !s->spop_errors || !s->spop_aborted)
        goto fail;
    return s;
fail:
    spoa_stats_free(s);
    return NULL;
}

void spoa_stats_free(struct spoa_stats *s)
{
    if (!s)
        return;
    metrics_free(s->m);
    free(s);
}
