/* Metrics registry and Prometheus text exposition.
 *
 * Concurrency: the registry lock guards the family and series lists (changed
 * at registration, walked by the renderer); values are C11 atomics updated
 * with relaxed ordering, as nothing else is published through them. Each
 * series sits on its own cache line so that workers updating different series
 * do not false-share.
 *
 * Histogram sums are doubles updated by compare-and-swap on their uint64 bit
 * pattern rather than integers in a fixed unit: the registry stays unit-free
 * (seconds and bytes alike, no scale at registration), sub-microsecond
 * observations are not rounded away, and the retry loop only spins when two
 * threads hit the same series in the same instant, the bucket's fetch_add
 * having already taken that cache line. Buckets are stored per bucket (not
 * cumulative) and _count is derived from the same snapshot as the buckets, so
 * a scrape racing observations still shows monotonic buckets and
 * _count == le="+Inf"; only _sum may be one observation ahead or behind. */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define CACHE_LINE 64
#define MAX_NAME 200
#define MAX_LABEL_VALUE 1024
#define DEF_MAX_SERIES 64

enum mtype { M_COUNTER, M_GAUGE, M_HISTOGRAM };

struct metrics_counter {
    _Atomic uint64_t v;
};

struct metrics_gauge {
    _Atomic uint64_t bits; /* a double */
};

struct metrics_histogram {
    _Atomic uint64_t sum_bits; /* a double */
    const double *bounds;
    size_t nbounds;
    _Atomic uint64_t buckets[METRICS_MAX_BUCKETS + 1]; /* per bucket; last is +Inf */
};

struct series {
    union {
        struct metrics_counter c;
        struct metrics_gauge g;
        struct metrics_histogram h;
    } u; /* first: the handle is the cache-line-aligned start */
    struct series *next;
    char **values; /* raw, for lookups */
    char *labels;  /* rendered: a="x",b="y" ("" without labels) */
    metrics_value_fn fn;
    void *ud;
};

struct metrics_family {
    struct metrics *m;
    struct metrics_family *next;
    enum mtype type;
    char *name;
    char *help; /* escaped */
    char *labels[METRICS_MAX_LABELS];
    int nlabels;
    unsigned max_series, nseries;
    bool warned_full;
    struct series *head, **tail;
    double bounds[METRICS_MAX_BUCKETS];
    size_t nbounds;
    char le[METRICS_MAX_BUCKETS][32]; /* bounds as rendered */
};

struct metrics {
    pthread_mutex_t lock;
    struct metrics_family *head, **tail;
    char err[256];
};

/* ---- growable text buffer --------------------------------------------------- */

struct tbuf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void tb_put(struct tbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->cap - b->len < n + 1) {
        size_t cap = b->cap ? b->cap : 4096;
        char *p;

