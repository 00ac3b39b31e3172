/* Next.js ISR cache entries as the @fortedigital/nextjs-cache-handler
 * "redis-strings" handler stores them, read the way Next.js reads them.
 *
 * Pure code: no I/O, no globals, no clock. The caller fetches the value and the
 * tag times from Valkey and passes the current time in.
 *
 * Every rule below was checked against the installed sources of next 16.4.6,
 * 16.3.7, 15.5.29 and the handler 3.3.0 / 2.5.3, and against the bytes the
 * fixture app wrote and sent (tests/fixtures/isr/<variant>/). */
#ifndef CEDRA_ISR_H
#define CEDRA_ISR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Why an entry is not served from the edge. Everything but ISR_OK is a miss:
 * the request goes to the origin, which is always right. */
enum isr_err {
    ISR_OK = 0,
    ISR_MALFORMED,   /* not the handler's JSON, or a field of the wrong type/range */
    ISR_TOO_BIG,     /* value, body, tags or headers over the limits */
    ISR_NOT_PAGE,    /* value null or kind not APP_PAGE/PAGES (FETCH, APP_ROUTE, ...) */
    ISR_NO_HTML,     /* no html string, or an empty one */
    ISR_POSTPONED,   /* "postponed" is a string (PPR shell; "" counts, as in Next) */
    ISR_NO_LIFESPAN, /* lifespan null/absent: freshness only Next's memory knows */
    ISR_UNSUPPORTED, /* a status or header the edge does not reproduce */
    ISR_NOMEM,
};

/* A short token for logs and metric labels ("malformed", ...). */
const char *isr_err_str(enum isr_err err);

enum isr_kind {
    ISR_APP_PAGE,
    ISR_PAGES,
};

/* Next.js configuration that shapes what it sends (next.config.js). */
struct isr_conf {
    /* expireTime (s): Cache-Control's stale-while-revalidate is expire -
     * revalidate, and Next >= 16 treats an entry older than this as a
     * blocking miss. 0 = none. Next's default is one year. */
    int64_t expire;
    bool powered_by;  /* poweredByHeader: X-Powered-By: Next.js */
    bool compress;    /* compress: Vary gets Accept-Encoding (not on a 304) */
    size_t max_value; /* largest raw JSON value accepted (bytes) */
    size_t max_body;  /* largest html body served from the edge (bytes) */
};

#define ISR_ONE_YEAR 31536000
#define ISR_CONF_DEFAULT                                                                           \
    {                                                                                              \
        .expire = ISR_ONE_YEAR, .powered_by = true, .compress = true, .max_value = 16u << 20,      \
        .max_body = 2u << 20                                                                       \
    }

/* Limits on untrusted input. Next itself allows 128 explicit tags of at most
 * 256 characters; implicit "_N_T_" tags add one per route segment. */
#define ISR_MAX_TAGS 512
#define ISR_MAX_TAG_LEN 1024
#define ISR_MAX_ENTRY_HEADERS 32
#define ISR_MAX_HEADER_VALUE 8192

/* '"' + base36(52-bit hash) + base36(UTF-16 length) + '"' + NUL fits. */
#define ISR_ETAG_SIZE 32

struct isr_header {
    const char *name;
    const char *value; /* NUL-terminated; no CR, LF, NUL or other CTL but HTAB */
    size_t value_len;
};

/* A payload in a content-coding (gzip), made once by isr_entry_encode():
 * data NULL when the entry has none (not asked for, below the size Next
 * compresses from, or the encoder failed). */
struct isr_coded {
    const unsigned char *data;
    size_t len;
};

/* One value.segmentData member: the segment path the client asks for in
 * Next-Router-Segment-Prefetch ("/_tree", "/_full", ...) and its payload. */
struct isr_segment {
    const char *path; /* NUL-terminated */
    size_t path_len;
    const unsigned char *data;
    size_t len;
    struct isr_coded gz;
};

#define ISR_MAX_SEGMENTS 256
#define ISR_MAX_SEGMENT_PATH 1024

/* A parsed, servable entry. Read-only for the caller; pointers stay valid
 * until isr_entry_free(). */
