/* gzip for the edge's answers (zlib), in the format Node's zlib.createGzip()
 * writes for Next.js's `compression`: deflate with a gzip wrapper. */
#ifndef CEDRA_GZIP_H
#define CEDRA_GZIP_H

#include <stddef.h>

#define GZIP_LEVEL_DEFAULT 6 /* zlib's default, which Node and so Next use */

/* Compresses in[0..len) at level (1..9) into a malloc'd *out. Returns 0, or
 * -1 (out of memory, or a zlib error; nothing allocated). The signature is
 * isr_encoder's, ud pointing to the int level. */
int gzip_encode(const void *in, size_t len, unsigned char **out, size_t *outlen, void *ud);

#endif