        while (cap - b->len < n + 1)
            cap *= 2;
        p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void tb_puts(struct tbuf *b, const char *s)
{
    tb_put(b, s, strlen(s));
}

static void tb_printf(struct tbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_printf(struct tbuf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(small)) {
        tb_put(b, small, (size_t)n);
        return;
    }
    char *p = malloc((size_t)n + 1);

    if (!p) {
        b->oom = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    tb_put(b, p, (size_t)n);
    free(p);
}

/* ---- formatting ---------------------------------------------------------------- */

static double bits_to_d(uint64_t u)
{
    double d;

    memcpy(&d, &u, sizeof(d));
    return d;
}

static uint64_t d_to_bits(double d)
{
    uint64_t u;

    memcpy(&u, &d, sizeof(u));
    return u;
}

/* Prometheus float syntax: "+Inf", "-Inf", "NaN"; integers without exponent;
 * otherwise the shortest %g form that reads back as the same double. */
static void fmt_double(char *buf, size_t size, double v)
{
    if (isnan(v)) {
        snprintf(buf, size, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, size, "%s", v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == 0) {
        snprintf(buf, size, "0");
        return;
    }
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, size, "%.0f", v);
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, size, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

/* Label value escaping of the text format: backslash, double quote, newline. */
static void tb_label_value(struct tbuf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            tb_put(b, "\\\\", 2);
        else if (*s == '"')
            tb_put(b, "\\\"", 2);
        else if (*s == '\n')
            tb_put(b, "\\n", 2);
        else
            tb_put(b, s, 1);
    }
}

/* ---- validation ------------------------------------------------------------------ */

static void set_err(struct metrics *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(struct metrics *m, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(m->err, sizeof(m->err), fmt, ap);
    va_end(ap);
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > MAX_NAME || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];

        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_'))
            return false;
    }
    return true;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);

    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* The sample names a family writes: a histogram owns three. */
static int sample_names(const char *name, enum mtype type, char out[3][MAX_NAME + 8])
{
    if (type != M_HISTOGRAM) {
        snprintf(out[0], MAX_NAME + 8, "%s", name);
        return 1;
    }
    snprintf(out[0], MAX_NAME + 8, "%s_bucket", name);
    snprintf(out[1], MAX_NAME + 8, "%s_sum", name);
    snprintf(out[2], MAX_NAME + 8, "%s_count", name);
    return 3;
}

static bool name_clashes(struct metrics *m, const char *name, enum mtype type)
{
    char mine[3][MAX_NAME + 8], theirs[3][MAX_NAME + 8];
    int nm = sample_names(name, type, mine);

    for (struct metrics_family *f = m->head; f; f = f->next) {
        int nt = sample_names(f->name, f->type, theirs);

        if (strcmp(f->name, name) == 0)
            return true;
        for (int i = 0; i < nm; i++)
            for (int j = 0; j < nt; j++)
                if (strcmp(mine[i], theirs[j]) == 0)
                    return true;
    }
    return false;
}

static int check_family(struct metrics *m, const char *name, const char *help, enum mtype type,
                        const char *const *labels)
{
    int n = 0;

    if (!name || !valid_name(name)) {
        set_err(m, "bad metric name '%s'", name ? name : "(null)");
        return -1;
    }
    if (name[0] == '_' && name[1] == '_') {
        set_err(m, "metric name '%s' is reserved", name);
        return -1;
    }
    if (type == M_COUNTER && (!ends_with(name, "_total") || strcmp(name, "_total") == 0)) {
        set_err(m, "counter '%s' must end in _total", name);
        return -1;
    }
    if (type != M_COUNTER && ends_with(name, "_total")) {
        set_err(m, "only counters end in _total ('%s')", name);
        return -1;
    }
    if (type == M_HISTOGRAM &&
        (ends_with(name, "_bucket") || ends_with(name, "_sum") || ends_with(name, "_count"))) {
        set_err(m, "histogram '%s' ends in a reserved suffix", name);
        return -1;
    }
    if (!help || !*help) {
        set_err(m, "metric '%s' needs a help text", name);
        return -1;
    }
    for (; labels && labels[n]; n++) {
        const char *l = labels[n];

        if (n == METRICS_MAX_LABELS) {
            set_err(m, "metric '%s' has more than %d labels", name, METRICS_MAX_LABELS);
            return -1;
        }
        if (!valid_name(l) || (l[0] == '_' && l[1] == '_')) {
            set_err(m, "metric '%s': bad label name '%s'", name, l);
            return -1;
        }
        if (type == M_HISTOGRAM && strcmp(l, "le") == 0) {
            set_err(m, "histogram '%s' cannot have an 'le' label", name);
            return -1;
        }
        for (int j = 0; j < n; j++) {
            if (strcmp(labels[j], l) == 0) {
                set_err(m, "metric '%s': label '%s' given twice", name, l);
                return -1;
            }
        }
    }
    if (name_clashes(m, name, type)) {
        set_err(m, "metric '%s' clashes with a registered one", name);
        return -1;
    }
    return n;
}

/* ---- registry ---------------------------------------------------------------------- */

struct metrics *metrics_new(void)
{
    struct metrics *m = calloc(1, sizeof(*m));

