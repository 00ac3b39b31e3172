#include "conf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfgfile.h"
#include "instances.h"

void agent_conf_defaults(struct agent_conf *c)
{
    memset(c, 0, sizeof(*c));
    str_copy(c->canary_tag, "canary", sizeof(c->canary_tag));
    str_copy(c->build_key, "build_id", sizeof(c->build_key));
    str_copy(c->canary_weight_key, "canary_weight", sizeof(c->canary_weight_key));
    c->consul_wait = 60;
    c->consul_retry_min = 0.5;
    c->consul_retry_max = 30;
    c->consul_rate_burst = 5;
    c->consul_rate_interval = 1;
    c->consul_same_index_interval = 1;
    c->consul_timeout = 10;
    c->consul_connect_timeout = 5;
    c->consul_passing_only = true;
    c->consul_max_body = 8u << 20;
    c->consul_max_instances = INSTANCES_MAX_DEFAULT;

    c->canary_weight = 10;
    c->panic_ratio = 0.5;

    str_copy(c->haproxy_socket, "/run/haproxy/cedra-admin.sock", sizeof(c->haproxy_socket));
    c->haproxy_timeout = 2;
    c->drain_grace = 30;
    c->drain_min = 0;
    c->interval = 1;
    c->drain_interval = 0.2;
    c->max_slots = 256;

    c->spoa_timeout = 1;
    c->spoa_verify_interval = 5;
    c->canary_drain_wait = 2;
    str_copy(c->routes, "pathname", sizeof(c->routes));

    c->reg_enabled = true;
    str_copy(c->reg_name, "cedra-agent", sizeof(c->reg_name));
    c->reg_port = -1;
    c->reg_ttl = 10;
    c->reg_deregister_after = 60;

    c->stats_mode = 0600;
    c->log_level = LOG_LVL_INFO;
}

double agent_conf_health_window(const struct agent_conf *c)
{
    double w = 3 * c->interval;

    if (c->health_window > 0)
        return c->health_window;
    return w > 5 ? w : 5;
}

bool agent_word_ok(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;

        if (ch <= 0x20 || ch >= 0x7f || ch == ';' || ch == '\\' || ch == '#')
            return false;
    }
    return true;
}

int agent_tmpl_render(const char *tmpl, const char *build, const char *pool, const char *service,
                      char *out, size_t outlen)
{
    size_t o = 0;

    if (!outlen)
        return -1;
    for (const char *p = tmpl; *p;) {
        const char *val = NULL;
        char one[2] = {0, 0};

        if (p[0] == '%' && p[1] == '%') {
            one[0] = '%';
            val = one;
            p += 2;
        } else if (p[0] == '%' && p[1] == '{') {
            const char *e = strchr(p, '}');
            size_t n;

            if (!e)
                return -1;
            n = (size_t)(e - p - 2);
            if (n == 5 && !strncmp(p + 2, "build", 5))
                val = build ? build : "";
            else if (n == 4 && !strncmp(p + 2, "pool", 4))
                val = pool ? pool : "";
            else if (n == 7 && !strncmp(p + 2, "service", 7))
                val = service ? service : "";
            else
                return -1;
            p = e + 1;
        } else if (p[0] == '%') {
            return -1;
        } else {
            one[0] = *p++;
            val = one;
        }
        for (; *val; val++) {
            if (o + 1 >= outlen)
                return -1;
            out[o++] = *val;
        }
    }
    out[o] = '\0';
    return agent_word_ok(out) ? 0 : -1;
}

static bool name_ok(const char *s, size_t max)
{
    if (!s || !*s || strlen(s) >= max)
        return false;
    for (; *s; s++) {
        char ch = *s;

        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-' || ch == '.' || ch == ':'))
            return false;
    }
    return true;
}

static int get_duration(const struct cfg_line *l, const char *s, double min, double max,
                        double *out, char *err, size_t errlen)
{
    double d;

    if (parse_duration(s, &d) < 0 || d < min || d > max) {
        snprintf(err, errlen, "'%s': bad duration '%s' (%g s .. %g s; units us ms s m h)",
                 l->argv[0], s, min, max);
        return -1;
    }
    *out = d;
    return 0;
}