struct isr_entry {
    enum isr_kind kind;
    int status;            /* value.status; 200 when absent */
    int64_t last_modified; /* ms */
    struct {
        int64_t last_modified_at, stale_at, expire_at, stale_age, expire_age; /* s */
        int64_t revalidate; /* s; 0 = revalidate: false */
    } lifespan;
    const char *body; /* value.html, UTF-8, NUL-terminated (may hold NULs) */
    size_t body_len;
    size_t body_units; /* its length in UTF-16 code units (the ETag's length) */
    /* It holds a control byte other than TAB (or DEL): HAProxy's lf-string
     * would escape it, so such a body cannot go into an ACK variable.
     * Computed once here, not per request. */
    bool body_has_ctl;
    bool has_rsc, has_segments;
    /* value.rscData and value.segmentData decoded once (the handler's
     * Buffer.from(s, "base64")), for App Router navigations and prefetches.
     * NULL / 0 when absent or not in the canonical base64 Node writes: such an
     * entry still serves HTML, its RSC requests go to the origin. */
    const unsigned char *rsc;
    size_t rsc_len;
    size_t nsegments;
    const struct isr_segment *segments; /* NULL when any could not be decoded */
    /* The html and the rscData in gzip (isr_entry_encode()). */
    struct isr_coded body_gz, rsc_gz;
    /* Heap bytes the entry holds beside struct isr_entry and its private
     * part (the in-process cache budget), approximately. */
    size_t mem;
    /* The tags to look up in <prefix>__revalidated_tags__: the union of
     * "tags" and the x-next-cache-tags header (equal for APP_PAGE; the handler
     * compares "tags" plus Next's implicit tags, which Next also wrote into
     * both). Only "_N_T_" tags are ever written there, but the handler asks
     * for all of them and so do we. */
    size_t ntags;
    const char *const *tags;
    /* The entry's own headers, x-next-cache-tags removed, in stored order. */
    size_t nheaders;
    const struct isr_header *headers;
    char etag[ISR_ETAG_SIZE]; /* as Next sends it, quotes included */
    struct isr_entry_priv *priv;
};

/* Parses a raw value (the GET reply). On ISR_OK *out is set and must be
 * freed with isr_entry_free(); otherwise *out is NULL. conf NULL = defaults. */
enum isr_err isr_entry_parse(const char *buf, size_t len, const struct isr_conf *conf,
                             struct isr_entry **out);
void isr_entry_free(struct isr_entry *e);

/* Writes a coded copy of in[0..len) to *out (malloc'd, the entry frees it).
 * Returns 0, or -1 (nothing allocated). */
typedef int isr_encoder(const void *in, size_t len, unsigned char **out, size_t *outlen, void *ud);

/* Next's `compression` leaves an answer with a Content-Length below this
 * many bytes as it is: the HTML (sendRenderResult sends a string with its
 * length). RSC payloads and segments are streamed, without Content-Length:
 * compressed whatever their size (measured, empty segments included). */
#define ISR_COMPRESS_MIN 1024

/* Gives the entry's html (if at least ISR_COMPRESS_MIN bytes), rscData and
 * every segment their gzip copy, made by enc, once: before the entry is
 * shared between threads (it is not locked). e->mem grows by what was
 * made. Returns 0, or -1 when enc failed for one (the others are kept; a
 * payload without its copy is then not answered in gzip by the edge). */
int isr_entry_encode(struct isr_entry *e, isr_encoder *enc, void *ud);

enum isr_state {
    ISR_FRESH,       /* serve, x-nextjs-cache: HIT */
    ISR_STALE,       /* serve, x-nextjs-cache: STALE; someone must revalidate */
    ISR_EXPIRED,     /* miss: past lifespan.expireAt (handler) or expireTime (Next) */
    ISR_REVALIDATED, /* miss: a tag was revalidated after lastModified */
};

/* "No time recorded" in a tag_times[] slot (nil reply, or not a number). */
#define ISR_TAG_NONE INT64_MIN

/* A __revalidated_tags__ field value as the handler reads it: JavaScript's
 * parseInt(s, 10) (leading blanks, sign, digits, junk after ignored),
 * saturated to int64; ISR_TAG_NONE when there is no number. */
int64_t isr_tag_time(const char *s, size_t len);

/* Where the entry stands at now_ms (Unix ms), exactly as handler + Next do:
 *  - expired when lifespan.expireAt < floor(now / 1000) (the handler), or,
 *    for a numeric revalidate and conf->expire > 0, when lastModified +
 *    expire*1000 < now (Next >= 16's blocking revalidation);
 *  - revalidated when a tag time (ms) > lastModified (the handler);
 *  - stale when revalidate is a number and lastModified + revalidate*1000 <
 *    now (Next: revalidateAfter < now; revalidate: false is never stale);
 *  - fresh otherwise.
 * tag_times[i] is the time for e->tags[i]; ntimes may be 0 when none were
 * fetched (the caller then must not serve if it could not ask). */
enum isr_state isr_state(const struct isr_entry *e, const struct isr_conf *conf, int64_t now_ms,
                         const int64_t *tag_times, size_t ntimes);

