/* The keys of HAProxy's cache for "haproxy-cache on" answers, which are also
 * the paths the delivery server fills them from (after FILL_PREFIX):
 *
 *   <entry id: 16 hex digits> "-" <configuration generation: 1-16 hex digits>
 *   [".rsc" | ".seg" <segment path: 2 hex digits a byte>] [".gz"]
 *
 * Nothing else parses: a key names one answer of one entry in one coding, and
 * the delivery server answers only keys of this form. */
#ifndef CEDRA_FILL_KEY_H
#define CEDRA_FILL_KEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "isr.h"

#define FILL_PREFIX "/.cedra/page/"
#define FILL_KEY_MAX (16 + 1 + 16 + 4 + 2 * ISR_MAX_SEGMENT_PATH + 3 + 1)

struct fill_key {
    uint64_t id;
    uint64_t gen;
    enum isr_variant variant;
    const char *segment; /* ISR_SEGMENT: its path, 1..ISR_MAX_SEGMENT_PATH bytes */
    size_t segment_len;
    bool gzip;
};

/* Writes k's key, NUL-terminated, into out (FILL_KEY_MAX is always enough):
 * its length, or -1 when it does not fit or k is not a valid key. */
int fill_key_format(const struct fill_key *k, char *out, size_t outlen);
/* Parses a key; an ISR_SEGMENT's path is decoded into seg, which k->segment
 * then points to. 0, or -1 when s is not exactly a key. */
int fill_key_parse(const char *s, struct fill_key *k, char seg[ISR_MAX_SEGMENT_PATH]);

#endif
