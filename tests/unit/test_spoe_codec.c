/* Unit tests of the libspoe codec (spoa/spoe_codec.c) against byte-exact
 * vectors. Expected bytes are written out literally, never produced by the
 * encoder under test, so that an encoder bug cannot hide a decoder bug. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "spoe.h"

/* Literal byte strings: "B(...)" keeps the array and its length together. */
struct bytes {
    const uint8_t *p;
    size_t len;
};
/* clang-format off */
#define B(lit) {(const uint8_t *)(lit), sizeof(lit) - 1}
/* clang-format on */

/* ---- helpers --------------------------------------------------------------- */

/* Deterministic PRNG so that a failure reproduces. */
static uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

/* First value that needs k + 1 bytes, from the spec's table (k = 1..9):
 * T1 = 240, T(k+1) = T(k) + 16 * 128^k. Independent of the encoder. */
static uint64_t varint_threshold(int k)
{
    uint64_t t = 240;

    for (int i = 1; i < k; i++)
        t += UINT64_C(16) << (7 * i);
    return t;
}

static int varint_len(uint64_t v)
{
    int n = 1;

    while (n < SPOE_VARINT_MAX && v >= varint_threshold(n))
        n++;
    return n;
}

/* A heap copy of exactly len bytes, so that ASan flags any read past the end
 * of a truncated input (a cut inside a larger array would go unnoticed).
 * Plain malloc: cmocka's test_malloc pads blocks with guard bytes. */
static uint8_t *dup_exact(const uint8_t *p, size_t len)
{
    uint8_t *d = malloc(len ? len : 1);

    assert_non_null(d);
    if (len)
        memcpy(d, p, len);
    return d;
}

static void assert_data_equal(const struct spoe_data *a, const struct spoe_data *b)
{
    assert_int_equal(a->type, b->type);
    switch (a->type) {
    case SPOE_NULL:
        break;
    case SPOE_BOOL:
        assert_int_equal(a->u.b, b->u.b);
        break;
    case SPOE_INT32:
        assert_int_equal(a->u.i32, b->u.i32);
        break;
    case SPOE_UINT32:
        assert_int_equal(a->u.u32, b->u.u32);
        break;
    case SPOE_INT64:
        assert_int_equal(a->u.i64, b->u.i64);
        break;
    case SPOE_UINT64:
        assert_int_equal(a->u.u64, b->u.u64);
        break;
    case SPOE_IPV4:
        assert_memory_equal(&a->u.v4, &b->u.v4, 4);
        break;
    case SPOE_IPV6:
        assert_memory_equal(&a->u.v6, &b->u.v6, 16);
        break;
    case SPOE_STR:
    case SPOE_BIN:
        assert_int_equal(a->u.s.len, b->u.s.len);
        if (a->u.s.len)
            assert_memory_equal(a->u.s.ptr, b->u.s.ptr, a->u.s.len);
        break;
    default:
        fail_msg("unexpected type %d", (int)a->type);
    }
}

static void assert_str_equal_n(const char *s, size_t len, const char *want)
{
    assert_int_equal(len, strlen(want));
    if (len)
        assert_memory_equal(s, want, len);
}

/* ---- varints ----------------------------------------------------------------- */

struct varint_vec {
    uint64_t v;
    struct bytes enc;
};

static const struct varint_vec varint_vecs[] = {
    {0, B("\x00")},
    {1, B("\x01")},
    {239, B("\xef")},
    {240, B("\xf0\x00")},
    {300, B("\xfc\x03")},
    {2287, B("\xff\x7f")},
    {2288, B("\xf0\x80\x00")},
    {16380, B("\xfc\xf0\x06")},
    {264431, B("\xff\xff\x7f")},
    {264432, B("\xf0\x80\x80\x00")},
    {33818863, B("\xff\xff\xff\x7f")},
    {33818864, B("\xf0\x80\x80\x80\x00")},
    {UINT64_C(4328786159), B("\xff\xff\xff\xff\x7f")},
    {UINT64_C(4328786160), B("\xf0\x80\x80\x80\x80\x00")},
    {UINT32_MAX, B("\xff\xf0\xfe\xfe\x7e")},
    {UINT64_C(1) << 63, B("\xf0\xf1\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x06")},
    {INT64_MAX, B("\xff\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x06")},
    {UINT64_MAX, B("\xff\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x0e")},
};

static void test_varint_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(varint_vecs) / sizeof(varint_vecs[0]); i++) {
        const struct varint_vec *t = &varint_vecs[i];
        uint8_t buf[16], in[32];
        uint64_t v = 0;

        memset(buf, 0xaa, sizeof(buf));
        assert_int_equal(spoe_varint_encode(t->v, buf, sizeof(buf)), t->enc.len);
        assert_memory_equal(buf, t->enc.p, t->enc.len);
        assert_int_equal(buf[t->enc.len], 0xaa); /* nothing written past the end */
        assert_int_equal(varint_len(t->v), t->enc.len);

        /* An exact fit works, one byte less does not. */
        assert_int_equal(spoe_varint_encode(t->v, buf, t->enc.len), t->enc.len);
        assert_int_equal(spoe_varint_encode(t->v, buf, t->enc.len - 1), -1);

        assert_int_equal(spoe_varint_decode(t->enc.p, t->enc.len, &v), t->enc.len);
        assert_int_equal(v, t->v);

        /* Trailing bytes are not consumed. */
        memcpy(in, t->enc.p, t->enc.len);
        memset(in + t->enc.len, 0xff, sizeof(in) - t->enc.len);
        v = 0;
        assert_int_equal(spoe_varint_decode(in, sizeof(in), &v), t->enc.len);
        assert_int_equal(v, t->v);

        /* Every truncation fails. */
        for (size_t cut = 0; cut < t->enc.len; cut++) {
            uint8_t *p = dup_exact(t->enc.p, cut);

            assert_int_equal(spoe_varint_decode(p, cut, &v), -1);
            free(p);
        }
    }
}

static void test_varint_encode_no_room(void **state)
{
    uint8_t buf[16];

    (void)state;
    assert_int_equal(spoe_varint_encode(0, buf, 0), -1);
    assert_int_equal(spoe_varint_encode(239, buf, 0), -1);
    assert_int_equal(spoe_varint_encode(240, buf, 1), -1);
    assert_int_equal(spoe_varint_encode(2288, buf, 2), -1);
    assert_int_equal(spoe_varint_encode(UINT64_MAX, buf, 9), -1);
}

