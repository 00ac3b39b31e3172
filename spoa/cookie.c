#include "cookie.h"

#include <string.h>

static bool ows(char c)
{
    return c == ' ' || c == '\t';
}

bool cookie_get(const char *hdr, size_t len, const char *name, const char **val, size_t *vlen)
{
    const char *p = hdr, *end = hdr + len;
    size_t nl = strlen(name);

    while (p < end) {
        const char *pair_end = memchr(p, ';', (size_t)(end - p));
        const char *ne, *eq, *v, *ve;

        if (!pair_end)
            pair_end = end;
        while (p < pair_end && ows(*p))
            p++;
        eq = memchr(p, '=', (size_t)(pair_end - p));
        if (eq) {
            ne = eq;
            while (ne > p && ows(ne[-1]))
                ne--;
            if ((size_t)(ne - p) == nl && memcmp(p, name, nl) == 0) {
                v = eq + 1;
                ve = pair_end;
                while (v < ve && ows(*v))
                    v++;
                while (ve > v && ows(ve[-1]))
                    ve--;
                if (ve - v >= 2 && *v == '"' && ve[-1] == '"') {
                    v++;
                    ve--;
                }
                *val = v;
                *vlen = (size_t)(ve - v);
                return true;
            }
        }
        p = pair_end + 1;
    }
    return false;
}
