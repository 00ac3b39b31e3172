#include "agent_cli.h"

#include <inttypes.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "config.h"
#include "log.h"
#include "opcmd.h"
#include "opsock.h"
#include "util.h"

static const char *source_name(enum weight_source s)
{
    return s == WEIGHT_OPERATOR ? "operator" : s == WEIGHT_META ? "consul-meta" : "config";
}

static double age(double t)
{
    return t > 0 ? now_mono() - t : -1;
}

static int show_info(struct opsock_out *out, int argc, char **argv, void *ud)
{
    struct agent *a = ud;
    const struct agent_conf *c = a->conf;
    struct consul_stats cs;
    struct hapi_counters hc;
    enum weight_source src;
    int w = agent_canary_weight(a, &src);
    bool first = true;

    if (argc != 2)
        return opsock_error(out, "usage: show info");
    consul_stats(a->consul, &cs);
    hapi_get_counters(a->h, &hc);
    opsock_printf(out, "Name: cedra-agent\nVersion: %s\nPid: %ld\nUptime_sec: %.0f\n",
                  PACKAGE_VERSION, (long)getpid(), now_mono() - a->started);
    opsock_printf(out, "Config: %s\nLog_level: %s\n", a->conf_path,
                  log_level_name(log_get_level()));
    opsock_printf(out, "Consul: %s\nConsul_registered: %d\nServices: ", consul_address(a->consul),
                  consul_registered(a->consul) ? 1 : 0);
    for (unsigned i = 0; i < a->nsvc; i++)
        opsock_printf(out, "%s%s", i ? "," : "", a->svc[i].conf->name);
    opsock_printf(out, "\nHaproxy_socket: %s\n", c->haproxy_socket);
    if (a->have_hinfo)
        opsock_printf(out, "Haproxy_pid: %" PRIu64 "\nHaproxy_version: %s\n", a->hinfo.pid,
                      a->hinfo.version);
    else
        opsock_printf(out, "Haproxy_pid: -\nHaproxy_version: -\n");
    opsock_printf(out, "Haproxy_restarts: %" PRIu64 "\nHaproxy_commands: %" PRIu64 "\n",
                  a->haproxy_restarts, hc.commands);
    opsock_printf(out,
                  "Last_round_age_sec: %.3f\nRounds_ok: %" PRIu64 "\nRounds_failed: %" PRIu64
                  "\nRound_error: %s\n",
                  age(atomic_load(&a->last_round_ok)), a->rounds_ok, a->rounds_failed,
                  a->round_error[0] ? a->round_error : "-");
    opsock_printf(out, "Paused: %d\nPaused_sec: %.0f\n", a->paused ? 1 : 0,
                  a->paused ? now_mono() - a->paused_since : 0);
    opsock_printf(out, "Panic: %d\nPanic_services: ", agent_panic_any(a) ? 1 : 0);
    for (unsigned i = 0; i < a->nsvc; i++) {
        if (!a->svc[i].panic)
            continue;
        opsock_printf(out, "%s%s", first ? "" : ",", a->svc[i].conf->name);
        first = false;
    }
    opsock_printf(out, "%s\n", first ? "-" : "");
    opsock_printf(out, "Canary_weight: %d\nCanary_weight_source: %s\n", w, source_name(src));
    if (a->spoa) {
        struct spoa_client_stats st;

        spoa_client_stats(a->spoa, &st);
        opsock_printf(out, "Spoa_socket: %s\nSpoa_in_sync: %d\n", spoa_client_path(a->spoa),
                      st.in_sync ? 1 : 0);
    } else {
        opsock_printf(out, "Spoa_socket: none\nSpoa_in_sync: -\n");
    }
    return 0;
}

