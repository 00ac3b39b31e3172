#include "lookup.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "valkey.h"

#define KEY_MAX 1024

struct lookup {
    struct valkey *v;
    lookup_cb *cb;
    void *priv;
    const struct isr_conf *isr;
    unsigned lock_ms;
    unsigned pending;  /* replies still due in the current step */
    bool failed;       /* a Valkey error in this step */
    bool member;       /* listed in __sharedTags__ */
    enum isr_err perr; /* why the value was not servable */
    bool absent;
    struct isr_entry *entry;
    enum isr_state state;
    char key[KEY_MAX];         /* prefix + key */
    char field[KEY_MAX];       /* key without prefix */
    char shared[KEY_MAX];      /* <prefix>__sharedTags__ */
    char revalidated[KEY_MAX]; /* <prefix>__revalidated_tags__ */
    char lock[KEY_MAX];
};

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void finish(struct lookup *l, enum lookup_result res, const char *why)
{
    struct isr_entry *e = NULL;

    if (res == LOOKUP_HIT || res == LOOKUP_STALE || res == LOOKUP_REVALIDATE) {
        e = l->entry;
        l->entry = NULL;
    }
    l->cb(l->priv, res, e, l->state, why);
    isr_entry_free(l->entry);
    free(l);
}

static void on_lock(struct valkey *v, void *priv, enum valkey_err err, const struct redisReply *r)
{
    struct lookup *l = priv;

    if (err != VALKEY_OK) {
        finish(l, LOOKUP_ERROR, valkey_err_name(err));
        return;
    }
    if (r->type == REDIS_REPLY_STATUS && r->len == 2 && memcmp(r->str, "OK", 2) == 0)
        finish(l, LOOKUP_REVALIDATE, "revalidate");
    else if (r->type == REDIS_REPLY_NIL)
        finish(l, LOOKUP_STALE, "stale");
    else
        finish(l, LOOKUP_ERROR, "lock_reply");
}

/* SET NX PX: one request per key and window, across every edge node. */
static int send_lock(struct lookup *l)
{
    const char *argv[6];
    char px[16];

    snprintf(px, sizeof(px), "%u", l->lock_ms);
    argv[0] = "SET";
    argv[1] = l->lock;
    argv[2] = "1";
    argv[3] = "NX";
    argv[4] = "PX";
    argv[5] = px;
    return valkey_command(l->v, on_lock, l, 6, argv, NULL);
}

static void decide(struct lookup *l, const int64_t *times, size_t ntimes)
{
    l->state = isr_state(l->entry, l->isr, now_ms(), times, ntimes);
    switch (l->state) {
    case ISR_FRESH:
        finish(l, LOOKUP_HIT, "fresh");
        return;
    case ISR_EXPIRED:
        finish(l, LOOKUP_MISS, "expired");
        return;
    case ISR_REVALIDATED:
        finish(l, LOOKUP_MISS, "revalidated");
        return;
    case ISR_STALE:
        break;
    }
    if (send_lock(l) < 0)
        finish(l, LOOKUP_ERROR, "queue");
}

static void on_tags(struct valkey *v, void *priv, enum valkey_err err, const struct redisReply *r)
{
    struct lookup *l = priv;
    int64_t *times;

    if (err != VALKEY_OK) {
        finish(l, LOOKUP_ERROR, valkey_err_name(err));
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != l->entry->ntags) {
        finish(l, LOOKUP_ERROR, "tags_reply");
        return;
    }
    times = malloc(r->elements * sizeof(*times));
    if (!times) {
        finish(l, LOOKUP_ERROR, "nomem");
        return;
    }
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];

        times[i] = e->type == REDIS_REPLY_STRING ? isr_tag_time(e->str, e->len) : ISR_TAG_NONE;
    }
    decide(l, times, r->elements);
    free(times);
}

static void step_tags(struct lookup *l)
{
    const char **argv;
    size_t n = l->entry->ntags;

    if (n == 0) {
        decide(l, NULL, 0);
        return;
    }
    argv = malloc((n + 2) * sizeof(*argv));
    if (!argv) {
        finish(l, LOOKUP_ERROR, "nomem");
        return;
    }
    argv[0] = "HMGET";
    argv[1] = l->revalidated;
    for (size_t i = 0; i < n; i++)
        argv[i + 2] = l->entry->tags[i];
    if (valkey_command(l->v, on_tags, l, (int)(n + 2), argv, NULL) < 0)
        finish(l, LOOKUP_ERROR, "queue");
    free(argv);
}

