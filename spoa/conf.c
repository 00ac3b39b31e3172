#include "conf.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfgfile.h"
#include "spoe.h"

static void set_exclude(struct spoa_conf *c, unsigned i, const char *prefix)
{
    str_copy(c->exclude_buf[i], prefix, sizeof(c->exclude_buf[i]));
    c->exclude[i] = c->exclude_buf[i];
}

struct spoa_conf *spoa_conf_new(void)
{
    struct spoa_conf *c = malloc(sizeof(*c));

    if (c)
        spoa_conf_defaults(c);
    return c;
}

void spoa_conf_hold(struct spoa_conf *c)
{
    atomic_fetch_add(&c->refs, 1);
}

void spoa_conf_release(struct spoa_conf *c)
{
    if (c && atomic_fetch_sub(&c->refs, 1) == 1)
        free(c);
}

void spoa_conf_defaults(struct spoa_conf *c)
{
    memset(c, 0, sizeof(*c));
    atomic_init(&c->refs, 1);
    c->threads = 2;
    c->backlog = 1024;
    c->unix_mode = 0660;
    c->max_frame_size = 16380; /* HAProxy's default: tune.bufsize - 4 */
    c->max_reassembly = 256 * 1024;
    c->max_inflight = 1024;
    c->hello_timeout = 5.0;
    c->idle_timeout = 0;
    c->drain_timeout = 5.0;
    c->log_level = LOG_LVL_INFO;
    str_copy(c->message, "cedra-req", sizeof(c->message));
    str_copy(c->locale_cookie, "NEXT_LOCALE", sizeof(c->locale_cookie));
    c->redirect_code = 307; /* what Next.js uses for its own locale redirects */
    set_exclude(c, 0, "/_next/");
    set_exclude(c, 1, "/api/");
    c->nexclude = 2;
}

static int want_args(const struct cfg_line *l, int n, char *err, size_t errlen)
{
    if (l->argc != n + 1) {
        snprintf(err, errlen, "'%s' takes %d argument%s", l->argv[0], n, n == 1 ? "" : "s");
        return -1;
    }
    return 0;
}