static int parse_kind(const char *s, enum pool_kind *k)
{
    if (!strcmp(s, "stable"))
        *k = POOL_STABLE;
    else if (!strcmp(s, "canary"))
        *k = POOL_CANARY;
    else
        return -1;
    return 0;
}

/* Parsing state: the global "backend" lines are defaults for the services. */
struct parse {
    struct agent_conf *c;
    char def_backend[POOL_KINDS][AGENT_NAME_MAX];
    char def_prefix[POOL_KINDS][AGENT_PREFIX_MAX];
    bool svc_backend_set[AGENT_MAX_SERVICES][POOL_KINDS];
    bool svc_prefix_set[AGENT_MAX_SERVICES][POOL_KINDS];
};

/* service <name> [backend-stable <b>] [backend-canary <b>] [slots-stable <p>] [slots-canary <p>] */
static int parse_service(struct parse *ps, const struct cfg_line *l, char *err, size_t errlen)
{
    struct agent_conf *c = ps->c;
    struct agent_service_conf *s;
    unsigned idx = c->nsvc;

    if (l->argc < 2 || l->argc % 2) {
        snprintf(err, errlen,
                 "usage: service <name> [backend-stable|backend-canary <backend>] "
                 "[slots-stable|slots-canary <prefix>]");
        return -1;
    }
    if (c->nsvc >= AGENT_MAX_SERVICES) {
        snprintf(err, errlen, "at most %d services", AGENT_MAX_SERVICES);
        return -1;
    }
    if (!name_ok(l->argv[1], sizeof(s->name))) {
        snprintf(err, errlen, "bad service name '%s'", l->argv[1]);
        return -1;
    }
    for (unsigned i = 0; i < c->nsvc; i++)
        if (!strcmp(c->svc[i].name, l->argv[1])) {
            snprintf(err, errlen, "service %s listed twice", l->argv[1]);
            return -1;
        }
    s = &c->svc[idx];
    memset(s, 0, sizeof(*s));
    str_copy(s->name, l->argv[1], sizeof(s->name));
    for (int i = 2; i + 1 < l->argc; i += 2) {
        const char *k = l->argv[i], *v = l->argv[i + 1];
        enum pool_kind kind;

        if (!strncmp(k, "backend-", 8) && parse_kind(k + 8, &kind) == 0) {
            if (!name_ok(v, AGENT_NAME_MAX)) {
                snprintf(err, errlen, "bad backend name '%s'", v);
                return -1;
            }
            str_copy(s->backend[kind], v, sizeof(s->backend[kind]));
            ps->svc_backend_set[idx][kind] = true;
        } else if (!strncmp(k, "slots-", 6) && parse_kind(k + 6, &kind) == 0) {
            if (strcmp(v, "*") && !name_ok(v, AGENT_PREFIX_MAX)) {
                snprintf(err, errlen, "bad slot prefix '%s'", v);
                return -1;
            }
            str_copy(s->slot_prefix[kind], strcmp(v, "*") ? v : "", sizeof(s->slot_prefix[kind]));
            ps->svc_prefix_set[idx][kind] = true;
        } else {
            snprintf(err, errlen, "service %s: unknown setting '%s'", s->name, k);
            return -1;
        }
    }
    c->nsvc++;
    return 0;
}

/* register off | register <name> [id <id>] [address <a>] [port <p>] [tags <t,...>]
 *   [meta <k=v>]... [ttl <d>] [deregister-after <d>] */