static int show_services(struct opsock_out *out, int argc, char **argv, void *ud)
{
    struct agent *a = ud;

    if (argc != 2)
        return opsock_error(out, "usage: show services");
    for (unsigned i = 0; i < a->nsvc; i++) {
        struct agent_svc *s = &a->svc[i];
        struct consul_watch_stats ws;
        char q[300], qr[300];

        memset(&ws, 0, sizeof(ws));
        if (s->w)
            consul_watch_stats(s->w, &ws);
        opsock_printf(out,
                      "%s index=%" PRIu64 " contact_age=%.3f queries=%" PRIu64 " updates=%" PRIu64
                      " resets=%" PRIu64 " failures=%u",
                      s->conf->name, ws.index, age(ws.last_success_mono), ws.queries, ws.updates,
                      ws.resets, ws.failures);
        opsock_printf(out, " errors=");
        for (int k = 0; k < CONSUL_ERR_KINDS; k++)
            opsock_printf(out, "%s%s:%" PRIu64, k ? "," : "", consul_err_name((enum consul_err)k),
                          ws.errors[k]);
        if (s->last_err_at > 0)
            opsock_printf(out, " last_error=%s last_error_age=%.3f last_error_reason=%s",
                          consul_err_name(s->last_err), age(s->last_err_at),
                          log_quote(q, sizeof(q), s->last_err_reason, strlen(s->last_err_reason)));
        else
            opsock_printf(out, " last_error=- last_error_age=-1 last_error_reason=-");
        opsock_printf(out, " panic=%d panic_sec=%.0f panic_reason=%s refused=%" PRIu64,
                      s->panic ? 1 : 0, s->panic ? now_mono() - s->panic_since : 0,
                      s->panic ? log_quote(qr, sizeof(qr), s->panic_reason, strlen(s->panic_reason))
                               : "-",
                      s->refused_total);
        opsock_printf(out, " good_index=%" PRIu64 " stable=%zu canary=%zu",
                      s->have_good ? s->good.index : 0,
                      s->have_good ? pool_set_count(&s->good, POOL_STABLE) : 0,
                      s->have_good ? pool_set_count(&s->good, POOL_CANARY) : 0);
        if (s->have_refused)
            opsock_printf(out, " refused_index=%" PRIu64 " refused_stable=%zu refused_canary=%zu",
                          s->refused.index, pool_set_count(&s->refused, POOL_STABLE),
                          pool_set_count(&s->refused, POOL_CANARY));
        opsock_printf(out, " applied_index=%" PRIu64, s->have_applied ? s->applied_index : 0);
        opsock_printf(out, " dropped_critical=%zu dropped_invalid=%zu dropped_duplicate=%zu\n",
                      ws.last_report.critical, ws.last_report.invalid, ws.last_report.duplicate);
    }
    return 0;
}

static const struct instance *find_instance(const struct agent_svc *s, const char *id,
                                            enum pool_kind kind)
{
    const struct pool_set *sets[2] = {s->have_good ? &s->good : NULL,
                                      s->have_applied ? &s->applied : NULL};

    for (int j = 0; j < 2; j++)
        for (size_t i = 0; sets[j] && i < sets[j]->n; i++)
            if (sets[j]->inst[i].kind == kind && !strcmp(sets[j]->inst[i].id, id))
                return &sets[j]->inst[i];
    return NULL;
}

static int show_servers(struct opsock_out *out, int argc, char **argv, void *ud)
{
    struct agent *a = ud;
    double now = now_mono();
    bool found = argc == 2;

    if (argc > 3)
        return opsock_error(out, "usage: show servers [<service>]");
    for (unsigned i = 0; i < a->nsvc && !found; i++)
        found = !strcmp(a->svc[i].conf->name, argv[2]);
    if (!found)
        return opsock_error(out, "no such service '%s'", argv[2]);
    opsock_printf(out, "# service,backend,pool,slot,state,addr,port,weight,instance,build,idle,"
                       "drain_sec\n");
    for (unsigned i = 0; i < a->nsvc; i++) {
        const struct agent_svc *s = &a->svc[i];

        if (argc == 3 && strcmp(s->conf->name, argv[2]) != 0)
            continue;
        for (int k = 0; k < POOL_KINDS; k++) {
            for (size_t j = 0; j < s->nslots; j++) {
                const struct slot_state *sl = &s->slots[j];
                const struct instance *in;
                const char *st;

                if (sl->kind != (enum pool_kind)k)
                    continue;
                st = sl->admin == SLOT_READY   ? "ready"
                     : sl->admin == SLOT_DRAIN ? "drain"
                                               : "maint";
                in = sl->owner[0] ? find_instance(s, sl->owner, sl->kind) : NULL;
                opsock_printf(out, "%s,%s,%s,%s,%s,%s,%u,%u,%s,%s,%s,%.1f\n", s->conf->name,
                              s->conf->backend[k], pool_kind_name(sl->kind), sl->name, st, sl->addr,
                              (unsigned)sl->port, sl->weight, sl->owner[0] ? sl->owner : "-",
                              in && in->build_id[0] ? in->build_id : "-",
                              sl->idle_known ? (sl->idle ? "1" : "0") : "-",
                              sl->admin == SLOT_DRAIN && sl->drain_since > 0 ? now - sl->drain_since
                                                                             : 0.0);
            }
        }
    }
    return 0;
}