static void test_varint_negative(void **state)
{
    static const struct {
        int64_t v;
        struct bytes enc;
    } vecs[] = {
        {-1, B("\xff\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x0e")},
        {-5, B("\xfb\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x0e")},
        {INT32_MIN, B("\xf0\xf1\xfe\xfe\xbe\xfe\xfe\xfe\xfe\x0e")},
        {INT64_MIN, B("\xf0\xf1\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x06")},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(vecs) / sizeof(vecs[0]); i++) {
        uint8_t buf[16];
        uint64_t u;

        assert_int_equal(spoe_varint_encode((uint64_t)vecs[i].v, buf, sizeof(buf)), 10);
        assert_memory_equal(buf, vecs[i].enc.p, 10);
        assert_int_equal(spoe_varint_decode(buf, 10, &u), 10);
        assert_true((int64_t)u == vecs[i].v);
    }
}

static void test_varint_malformed(void **state)
{
    static const struct bytes bad[] = {
        /* 11 continuation bytes: longer than any 64-bit value. */
        B("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
        B("\xf0\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80"),
        /* 10th byte still a continuation byte. */
        B("\xf0\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00"),
        /* 10th byte with bits beyond 2^64 (shift 60: only 4 bits fit). */
        B("\xff\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x10"),
        B("\xf0\x80\x80\x80\x80\x80\x80\x80\x80\x7f"),
        /* In range bit-wise, but the sum wraps: 2^64 and 2^64 + 5. */
        B("\xf0\xf1\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x0e"),
        B("\xf5\xf1\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x0e"),
        B("\xff\xff\xff\xff\xff\xff\xff\xff\xff\x0f"),
        /* Truncated: the last byte present is a continuation byte. */
        B("\xf0"),
        B("\xfc\xf0"),
        B("\xff\xff\xff\xff"),
    };
    uint64_t v = 12345;

    (void)state;
    assert_int_equal(spoe_varint_decode((const uint8_t *)"", 0, &v), -1);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t *p = dup_exact(bad[i].p, bad[i].len);
        struct spoe_cur c = {p, p + bad[i].len};

        assert_int_equal(spoe_varint_decode(p, bad[i].len, &v), -1);
        assert_int_equal(spoe_get_varint(&c, &v), -1);
        assert_ptr_equal(c.p, p); /* cursor unchanged on error */
        free(p);
    }
    assert_int_equal(v, 12345); /* nor the output */
}

/* Random values of every magnitude, plus both sides of every length
 * threshold, must round-trip and use the length the spec's table gives. */
static void test_varint_roundtrip_property(void **state)
{
    uint64_t seed = UINT64_C(0x9e3779b97f4a7c15);
    unsigned seen[SPOE_VARINT_MAX + 1] = {0};

    (void)state;
    for (int k = 1; k < SPOE_VARINT_MAX; k++) {
        uint64_t t = varint_threshold(k);
        uint64_t probes[] = {t - 1, t, t + 1};

        for (size_t j = 0; j < 3; j++) {
            uint8_t buf[SPOE_VARINT_MAX];
            uint64_t v;
            int n = spoe_varint_encode(probes[j], buf, sizeof(buf));

            assert_int_equal(n, varint_len(probes[j]));
            assert_int_equal(n, j == 0 ? k : k + 1);
            assert_int_equal(spoe_varint_decode(buf, (size_t)n, &v), n);
            assert_int_equal(v, probes[j]);
        }
    }

    for (int i = 0; i < 200000; i++) {
        uint64_t r = xorshift64(&seed);
        uint64_t v = r >> (xorshift64(&seed) % 64);
        uint8_t buf[SPOE_VARINT_MAX];
        uint64_t d;
        int n = spoe_varint_encode(v, buf, sizeof(buf));

        assert_true(n >= 1 && n <= SPOE_VARINT_MAX);
        assert_int_equal(n, varint_len(v));
        seen[n]++;
        assert_int_equal(spoe_varint_decode(buf, (size_t)n, &d), n);
        assert_int_equal(d, v);
        assert_int_equal(spoe_varint_decode(buf, (size_t)n - 1, &d), -1);
    }
    for (int n = 1; n <= SPOE_VARINT_MAX; n++)
        assert_true(seen[n] > 0);
}

/* ---- typed data ---------------------------------------------------------------- */

static struct spoe_data d_null(void)
{
    struct spoe_data d = {.type = SPOE_NULL};
    return d;
}

static struct spoe_data d_i64(int64_t v)
{
    struct spoe_data d = {.type = SPOE_INT64};
    d.u.i64 = v;
    return d;
}

static struct spoe_data d_u64(uint64_t v)
{
    struct spoe_data d = {.type = SPOE_UINT64};
    d.u.u64 = v;
    return d;
}

static struct spoe_data d_v4(const char *four)
{
    struct spoe_data d = {.type = SPOE_IPV4};
    memcpy(&d.u.v4, four, 4);
    return d;
}

static struct spoe_data d_v6(const char *sixteen)
{
    struct spoe_data d = {.type = SPOE_IPV6};
    memcpy(&d.u.v6, sixteen, 16);
    return d;
}

#define V6_DOC "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"

static void check_data_vector(const struct spoe_data *d, struct bytes enc)
{
    uint8_t buf[4096];
    struct spoe_wbuf w;
    struct spoe_cur c = {enc.p, enc.p + enc.len};
    struct spoe_data got;

    spoe_wbuf_init(&w, buf, sizeof(buf));
    spoe_put_data(&w, d);
    assert_false(w.overflow);
    assert_int_equal(w.len, enc.len);
    assert_memory_equal(buf, enc.p, enc.len);

    assert_int_equal(spoe_get_data(&c, &got), 0);
    assert_ptr_equal(c.p, enc.p + enc.len);
    assert_data_equal(&got, d);

    /* Every truncation fails and leaves the cursor alone. */
    for (size_t cut = 0; cut < enc.len; cut++) {
        uint8_t *p = dup_exact(enc.p, cut);
        struct spoe_cur tc = {p, p + cut};

        assert_int_equal(spoe_get_data(&tc, &got), -1);
        assert_ptr_equal(tc.p, p);
        free(p);
    }

    /* Too small a buffer: sticky overflow, never a write past cap. */
    for (size_t cap = 0; cap < enc.len; cap++) {
        uint8_t small[4096];

        memset(small, 0x5a, sizeof(small));
        spoe_wbuf_init(&w, small, cap);
        spoe_put_data(&w, d);
        assert_true(w.overflow);
        assert_true(w.len <= cap);
        assert_int_equal(small[cap], 0x5a);
    }
}