/* Both replies of the first step are in: what do we know? */
static void first_step_done(struct lookup *l)
{
    if (l->failed) {
        finish(l, LOOKUP_ERROR, "valkey");
        return;
    }
    if (l->absent) {
        finish(l, LOOKUP_MISS, "absent");
        return;
    }
    /* The handler treats a key missing from __sharedTags__ as a miss. */
    if (!l->member) {
        finish(l, LOOKUP_MISS, "not_shared");
        return;
    }
    if (!l->entry) {
        finish(l, LOOKUP_MISS, isr_err_str(l->perr));
        return;
    }
    step_tags(l);
}

static void on_get(struct valkey *v, void *priv, enum valkey_err err, const struct redisReply *r)
{
    struct lookup *l = priv;

    if (err != VALKEY_OK)
        l->failed = true;
    else if (r->type == REDIS_REPLY_NIL)
        l->absent = true;
    else if (r->type != REDIS_REPLY_STRING)
        l->perr = ISR_MALFORMED; /* e.g. WRONGTYPE: not the handler's value */
    else
        l->perr = isr_entry_parse(r->str, r->len, l->isr, &l->entry);
    if (--l->pending == 0)
        first_step_done(l);
}

static void on_member(struct valkey *v, void *priv, enum valkey_err err, const struct redisReply *r)
{
    struct lookup *l = priv;

    if (err != VALKEY_OK)
        l->failed = true;
    else
        l->member = r->type == REDIS_REPLY_STRING;
    if (--l->pending == 0)
        first_step_done(l);
}

static int fmt(char *out, const char *a, const char *b)
{
    int n = snprintf(out, KEY_MAX, "%s%s", a, b);

    return n < 0 || n >= KEY_MAX ? -1 : 0;
}

static struct lookup *lookup_new(struct valkey *v, const struct lookup_params *p, lookup_cb *cb,
                                 void *priv)
{
    struct lookup *l = calloc(1, sizeof(*l));

    if (!l)
        return NULL;
    l->v = v;
    l->cb = cb;
    l->priv = priv;
    l->isr = p->isr;
    l->lock_ms = p->lock_ms ? p->lock_ms : 1;
    if (fmt(l->key, p->prefix, p->key) < 0 || fmt(l->field, "", p->key) < 0 ||
        fmt(l->shared, p->prefix, "__sharedTags__") < 0 ||
        fmt(l->revalidated, p->prefix, "__revalidated_tags__") < 0 ||
        fmt(l->lock, p->lock_prefix, l->key) < 0) {
        free(l);
        errno = ENAMETOOLONG;
        return NULL;
    }
    return l;
}

int lookup_lock(struct valkey *v, const struct lookup_params *p, lookup_cb *cb, void *priv)
{
    struct lookup *l = lookup_new(v, p, cb, priv);

    if (!l)
        return -1;
    l->state = ISR_STALE;
    if (send_lock(l) < 0) {
        free(l);
        return -1;
    }
    return 0;
}

int lookup_start(struct valkey *v, const struct lookup_params *p, lookup_cb *cb, void *priv)
{
    struct lookup *l = lookup_new(v, p, cb, priv);
    const char *argv[3];

    if (!l)
        return -1;
    /* Pipelined on one connection: one round trip for both. */
    argv[0] = "GET";
    argv[1] = l->key;
    if (valkey_command(v, on_get, l, 2, argv, NULL) < 0) {
        free(l);
        return -1;
    }
    l->pending = 1;
    argv[0] = "HGET";
    argv[1] = l->shared;
    argv[2] = l->field;
    if (valkey_command(v, on_member, l, 3, argv, NULL) < 0) {
        /* GET is queued and will call back: make it the last reply. */
        l->failed = true;
        return 0;
    }
    l->pending = 2;
    return 0;
}

const char *lookup_result_str(enum lookup_result r)
{
    switch (r) {
    case LOOKUP_HIT:
        return "HIT";
    case LOOKUP_STALE:
        return "STALE";
    case LOOKUP_REVALIDATE:
        return "REVALIDATE";
    case LOOKUP_MISS:
        return "MISS";
    case LOOKUP_ERROR:
    default:
        return "ERROR";
    }
}
