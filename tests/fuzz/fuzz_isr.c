/* libFuzzer target for spoa/isr.c: the ISR entry parser (the value comes
 * from Valkey, which anyone with write access there controls), the ETag over
 * arbitrary bytes, If-None-Match, Cache-Control and the tag-time parser.
 *
 * The whole input is tried as an entry; on success the header lists must be
 * safe to hand to HAProxy (token names, no CR/LF/NUL/CTL in values) and the
 * stored ETag must be the ETag of the body. The same bytes then serve as an
 * If-None-Match / Cache-Control value and as a tag time. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "isr.h"

static void check_token(const char *s)
{
    if (*s == '\0')
        abort();
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;

        if (c <= 0x20 || c >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", c))
            abort();
    }
}

static void check_value(const struct isr_header *h)
{
    if (strlen(h->value) != h->value_len)
        abort();
    for (size_t i = 0; i < h->value_len; i++) {
        unsigned char c = (unsigned char)h->value[i];

        if (c != '\t' && (c < 0x20 || c == 0x7f))
            abort();
    }
}

static void check_headers(const struct isr_entry *e, enum isr_state st, bool nm)
{
    struct isr_headers h;
    bool etag = false;

    if (isr_headers(e, st, nm, NULL, &h) != 0)
        abort();
    if (h.n == 0 || h.n > ISR_MAX_HEADERS)
        abort();
    for (size_t i = 0; i < h.n; i++) {
        check_token(h.h[i].name);
        check_value(&h.h[i]);
        if (strcasecmp(h.h[i].name, "x-next-cache-tags") == 0 ||
            strcasecmp(h.h[i].name, "set-cookie") == 0 ||
            strcasecmp(h.h[i].name, "content-length") == 0 ||
            strcasecmp(h.h[i].name, "transfer-encoding") == 0)
            abort();
        if (strcmp(h.h[i].name, "ETag") == 0) {
            if (etag || strcmp(h.h[i].value, e->etag) != 0)
                abort();
            etag = true;
        }
    }
    if (!etag)
        abort();
}

static void check_entry(const struct isr_entry *e)
{
    char etag[ISR_ETAG_SIZE];
    int64_t times[ISR_MAX_TAGS];
    enum isr_state st;

    if (e->body_len == 0 || e->body[e->body_len] != '\0')
        abort();
    if (e->status != 200 && e->status != 404)
        abort();
    if (isr_etag(e->body, e->body_len, etag) < 0 || strcmp(etag, e->etag) != 0)
        abort();
    if (e->ntags > ISR_MAX_TAGS || e->nheaders > ISR_MAX_ENTRY_HEADERS)
        abort();
    for (size_t i = 0; i < e->ntags; i++) {
        size_t l = strlen(e->tags[i]);

        if (l == 0 || l > ISR_MAX_TAG_LEN)
            abort();
        for (size_t j = 0; j < i; j++)
            if (strcmp(e->tags[i], e->tags[j]) == 0)
                abort();
        times[i] = i & 1 ? e->last_modified + 1 : ISR_TAG_NONE;
    }
    for (size_t i = 0; i < e->nheaders; i++) {
        check_token(e->headers[i].name);
        check_value(&e->headers[i]);
    }

    (void)isr_state(e, NULL, e->last_modified, NULL, 0);
    (void)isr_state(e, NULL, INT64_MIN, NULL, 0);
    (void)isr_state(e, NULL, INT64_MAX, NULL, 0);
    st = isr_state(e, NULL, e->lifespan.expire_at * 1000, times, e->ntags);
    if (e->ntags >= 2 && st != ISR_REVALIDATED && st != ISR_EXPIRED)
        abort();
    check_headers(e, ISR_FRESH, false);
    check_headers(e, ISR_STALE, false);
    check_headers(e, ISR_FRESH, true);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    struct isr_entry *e = NULL;
    enum isr_err err;
    char etag[ISR_ETAG_SIZE];
    int n;

    err = isr_entry_parse(s, size, NULL, &e);
    if ((err == ISR_OK) != (e != NULL))
        abort();
    if (e) {
        check_entry(e);
        if (isr_if_none_match(e->etag, strlen(e->etag), e->etag) != true)
            abort();
        (void)isr_if_none_match(s, size, e->etag);
        isr_entry_free(e);
    }
    (void)isr_err_str(err);

    n = isr_etag(s, size, etag);
    if (n >= 0) {
        if (n < 4 || (size_t)n >= ISR_ETAG_SIZE || (int)strlen(etag) != n || etag[0] != '"' ||
            etag[n - 1] != '"')
            abort();
        for (int i = 1; i < n - 1; i++)
            if (!((etag[i] >= '0' && etag[i] <= '9') || (etag[i] >= 'a' && etag[i] <= 'z')))
                abort();
        /* A match that is not the wildcard names the etag literally. */
        if (isr_if_none_match(s, size, etag) && !(size == 1 && s[0] == '*') &&
            memmem(s, size, etag, (size_t)n) == NULL)
            abort();
    }
    if (isr_no_cache(s, size) && memmem(s, size, "no-cache", 8) == NULL)
        abort();
    (void)isr_tag_time(s, size);
    return 0;
}