static void test_data_vectors(void **state)
{
    const struct {
        struct spoe_data d;
        struct bytes enc;
    } vecs[] = {
        {d_null(), B("\x00")},
        {spoe_bool(true), B("\x11")},
        {spoe_bool(false), B("\x01")},
        {spoe_sint(0), B("\x02\x00")},
        {spoe_sint(42), B("\x02\x2a")},
        {spoe_sint(300), B("\x02\xfc\x03")},
        {spoe_sint(-1), B("\x02\xff\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x0e")},
        {spoe_sint(INT32_MIN), B("\x02\xf0\xf1\xfe\xfe\xbe\xfe\xfe\xfe\xfe\x0e")},
        {spoe_sint(INT32_MAX), B("\x02\xff\xf0\xfe\xfe\x3e")},
        {spoe_uint(0), B("\x03\x00")},
        {spoe_uint(16380), B("\x03\xfc\xf0\x06")},
        {spoe_uint(UINT32_MAX), B("\x03\xff\xf0\xfe\xfe\x7e")},
        {d_i64(1000), B("\x04\xf8\x2f")},
        {d_i64(-1), B("\x04\xff\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x0e")},
        {d_i64(INT64_MIN), B("\x04\xf0\xf1\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x06")},
        {d_i64(INT64_MAX), B("\x04\xff\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x06")},
        {d_u64(0), B("\x05\x00")},
        {d_u64(2288), B("\x05\xf0\x80\x00")},
        {d_u64(UINT64_MAX), B("\x05\xff\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x0e")},
        {d_v4("\xc0\x00\x02\x01"), B("\x06\xc0\x00\x02\x01")},
        {d_v6(V6_DOC), B("\x07" V6_DOC)},
        {spoe_str("", 0), B("\x08\x00")},
        {spoe_str("fr", 2), B("\x08\x02"
                              "fr")},
        {spoe_bin("", 0), B("\x09\x00")},
        {spoe_bin("\x00\xff\x10", 3), B("\x09\x03\x00\xff\x10")},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(vecs) / sizeof(vecs[0]); i++)
        check_data_vector(&vecs[i].d, vecs[i].enc);
}

/* A string long enough for a 2-byte length varint (300 = FC 03) and one for
 * a 3-byte one (2288 = F0 80 00). */
static void test_data_long_strings(void **state)
{
    static const size_t lens[] = {239, 240, 300, 2287, 2288};
    uint8_t enc[4 + 2288];
    char s[2288];

    (void)state;
    for (size_t i = 0; i < sizeof(s); i++)
        s[i] = (char)('a' + i % 26);
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        size_t len = lens[i], hl;
        struct spoe_data d = spoe_str(s, len);

        enc[0] = 0x08;
        hl = 1 + (size_t)varint_len(len);
        assert_int_equal(spoe_varint_encode(len, enc + 1, 4), hl - 1);
        memcpy(enc + hl, s, len);
        check_data_vector(&d, (struct bytes){enc, hl + len});
    }
    /* Spot check the varint prefix against the spec rather than the encoder. */
    enc[0] = 0x08;
    enc[1] = 0xfc;
    enc[2] = 0x03;
    memcpy(enc + 3, s, 300);
    {
        struct spoe_data d = spoe_str(s, 300);
        check_data_vector(&d, (struct bytes){enc, 303});
    }
}

static void test_data_bool_flags(void **state)
{
    /* Only FLAGS bit 0 (0x10 in the byte) carries the value. */
    static const struct {
        uint8_t byte;
        bool v;
    } vecs[] = {{0x01, false}, {0x11, true}, {0x21, false}, {0x31, true}, {0xf1, true}};

    (void)state;
    for (size_t i = 0; i < sizeof(vecs) / sizeof(vecs[0]); i++) {
        struct spoe_cur c = {&vecs[i].byte, &vecs[i].byte + 1};
        struct spoe_data d;

        assert_int_equal(spoe_get_data(&c, &d), 0);
        assert_int_equal(d.type, SPOE_BOOL);
        assert_int_equal(d.u.b, vecs[i].v);
        assert_ptr_equal(c.p, &vecs[i].byte + 1);
    }
}

static void test_data_reserved_types(void **state)
{
    (void)state;
    for (unsigned t = 10; t <= 15; t++) {
        for (unsigned fl = 0; fl < 2; fl++) {
            uint8_t in[8] = {(uint8_t)(t | fl << 4), 0x02, 'h', 'i', 0, 0, 0, 0};
            struct spoe_cur c = {in, in + sizeof(in)};
            struct spoe_data d;

            assert_int_equal(spoe_get_data(&c, &d), -1);
            assert_ptr_equal(c.p, in);
        }
    }
    {
        /* Nor can the encoder be made to emit one. */
        struct spoe_data d = {.type = (enum spoe_type)12};
        uint8_t buf[16];
        struct spoe_wbuf w;

        spoe_wbuf_init(&w, buf, sizeof(buf));
        spoe_put_data(&w, &d);
        assert_true(w.overflow);
    }
}

static void test_data_truncated_strings(void **state)
{
    static const struct bytes bad[] = {
        B("\x08"),            /* no length */
        B("\x08\x05hell"),    /* one byte short */
        B("\x08\xfc"),        /* length varint cut */
        B("\x08\xfc\x03xyz"), /* 300 announced, 3 present */
        B("\x09\x01"),        /* binary with nothing */
        B("\x08\xff\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x0e"
          "abc"),              /* length near 2^64 */
        B("\x06\x01\x02\x03"), /* IPv4 short */
        B("\x07\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"),
        B("\x02\xf0"), /* INT32 varint cut */
        B("\x05\xff\xff"),
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t *p = dup_exact(bad[i].p, bad[i].len);
        struct spoe_cur c = {p, p + bad[i].len};
        struct spoe_data d;
        const char *s;
        size_t l;

        assert_int_equal(spoe_get_data(&c, &d), -1);
        assert_ptr_equal(c.p, p);
        if (p[0] == 0x08 || p[0] == 0x09) {
            c.p = p + 1;
            assert_int_equal(spoe_get_str(&c, &s, &l), -1);
            assert_ptr_equal(c.p, p + 1);
        }
        free(p);
    }
}

