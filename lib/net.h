/* Listening sockets. */
#ifndef CEDRA_NET_H
#define CEDRA_NET_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

/* Returns a non-blocking listening socket, or -1 with a reason in err.
 * reuseport lets several workers each own a socket on the same TCP address
 * (the kernel spreads connections); a UNIX path is replaced if it is a stale
 * socket and chmod'ed to unix_mode. */
int net_listen(const struct endpoint *ep, int backlog, bool reuseport, unsigned unix_mode,
               char *err, size_t errlen);

/* Accepts one connection, non-blocking and close-on-exec, with TCP_NODELAY on
 * TCP. Returns the fd or -1 (errno set; EAGAIN when none is pending). */
int net_accept(int lfd);
/* Local TCP port of a bound socket (host order), 0 when it has none. */
unsigned net_local_port(int fd);

/* Opens /dev/null on whichever of 0, 1 and 2 is closed. A daemon started
 * with one of them closed would hand that number to a socket, and the next
 * stray write to stderr would go to a client. */
void net_keep_std_fds(void);

#endif
