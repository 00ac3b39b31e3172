/* Locales the storefront serves, and which one a request asks for. */
#ifndef CEDRA_LOCALE_H
#define CEDRA_LOCALE_H

#include <stdbool.h>
#include <stddef.h>

#define LOCALE_MAX 32
#define LOCALE_NAME_MAX 16

struct locale_set {
    unsigned n;
    unsigned def; /* index of the default locale */
    char name[LOCALE_MAX][LOCALE_NAME_MAX];
    unsigned char len[LOCALE_MAX];
};

/* Adds a locale tag ("fr", "nl-BE"): letters, digits and '-' only, at most
 * 15 bytes. Returns 0, or -1 when invalid, duplicate or the set is full. */
int locale_add(struct locale_set *ls, const char *name);
/* Makes `name` (already added) the default. */
int locale_set_default(struct locale_set *ls, const char *name);

/* The locale named by the first path segment ("/fr" or "/fr/..."), as an
 * index into ls, or -1. */
int locale_from_path(const struct locale_set *ls, const char *path, size_t len);

/* The locale an Accept-Language value prefers (RFC 9110 §12.5.4, matching
 * per RFC 4647): ranges by descending q (earlier first on ties), q=0 makes
 * the locales it matches unacceptable, "*" stands for any acceptable locale
 * (the default first), a range matches the locales it prefixes ("nl" →
 * "nl-BE") and falls back to its truncations ("nl-BE" → "nl"). Malformed
 * elements are ignored. Returns an index or -1. */
int locale_from_accept_language(const struct locale_set *ls, const char *al, size_t len);

/* The configured locale named exactly by s[0..len), or -1. */
int locale_find(const struct locale_set *ls, const char *s, size_t len);

/* True when a path may be answered with a locale redirect: not under an
 * excluded prefix and not a file (last segment with an extension). */
bool locale_path_redirectable(const char *const *exclude, unsigned nexclude, const char *path,
                              size_t len);

/* Builds "/<locale><path>[?<query>]" into out. Returns its length, or -1 when
 * the path or query holds a byte outside RFC 3986's path/query characters
 * (or a bad %-escape), or does not fit: such a request is never redirected,
 * so no header injection or off-site Location can come out of it. */
int locale_redirect_target(char *out, size_t size, const char *loc, size_t loclen, const char *path,
                           size_t plen, const char *query, size_t qlen);

#endif
