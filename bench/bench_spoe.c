/* Microbenchmark of the libspoe codec on the hot path of cedra-spoa: decode
 * one realistic NOTIFY frame, walk its arguments as the handler does, encode
 * the ACK. Measured side by side with a plain memcpy of the same frame, which
 * is the floor any decoder is compared to; the ratio is what matters, as it
 * carries over between machines better than the absolute figures.
 *
 * Usage: bench_spoe [SECONDS_PER_RUN]   (default 1; best of 5 runs each) */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "spoe.h"

#define RUNS 5
#define FRAME_CAP 4096
#define MAX_FRAME 16380u

/* Keeps a value alive without a global: the compiler must assume the asm
 * reads it (and any memory it points to). */
#define SINK(x) __asm__ volatile("" : : "r"(x) : "memory")

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int name_is(const char *n, size_t nl, const char *lit, size_t litlen)
{
    return nl == litlen && memcmp(n, lit, nl) == 0;
}
#define NAME_IS(n, nl, lit) name_is(n, nl, lit, sizeof(lit) - 1)

/* Builds the NOTIFY the SPOE file of cedra-spoa sends for a storefront page
 * view. Returns its length without the 4-byte prefix, at buf + 4. */
static size_t build_notify(uint8_t *buf, size_t cap)
{
    static const char cookie[] = "NEXT_LOCALE=fr; sid=3f9a1c0e7b2d4a6f8e1c0b9a7d6e5f40a1b2c3d4; "
                                 "_ga=GA1.2.1234567890.1699999999; cart=eyJpdGVtcyI6M30; consent=1";
    static const char *const keys[] = {"method", "path", "query",          "host",
                                       "cookie", "pool", "accept-language"};
    static const char *const vals[] = {"GET",
                                       "/fr/products/chair",
                                       "utm_source=x&page=2",
                                       "shop.example.com",
                                       cookie,
                                       "cedra_pool=canary",
                                       "nl-BE,nl;q=0.9,en;q=0.8,fr;q=0.7"};
    const uint8_t nargs = 8;
    struct spoe_wbuf w;
    struct spoe_data src = {.type = SPOE_IPV4};
    long total;

    memcpy(&src.u.v4, "\xc0\x00\x02\x21", 4); /* 192.0.2.33 */
    spoe_wbuf_init(&w, buf, cap);
    spoe_frame_begin(&w, SPOE_FRM_NOTIFY, SPOE_FL_FIN, 48213, 1);
    spoe_put_str(&w, "cedra-req", 9);
    spoe_put_bytes(&w, &nargs, 1);
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        struct spoe_data d = spoe_str(vals[i], strlen(vals[i]));

        spoe_put_kv(&w, keys[i], &d);
    }
    spoe_put_kv(&w, "src", &src);
    total = spoe_frame_end(&w, 0, MAX_FRAME);
    if (total < 0) {
        fprintf(stderr, "bench_spoe: cannot build the NOTIFY frame\n");
        exit(1);
    }
    return (size_t)total - 4;
}

/* What a handler does with a NOTIFY: find its message, read the arguments it
 * decides on (path bytes, the locale cookie, the language header), then
 * answer with three txn variables. Returns the ACK length, or -1. */
static long handle_frame(const uint8_t *frame, size_t len, uint8_t *out, size_t cap)
{
    struct spoe_frame f;
    struct spoe_cur c;
    struct spoe_msg m;
    struct spoe_wbuf w;
    const char *locale = "en";
    uint32_t path_hash = 2166136261u;
    int have_v4 = 0;

    if (spoe_frame_parse(frame, len, &f) != SPOE_ST_NONE || f.type != SPOE_FRM_NOTIFY)
        return -1;
    c.p = f.payload;
    c.end = f.payload + f.len;
    while (spoe_msg_next(&c, &m) == 1) {
        const char *n;
        size_t nl;
        struct spoe_data d;

        if (!NAME_IS(m.name, m.name_len, "cedra-req"))
            continue;
        while (spoe_arg_next(&m, &n, &nl, &d) == 1) {
            if (NAME_IS(n, nl, "path") && d.type == SPOE_STR) {
                /* The ISR key is derived from the path: every byte is read. */
                for (size_t i = 0; i < d.u.s.len; i++)
                    path_hash = (path_hash ^ (uint8_t)d.u.s.ptr[i]) * 16777619u;
                if (d.u.s.len >= 3 && d.u.s.ptr[0] == '/' && d.u.s.ptr[1] == 'f' &&
                    d.u.s.ptr[2] == 'r')
                    locale = "fr";
            } else if (NAME_IS(n, nl, "cookie") && d.type == SPOE_STR) {
                for (size_t i = 0; i + 14 <= d.u.s.len; i++)
                    if (memcmp(d.u.s.ptr + i, "NEXT_LOCALE=", 12) == 0) {
                        locale = d.u.s.ptr + i + 12;
                        break;
                    }
            } else if (NAME_IS(n, nl, "accept-language") && d.type == SPOE_STR) {
                SINK(d.u.s.ptr[0]);
            } else if (NAME_IS(n, nl, "src") && d.type == SPOE_IPV4) {
                have_v4 = 1;
            }
        }
    }
    SINK(path_hash);
    SINK(have_v4);

    spoe_wbuf_init(&w, out, cap);
    spoe_frame_begin(&w, SPOE_FRM_ACK, SPOE_FL_FIN, f.stream_id, f.frame_id);
    {
        struct spoe_data loc = spoe_str(locale, 2);
        struct spoe_data act = spoe_str("serve-edge", 10);
        struct spoe_data cache = spoe_str("HIT", 3);

        spoe_put_set_var(&w, SPOE_SCOPE_TXN, "locale", 6, &loc);
        spoe_put_set_var(&w, SPOE_SCOPE_TXN, "action", 6, &act);
        spoe_put_set_var(&w, SPOE_SCOPE_TXN, "cache", 5, &cache);
    }
    return spoe_frame_end(&w, 0, MAX_FRAME);
}

