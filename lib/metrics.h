/* Metrics registry with Prometheus text exposition (format 0.0.4).
 *
 * Families (counter, gauge, histogram) are registered at start-up with a
 * fixed list of label names and a bound on their series. A series is looked up
 * or created once (under the registry lock) and the returned handle is then
 * updated lock-free from any thread with relaxed C11 atomics; handles stay
 * valid until metrics_free(). Hot paths keep handles, e.g. an array indexed by
 * decision and cache status, instead of looking series up per request.
 *
 * Names follow Prometheus rules and conventions, checked at registration:
 * [a-zA-Z_][a-zA-Z0-9_]* (colons are for recording rules, not exporters),
 * counters end in "_total", label names do not start with "__", histograms
 * have no "le" label. Values are in base units (seconds, bytes). */
#ifndef CEDRA_METRICS_H
#define CEDRA_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define METRICS_MAX_LABELS 8
#define METRICS_MAX_BUCKETS 32

struct metrics;
struct metrics_family;
struct metrics_counter;
struct metrics_gauge;
struct metrics_histogram;

struct metrics *metrics_new(void);
/* Frees the registry, its families and every handle it gave out. */
void metrics_free(struct metrics *m);
/* Why the last registration or lookup returned NULL. */
const char *metrics_error(const struct metrics *m);

/* Families. labels is a NULL-terminated list of label names (NULL for none);
 * max_series bounds the series a family may hold (0 = 1 for an unlabelled
 * family, 64 otherwise). bounds are the histogram's upper bounds, strictly
 * increasing and finite; the +Inf bucket is implicit. NULL on a bad or
 * duplicate name, with the reason in metrics_error(). */
struct metrics_family *metrics_counter_family(struct metrics *m, const char *name, const char *help,
                                              const char *const *labels, unsigned max_series);
struct metrics_family *metrics_gauge_family(struct metrics *m, const char *name, const char *help,
                                            const char *const *labels, unsigned max_series);
struct metrics_family *metrics_histogram_family(struct metrics *m, const char *name,
                                                const char *help, const char *const *labels,
                                                unsigned max_series, const double *bounds,
                                                size_t nbounds);

/* Series of a family, found or created. values has one entry per label name,
 * in order (NULL for an unlabelled family). NULL when the family is full or of
 * another type; every update function treats a NULL handle as a no-op, so an
 * overflowing label set costs a log line, not a crash. */
struct metrics_counter *metrics_counter_get(struct metrics_family *f, const char *const *values);
struct metrics_gauge *metrics_gauge_get(struct metrics_family *f, const char *const *values);
struct metrics_histogram *metrics_histogram_get(struct metrics_family *f,
                                                const char *const *values);

/* A series whose value is computed at scrape time, for counter or gauge
 * families (e.g. L1 bytes, or a counter kept by another module). fn runs on
 * the rendering thread (the HTTP server's or the operator socket's), under the
 * registry lock: it must be thread-safe, must not call into the registry, and
 * whatever lock it takes must never be held while calling into the registry. */
typedef double (*metrics_value_fn)(void *ud);
int metrics_series_fn(struct metrics_family *f, const char *const *values, metrics_value_fn fn,
                      void *ud);

/* Shortcuts for unlabelled metrics: a family and its only series. */
struct metrics_counter *metrics_counter(struct metrics *m, const char *name, const char *help);
struct metrics_gauge *metrics_gauge(struct metrics *m, const char *name, const char *help);
struct metrics_histogram *metrics_histogram(struct metrics *m, const char *name, const char *help,
                                            const double *bounds, size_t nbounds);
int metrics_gauge_fn(struct metrics *m, const char *name, const char *help, metrics_value_fn fn,
                     void *ud);

/* Updates: lock-free, any thread, NULL handle = no-op. */
void metrics_counter_add(struct metrics_counter *c, uint64_t n);
static inline void metrics_counter_inc(struct metrics_counter *c)
{
    metrics_counter_add(c, 1);
}
void metrics_gauge_set(struct metrics_gauge *g, double v);
void metrics_gauge_add(struct metrics_gauge *g, double delta);
/* NaN is ignored (it would poison _sum forever). */
void metrics_histogram_observe(struct metrics_histogram *h, double v);

/* Reads back (tests, "show stat"). */
uint64_t metrics_counter_value(const struct metrics_counter *c);
double metrics_gauge_value(const struct metrics_gauge *g);

/* Renders every family with at least one series, in registration order, as
 * Prometheus text 0.0.4. Returns a malloc'ed NUL-terminated buffer the caller
 * frees, its length in *len; NULL if out of memory. */
char *metrics_render(struct metrics *m, size_t *len);

/* The Content-Type of metrics_render()'s output. */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#endif
