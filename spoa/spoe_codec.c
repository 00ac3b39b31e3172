/* SPOP 2.0 codec: varints, typed data, frames, HELLO and NOTIFY parsing, ACK
 * encoding. No allocation; every read is bounded by an end pointer. */
#include "spoe.h"

#include <string.h>

int spoe_varint_encode(uint64_t v, uint8_t *buf, size_t room)
{
    size_t n = 0;

    if (room == 0)
        return -1;
    if (v < 240) {
        buf[0] = (uint8_t)v;
        return 1;
    }
    buf[n++] = (uint8_t)(v | 240);
    v = (v - 240) >> 4;
    while (v >= 128) {
        if (n >= room)
            return -1;
        buf[n++] = (uint8_t)(v | 128);
        v = (v - 128) >> 7;
    }
    if (n >= room)
        return -1;
    buf[n++] = (uint8_t)v;
    return (int)n;
}

int spoe_varint_decode(const uint8_t *p, size_t len, uint64_t *v)
{
    uint64_t r;
    unsigned shift = 4;
    size_t n = 1;

    if (len == 0)
        return -1;
    r = p[0];
    if (r < 240) {
        *v = r;
        return 1;
    }
    for (;;) {
        uint64_t b, add;

        if (n >= len || n >= SPOE_VARINT_MAX)
            return -1;
        b = p[n++];
        /* A continuation byte must not carry bits beyond 64. */
        if (shift >= 64 || (shift > 57 && (b >> (64 - shift)) != 0))
            return -1;
        add = b << shift;
        if (r + add < r)
            return -1;
        r += add;
        shift += 7;
        if (b < 128)
            break;
    }
    *v = r;
    return (int)n;
}

int spoe_get_varint(struct spoe_cur *c, uint64_t *v)
{
    int n = spoe_varint_decode(c->p, (size_t)(c->end - c->p), v);

    if (n < 0)
        return -1;
    c->p += n;
    return 0;
}

int spoe_get_str(struct spoe_cur *c, const char **s, size_t *len)
{
    struct spoe_cur t = *c;
    uint64_t l;

    if (spoe_get_varint(&t, &l) < 0 || l > (uint64_t)(t.end - t.p))
        return -1;
    *s = (const char *)t.p;
    *len = (size_t)l;
    c->p = t.p + l;
    return 0;
}

int spoe_get_data(struct spoe_cur *c, struct spoe_data *d)
{
    struct spoe_cur t = *c;
    uint64_t v;
    uint8_t tb;

    if (t.p >= t.end)
        return -1;
    tb = *t.p++;
    memset(d, 0, sizeof(*d));
    d->type = (enum spoe_type)(tb & 0x0f);
    switch (d->type) {
    case SPOE_NULL:
        break;
    case SPOE_BOOL:
        d->u.b = (tb & 0x10) != 0;
        break;
    case SPOE_INT32:
        /* Negative values arrive sign-extended to 64 bits; anything else
         * outside the 32-bit range is a lie about the type. */
        if (spoe_get_varint(&t, &v) < 0 || (int64_t)v < INT32_MIN || (int64_t)v > INT32_MAX)
            return -1;
        d->u.i32 = (int32_t)(int64_t)v;
        break;
    case SPOE_UINT32:
        if (spoe_get_varint(&t, &v) < 0 || v > UINT32_MAX)
            return -1;
        d->u.u32 = (uint32_t)v;
        break;
    case SPOE_INT64:
        if (spoe_get_varint(&t, &v) < 0)
            return -1;
        d->u.i64 = (int64_t)v;
        break;
    case SPOE_UINT64:
        if (spoe_get_varint(&t, &v) < 0)
            return -1;
        d->u.u64 = v;
        break;
    case SPOE_IPV4:
        if (t.end - t.p < 4)
            return -1;
        memcpy(&d->u.v4, t.p, 4);
        t.p += 4;
        break;
    case SPOE_IPV6:
        if (t.end - t.p < 16)
            return -1;
        memcpy(&d->u.v6, t.p, 16);
        t.p += 16;
        break;
    case SPOE_STR:
    case SPOE_BIN:
        if (spoe_get_str(&t, &d->u.s.ptr, &d->u.s.len) < 0)
            return -1;
        break;
    default:
        return -1;
    }
    *c = t;
    return 0;
}

