/* The agent's model of the storefront: service instances as Consul reports
 * them, split into the stable and canary pools HAProxy serves. Plain data,
 * shared by the Consul watch (producer) and the HAProxy reconciler
 * (consumer). */
#ifndef CEDRA_AGENT_POOL_H
#define CEDRA_AGENT_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define POOL_ID_MAX 128
#define POOL_ADDR_MAX 64 /* textual IPv4/IPv6 address or host name */
#define POOL_BUILD_MAX 64

enum pool_kind { POOL_STABLE = 0, POOL_CANARY = 1, POOL_KINDS = 2 };

struct instance {
    char id[POOL_ID_MAX];     /* Consul Service.ID: stable across tag flips */
    char addr[POOL_ADDR_MAX]; /* Service.Address, else Node.Address */
    uint16_t port;
    unsigned weight;               /* HAProxy weight 0..256 from Weights.Passing/Warning */
    bool warning;                  /* health "warning": still serving, lower weight */
    char build_id[POOL_BUILD_MAX]; /* Service.Meta build id ("" when absent) */
    enum pool_kind kind;           /* canary when its tags hold the canary tag */
};

/* One consistent view of a service, as of a Consul index. */
struct pool_set {
    struct instance *inst; /* sorted by (kind, id): deterministic slot assignment */
    size_t n;
    uint64_t index;    /* X-Consul-Index it came from */
    int canary_weight; /* percent from service Meta, -1 when absent */
};

void pool_set_init(struct pool_set *ps);
void pool_set_free(struct pool_set *ps);
/* Deep copy; returns 0 or -1 on allocation failure (dst left empty). */
int pool_set_copy(struct pool_set *dst, const struct pool_set *src);
size_t pool_set_count(const struct pool_set *ps, enum pool_kind kind);
const char *pool_kind_name(enum pool_kind kind);

#endif
