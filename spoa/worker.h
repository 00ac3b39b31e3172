/* One cedra-spoa worker: a thread with its own libev loop, its listeners and
 * the SPOP connections it accepted. */
#ifndef CEDRA_WORKER_H
#define CEDRA_WORKER_H

#include <stddef.h>

#include "conf.h"
#include "handler.h"

struct worker;
struct deliver;
struct l1;
struct lane;
struct fill;
struct spoa_stats;

/* fds: listening sockets the worker polls (owned by the caller, which closes
 * them after worker_join). Holds a reference to conf. */
struct worker *worker_new(unsigned id, struct spoa_conf *conf, const int *fds, unsigned nfds,
                          struct deliver *deliver, struct l1 *l1, struct lane *lane,
                          struct fill *fill, struct spoa_stats *stats);
int worker_start(struct worker *w);
/* Asynchronous, from any thread: adopt conf (a reference is taken). */
void worker_reload(struct worker *w, struct spoa_conf *conf);
/* Asynchronous, from any thread: stop accepting, finish in-flight requests,
 * send DISCONNECT and leave the loop (forcibly after the drain timeout). */
void worker_stop(struct worker *w);
void worker_join(struct worker *w);
void worker_free(struct worker *w);

#endif