int spoe_kv_next(struct spoe_cur *c, const char **name, size_t *nlen, struct spoe_data *val)
{
    struct spoe_cur t = *c;

    if (t.p >= t.end)
        return 0;
    if (spoe_get_str(&t, name, nlen) < 0 || spoe_get_data(&t, val) < 0)
        return -1;
    *c = t;
    return 1;
}

int spoe_frame_parse(const uint8_t *buf, size_t len, struct spoe_frame *f)
{
    struct spoe_cur c;

    if (len < 7) /* type, flags, two 1-byte ids at the least */
        return SPOE_ST_INVALID;
    c.p = buf;
    c.end = buf + len;
    f->type = buf[0];
    f->flags = (uint32_t)buf[1] << 24 | (uint32_t)buf[2] << 16 | (uint32_t)buf[3] << 8 | buf[4];
    c.p += 5;
    if (spoe_get_varint(&c, &f->stream_id) < 0 || spoe_get_varint(&c, &f->frame_id) < 0)
        return SPOE_ST_INVALID;
    f->payload = c.p;
    f->len = (size_t)(c.end - c.p);
    return SPOE_ST_NONE;
}

static bool name_is(const char *n, size_t nlen, const char *lit)
{
    return nlen == strlen(lit) && memcmp(n, lit, nlen) == 0;
}

/* A cursor over [p, p+len) that is valid for (NULL, 0) too. */
static struct spoe_cur cur(const uint8_t *p, size_t len)
{
    struct spoe_cur c = {p, len ? p + len : p};

    return c;
}

enum spoe_status spoe_hello_parse(const uint8_t *payload, size_t len, struct spoe_hello *h)
{
    struct spoe_cur c = cur(payload, len);
    bool has_vsn = false, has_mfs = false, has_caps = false;
    const char *n;
    size_t nl;
    struct spoe_data d;
    int r;

    memset(h, 0, sizeof(*h));
    while ((r = spoe_kv_next(&c, &n, &nl, &d)) == 1) {
        if (name_is(n, nl, "supported-versions")) {
            if (d.type != SPOE_STR)
                return SPOE_ST_INVALID;
            h->versions = d.u.s.ptr;
            h->versions_len = d.u.s.len;
            has_vsn = true;
        } else if (name_is(n, nl, "max-frame-size")) {
            /* HAProxy sends UINT32; accept any non-negative integer type. */
            if (d.type == SPOE_UINT32)
                h->max_frame_size = d.u.u32;
            else if (d.type == SPOE_INT32 && d.u.i32 >= 0)
                h->max_frame_size = (uint32_t)d.u.i32;
            else if (d.type == SPOE_UINT64 && d.u.u64 <= UINT32_MAX)
                h->max_frame_size = (uint32_t)d.u.u64;
            else if (d.type == SPOE_INT64 && d.u.i64 >= 0 && d.u.i64 <= UINT32_MAX)
                h->max_frame_size = (uint32_t)d.u.i64;
            else
                return SPOE_ST_INVALID;
            has_mfs = true;
        } else if (name_is(n, nl, "capabilities")) {
            if (d.type != SPOE_STR)
                return SPOE_ST_INVALID;
            h->caps = d.u.s.ptr;
            h->caps_len = d.u.s.len;
            has_caps = true;
        } else if (name_is(n, nl, "healthcheck")) {
            if (d.type != SPOE_BOOL)
                return SPOE_ST_INVALID;
            h->healthcheck = d.u.b;
        } else if (name_is(n, nl, "engine-id")) {
            if (d.type != SPOE_STR)
                return SPOE_ST_INVALID;
            h->engine_id = d.u.s.ptr;
            h->engine_id_len = d.u.s.len;
        }
        /* Unknown items are ignored, as the spec asks. */
    }
    if (r < 0)
        return SPOE_ST_INVALID;
    if (!has_vsn)
        return SPOE_ST_NO_VSN;
    if (!has_mfs)
        return SPOE_ST_NO_FRAME_SIZE;
    if (!has_caps)
        return SPOE_ST_NO_CAP;
    if (!spoe_version_ok(h->versions, h->versions_len))
        return SPOE_ST_BAD_VSN;
    return SPOE_ST_NONE;
}

