/* libFuzzer target for spoa/routes.c: route tables (cedra-routes writes
 * them from a build's manifests; "set pool ... routes <file>" loads one at run
 * time) and the request paths mapped through them to Valkey keys (the path
 * comes straight from the client).
 *
 * Input: the table text up to the first NUL, then request paths separated by
 * '\n'. Every path is tried against the fuzzed table (when it parses) and the
 * pathname scheme. A key is only ever produced for a canonical path
 * (Next.js's own form: no empty or dot segments, [A-Za-z0-9-._~] only), has
 * exactly the documented shape, ends with the path itself, is NUL-terminated
 * at the returned length, and is refused, not truncated, when it does not
 * fit. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "routes.h"

static void check(int cond)
{
    if (!cond)
        abort();
}

static int seg_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.' || c == '~';
}

static void check_canonical(const char *p, size_t len)
{
    check(len >= 1 && p[0] == '/');
    if (len == 1)
        return;
    check(p[len - 1] != '/');
    for (size_t i = 1, s = 1; i <= len; i++) {
        if (i == len || p[i] == '/') {
            size_t l = i - s;

            check(l > 0);
            check(!(l == 1 && p[s] == '.') && !(l == 2 && p[s] == '.' && p[s + 1] == '.'));
            s = i + 1;
        } else {
            check(seg_char(p[i]));
        }
    }
}

static void try_key(const struct routes *r, const char *p, size_t len)
{
    char out[512], small[512];
    int n = routes_key(r, p, len, out, sizeof(out));

    check(n >= -1 && n < (int)sizeof(out));
    if (n < 0)
        return;
    check(out[n] == '\0' && strlen(out) == (size_t)n);
    check_canonical(p, len);
    if (routes_scheme(r) == ROUTES_PATHNAME) {
        if (len == 1)
            check(strcmp(out, "/index") == 0);
        else
            check((size_t)n == len && memcmp(out, p, len) == 0);
    } else {
        const char *q = out + 13;
        size_t kl;

        /* "/route-cache/<KIND>/<64 hex>/$<path>" */
        check(strncmp(out, "/route-cache/", 13) == 0);
        kl = strncmp(q, "APP_PAGE/", 9) == 0 ? 9 : strncmp(q, "PAGES/", 6) == 0 ? 6 : 0;
        check(kl != 0);
        q += kl;
        check(strspn(q, "0123456789abcdef") == 64 && q[64] == '/' && q[65] == '$');
        check(strlen(q + 66) == len && memcmp(q + 66, p, len) == 0);
    }
    /* Too small a buffer refuses the key instead of cutting it. */
    check(routes_key(r, p, len, small, (size_t)n) == -1);
    check(routes_key(r, p, len, small, (size_t)n + 1) == n && strcmp(small, out) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct routes *pathname;
    const char *nul = memchr(data, '\0', size);
    size_t tl = nul ? (size_t)(nul - (const char *)data) : size;
    const char *p = nul ? nul + 1 : (const char *)data + size, *end = (const char *)data + size;
    char *text = malloc(tl + 1), err[256] = "";
    struct routes *r;

    if (!pathname)
        pathname = routes_pathname();
    check(text && pathname);
    memcpy(text, data, tl);
    text[tl] = '\0';
    r = routes_parse("fuzz", text, err, sizeof(err));
    free(text);
    if (r) {
        check(routes_count(r) <= 4096);
        check(routes_scheme(r) == ROUTES_PATHNAME || routes_count(r) > 0);
        check(strlen(routes_build_id(r)) < 128);
        check(routes_hold(r) == r);
        routes_free(r);
    } else {
        check(err[0] != '\0');
    }
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);

        if (r)
            try_key(r, p, len);
        try_key(pathname, p, len);
        p += len + 1;
    }
    routes_free(r);
    return 0;
}
