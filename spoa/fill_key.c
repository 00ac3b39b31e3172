#include "fill_key.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define SFX_RSC ".rsc"
#define SFX_SEGMENT ".seg"
#define SFX_GZIP ".gz"

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int fill_key_format(const struct fill_key *k, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    const char *sfx = k->variant == ISR_RSC       ? SFX_RSC
                      : k->variant == ISR_SEGMENT ? SFX_SEGMENT
                                                  : "";
    size_t need;
    int n;

    if (k->variant == ISR_SEGMENT &&
        (!k->segment || k->segment_len == 0 || k->segment_len > ISR_MAX_SEGMENT_PATH))
        return -1;
    n = snprintf(out, outlen, "%016" PRIx64 "-%" PRIx64 "%s", k->id, k->gen, sfx);
    if (n < 0)
        return -1;
    need = (size_t)n + (k->variant == ISR_SEGMENT ? 2 * k->segment_len : 0) +
           (k->gzip ? strlen(SFX_GZIP) : 0) + 1;
    if (need > outlen)
        return -1;
    for (size_t i = 0; k->variant == ISR_SEGMENT && i < k->segment_len; i++) {
        out[n++] = hex[(unsigned char)k->segment[i] >> 4];
        out[n++] = hex[(unsigned char)k->segment[i] & 15];
    }
    if (k->gzip) {
        memcpy(out + n, SFX_GZIP, strlen(SFX_GZIP));
        n += (int)strlen(SFX_GZIP);
    }
    out[n] = '\0';
    return n;
}

/* n (1..max) lower-case hex digits at *p, as a number; advances *p. */
static int hex_number(const char **p, size_t max, uint64_t *v)
{
    size_t n = 0;

    *v = 0;
    while (n < max && hexval((*p)[n]) >= 0) {
        *v = *v << 4 | (uint64_t)hexval((*p)[n]);
        n++;
    }
    *p += n;
    return n ? 0 : -1;
}

int fill_key_parse(const char *s, struct fill_key *k, char seg[ISR_MAX_SEGMENT_PATH])
{
    const char *p = s;

    memset(k, 0, sizeof(*k));
    k->variant = ISR_HTML;
    /* One spelling per key: exactly 16 digits for the id. */
    if (hex_number(&p, 16, &k->id) < 0 || p != s + 16 || *p++ != '-')
        return -1;
    /* The generation without leading zeros, as formatted. */
    if ((p[0] == '0' && hexval(p[1]) >= 0) || hex_number(&p, 16, &k->gen) < 0)
        return -1;
    if (strncmp(p, SFX_RSC, strlen(SFX_RSC)) == 0) {
        k->variant = ISR_RSC;
        p += strlen(SFX_RSC);
    } else if (strncmp(p, SFX_SEGMENT, strlen(SFX_SEGMENT)) == 0) {
        k->variant = ISR_SEGMENT;
        p += strlen(SFX_SEGMENT);
        while (k->segment_len < ISR_MAX_SEGMENT_PATH && hexval(p[0]) >= 0 && hexval(p[1]) >= 0) {
            seg[k->segment_len++] = (char)(hexval(p[0]) << 4 | hexval(p[1]));
            p += 2;
        }
        if (k->segment_len == 0)
            return -1;
        k->segment = seg;
    }
    if (strcmp(p, SFX_GZIP) == 0)
        k->gzip = true;
    else if (*p)
        return -1;
    return 0;
}
