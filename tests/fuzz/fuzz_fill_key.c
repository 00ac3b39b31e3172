/* libFuzzer target for spoa/fill_key.c, the keys of HAProxy's cache that the
 * delivery server's fill endpoint parses from the request path. The path
 * comes over a socket HAProxy connects to, so every byte is treated as
 * untrusted.
 *
 * A key that parses must be canonical: formatted again, it is the same
 * bytes (one spelling per key, so one cache entry per answer), and it parses
 * to the same fields. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fill_key.h"

static void check(int cond)
{
    if (!cond)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char in[FILL_KEY_MAX + 64], out[FILL_KEY_MAX], seg[ISR_MAX_SEGMENT_PATH],
        seg2[ISR_MAX_SEGMENT_PATH];
    struct fill_key k, k2;
    int n;

    if (size >= sizeof(in))
        return 0;
    memcpy(in, data, size);
    in[size] = '\0';
    if (fill_key_parse(in, &k, seg) < 0)
        return 0;
    check(k.variant != ISR_SEGMENT ||
          (k.segment == seg && k.segment_len > 0 && k.segment_len <= ISR_MAX_SEGMENT_PATH));
    n = fill_key_format(&k, out, sizeof(out));
    check(n >= 0 && (size_t)n == strlen(in) && strcmp(out, in) == 0);
    check(fill_key_parse(out, &k2, seg2) == 0);
    check(k2.id == k.id && k2.gen == k.gen && k2.variant == k.variant && k2.gzip == k.gzip &&
          k2.segment_len == k.segment_len);
    check(k.variant != ISR_SEGMENT || memcmp(seg, seg2, k.segment_len) == 0);
    return 0;
}