static void test_kv_list(void **state)
{
    static const uint8_t in[] = "\x04"
                                "name"
                                "\x08\x03"
                                "val"
                                "\x00\x11" /* unnamed BOOL true */
                                "\x01"
                                "n"
                                "\x00";
    struct spoe_cur c = {in, in + sizeof(in) - 1};
    const char *n;
    size_t nl;
    struct spoe_data d;

    (void)state;
    assert_int_equal(spoe_kv_next(&c, &n, &nl, &d), 1);
    assert_str_equal_n(n, nl, "name");
    assert_int_equal(d.type, SPOE_STR);
    assert_str_equal_n(d.u.s.ptr, d.u.s.len, "val");
    assert_int_equal(spoe_kv_next(&c, &n, &nl, &d), 1);
    assert_int_equal(nl, 0);
    assert_int_equal(d.type, SPOE_BOOL);
    assert_true(d.u.b);
    assert_int_equal(spoe_kv_next(&c, &n, &nl, &d), 1);
    assert_str_equal_n(n, nl, "n");
    assert_int_equal(d.type, SPOE_NULL);
    assert_int_equal(spoe_kv_next(&c, &n, &nl, &d), 0);
    assert_int_equal(spoe_kv_next(&c, &n, &nl, &d), 0);

    /* A name without a value. */
    {
        static const uint8_t bad[] = "\x01"
                                     "x";
        struct spoe_cur b = {bad, bad + 2};

        assert_int_equal(spoe_kv_next(&b, &n, &nl, &d), -1);
        assert_ptr_equal(b.p, bad);
    }
}

/* ---- frames and HELLO ---------------------------------------------------------- */

#define UUID "8c4fe1a4-6a6d-4b1c-9e0b-2f6a3c1d5e77"

/* HAPROXY-HELLO as HAProxy 2.6 sends it (FIN, stream 0, frame 0). */
static const uint8_t real_hello[] = "\x01\x00\x00\x00\x01\x00\x00"
                                    "\x12"
                                    "supported-versions"
                                    "\x08\x03"
                                    "2.0"
                                    "\x0e"
                                    "max-frame-size"
                                    "\x03\xfc\xf0\x06"
                                    "\x0c"
                                    "capabilities"
                                    "\x08\x10"
                                    "pipelining,async"
                                    "\x09"
                                    "engine-id"
                                    "\x08\x24" UUID;

/* The same during a health check: no capabilities, "healthcheck" true. */
static const uint8_t hc_hello[] = "\x01\x00\x00\x00\x01\x00\x00"
                                  "\x12"
                                  "supported-versions"
                                  "\x08\x03"
                                  "2.0"
                                  "\x0e"
                                  "max-frame-size"
                                  "\x03\xfc\xf0\x06"
                                  "\x0c"
                                  "capabilities"
                                  "\x08\x00"
                                  "\x0b"
                                  "healthcheck"
                                  "\x11";

static void test_frame_parse_real_hello(void **state)
{
    struct spoe_frame f;
    struct spoe_hello h;

    (void)state;
    assert_int_equal(sizeof(real_hello) - 1, 7 + 19 + 5 + 15 + 4 + 13 + 18 + 10 + 38);
    assert_int_equal(spoe_frame_parse(real_hello, sizeof(real_hello) - 1, &f), SPOE_ST_NONE);
    assert_int_equal(f.type, SPOE_FRM_HAPROXY_HELLO);
    assert_int_equal(f.flags, SPOE_FL_FIN);
    assert_int_equal(f.stream_id, 0);
    assert_int_equal(f.frame_id, 0);
    assert_ptr_equal(f.payload, real_hello + 7);
    assert_int_equal(f.len, sizeof(real_hello) - 1 - 7);

    assert_int_equal(spoe_hello_parse(f.payload, f.len, &h), SPOE_ST_NONE);
    assert_str_equal_n(h.versions, h.versions_len, "2.0");
    assert_int_equal(h.max_frame_size, 16380);
    assert_str_equal_n(h.caps, h.caps_len, "pipelining,async");
    assert_str_equal_n(h.engine_id, h.engine_id_len, UUID);
    assert_false(h.healthcheck);
    assert_true(spoe_list_has(h.caps, h.caps_len, "pipelining"));
    assert_true(spoe_list_has(h.caps, h.caps_len, "async"));
    assert_false(spoe_list_has(h.caps, h.caps_len, "fragmentation"));
}

static void test_frame_parse_healthcheck_hello(void **state)
{
    struct spoe_frame f;
    struct spoe_hello h;

    (void)state;
    assert_int_equal(spoe_frame_parse(hc_hello, sizeof(hc_hello) - 1, &f), SPOE_ST_NONE);
    assert_int_equal(f.type, SPOE_FRM_HAPROXY_HELLO);
    assert_int_equal(spoe_hello_parse(f.payload, f.len, &h), SPOE_ST_NONE);
    assert_true(h.healthcheck);
    assert_int_equal(h.caps_len, 0);
    assert_non_null(h.caps);
    assert_int_equal(h.max_frame_size, 16380);
    assert_null(h.engine_id);
    assert_false(spoe_list_has(h.caps, h.caps_len, "pipelining"));
}

static void test_frame_parse_metadata(void **state)
{
    struct spoe_frame f;

    (void)state;
    /* NOTIFY without FIN, stream 300, frame 2288, 2-byte payload. */
    {
        static const uint8_t in[] = "\x03\x00\x00\x00\x00\xfc\x03\xf0\x80\x00\xab\xcd";

        assert_int_equal(spoe_frame_parse(in, sizeof(in) - 1, &f), SPOE_ST_NONE);
        assert_int_equal(f.type, SPOE_FRM_NOTIFY);
        assert_int_equal(f.flags, 0);
        assert_int_equal(f.stream_id, 300);
        assert_int_equal(f.frame_id, 2288);
        assert_int_equal(f.len, 2);
        assert_ptr_equal(f.payload, in + 10);
    }
    /* Flags are big-endian; unknown types are passed through. */
    {
        static const uint8_t in[] = "\x2a\x80\x00\x01\x03\x01\x02";

        assert_int_equal(spoe_frame_parse(in, sizeof(in) - 1, &f), SPOE_ST_NONE);
        assert_int_equal(f.type, 42);
        assert_int_equal(f.flags, 0x80000103u);
        assert_int_equal(f.stream_id, 1);
        assert_int_equal(f.frame_id, 2);
        assert_int_equal(f.len, 0);
    }
    /* Truncated metadata. */
    {
        static const struct bytes bad[] = {
            B(""),
            B("\x01"),
            B("\x01\x00\x00\x00\x01\x00"),
            B("\x03\x00\x00\x00\x01\xfc\x03"),     /* no frame id */
            B("\x03\x00\x00\x00\x01\xf0\x80\x00"), /* no frame id */
            B("\x03\x00\x00\x00\x01\x05\xfc"),     /* frame id cut */
            B("\x03\x00\x00\x00\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x00"),
        };

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            uint8_t *p = dup_exact(bad[i].p, bad[i].len);

            assert_int_equal(spoe_frame_parse(p, bad[i].len, &f), SPOE_ST_INVALID);
            free(p);
        }
    }
}

/* Builds a HELLO payload from (name, data) pairs with the encoder; the
 * encoder's correctness is covered by the byte-exact tests above. */
