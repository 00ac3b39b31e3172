#include "locale.h"

#include <string.h>

static int find(const struct locale_set *ls, const char *s, size_t len)
{
    for (unsigned i = 0; i < ls->n; i++)
        if (ls->len[i] == len && memcmp(ls->name[i], s, len) == 0)
            return (int)i;
    return -1;
}

int locale_find(const struct locale_set *ls, const char *s, size_t len)
{
    return find(ls, s, len);
}

int locale_add(struct locale_set *ls, const char *name)
{
    size_t l = strlen(name);

    if (l == 0 || l >= LOCALE_NAME_MAX || ls->n >= LOCALE_MAX || name[0] == '-' ||
        name[l - 1] == '-')
        return -1;
    for (size_t i = 0; i < l; i++) {
        char c = name[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-'))
            return -1;
    }
    if (find(ls, name, l) >= 0)
        return -1;
    memcpy(ls->name[ls->n], name, l + 1);
    ls->len[ls->n] = (unsigned char)l;
    ls->n++;
    return 0;
}

int locale_set_default(struct locale_set *ls, const char *name)
{
    int i = find(ls, name, strlen(name));

    if (i < 0)
        return -1;
    ls->def = (unsigned)i;
    return 0;
}

int locale_from_path(const struct locale_set *ls, const char *path, size_t len)
{
    size_t seg = 1;

    if (len < 2 || path[0] != '/')
        return -1;
    while (seg < len && path[seg] != '/')
        seg++;
    /* Next.js matches the [locale] segment exactly: "/FR" is not "/fr". */
    return find(ls, path + 1, seg - 1);
}

/* ---- Accept-Language ---------------------------------------------------- */

#define AL_MAX_RANGES 32
#define AL_MAX_LEN 4096

struct al_range {
    const char *s;
    size_t len;
    unsigned q; /* thousandths */
};

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static bool alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool ieq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower(a[i]) != lower(b[i]))
            return false;
    return true;
}

/* language-range = (1*8ALPHA *("-" 1*8alphanum)) / "*" */
static bool valid_range(const char *s, size_t len)
{
    size_t i = 0, run = 0;
    bool first = true;

    if (len == 1 && s[0] == '*')
        return true;
    for (i = 0; i < len; i++) {
        if (s[i] == '-') {
            if (run == 0)
                return false;
            first = false;
            run = 0;
        } else if (alpha(s[i]) || (!first && digit(s[i]))) {
            if (++run > 8)
                return false;
        } else {
            return false;
        }
    }
    return run > 0;
}

/* qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ) */
static bool parse_q(const char *s, size_t len, unsigned *q)
{
    unsigned v = 0, mul = 100;

    if (len == 0 || (s[0] != '0' && s[0] != '1'))
        return false;
    if (len > 1 && (s[1] != '.' || len > 5))
        return false;
    for (size_t i = 2; i < len; i++, mul /= 10) {
        if (!digit(s[i]) || (s[0] == '1' && s[i] != '0'))
            return false;
        v += (unsigned)(s[i] - '0') * mul;
    }
    *q = s[0] == '1' ? 1000 : v;
    return true;
}

static const char *trim(const char *s, const char *e, const char **te)
{
    while (s < e && (*s == ' ' || *s == '\t'))
        s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    *te = e;
    return s;
}

/* Parses one element "range[;q=x]"; false when malformed. */
static bool parse_element(const char *s, const char *e, struct al_range *r)
{
    const char *semi = memchr(s, ';', (size_t)(e - s));
    const char *re, *ps, *pe;

    s = trim(s, semi ? semi : e, &re);
    if (!valid_range(s, (size_t)(re - s)))
        return false;
    r->s = s;
    r->len = (size_t)(re - s);
    r->q = 1000;
    if (!semi)
        return true;
    ps = trim(semi + 1, e, &pe);
    if (pe - ps < 2 || lower(ps[0]) != 'q')
        return false;
    ps++;
    while (ps < pe && (*ps == ' ' || *ps == '\t'))
        ps++;
    if (ps >= pe || *ps != '=')
        return false;
    ps++;
    while (ps < pe && (*ps == ' ' || *ps == '\t'))
        ps++;
    return parse_q(ps, (size_t)(pe - ps), &r->q);
}

/* Basic filtering (RFC 4647 §3.3.1): "*" matches all, "nl" matches "nl" and "nl-BE". */
static bool range_matches(const struct al_range *r, const char *tag, size_t tlen)
{
    if (r->len == 1 && r->s[0] == '*')
        return true;
    if (r->len > tlen || !ieq(r->s, tag, r->len))
        return false;
    return r->len == tlen || tag[r->len] == '-';
}

