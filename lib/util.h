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

#endif