static int parse_register(struct agent_conf *c, const struct cfg_line *l, char *err, size_t errlen)
{
    if (l->argc == 2 && !strcmp(l->argv[1], "off")) {
        c->reg_enabled = false;
        return 0;
    }
    if (l->argc < 2 || l->argc % 2) {
        snprintf(err, errlen,
                 "usage: register off | register <name> [id <id>] [address <a>] "
                 "[port <n>] [tags <t1,t2>] [meta <k=v>] [ttl <d>] "
                 "[deregister-after <d>]");
        return -1;
    }
    if (!name_ok(l->argv[1], sizeof(c->reg_name))) {
        snprintf(err, errlen, "bad service name '%s'", l->argv[1]);
        return -1;
    }
    c->reg_enabled = true;
    str_copy(c->reg_name, l->argv[1], sizeof(c->reg_name));
    for (int i = 2; i + 1 < l->argc; i += 2) {
        const char *k = l->argv[i], *v = l->argv[i + 1];
        uint64_t n;

        if (!strcmp(k, "id")) {
            if (!name_ok(v, sizeof(c->reg_id)))
                goto bad;
            str_copy(c->reg_id, v, sizeof(c->reg_id));
        } else if (!strcmp(k, "address")) {
            if (!instances_addr_ok(v))
                goto bad;
            str_copy(c->reg_address, v, sizeof(c->reg_address));
        } else if (!strcmp(k, "port")) {
            if (parse_uint(v, 0, 65535, &n) < 0)
                goto bad;
            c->reg_port = (int)n;
        } else if (!strcmp(k, "tags")) {
            char buf[CFG_MAX_LINE], *save = NULL;

            str_copy(buf, v, sizeof(buf));
            c->nreg_tags = 0;
            for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                if (c->nreg_tags >= AGENT_MAX_TAGS || !agent_word_ok(t) ||
                    strlen(t) >= sizeof(c->reg_tags[0]))
                    goto bad;
                str_copy(c->reg_tags[c->nreg_tags++], t, sizeof(c->reg_tags[0]));
            }
        } else if (!strcmp(k, "meta")) {
            const char *eq = strchr(v, '=');

            if (!eq || eq == v || c->nreg_meta >= AGENT_MAX_META ||
                (size_t)(eq - v) >= sizeof(c->reg_meta[0][0]) ||
                strlen(eq + 1) >= sizeof(c->reg_meta[0][1]))
                goto bad;
            memcpy(c->reg_meta[c->nreg_meta][0], v, (size_t)(eq - v));
            c->reg_meta[c->nreg_meta][0][eq - v] = '\0';
            str_copy(c->reg_meta[c->nreg_meta][1], eq + 1, sizeof(c->reg_meta[0][1]));
            c->nreg_meta++;
        } else if (!strcmp(k, "ttl")) {
            if (get_duration(l, v, 0.3, 86400, &c->reg_ttl, err, errlen) < 0)
                return -1;
        } else if (!strcmp(k, "deregister-after")) {
            if (get_duration(l, v, 1, 86400 * 365, &c->reg_deregister_after, err, errlen) < 0)
                return -1;
        } else {
            snprintf(err, errlen, "register: unknown setting '%s'", k);
            return -1;
        }
        continue;
    bad:
        snprintf(err, errlen, "register: bad value '%s' for '%s'", v, k);
        return -1;
    }
    return 0;
}

static int parse_socket_path(const char *v, char *out, size_t outlen, char *err, size_t errlen)
{
    if (v[0] != '/' || strlen(v) >= outlen) {
        snprintf(err, errlen, "'%s': an absolute path shorter than %zu bytes is required", v,
                 outlen);
        return -1;
    }
    str_copy(out, v, outlen);
    return 0;
}

