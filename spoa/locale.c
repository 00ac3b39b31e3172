#include "locale.h"

#include <string.h>

static int find(const struct locale_set *ls, const char *s, size_t len)
{
    for (unsigned i = 0; i < ls->n; i++)
        if (ls->len[i] == len && memcmp(ls->name[i], s, len) == 0)
            return (int)i;
    return -1;
}

int locale_add(struct locale_set *ls, const char *name)
{
    size_t l = strlen(name);

    if (l == 0 || l >= LOCALE_NAME_MAX || ls->n >= LOCALE_MAX || name[0] == '-' ||
        name[l - 1] == '-')
        return -1;
    for (size_t i = 0; i < l; i++) {
        char c = name[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-'))
            return -1;
    }
    if (find(ls, name, l) >= 0)
        return -1;
    memcpy(ls->name[ls->n], name, l + 1);
    ls->len[ls->n] = (unsigned char)l;
    ls->n++;
    return 0;
}

int locale_set_default(struct locale_set *ls, const char *name)
{
    int i = find(ls, name, strlen(name));

    if (i < 0)
        return -1;
    ls->def = (unsigned)i;
    return 0;
}

int locale_from_path(const struct locale_set *ls, const char *path, size_t len)
{
    size_t seg = 1;

    if (len < 2 || path[0] != '/')
        return -1;
    while (seg < len && path[seg] != '/')
        seg++;
    /* Next.js matches the [locale] segment exactly: "/FR" is not "/fr". */
    return find(ls, path + 1, seg - 1);
}
