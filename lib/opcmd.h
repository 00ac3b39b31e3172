/* Operator-socket commands both daemons answer the same way. Each daemon
 * still lists them in its own command table: the keyword and its help line
 * belong to that daemon's documented interface. */
#ifndef CEDRA_OPCMD_H
#define CEDRA_OPCMD_H

struct metrics;
struct opsock_out;

/* "set log-level <level>", an opsock_fn (ud unused). */
int opcmd_set_log_level(struct opsock_out *out, int argc, char **argv, void *ud);

/* The body of "show metrics": m's Prometheus exposition as the answer. */
int opcmd_show_metrics(struct opsock_out *out, struct metrics *m);

#endif
