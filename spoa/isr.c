/* Next.js ISR entries: parsing, freshness, ETag and response headers.
 *
 * The rules mirror, line for line, what the JavaScript does, so that the edge
 * never disagrees with the origin:
 *  - @fortedigital/nextjs-cache-handler redis-strings get() and the
 *    CacheHandler wrapper: JSON.parse, __revalidated_tags__ compared with
 *    parseInt(time) > lastModified, lifespan.expireAt < floor(now / 1000);
 *  - next/dist/server/lib/incremental-cache: stale when lastModified +
 *    revalidate * 1000 < now, blocking miss past expire (Next >= 16);
 *  - next/dist/build/templates/app-page(-runtime).js, send-payload.js,
 *    lib/cache-control.js, lib/etag.js, compiled/fresh and the `compression`
 *    middleware for the headers, ETag and 304.
 * Where the edge cannot be sure to do the same as Next, it does not serve:
 * a miss only costs an origin request, a wrong page costs a user. */
#include "isr.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

#include <jansson.h>

#include "util.h"

/* JavaScript's Number.MAX_SAFE_INTEGER: every time the handler writes is a
 * JS number, so a larger integer cannot come from it. */
#define JS_MAX_SAFE 9007199254740991LL

/* The handler's JSON nests 4 levels deep; jansson recurses once per level, up
 * to 2048. A hostile value must not get that deep into a worker's stack. */
#define MAX_DEPTH 16

struct isr_entry_priv {
    json_t *root;
    char *tagcopy; /* x-next-cache-tags, split in place at the commas */
    const char *tags[ISR_MAX_TAGS];
    struct isr_header hdrs[ISR_MAX_ENTRY_HEADERS];
    char num[ISR_MAX_ENTRY_HEADERS][24]; /* numeric header values, formatted */
    bool has_cache_control, has_content_type;
    unsigned char *payloads; /* rscData then every segment, decoded, one block */
    struct isr_segment *segs;
};

const char *isr_err_str(enum isr_err err)
{
    switch (err) {
    case ISR_OK:
        return "ok";
    case ISR_MALFORMED:
        return "malformed";
    case ISR_TOO_BIG:
        return "too_big";
    case ISR_NOT_PAGE:
        return "not_page";
    case ISR_NO_HTML:
        return "no_html";
    case ISR_POSTPONED:
        return "postponed";
    case ISR_NO_LIFESPAN:
        return "no_lifespan";
    case ISR_UNSUPPORTED:
        return "unsupported";
    case ISR_NOMEM:
        return "nomem";
    }
    return "unknown";
}

/* ---- ETag: lib/etag.ts ------------------------------------------------------
 * fnv1a52() walks str.charCodeAt(i), i.e. UTF-16 code units, with 16-bit limbs
 * v0..v3 and a multiply by 435 (the low part of the 64-bit FNV prime 2^40 +
 * 435: the 2^40 part is the "<< 8" into the limb two places up). All
 * intermediates stay below 2^32, so uint32_t reproduces the JS arithmetic. */
struct fnv {
    uint32_t v0, v1, v2, v3;
};

static inline void fnv_unit(struct fnv *f, uint32_t u)
{
    uint32_t t0, t1, t2, t3;

    f->v0 ^= u;
    t0 = f->v0 * 435;
    t1 = f->v1 * 435;
    t2 = f->v2 * 435;
    t3 = f->v3 * 435;
    t2 += f->v0 << 8;
    t3 += f->v1 << 8;
    t1 += t0 >> 16;
    f->v0 = t0 & 65535;
    t2 += t1 >> 16;
    f->v1 = t1 & 65535;
    f->v3 = (t3 + (t2 >> 16)) & 65535;
    f->v2 = t2 & 65535;
}

/* Decodes UTF-8 (RFC 3629: no overlongs, no surrogates, <= U+10FFFF) into
 * UTF-16 code units as a JS string holds them, feeding the hash. Returns the
 * number of units, or -1 on invalid UTF-8. */
