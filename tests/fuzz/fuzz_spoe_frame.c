/* libFuzzer target for the SPOP frame decoder: the input is one frame as
 * received, without its 4-byte length prefix.
 *
 * Besides "no crash, no sanitizer report", it checks properties that must
 * hold for any input and abort()s when one does not:
 *   - the frame metadata re-encodes to exactly the input bytes (the varint
 *     encoding is bijective, so a decoder accepting a non-canonical form or
 *     misreading one shows up here);
 *   - every decoded value re-encodes with spoe_put_data and decodes back to
 *     the same value, byte for byte when the value is representable;
 *   - spoe_notify_validate agrees with message iteration, and a message
 *     yields exactly its nargs arguments. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spoe.h"

/* Reads every byte so that ASan flags a pointer/length pair reaching outside
 * the input; volatile so that the reads are not optimised away. */
static void touch(const void *p, size_t len)
{
    const volatile uint8_t *b = p;
    volatile uint8_t acc = 0;

    for (size_t i = 0; i < len; i++)
        acc ^= b[i];
    (void)acc;
}

static void check(int cond)
{
    if (!cond)
        abort();
}

static int same_data(const struct spoe_data *a, const struct spoe_data *b)
{
    if (a->type != b->type)
        return 0;
    switch (a->type) {
    case SPOE_NULL:
        return 1;
    case SPOE_BOOL:
        return a->u.b == b->u.b;
    case SPOE_INT32:
        return a->u.i32 == b->u.i32;
    case SPOE_UINT32:
        return a->u.u32 == b->u.u32;
    case SPOE_INT64:
        return a->u.i64 == b->u.i64;
    case SPOE_UINT64:
        return a->u.u64 == b->u.u64;
    case SPOE_IPV4:
        return memcmp(&a->u.v4, &b->u.v4, 4) == 0;
    case SPOE_IPV6:
        return memcmp(&a->u.v6, &b->u.v6, 16) == 0;
    case SPOE_STR:
    case SPOE_BIN:
        return a->u.s.len == b->u.s.len &&
               (a->u.s.len == 0 || memcmp(a->u.s.ptr, b->u.s.ptr, a->u.s.len) == 0);
    }
    return 0;
}

/* Whether re-encoding must reproduce the original bytes: true unless an
 * INT32/UINT32 varint carried a value outside the 32-bit range (the decoder
 * keeps only the low bits, so the value, not the bytes, round-trips). */
static int canonical(const uint8_t *orig, size_t olen, const struct spoe_data *d)
{
    uint64_t v;

    if (d->type != SPOE_INT32 && d->type != SPOE_UINT32)
        return 1;
    check(spoe_varint_decode(orig + 1, olen - 1, &v) == (int)(olen - 1));
    if (d->type == SPOE_UINT32)
        return v <= UINT32_MAX;
    return (int64_t)v >= INT32_MIN && (int64_t)v <= INT32_MAX;
}

/* `orig`/`olen`: the bytes the value was decoded from. `scratch` holds at
 * least olen + SPOE_VARINT_MAX + 1 bytes. */
static void roundtrip(const struct spoe_data *d, const uint8_t *orig, size_t olen, uint8_t *scratch,
                      size_t cap)
{
    struct spoe_wbuf w;
    struct spoe_cur c;
    struct spoe_data back;

    if (d->type == SPOE_STR || d->type == SPOE_BIN)
        touch(d->u.s.ptr, d->u.s.len);

    spoe_wbuf_init(&w, scratch, cap);
    spoe_put_data(&w, d);
    check(!w.overflow);
    c.p = scratch;
    c.end = scratch + w.len;
    check(spoe_get_data(&c, &back) == 0);
    check(c.p == c.end);
    check(same_data(d, &back));

    /* The type byte's flag nibble is not kept (except the BOOL value bit). */
    if (canonical(orig, olen, d)) {
        check(w.len == olen);
        check((scratch[0] & 0x0f) == (orig[0] & 0x0f));
        check(memcmp(scratch + 1, orig + 1, olen - 1) == 0);
    }
}

/* Iterates a KV-LIST (HELLO, DISCONNECT payloads) as far as it is valid. */
static void walk_kv(const uint8_t *p, size_t len, uint8_t *scratch, size_t cap)
{
    struct spoe_cur c = {p, p + len};
    const char *n;
    size_t nl;
    struct spoe_data d;
    int r;

    while ((r = spoe_kv_next(&c, &n, &nl, &d)) == 1) {
        const uint8_t *dstart = (const uint8_t *)n + nl;

        touch(n, nl);
        check(dstart < c.p && c.p <= p + len);
        roundtrip(&d, dstart, (size_t)(c.p - dstart), scratch, cap);
    }
    check(r == 0 || r == -1);
}