enum bench_kind { BENCH_DECODE_ACK, BENCH_MEMCPY };

static void run_iters(enum bench_kind kind, long iters, const uint8_t *frame, size_t len,
                      uint8_t *out, size_t cap)
{
    for (long i = 0; i < iters; i++) {
        SINK(frame); /* the frame may have changed: no hoisting across iterations */
        if (kind == BENCH_DECODE_ACK) {
            long r = handle_frame(frame, len, out, cap);

            SINK(r);
        } else {
            memcpy(out, frame, len);
            SINK(out);
        }
    }
}

/* Frames per second, best of RUNS runs of about `seconds` each. */
static double measure(enum bench_kind kind, double seconds, const uint8_t *frame, size_t len,
                      uint8_t *out, size_t cap)
{
    long iters = 1000;
    double best = 0;

    /* Calibrate so that one run lasts about `seconds`. */
    for (;;) {
        double t0 = now(), dt;

        run_iters(kind, iters, frame, len, out, cap);
        dt = now() - t0;
        if (dt >= 0.05) {
            iters = (long)((double)iters * seconds / dt);
            break;
        }
        iters *= 4;
    }
    if (iters < 1)
        iters = 1;

    for (int r = 0; r < RUNS; r++) {
        double t0 = now(), dt, rate;

        run_iters(kind, iters, frame, len, out, cap);
        dt = now() - t0;
        rate = (double)iters / dt;
        if (rate > best)
            best = rate;
    }
    return best;
}

int main(int argc, char **argv)
{
    uint8_t buf[FRAME_CAP], out[FRAME_CAP];
    const uint8_t *frame = buf + 4;
    double seconds = 1.0, dec, cpy;
    size_t len;
    long ack;

    if (argc > 1) {
        seconds = strtod(argv[1], NULL);
        if (!(seconds > 0 && seconds <= 60)) {
            fprintf(stderr, "usage: %s [SECONDS_PER_RUN]\n", argv[0]);
            return 2;
        }
    }
    len = build_notify(buf, sizeof(buf));

    /* A benchmark of a handler that fails measures nothing: check it once. */
    ack = handle_frame(frame, len, out, sizeof(out));
    if (ack < 0) {
        fprintf(stderr, "bench_spoe: the handler rejected its own frame\n");
        return 1;
    }
    {
        static const uint8_t loc[] = "\x01\x03\x02\x06"
                                     "locale"
                                     "\x08\x02"
                                     "fr";
        struct spoe_frame f;

        if (spoe_frame_parse(out + 4, (size_t)ack - 4, &f) != SPOE_ST_NONE ||
            f.type != SPOE_FRM_ACK || f.stream_id != 48213 || f.frame_id != 1 ||
            f.len < sizeof(loc) - 1 || memcmp(f.payload, loc, sizeof(loc) - 1) != 0) {
            fprintf(stderr, "bench_spoe: unexpected ACK\n");
            return 1;
        }
    }
    printf("frame: NOTIFY %zu bytes (1 message, 8 args), ACK %ld bytes\n", len, ack);

    dec = measure(BENCH_DECODE_ACK, seconds, frame, len, out, sizeof(out));
    cpy = measure(BENCH_MEMCPY, seconds, frame, len, out, sizeof(out));

    printf("decode+ack: %.0f frames/s\n", dec);
    printf("memcpy: %.0f frames/s\n", cpy);
    printf("ratio decode+ack/memcpy: %.4f\n", dec / cpy);
    printf("bench_spoe frames_per_s=%.0f memcpy_per_s=%.0f ratio=%.4f\n", dec, cpy, dec / cpy);
    return 0;
}
