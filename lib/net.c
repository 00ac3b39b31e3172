#include "net.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

int net_listen(const struct endpoint *ep, int backlog, bool reuseport, unsigned unix_mode,
               char *err, size_t errlen)
{
    int fd, one = 1, family = ep->addr.ss_family;

    fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket(%s): %s", ep->text, strerror(errno));
        return -1;
    }
    if (ep->is_unix) {
        const struct sockaddr_un *sun = (const struct sockaddr_un *)&ep->addr;
        struct stat st;

        /* Only a socket is ours to replace: never unlink a regular file. */
        if (lstat(sun->sun_path, &st) == 0) {
            if (!S_ISSOCK(st.st_mode)) {
                snprintf(err, errlen, "%s exists and is not a socket", sun->sun_path);
                goto fail;
            }
            unlink(sun->sun_path);
        }
    } else {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
            snprintf(err, errlen, "SO_REUSEPORT(%s): %s", ep->text, strerror(errno));
            goto fail;
        }
        if (family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    }
    if (bind(fd, (const struct sockaddr *)&ep->addr, ep->len) < 0) {
        snprintf(err, errlen, "bind(%s): %s", ep->text, strerror(errno));
        goto fail;
    }
    if (ep->is_unix &&
        chmod(((const struct sockaddr_un *)&ep->addr)->sun_path, (mode_t)unix_mode) < 0) {
        snprintf(err, errlen, "chmod(%s): %s", ep->text, strerror(errno));
        goto fail;
    }
    if (listen(fd, backlog) < 0) {
        snprintf(err, errlen, "listen(%s): %s", ep->text, strerror(errno));
        goto fail;
    }
    return fd;
fail:
    close(fd);
    return -1;
}

int net_accept(int lfd)
{
    struct sockaddr_storage ss = {0}; /* the analyzer cannot see accept4() fill it */
    socklen_t sl = sizeof(ss);
    int fd, one = 1;

    do
        fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return -1;
    /* ACKs are small and latency-bound: never let Nagle hold them. */
    if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

unsigned net_local_port(int fd)
{
    struct sockaddr_storage ss = {0};
    socklen_t sl = sizeof(ss);

    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        return 0;
    if (ss.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&ss)->sin6_port);
    if (ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&ss)->sin_port);
    return 0;
}

void net_keep_std_fds(void)
{
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0)
            break;
}