struct kv {
    const char *name;
    struct spoe_data d;
};

static size_t build_kv(uint8_t *buf, size_t cap, const struct kv *kv, size_t n)
{
    struct spoe_wbuf w;

    spoe_wbuf_init(&w, buf, cap);
    for (size_t i = 0; i < n; i++)
        spoe_put_kv(&w, kv[i].name, &kv[i].d);
    assert_false(w.overflow);
    return w.len;
}

#define STR(s) spoe_str(s, sizeof(s) - 1)

static enum spoe_status hello_status(const struct kv *kv, size_t n)
{
    uint8_t buf[512];
    struct spoe_hello h;
    size_t len = build_kv(buf, sizeof(buf), kv, n);

    return spoe_hello_parse(buf, len, &h);
}

static void test_hello_missing_items(void **state)
{
    const struct kv vsn = {"supported-versions", STR("2.0")};
    const struct kv mfs = {"max-frame-size", spoe_uint(16380)};
    const struct kv cap = {"capabilities", STR("pipelining")};
    const struct kv unk = {"something-new", spoe_uint(7)};

    (void)state;
    {
        const struct kv l[] = {vsn, mfs, cap};
        assert_int_equal(hello_status(l, 3), SPOE_ST_NONE);
    }
    {
        const struct kv l[] = {mfs, cap};
        assert_int_equal(hello_status(l, 2), SPOE_ST_NO_VSN);
    }
    {
        const struct kv l[] = {vsn, cap};
        assert_int_equal(hello_status(l, 2), SPOE_ST_NO_FRAME_SIZE);
    }
    {
        const struct kv l[] = {vsn, mfs};
        assert_int_equal(hello_status(l, 2), SPOE_ST_NO_CAP);
    }
    {
        const struct kv l[] = {cap, unk, mfs, vsn}; /* any order, unknown ignored */
        assert_int_equal(hello_status(l, 4), SPOE_ST_NONE);
    }
    assert_int_equal(hello_status(NULL, 0), SPOE_ST_NO_VSN);
    assert_int_equal(SPOE_ST_NO_VSN, 5);
    assert_int_equal(SPOE_ST_NO_FRAME_SIZE, 6);
    assert_int_equal(SPOE_ST_NO_CAP, 7);
    assert_int_equal(SPOE_ST_BAD_VSN, 8);
}

static void test_hello_versions(void **state)
{
    static const struct {
        const char *v;
        enum spoe_status st;
    } vecs[] = {
        {"2.0", SPOE_ST_NONE},      {"2.0, 1.5", SPOE_ST_NONE}, {" 2.1 ,1.0", SPOE_ST_NONE},
        {"1.0, 2.0", SPOE_ST_NONE}, {"1.0", SPOE_ST_BAD_VSN},   {"1.5,1.0", SPOE_ST_BAD_VSN},
        {"3.0", SPOE_ST_BAD_VSN},   {"", SPOE_ST_BAD_VSN},      {"2", SPOE_ST_BAD_VSN},
        {"20.0", SPOE_ST_BAD_VSN},  {"12.0", SPOE_ST_BAD_VSN},  {"2.x", SPOE_ST_BAD_VSN},
        {" , ,", SPOE_ST_BAD_VSN},  {"2.", SPOE_ST_BAD_VSN},    {"\t2.0\t", SPOE_ST_NONE},
        {",,2.10,,", SPOE_ST_NONE},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(vecs) / sizeof(vecs[0]); i++) {
        const struct kv l[] = {
            {"supported-versions", spoe_str(vecs[i].v, strlen(vecs[i].v))},
            {"max-frame-size", spoe_uint(16380)},
            {"capabilities", STR("")},
        };

        if (hello_status(l, 3) != vecs[i].st)
            fail_msg("versions \"%s\": want %d", vecs[i].v, (int)vecs[i].st);
        assert_int_equal(spoe_version_ok(vecs[i].v, strlen(vecs[i].v)), vecs[i].st == SPOE_ST_NONE);
    }
}

static void test_hello_wrong_types(void **state)
{
    const struct kv vsn = {"supported-versions", STR("2.0")};
    const struct kv mfs = {"max-frame-size", spoe_uint(16380)};
    const struct kv cap = {"capabilities", STR("")};
    const struct kv bad[] = {
        {"supported-versions", spoe_uint(2)}, {"supported-versions", spoe_bin("2.0", 3)},
        {"max-frame-size", STR("16380")},     {"max-frame-size", spoe_sint(-1)},
        {"max-frame-size", d_i64(-1)},        {"max-frame-size", d_u64(UINT64_C(1) << 32)},
        {"max-frame-size", d_null()},         {"capabilities", spoe_sint(0)},
        {"capabilities", d_null()},           {"healthcheck", STR("true")},
        {"healthcheck", spoe_uint(1)},        {"engine-id", spoe_uint(1)},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const struct kv l[] = {vsn, mfs, cap, bad[i]};

        if (hello_status(l, 4) != SPOE_ST_INVALID)
            fail_msg("item %zu (%s) accepted", i, bad[i].name);
    }
    /* Integer types other than UINT32 are fine for max-frame-size when in range. */
    {
        const struct kv ok[] = {
            {"max-frame-size", spoe_sint(16380)},
            {"max-frame-size", d_i64(16380)},
            {"max-frame-size", d_u64(16380)},
        };
        for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
            uint8_t buf[256];
            struct spoe_hello h;
            const struct kv l[] = {vsn, ok[i], cap};
            size_t len = build_kv(buf, sizeof(buf), l, 3);

            assert_int_equal(spoe_hello_parse(buf, len, &h), SPOE_ST_NONE);
            assert_int_equal(h.max_frame_size, 16380);
        }
    }
}

/* Every cut of the real HELLO payload: in the middle of an item it is
 * invalid; on an item boundary it lacks the items not reached yet. */
static void test_hello_truncated(void **state)
{
    const uint8_t *p = real_hello + 7;
    size_t len = sizeof(real_hello) - 1 - 7;
    const size_t b_vsn = 19 + 5, b_mfs = b_vsn + 15 + 4, b_cap = b_mfs + 13 + 18;

    (void)state;
    assert_int_equal(len, b_cap + 10 + 38);
    for (size_t cut = 0; cut < len; cut++) {
        struct spoe_hello h;
        enum spoe_status want = SPOE_ST_INVALID;

        if (cut == 0)
            want = SPOE_ST_NO_VSN;
        else if (cut == b_vsn)
            want = SPOE_ST_NO_FRAME_SIZE;
        else if (cut == b_mfs)
            want = SPOE_ST_NO_CAP;
        else if (cut == b_cap)
            want = SPOE_ST_NONE; /* engine-id is optional */
        {
            uint8_t *q = dup_exact(p, cut);
            enum spoe_status st = spoe_hello_parse(q, cut, &h);

            free(q);
            if (st != want)
                fail_msg("cut %zu: want %d, got %d", cut, (int)want, (int)st);
        }
    }
}

