/* Which Valkey key Next.js uses for a page: the route table of one build.
 *
 * Next.js <= 16.3.7 and <= 15.5.26 key a page by its pathname; later
 * versions by "/route-cache/<KIND>/<sha256 of the app page>/$<pathname>",
 * so mapping a URL to its key needs the build's routes. The table is made
 * from a build's .next manifests by tools/cedra-routes.mjs. */
#ifndef CEDRA_ROUTES_H
#define CEDRA_ROUTES_H

#include <stddef.h>

enum routes_scheme { ROUTES_PATHNAME, ROUTES_ROUTE_CACHE };

struct routes;

/* Loads a table file. Returns NULL with a reason in err. */
struct routes *routes_load(const char *path, char *err, size_t errlen);
struct routes *routes_parse(const char *name, const char *text, char *err, size_t errlen);
/* A table for the pathname scheme, which needs no routes. */
struct routes *routes_pathname(void);
/* Tables are shared by configurations (reference counted, thread-safe). */
struct routes *routes_hold(struct routes *r);
void routes_free(struct routes *r);

enum routes_scheme routes_scheme(const struct routes *r);
const char *routes_build_id(const struct routes *r);
unsigned routes_count(const struct routes *r);

/* Writes the cache key (without the handler's key prefix) for a request
 * pathname into out. Returns its length, or -1 when the path matches no app
 * page, is not in the canonical form Next.js keys (empty segments, a
 * trailing slash, dot segments, characters outside [A-Za-z0-9-._~]), or does
 * not fit. */
int routes_key(const struct routes *r, const char *path, size_t len, char *out, size_t size);

#endif
