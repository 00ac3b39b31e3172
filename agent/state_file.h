/* HAProxy's server-state-file, kept by cedra-agent.
 *
 * HAProxy 2.6 forgets runtime "set server ... addr" changes on a reload or a
 * restart; with "load-server-state-from-file" it restores them from a file
 * holding a "show servers state" answer. cedra-agent rewrites that file after
 * the rounds that changed the slots, so that an HAProxy restarted by anyone
 * (Nomad on a template change, a crash, an operator) comes back with its
 * pools instead of empty ones until the next round.
 */
#ifndef CEDRA_AGENT_STATE_FILE_H
#define CEDRA_AGENT_STATE_FILE_H

#include <stddef.h>
#include <stdint.h>

/* Checks that text is a "show servers state" answer HAProxy can load:
 * the format version line "1", then the "# be_id ..." header, then rows.
 * 0, or -1 with a reason. */
int state_file_check(const char *text, size_t len, char *err, size_t errlen);

/* Writes text to path atomically (a temporary file in the same directory,
 * fsync, rename): HAProxy never reads half a file. 0, or -1 with a reason. */
int state_file_write(const char *path, const char *text, size_t len, char *err, size_t errlen);

/* A 64-bit FNV-1a of text: the agent rewrites the file only when it changed. */
uint64_t state_file_hash(const char *text, size_t len);

#endif