/* ---- comma-separated lists --------------------------------------------------- */

static void test_list_has(void **state)
{
    static const struct {
        const char *list, *item;
        bool want;
    } vecs[] = {
        {"pipelining,async", "pipelining", true},
        {"pipelining,async", "async", true},
        {"pipelining,async", "pipe", false},
        {"pipelining,async", "sync", false},
        {"pipelining,async", "lining", false},
        {"pipelining,async", "pipelining,async", false},
        {"pipelining,async", "pipelinings", false},
        {"pipelining,async", "", false},
        {" pipelining , async ", "pipelining", true},
        {" pipelining , async ", "async", true},
        {"\tpipelining\t,\tasync", "async", true},
        {",,async,,", "async", true},
        {",, ,", "async", false},
        {"", "async", false},
        {"fragmentation", "fragmentation", true},
        {"fragmentation,", "fragmentation", true},
        {"async,pipe", "pipelining", false},
        {"ASYNC", "async", false},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(vecs) / sizeof(vecs[0]); i++) {
        if (spoe_list_has(vecs[i].list, strlen(vecs[i].list), vecs[i].item) != vecs[i].want)
            fail_msg("\"%s\" has \"%s\": want %d", vecs[i].list, vecs[i].item, vecs[i].want);
    }
    /* The length bounds the list: no NUL terminator is needed or looked for. */
    assert_false(spoe_list_has("pipelining,async", 10, "async"));
    assert_true(spoe_list_has("pipelining,async", 10, "pipelining"));
    assert_false(spoe_list_has("pipelining,async", 4, "pipelining"));
}

/* ---- NOTIFY -------------------------------------------------------------------- */

/* Two messages: "check-client-ip" (ip=IPV4, unnamed STR) and "log" (unnamed
 * UINT32, flag=BOOL true, n=NULL). */
#define NOTIFY_M1                                                                                  \
    "\x0f"                                                                                         \
    "check-client-ip"                                                                              \
    "\x02"                                                                                         \
    "\x02"                                                                                         \
    "ip"                                                                                           \
    "\x06\xc0\x00\x02\x01"                                                                         \
    "\x00\x08\x03"                                                                                 \
    "GET"
#define NOTIFY_M2                                                                                  \
    "\x03"                                                                                         \
    "log"                                                                                          \
    "\x03"                                                                                         \
    "\x00\x03\xfc\x03"                                                                             \
    "\x04"                                                                                         \
    "flag"                                                                                         \
    "\x11"                                                                                         \
    "\x01"                                                                                         \
    "n"                                                                                            \
    "\x00"

static const uint8_t notify[] = NOTIFY_M1 NOTIFY_M2;
#define notify_m1_len (sizeof(NOTIFY_M1) - 1)

static void test_notify_iterate(void **state)
{
    struct spoe_cur c = {notify, notify + sizeof(notify) - 1};
    struct spoe_msg m;
    const char *n;
    size_t nl;
    struct spoe_data d;

    (void)state;
    assert_int_equal(notify_m1_len, 1 + 15 + 1 + 1 + 2 + 5 + 1 + 5);
    assert_int_equal(spoe_notify_validate(notify, sizeof(notify) - 1), 0);

    assert_int_equal(spoe_msg_next(&c, &m), 1);
    assert_str_equal_n(m.name, m.name_len, "check-client-ip");
    assert_int_equal(m.nargs, 2);
    assert_ptr_equal(c.p, notify + notify_m1_len);
    assert_int_equal(spoe_arg_next(&m, &n, &nl, &d), 1);
    assert_str_equal_n(n, nl, "ip");
    assert_int_equal(d.type, SPOE_IPV4);
    assert_memory_equal(&d.u.v4, "\xc0\x00\x02\x01", 4);
    assert_int_equal(spoe_arg_next(&m, &n, &nl, &d), 1);
    assert_int_equal(nl, 0);
    assert_int_equal(d.type, SPOE_STR);
    assert_str_equal_n(d.u.s.ptr, d.u.s.len, "GET");
    assert_int_equal(spoe_arg_next(&m, &n, &nl, &d), 0);
    assert_int_equal(spoe_arg_next(&m, &n, &nl, &d), 0);

    assert_int_equal(spoe_msg_next(&c, &m), 1);
    assert_str_equal_n(m.name, m.name_len, "log");
    assert_int_equal(m.nargs, 3);
    assert_int_equal(spoe_arg_next(&m, &n, &nl, &d), 1);
    assert_int_equal(nl, 0);
    assert_int_equal(d.type, SPOE_UINT32);
    assert_int_equal(d.u.u32, 300);
    assert_int_equal(spoe_arg_next(&m, &n, &nl, &d), 1);
    assert_str_equal_n(n, nl, "flag");
    assert_int_equal(d.type, SPOE_BOOL);
    assert_true(d.u.b);
    assert_int_equal(spoe_arg_next(&m, &n, &nl, &d), 1);
    assert_str_equal_n(n, nl, "n");
    assert_int_equal(d.type, SPOE_NULL);
    assert_int_equal(spoe_arg_next(&m, &n, &nl, &d), 0);

    assert_int_equal(spoe_msg_next(&c, &m), 0);
    assert_ptr_equal(c.p, notify + sizeof(notify) - 1);
}

static void test_notify_zero_args(void **state)
{
    static const uint8_t in[] = "\x04"
                                "ping"
                                "\x00"
                                "\x00\x00"; /* unnamed message, no args */
    struct spoe_cur c = {in, in + sizeof(in) - 1};
    struct spoe_msg m;
    const char *n;
    size_t nl;
    struct spoe_data d;

    (void)state;
    assert_int_equal(spoe_msg_next(&c, &m), 1);
    assert_str_equal_n(m.name, m.name_len, "ping");
    assert_int_equal(m.nargs, 0);
    assert_int_equal(spoe_arg_next(&m, &n, &nl, &d), 0);
    assert_int_equal(spoe_msg_next(&c, &m), 1);
    assert_int_equal(m.name_len, 0);
    assert_int_equal(spoe_msg_next(&c, &m), 0);
    assert_int_equal(spoe_notify_validate(in, sizeof(in) - 1), 0);
    assert_int_equal(spoe_notify_validate(in, 0), 0); /* empty list */
}

