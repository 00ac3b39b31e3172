/* hapi_client: asynchronous client of HAProxy's Runtime API (the stats
 * socket), on a libev loop. Transport only: what an answer means is up to the
 * caller (cedra-agent's strict parsers live in agent/hapi.h).
 *
 * One command per connection, in the socket's non-interactive mode: connect,
 * write "<cmd>\n", read until HAProxy closes. The end of an answer is then the
 * end of the stream, never a guess. "prompt" mode was measured and rejected
 * (HAProxy 2.6.12): an answer is not always terminated by the empty line the
 * documentation promises ("set server b/s weight abc" answers "Empty weight
 * string empty or preceded by garbage\n" with no empty line), so the only
 * delimiter left is the "> " prompt, which answer text may contain; one
 * misread answer would shift every later answer onto the wrong command. A
 * persistent connection also has to survive "stats timeout" and HAProxy
 * restarts. A UNIX-socket connect costs tens of microseconds; plans are a few
 * commands.
 *
 * Commands run one at a time, in submission order (plans depend on order),
 * from a bounded FIFO queue. Each has one deadline covering connect, write
 * and read; answers are bounded in size. Callbacks are never called from
 * within hapi_command(); a callback may submit commands or free the client.
 */
#ifndef CEDRA_HAPI_CLIENT_H
#define CEDRA_HAPI_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#define HAPI_CMD_MAX 1024 /* one command line, without "\n" */
#define HAPI_DEFAULT_MAX_ANSWER (1u << 20)
#define HAPI_DEFAULT_MAX_QUEUE 256

enum hapi_status {
    HAPI_OK = 0,
    HAPI_ECONNECT, /* socket missing, refused, backlog full */
    HAPI_EIO,      /* read/write error, reset */
    HAPI_ETIMEOUT, /* no complete answer before the deadline */
    HAPI_ETOOBIG,  /* answer longer than the configured bound */
    HAPI_EEMPTY,   /* closed without a byte: HAProxy always answers at least "\n" */
    HAPI_EABORT,   /* hapi_free() with the command still queued or running */
    HAPI_EANSWER,  /* (plans) the answer was not the one the command must get */
};

struct hapi;

/* status HAPI_OK: answer[0..len) is the whole answer, NUL-terminated at
 * answer[len]; valid only during the call. Otherwise answer is NULL. */
typedef void hapi_cb(struct hapi *h, int status, const char *answer, size_t len, void *priv);

/* timeout: seconds per command (connect + write + read). NULL on bad
 * arguments (path too long for sun_path) or allocation failure. */
struct hapi *hapi_new(struct ev_loop *loop, const char *sock_path, double timeout);
/* Queued and running commands get HAPI_EABORT, then the client is freed (at
 * once, or when the running callback returns). */
void hapi_free(struct hapi *h);
void hapi_set_limits(struct hapi *h, size_t max_answer, size_t max_queue);
const char *hapi_path(const struct hapi *h);

/* Queues one command. Returns 0, or -1 (no callback) when cmd is empty,
 * longer than HAPI_CMD_MAX, holds a line break, or holds ';' or '\' (which the
 * CLI would take as a command separator or an escape: one command must give
 * exactly one answer), or when the queue is full. */
int hapi_command(struct hapi *h, const char *cmd, hapi_cb *cb, void *priv);
size_t hapi_queued(const struct hapi *h); /* queued + running */
const char *hapi_strerror(int status);

struct hapi_counters {
    uint64_t commands;    /* completed, any status */
    uint64_t failures;    /* status != HAPI_OK */
    uint64_t bad_answers; /* reported through hapi_report_error(..., HAPI_EANSWER) */
};
void hapi_get_counters(const struct hapi *h, struct hapi_counters *out);

/* Logs a failed command once: the same error (cmd + status + detail) seen
 * again is counted, not logged, until a command succeeds (which logs
 * event=haproxy_api_recovered with the count) or another error occurs. The
 * reconcile loop retries on its timer; this keeps one line per incident. */
void hapi_report_error(struct hapi *h, const char *cmd, int status, const char *detail);
void hapi_report_success(struct hapi *h);

#endif
