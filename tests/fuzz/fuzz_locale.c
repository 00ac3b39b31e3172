/* libFuzzer target for the request-header parsers of cedra-spoa:
 * Accept-Language, Accept-Encoding, Cookie, locale paths and redirect targets. The input is
 * split at the first NUL into a header-ish part and a path/query part. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "coding.h"
#include "cookie.h"
#include "locale.h"

static int is_uri_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("-._~!$&'()*+,;=:@/%?", c) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct locale_set ls;
    static const char *const ex[] = {"/_next/", "/api/"};
    const char *s = (const char *)data, *split = memchr(s, '\0', size);
    size_t hl = split ? (size_t)(split - s) : size;
    const char *path = split ? split + 1 : s + size;
    size_t pl = split ? size - hl - 1 : 0;
    const char *q = memchr(path, '?', pl);
    size_t ql = q ? pl - (size_t)(q - path) - 1 : 0;
    const char *v;
    size_t vl;
    char out[256];
    enum coding cd = CODING_IDENTITY;
    int loc, n;

    if (ls.n == 0) {
        locale_add(&ls, "fr");
        locale_add(&ls, "nl");
        locale_add(&ls, "en");
        locale_add(&ls, "nl-BE");
    }
    if (q)
        pl = (size_t)(q - path);

    n = coding_choose(s, hl, &cd);
    if ((n != 0 && n != -1) || (cd != CODING_IDENTITY && cd != CODING_GZIP && cd != CODING_DEFLATE))
        abort();
    loc = locale_from_accept_language(&ls, s, hl);
    if (loc < -1 || loc >= (int)ls.n)
        abort();
    if (cookie_get(s, hl, "NEXT_LOCALE", &v, &vl) && (v < s || v + vl > s + hl))
        abort();
    loc = locale_from_path(&ls, path, pl);
    if (loc < -1 || loc >= (int)ls.n)
        abort();
    (void)locale_path_redirectable(ex, 2, path, pl);
    n = locale_redirect_target(out, sizeof(out), "fr", 2, path, pl, q ? q + 1 : NULL, ql);
    if (n >= 0) {
        /* What we would put in a Location header: same-site, no control bytes. */
        if ((size_t)n >= sizeof(out) || out[n] != '\0' || strncmp(out, "/fr", 3) != 0 ||
            (n > 3 && out[3] != '/' && out[3] != '?'))
            abort();
        for (int i = 0; i < n; i++)
            if (!is_uri_char((unsigned char)out[i]))
                abort();
    }
    return 0;
}
