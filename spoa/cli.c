#include "cli.h"

#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "config.h"
#include "deliver.h"
#include "fill.h"
#include "l1.h"
#include "lane.h"
#include "log.h"
#include "opcmd.h"
#include "opsock.h"
#include "routes.h"
#include "stats.h"
#include "util.h"

static int show_info(struct opsock_out *out, int argc, char **argv, void *ud)
{
    struct cli_state *st = ud;
    const struct spoa_conf *c = *st->conf;

    opsock_printf(out, "Name: cedra-spoa\nVersion: %s\nPid: %ld\nUptime_sec: %.0f\n",
                  PACKAGE_VERSION, (long)getpid(), now_mono() - st->started);
    opsock_printf(out, "Threads: %u\nConfig: %s\nLog_level: %s\n", st->threads, st->conf_path,
                  log_level_name(log_get_level()));
    opsock_printf(out, "Listen: %s\n", c->nlisten ? c->listen[0].text : "");
    opsock_printf(out, "Valkey: %s\n", c->valkey_addr[0] ? c->valkey_addr : "none");
    opsock_printf(out, "Deliver: %s\n", c->has_deliver ? c->deliver.text : "none");
    opsock_printf(out, "Spop_connections: %.0f\nSpop_max_connections: %u\n",
                  metrics_gauge_value(st->stats->spop_open), spoa_conf_max_connections(c));
    if (st->l1) {
        struct l1_stats ls;

        l1_get_stats(st->l1, &ls);
        opsock_printf(out, "L1_enabled: %d\nL1_entries: %llu\nL1_bytes: %llu\nL1_max_bytes: %llu\n",
                      ls.enabled, (unsigned long long)ls.entries, (unsigned long long)ls.bytes,
                      (unsigned long long)ls.max_bytes);
    }
    if (st->tracking_up)
        opsock_printf(out, "Valkey_tracking: %s\n", st->tracking_up(st->ud) ? "up" : "down");
    if (st->lane) {
        struct lane_stats ls;

        lane_get_stats(st->lane, &ls);
        opsock_printf(out,
                      "Lane: %s\nLane_health: %s\nLane_entries: %llu\nLane_grace_entries: %llu\n"
                      "Lane_published: %llu\nLane_withdrawn: %llu\nLane_resets: %llu\n"
                      "Lane_refused: %llu\nLane_fills: %llu\nLane_grace_fills: %llu\n"
                      "Lane_unknown_fills: %llu\nLane_commands: %llu\nLane_failures: %llu\n"
                      "Lane_setups: %llu\nLane_checks: %llu\n",
                      ls.up ? "up" : "down", lane_up(st->lane, 0) ? "up" : "down",
                      (unsigned long long)ls.entries, (unsigned long long)ls.grace_entries,
                      (unsigned long long)ls.published, (unsigned long long)ls.withdrawn,
                      (unsigned long long)ls.resets, (unsigned long long)ls.refused,
                      (unsigned long long)ls.fills, (unsigned long long)ls.grace_fills,
                      (unsigned long long)ls.unknown_fills, (unsigned long long)ls.commands,
                      (unsigned long long)ls.failures, (unsigned long long)ls.setups,
                      (unsigned long long)ls.checks);
    }
    if (st->fill) {
        struct fill_stats fs;

        fill_get_stats(st->fill, &fs);
        opsock_printf(out,
                      "Haproxy_cache_entries: %llu\nHaproxy_cache_grace_entries: %llu\n"
                      "Haproxy_cache_offered: %llu\nHaproxy_cache_refused: %llu\n"
                      "Haproxy_cache_fills: %llu\nHaproxy_cache_grace_fills: %llu\n"
                      "Haproxy_cache_unknown_fills: %llu\n",
                      (unsigned long long)fs.entries, (unsigned long long)fs.grace_entries,
                      (unsigned long long)fs.offered, (unsigned long long)fs.refused,
                      (unsigned long long)fs.fills, (unsigned long long)fs.grace_fills,
                      (unsigned long long)fs.unknown_fills);
    }
    opsock_printf(out, "Locales: ");
    for (unsigned i = 0; i < c->locales.n; i++)
        opsock_printf(out, "%s%s%s", i ? "," : "", c->locales.name[i],
                      i == c->locales.def ? "(default)" : "");
    opsock_printf(out, "\n");
    if (st->deliver) {
        struct deliver_stats ds;

        deliver_get_stats(st->deliver, &ds);
        opsock_printf(out,
                      "Deliver_parked: %lu\nDeliver_delivered: %lu\nDeliver_expired: %lu\n"
                      "Deliver_unknown: %lu\nDeliver_refused: %lu\n",
                      ds.parked, ds.delivered, ds.expired, ds.unknown, ds.refused);
    }
    return 0;
}

