#include "fill.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

struct slot {
    struct slot *next;  /* id chain */
    struct slot *gnext; /* grace FIFO */
    struct l1_ref *ref;
    uint64_t id;
    double gone_at; /* 0 while the entry is in the in-process cache */
    struct isr_conf isr;
};

struct fill {
    pthread_mutex_t mu;
    struct slot **b;
    size_t mask;
    size_t n, max; /* live entries */
    size_t ngrace; /* dropped, still filling */
    double grace;
    struct slot *ghead, *gtail;
    struct fill_stats st;
};

static uint64_t hash_id(uint64_t id)
{
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdULL;
    return id ^ (id >> 33);
}

/* ---- table (mutex held) ----------------------------------------------------- */

static struct slot **find(struct fill *f, uint64_t id)
{
    struct slot **pp = &f->b[hash_id(id) & f->mask];

    while (*pp && (*pp)->id != id)
        pp = &(*pp)->next;
    return pp;
}

static void unlink_free(struct fill *f, struct slot *s)
{
    struct slot **pp = find(f, s->id);

    if (*pp == s)
        *pp = s->next;
    l1_release(s->ref);
    free(s);
}

/* Forgets the dropped entries whose grace is over (and the oldest ones while
 * there are more than the table holds: the grace list is bounded too). */
static void sweep(struct fill *f, double now)
{
    while (f->ghead && (now - f->ghead->gone_at >= f->grace || f->ngrace > f->max)) {
        struct slot *s = f->ghead;

        f->ghead = s->gnext;
        if (!f->ghead)
            f->gtail = NULL;
        f->ngrace--;
        unlink_free(f, s);
    }
}

/* ---- API -------------------------------------------------------------------- */

struct fill *fill_new(size_t max_entries, double grace)
{
    struct fill *f;
    size_t nb = 16;

    if (max_entries == 0 || max_entries > (1u << 24) || grace < 0 || grace > 3600)
        return NULL;
    while (nb < max_entries)
        nb <<= 1;
    f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->b = calloc(nb, sizeof(*f->b));
    if (!f->b || pthread_mutex_init(&f->mu, NULL) != 0) {
        free(f->b);
        free(f);
        return NULL;
    }
    f->mask = nb - 1;
    f->max = max_entries;
    f->grace = grace;
    return f;
}

void fill_free(struct fill *f)
{
    if (!f)
        return;
    for (size_t i = 0; i <= f->mask; i++) {
        while (f->b[i]) {
            struct slot *s = f->b[i];

            f->b[i] = s->next;
            l1_release(s->ref);
            free(s);
        }
    }
    pthread_mutex_destroy(&f->mu);
    free(f->b);
    free(f);
}

bool fill_offer(struct fill *f, struct l1_ref *ref, const struct isr_conf *isr)
{
    uint64_t id = l1_ref_id(ref);
    struct slot **pp, *s;
    bool ok = false;

    if (id == 0) /* a detached reference: never in the cache, never dropped */
        return false;
    pthread_mutex_lock(&f->mu);
    sweep(f, now_mono());
    pp = find(f, id);
    if (*pp) {
        /* Known, and still filling even when dropped: the caller's answer
         * comes from the reference it holds, which the fill would serve. */
        (*pp)->isr = *isr;
        ok = true;
    } else if (!l1_ref_live(ref)) {
        /* Dropped already: its hook has run (or runs after this, under the
         * same mutex, and finds nothing). Never offered, never leaked. */
        f->st.refused++;
    } else if (f->n >= f->max || !(s = calloc(1, sizeof(*s)))) {
        f->st.refused++;
    } else {
        s->id = id;
        s->ref = l1_ref_hold(ref);
        s->isr = *isr;
        s->next = f->b[hash_id(id) & f->mask];
        f->b[hash_id(id) & f->mask] = s;
        f->n++;
        f->st.offered++;
        ok = true;
    }
    pthread_mutex_unlock(&f->mu);
    return ok;
}

void fill_drop_hook(void *ud, const struct l1_ref *r)
{
    struct fill *f = ud;
    uint64_t id = l1_ref_id(r);
    double now = now_mono();
    struct slot *s;

    pthread_mutex_lock(&f->mu);
    s = *find(f, id);
    if (s && s->gone_at == 0) {
        /* A request whose ACK named this id may still be on its way to
         * HAProxy's cache: it gets the page that ACK was decided on. */
        s->gone_at = now > 0 ? now : 1e-9;
        s->gnext = NULL;
        if (f->gtail)
            f->gtail->gnext = s;
        else
            f->ghead = s;
        f->gtail = s;
        f->n--;
        f->ngrace++;
    }
    sweep(f, now);
    pthread_mutex_unlock(&f->mu);
}

struct l1_ref *fill_get(struct fill *f, uint64_t id, struct isr_conf *isr, bool *grace)
{
    struct l1_ref *ref = NULL;
    struct slot *s;

    pthread_mutex_lock(&f->mu);
    sweep(f, now_mono());
    s = *find(f, id);
    if (s) {
        ref = l1_ref_hold(s->ref);
        *isr = s->isr;
        *grace = s->gone_at != 0;
        if (*grace)
            f->st.grace_fills++;
        else
            f->st.fills++;
    } else {
        f->st.unknown_fills++;
    }
    pthread_mutex_unlock(&f->mu);
    return ref;
}

void fill_get_stats(struct fill *f, struct fill_stats *out)
{
    pthread_mutex_lock(&f->mu);
    *out = f->st;
    out->entries = f->n;
    out->grace_entries = f->ngrace;
    pthread_mutex_unlock(&f->mu);
}
