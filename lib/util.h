/* Small parsers and helpers shared by both daemons. */
#ifndef CEDRA_UTIL_H
#define CEDRA_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* "250ms", "5s", "2m", "1h", "1500" (ms, as in HAProxy) -> seconds. */
int parse_duration(const char *s, double *out);
/* "16384", "16k", "1m", "2g" (binary multiples) -> bytes. */
int parse_size(const char *s, uint64_t *out);
/* Decimal integer within [min, max]. */
int parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out);
int parse_bool(const char *s, bool *out);

struct endpoint {
    struct sockaddr_storage addr;
    socklen_t len;
    bool is_unix;
    char text[128]; /* as configured, for logs */
};

/* "127.0.0.1:12345", "[::1]:12345", "*:12345", "unix:/path/to.sock". */
int parse_endpoint(const char *s, struct endpoint *ep, char *err, size_t errlen);

/* Copies at most size-1 bytes and always terminates; returns strlen(src). */
size_t str_copy(char *dst, const char *src, size_t size);

/* Monotonic clock in seconds. */
double now_mono(void);

/* vsnprintf into err for the functions that report a reason through an
 * (err, errlen) pair; a NULL err or a zero errlen means the caller does not
 * want one. */
void str_errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* strdup() of an optional string: NULL stays NULL, a failed copy sets *oom
 * (left alone otherwise), so that several copies share one check. */
char *strdup_opt(const char *s, bool *oom);

/* Whether JSON text may go to a tree-building parser: at most max_depth
 * arrays/objects open at once and at most max_total in all (SIZE_MAX: no
 * limit), counted outside strings without parsing. jansson recurses per
 * level and allocates per container, and still validates everything else. */
bool json_containers_ok(const char *s, size_t len, size_t max_depth, size_t max_total);

/* xorshift64*: a draw in [0, 1) that advances *state (never 0). For jitter,
 * not for anything an attacker may want to predict. */
double rand01(uint64_t *state);

/* A retry delay: min doubled `doublings` times, at most max, then drawn in
 * [d/2, d] (equal jitter: never a busy loop, and the clients that lost a
 * server together do not all come back in the same millisecond). */
double backoff_jitter(double min, double max, unsigned doublings, uint64_t *rng);

#endif