/* "build:count,..." of one pool, or "-". */
static void print_builds(struct opsock_out *out, const struct pool_set *ps, enum pool_kind kind)
{
    bool any = false;

    for (size_t i = 0; ps && i < ps->n; i++) {
        size_t n = 0;
        bool seen = false;

        if (ps->inst[i].kind != kind)
            continue;
        for (size_t j = 0; j < i && !seen; j++)
            seen = ps->inst[j].kind == kind && !strcmp(ps->inst[j].build_id, ps->inst[i].build_id);
        if (seen)
            continue;
        for (size_t j = i; j < ps->n; j++)
            n += ps->inst[j].kind == kind && !strcmp(ps->inst[j].build_id, ps->inst[i].build_id);
        opsock_printf(out, "%s%s:%zu", any ? "," : "",
                      ps->inst[i].build_id[0] ? ps->inst[i].build_id : "(none)", n);
        any = true;
    }
    if (!any)
        opsock_printf(out, "-");
}

static void print_pool(struct opsock_out *out, const struct spoa_pool_want *p)
{
    if (!p->on)
        opsock_printf(out, "off");
    else
        opsock_printf(out, "key-prefix %s routes %s build %s", p->key_prefix, p->routes,
                      p->build[0] ? p->build : "-");
}

static int show_canary(struct opsock_out *out, int argc, char **argv, void *ud)
{
    struct agent *a = ud;
    const struct agent_svc *s = &a->svc[0];
    const struct pool_set *ps = s->have_good ? &s->good : NULL;
    enum weight_source src;
    int w = agent_canary_weight(a, &src);

    if (argc != 2)
        return opsock_error(out, "usage: show canary");
    opsock_printf(out, "Service: %s\nCanary_live: %zu\nCanary_builds: ", s->conf->name,
                  ps ? pool_set_count(ps, POOL_CANARY) : 0);
    print_builds(out, ps, POOL_CANARY);
    opsock_printf(out, "\nStable_builds: ");
    print_builds(out, ps, POOL_STABLE);
    opsock_printf(out, "\nWeight: %d\nWeight_source: %s\nWeight_config: %d\n", w, source_name(src),
                  a->conf->canary_weight);
    if (ps && ps->canary_weight >= 0)
        opsock_printf(out, "Weight_meta: %d\n", ps->canary_weight);
    else
        opsock_printf(out, "Weight_meta: -\n");
    if (a->op_weight >= 0)
        opsock_printf(out, "Weight_operator: %d\n", a->op_weight);
    else
        opsock_printf(out, "Weight_operator: -\n");
    if (!a->spoa) {
        opsock_printf(out, "Spoa: disabled\n");
        return 0;
    }
    {
        struct spoa_client_stats st;

        spoa_client_stats(a->spoa, &st);
        opsock_printf(out, "Spoa: %s\n",
                      st.in_sync         ? "in-sync"
                      : st.last_error[0] ? "failing"
                                         : "pending");
        opsock_printf(out, "Spoa_error: %s\n", st.last_error[0] ? st.last_error : "-");
        if (a->spoa_want_valid) {
            opsock_printf(out, "Spoa_want_stable: ");
            print_pool(out, &a->spoa_want.pool[POOL_STABLE]);
            opsock_printf(out, "\nSpoa_want_canary: ");
            print_pool(out, &a->spoa_want.pool[POOL_CANARY]);
            opsock_printf(out, "\nSpoa_want_weight: %d\n", a->spoa_want.weight);
        }
        opsock_printf(out, "Spoa_acked_stable: ");
        print_pool(out, &st.acked.pool[POOL_STABLE]);
        opsock_printf(out, "\nSpoa_acked_canary: ");
        print_pool(out, &st.acked.pool[POOL_CANARY]);
        opsock_printf(out,
                      "\nSpoa_pid: %lld\nSpoa_pushes: %" PRIu64 "\nSpoa_failures: %" PRIu64 "\n",
                      st.spoa_pid, st.pushes, st.failures);
        if (a->canary_hold_since > 0)
            opsock_printf(out, "Canary_drain_held: %.3f\n", age(a->canary_hold_since));
        else
            opsock_printf(out, "Canary_drain_held: -\n");
    }
    return 0;
}

static int set_canary_weight(struct opsock_out *out, int argc, char **argv, void *ud)
{
    struct agent *a = ud;
    uint64_t v;

    if (argc != 4)
        return opsock_error(out, "usage: set canary weight <0-100>|auto");
    if (!strcmp(argv[3], "auto")) {
        agent_set_operator_weight(a, -1);
        return 0;
    }
    if (parse_uint(argv[3], 0, 100, &v) < 0)
        return opsock_error(out, "bad weight '%s': 0 to 100 (percent of new users) or auto",
                            argv[3]);
    agent_set_operator_weight(a, (int)v);
    return 0;
}

static int pause_cmd(struct opsock_out *out, int argc, char **argv, void *ud)
{
    struct agent *a = ud;

    if (argc != 1)
        return opsock_error(out, "usage: pause");
    if (a->paused)
        return opsock_error(out, "already paused");
    agent_set_paused(a, true);
    return 0;
}