static void test_notify_nargs_too_many(void **state)
{
    static const uint8_t in[] = "\x03"
                                "msg"
                                "\xff"
                                "\x01"
                                "a"
                                "\x02\x05";
    struct spoe_cur c = {in, in + sizeof(in) - 1};
    struct spoe_msg m;

    (void)state;
    assert_int_equal(spoe_msg_next(&c, &m), -1);
    assert_ptr_equal(c.p, in);
    assert_int_equal(spoe_notify_validate(in, sizeof(in) - 1), -1);
}

/* Only the empty list and message boundaries are valid prefixes: every other
 * cut leaves a message with a name but no NB-ARGS, fewer arguments than
 * announced, or a truncated name, string or varint. */
static void test_notify_validate_cuts(void **state)
{
    const size_t total = sizeof(notify) - 1;

    (void)state;
    for (size_t cut = 0; cut <= total; cut++) {
        bool valid = cut == 0 || cut == notify_m1_len || cut == total;
        uint8_t *p = dup_exact(notify, cut);

        if (spoe_notify_validate(p, cut) != (valid ? 0 : -1))
            fail_msg("cut %zu: want %s", cut, valid ? "valid" : "invalid");
        free(p);
    }
}

/* ---- encoding: ACK and AGENT-DISCONNECT ---------------------------------------- */

static void test_ack_encoding(void **state)
{
    static const uint8_t want[] =
        /* length (filled below), ACK, FIN, stream 5, frame 300 */
        "\x00\x00\x00\x00"
        "\x67\x00\x00\x00\x01\x05\xfc\x03"
        /* set-var txn locale = "fr" */
        "\x01\x03\x02\x06"
        "locale"
        "\x08\x02"
        "fr"
        /* unset-var sess x */
        "\x02\x02\x01\x01"
        "x"
        /* set-var of every type, scope req */
        "\x01\x03\x03\x01"
        "a"
        "\x00"
        "\x01\x03\x03\x01"
        "b"
        "\x11"
        "\x01\x03\x03\x01"
        "c"
        "\x01"
        "\x01\x03\x03\x01"
        "d"
        "\x02\xff\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x0e"
        "\x01\x03\x03\x01"
        "e"
        "\x03\xfc\xf0\x06"
        "\x01\x03\x03\x01"
        "f"
        "\x04\xf0\xf1\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x06"
        "\x01\x03\x03\x01"
        "g"
        "\x05\xf0\x80\x00"
        "\x01\x03\x03\x01"
        "h"
        "\x06\xc0\x00\x02\x01"
        "\x01\x03\x03\x01"
        "i"
        "\x07" V6_DOC "\x01\x03\x03\x01"
        "j"
        "\x08\x03"
        "HIT"
        "\x01\x03\x03\x01"
        "k"
        "\x09\x02\x00\xff"
        /* other scopes */
        "\x01\x03\x00\x01"
        "p"
        "\x00"
        "\x01\x03\x04\x01"
        "r"
        "\x00";
    const size_t wlen = sizeof(want) - 1;
    struct {
        const char *name;
        struct spoe_data d;
    } sets[] = {
        {"a", d_null()},           {"b", spoe_bool(true)},          {"c", spoe_bool(false)},
        {"d", spoe_sint(-1)},      {"e", spoe_uint(16380)},         {"f", d_i64(INT64_MIN)},
        {"g", d_u64(2288)},        {"h", d_v4("\xc0\x00\x02\x01")}, {"i", d_v6(V6_DOC)},
        {"j", spoe_str("HIT", 3)}, {"k", spoe_bin("\x00\xff", 2)},
    };
    uint8_t buf[512], exp[512];
    struct spoe_wbuf w;
    const struct spoe_data null = d_null();
    const struct spoe_data fr = spoe_str("fr", 2);

    (void)state;
    memcpy(exp, want, wlen);
    exp[3] = (uint8_t)(wlen - 4); /* fits one byte: checked below */
    assert_true(wlen - 4 < 256);

    spoe_wbuf_init(&w, buf, sizeof(buf));
    spoe_frame_begin(&w, SPOE_FRM_ACK, SPOE_FL_FIN, 5, 300);
    spoe_put_set_var(&w, SPOE_SCOPE_TXN, "locale", 6, &fr);
    spoe_put_unset_var(&w, SPOE_SCOPE_SESS, "x", 1);
    for (size_t i = 0; i < sizeof(sets) / sizeof(sets[0]); i++)
        spoe_put_set_var(&w, SPOE_SCOPE_REQ, sets[i].name, 1, &sets[i].d);
    spoe_put_set_var(&w, SPOE_SCOPE_PROC, "p", 1, &null);
    spoe_put_set_var(&w, SPOE_SCOPE_RES, "r", 1, &null);
    assert_int_equal(spoe_frame_end(&w, 0, 16380), wlen);
    assert_int_equal(w.len, wlen);
    assert_memory_equal(buf, exp, wlen);

    /* What we wrote is a frame our own parser reads back. */
    {
        struct spoe_frame f;

        assert_int_equal(spoe_frame_parse(buf + 4, wlen - 4, &f), SPOE_ST_NONE);
        assert_int_equal(f.type, SPOE_FRM_ACK);
        assert_int_equal(f.flags, SPOE_FL_FIN);
        assert_int_equal(f.stream_id, 5);
        assert_int_equal(f.frame_id, 300);
        assert_ptr_equal(f.payload, buf + 12);
    }
}