int locale_from_accept_language(const struct locale_set *ls, const char *al, size_t len)
{
    struct al_range rs[AL_MAX_RANGES];
    bool excluded[LOCALE_MAX] = {false};
    unsigned n = 0;
    const char *p = al, *end;

    if (len > AL_MAX_LEN)
        len = AL_MAX_LEN;
    end = al + len;
    while (p < end && n < AL_MAX_RANGES) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e = comma ? comma : end;
        struct al_range r;

        if (parse_element(p, e, &r)) {
            /* Keep descending q, stable on ties: insert after equal q. */
            unsigned i = n;

            while (i > 0 && rs[i - 1].q < r.q) {
                rs[i] = rs[i - 1];
                i--;
            }
            rs[i] = r;
            n++;
        }
        p = e + 1;
    }
    for (unsigned i = 0; i < n; i++)
        if (rs[i].q == 0 && !(rs[i].len == 1 && rs[i].s[0] == '*'))
            for (unsigned l = 0; l < ls->n; l++)
                if (range_matches(&rs[i], ls->name[l], ls->len[l]))
                    excluded[l] = true;
    for (unsigned i = 0; i < n && rs[i].q > 0; i++) {
        const struct al_range *r = &rs[i];
        size_t tl;

        if (r->len == 1 && r->s[0] == '*') {
            if (!excluded[ls->def] && ls->n > 0)
                return (int)ls->def;
            for (unsigned l = 0; l < ls->n; l++)
                if (!excluded[l])
                    return (int)l;
            continue;
        }
        for (unsigned l = 0; l < ls->n; l++)
            if (!excluded[l] && range_matches(r, ls->name[l], ls->len[l]))
                return (int)l;
        /* Lookup fallback (RFC 4647 §3.4): drop subtags from the end. */
        for (tl = r->len; tl > 0;) {
            while (tl > 0 && r->s[tl - 1] != '-')
                tl--;
            if (tl == 0)
                break;
            tl--; /* drop the '-' */
            for (unsigned l = 0; l < ls->n; l++)
                if (!excluded[l] && ls->len[l] == tl && ieq(ls->name[l], r->s, tl))
                    return (int)l;
        }
    }
    return -1;
}

/* ---- redirects ---------------------------------------------------------- */

bool locale_path_redirectable(const char *const *exclude, unsigned nexclude, const char *path,
                              size_t len)
{
    const char *last;

    if (len == 0 || path[0] != '/')
        return false;
    for (unsigned i = 0; i < nexclude; i++) {
        size_t el = strlen(exclude[i]);

        if (len >= el && memcmp(path, exclude[i], el) == 0)
            return false;
        /* "/api/" also covers "/api" itself. */
        if (el > 1 && exclude[i][el - 1] == '/' && len == el - 1 &&
            memcmp(path, exclude[i], len) == 0)
            return false;
    }
    last = path + len;
    while (last > path && last[-1] != '/')
        last--;
    return memchr(last, '.', (size_t)(path + len - last)) == NULL;
}

static bool hex(char c)
{
    return digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* pchar = unreserved / pct-encoded / sub-delims / ":" / "@" (RFC 3986 §3.3);
 * query adds "/" and "?". Returns false on anything else. */
static bool uri_chars_ok(const char *s, size_t len, bool query)
{
    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        /* strchr() would find the terminator for a NUL byte: test it first. */
        if (alpha(c) || digit(c) || (c != '\0' && strchr("-._~!$&'()*+,;=:@/", c) != NULL))
            continue;
        if (query && c == '?')
            continue;
        if (c == '%' && i + 2 < len && hex(s[i + 1]) && hex(s[i + 2])) {
            i += 2;
            continue;
        }
        return false;
    }
    return true;
}

int locale_redirect_target(char *out, size_t size, const char *loc, size_t loclen, const char *path,
                           size_t plen, const char *query, size_t qlen)
{
    size_t n = 0, need;

    if (plen == 0 || path[0] != '/' || !uri_chars_ok(path, plen, false) ||
        (qlen && !uri_chars_ok(query, qlen, true)))
        return -1;
    if (plen == 1) /* "/" -> "/fr", as Next.js links it */
        plen = 0;
    need = 1 + loclen + plen + (qlen ? 1 + qlen : 0);
    if (need >= size)
        return -1;
    out[n++] = '/';
    memcpy(out + n, loc, loclen);
    n += loclen;
    memcpy(out + n, path, plen);
    n += plen;
    if (qlen) {
        out[n++] = '?';
        memcpy(out + n, query, qlen);
        n += qlen;
    }
    out[n] = '\0';
    return (int)n;
}