static int resume_cmd(struct opsock_out *out, int argc, char **argv, void *ud)
{
    struct agent *a = ud;

    if (argc != 1)
        return opsock_error(out, "usage: resume");
    if (!a->paused)
        return opsock_error(out, "not paused");
    agent_set_paused(a, false);
    return 0;
}

static int resync_cmd(struct opsock_out *out, int argc, char **argv, void *ud)
{
    if (argc != 1)
        return opsock_error(out, "usage: resync");
    agent_resync(ud);
    return 0;
}

static int show_stat(struct opsock_out *out, int argc, char **argv, void *ud)
{
    struct agent *a = ud;
    struct consul_stats cs;
    struct hapi_counters hc;

    if (argc != 2)
        return opsock_error(out, "usage: show stat");
    consul_stats(a->consul, &cs);
    hapi_get_counters(a->h, &hc);
    opsock_printf(out, "# name,service,value\n");
    opsock_printf(out, "rounds_ok,,%" PRIu64 "\nrounds_failed,,%" PRIu64 "\n", a->rounds_ok,
                  a->rounds_failed);
    opsock_printf(out, "haproxy_restarts,,%" PRIu64 "\nhaproxy_commands,,%" PRIu64 "\n",
                  a->haproxy_restarts, hc.commands);
    opsock_printf(out, "haproxy_failures,,%" PRIu64 "\nhaproxy_bad_answers,,%" PRIu64 "\n",
                  hc.failures, hc.bad_answers);
    opsock_printf(out, "consul_requests,,%" PRIu64 "\nconsul_ttl_updates,,%" PRIu64 "\n",
                  cs.requests, cs.ttl_updates);
    opsock_printf(out, "consul_registrations,,%" PRIu64 "\n", cs.registrations);
    for (unsigned i = 0; i < a->nsvc; i++) {
        struct agent_svc *s = &a->svc[i];
        struct consul_watch_stats ws;
        uint64_t errs = 0;

        memset(&ws, 0, sizeof(ws));
        if (s->w)
            consul_watch_stats(s->w, &ws);
        for (int k = 0; k < CONSUL_ERR_KINDS; k++)
            errs += ws.errors[k];
        opsock_printf(out, "consul_queries,%s,%" PRIu64 "\nconsul_updates,%s,%" PRIu64 "\n",
                      s->conf->name, ws.queries, s->conf->name, ws.updates);
        opsock_printf(out, "consul_errors,%s,%" PRIu64 "\nconsul_refused,%s,%" PRIu64 "\n",
                      s->conf->name, errs, s->conf->name, s->refused_total);
    }
    if (a->spoa) {
        struct spoa_client_stats st;

        spoa_client_stats(a->spoa, &st);
        opsock_printf(out,
                      "spoa_pushes,,%" PRIu64 "\nspoa_failures,,%" PRIu64 "\nspoa_resyncs,,%" PRIu64
                      "\nspoa_verifies,,%" PRIu64 "\n",
                      st.pushes, st.failures, st.resyncs, st.verifies);
    }
    return 0;
}

static int show_metrics(struct opsock_out *out, int argc, char **argv, void *ud)
{
    struct agent *a = ud;

    if (argc != 2)
        return opsock_error(out, "usage: show metrics");
    agent_refresh_metrics(a);
    return opcmd_show_metrics(out, a->m);
}

int agent_cli_register(struct opsock *s, struct agent *a, char *err, size_t errlen)
{
    static const struct opsock_cmd cmds[] = {
        {"show info", "process, Consul, HAProxy, pause and panic summary", show_info},
        {"show services",
         "per watched service: Consul index, last contact, errors by kind, panic state, "
         "instance counts",
         show_services},
        {"show servers", "[<service>] slot <-> instance mapping, weights and states per backend",
         show_servers},
        {"show canary", "live canary builds, canary weight and where it comes from, cedra-spoa",
         show_canary},
        {"set canary weight",
         "<0-100>|auto operator override of the canary share (auto: config or Consul Meta)",
         set_canary_weight},
        {"pause", "freeze HAProxy and cedra-spoa updates (Consul is still watched)", pause_cmd},
        {"resume", "end a pause: the next round applies what Consul says", resume_cmd},
        {"resync",
         "full round now, re-push cedra-spoa, accept the last or next Consul answer even "
         "below the panic threshold",
         resync_cmd},
        {"show stat", "counters (rounds, HAProxy API, Consul, cedra-spoa) in CSV", show_stat},
        {"set log-level", "<level> error, warning, notice, info or debug", opcmd_set_log_level},
        {"show metrics", "the Prometheus exposition of every metric", show_metrics},
        {NULL, NULL, NULL},
    };

    return opsock_register(s, cmds, a, err, errlen);
}