static int64_t utf16_fnv(const unsigned char *s, size_t n, uint64_t *hash)
{
    struct fnv f = {0x2325, 0x8422, 0x9ce4, 0xcbf2};
    int64_t units = 0;
    size_t i = 0;

    while (i < n) {
        uint32_t c = s[i], cp;

        if (c < 0x80) {
            fnv_unit(&f, c);
            units++;
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            if (n - i < 2 || (s[i + 1] & 0xc0) != 0x80)
                return -1;
            cp = (c & 0x1f) << 6 | (s[i + 1] & 0x3f);
            i += 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            if (n - i < 3 || (s[i + 1] & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80)
                return -1;
            cp = (c & 0x0f) << 12 | (uint32_t)(s[i + 1] & 0x3f) << 6 | (s[i + 2] & 0x3f);
            if (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))
                return -1;
            i += 3;
        } else if (c >= 0xf0 && c <= 0xf4) {
            if (n - i < 4 || (s[i + 1] & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80 ||
                (s[i + 3] & 0xc0) != 0x80)
                return -1;
            cp = (c & 0x07) << 18 | (uint32_t)(s[i + 1] & 0x3f) << 12 |
                 (uint32_t)(s[i + 2] & 0x3f) << 6 | (s[i + 3] & 0x3f);
            if (cp < 0x10000 || cp > 0x10ffff)
                return -1;
            i += 4;
        } else {
            return -1; /* continuation byte, 0xc0/0xc1 overlong lead, or > 0xf4 */
        }
        if (cp >= 0x10000) { /* a surrogate pair: two code units */
            cp -= 0x10000;
            fnv_unit(&f, 0xd800 | cp >> 10);
            fnv_unit(&f, 0xdc00 | (cp & 0x3ff));
            units += 2;
        } else {
            fnv_unit(&f, cp);
            units++;
        }
    }
    *hash = (uint64_t)(f.v3 & 15) << 48 | (uint64_t)f.v2 << 32 | (uint64_t)f.v1 << 16 |
            (f.v0 ^ f.v3 >> 4);
    return units;
}

/* Number.prototype.toString(36) of a non-negative integer. */
static size_t base36(uint64_t v, char *out)
{
    char tmp[16];
    size_t n = 0, i;

    do {
        tmp[n++] = "0123456789abcdefghijklmnopqrstuvwxyz"[v % 36];
        v /= 36;
    } while (v);
    for (i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

/* generateETag(payload, weak = false): send-payload.ts never asks for weak. */
static int make_etag(uint64_t hash, uint64_t units, char out[ISR_ETAG_SIZE])
{
    size_t n = 0;

    out[n++] = '"';
    n += base36(hash, out + n);  /* < 2^52: at most 11 digits */
    n += base36(units, out + n); /* < 2^64: at most 13 digits */
    out[n++] = '"';
    out[n] = '\0';
    return (int)n;
}

int isr_etag(const char *utf8, size_t len, char out[ISR_ETAG_SIZE])
{
    uint64_t hash;
    int64_t units = utf16_fnv((const unsigned char *)utf8, len, &hash);

    if (units < 0)
        return -1;
    return make_etag(hash, (uint64_t)units, out);
}

/* ---- base64, as Buffer#toString("base64") writes it --------------------------------
 * Buffer.from(s, "base64") also takes URL-safe letters, whitespace, missing
 * or misplaced padding and junk, each with its own quirks; the handler only
 * ever writes the canonical form. Anything else is not decoded here, and the
 * RSC requests for that entry go to the origin. */
static int b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Decoded size of canonical base64, or -1. */
static ssize_t b64_len(const char *s, size_t n)
{
    size_t pad = 0;

    if (n % 4)
        return -1;
    if (n && s[n - 1] == '=')
        pad = n >= 2 && s[n - 2] == '=' ? 2 : 1;
    return (ssize_t)(n / 4 * 3 - pad);
}

/* Decodes canonical base64 (padded, no other byte, zero unused bits) into
 * out (b64_len() bytes). Returns 0, or -1. */
static int b64_decode(const char *s, size_t n, unsigned char *out)
{
    size_t i, o = 0;

    if (b64_len(s, n) < 0)
        return -1;
    for (i = 0; i < n; i += 4) {
        int a = b64_val((unsigned char)s[i]), b = b64_val((unsigned char)s[i + 1]);
        int c = s[i + 2] == '=' && i + 4 == n ? -2 : b64_val((unsigned char)s[i + 2]);
        int d = s[i + 3] == '=' && i + 4 == n ? -2 : b64_val((unsigned char)s[i + 3]);
        uint32_t v;

        if (a < 0 || b < 0 || c == -1 || d == -1 || (c == -2 && d != -2))
            return -1;
        v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)(c < 0 ? 0 : c) << 6 |
            (uint32_t)(d < 0 ? 0 : d);
        out[o++] = (unsigned char)(v >> 16);
        if (c >= 0)
            out[o++] = (unsigned char)(v >> 8);
        else if (v & 0xffff)
            return -1; /* non-zero unused bits: not what Node writes */
        if (d >= 0)
            out[o++] = (unsigned char)v;
        else if (c >= 0 && (v & 0xff))
            return -1;
    }
    return 0;
}

/* ---- SHA-256 (FIPS 180-4), for the _rsc cache-busting parameter ------------------- */
struct sha256 {
    uint32_t h[8];
    unsigned char buf[64];
    size_t nbuf;
    uint64_t total;
};

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static inline uint32_t ror32(uint32_t x, unsigned n)
{
    return x >> n | x << (32 - n);
}

static void sha256_block(struct sha256 *c, const unsigned char *p)
{
    uint32_t w[64], a, b, d, e, f, g, h, cc, t1, t2;
    int i;

    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (i = 16; i < 64; i++)
        w[i] = w[i - 16] + (ror32(w[i - 15], 7) ^ ror32(w[i - 15], 18) ^ w[i - 15] >> 3) +
               w[i - 7] + (ror32(w[i - 2], 17) ^ ror32(w[i - 2], 19) ^ w[i - 2] >> 10);
    a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3];
    e = c->h[4], f = c->h[5], g = c->h[6], h = c->h[7];
    for (i = 0; i < 64; i++) {
        t1 = h + (ror32(e, 6) ^ ror32(e, 11) ^ ror32(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[i] +
             w[i];
        t2 = (ror32(a, 2) ^ ror32(a, 13) ^ ror32(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
        h = g, g = f, f = e, e = d + t1;
        d = cc, cc = b, b = a, a = t1 + t2;
    }
    c->h[0] += a, c->h[1] += b, c->h[2] += cc, c->h[3] += d;
    c->h[4] += e, c->h[5] += f, c->h[6] += g, c->h[7] += h;
}

static void sha256_init(struct sha256 *c)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

    memcpy(c->h, iv, sizeof(iv));
    c->nbuf = 0;
    c->total = 0;
}

static void sha256_update(struct sha256 *c, const void *data, size_t n)
{
    const unsigned char *p = data;

    c->total += n;
    while (n) {
        size_t k = 64 - c->nbuf < n ? 64 - c->nbuf : n;

        memcpy(c->buf + c->nbuf, p, k);
        c->nbuf += k, p += k, n -= k;
        if (c->nbuf == 64) {
            sha256_block(c, c->buf);
            c->nbuf = 0;
        }
    }
}

static void sha256_final(struct sha256 *c, unsigned char out[32])
{
    uint64_t bits = c->total * 8;
    unsigned char len[8];
    int i;

    for (i = 0; i < 8; i++)
        len[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(c, "\x80", 1);
    while (c->nbuf != 56)
        sha256_update(c, "", 1);
    sha256_update(c, len, 8);
    for (i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(c->h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(c->h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(c->h[i] >> 8);
        out[4 * i + 3] = (unsigned char)c->h[i];
    }
}

static bool printable_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return false;
    return true;
}

/* createCacheBustingSearchParamInput(): the four values joined by ",", an
 * absent one as "0". Next-Url is never part of what the edge answers. */
static void rsc_input_feed(struct sha256 *c, uint32_t *djb, const char *s, size_t n, bool comma)
{
    if (comma) {
        sha256_update(c, ",", 1);
        *djb = *djb * 33 + ',';
    }
    if (s == NULL) {
        s = "0";
        n = 1;
    }
    sha256_update(c, s, n);
    for (size_t i = 0; i < n; i++)
        *djb = *djb * 33 + (unsigned char)s[i]; /* djb2Hash(): (h << 5) + h + c, 32 bits */
}

int isr_rsc_param(const char *prefetch, size_t prefetch_len, const char *segment,
                  size_t segment_len, const char *tree, size_t tree_len,
                  char sha[ISR_RSC_PARAM_SIZE], char legacy[ISR_RSC_PARAM_SIZE])
{
    static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    struct sha256 c;
    unsigned char d[32];
    uint32_t djb = 5381;
    char tmp[16];
    size_t n, i;

    sha[0] = legacy[0] = '\0';
    if ((prefetch && !printable_ascii(prefetch, prefetch_len)) ||
        (segment && !printable_ascii(segment, segment_len)) ||
        (tree && !printable_ascii(tree, tree_len)))
        return -1;
    if ((prefetch == NULL || (prefetch_len == 1 && prefetch[0] == '0')) && segment == NULL &&
        tree == NULL)
        return 0;
    sha256_init(&c);
    rsc_input_feed(&c, &djb, prefetch, prefetch_len, false);
    rsc_input_feed(&c, &djb, segment, segment_len, true);
    rsc_input_feed(&c, &djb, tree, tree_len, true);
    rsc_input_feed(&c, &djb, NULL, 0, true);
    sha256_final(&c, d);
    /* 12 bytes: 16 base64url characters, no padding to strip. */
    for (i = 0, n = 0; i < 12; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | d[i + 2];

        sha[n++] = b64url[v >> 18 & 63];
        sha[n++] = b64url[v >> 12 & 63];
        sha[n++] = b64url[v >> 6 & 63];
        sha[n++] = b64url[v & 63];
    }
    sha[n] = '\0';
    /* hexHash(): djb2Hash(input).toString(36).slice(0, 5) */
    n = base36(djb, tmp);
    if (n > 5)
        n = 5;
    memcpy(legacy, tmp, n);
    legacy[n] = '\0';
    return 0;
}

/* ---- parsing ---------------------------------------------------------------- */

/* An integer the handler could have written: JSON.stringify gives integers
 * without fraction or exponent, and jansson keeps those as integers. */
static bool get_int(json_t *obj, const char *key, int64_t min, int64_t max, int64_t *out)
{
    json_t *v = json_object_get(obj, key);

    if (!json_is_integer(v))
        return false;
    *out = json_integer_value(v);
    return *out >= min && *out <= max;
}

/* RFC 9110 token: what Node's setHeader accepts as a name (checkIsHttpToken). */
static bool is_token(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c && strchr("!#$%&'*+-.^_`|~", c))))
            return false;
    }
    return true;
}

/* Header values the edge passes on: visible ASCII, space and HTAB. Node also
 * lets 0x80-0xff through (written as latin1), which a UTF-8 string would not
 * reproduce byte for byte, so those entries are not served. */
static bool is_value(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (!(c == '\t' || (c >= 0x20 && c < 0x7f)))
            return false;
    }
    return true;
}

/* Entry headers the edge will not send: framing and hop-by-hop ones (HAProxy
 * owns those), ones Next replaces or merges in ways not worth mirroring, and
 * Set-Cookie, which has no business in a response shared by everyone. */
static bool refused_header(const char *name)
{
    static const char *const refused[] = {
        "connection", "content-encoding", "content-length",    "date",
        "etag",       "keep-alive",       "proxy-connection",  "set-cookie",
        "te",         "trailer",          "transfer-encoding", "upgrade",
        "vary",       "x-nextjs-cache",   "x-powered-by",
    };

    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        if (strcasecmp(name, refused[i]) == 0)
            return true;
    return false;
}

static bool has_tag(const struct isr_entry *e, const char *t)
{
    for (size_t i = 0; i < e->ntags; i++)
        if (strcmp(e->tags[i], t) == 0)
            return true;
    return false;
}

static enum isr_err add_tag(struct isr_entry *e, const char *t, size_t len)
{
    if (len == 0 || has_tag(e, t))
        return ISR_OK;
    if (len > ISR_MAX_TAG_LEN || e->ntags >= ISR_MAX_TAGS)
        return ISR_TOO_BIG;
    if (memchr(t, '\0', len))
        return ISR_MALFORMED;
    e->priv->tags[e->ntags++] = t;
    return ISR_OK;
}

static enum isr_err parse_tags(struct isr_entry *e, json_t *tags)
{
    size_t i;
    json_t *t;
    enum isr_err err;

    /* The handler spreads cacheValue.tags into a Set: anything but an array
     * throws inside get(), which the wrapper turns into a miss. */
    if (!json_is_array(tags))
        return ISR_MALFORMED;
    if (json_array_size(tags) > ISR_MAX_TAGS)
        return ISR_TOO_BIG;
    json_array_foreach(tags, i, t)
    {
        if (!json_is_string(t))
            return ISR_MALFORMED;
        if ((err = add_tag(e, json_string_value(t), json_string_length(t))) != ISR_OK)
            return err;
    }
    return ISR_OK;
}

/* x-next-cache-tags: "a,b,c" (getTagsFromHeaders also takes an array). */
static enum isr_err parse_tags_header(struct isr_entry *e, json_t *v)
{
    struct isr_entry_priv *p = e->priv;
    size_t len, npieces;
    char *s, *end, *comma;
    enum isr_err err;

    if (json_is_array(v))
        return parse_tags(e, v);
    if (!json_is_string(v))
        return ISR_MALFORMED;
    len = json_string_length(v);
    if (len > (size_t)ISR_MAX_TAGS * (ISR_MAX_TAG_LEN + 1))
        return ISR_TOO_BIG;
    if (memchr(json_string_value(v), '\0', len))
        return ISR_MALFORMED;
    /* Each piece is looked up among the tags so far: bound the pieces, not
     * only the distinct tags, or "a,a,a,..." costs a quadratic scan. */
    npieces = 1;
    for (const char *c = json_string_value(v); c < json_string_value(v) + len; c++)
        if (*c == ',' && ++npieces > 2 * ISR_MAX_TAGS)
            return ISR_TOO_BIG;
    if ((p->tagcopy = malloc(len + 1)) == NULL)
        return ISR_NOMEM;
    memcpy(p->tagcopy, json_string_value(v), len + 1);
    for (s = p->tagcopy, end = s + len; s <= end; s = comma + 1) {
        comma = memchr(s, ',', (size_t)(end - s));
        if (comma == NULL)
            comma = end;
        *comma = '\0';
        if ((err = add_tag(e, s, (size_t)(comma - s))) != ISR_OK)
            return err;
    }
    return ISR_OK;
}

static enum isr_err add_header(struct isr_entry *e, const char *name, const char *val, size_t len)
{
    struct isr_entry_priv *p = e->priv;

    if (e->nheaders >= ISR_MAX_ENTRY_HEADERS || len > ISR_MAX_HEADER_VALUE)
        return ISR_TOO_BIG;
    if (!is_value(val, len))
        return ISR_UNSUPPORTED;
    p->hdrs[e->nheaders].name = name;
    p->hdrs[e->nheaders].value = val;
    p->hdrs[e->nheaders].value_len = len;
    e->nheaders++;
    return ISR_OK;
}

/* value.headers, as the app-page handler replays them: appendHeader() per
 * string, per array element, or per number (value.toString()). */
static enum isr_err parse_headers(struct isr_entry *e, json_t *hdrs)
{
    struct isr_entry_priv *p = e->priv;
    const char *name;
    json_t *v, *x;
    size_t i;
    enum isr_err err;

    if (hdrs == NULL || json_is_null(hdrs))
        return ISR_OK;
    if (!json_is_object(hdrs))
        return ISR_MALFORMED;
    json_object_foreach(hdrs, name, v)
    {
        size_t nlen = json_object_iter_key_len(json_object_key_to_iter(name));

        /* Next deletes, and the handler reads, exactly this key. Another
         * spelling would reach clients from the origin: not ours to send. */
        if (strcmp(name, "x-next-cache-tags") == 0 && nlen == strlen(name)) {
            if ((err = parse_tags_header(e, v)) != ISR_OK)
                return err;
            continue;
        }
        if (strcasecmp(name, "x-next-cache-tags") == 0)
            return ISR_UNSUPPORTED;
        if (nlen > 64 || !is_token(name, nlen))
            return ISR_UNSUPPORTED; /* Node's setHeader would throw: a 500 */
        if (refused_header(name))
            return ISR_UNSUPPORTED;
        if (strcasecmp(name, "cache-control") == 0)
            p->has_cache_control = true;
        if (strcasecmp(name, "content-type") == 0)
            p->has_content_type = true;
        if (json_is_string(v)) {
            err = add_header(e, name, json_string_value(v), json_string_length(v));
        } else if (json_is_integer(v)) {
            /* A JS integer prints the same as %lld below 1e21. */
            char *num = p->num[e->nheaders % ISR_MAX_ENTRY_HEADERS];
            int n = snprintf(num, sizeof(p->num[0]), "%lld", (long long)json_integer_value(v));

            err = e->nheaders < ISR_MAX_ENTRY_HEADERS ? add_header(e, name, num, (size_t)n)
                                                      : ISR_TOO_BIG;
        } else if (json_is_array(v)) {
            err = ISR_OK;
            json_array_foreach(v, i, x)
            {
                if (!json_is_string(x))
                    return ISR_UNSUPPORTED;
                if ((err = add_header(e, name, json_string_value(x), json_string_length(x))) !=
                    ISR_OK)
                    break;
            }
        } else {
            /* null/true/objects/fractions: Node throws or prints JS-isms. */
            err = ISR_UNSUPPORTED;
        }
        if (err != ISR_OK)
            return err;
    }
    return ISR_OK;
}

static enum isr_err parse_lifespan(struct isr_entry *e, json_t *ls)
{
    const int64_t max_s = JS_MAX_SAFE / 1000;
    json_t *rv;

    /* The wrapper skips its expiry check without a lifespan; staleness then
     * depends on what one Next process remembers. Not ours to guess. */
    if (ls == NULL || json_is_null(ls))
        return ISR_NO_LIFESPAN;
    if (!json_is_object(ls))
        return ISR_MALFORMED;
    if (!get_int(ls, "lastModifiedAt", 0, max_s, &e->lifespan.last_modified_at) ||
        !get_int(ls, "staleAt", 0, max_s, &e->lifespan.stale_at) ||
        !get_int(ls, "expireAt", 0, max_s, &e->lifespan.expire_at) ||
        !get_int(ls, "staleAge", 0, max_s, &e->lifespan.stale_age) ||
        !get_int(ls, "expireAge", 0, max_s, &e->lifespan.expire_age))
        return ISR_MALFORMED;
    rv = json_object_get(ls, "revalidate");
    if (json_is_false(rv)) {
        e->lifespan.revalidate = 0;
    } else if (json_is_integer(rv)) {
        /* Next throws "Invalid revalidate configuration" below 1. */
        e->lifespan.revalidate = json_integer_value(rv);
        if (e->lifespan.revalidate < 1 || e->lifespan.revalidate > max_s)
            return ISR_MALFORMED;
    } else {
        return ISR_MALFORMED;
    }
    return ISR_OK;
}

/* Decodes rscData and every segmentData member into one block. A member
 * that is not canonical base64, or too many or too long segment paths, only
 * make that part unservable (NULL): the HTML is still exact. */
static enum isr_err decode_payloads(struct isr_entry *e, json_t *rsc, json_t *seg)
{
    struct isr_entry_priv *p = e->priv;
    size_t total = 0, nseg = 0, i = 0;
    bool rsc_ok = false, seg_ok = false;
    unsigned char *at;
    const char *k;
    json_t *x;
    ssize_t n;

    if (e->has_rsc && (n = b64_len(json_string_value(rsc), json_string_length(rsc))) >= 0) {
        rsc_ok = true;
        total += (size_t)n;
    }
    if (e->has_segments && json_object_size(seg) <= ISR_MAX_SEGMENTS) {
        seg_ok = true;
        json_object_foreach(seg, k, x)
        {
            size_t kl = json_object_iter_key_len(json_object_key_to_iter(k));

            n = b64_len(json_string_value(x), json_string_length(x));
            if (n < 0 || kl > ISR_MAX_SEGMENT_PATH || strlen(k) != kl) {
                seg_ok = false;
                break;
            }
            total += (size_t)n + kl + 1;
            nseg++;
        }
    }
    if (!rsc_ok && !seg_ok)
        return ISR_OK;
    if ((p->payloads = malloc(total ? total : 1)) == NULL)
        return ISR_NOMEM;
    if (seg_ok && nseg && (p->segs = calloc(nseg, sizeof(*p->segs))) == NULL)
        return ISR_NOMEM;
    at = p->payloads;
    if (rsc_ok) {
        if (b64_decode(json_string_value(rsc), json_string_length(rsc), at) == 0) {
            e->rsc = at;
            e->rsc_len = (size_t)b64_len(json_string_value(rsc), json_string_length(rsc));
            at += e->rsc_len;
        }
    }
    if (seg_ok) {
        json_object_foreach(seg, k, x)
        {
            struct isr_segment *s;

            if (i >= nseg) { /* never: same object as above; keeps writes inside segs */
                seg_ok = false;
                break;
            }
            s = &p->segs[i];
            s->path_len = strlen(k);
            memcpy(at, k, s->path_len + 1);
            s->path = (const char *)at;
            at += s->path_len + 1;
            s->len = (size_t)b64_len(json_string_value(x), json_string_length(x));
            if (b64_decode(json_string_value(x), json_string_length(x), at) < 0) {
                seg_ok = false;
                break;
            }
            s->data = at;
            at += s->len;
            i++;
        }
        if (seg_ok) {
            e->segments = p->segs;
            e->nsegments = nseg;
        }
    }
    e->mem += total + nseg * sizeof(*p->segs);
    return ISR_OK;
}

static enum isr_err parse_value(struct isr_entry *e, json_t *val, const struct isr_conf *conf)
{
    json_t *kind, *html, *post, *status, *rsc, *seg, *x;
    const char *k;
    int64_t st;
    enum isr_err err;

    if (val == NULL || json_is_null(val))
        return ISR_NOT_PAGE;
    if (!json_is_object(val))
        return ISR_MALFORMED;
    kind = json_object_get(val, "kind");
    if (!json_is_string(kind))
        return ISR_MALFORMED;
    if (strcmp(json_string_value(kind), "APP_PAGE") == 0)
        e->kind = ISR_APP_PAGE;
    else if (strcmp(json_string_value(kind), "PAGES") == 0)
        e->kind = ISR_PAGES;
    else
        return ISR_NOT_PAGE;

    /* Next: didPostpone = typeof postponed === 'string', so "" postpones too. */
    post = json_object_get(val, "postponed");
    if (json_is_string(post))
        return ISR_POSTPONED;
    if (post != NULL && !json_is_null(post))
        return ISR_MALFORMED;

    html = json_object_get(val, "html");
    if (html == NULL || json_is_null(html))
        return ISR_NO_HTML;
    if (!json_is_string(html))
        return ISR_MALFORMED;
    if (json_string_length(html) == 0)
        return ISR_NO_HTML;
    if (json_string_length(html) > conf->max_body)
        return ISR_TOO_BIG;
    e->body = json_string_value(html);
    e->body_len = json_string_length(html);
    for (size_t i = 0; i < e->body_len && !e->body_has_ctl; i++) {
        unsigned char ch = (unsigned char)e->body[i];

        e->body_has_ctl = (ch < 0x20 && ch != '\t') || ch == 0x7f;
    }

    /* `if (cachedData.status)`: absent, null or 0 keep 200. */
    status = json_object_get(val, "status");
    e->status = 200;
    if (status != NULL && !json_is_null(status)) {
        if (!json_is_integer(status))
            return ISR_MALFORMED;
        st = json_integer_value(status);
        if (st != 0)
            e->status = st >= 100 && st <= 999 ? (int)st : -1;
    }
    /* 200 and a notFound() 404 are what ISR pages hold. Redirect and error
     * statuses, and any status on a Pages Router entry (whose handler does
     * not replay it), go to the origin. */
    if (e->status != 200 && (e->kind != ISR_APP_PAGE || e->status != 404))
        return e->status < 0 ? ISR_MALFORMED : ISR_UNSUPPORTED;

    /* The handler decodes these with Buffer.from(..., 'base64'): other types
     * throw there, and a throw is a miss. */
    rsc = json_object_get(val, "rscData");
    if (rsc != NULL && !json_is_null(rsc)) {
        if (!json_is_string(rsc))
            return ISR_MALFORMED;
        e->has_rsc = true;
    }
    seg = json_object_get(val, "segmentData");
    if (seg != NULL && !json_is_null(seg)) {
        if (!json_is_object(seg))
            return ISR_MALFORMED;
        json_object_foreach(seg, k, x)
        {
            if (!json_is_string(x))
                return ISR_MALFORMED;
        }
        e->has_segments = true;
    }
    if ((err = decode_payloads(e, rsc, seg)) != ISR_OK)
        return err;
    /* The base64 text is not needed any more: the decoded bytes are 3/4 of it. */
    if (e->has_rsc)
        json_object_del(val, "rscData");
    if (e->has_segments)
        json_object_del(val, "segmentData");
    /* registerInitialCache entries also carry the payload as text: unused. */
    json_object_del(val, "pageData");

    if ((err = parse_headers(e, json_object_get(val, "headers"))) != ISR_OK)
        return err;
    /* The Pages Router handler does not replay value.headers on a hit. */
    if (e->kind == ISR_PAGES)
        e->nheaders = 0;
    return ISR_OK;
}

static int encode_one(struct isr_entry *e, const void *in, size_t len, size_t min,
                      struct isr_coded *out, isr_encoder *enc, void *ud)
{
    unsigned char *data;
    size_t n;

    if (out->data || len < min)
        return 0;
    if (enc(in, len, &data, &n, ud) < 0)
        return -1;
    out->data = data;
    out->len = n;
    e->mem += n + 16;
    return 0;
}

int isr_entry_encode(struct isr_entry *e, isr_encoder *enc, void *ud)
{
    int rc = encode_one(e, e->body, e->body_len, ISR_COMPRESS_MIN, &e->body_gz, enc, ud);

    if (e->rsc && encode_one(e, e->rsc, e->rsc_len, 0, &e->rsc_gz, enc, ud) < 0)
        rc = -1;
    for (size_t i = 0; e->segments && i < e->nsegments; i++) {
        struct isr_segment *sg = &e->priv->segs[i];

        if (encode_one(e, sg->data, sg->len, 0, &sg->gz, enc, ud) < 0)
            rc = -1;
    }
    return rc;
}

void isr_entry_free(struct isr_entry *e)
{
    if (e == NULL)
        return;
    free((void *)e->body_gz.data);
    free((void *)e->rsc_gz.data);
    for (size_t i = 0; e->priv->segs && i < e->nsegments; i++)
        free((void *)e->priv->segs[i].gz.data);
    json_decref(e->priv->root);
    free(e->priv->tagcopy);
    free(e->priv->payloads);
    free(e->priv->segs);
    free(e);
}

enum isr_err isr_entry_parse(const char *buf, size_t len, const struct isr_conf *conf,
                             struct isr_entry **out)
{
    static const struct isr_conf defaults = ISR_CONF_DEFAULT;
    struct isr_entry *e;
    json_error_t jerr;
    json_t *root;
    int64_t units;
    uint64_t hash;
    enum isr_err err;

    *out = NULL;
    if (conf == NULL)
        conf = &defaults;
    if (len > conf->max_value)
        return ISR_TOO_BIG;
    if (!json_containers_ok(buf, len, MAX_DEPTH, SIZE_MAX))
        return ISR_MALFORMED;
    /* JSON.parse keeps the last of duplicate keys; rejecting them only turns a
     * doubtful entry into a miss. NULs are legal in a JS string. */
    root = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (root == NULL)
        return ISR_MALFORMED;
    if ((e = calloc(1, sizeof(*e) + sizeof(*e->priv))) == NULL) {
        json_decref(root);
        return ISR_NOMEM;
    }
    e->priv = (struct isr_entry_priv *)(e + 1);
    e->priv->root = root;
    e->tags = e->priv->tags;
    e->headers = e->priv->hdrs;

    err = ISR_MALFORMED;
    /* `if (!cacheValue) return null`: JSON null or any non-object is a miss. */
    if (!json_is_object(root))
        goto fail;
    if (!get_int(root, "lastModified", 1, JS_MAX_SAFE, &e->last_modified))
        goto fail;
    /* "tags" first, then x-next-cache-tags while reading the value: for
     * APP_PAGE the handler made the former from the latter. */
    if ((err = parse_tags(e, json_object_get(root, "tags"))) != ISR_OK)
        goto fail;
    if ((err = parse_value(e, json_object_get(root, "value"), conf)) != ISR_OK)
        goto fail;
    if ((err = parse_lifespan(e, json_object_get(root, "lifespan"))) != ISR_OK)
        goto fail;

    units = utf16_fnv((const unsigned char *)e->body, e->body_len, &hash);
    if (units < 0) {
        err = ISR_MALFORMED; /* jansson validated UTF-8 already: defensive */
        goto fail;
    }
    e->body_units = (size_t)units;
    make_etag(hash, (uint64_t)units, e->etag);
    /* What stays in memory beside the fixed struct: the html, headers and
     * tags in the JSON tree (jansson's per-value overhead counted roughly),
     * and the decoded payloads counted in decode_payloads(). */
    e->mem += e->body_len + 64;
    for (size_t i = 0; i < e->ntags; i++)
        e->mem += strlen(e->tags[i]) + 64;
    for (size_t i = 0; i < e->nheaders; i++)
        e->mem += strlen(e->headers[i].name) + e->headers[i].value_len + 128;
    *out = e;
    return ISR_OK;
fail:
    isr_entry_free(e);
    return err;
}

/* ---- freshness ---------------------------------------------------------------- */

int64_t isr_tag_time(const char *s, size_t len)
{
    size_t i = 0;
    bool neg = false, digits = false;
    int64_t v = 0;

    /* parseInt trims StrWhiteSpaceChar; only the ASCII ones matter here. */
    while (i < len && (s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r')))
        i++;
    if (i < len && (s[i] == '+' || s[i] == '-'))
        neg = s[i++] == '-';
    for (; i < len && s[i] >= '0' && s[i] <= '9'; i++) {
        int d = s[i] - '0';

        digits = true;
        v = v > (INT64_MAX - d) / 10 ? INT64_MAX : v * 10 + d;
    }
    if (!digits)
        return ISR_TAG_NONE; /* NaN: `NaN > lastModified` is false */
    return neg ? -v : v;
}

enum isr_state isr_state(const struct isr_entry *e, const struct isr_conf *conf, int64_t now_ms,
                         const int64_t *tag_times, size_t ntimes)
{
    static const struct isr_conf defaults = ISR_CONF_DEFAULT;
    /* Math.floor(Date.now() / 1e3), also right for times before 1970. */
    int64_t now_s = now_ms / 1000 - (now_ms % 1000 < 0);

    if (conf == NULL)
        conf = &defaults;
    if (e->lifespan.expire_at < now_s)
        return ISR_EXPIRED;
    /* last_modified and revalidate are below 2^53 ms: no overflow there;
     * conf->expire is only bounded by the caller. */
    if (e->lifespan.revalidate > 0 && conf->expire > 0 &&
        conf->expire <= (INT64_MAX - e->last_modified) / 1000 &&
        e->last_modified + conf->expire * 1000 < now_ms)
        return ISR_EXPIRED;
    for (size_t i = 0; i < ntimes && i < e->ntags; i++)
        if (tag_times[i] != ISR_TAG_NONE && tag_times[i] > e->last_modified)
            return ISR_REVALIDATED;
    if (e->lifespan.revalidate > 0 && e->last_modified + e->lifespan.revalidate * 1000 < now_ms)
        return ISR_STALE;
    return ISR_FRESH;
}

/* ---- response headers ------------------------------------------------------------ */

static void put(struct isr_headers *o, const char *name, const char *value)
{
    if (o->n < ISR_MAX_HEADERS) {
        o->h[o->n].name = name;
        o->h[o->n].value = value;
        o->h[o->n].value_len = strlen(value);
        o->n++;
    }
}

/* res.appendHeader() on a name already set keeps one slot in Node's header
 * map: its lines come out together, where the first was, under the first
 * spelling (seen with x-nextjs-prerender twice on 16.3.7 pathname entries). */
static void append(struct isr_headers *o, const struct isr_header *h)
{
    size_t at = o->n, i;
    const char *name = h->name;

    if (o->n >= ISR_MAX_HEADERS)
        return;
    for (i = o->n; i-- > 0;) {
        if (strcasecmp(o->h[i].name, h->name) == 0) {
            if (at == o->n)
                at = i + 1;
            name = o->h[i].name;
        }
    }
    memmove(&o->h[at + 1], &o->h[at], (o->n - at) * sizeof(o->h[0]));
    o->h[at] = *h;
    o->h[at].name = name;
    o->n++;
}

/* lib/cache-control.ts getCacheControlHeader(); revalidate: false becomes
 * { revalidate: CACHE_ONE_YEAR_SECONDS, expire: undefined } in the handler. */
static void cache_control(const struct isr_entry *e, const struct isr_conf *conf, char *buf,
                          size_t size)
{
    long long r = e->lifespan.revalidate;

    if (r == 0)
        snprintf(buf, size, "s-maxage=%d", ISR_ONE_YEAR);
    else if (conf->expire > 0 && r < conf->expire)
        snprintf(buf, size, "s-maxage=%lld, stale-while-revalidate=%lld", r,
                 (long long)conf->expire - r);
    else
        snprintf(buf, size, "s-maxage=%lld", r);
}

#define APP_VARY "rsc, next-router-state-tree, next-router-prefetch, next-router-segment-prefetch"

int isr_headers(const struct isr_entry *e, enum isr_state st, bool not_modified,
                const struct isr_conf *conf, struct isr_headers *out)
{
    static const struct isr_conf defaults = ISR_CONF_DEFAULT;
    const struct isr_entry_priv *p = e->priv;
    const char *cache = st == ISR_FRESH ? "HIT" : "STALE";
    bool ae;

    if (conf == NULL)
        conf = &defaults;
    /* compression adds Vary when it looks at a compressible body: not on a
     * 304, which has no Content-Type by then. */
    ae = conf->compress && !not_modified;
    out->n = 0;
    if (st != ISR_FRESH && st != ISR_STALE)
        return -1;
    cache_control(e, conf, out->cache_control, sizeof(out->cache_control));

    if (e->kind == ISR_APP_PAGE) {
        /* Order of app-page-runtime.js: Vary (getVaryHeader, set before the
         * cache lookup), x-nextjs-cache, x-nextjs-prerender, the entry's
         * headers, then sendRenderResult(): X-Powered-By, Cache-Control
         * unless already set, ETag, Content-Type unless already set. */
        put(out, "Vary", ae ? APP_VARY ", Accept-Encoding" : APP_VARY);
        put(out, "x-nextjs-cache", cache);
        put(out, "x-nextjs-prerender", "1");
        for (size_t i = 0; i < e->nheaders; i++)
            append(out, &e->headers[i]);
        if (conf->powered_by)
            put(out, "X-Powered-By", "Next.js");
        if (!p->has_cache_control)
            put(out, "Cache-Control", out->cache_control);
        put(out, "ETag", e->etag);
        if (!not_modified && !p->has_content_type)
            put(out, "Content-Type", "text/html; charset=utf-8");
    } else {
        /* pages-handler.js: x-nextjs-cache, Cache-Control, then the same
         * sendRenderResult(); compression's Vary comes last, as a new header.
         * No Pages Router page in the fixture: this order is from the source. */
        put(out, "x-nextjs-cache", cache);
        put(out, "Cache-Control", out->cache_control);
        if (conf->powered_by)
            put(out, "X-Powered-By", "Next.js");
        put(out, "ETag", e->etag);
        if (!not_modified)
            put(out, "Content-Type", "text/html; charset=utf-8");
        if (ae)
            put(out, "Vary", "Accept-Encoding");
    }
    return 0;
}

#define RSC_CONTENT_TYPE "text/x-component"

int isr_variant_headers(const struct isr_entry *e, enum isr_variant v, enum isr_state st,
                        bool not_modified, const struct isr_conf *conf, struct isr_headers *out)
{
    static const struct isr_conf defaults = ISR_CONF_DEFAULT;
    const struct isr_entry_priv *p = e->priv;
    const char *cache = st == ISR_FRESH ? "HIT" : "STALE";

    if (v == ISR_HTML)
        return isr_headers(e, st, not_modified, conf, out);
    if (conf == NULL)
        conf = &defaults;
    out->n = 0;
    /* No ETag on these answers, so no 304 either. Only App Router pages
     * have RSC payloads; captured from 200 and notFound() 404 entries. */
    if ((st != ISR_FRESH && st != ISR_STALE) || not_modified || e->kind != ISR_APP_PAGE ||
        (e->status != 200 && e->status != 404))
        return -1;
    cache_control(e, conf, out->cache_control, sizeof(out->cache_control));
    /* compression adds Accept-Encoding: text/x-component is compressible. */
    put(out, "Vary", conf->compress ? APP_VARY ", Accept-Encoding" : APP_VARY);
    put(out, "x-nextjs-cache", cache);
    put(out, "x-nextjs-prerender", "1");
    if (v == ISR_SEGMENT) {
        /* The segment branch returns before the entry's headers are replayed. */
        put(out, "x-nextjs-postponed", "2");
        put(out, "Cache-Control", out->cache_control);
        put(out, "Content-Type", RSC_CONTENT_TYPE);
        return 0;
    }
    for (size_t i = 0; i < e->nheaders; i++)
        append(out, &e->headers[i]);
    if (!p->has_cache_control)
        put(out, "Cache-Control", out->cache_control);
    if (!p->has_content_type)
        put(out, "Content-Type", RSC_CONTENT_TYPE);
    return 0;
}

int isr_rsc_status(const struct isr_entry *e, enum isr_variant v)
{
    return v == ISR_SEGMENT ? 200 : e->status;
}

const struct isr_segment *isr_segment_find(const struct isr_entry *e, const char *path, size_t len)
{
    for (size_t i = 0; i < e->nsegments; i++)
        if (e->segments[i].path_len == len && memcmp(e->segments[i].path, path, len) == 0)
            return &e->segments[i];
    return NULL;
}

/* ---- conditional requests: compiled/fresh -------------------------------------- */

static bool tok_eq(const char *t, size_t tl, const char *a, size_t al, const char *b, size_t bl)
{
    return tl == al + bl && memcmp(t, a, al) == 0 && memcmp(t + al, b, bl) == 0;
}

bool isr_if_none_match(const char *hdr, size_t len, const char *etag)
{
    size_t el = strlen(etag), start = 0, end = 0, i;

    if (len == 0)
        return false;
    if (len == 1 && hdr[0] == '*')
        return true;
    if (el == 0)
        return false;
    /* parseTokenList(): members split at ',', spaces (only 0x20) trimmed. */
    for (i = 0; i <= len; i++) {
        if (i < len && hdr[i] == ' ') {
            if (start == end)
                start = end = i + 1;
        } else if (i == len || hdr[i] == ',') {
            const char *t = hdr + start;
            size_t tl = end - start;

            /* match === etag || match === 'W/' + etag || 'W/' + match === etag */
            if (tok_eq(t, tl, "", 0, etag, el) || tok_eq(t, tl, "W/", 2, etag, el) ||
                tok_eq(etag, el, "W/", 2, t, tl))
                return true;
            start = end = i + 1;
        } else {
            end = i + 1;
        }
    }
    return false;
}

/* JS \s over a latin1 header string, as Node decodes header values. */
static bool js_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || c == 0xa0;
}

bool isr_no_cache(const char *hdr, size_t len)
{
    /* /(?:^|,)\s*?no-cache\s*?(?:,|$)/ */
    for (size_t i = 0; i + 8 <= len; i++) {
        size_t a, b;

        if (memcmp(hdr + i, "no-cache", 8) != 0)
            continue;
        for (a = i; a > 0 && js_space((unsigned char)hdr[a - 1]); a--)
            ;
        if (a > 0 && hdr[a - 1] != ',')
            continue;
        for (b = i + 8; b < len && js_space((unsigned char)hdr[b]); b++)
            ;
        if (b == len || hdr[b] == ',')
            return true;
    }
    return false;
}
