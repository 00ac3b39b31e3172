/* Tokenizer for the shared configuration format (see cfgfile.h). */
#include "cfgfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Configuration files and route tables are small: a bound on what is read
 * keeps an endless source (a device, a pipe) from holding the caller's loop. */
#define CFG_MAX_FILE (16 * 1024 * 1024)

struct out {
    char *buf;
    size_t len;
    size_t cap;
};

static int put(struct out *o, char ch)
{
    if (o->len + 1 >= o->cap)
        return -1;
    o->buf[o->len++] = ch;
    return 0;
}

/* Expands ${NAME} or ${NAME:-default} starting at *p (pointing at '$'). */
static int expand(const char **p, struct out *o, char *err, size_t errlen)
{
    const char *s = *p + 2, *e = s, *def = NULL;
    char name[128];
    size_t nl;
    const char *val;

    while (*e && *e != '}' && !(e[0] == ':' && e[1] == '-'))
        e++;
    nl = (size_t)(e - s);
    if (nl == 0 || nl >= sizeof(name)) {
        snprintf(err, errlen, "bad variable reference");
        return -1;
    }
    memcpy(name, s, nl);
    name[nl] = '\0';
    for (size_t i = 0; i < nl; i++) {
        char ch = name[i];

        if (!(ch == '_' || (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
              (i > 0 && ch >= '0' && ch <= '9'))) {
            snprintf(err, errlen, "bad variable name '%s'", name);
            return -1;
        }
    }
    if (e[0] == ':') {
        def = e + 2;
        e = def;
        while (*e && *e != '}')
            e++;
    }
    if (*e != '}') {
        snprintf(err, errlen, "unterminated ${%s", name);
        return -1;
    }
    val = getenv(name);
    if (!val || (!*val && def)) {
        if (!def) {
            snprintf(err, errlen, "environment variable %s is not set", name);
            return -1;
        }
        for (const char *d = def; d < e; d++)
            if (put(o, *d) < 0)
                goto toolong;
    } else {
        for (; *val; val++)
            if (put(o, *val) < 0)
                goto toolong;
    }
    *p = e + 1;
    return 0;
toolong:
    snprintf(err, errlen, "line too long after expansion");
    return -1;
}

/* Splits one line into words inside `o`; argv points into o->buf. */
static int split(const char *line, struct cfg_line *cl, struct out *o, char *err, size_t errlen)
{
    const char *p = line;

    cl->argc = 0;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
            p++;
        if (!*p || *p == '#')
            return 0;
        if (cl->argc >= CFG_MAX_ARGS) {
            snprintf(err, errlen, "too many words (max %d)", CFG_MAX_ARGS);
            return -1;
        }
        cl->argv[cl->argc++] = o->buf + o->len;
        while (*p && *p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
            if (*p == '\'') {
                p++;
                while (*p && *p != '\'')
                    if (put(o, *p++) < 0)
                        goto toolong;
                if (*p != '\'') {
                    snprintf(err, errlen, "unterminated single quote");
                    return -1;
                }
                p++;
            } else if (*p == '"') {
                p++;
                while (*p && *p != '"') {
                    if (*p == '\\' && p[1]) {
                        p++;
                        if (put(o, *p == 'n' ? '\n' : *p == 't' ? '\t' : *p) < 0)
                            goto toolong;
                        p++;
                    } else if (p[0] == '$' && p[1] == '{') {
                        if (expand(&p, o, err, errlen) < 0)
                            return -1;
                    } else if (put(o, *p++) < 0) {
                        goto toolong;
                    }
                }
                if (*p != '"') {
                    snprintf(err, errlen, "unterminated double quote");
                    return -1;
                }
                p++;
            } else if (p[0] == '$' && p[1] == '{') {
                if (expand(&p, o, err, errlen) < 0)
                    return -1;
            } else if (*p == '\\' && p[1]) {
                if (put(o, p[1]) < 0)
                    goto toolong;
                p += 2;
            } else if (put(o, *p++) < 0) {
                goto toolong;
            }
        }
        if (put(o, '\0') < 0)
            goto toolong;
    }
toolong:
    snprintf(err, errlen, "line too long (max %d)", CFG_MAX_LINE);
    return -1;
}