static int on_line(const struct cfg_line *l, void *ud, char *err, size_t errlen)
{
    struct parse *ps = ud;
    struct agent_conf *c = ps->c;
    const char *kw = l->argv[0];
    uint64_t v;
    int pr;

    if (!strcmp(kw, "service"))
        return parse_service(ps, l, err, errlen);
    if (!strcmp(kw, "backend")) {
        enum pool_kind k;

        if ((l->argc != 3 && !(l->argc == 5 && !strcmp(l->argv[3], "slots"))) ||
            parse_kind(l->argv[1], &k) < 0) {
            snprintf(err, errlen, "usage: backend stable|canary <name> [slots <prefix>]");
            return -1;
        }
        if (!name_ok(l->argv[2], AGENT_NAME_MAX)) {
            snprintf(err, errlen, "bad backend name '%s'", l->argv[2]);
            return -1;
        }
        str_copy(ps->def_backend[k], l->argv[2], sizeof(ps->def_backend[k]));
        if (l->argc == 5) {
            if (strcmp(l->argv[4], "*") && !name_ok(l->argv[4], AGENT_PREFIX_MAX)) {
                snprintf(err, errlen, "bad slot prefix '%s'", l->argv[4]);
                return -1;
            }
            str_copy(ps->def_prefix[k], strcmp(l->argv[4], "*") ? l->argv[4] : "",
                     sizeof(ps->def_prefix[k]));
        }
        return 0;
    }
    if (!strcmp(kw, "canary-tag") || !strcmp(kw, "build-key") || !strcmp(kw, "canary-weight-key")) {
        char *dst = !strcmp(kw, "canary-tag")  ? c->canary_tag
                    : !strcmp(kw, "build-key") ? c->build_key
                                               : c->canary_weight_key;

        if (cfg_want_args(l, 1, err, errlen) < 0)
            return -1;
        if (!strcmp(kw, "canary-weight-key") && !strcmp(l->argv[1], "none")) {
            dst[0] = '\0';
            return 0;
        }
        if (!l->argv[1][0] || strlen(l->argv[1]) >= 64)
            goto bad;
        str_copy(dst, l->argv[1], 64);
        return 0;
    }
    if (!strcmp(kw, "canary-weight")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_uint(l->argv[1], 0, 100, &v) < 0)
            goto bad;
        c->canary_weight = (int)v;
        return 0;
    }
    if (!strcmp(kw, "panic-ratio")) {
        char *end;
        double r;

        if (cfg_want_args(l, 1, err, errlen) < 0)
            return -1;
        r = strtod(l->argv[1], &end);
        if (*end || end == l->argv[1] || !(r >= 0 && r <= 1))
            goto bad;
        c->panic_ratio = r;
        return 0;
    }
    if (!strcmp(kw, "consul-addr")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || !l->argv[1][0] ||
            strlen(l->argv[1]) >= sizeof(c->consul_addr))
            goto bad;
        str_copy(c->consul_addr, l->argv[1], sizeof(c->consul_addr));
        return 0;
    }
    if (!strcmp(kw, "consul-datacenter")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || !name_ok(l->argv[1], sizeof(c->consul_dc)))
            goto bad;
        str_copy(c->consul_dc, l->argv[1], sizeof(c->consul_dc));
        return 0;
    }
    if (!strcmp(kw, "consul-wait"))
        return cfg_want_args(l, 1, err, errlen) < 0
                   ? -1
                   : get_duration(l, l->argv[1], 0.01, 600, &c->consul_wait, err, errlen);
    if (!strcmp(kw, "consul-timeout"))
        return cfg_want_args(l, 1, err, errlen) < 0
                   ? -1
                   : get_duration(l, l->argv[1], 0.01, 600, &c->consul_timeout, err, errlen);
    if (!strcmp(kw, "consul-connect-timeout"))
        return cfg_want_args(l, 1, err, errlen) < 0
                   ? -1
                   : get_duration(l, l->argv[1], 0.01, 600, &c->consul_connect_timeout, err,
                                  errlen);
    if (!strcmp(kw, "consul-same-index-interval"))
        return cfg_want_args(l, 1, err, errlen) < 0
                   ? -1
                   : get_duration(l, l->argv[1], 0, 600, &c->consul_same_index_interval, err,
                                  errlen);
    if (!strcmp(kw, "consul-retry")) {
        if (cfg_want_args(l, 2, err, errlen) < 0 ||
            get_duration(l, l->argv[1], 0.001, 3600, &c->consul_retry_min, err, errlen) < 0 ||
            get_duration(l, l->argv[2], 0.001, 3600, &c->consul_retry_max, err, errlen) < 0)
            return -1;
        if (c->consul_retry_max < c->consul_retry_min) {
            snprintf(err, errlen, "consul-retry: max below min");
            return -1;
        }
        return 0;
    }
    if (!strcmp(kw, "consul-rate")) {
        if (cfg_want_args(l, 2, err, errlen) < 0 || parse_uint(l->argv[1], 0, 100000, &v) < 0)
            goto bad;
        c->consul_rate_burst = (unsigned)v;
        return get_duration(l, l->argv[2], 0, 3600, &c->consul_rate_interval, err, errlen);
    }
    if (!strcmp(kw, "consul-stale") || !strcmp(kw, "consul-passing-only")) {
        bool b;

        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_bool(l->argv[1], &b) < 0)
            goto bad;
        if (!strcmp(kw, "consul-stale"))
            c->consul_stale = b;
        else
            c->consul_passing_only = b;
        return 0;
    }
    if (!strcmp(kw, "consul-max-body")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_size(l->argv[1], &v) < 0 || v < 1024 ||
            v > (1u << 30))
            goto bad;
        c->consul_max_body = v;
        return 0;
    }
    if (!strcmp(kw, "consul-max-instances")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || parse_uint(l->argv[1], 1, 1000000, &v) < 0)
            goto bad;
        c->consul_max_instances = (unsigned)v;
        return 0;
    }
    if (!strcmp(kw, "haproxy-socket")) {
        if (cfg_want_args(l, 1, err, errlen) < 0)
            return -1;
        return parse_socket_path(l->argv[1], c->haproxy_socket, sizeof(c->haproxy_socket), err,
                                 errlen);
    }
    if (!strcmp(kw, "server-state-file")) {
        if (cfg_want_args(l, 1, err, errlen) < 0)
            return -1;
        if (l->argv[1][0] != '/' || strlen(l->argv[1]) >= sizeof(c->server_state_file) - 8) {
            snprintf(err, errlen, "server-state-file: an absolute path under %zu bytes",
                     sizeof(c->server_state_file) - 8);
            return -1;
        }
        str_copy(c->server_state_file, l->argv[1], sizeof(c->server_state_file));
        return 0;
    }
    if (!strcmp(kw, "haproxy-timeout"))
        return cfg_want_args(l, 1, err, errlen) < 0
                   ? -1
                   : get_duration(l, l->argv[1], 0.01, 60, &c->haproxy_timeout, err, errlen);
    if (!strcmp(kw, "drain-grace"))
        return cfg_want_args(l, 1, err, errlen) < 0
                   ? -1
                   : get_duration(l, l->argv[1], 0, 86400, &c->drain_grace, err, errlen);
    if (!strcmp(kw, "drain-min"))
        return cfg_want_args(l, 1, err, errlen) < 0
                   ? -1
                   : get_duration(l, l->argv[1], 0, 86400, &c->drain_min, err, errlen);
    if (!strcmp(kw, "reconcile-interval"))
        return cfg_want_args(l, 1, err, errlen) < 0
                   ? -1
                   : get_duration(l, l->argv[1], 0.05, 3600, &c->interval, err, errlen);
    if (!strcmp(kw, "drain-interval"))
        return cfg_want_args(l, 1, err, errlen) < 0
                   ? -1
                   : get_duration(l, l->argv[1], 0.01, 3600, &c->drain_interval, err, errlen);
    if (!strcmp(kw, "max-slots")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 ||
            parse_uint(l->argv[1], 1, AGENT_MAX_SLOTS, &v) < 0)
            goto bad;
        c->max_slots = (unsigned)v;
        return 0;
    }
    if (!strcmp(kw, "spoa-socket")) {
        if (cfg_want_args(l, 1, err, errlen) < 0)
            return -1;
        if (!strcmp(l->argv[1], "none")) {
            c->spoa_socket[0] = '\0';
            return 0;
        }
        return parse_socket_path(l->argv[1], c->spoa_socket, sizeof(c->spoa_socket), err, errlen);
    }
    if (!strcmp(kw, "spoa-timeout"))
        return cfg_want_args(l, 1, err, errlen) < 0
                   ? -1
                   : get_duration(l, l->argv[1], 0.01, 60, &c->spoa_timeout, err, errlen);
    if (!strcmp(kw, "spoa-verify-interval"))
        return cfg_want_args(l, 1, err, errlen) < 0
                   ? -1
                   : get_duration(l, l->argv[1], 0.05, 86400, &c->spoa_verify_interval, err,
                                  errlen);
    if (!strcmp(kw, "canary-drain-wait"))
        return cfg_want_args(l, 1, err, errlen) < 0
                   ? -1
                   : get_duration(l, l->argv[1], 0, 300, &c->canary_drain_wait, err, errlen);
    if (!strcmp(kw, "key-prefix") || !strcmp(kw, "routes")) {
        char *dst = !strcmp(kw, "routes") ? c->routes : c->key_prefix;
        char probe[AGENT_TMPL_MAX * 2];

        if (cfg_want_args(l, 1, err, errlen) < 0 || strlen(l->argv[1]) >= AGENT_TMPL_MAX)
            goto bad;
        if (agent_tmpl_render(l->argv[1], "b", "stable", "s", probe, sizeof(probe)) < 0) {
            snprintf(err, errlen,
                     "'%s %s': unknown %%{variable} (build, pool, service) or a character "
                     "that cannot go into a command (blank, ';', '\\', '#')",
                     kw, l->argv[1]);
            return -1;
        }
        str_copy(dst, l->argv[1], AGENT_TMPL_MAX);
        return 0;
    }
    if (!strcmp(kw, "register"))
        return parse_register(c, l, err, errlen);
    if (!strcmp(kw, "health-window"))
        return cfg_want_args(l, 1, err, errlen) < 0
                   ? -1
                   : get_duration(l, l->argv[1], 0.1, 86400, &c->health_window, err, errlen);
    if (!strcmp(kw, "stats-socket")) {
        if (l->argc < 2 || l->argc % 2) {
            snprintf(err, errlen,
                     "usage: stats-socket <path> [mode <octal>] [user <u>] [group <g>]");
            return -1;
        }
        if (!strcmp(l->argv[1], "none")) {
            c->stats_socket[0] = '\0';
            return 0;
        }
        if (parse_socket_path(l->argv[1], c->stats_socket, sizeof(c->stats_socket), err, errlen) <
            0)
            return -1;
        for (int i = 2; i + 1 < l->argc; i += 2) {
            const char *k = l->argv[i], *val = l->argv[i + 1];

            if (!strcmp(k, "mode")) {
                char *end;
                unsigned long m = strtoul(val, &end, 8);

                if (*end || end == val || m > 0777)
                    goto bad;
                c->stats_mode = (unsigned)m;
            } else if (!strcmp(k, "user") && strlen(val) < sizeof(c->stats_user)) {
                str_copy(c->stats_user, val, sizeof(c->stats_user));
            } else if (!strcmp(k, "group") && strlen(val) < sizeof(c->stats_group)) {
                str_copy(c->stats_group, val, sizeof(c->stats_group));
            } else {
                snprintf(err, errlen, "stats-socket: bad setting '%s'", k);
                return -1;
            }
        }
        return 0;
    }
    if (!strcmp(kw, "metrics")) {
        if (cfg_want_args(l, 1, err, errlen) < 0)
            return -1;
        if (!strcmp(l->argv[1], "none")) {
            c->has_metrics = false;
            return 0;
        }
        if (parse_endpoint(l->argv[1], &c->metrics, err, errlen) < 0 || c->metrics.is_unix)
            goto bad;
        c->has_metrics = true;
        return 0;
    }
    if (!strcmp(kw, "log-level")) {
        if (cfg_want_args(l, 1, err, errlen) < 0 || log_level_parse(l->argv[1], &c->log_level) < 0)
            goto bad;
        return 0;
    }
    if ((pr = privs_conf_line(&c->privs, l, err, errlen)) != 0)
        return pr < 0 ? -1 : 0;
    if (!strcmp(kw, "log")) {
        if (cfg_want_args(l, 1, err, errlen) < 0)
            return -1;
        if (!strcmp(l->argv[1], "stderr"))
            c->log_syslog = false;
        else if (!strcmp(l->argv[1], "syslog"))
            c->log_syslog = true;
        else
            goto bad;
        return 0;
    }
    snprintf(err, errlen, "unknown keyword '%s'", kw);
    return -1;
