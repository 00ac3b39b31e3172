/* A transcription of negotiator's lib/encoding.js and of the choice the
 * compression middleware makes with it. The JavaScript is followed step by
 * step rather than reinterpreted per RFC 9110: any divergence, however odd
 * the header, would make the edge answer in another coding than Next.js. */
#include "coding.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Enough significant digits to round any decimal to the nearest double: the
 * exact midpoints between doubles have at most 767. */
#define DIGITS_MAX 800

enum { ENC_GZIP, ENC_DEFLATE, ENC_IDENTITY, ENC_N };

/* What negotiator calls a priority: the element an encoding got its quality
 * from. `o` is that element's index among the comma-separated pieces. */
struct prio {
    int s; /* 1: named explicitly, 0: through "*" */
    double q;
    int o;
};

/* JavaScript's WhiteSpace and LineTerminator (used by trim(), \s and
 * parseFloat) restricted to latin1, the decoding Node.js applies to header
 * bytes; hence NBSP. */
static bool js_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || c == 0xa0;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static void trim(const char **p, const char **end)
{
    while (*p < *end && js_space((unsigned char)**p))
        (*p)++;
    while (*end > *p && js_space((unsigned char)(*end)[-1]))
        (*end)--;
}

/* parseFloat() of [p, end): the longest prefix that is a StrDecimalLiteral, NaN
 * without one. V8 rounds correctly, so the digits go to strtod(), which also
 * does in glibc; the decimal point is taken out so that LC_NUMERIC cannot
 * matter, and digits past DIGITS_MAX are folded into a sticky one. */
static double js_parse_float(const char *p, const char *end)
{
    char buf[DIGITS_MAX + 2 + 16];
    size_t nd = 0;
    bool neg = false, sticky = false, any = false;
    long point = 0, exp = 0; /* value = 0.buf * 10^(point + exp) */
    int saved_errno;
    double v;

    while (p < end && js_space((unsigned char)*p))
        p++;
    if (p < end && (*p == '+' || *p == '-'))
        neg = *p++ == '-';
    if ((size_t)(end - p) >= 8 && memcmp(p, "Infinity", 8) == 0)
        return neg ? -INFINITY : INFINITY;
    for (; p < end && is_digit(*p); p++) {
        any = true;
        if (nd == 0 && *p == '0')
            continue;
        point++;
        if (nd < DIGITS_MAX)
            buf[nd++] = *p;
        else if (*p != '0')
            sticky = true;
    }
    if (p < end && *p == '.') {
        for (p++; p < end && is_digit(*p); p++) {
            any = true;
            if (nd == 0 && *p == '0') {
                point--;
                continue;
            }
            if (nd < DIGITS_MAX)
                buf[nd++] = *p;
            else if (*p != '0')
                sticky = true;
        }
    }
    if (!any)
        return NAN;
    if (p < end && (*p == 'e' || *p == 'E')) {
        const char *e = p + 1;
        bool eneg = false;

        if (e < end && (*e == '+' || *e == '-'))
            eneg = *e++ == '-';
        /* Saturated: past a million either way the digits (at most
         * CODING_MAX_FIELD of them) cannot bring the value back into range. */
        for (; e < end && is_digit(*e); e++)
            if (exp < 1000000)
                exp = exp * 10 + (*e - '0');
        if (eneg)
            exp = -exp;
    }
    if (nd == 0)
        return 0; /* -0 would compare the same */
    if (sticky)
        buf[nd++] = '1';
    /* value = buf * 10^(point + exp - nd), a mantissa without a point. */
    snprintf(buf + nd, sizeof(buf) - nd, "e%ld", point + exp - (long)nd);
    saved_errno = errno;
    v = strtod(buf, NULL);
    errno = saved_errno;
    return neg ? -v : v;
}

/* The q of parseEncoding(): that of the first ';'-separated parameter which,
 * trimmed and cut at '=', reads exactly "q", or 1. parseFloat(undefined) is
 * NaN when it has no '='; that its value also ends at a second '=' needs no
 * code, parseFloat stops there anyway. */
static double param_q(const char *p, const char *end)
{
    for (;;) {
        const char *pe = memchr(p, ';', (size_t)(end - p));
        const char *a = p, *b = pe ? pe : end, *eq;

        trim(&a, &b);
        eq = memchr(a, '=', (size_t)(b - a));
        if ((eq ? eq : b) - a == 1 && *a == 'q')
            return eq ? js_parse_float(eq + 1, b) : NAN;
        if (!pe)
            return 1;
        p = pe + 1;
    }
}