    if (!m)
        return NULL;
    pthread_mutex_init(&m->lock, NULL);
    m->tail = &m->head;
    return m;
}

static void series_free(struct series *s, int nlabels)
{
    if (s->values)
        for (int i = 0; i < nlabels; i++)
            free(s->values[i]);
    free(s->values);
    free(s->labels);
    free(s);
}

static void family_free(struct metrics_family *f)
{
    struct series *s = f->head;

    while (s) {
        struct series *next = s->next;

        series_free(s, f->nlabels);
        s = next;
    }
    for (int i = 0; i < f->nlabels; i++)
        free(f->labels[i]);
    free(f->name);
    free(f->help);
    free(f);
}

void metrics_free(struct metrics *m)
{
    struct metrics_family *f;

    if (!m)
        return;
    f = m->head;
    while (f) {
        struct metrics_family *next = f->next;

        family_free(f);
        f = next;
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
}

const char *metrics_error(const struct metrics *m)
{
    return m->err;
}

static struct metrics_family *family_new(struct metrics *m, enum mtype type, const char *name,
                                         const char *help, const char *const *labels,
                                         unsigned max_series, const double *bounds, size_t nbounds)
{
    struct metrics_family *f = NULL;
    struct tbuf hb = {0};
    int nl;

    pthread_mutex_lock(&m->lock);
    nl = check_family(m, name, help, type, labels);
    if (nl < 0)
        goto fail;
    if (type == M_HISTOGRAM) {
        /* An explicit +Inf last bound is the implicit one. */
        if (nbounds && isinf(bounds[nbounds - 1]) && bounds[nbounds - 1] > 0)
            nbounds--;
        if (nbounds > METRICS_MAX_BUCKETS) {
            set_err(m, "histogram '%s' has more than %d buckets", name, METRICS_MAX_BUCKETS);
            goto fail;
        }
        for (size_t i = 0; i < nbounds; i++) {
            if (!isfinite(bounds[i]) || (i && bounds[i] <= bounds[i - 1])) {
                set_err(m, "histogram '%s': bounds must be finite and increasing", name);
                goto fail;
            }
        }
    }
    f = calloc(1, sizeof(*f));
    if (!f)
        goto oom;
    f->m = m;
    f->type = type;
    f->tail = &f->head;
    f->name = strdup(name);
    /* HELP escaping: backslash and newline. */
    for (const char *p = help; *p; p++) {
        if (*p == '\\')
            tb_put(&hb, "\\\\", 2);
        else if (*p == '\n')
            tb_put(&hb, "\\n", 2);
        else
            tb_put(&hb, p, 1);
    }
    if (hb.oom) {
        free(hb.p);
        hb.p = NULL;
    }
    f->help = hb.p;
    if (!f->name || !f->help)
        goto oom;
    for (int i = 0; i < nl; i++) {
        f->labels[i] = strdup(labels[i]);
        if (!f->labels[i])
            goto oom;
        f->nlabels = i + 1;
    }
    f->max_series = nl == 0 ? 1 : max_series ? max_series : DEF_MAX_SERIES;
    f->nbounds = nbounds;
    for (size_t i = 0; i < nbounds; i++) {
        f->bounds[i] = bounds[i];
        fmt_double(f->le[i], sizeof(f->le[i]), bounds[i]);
    }
    *m->tail = f;
    m->tail = &f->next;
    pthread_mutex_unlock(&m->lock);
    return f;
oom:
    set_err(m, "out of memory");
    if (f)
        family_free(f);
fail:
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

struct metrics_family *metrics_counter_family(struct metrics *m, const char *name, const char *help,
                                              const char *const *labels, unsigned max_series)
{
    return family_new(m, M_COUNTER, name, help, labels, max_series, NULL, 0);
}

struct metrics_family *metrics_gauge_family(struct metrics *m, const char *name, const char *help,
                                            const char *const *labels, unsigned max_series)
{
    return family_new(m, M_GAUGE, name, help, labels, max_series, NULL, 0);
}

struct metrics_family *metrics_histogram_family(struct metrics *m, const char *name,
                                                const char *help, const char *const *labels,
                                                unsigned max_series, const double *bounds,
                                                size_t nbounds)
{
    return family_new(m, M_HISTOGRAM, name, help, labels, max_series, bounds, nbounds);
}

static bool same_values(const struct series *s, const char *const *values, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s->values[i], values[i]) != 0)
            return false;
    return true;
}

/* Finds or creates a series; with fn, the series must be new. Caller holds
 * no lock. */
static struct series *series_get(struct metrics_family *f, enum mtype type,
                                 const char *const *values, metrics_value_fn fn, void *ud)
{
    struct metrics *m = f->m;
    struct series *s = NULL;
    struct tbuf lb = {0};
    size_t size;

    pthread_mutex_lock(&m->lock);
    if (f->type != type || (fn && type == M_HISTOGRAM)) {
        set_err(m, "metric '%s' is not of that type", f->name);
        goto fail;
    }
    for (int i = 0; i < f->nlabels; i++) {
        if (!values || !values[i] || strlen(values[i]) > MAX_LABEL_VALUE) {
            set_err(m, "metric '%s': missing or oversized value for label '%s'", f->name,
                    f->labels[i]);
            goto fail;
        }
    }
    for (s = f->head; s; s = s->next) {
        if (same_values(s, values, f->nlabels)) {
            if (fn || s->fn) {
                set_err(m, "metric '%s': series already exists", f->name);
                goto fail;
            }
            pthread_mutex_unlock(&m->lock);
            return s;
        }
    }
    if (f->nseries >= f->max_series) {
        set_err(m, "metric '%s' has its %u series already", f->name, f->max_series);
        if (!f->warned_full)
            log_warning("metrics_series_limit", "metric=%s max=%u", f->name, f->max_series);
        f->warned_full = true;
        goto fail;
    }
    size = (sizeof(*s) + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE;
    s = aligned_alloc(CACHE_LINE, size);
    if (!s)
        goto oom;
    memset(s, 0, size);
    if (f->nlabels) {
        s->values = calloc((size_t)f->nlabels, sizeof(*s->values));
        if (!s->values)
            goto oom;
    }
    for (int i = 0; i < f->nlabels; i++) {
        s->values[i] = strdup(values[i]);
        if (!s->values[i])
            goto oom;
        tb_printf(&lb, "%s%s=\"", i ? "," : "", f->labels[i]);
        tb_label_value(&lb, values[i]);
        tb_put(&lb, "\"", 1);
    }
    if (!lb.p)
        tb_put(&lb, "", 0);
    if (lb.oom)
        goto oom;
    s->labels = lb.p;
    lb.p = NULL;
    s->fn = fn;
    s->ud = ud;
    if (type == M_HISTOGRAM) {
        s->u.h.bounds = f->bounds;
        s->u.h.nbounds = f->nbounds;
    }
    *f->tail = s;
    f->tail = &s->next;
    f->nseries++;
    pthread_mutex_unlock(&m->lock);
    return s;
oom:
    set_err(m, "out of memory");
    free(lb.p);
    if (s)
        series_free(s, f->nlabels);
fail:
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

struct metrics_counter *metrics_counter_get(struct metrics_family *f, const char *const *values)
{
    struct series *s = f ? series_get(f, M_COUNTER, values, NULL, NULL) : NULL;

    return s ? &s->u.c : NULL;
}

struct metrics_gauge *metrics_gauge_get(struct metrics_family *f, const char *const *values)
{
    struct series *s = f ? series_get(f, M_GAUGE, values, NULL, NULL) : NULL;

    return s ? &s->u.g : NULL;
}

struct metrics_histogram *metrics_histogram_get(struct metrics_family *f, const char *const *values)
{
    struct series *s = f ? series_get(f, M_HISTOGRAM, values, NULL, NULL) : NULL;

    return s ? &s->u.h : NULL;
}

int metrics_series_fn(struct metrics_family *f, const char *const *values, metrics_value_fn fn,
                      void *ud)
{
    if (!f || !fn)
        return -1;
    return series_get(f, f->type, values, fn, ud) ? 0 : -1;
}

struct metrics_counter *metrics_counter(struct metrics *m, const char *name, const char *help)
{
    return metrics_counter_get(metrics_counter_family(m, name, help, NULL, 1), NULL);
}

struct metrics_gauge *metrics_gauge(struct metrics *m, const char *name, const char *help)
{
    return metrics_gauge_get(metrics_gauge_family(m, name, help, NULL, 1), NULL);
}

struct metrics_histogram *metrics_histogram(struct metrics *m, const char *name, const char *help,
                                            const double *bounds, size_t nbounds)
{
    return metrics_histogram_get(metrics_histogram_family(m, name, help, NULL, 1, bounds, nbounds),
                                 NULL);
}

int metrics_gauge_fn(struct metrics *m, const char *name, const char *help, metrics_value_fn fn,
                     void *ud)
{
    return metrics_series_fn(metrics_gauge_family(m, name, help, NULL, 1), NULL, fn, ud);
}

/* ---- updates ------------------------------------------------------------------------- */

void metrics_counter_add(struct metrics_counter *c, uint64_t n)
{
    if (c)
        atomic_fetch_add_explicit(&c->v, n, memory_order_relaxed);
}

void metrics_gauge_set(struct metrics_gauge *g, double v)
{
    if (g)
        atomic_store_explicit(&g->bits, d_to_bits(v), memory_order_relaxed);
}

static void atomic_add_double(_Atomic uint64_t *bits, double delta)
{
    uint64_t old = atomic_load_explicit(bits, memory_order_relaxed);

    while (!atomic_compare_exchange_weak_explicit(bits, &old, d_to_bits(bits_to_d(old) + delta),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

void metrics_gauge_add(struct metrics_gauge *g, double delta)
{
    if (g)
        atomic_add_double(&g->bits, delta);
}

void metrics_histogram_observe(struct metrics_histogram *h, double v)
{
    size_t lo = 0, hi;

    if (!h || isnan(v))
        return;
    /* First bucket whose upper bound is >= v ("le"), nbounds for +Inf. */
    hi = h->nbounds;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (v <= h->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&h->buckets[lo], 1, memory_order_relaxed);
    atomic_add_double(&h->sum_bits, v);
}

uint64_t metrics_counter_value(const struct metrics_counter *c)
{
    return c ? atomic_load_explicit(&((struct metrics_counter *)c)->v, memory_order_relaxed) : 0;
}

double metrics_gauge_value(const struct metrics_gauge *g)
{
    return g ? bits_to_d(
                   atomic_load_explicit(&((struct metrics_gauge *)g)->bits, memory_order_relaxed))
             : 0;
}

/* ---- exposition ------------------------------------------------------------------------ */

static const char *type_name(enum mtype t)
{
    return t == M_COUNTER ? "counter" : t == M_GAUGE ? "gauge" : "histogram";
}

/* name{labels[,extra]} value */
static void render_sample(struct tbuf *b, const char *name, const char *suffix, const char *labels,
                          const char *extra, const char *value)
{
    tb_puts(b, name);
    tb_puts(b, suffix);
    if (*labels || extra) {
        tb_put(b, "{", 1);
        tb_puts(b, labels);
        if (extra) {
            if (*labels)
                tb_put(b, ",", 1);
            tb_puts(b, extra);
        }
        tb_put(b, "}", 1);
    }
    tb_put(b, " ", 1);
    tb_puts(b, value);
    tb_put(b, "\n", 1);
}

static void render_histogram(struct tbuf *b, const struct metrics_family *f, struct series *s)
{
    uint64_t cum = 0, snap[METRICS_MAX_BUCKETS + 1];
    char val[64], le[48];
    const size_t nb = f->nbounds; /* one bound for both loops: every snap[] read was written */

    for (size_t i = 0; i <= nb; i++)
        snap[i] = atomic_load_explicit(&s->u.h.buckets[i], memory_order_relaxed);
    for (size_t i = 0; i <= nb; i++) {
        cum += snap[i];
        snprintf(le, sizeof(le), "le=\"%s\"", i < nb ? f->le[i] : "+Inf");
        snprintf(val, sizeof(val), "%llu", (unsigned long long)cum);
        render_sample(b, f->name, "_bucket", s->labels, le, val);
    }
    fmt_double(val, sizeof(val),
               bits_to_d(atomic_load_explicit(&s->u.h.sum_bits, memory_order_relaxed)));
    render_sample(b, f->name, "_sum", s->labels, NULL, val);
    snprintf(val, sizeof(val), "%llu", (unsigned long long)cum);
    render_sample(b, f->name, "_count", s->labels, NULL, val);
}

char *metrics_render(struct metrics *m, size_t *len)
{
    struct tbuf b = {0};
    char val[64];

    tb_put(&b, "", 0); /* an empty registry renders as "" */
    pthread_mutex_lock(&m->lock);
    for (const struct metrics_family *f = m->head; f; f = f->next) {
        if (!f->head)
            continue;
        tb_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
                  type_name(f->type));
        for (struct series *s = f->head; s; s = s->next) {
            if (f->type == M_HISTOGRAM) {
                render_histogram(&b, f, s);
                continue;
            }
            if (s->fn)
                fmt_double(val, sizeof(val), s->fn(s->ud));
            else if (f->type == M_COUNTER)
                snprintf(val, sizeof(val), "%llu",
                         (unsigned long long)atomic_load_explicit(&s->u.c.v, memory_order_relaxed));
            else
                fmt_double(val, sizeof(val),
                           bits_to_d(atomic_load_explicit(&s->u.g.bits, memory_order_relaxed)));
            render_sample(&b, f->name, "", s->labels, NULL, val);
        }
    }
    pthread_mutex_unlock(&m->lock);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    if (len)
        *len = b.len;
    return b.p;
}