/* Iterates a comma-separated list, trimming spaces and tabs. */
static bool list_next(const char **p, const char *end, const char **item, size_t *len)
{
    const char *s = *p, *e;

    while (s < end && (*s == ' ' || *s == '\t' || *s == ','))
        s++;
    if (s >= end)
        return false;
    e = s;
    while (e < end && *e != ',')
        e++;
    *p = e;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    *item = s;
    *len = (size_t)(e - s);
    return true;
}

bool spoe_list_has(const char *list, size_t len, const char *item)
{
    const char *p = list, *end = len ? list + len : list, *it;
    size_t il, want = strlen(item);

    while (list_next(&p, end, &it, &il))
        if (il == want && memcmp(it, item, il) == 0)
            return true;
    return false;
}

bool spoe_version_ok(const char *list, size_t len)
{
    const char *p = list, *end = len ? list + len : list, *it;
    size_t il;

    /* "2.x" announces SPOP 2.0 up to 2.x: any 2.<digits> version includes ours. */
    while (list_next(&p, end, &it, &il)) {
        size_t i;

        if (il < 3 || it[0] != '2' || it[1] != '.')
            continue;
        for (i = 2; i < il && it[i] >= '0' && it[i] <= '9'; i++)
            ;
        if (i == il)
            return true;
    }
    return false;
}

int spoe_msg_next(struct spoe_cur *c, struct spoe_msg *m)
{
    struct spoe_cur t = *c;
    unsigned i;

    if (t.p >= t.end)
        return 0;
    if (spoe_get_str(&t, &m->name, &m->name_len) < 0 || t.p >= t.end)
        return -1;
    m->nargs = *t.p++;
    m->args.p = t.p;
    for (i = 0; i < m->nargs; i++) {
        const char *n;
        size_t nl;
        struct spoe_data d;

        if (spoe_get_str(&t, &n, &nl) < 0 || spoe_get_data(&t, &d) < 0)
            return -1;
    }
    m->args.end = t.p;
    *c = t;
    return 1;
}

int spoe_arg_next(struct spoe_msg *m, const char **name, size_t *nlen, struct spoe_data *val)
{
    /* Already validated by spoe_msg_next: a failure here cannot happen, but
     * stop cleanly rather than trust that. */
    return spoe_kv_next(&m->args, name, nlen, val) == 1 ? 1 : 0;
}

int spoe_notify_validate(const uint8_t *payload, size_t len)
{
    struct spoe_cur c = cur(payload, len);
    struct spoe_msg m;
    int r;

    while ((r = spoe_msg_next(&c, &m)) == 1)
        ;
    return r;
}

void spoe_wbuf_init(struct spoe_wbuf *w, uint8_t *buf, size_t cap)
{
    w->buf = buf;
    w->cap = cap;
    w->len = 0;
    w->overflow = false;
}

void spoe_put_bytes(struct spoe_wbuf *w, const void *p, size_t len)
{
    if (w->overflow || len > w->cap - w->len) {
        w->overflow = true;
        return;
    }
    if (len)
        memcpy(w->buf + w->len, p, len);
    w->len += len;
}

void spoe_put_varint(struct spoe_wbuf *w, uint64_t v)
{
    int n;

    if (w->overflow || w->cap == w->len) {
        w->overflow = true;
        return;
    }
    n = spoe_varint_encode(v, w->buf + w->len, w->cap - w->len);
    if (n < 0) {
        w->overflow = true;
        return;
    }
    w->len += (size_t)n;
}

void spoe_put_str(struct spoe_wbuf *w, const char *s, size_t len)
{
    spoe_put_varint(w, len);
    spoe_put_bytes(w, s, len);
}

static void put_byte(struct spoe_wbuf *w, uint8_t b)
{
    spoe_put_bytes(w, &b, 1);
}

