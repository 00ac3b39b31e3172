/* The content-coding Next.js would answer a request with. The edge serves
 * cached pages in that same coding so that a response does not depend on
 * whether it came from the cache or from `next start`. */
#ifndef CEDRA_CODING_H
#define CEDRA_CODING_H

#include <stddef.h>

enum coding { CODING_IDENTITY, CODING_GZIP, CODING_DEFLATE };

/* Bounds on the Accept-Encoding field coding_choose() decides for. Browsers
 * and HTTP libraries send well under 100 bytes and 10 elements; a field past
 * these is left to the origin rather than parsed. */
#define CODING_MAX_FIELD 4096  /* bytes of the field value */
#define CODING_MAX_ELEMENTS 64 /* comma-separated pieces, empty ones included */

/* The content-coding Next.js's compression middleware (`compress: true`, the
 * `compression` package and its bundled `negotiator`) picks for a compressible
 * response to a request whose single Accept-Encoding field is ae[0..len) (ae
 * NULL: no field, len ignored). Several fields must be joined with ", " first,
 * as Node.js does.
 *
 * The emulation is exact, quirks included: the value is read as latin1 (NBSP
 * is whitespace); only a parameter reading exactly "q=..." sets a quality, as
 * JavaScript's parseFloat reads it ("q=abc" refuses like q=0, "q=0x1" is 0,
 * "q=Infinity" counts); "*" also covers identity ("gzip;q=0.5, *" is not
 * compressed); deflate is chosen only when gzip is not acceptable at all.
 *
 * Returns 0 with *out set, or -1, leaving *out alone, when the field has more
 * than CODING_MAX_FIELD bytes or CODING_MAX_ELEMENTS pieces: the caller must
 * then let the origin answer. No I/O, no allocation, no shared state. */
int coding_choose(const char *ae, size_t len, enum coding *out);

#endif
