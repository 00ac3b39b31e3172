#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>

/* Parses a leading unsigned decimal number; rejects signs, blanks, overflow. */
static int leading_u64(const char *s, uint64_t *v, const char **end)
{
    char *e;
    unsigned long long x;

    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    x = strtoull(s, &e, 10);
    if (errno)
        return -1;
    *v = x;
    *end = e;
    return 0;
}

int parse_duration(const char *s, double *out)
{
    uint64_t v;
    const char *u;
    double mul;

    if (leading_u64(s, &v, &u) < 0)
        return -1;
    if (!*u || strcmp(u, "ms") == 0)
        mul = 0.001;
    else if (strcmp(u, "us") == 0)
        mul = 0.000001;
    else if (strcmp(u, "s") == 0)
        mul = 1;
    else if (strcmp(u, "m") == 0)
        mul = 60;
    else if (strcmp(u, "h") == 0)
        mul = 3600;
    else if (strcmp(u, "d") == 0)
        mul = 86400;
    else
        return -1;
    if (v > (uint64_t)1 << 40)
        return -1;
    *out = (double)v * mul;
    return 0;
}

int parse_size(const char *s, uint64_t *out)
{
    uint64_t v, mul = 1;
    const char *u;

    if (leading_u64(s, &v, &u) < 0)
        return -1;
    if (*u == 'k' || *u == 'K')
        mul = 1024;
    else if (*u == 'm' || *u == 'M')
        mul = 1024 * 1024;
    else if (*u == 'g' || *u == 'G')
        mul = 1024 * 1024 * 1024;
    else if (*u)
        return -1;
    if (*u && u[1])
        return -1;
    if (v > UINT64_MAX / mul)
        return -1;
    *out = v * mul;
    return 0;
}

int parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    uint64_t v;
    const char *e;

    if (leading_u64(s, &v, &e) < 0 || *e || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int parse_bool(const char *s, bool *out)
{
    if (!strcmp(s, "on") || !strcmp(s, "yes") || !strcmp(s, "true") || !strcmp(s, "1"))
        *out = true;
    else if (!strcmp(s, "off") || !strcmp(s, "no") || !strcmp(s, "false") || !strcmp(s, "0"))
        *out = false;
    else
        return -1;
    return 0;
}

int parse_endpoint(const char *s, struct endpoint *ep, char *err, size_t errlen)
{
    char host[64];
    const char *colon, *h, *hend;
    uint64_t port;

    memset(ep, 0, sizeof(*ep));
    str_copy(ep->text, s, sizeof(ep->text));
    if (strncmp(s, "unix:", 5) == 0 || s[0] == '/') {
        struct sockaddr_un *sun = (struct sockaddr_un *)&ep->addr;
        const char *path = s[0] == '/' ? s : s + 5;

        if (!*path || strlen(path) >= sizeof(sun->sun_path)) {
            snprintf(err, errlen, "bad UNIX socket path '%s'", path);
            return -1;
        }
        sun->sun_family = AF_UNIX;
        memcpy(sun->sun_path, path, strlen(path) + 1);
        ep->len = (socklen_t)sizeof(*sun);
        ep->is_unix = true;
        return 0;
    }
    if (s[0] == '[') {
        h = s + 1;
        hend = strchr(h, ']');
        if (!hend || hend[1] != ':') {
            snprintf(err, errlen, "bad address '%s' (want [v6]:port)", s);
            return -1;
        }
        colon = hend + 1;
    } else {
        h = s;
        colon = strrchr(s, ':');
        if (!colon) {
            snprintf(err, errlen, "bad address '%s' (want host:port)", s);
            return -1;
        }
        hend = colon;
    }
    if ((size_t)(hend - h) >= sizeof(host) || parse_uint(colon + 1, 1, 65535, &port) < 0) {
        snprintf(err, errlen, "bad address '%s'", s);
        return -1;
    }
    memcpy(host, h, (size_t)(hend - h));
    host[hend - h] = '\0';
    if (s[0] != '[') {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ep->addr;

        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        if (strcmp(host, "*") == 0 || host[0] == '\0')
            sin->sin_addr.s_addr = htonl(INADDR_ANY);
        else if (inet_pton(AF_INET, host, &sin->sin_addr) != 1) {
            snprintf(err, errlen, "bad IPv4 address '%s'", host);
            return -1;
        }
        ep->len = (socklen_t)sizeof(*sin);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ep->addr;

        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1) {
            snprintf(err, errlen, "bad IPv6 address '%s'", host);
            return -1;
        }
        ep->len = (socklen_t)sizeof(*sin6);
    }
    return 0;
}

size_t str_copy(char *dst, const char *src, size_t size)
{
    size_t l = strlen(src);

    if (size) {
        size_t n = l < size - 1 ? l : size - 1;

        memcpy(dst, src, n);
        dst[n] = '\0';
    }
    return l;
}

double now_mono(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void str_errf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

char *strdup_opt(const char *s, bool *oom)
{
    char *d;

    if (!s)
        return NULL;
    d = strdup(s);
    if (!d)
        *oom = true;
    return d;
}

bool json_containers_ok(const char *s, size_t len, size_t max_depth, size_t max_total)
{
    /* Signed: a stray closing bracket is jansson's to reject, not a wrap. */
    long long depth = 0;
    size_t total = 0;
    bool in_str = false;

    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            if (++total > max_total || (++depth > 0 && (unsigned long long)depth > max_depth))
                return false;
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return true;
}

double rand01(uint64_t *state)
{
    uint64_t x = *state;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return (double)((x * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0;
}

double backoff_jitter(double min, double max, unsigned doublings, uint64_t *rng)
{
    double d = min;

    for (unsigned i = 0; i < doublings && d < max; i++)
        d *= 2;
    if (d > max)
        d = max;
    return d / 2 + d / 2 * rand01(rng);
}
