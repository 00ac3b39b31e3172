/* A small configuration file format shared by both daemons:
 *
 *   # comment
 *   keyword arg1 "arg two" 'literal $x' ${ENV_VAR} ${ENV_VAR:-default}
 *
 * One statement per line; words split on blanks; double quotes allow blanks
 * and backslash escapes; single quotes are literal; ${VAR} expands from the
 * environment (outside single quotes), so that secrets never sit in files. */
#ifndef CEDRA_CFGFILE_H
#define CEDRA_CFGFILE_H

#include <stddef.h>

#define CFG_MAX_ARGS 32
#define CFG_MAX_LINE 4096

struct cfg_line {
    const char *file;
    unsigned lineno;
    int argc;
    char *argv[CFG_MAX_ARGS];
};

/* Called once per statement. Returns 0, or -1 after writing a reason to err. */
typedef int cfg_line_cb(const struct cfg_line *line, void *udata, char *err, size_t errlen);

/* 0 when the statement has exactly n arguments, else -1 with a reason. */
int cfg_want_args(const struct cfg_line *line, int n, char *err, size_t errlen);

/* Return 0, or -1 with "file:line: reason" in err. */
int cfg_parse_file(const char *path, cfg_line_cb *cb, void *udata, char *err, size_t errlen);
int cfg_parse_string(const char *name, const char *text, cfg_line_cb *cb, void *udata, char *err,
                     size_t errlen);

#endif
