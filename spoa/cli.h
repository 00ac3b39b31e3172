/* cedra-spoa's operator-socket commands (HAProxy style, lib/opsock.h). */
#ifndef CEDRA_SPOA_CLI_H
#define CEDRA_SPOA_CLI_H

#include <stdbool.h>
#include <stddef.h>

struct opsock;
struct spoa_conf;
struct spoa_stats;
struct deliver;
struct l1;
struct lane;
struct fill;

/* What the commands read and act on; owned by main.c. */
struct cli_state {
    const char *conf_path;
    double started; /* monotonic seconds */
    unsigned threads;
    struct spoa_conf **conf; /* the current configuration (main thread) */
    struct spoa_stats *stats;
    struct deliver *deliver; /* may be NULL */
    struct l1 *l1;           /* may be NULL */
    struct lane *lane;       /* may be NULL */
    struct fill *fill;       /* may be NULL */
    /* Publishes a new configuration to the workers (set pool ...). */
    void (*publish)(void *ud, struct spoa_conf *c);
    bool (*tracking_up)(void *ud); /* NULL without an in-process cache */
    void *ud;
};

int cli_register(struct opsock *s, struct cli_state *st, char *err, size_t errlen);

#endif