void spoe_put_data(struct spoe_wbuf *w, const struct spoe_data *d)
{
    switch (d->type) {
    case SPOE_NULL:
        put_byte(w, SPOE_NULL);
        break;
    case SPOE_BOOL:
        put_byte(w, (uint8_t)(SPOE_BOOL | (d->u.b ? 0x10 : 0)));
        break;
    case SPOE_INT32:
        put_byte(w, SPOE_INT32);
        /* Negative values travel as their 64-bit two's complement, as HAProxy does. */
        spoe_put_varint(w, (uint64_t)(int64_t)d->u.i32);
        break;
    case SPOE_UINT32:
        put_byte(w, SPOE_UINT32);
        spoe_put_varint(w, d->u.u32);
        break;
    case SPOE_INT64:
        put_byte(w, SPOE_INT64);
        spoe_put_varint(w, (uint64_t)d->u.i64);
        break;
    case SPOE_UINT64:
        put_byte(w, SPOE_UINT64);
        spoe_put_varint(w, d->u.u64);
        break;
    case SPOE_IPV4:
        put_byte(w, SPOE_IPV4);
        spoe_put_bytes(w, &d->u.v4, 4);
        break;
    case SPOE_IPV6:
        put_byte(w, SPOE_IPV6);
        spoe_put_bytes(w, &d->u.v6, 16);
        break;
    case SPOE_STR:
    case SPOE_BIN:
        put_byte(w, (uint8_t)d->type);
        spoe_put_str(w, d->u.s.ptr, d->u.s.len);
        break;
    default:
        w->overflow = true; /* not a type we can encode: fail the frame */
        break;
    }
}

void spoe_put_kv(struct spoe_wbuf *w, const char *name, const struct spoe_data *d)
{
    spoe_put_str(w, name, strlen(name));
    spoe_put_data(w, d);
}

void spoe_put_set_var(struct spoe_wbuf *w, enum spoe_scope scope, const char *name, size_t nlen,
                      const struct spoe_data *d)
{
    uint8_t hdr[3] = {SPOE_ACT_SET_VAR, 3, (uint8_t)scope};

    spoe_put_bytes(w, hdr, sizeof(hdr));
    spoe_put_str(w, name, nlen);
    spoe_put_data(w, d);
}

void spoe_put_unset_var(struct spoe_wbuf *w, enum spoe_scope scope, const char *name, size_t nlen)
{
    uint8_t hdr[3] = {SPOE_ACT_UNSET_VAR, 2, (uint8_t)scope};

    spoe_put_bytes(w, hdr, sizeof(hdr));
    spoe_put_str(w, name, nlen);
}

void spoe_frame_begin(struct spoe_wbuf *w, uint8_t type, uint32_t flags, uint64_t stream_id,
                      uint64_t frame_id)
{
    uint8_t h[9] = {0,
                    0,
                    0,
                    0,
                    type,
                    (uint8_t)(flags >> 24),
                    (uint8_t)(flags >> 16),
                    (uint8_t)(flags >> 8),
                    (uint8_t)flags};

    spoe_put_bytes(w, h, sizeof(h));
    spoe_put_varint(w, stream_id);
    spoe_put_varint(w, frame_id);
}

long spoe_frame_end(struct spoe_wbuf *w, size_t start, uint32_t max_frame)
{
    size_t flen;
    uint8_t *p;

    if (w->overflow || w->len < start + 4)
        return -1;
    flen = w->len - start - 4;
    if (flen > max_frame)
        return -1;
    p = w->buf + start;
    p[0] = (uint8_t)(flen >> 24);
    p[1] = (uint8_t)(flen >> 16);
    p[2] = (uint8_t)(flen >> 8);
    p[3] = (uint8_t)flen;
    return (long)(flen + 4);
}

const char *spoe_status_str(enum spoe_status st)
{
    switch (st) {
    case SPOE_ST_NONE:
        return "normal";
    case SPOE_ST_IO:
        return "I/O error";
    case SPOE_ST_TIMEOUT:
        return "a timeout occurred";
    case SPOE_ST_TOO_BIG:
        return "frame is too big";
    case SPOE_ST_INVALID:
        return "invalid frame received";
    case SPOE_ST_NO_VSN:
        return "version value not found";
    case SPOE_ST_NO_FRAME_SIZE:
        return "max-frame-size value not found";
    case SPOE_ST_NO_CAP:
        return "capabilities value not found";
    case SPOE_ST_BAD_VSN:
        return "unsupported version";
    case SPOE_ST_BAD_FRAME_SIZE:
        return "max-frame-size too big or too small";
    case SPOE_ST_FRAG_NOT_SUPPORTED:
        return "payload fragmentation is not supported";
    case SPOE_ST_INTERLACED_FRAMES:
        return "invalid interlaced frames";
    case SPOE_ST_FRAMEID_NOTFOUND:
        return "frame-id not found";
    case SPOE_ST_RES_ALLOC:
        return "resource allocation error";
    case SPOE_ST_UNKNOWN:
    default:
        return "an unknown error occurred";
    }
}
