#include "gzip.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <zlib.h>

int gzip_encode(const void *in, size_t len, unsigned char **out, size_t *outlen, void *ud)
{
    int level = ud ? *(const int *)ud : GZIP_LEVEL_DEFAULT;
    z_stream zs = {0};
    unsigned char *buf;
    uLong cap;
    int rc;

    /* One deflate() call: the payloads are bounded by max_body (far below
     * 4 GiB), and deflateBound() is enough room for the whole stream. */
    if (len > UINT_MAX || level < 1 || level > 9)
        return -1;
    /* windowBits 15 + 16: the gzip wrapper; memLevel 8 as Node. */
    if (deflateInit2(&zs, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return -1;
    cap = deflateBound(&zs, (uLong)len);
    buf = malloc(cap ? cap : 1);
    if (!buf) {
        deflateEnd(&zs);
        return -1;
    }
    zs.next_in = (Bytef *)(uintptr_t)in;
    zs.avail_in = (uInt)len;
    zs.next_out = buf;
    zs.avail_out = (uInt)cap;
    rc = deflate(&zs, Z_FINISH);
    *outlen = (size_t)zs.total_out;
    deflateEnd(&zs);
    if (rc != Z_STREAM_END) {
        free(buf);
        return -1;
    }
    *out = buf;
    return 0;
}