static int show_stat(struct opsock_out *out, int argc, char **argv, void *ud)
{
    struct cli_state *st = ud;
    struct spoa_stats *s = st->stats;
    bool json = argc == 3 && strcmp(argv[2], "json") == 0;
    static const struct {
        const char *name;
        size_t off;
    } more[] = {
        {"not_modified", offsetof(struct spoa_stats, not_modified)},
        {"revalidations", offsetof(struct spoa_stats, revalidations)},
        {"redirect_refused", offsetof(struct spoa_stats, redirect_refused)},
        {"ack_too_big", offsetof(struct spoa_stats, ack_too_big)},
        {"unknown_messages", offsetof(struct spoa_stats, other_messages)},
        {"valkey_errors", offsetof(struct spoa_stats, lookup_errors)},
        {"gzip_answers", offsetof(struct spoa_stats, gzip_answers)},
        {"gzip_errors", offsetof(struct spoa_stats, gzip_errors)},
        {"spop_connections", offsetof(struct spoa_stats, spop_connections)},
        {"spop_refused", offsetof(struct spoa_stats, spop_refused)},
        {"spop_errors", offsetof(struct spoa_stats, spop_errors)},
        {"spop_aborted", offsetof(struct spoa_stats, spop_aborted)},
    };

    if (argc > 3 || (argc == 3 && !json))
        return opsock_error(out, "usage: show stat [json]");
    if (json) {
        opsock_printf(out, "{\"requests\":[");
        for (int d = 0; d < DEC_N; d++)
            for (int c = 0; c < CACHE_N; c++)
                opsock_printf(out, "%s{\"decision\":\"%s\",\"cache\":\"%s\",\"count\":%llu}",
                              d || c ? "," : "", stat_decision_names[d], stat_cache_names[c],
                              (unsigned long long)metrics_counter_value(s->requests[d][c]));
        opsock_printf(out, "]");
        for (size_t i = 0; i < sizeof(more) / sizeof(more[0]); i++)
            opsock_printf(out, ",\"%s\":%llu", more[i].name,
                          (unsigned long long)metrics_counter_value(
                              *(struct metrics_counter **)((char *)s + more[i].off)));
        opsock_printf(out, "}\n");
        return 0;
    }
    /* HAProxy's CSV style: a "# " header line, then one row per series. */
    opsock_printf(out, "# decision,cache,requests\n");
    for (int d = 0; d < DEC_N; d++)
        for (int c = 0; c < CACHE_N; c++)
            opsock_printf(out, "%s,%s,%llu\n", stat_decision_names[d], stat_cache_names[c],
                          (unsigned long long)metrics_counter_value(s->requests[d][c]));
    for (size_t i = 0; i < sizeof(more) / sizeof(more[0]); i++)
        opsock_printf(out, "%s,,%llu\n", more[i].name,
                      (unsigned long long)metrics_counter_value(
                          *(struct metrics_counter **)((char *)s + more[i].off)));
    return 0;
}

static int show_pools(struct opsock_out *out, int argc, char **argv, void *ud)
{
    struct cli_state *st = ud;
    const struct spoa_conf *c = *st->conf;

    opsock_printf(out, "# pool,key_prefix,scheme,routes,build,weight\n");
    for (unsigned i = 0; i < c->npools; i++) {
        const struct spoa_pool *p = &c->pools[i];

        bool canary = strcmp(p->name, "canary") == 0;
        bool has_canary = spoa_conf_pool(c, "canary") != NULL;

        /* weight: the share of new users drawn into the pool. */
        opsock_printf(out, "%s,%s,%s,%u,%s,%u\n", p->name, p->key_prefix,
                      routes_scheme(p->routes) == ROUTES_PATHNAME ? "pathname" : "route-cache",
                      routes_count(p->routes), p->build_id[0] ? p->build_id : "-",
                      canary       ? c->canary_weight
                      : has_canary ? 100 - c->canary_weight
                                   : 100);
    }
    return 0;
}

static int set_pool(struct opsock_out *out, int argc, char **argv, void *ud)
{
    struct cli_state *st = ud;
    struct spoa_conf *c;
    char err[300];

    if (argc < 4)
        return opsock_error(out, "usage: set pool <stable|canary> key-prefix <p> routes "
                                 "<file|pathname> [build <id>] | set pool canary off | "
                                 "set pool canary weight <0-100>");
    c = spoa_conf_dup(*st->conf);
    if (!c)
        return opsock_error(out, "out of memory");
    if (spoa_conf_set_pool(c, argc - 2, argv + 2, err, sizeof(err)) < 0) {
        spoa_conf_release(c);
        return opsock_error(out, "%s", err);
    }
    st->publish(st->ud, c); /* takes the reference */
    log_notice("pool_changed", "pools=%u canary_weight=%u", c->npools, c->canary_weight);
    return 0;
}