static bool name_is(const char *p, size_t n, const char *name)
{
    if (n != strlen(name))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];

        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        if (c != (unsigned char)name[i])
            return false;
    }
    return true;
}

/* parseEncoding() on a trimmed piece: /^\s*([^\s;]+)\s*(?:;(.*))?$/, where
 * '.' stops at CR and LF. Returns false when the piece does not match. */
static bool parse_element(const char *p, const char *end, const char **name, size_t *nlen,
                          double *q)
{
    const char *t = p;

    while (t < end && !js_space((unsigned char)*t) && *t != ';')
        t++;
    if (t == p)
        return false;
    *name = p;
    *nlen = (size_t)(t - p);
    while (t < end && js_space((unsigned char)*t))
        t++;
    if (t == end) {
        *q = 1;
        return true;
    }
    if (*t != ';')
        return false;
    t++;
    if (memchr(t, '\r', (size_t)(end - t)) || memchr(t, '\n', (size_t)(end - t)))
        return false;
    *q = param_q(t, end);
    return true;
}

/* One step of getEncodingPriority(): `(n.s - o.s || n.q - o.q || n.o - o.o)
 * < 0`. A NaN or zero difference of q falls through to the index, on which
 * the later element always wins. */
static void consider(struct prio *cur, int s, double q, int o)
{
    if (s > cur->s || (s == cur->s && !(cur->q > q))) {
        cur->s = s;
        cur->q = q;
        cur->o = o;
    }
}

/* compareSpecs(a, b) < 0 for two acceptable (q > 0) priorities: q
 * descending, then explicit before "*", then header order. Both q being
 * positive, a NaN difference can only come from two infinite ones, which
 * compareSpecs() treats as equal too. */
static bool ranks_before(const struct prio *a, const struct prio *b)
{
    if (a->q != b->q)
        return a->q > b->q;
    if (a->s != b->s)
        return a->s > b->s;
    return a->o < b->o;
}

/* preferredEncodings(header, provided)[0], as an index into pr, or -1. On
 * a full tie compareSpecs() falls back to the order of `provided`. */
static int preferred(const struct prio *pr, const int *provided, int n)
{
    const struct prio *best = NULL;
    int which = -1;

    for (int i = 0; i < n; i++) {
        const struct prio *a = &pr[provided[i]];

        if (a->q > 0 && (!best || ranks_before(a, best))) {
            best = a;
            which = provided[i];
        }
    }
    return which;
}

int coding_choose(const char *ae, size_t len, enum coding *out)
{
    static const char *const names[ENC_N] = {"gzip", "deflate", "identity"};
    static const int all[] = {ENC_GZIP, ENC_DEFLATE, ENC_IDENTITY};
    static const int gzip[] = {ENC_GZIP};
    static const int gzip_identity[] = {ENC_GZIP, ENC_IDENTITY};
    struct prio pr[ENC_N];
    const char *p, *end;
    int commas = 0, pieces = 0, u;

    /* An absent header is read as "": one empty piece. */
    if (!ae) {
        ae = "";
        len = 0;
    }
    if (len > CODING_MAX_FIELD)
        return -1;
    for (size_t i = 0; i < len; i++)
        commas += ae[i] == ',';
    if (commas >= CODING_MAX_ELEMENTS)
        return -1;

    for (int e = 0; e < ENC_N; e++)
        pr[e] = (struct prio){.s = 0, .q = 0, .o = -1};
    p = ae;
    end = ae + len;
    for (;;) {
        const char *pe = memchr(p, ',', (size_t)(end - p));
        const char *a = p, *b = pe ? pe : end, *name;
        size_t nlen;
        double q;

        trim(&a, &b);
        if (a < b && parse_element(a, b, &name, &nlen, &q)) {
            bool star = nlen == 1 && *name == '*';

            for (int e = 0; e < ENC_N; e++) {
                bool named = name_is(name, nlen, names[e]);

                if (named || star)
                    consider(&pr[e], named, q, pieces);
            }
        }
        pieces++;
        if (!pe)
            break;
        p = pe + 1;
    }
    /* parseAcceptEncoding() then appends identity, unless an element names
     * it or is "*", with the lowest q seen, after every element. Left out: an
     * acceptable gzip or deflate, named explicitly like it, has a q at least
     * as high and comes first, and without them the answer is identity
     * anyway. */

    u = preferred(pr, all, 3);
    if (u == ENC_DEFLATE && preferred(pr, gzip, 1) >= 0)
        u = preferred(pr, gzip_identity, 2);
    *out = u == ENC_GZIP ? CODING_GZIP : u == ENC_DEFLATE ? CODING_DEFLATE : CODING_IDENTITY;
    return 0;
}