static void test_frame_end_limits(void **state)
{
    uint8_t buf[1024];
    struct spoe_wbuf w;
    const struct spoe_data big = spoe_str("0123456789012345678901234567890123456789", 40);
    long total;

    (void)state;
    /* max_frame bounds the frame without its 4-byte prefix. */
    spoe_wbuf_init(&w, buf, sizeof(buf));
    spoe_frame_begin(&w, SPOE_FRM_ACK, SPOE_FL_FIN, 1, 1);
    spoe_put_set_var(&w, SPOE_SCOPE_TXN, "v", 1, &big);
    total = (long)w.len;
    assert_int_equal(spoe_frame_end(&w, 0, (uint32_t)(total - 4)), total);
    assert_int_equal(spoe_frame_end(&w, 0, (uint32_t)(total - 5)), -1);
    assert_int_equal(spoe_frame_end(&w, 0, 0), -1);

    /* A 2-frame buffer: the second frame's length goes at its own start. */
    {
        size_t start = w.len;
        const struct spoe_data d = spoe_str("fr", 2);

        spoe_frame_begin(&w, SPOE_FRM_ACK, SPOE_FL_FIN, 2, 7);
        spoe_put_set_var(&w, SPOE_SCOPE_TXN, "locale", 6, &d);
        assert_int_equal(spoe_frame_end(&w, start, 16380), (long)(w.len - start));
        assert_memory_equal(buf + start, "\x00\x00\x00\x15\x67\x00\x00\x00\x01\x02\x07", 11);
        assert_memory_equal(buf, "\x00\x00\x00", 3); /* first prefix untouched */
        assert_int_equal(buf[3], (uint8_t)(total - 4));
        /* A start past the data is refused. */
        assert_int_equal(spoe_frame_end(&w, w.len - 3, 16380), -1);
    }

    /* The buffer overflows on the action: the frame is refused whatever the
     * limit, and the overflow sticks even for puts that would fit. */
    {
        uint8_t small[64];

        memset(small, 0xee, sizeof(small));
        spoe_wbuf_init(&w, small, 32);
        spoe_frame_begin(&w, SPOE_FRM_ACK, SPOE_FL_FIN, 1, 1);
        assert_false(w.overflow);
        spoe_put_set_var(&w, SPOE_SCOPE_TXN, "v", 1, &big);
        assert_true(w.overflow);
        {
            size_t len = w.len;

            spoe_put_bytes(&w, "x", 1);
            spoe_put_varint(&w, 1);
            spoe_put_unset_var(&w, SPOE_SCOPE_TXN, "v", 1);
            assert_true(w.overflow);
            assert_int_equal(w.len, len);
        }
        assert_int_equal(spoe_frame_end(&w, 0, 16380), -1);
        assert_int_equal(small[32], 0xee);
    }

    /* Too small even for the header. */
    spoe_wbuf_init(&w, buf, 3);
    spoe_frame_begin(&w, SPOE_FRM_ACK, SPOE_FL_FIN, 1, 1);
    assert_true(w.overflow);
    assert_int_equal(spoe_frame_end(&w, 0, 16380), -1);

    /* An exact fit is not an overflow. */
    spoe_wbuf_init(&w, buf, 13);
    spoe_frame_begin(&w, SPOE_FRM_ACK, SPOE_FL_FIN, 1, 1);
    spoe_put_bytes(&w, "ab", 2);
    assert_false(w.overflow);
    assert_int_equal(spoe_frame_end(&w, 0, 16380), 13);
    assert_memory_equal(buf,
                        "\x00\x00\x00\x09\x67\x00\x00\x00\x01\x01\x01"
                        "ab",
                        13);
}

static void test_agent_disconnect_encoding(void **state)
{
    static const uint8_t want[] = "\x00\x00\x00\x2f"
                                  "\x66\x00\x00\x00\x01\x00\x00"
                                  "\x0b"
                                  "status-code"
                                  "\x03\x03"
                                  "\x07"
                                  "message"
                                  "\x08\x10"
                                  "frame is too big";
    uint8_t buf[128];
    struct spoe_wbuf w;
    const struct spoe_data code = spoe_uint(SPOE_ST_TOO_BIG);
    const char *msg = spoe_status_str(SPOE_ST_TOO_BIG);
    const struct spoe_data text = spoe_str(msg, strlen(msg));

    (void)state;
    assert_int_equal(sizeof(want) - 1, 4 + 0x2f);
    spoe_wbuf_init(&w, buf, sizeof(buf));
    spoe_frame_begin(&w, SPOE_FRM_AGENT_DISCONNECT, SPOE_FL_FIN, 0, 0);
    spoe_put_kv(&w, "status-code", &code);
    spoe_put_kv(&w, "message", &text);
    assert_int_equal(spoe_frame_end(&w, 0, 256), sizeof(want) - 1);
    assert_memory_equal(buf, want, sizeof(want) - 1);

    /* And back, as a peer would read it. */
    {
        struct spoe_frame f;
        struct spoe_cur c;
        const char *n;
        size_t nl;
        struct spoe_data d;

        assert_int_equal(spoe_frame_parse(buf + 4, sizeof(want) - 1 - 4, &f), SPOE_ST_NONE);
        assert_int_equal(f.type, SPOE_FRM_AGENT_DISCONNECT);
        c.p = f.payload;
        c.end = f.payload + f.len;
        assert_int_equal(spoe_kv_next(&c, &n, &nl, &d), 1);
        assert_str_equal_n(n, nl, "status-code");
        assert_int_equal(d.type, SPOE_UINT32);
        assert_int_equal(d.u.u32, 3);
        assert_int_equal(spoe_kv_next(&c, &n, &nl, &d), 1);
        assert_str_equal_n(n, nl, "message");
        assert_str_equal_n(d.u.s.ptr, d.u.s.len, "frame is too big");
        assert_int_equal(spoe_kv_next(&c, &n, &nl, &d), 0);
    }
}

static void test_status_str(void **state)
{
    (void)state;
    assert_string_equal(spoe_status_str(SPOE_ST_NONE), "normal");
    assert_string_equal(spoe_status_str(SPOE_ST_BAD_VSN), "unsupported version");
    assert_string_equal(spoe_status_str((enum spoe_status)77), "an unknown error occurred");
    for (int st = 0; st <= 13; st++)
        assert_non_null(spoe_status_str((enum spoe_status)st));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_varint_vectors),
        cmocka_unit_test(test_varint_encode_no_room),
        cmocka_unit_test(test_varint_negative),
        cmocka_unit_test(test_varint_malformed),
        cmocka_unit_test(test_varint_roundtrip_property),
        cmocka_unit_test(test_data_vectors),
        cmocka_unit_test(test_data_long_strings),
        cmocka_unit_test(test_data_bool_flags),
        cmocka_unit_test(test_data_reserved_types),
        cmocka_unit_test(test_data_truncated_strings),
        cmocka_unit_test(test_kv_list),
        cmocka_unit_test(test_frame_parse_real_hello),
        cmocka_unit_test(test_frame_parse_healthcheck_hello),
        cmocka_unit_test(test_frame_parse_metadata),
        cmocka_unit_test(test_hello_missing_items),
        cmocka_unit_test(test_hello_versions),
        cmocka_unit_test(test_hello_wrong_types),
        cmocka_unit_test(test_hello_truncated),
        cmocka_unit_test(test_list_has),
        cmocka_unit_test(test_notify_iterate),
        cmocka_unit_test(test_notify_zero_args),
        cmocka_unit_test(test_notify_nargs_too_many),
        cmocka_unit_test(test_notify_validate_cuts),
        cmocka_unit_test(test_ack_encoding),
        cmocka_unit_test(test_frame_end_limits),
        cmocka_unit_test(test_agent_disconnect_encoding),
        cmocka_unit_test(test_status_str),
    };

    return cmocka_run_group_tests_name("spoe_codec", tests, NULL, NULL);
}
