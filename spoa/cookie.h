/* Reading one cookie out of a Cookie request header (RFC 6265 §5.4 syntax). */
#ifndef CEDRA_COOKIE_H
#define CEDRA_COOKIE_H

#include <stdbool.h>
#include <stddef.h>

/* Finds the first cookie called `name` in the header value hdr[0..len).
 * The value is returned without surrounding double quotes; it points into
 * hdr. Pairs without '=' are skipped. */
bool cookie_get(const char *hdr, size_t len, const char *name, const char **val, size_t *vlen);

#endif