/* Reads the next line from a file or from a string; returns 0 at the end,
 * -1 on a NUL byte or past CFG_MAX_FILE bytes (*total counts them). */
static int next_line(FILE *f, const char **text, char *line, size_t size, size_t *total)
{
    const char *t, *nl;
    size_t ll;

    if (f) {
        int ch = 0;

        /* Not fgets(): a NUL would silently end the line (and /dev/zero
         * would read as endless empty lines). */
        for (ll = 0; ll < size - 1 && ch != '\n' && (ch = getc(f)) != EOF; ll++) {
            if (ch == '\0' || ++*total > CFG_MAX_FILE)
                return -1;
            line[ll] = (char)ch;
        }
        line[ll] = '\0';
        return ll > 0;
    }
    t = *text;
    if (!*t)
        return 0;
    nl = strchr(t, '\n');
    ll = nl ? (size_t)(nl - t) + 1 : strlen(t);
    *text = t + ll;
    if (ll > size - 1)
        ll = size - 1; /* reported as too long by the caller */
    memcpy(line, t, ll);
    line[ll] = '\0';
    return 1;
}

static int parse_lines(const char *name, FILE *f, const char *text, cfg_line_cb *cb, void *udata,
                       char *err, size_t errlen)
{
    char line[CFG_MAX_LINE + 2];
    char words[CFG_MAX_LINE * 2];
    char why[256];
    unsigned lineno = 0;
    size_t total = 0;
    int r;

    while ((r = next_line(f, &text, line, sizeof(line), &total)) > 0) {
        struct cfg_line cl = {.file = name};
        struct out o;
        size_t ll = strlen(line);

        o.buf = words;
        o.len = 0;
        o.cap = sizeof(words);
        lineno++;
        if (ll > CFG_MAX_LINE) {
            snprintf(err, errlen, "%s:%u: line too long (max %d)", name, lineno, CFG_MAX_LINE);
            return -1;
        }
        cl.lineno = lineno;
        why[0] = '\0';
        if (split(line, &cl, &o, why, sizeof(why)) < 0) {
            snprintf(err, errlen, "%s:%u: %s", name, lineno, why);
            return -1;
        }
        if (cl.argc == 0)
            continue;
        if (cb(&cl, udata, why, sizeof(why)) < 0) {
            snprintf(err, errlen, "%s:%u: %s", name, lineno, why[0] ? why : "invalid statement");
            return -1;
        }
    }
    if (r < 0) {
        snprintf(err, errlen, "%s:%u: NUL byte, or more than %d bytes: not a configuration", name,
                 lineno + 1, CFG_MAX_FILE);
        return -1;
    }
    return 0;
}

int cfg_want_args(const struct cfg_line *l, int n, char *err, size_t errlen)
{
    if (l->argc != n + 1) {
        snprintf(err, errlen, "'%s' takes %d argument%s", l->argv[0], n, n == 1 ? "" : "s");
        return -1;
    }
    return 0;
}

int cfg_parse_file(const char *path, cfg_line_cb *cb, void *udata, char *err, size_t errlen)
{
    /* O_NONBLOCK: opening a FIFO nobody writes to would block the caller's
     * loop for good; reads then block again (a pipe still works). */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    FILE *f = NULL;
    int r;

    if (fd >= 0 && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) == 0)
        f = fdopen(fd, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    r = parse_lines(path, f, "", cb, udata, err, errlen);
    if (r == 0 && ferror(f)) {
        snprintf(err, errlen, "%s: read error", path);
        r = -1;
    }
    fclose(f);
    return r;
}

int cfg_parse_string(const char *name, const char *text, cfg_line_cb *cb, void *udata, char *err,
                     size_t errlen)
{
    return parse_lines(name, NULL, text, cb, udata, err, errlen);
}
