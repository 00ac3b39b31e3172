/* Locales the storefront serves, and which one a request asks for. */
#ifndef CEDRA_LOCALE_H
#define CEDRA_LOCALE_H

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

#endif
