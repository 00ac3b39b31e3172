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

#include <jansson.h>

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

/* ---- parsing ---------------------------------------------------------------- */

/* Nesting depth outside strings, without recursion. jansson checks the rest. */
static bool depth_ok(const char *s, size_t n)
{
    int depth = 0;
    bool in_str = false;

    for (size_t i = 0; i < n; i++) {
        char c = s[i];

        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            if (++depth > MAX_DEPTH)
                return false;
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return true;
}

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

    if ((err = parse_headers(e, json_object_get(val, "headers"))) != ISR_OK)
        return err;
    /* The Pages Router handler does not replay value.headers on a hit. */
    if (e->kind == ISR_PAGES)
        e->nheaders = 0;
    return ISR_OK;
}

void isr_entry_free(struct isr_entry *e)
{
    if (e == NULL)
        return;
    json_decref(e->priv->root);
    free(e->priv->tagcopy);
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
    if (!depth_ok(buf, len))
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