static void walk_notify(const uint8_t *p, size_t len, uint8_t *scratch, size_t cap)
{
    struct spoe_cur c = {p, p + len};
    struct spoe_msg m;
    int r, valid = spoe_notify_validate(p, len);

    check(valid == 0 || valid == -1);
    while ((r = spoe_msg_next(&c, &m)) == 1) {
        const char *n;
        size_t nl;
        struct spoe_data d;
        unsigned count = 0;

        touch(m.name, m.name_len);
        check(m.args.end == c.p);
        for (;;) {
            const uint8_t *before = m.args.p;

            if (spoe_arg_next(&m, &n, &nl, &d) != 1)
                break;
            touch(n, nl);
            check(m.args.p > before);
            roundtrip(&d, (const uint8_t *)n + nl, (size_t)(m.args.p - ((const uint8_t *)n + nl)),
                      scratch, cap);
            count++;
        }
        check(count == m.nargs);
        check(m.args.p == m.args.end);
    }
    check(r == 0 || r == -1);
    check((r == 0) == (valid == 0));
}

static void walk_hello(const uint8_t *p, size_t len)
{
    struct spoe_hello h;
    enum spoe_status st = spoe_hello_parse(p, len, &h);

    switch (st) {
    case SPOE_ST_NONE:
        check(h.versions != NULL && h.caps != NULL);
        touch(h.versions, h.versions_len);
        touch(h.caps, h.caps_len);
        if (h.engine_id)
            touch(h.engine_id, h.engine_id_len);
        check(spoe_version_ok(h.versions, h.versions_len));
        (void)spoe_list_has(h.caps, h.caps_len, "pipelining");
        (void)spoe_list_has(h.caps, h.caps_len, "async");
        (void)spoe_list_has(h.caps, h.caps_len, "fragmentation");
        break;
    case SPOE_ST_INVALID:
    case SPOE_ST_NO_VSN:
    case SPOE_ST_NO_FRAME_SIZE:
    case SPOE_ST_NO_CAP:
    case SPOE_ST_BAD_VSN:
        break;
    default:
        abort(); /* not a status the HELLO parser may return */
    }
    check(spoe_status_str(st) != NULL);
}

/* The metadata must re-encode to exactly the input. */
static void reencode_frame(const uint8_t *data, size_t size, const struct spoe_frame *f,
                           uint8_t *scratch, size_t cap)
{
    struct spoe_wbuf w;

    spoe_wbuf_init(&w, scratch, cap);
    spoe_frame_begin(&w, f->type, f->flags, f->stream_id, f->frame_id);
    spoe_put_bytes(&w, f->payload, f->len);
    check(spoe_frame_end(&w, 0, UINT32_MAX) == (long)(size + 4));
    check(scratch[0] == (uint8_t)(size >> 24) && scratch[1] == (uint8_t)(size >> 16) &&
          scratch[2] == (uint8_t)(size >> 8) && scratch[3] == (uint8_t)size);
    check(memcmp(scratch + 4, data, size) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct spoe_frame f;
    /* Room for a whole frame re-encoded with its prefix, or one value. */
    size_t cap = size + 4 + SPOE_HDR_MAX;
    uint8_t *scratch;

    /* Nothing to decode; also keeps a possible (NULL, 0) input away from the
     * codec, whose `p + len` would then be UB. */
    if (size == 0)
        return 0;
    scratch = malloc(cap);
    if (!scratch)
        return 0;

    /* A varint at the start: decode and re-encode must agree byte for byte. */
    {
        uint64_t v;
        uint8_t vb[SPOE_VARINT_MAX];
        int n = spoe_varint_decode(data, size, &v);

        if (n > 0) {
            check(spoe_varint_encode(v, vb, sizeof(vb)) == n);
            check(memcmp(vb, data, (size_t)n) == 0);
        }
    }

    if (spoe_frame_parse(data, size, &f) != SPOE_ST_NONE) {
        free(scratch);
        return 0;
    }
    check(f.payload >= data && f.payload + f.len == data + size);
    reencode_frame(data, size, &f, scratch, cap);
    touch(f.payload, f.len);

    switch (f.type) {
    case SPOE_FRM_HAPROXY_HELLO:
        walk_hello(f.payload, f.len);
        walk_kv(f.payload, f.len, scratch, cap);
        break;
    case SPOE_FRM_NOTIFY:
    case SPOE_FRM_UNSET: /* a fragment; reassembled payloads are NOTIFY ones */
        walk_notify(f.payload, f.len, scratch, cap);
        break;
    case SPOE_FRM_HAPROXY_DISCONNECT:
    case SPOE_FRM_AGENT_HELLO:
    case SPOE_FRM_AGENT_DISCONNECT:
        walk_kv(f.payload, f.len, scratch, cap);
        break;
    default:
        /* Unknown or agent-only types: the engine skips or rejects them,
         * but the parsers must still survive their payloads. */
        walk_kv(f.payload, f.len, scratch, cap);
        walk_notify(f.payload, f.len, scratch, cap);
        break;
    }
    free(scratch);
    return 0;
}
