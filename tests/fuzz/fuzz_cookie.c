/* libFuzzer target for spoa/cookie.c, the Cookie header reader behind the
 * pool pin (cedra_pool), NEXT_LOCALE, Next.js's preview cookies and the
 * session cookies that bypass the cache. Every byte of the header is the
 * client's.
 *
 * data[0] picks the cookie name: one of the names cedra-spoa asks for, or
 * (selector 0) a fuzzed name read up to the first NUL. The rest is the header
 * value. cookie_get() is compared with a second, deliberately naive reading of
 * RFC 6265 §5.4 (split on ';', trim OWS, first exact name match, strip one
 * pair of surrounding double quotes): same answer, same pointer, same length.
 * Also: the value lies inside the header, holds no ';' and does not start or
 * end with OWS unless it was quoted. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cookie.h"

static void check(int cond)
{
    if (!cond)
        abort();
}

static bool ows(char c)
{
    return c == ' ' || c == '\t';
}

static bool naive(const char *h, size_t len, const char *name, const char **v, size_t *vl)
{
    size_t nl = strlen(name), start = 0;

    while (start <= len) {
        size_t end = start, a, b, eq;

        while (end < len && h[end] != ';')
            end++;
        for (eq = start; eq < end && h[eq] != '='; eq++)
            ;
        if (eq < end) {
            a = start;
            b = eq;
            while (a < b && ows(h[a]))
                a++;
            while (b > a && ows(h[b - 1]))
                b--;
            if (b - a == nl && memcmp(h + a, name, nl) == 0) {
                a = eq + 1;
                b = end;
                while (a < b && ows(h[a]))
                    a++;
                while (b > a && ows(h[b - 1]))
                    b--;
                if (b - a >= 2 && h[a] == '"' && h[b - 1] == '"') {
                    a++;
                    b--;
                }
                *v = h + a;
                *vl = b - a;
                return true;
            }
        }
        start = end + 1;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const names[] = {"cedra_pool",          "NEXT_LOCALE", "__prerender_bypass",
                                        "__next_preview_data", "session",     "a"};
    const char *h = (const char *)data, *v = NULL, *rv = NULL;
    char name[64];
    size_t len = size, vl = 0, rvl = 0;
    bool got, ref;

    if (size == 0)
        return 0;
    h++;
    len--;
    if (data[0] % 7 == 0) {
        const char *nul = memchr(h, '\0', len);
        size_t l = nul ? (size_t)(nul - h) : 0;

        if (!nul || l >= sizeof(name))
            return 0;
        memcpy(name, h, l + 1);
        h += l + 1;
        len -= l + 1;
    } else {
        strcpy(name, names[data[0] % 7 - 1]);
    }

    got = cookie_get(h, len, name, &v, &vl);
    ref = naive(h, len, name, &rv, &rvl);
    check(got == ref);
    if (!got)
        return 0;
    check(v == rv && vl == rvl);
    check(v >= h && v + vl <= h + len);
    check(memchr(v, ';', vl) == NULL);
    if (vl && (v == h || v[-1] != '"'))
        check(!ows(v[0]) && !ows(v[vl - 1]));
    return 0;
}
