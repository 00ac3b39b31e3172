/* libFuzzer target for the path side of spoa/locale.c: which locale a path
 * names, whether a path may be redirected, and the redirect target built from
 * the client's path and query (it becomes a Location header).
 *
 * data[0] picks the locale redirected to and the size of the output buffer;
 * the rest is the path up to the first NUL, then the query (HAProxy hands
 * them over as two arguments). A target, when one is built, must be exactly
 * "/<locale>" + path (without a lone "/") + ["?" query], start with
 * "/<locale>" followed by '/', '?' or nothing (same site, and the target names
 * the locale, so it is never redirected again), hold only RFC 3986 path/query
 * characters with well-formed %-escapes (no CR, LF, NUL, backslash, space),
 * never start with "//", and fit the buffer. It is refused exactly when a byte
 * of the path or query is not allowed or it does not fit. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "locale.h"

static void check(int cond)
{
    if (!cond)
        abort();
}

static bool hexd(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* RFC 3986: pchar for the path ('/' separates segments), plus '/' and '?' in a query. */
static bool uri_ok(const char *s, size_t len, bool query)
{
    static const char unreserved_sub[] = "-._~!$&'()*+,;=:@/";

    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
            continue;
        if (c != '\0' && memchr(unreserved_sub, c, sizeof(unreserved_sub) - 1))
            continue;
        if (query && c == '?')
            continue;
        if (c == '%' && i + 2 < len && hexd(s[i + 1]) && hexd(s[i + 2])) {
            i += 2;
            continue;
        }
        return false;
    }
    return true;
}

static void check_from_path(const struct locale_set *ls, const char *p, size_t len)
{
    int loc = locale_from_path(ls, p, len);

    check(loc >= -1 && loc < (int)ls->n);
    if (loc >= 0) {
        size_t l = ls->len[loc];

        check(len > l && p[0] == '/' && memcmp(p + 1, ls->name[loc], l) == 0);
        check(len == l + 1 || p[l + 1] == '/');
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct locale_set ls;
    static const char *const ex[] = {"/_next/", "/api/", "/favicon.ico"};
    static const size_t sizes[] = {1, 4, 8, 16, 64, 256, 4096, 8192};
    static char out[8192];
    const char *p, *q, *nul;
    size_t pl, ql, osz, need;
    unsigned loc;
    bool ok;
    int n;

    if (ls.n == 0) {
        static const char *const names[] = {"fr", "nl", "en", "nl-BE", "de-CH-1996"};

        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
            check(locale_add(&ls, names[i]) == 0);
        check(locale_set_default(&ls, "en") == 0);
    }
    if (size == 0)
        return 0;
    loc = (data[0] & 0x0f) % ls.n;
    osz = sizes[data[0] >> 5];
    p = (const char *)data + 1;
    nul = memchr(p, '\0', size - 1);
    pl = nul ? (size_t)(nul - p) : size - 1;
    q = nul ? nul + 1 : p + pl;
    ql = nul ? size - 1 - pl - 1 : 0;

    check_from_path(&ls, p, pl);
    if (locale_path_redirectable(ex, 3, p, pl)) {
        const char *last = p + pl;

        check(pl > 0 && p[0] == '/');
        for (size_t i = 0; i < 3; i++)
            check(pl < strlen(ex[i]) || memcmp(p, ex[i], strlen(ex[i])) != 0);
        while (last > p && last[-1] != '/')
            last--;
        check(memchr(last, '.', (size_t)(p + pl - last)) == NULL);
    }

    n = locale_redirect_target(out, osz, ls.name[loc], ls.len[loc], p, pl, q, ql);
    ok = pl > 0 && p[0] == '/' && uri_ok(p, pl, false) && uri_ok(q, ql, true);
    need = 1 + ls.len[loc] + (pl == 1 ? 0 : pl) + (ql ? 1 + ql : 0);
    check(n == (ok && need < osz ? (int)need : -1));
    if (n < 0)
        return 0;

    /* Exact content. */
    check(out[n] == '\0' && out[0] == '/' && memcmp(out + 1, ls.name[loc], ls.len[loc]) == 0);
    {
        size_t at = 1 + ls.len[loc];

        if (pl > 1) {
            check(memcmp(out + at, p, pl) == 0);
            at += pl;
        }
        if (ql) {
            check(out[at] == '?' && memcmp(out + at + 1, q, ql) == 0);
            at += 1 + ql;
        }
        check(at == (size_t)n);
    }
    /* Same site, and the target is itself a locale path: no redirect loop. */
    check(out[1] != '/' && out[1] != '\\');
    {
        size_t l = ls.len[loc], pathlen = strcspn(out, "?");

        check(out[1 + l] == '/' || out[1 + l] == '?' || out[1 + l] == '\0');
        check(locale_from_path(&ls, out, pathlen) == (int)loc);
    }
    for (int i = 0; i < n; i++)
        check(out[i] != '\r' && out[i] != '\n' && out[i] != '\\' && out[i] != ' ' &&
              (unsigned char)out[i] > 0x20 && (unsigned char)out[i] < 0x7f);
    check(uri_ok(out, (size_t)n, true));
    return 0;
}