/* The response headers Next.js sends for this entry (Content-Length and the
 * hop-by-hop ones aside), in Next's order. */
#define ISR_MAX_HEADERS (ISR_MAX_ENTRY_HEADERS + 8)
struct isr_headers {
    size_t n;
    struct isr_header h[ISR_MAX_HEADERS];
    char cache_control[64]; /* storage for the Cache-Control value */
};

/* Fills out for a HIT (ISR_FRESH) or a STALE answer; not_modified gives the
 * 304 variant (no Content-Type, no Accept-Encoding in Vary, as Next does).
 * Values point into e, out and static strings. Returns 0, or -1 for a state
 * that is not served. */
int isr_headers(const struct isr_entry *e, enum isr_state st, bool not_modified,
                const struct isr_conf *conf, struct isr_headers *out);

/* What a request asks for, and so which body and headers answer it. */
enum isr_variant {
    ISR_HTML,    /* the document (value.html) */
    ISR_RSC,     /* a client navigation or a full prefetch (value.rscData) */
    ISR_SEGMENT, /* a segment prefetch (one value.segmentData member) */
};

/* The headers Next.js sends when it answers an RSC request from the cache
 * (app-page-runtime.js, Next 15.5 and 16.x without PPR): for ISR_RSC the
 * HTML set without X-Powered-By and ETag (sendRenderResult streams a Buffer:
 * no ETag, so never a 304) and Content-Type text/x-component; for
 * ISR_SEGMENT no entry headers, x-nextjs-postponed: 2 after
 * x-nextjs-prerender. ISR_HTML is isr_headers(). The status is the entry's
 * (200, or 404 for notFound()) for ISR_RSC, always 200 for ISR_SEGMENT (Next
 * answers the segment before it applies the entry's status): isr_rsc_status().
 * Returns 0, or -1 when not served. */
int isr_variant_headers(const struct isr_entry *e, enum isr_variant v, enum isr_state st,
                        bool not_modified, const struct isr_conf *conf, struct isr_headers *out);

/* The status of the answer for v: the entry's for ISR_HTML and ISR_RSC,
 * 200 for ISR_SEGMENT. */
int isr_rsc_status(const struct isr_entry *e, enum isr_variant v);

/* The payload of a segment (exact match of the path, as Map.get), NULL when
 * the entry has no such segment. */
const struct isr_segment *isr_segment_find(const struct isr_entry *e, const char *path, size_t len);

/* The App Router's cache-busting search parameter (_rsc), as Next >= 15.5
 * checks it (base-server.js, validateRSCRequestHeaders): the value the client
 * must send for these header values (NULL = header absent). Writes the
 * SHA-256 form (base64url of the first 12 bytes, 16 characters) to sha and
 * the legacy form (djb2, base36, at most 5 characters) to legacy, both
 * NUL-terminated; an empty string in both when no header counts (Next then
 * wants "_rsc" with an empty value). Returns -1 when a value is not printable
 * ASCII (the JavaScript would hash its UTF-16 code units). */
#define ISR_RSC_PARAM_SIZE 24
int isr_rsc_param(const char *prefetch, size_t prefetch_len, const char *segment,
                  size_t segment_len, const char *tree, size_t tree_len,
                  char sha[ISR_RSC_PARAM_SIZE], char legacy[ISR_RSC_PARAM_SIZE]);

/* The strong ETag Next.js computes for a body: FNV-1a 52-bit over its UTF-16
 * code units, '"' + base36(hash) + base36(units) + '"'. Writes it (NUL-
 * terminated) to out and returns its length, or -1 if utf8 is not valid
 * UTF-8 (a JavaScript string from JSON never is; such a body is not served). */
int isr_etag(const char *utf8, size_t len, char out[ISR_ETAG_SIZE]);

/* True when an If-None-Match value matches etag, as Next's `fresh` decides:
 * the value "*", or a comma-separated member equal to etag or to W/etag
 * (weak comparison). Pass the whole field (repeated fields joined by ", ").
 * Like `fresh`, only spaces are trimmed around members. */
bool isr_if_none_match(const char *hdr, size_t len, const char *etag);

/* True when a request Cache-Control value holds the no-cache directive as
 * `fresh` sees it: then Next answers 200, not 304. Next answers 200 too when
 * the request has a non-empty If-Modified-Since (it sends no Last-Modified),
 * so a 304 is right only when: If-None-Match matches, no no-cache, no
 * If-Modified-Since. */
bool isr_no_cache(const char *hdr, size_t len);

#endif
