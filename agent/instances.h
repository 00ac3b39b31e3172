/* Consul's /v1/health/service answer -> struct pool_set.
 *
 * The answer is parsed strictly: a wrong JSON type anywhere we look, or an
 * absurd size, rejects the whole answer (we do not understand it, so we must
 * not act on it). An entry that is well-formed but unusable (no address, port
 * 0, an ID we cannot print) is dropped and counted in the report, so that one
 * bad registration does not freeze every pool. Nothing here does I/O. */
#ifndef CEDRA_AGENT_INSTANCES_H
#define CEDRA_AGENT_INSTANCES_H

#include <stdbool.h>
#include <stddef.h>

#include "pool.h"

#define INSTANCES_MAX_DEFAULT 4096
#define INSTANCES_BYTES_DEFAULT (8u << 20)

struct instances_cfg {
    const char *canary_tag;        /* exact tag marking a canary (Nomad canary_tags) */
    const char *build_key;         /* Service.Meta key holding the build id */
    const char *canary_weight_key; /* Service.Meta key holding the canary percent; NULL/"": off */
    size_t max_instances;          /* entries one answer may hold */
    size_t max_bytes;              /* bytes one answer may hold */
};

/* What was dropped, for logs and metrics. */
struct instances_report {
    size_t entries;           /* array elements seen */
    size_t critical;          /* dropped: a check neither passing nor warning */
    size_t invalid;           /* dropped: unusable address, port, ID or build id */
    size_t duplicate;         /* dropped: Service.ID seen before (IDs are per Consul agent) */
    size_t bad_canary_weight; /* Meta canary weight present but not 0..100: ignored */
    char first_invalid[192];  /* why the first invalid entry was dropped */
};

/* canary_tag "canary", build_key "build_id", canary_weight_key "canary_weight",
 * INSTANCES_MAX_DEFAULT, INSTANCES_BYTES_DEFAULT. */
void instances_cfg_defaults(struct instances_cfg *cfg);

/* Parses json[0..len) into out (initialised here; sorted by (kind, id);
 * out->index is 0, the caller sets it). Returns 0, or -1 with a reason in err
 * and out empty. rep may be NULL. */
int instances_parse(const char *json, size_t len, const struct instances_cfg *cfg,
                    struct pool_set *out, struct instances_report *rep, char *err, size_t errlen);

/* Same instances and canary weight (the index is not compared). */
bool instances_equal(const struct pool_set *a, const struct pool_set *b);

/* Panic threshold: may next replace prev? Refused (false, reason in why) when
 * prev has instances and next is empty, or when next's stable pool holds
 * fewer than panic_ratio x prev's. The canary pool may shrink freely while a
 * stable pool remains: a canary that is reverted or promoted leaves it on
 * purpose and its users fall back to stable; without a stable pool it gets
 * the same ratio. panic_ratio is clamped to [0, 1] (0: only refuse empty). */
bool instances_accept(const struct pool_set *prev, const struct pool_set *next, double panic_ratio,
                      char *why, size_t whylen);

/* An IPv4/IPv6 literal or an RFC 1123 host name shorter than POOL_ADDR_MAX. */
bool instances_addr_ok(const char *s);

/* Consul weight -> HAProxy weight: passing 1..N -> 1..256, warning 0..N ->
 * 0..256 (Consul allows Warning 0: keep it, but send it nothing new). */
unsigned instances_map_weight(long long w, bool warning);

#endif