bad:
    if (!err[0])
        snprintf(err, errlen, "invalid value for '%s'", kw);
    return -1;
}

static int finish(struct parse *ps, char *err, size_t errlen)
{
    struct agent_conf *c = ps->c;
    static const char *const def_be[POOL_KINDS] = {"storefront_stable", "storefront_canary"};
    static const char *const def_px[POOL_KINDS] = {"stable", "canary"};

    if (c->nsvc == 0) {
        snprintf(err, errlen, "no 'service' to watch");
        return -1;
    }
    for (int k = 0; k < POOL_KINDS; k++) {
        if (!ps->def_backend[k][0])
            str_copy(ps->def_backend[k], def_be[k], sizeof(ps->def_backend[k]));
    }
    for (unsigned i = 0; i < c->nsvc; i++) {
        struct agent_service_conf *s = &c->svc[i];

        for (int k = 0; k < POOL_KINDS; k++) {
            if (!ps->svc_backend_set[i][k]) {
                if (i > 0) {
                    snprintf(err, errlen,
                             "service %s: backend-%s is required (only the first service "
                             "takes the 'backend' defaults)",
                             s->name, pool_kind_name((enum pool_kind)k));
                    return -1;
                }
                str_copy(s->backend[k], ps->def_backend[k], sizeof(s->backend[k]));
            }
            if (!ps->svc_prefix_set[i][k])
                str_copy(s->slot_prefix[k],
                         i == 0 && ps->def_prefix[k][0] ? ps->def_prefix[k] : def_px[k],
                         sizeof(s->slot_prefix[k]));
        }
        if (!strcmp(s->backend[POOL_STABLE], s->backend[POOL_CANARY])) {
            snprintf(err, errlen, "service %s: the stable and canary backends must differ",
                     s->name);
            return -1;
        }
        for (unsigned j = 0; j < i; j++)
            for (int k = 0; k < POOL_KINDS; k++)
                for (int m = 0; m < POOL_KINDS; m++)
                    if (!strcmp(c->svc[j].backend[k], s->backend[m])) {
                        snprintf(err, errlen, "backend %s is used by services %s and %s",
                                 s->backend[m], c->svc[j].name, s->name);
                        return -1;
                    }
    }
    if (c->spoa_socket[0] && !c->key_prefix[0]) {
        snprintf(err, errlen,
                 "'spoa-socket' is set: 'key-prefix <template>' is required "
                 "(e.g. key-prefix storefront:%%{build}:)");
        return -1;
    }
    if (privs_finish(&c->privs, err, errlen) < 0)
        return -1;
    if (c->drain_min > c->drain_grace) {
        snprintf(err, errlen, "drain-min is above drain-grace");
        return -1;
    }
    return 0;
}

static void parse_init(struct parse *ps, struct agent_conf *c, char *err)
{
    memset(ps, 0, sizeof(*ps));
    ps->c = c;
    err[0] = '\0';
}

int agent_conf_load(const char *path, struct agent_conf *c, char *err, size_t errlen)
{
    struct parse ps;
    int rc;

    parse_init(&ps, c, err);
    rc = cfg_parse_file(path, on_line, &ps, err, errlen);
    if (rc == 0)
        rc = finish(&ps, err, errlen);

    if (rc < 0 && err[0] && !strstr(err, path)) {
        char tmp[512];

        snprintf(tmp, sizeof(tmp), "%s: %s", path, err);
        str_copy(err, tmp, errlen);
    }
    return rc;
}

int agent_conf_load_string(const char *text, struct agent_conf *c, char *err, size_t errlen)
{
    struct parse ps;

    parse_init(&ps, c, err);
    if (cfg_parse_string("<string>", text, on_line, &ps, err, errlen) < 0)
        return -1;
    return finish(&ps, err, errlen);
}
