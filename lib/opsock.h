/* Operator socket: a HAProxy-style command line on a UNIX stream socket.
 *
 * One command per line, ';' separates commands on a line ("\;" is a literal
 * semicolon), every answer ends with an empty line. A client gets the answers
 * of its first line and is disconnected, unless it sends "prompt", which
 * switches to interactive mode ("> " prompts, connection kept until "quit" or
 * EOF). "help [<prefix>]" lists the registered commands.
 *
 * The server runs on one libev loop, the daemon's main loop (never a worker's):
 * handlers run on that loop's thread and must not block. All I/O is
 * non-blocking with per-client buffers and every resource is bounded (line
 * length, clients, output per command, idle time, commands per loop
 * iteration), so a slow or hostile client costs memory it is allowed, never
 * the loop's time. */
#ifndef CEDRA_OPSOCK_H
#define CEDRA_OPSOCK_H

#include <stdarg.h>
#include <stddef.h>

#include <ev.h>

/* Words per command (keyword words included) and bytes per word. */
#define OPSOCK_MAX_ARGS 64
#define OPSOCK_MAX_WORD 4096
/* Words in a registered keyword ("set canary weight" is 3). */
#define OPSOCK_MAX_KW_WORDS 5

struct opsock;
struct opsock_out;

/* argv[0..argc) are all the words of the command, keyword words included (as
 * in HAProxy), so "set canary weight 30" gives argc 4 and argv[3] "30". The
 * words live until the handler returns. Output goes through opsock_printf() /
 * opsock_write(); a handler returns 0, or opsock_error(out, ...) which turns
 * the answer into a single "error: <message>" line (output already written by
 * the handler is dropped). */
typedef int (*opsock_fn)(struct opsock_out *out, int argc, char **argv, void *ud);

struct opsock_cmd {
    const char *keyword; /* words separated by single spaces: "show info" */
    const char *help;    /* one line for "help"; may start with the arguments */
    opsock_fn fn;
};

struct opsock_config {
    const char *path;      /* required */
    unsigned mode;         /* 0 = 0600 */
    const char *owner;     /* user name or uid, NULL = unchanged */
    const char *group;     /* group name or gid, NULL = unchanged */
    unsigned max_clients;  /* 0 = 32; beyond it a client gets one error line */
    size_t max_line;       /* bytes before the newline; 0 = 64 KiB */
    size_t max_output;     /* bytes of one command's answer; 0 = 4 MiB */
    double idle_timeout;   /* seconds without progress; 0 = 30 */
    unsigned cmds_per_run; /* commands run per loop iteration and client; 0 = 64 */
};

/* Creates the socket (replacing a stale socket, refusing a live one or any
 * other kind of file) with the configured mode and owner before it accepts
 * anything, and starts accepting on loop. NULL with a reason in err. */
struct opsock *opsock_new(struct ev_loop *loop, const struct opsock_config *cfg, char *err,
                          size_t errlen);

/* Adds a table ending with a {NULL} entry; ud is passed to its handlers. The
 * table is copied. Fails on a malformed or duplicate keyword (including the
 * built-in help, prompt and quit). */
int opsock_register(struct opsock *s, const struct opsock_cmd *cmds, void *ud, char *err,
                    size_t errlen);

/* Disconnects every client, stops the watchers and removes the socket file if
 * it is still the one this server created. NULL is a no-op. Not from inside a
 * handler (its client would be freed under it): defer it, e.g. with ev_break. */
void opsock_free(struct opsock *s);

/* Clients connected now (for "show info" and tests). */
unsigned opsock_nclients(const struct opsock *s);

/* Runs data[0..len) as if one client had sent it and then closed its side:
 * the same line and word splitting, limits, handlers and answer framing as a
 * socket client, without a socket (tests, fuzzing). *out gets what that
 * client would have read (malloc'd, NUL-terminated, *outlen bytes without the
 * NUL; the caller frees it). Returns 0, or -1 (nothing in *out) when memory
 * runs out. Not from inside a handler. */
int opsock_feed(struct opsock *s, const void *data, size_t len, char **out, size_t *outlen);

/* Answer building, only valid inside a handler. Output beyond max_output is
 * cut at a line boundary and followed by a "# truncated: ..." line; empty
 * lines are collapsed so that the empty line stays the end-of-answer mark. */
void opsock_write(struct opsock_out *out, const void *data, size_t len);
void opsock_printf(struct opsock_out *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void opsock_vprintf(struct opsock_out *out, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
/* Records the error message (one line; control characters are replaced) and
 * returns -1, for "return opsock_error(out, "bad weight '%s'", argv[3]);". */
int opsock_error(struct opsock_out *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
