/* One line per event, key=value, to stderr or syslog. */
#ifndef CEDRA_LOG_H
#define CEDRA_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_LVL_ERROR, LOG_LVL_WARNING, LOG_LVL_NOTICE, LOG_LVL_INFO, LOG_LVL_DEBUG };

/* ident names the daemon in every line; use_syslog sends lines to syslog(3). */
void log_init(const char *ident, bool use_syslog);
void log_set_level(enum log_level lvl);
enum log_level log_get_level(void);
int log_level_parse(const char *s, enum log_level *out);
const char *log_level_name(enum log_level lvl);

/* fmt continues the line with more key=value pairs. Values that come from the
 * network must go through log_quote(). */
void log_event(enum log_level lvl, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes a printable, quoted-if-needed copy of s[0..len) into buf; returns buf. */
const char *log_quote(char *buf, size_t size, const char *s, size_t len);

#define log_error(ev, ...) log_event(LOG_LVL_ERROR, ev, __VA_ARGS__)
#define log_warning(ev, ...) log_event(LOG_LVL_WARNING, ev, __VA_ARGS__)
#define log_notice(ev, ...) log_event(LOG_LVL_NOTICE, ev, __VA_ARGS__)
#define log_info(ev, ...) log_event(LOG_LVL_INFO, ev, __VA_ARGS__)
#define log_debug(ev, ...)                                                                         \
    do {                                                                                           \
        if (log_get_level() >= LOG_LVL_DEBUG)                                                      \
            log_event(LOG_LVL_DEBUG, ev, __VA_ARGS__);                                             \
    } while (0)

#endif