static int on_line(const struct cfg_line *l, void *ud, char *err, size_t errlen)
{
    struct spoa_conf *c = ud;
    const char *kw = l->argv[0];
    uint64_t v;

    if (!strcmp(kw, "listen")) {
        if (want_args(l, 1, err, errlen) < 0)
            return -1;
        if (c->nlisten >= SPOA_MAX_LISTEN) {
            snprintf(err, errlen, "at most %d listen lines", SPOA_MAX_LISTEN);
            return -1;
        }
        return parse_endpoint(l->argv[1], &c->listen[c->nlisten++], err, errlen);
    }
    if (!strcmp(kw, "threads")) {
        if (want_args(l, 1, err, errlen) < 0 || parse_uint(l->argv[1], 1, 64, &v) < 0)
            goto bad;
        c->threads = (unsigned)v;
        return 0;
    }
    if (!strcmp(kw, "backlog")) {
        if (want_args(l, 1, err, errlen) < 0 || parse_uint(l->argv[1], 1, 65535, &v) < 0)
            goto bad;
        c->backlog = (unsigned)v;
        return 0;
    }
    if (!strcmp(kw, "unix-mode")) {
        char *end;
        unsigned long m;

        if (want_args(l, 1, err, errlen) < 0)
            return -1;
        m = strtoul(l->argv[1], &end, 8);
        if (*end || m > 0777)
            goto bad;
        c->unix_mode = (unsigned)m;
        return 0;
    }
    if (!strcmp(kw, "max-frame-size")) {
        if (want_args(l, 1, err, errlen) < 0 ||
            parse_uint(l->argv[1], SPOE_FRAME_MIN, SPOE_FRAME_MAX, &v) < 0)
            goto bad;
        c->max_frame_size = (uint32_t)v;
        return 0;
    }
    if (!strcmp(kw, "max-reassembly")) {
        if (want_args(l, 1, err, errlen) < 0 || parse_size(l->argv[1], &v) < 0 ||
            v < SPOE_FRAME_MIN || v > 64 * 1024 * 1024)
            goto bad;
        c->max_reassembly = v;
        return 0;
    }
    if (!strcmp(kw, "max-inflight")) {
        if (want_args(l, 1, err, errlen) < 0 || parse_uint(l->argv[1], 1, 100000, &v) < 0)
            goto bad;
        c->max_inflight = (unsigned)v;
        return 0;
    }
    if (!strcmp(kw, "timeout")) {
        double d;

        if (want_args(l, 2, err, errlen) < 0 || parse_duration(l->argv[2], &d) < 0)
            goto bad;
        if (!strcmp(l->argv[1], "hello"))
            c->hello_timeout = d;
        else if (!strcmp(l->argv[1], "idle"))
            c->idle_timeout = d;
        else if (!strcmp(l->argv[1], "drain"))
            c->drain_timeout = d;
        else
            goto bad;
        return 0;
    }
    if (!strcmp(kw, "log-level")) {
        if (want_args(l, 1, err, errlen) < 0 || log_level_parse(l->argv[1], &c->log_level) < 0)
            goto bad;
        return 0;
    }
    if (!strcmp(kw, "log")) {
        if (want_args(l, 1, err, errlen) < 0)
            return -1;
        if (!strcmp(l->argv[1], "stderr"))
            c->log_syslog = false;
        else if (!strcmp(l->argv[1], "syslog"))
            c->log_syslog = true;
        else
            goto bad;
        return 0;
    }
    if (!strcmp(kw, "message")) {
        if (want_args(l, 1, err, errlen) < 0 || strlen(l->argv[1]) >= sizeof(c->message))
            goto bad;
        str_copy(c->message, l->argv[1], sizeof(c->message));
        return 0;
    }
    if (!strcmp(kw, "locales")) {
        if (l->argc < 2)
            goto bad;
        memset(&c->locales, 0, sizeof(c->locales));
        for (int i = 1; i < l->argc; i++) {
            if (locale_add(&c->locales, l->argv[i]) < 0) {
                snprintf(err, errlen, "invalid or duplicate locale '%s'", l->argv[i]);
                return -1;
            }
        }
        return 0;
    }
    if (!strcmp(kw, "locale-cookie")) {
        if (want_args(l, 1, err, errlen) < 0 || !l->argv[1][0] ||
            strlen(l->argv[1]) >= sizeof(c->locale_cookie))
            goto bad;
        str_copy(c->locale_cookie, l->argv[1], sizeof(c->locale_cookie));
        return 0;
    }
    if (!strcmp(kw, "locale-redirect")) {
        if (want_args(l, 1, err, errlen) < 0 || parse_uint(l->argv[1], 300, 399, &v) < 0 ||
            (v != 302 && v != 307))
            goto bad;
        c->redirect_code = (unsigned)v;
        return 0;
    }
    if (!strcmp(kw, "locale-exclude")) {
        if (l->argc - 1 > SPOA_MAX_EXCLUDE) {
            snprintf(err, errlen, "at most %d prefixes", SPOA_MAX_EXCLUDE);
            return -1;
        }
        c->nexclude = 0;
        for (int i = 1; i < l->argc; i++) {
            if (l->argv[i][0] != '/' || strlen(l->argv[i]) >= sizeof(c->exclude_buf[0])) {
                snprintf(err, errlen, "'%s' is not a path prefix", l->argv[i]);
                return -1;
            }
            set_exclude(c, c->nexclude++, l->argv[i]);
        }
        return 0;
    }
    if (!strcmp(kw, "default-locale")) {
        if (want_args(l, 1, err, errlen) < 0)
            return -1;
        if (locale_set_default(&c->locales, l->argv[1]) < 0) {
            snprintf(err, errlen, "default-locale '%s' is not in 'locales'", l->argv[1]);
            return -1;
        }
        return 0;
    }
    snprintf(err, errlen, "unknown keyword '%s'", kw);
    return -1;
bad:
    if (!err[0])
        snprintf(err, errlen, "invalid value for '%s'", kw);
    return -1;
}

static int finish(struct spoa_conf *c, char *err, size_t errlen)
{
    if (c->locales.n == 0) {
        locale_add(&c->locales, "fr");
        locale_add(&c->locales, "nl");
        locale_add(&c->locales, "en");
        c->locales.def = 0;
    }
    if (c->max_reassembly < c->max_frame_size)
        c->max_reassembly = c->max_frame_size;
    return 0;
}

int spoa_conf_load(const char *path, struct spoa_conf *c, char *err, size_t errlen)
{
    err[0] = '\0';
    if (cfg_parse_file(path, on_line, c, err, errlen) < 0)
        return -1;
    return finish(c, err, errlen);
}

int spoa_conf_load_string(const char *text, struct spoa_conf *c, char *err, size_t errlen)
{
    err[0] = '\0';
    if (cfg_parse_string("<string>", text, on_line, c, err, errlen) < 0)
        return -1;
    return finish(c, err, errlen);
}