static int cache_line(const struct l1_info *info, const struct isr_entry *e, void *ud)
{
    opsock_printf(ud, "%s,%zu,%.1f,%u,%s,%d\n", info->key, info->bytes, info->age, info->hits,
                  info->main ? "main" : "probation", e->status);
    return 0;
}

static int show_cache(struct opsock_out *out, int argc, char **argv, void *ud)
{
    struct cli_state *st = ud;
    struct l1_stats ls;
    const char *prefix = argc >= 3 ? argv[2] : "";

    if (argc > 3)
        return opsock_error(out, "usage: show cache [key prefix]");
    if (!st->l1)
        return opsock_error(out, "no in-process cache (needs valkey and l1-size)");
    l1_get_stats(st->l1, &ls);
    opsock_printf(out,
                  "# enabled=%d entries=%llu bytes=%llu max_bytes=%llu hits=%llu misses=%llu "
                  "evictions=%llu invalidations=%llu\n",
                  ls.enabled, (unsigned long long)ls.entries, (unsigned long long)ls.bytes,
                  (unsigned long long)ls.max_bytes, (unsigned long long)ls.hits,
                  (unsigned long long)ls.misses, (unsigned long long)ls.evictions,
                  (unsigned long long)ls.invalidations);
    opsock_printf(out, "# key,bytes,age_s,hits,queue,status\n");
    l1_foreach(st->l1, prefix, strlen(prefix), cache_line, out);
    return 0;
}

/* Drops pages from memory only: Valkey and Next.js stay the source of truth,
 * the next request reads the page from Valkey again. */
static int purge(struct opsock_out *out, int argc, char **argv, void *ud)
{
    struct cli_state *st = ud;
    size_t n;

    if (argc != 3)
        return opsock_error(out,
                            "usage: purge key <full key> | purge prefix <key prefix> | purge all");
    if (!st->l1)
        return opsock_error(out, "no in-process cache");
    if (!strcmp(argv[1], "path")) {
        const struct spoa_conf *c = *st->conf;
        char key[1024];

        /* A URL path: its key in every pool (each build has its own). */
        n = 0;
        for (unsigned i = 0; i < c->npools; i++) {
            const struct spoa_pool *p = &c->pools[i];
            size_t pl = strlen(p->key_prefix);

            if (pl >= sizeof(key))
                continue;
            memcpy(key, p->key_prefix, pl);
            if (routes_key(p->routes, argv[2], strlen(argv[2]), key + pl, sizeof(key) - pl) >= 0)
                n += l1_invalidate_key(st->l1, key, strlen(key));
        }
    } else if (!strcmp(argv[1], "key"))
        n = l1_invalidate_key(st->l1, argv[2], strlen(argv[2]));
    else if (!strcmp(argv[1], "prefix"))
        n = l1_invalidate_prefix(st->l1, argv[2], strlen(argv[2]));
    else
        return opsock_error(out,
                            "usage: purge key <full key> | purge prefix <key prefix> | purge all");
    opsock_printf(out, "purged %zu\n", n);
    log_notice("purge", "what=%s entries=%zu", argv[1], n);
    return 0;
}

static int purge_all(struct opsock_out *out, int argc, char **argv, void *ud)
{
    struct cli_state *st = ud;
    size_t n;

    if (!st->l1)
        return opsock_error(out, "no in-process cache");
    n = l1_flush(st->l1);
    opsock_printf(out, "purged %zu\n", n);
    log_notice("purge", "what=all entries=%zu", n);
    return 0;
}

static int show_metrics(struct opsock_out *out, int argc, char **argv, void *ud)
{
    struct cli_state *st = ud;

    return opcmd_show_metrics(out, st->stats->m);
}

int cli_register(struct opsock *s, struct cli_state *st, char *err, size_t errlen)
{
    static const struct opsock_cmd cmds[] = {
        {"show info", "process, configuration and Valkey summary", show_info},
        {"show stat", "[json] requests by decision and cache status, and other counters",
         show_stat},
        {"show pools", "the pools (stable, canary): key prefix, key scheme, routes, build",
         show_pools},
        {"set pool",
         "<stable|canary> key-prefix <p> routes <file|pathname> [build <id>] | canary off | "
         "canary weight <0-100>",
         set_pool},
        {"set log-level", "<level> error, warning, notice, info or debug", opcmd_set_log_level},
        {"show cache", "[key prefix] what the in-process cache holds: key, size, age, hits",
         show_cache},
        {"purge path", "<url path> drop a page from memory, in every pool (Valkey is untouched)",
         purge},
        {"purge key", "<full key> drop one page from memory (Valkey is untouched)", purge},
        {"purge prefix", "<key prefix> drop every page under a key prefix from memory", purge},
        {"purge all", "drop every page from memory", purge_all},
        {"show metrics", "the Prometheus exposition of every metric", show_metrics},
        {NULL, NULL, NULL},
    };

    return opsock_register(s, cmds, st, err, errlen);
}
