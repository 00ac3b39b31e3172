#include "pool.h"

#include <stdlib.h>
#include <string.h>

void pool_set_init(struct pool_set *ps)
{
    memset(ps, 0, sizeof(*ps));
    ps->canary_weight = -1;
}

void pool_set_free(struct pool_set *ps)
{
    free(ps->inst);
    pool_set_init(ps);
}

int pool_set_copy(struct pool_set *dst, const struct pool_set *src)
{
    pool_set_init(dst);
    if (src->n) {
        dst->inst = malloc(src->n * sizeof(*src->inst));
        if (!dst->inst)
            return -1;
        memcpy(dst->inst, src->inst, src->n * sizeof(*src->inst));
    }
    dst->n = src->n;
    dst->index = src->index;
    dst->canary_weight = src->canary_weight;
    return 0;
}

size_t pool_set_count(const struct pool_set *ps, enum pool_kind kind)
{
    size_t c = 0;

    for (size_t i = 0; i < ps->n; i++)
        c += ps->inst[i].kind == kind;
    return c;
}

const char *pool_kind_name(enum pool_kind kind)
{
    return kind == POOL_CANARY ? "canary" : "stable";
}
