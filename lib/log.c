/* key=value logging. The level is process-wide and atomic so that SIGHUP or
 * an operator command can change it while workers log. */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

static _Atomic int cur_level = LOG_LVL_INFO;
static const char *log_ident = "cedra";
static bool log_syslog;

static const char *const names[] = {"error", "warning", "notice", "info", "debug"};
static const int syslog_prio[] = {LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG};

void log_init(const char *ident, bool use_syslog)
{
    log_ident = ident;
    log_syslog = use_syslog;
    if (use_syslog)
        openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void log_set_level(enum log_level lvl)
{
    atomic_store(&cur_level, (int)lvl);
}

enum log_level log_get_level(void)
{
    return (enum log_level)atomic_load_explicit(&cur_level, memory_order_relaxed);
}

int log_level_parse(const char *s, enum log_level *out)
{
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    if (strcmp(s, "err") == 0) {
        *out = LOG_LVL_ERROR;
        return 0;
    }
    if (strcmp(s, "warn") == 0) {
        *out = LOG_LVL_WARNING;
        return 0;
    }
    return -1;
}

const char *log_level_name(enum log_level lvl)
{
    return (unsigned)lvl < sizeof(names) / sizeof(names[0]) ? names[lvl] : "?";
}

void log_event(enum log_level lvl, const char *event, const char *fmt, ...)
{
    char line[2048];
    int n = 0;
    va_list ap;

    if (lvl > log_get_level())
        return;
    if (!log_syslog) {
        struct timespec ts;
        struct tm tm;

        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        n = snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000);
    }
    n += snprintf(line + n, sizeof(line) - (size_t)n, "level=%s prog=%s event=%s", names[lvl],
                  log_ident, event);
    if (fmt && *fmt && (size_t)n < sizeof(line) - 1) {
        line[n++] = ' ';
        va_start(ap, fmt);
        n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
    }
    if ((size_t)n >= sizeof(line))
        n = (int)sizeof(line) - 1;
    if (log_syslog) {
        syslog(syslog_prio[lvl], "%s", line);
        return;
    }
    line[n++] = '\n';
    /* One write per line so that lines from several threads never interleave. */
    fwrite(line, 1, (size_t)n, stderr);
}

const char *log_quote(char *buf, size_t size, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    bool quote = len == 0;
    size_t o = 0, i;

    for (i = 0; i < len && !quote; i++)
        if (s[i] == ' ' || s[i] == '"' || s[i] == '=' || (unsigned char)s[i] < 0x21 ||
            (unsigned char)s[i] > 0x7e)
            quote = true;
    if (size < 8) {
        if (size)
            buf[0] = '\0';
        return buf;
    }
    if (quote)
        buf[o++] = '"';
    for (i = 0; i < len && o + 6 < size; i++) {
        unsigned char ch = (unsigned char)s[i];

        if (ch == '"' || ch == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)ch;
        } else if (ch < 0x20 || ch > 0x7e) {
            buf[o++] = '\\';
            buf[o++] = 'x';
            buf[o++] = hex[ch >> 4];
            buf[o++] = hex[ch & 15];
        } else {
            buf[o++] = (char)ch;
        }
    }
    if (i < len && o + 4 < size) {
        buf[o++] = '.';
        buf[o++] = '.';
    }
    if (quote)
        buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}
