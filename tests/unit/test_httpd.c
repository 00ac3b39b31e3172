/* /metrics over HTTP: a real server on a free loopback port, plain-socket
 * clients, promtool on what a Prometheus scrape gets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "httpd.h"
#include "metrics.h"
#include "util.h"

struct fixture {
    struct metrics *m;
    struct metrics_counter *req;
    struct httpd *h;
    unsigned port;
};

static void loopback_any_port(struct endpoint *ep)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)&ep->addr;

    memset(ep, 0, sizeof(*ep));
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin->sin_port = 0;
    ep->len = sizeof(*sin);
    str_copy(ep->text, "127.0.0.1:0", sizeof(ep->text));
}

static struct fixture *start(unsigned max_conn, unsigned timeout)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct endpoint ep;
    struct httpd_config cfg = {.listen = &ep, .max_connections = max_conn, .timeout = timeout};
    struct metrics_family *fam;
    static const double b[] = {0.001, 0.01, 0.1};
    char err[256];

    f->m = metrics_new();
    fam = metrics_counter_family(f->m, "cedra_requests_total",
                                 "Requests by decision and cache status.",
                                 (const char *const[]){"decision", "cache", NULL}, 16);
    f->req = metrics_counter_get(fam, (const char *const[]){"edge", "HIT"});
    metrics_counter_inc(metrics_counter_get(fam, (const char *const[]){"pass", "MISS"}));
    metrics_histogram_observe(metrics_histogram(f->m, "cedra_valkey_request_duration_seconds",
                                                "Valkey request latency.", b, 3),
                              0.004);
    loopback_any_port(&ep);
    f->h = httpd_start(&cfg, f->m, err, sizeof(err));
    if (!f->h)
        fail_msg("httpd_start: %s", err);
    f->port = httpd_port(f->h);
    assert_true(f->port > 0);
    return f;
}

static void stop(struct fixture *f)
{
    httpd_stop(f->h);
    metrics_free(f->m);
    free(f);
}

static int dial(unsigned port)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    return fd;
}

/* Reads until EOF, reset or timeout_ms of silence; returns a malloc'ed string. */
static char *read_all(int fd, int timeout_ms)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap + 1);

    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t n;

        if (poll(&p, 1, timeout_ms) <= 0)
            break;
        if (len == cap) {
            char *nb = realloc(buf, cap * 2 + 1);

            assert_non_null(nb);
            buf = nb;
            cap *= 2;
        }
        n = recv(fd, buf + len, cap - len, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    return buf;
}

/* One request on its own connection ("Connection: close"). */
static char *http(unsigned port, const char *req)
{
    int fd = dial(port);
    char *res;

    assert_int_equal(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
    res = read_all(fd, 5000);
    close(fd);
    return res;
}

static const char *body_of(const char *res)
{
    const char *p = strstr(res, "\r\n\r\n");

    assert_non_null(p);
    return p + 4;
}

static void assert_status(const char *res, const char *status_line)
{
    if (strncmp(res, status_line, strlen(status_line)) != 0)
        fail_msg("want '%s', got:\n%s", status_line, res);
}

static void test_get_metrics(void **state)
{
    struct fixture *f = start(0, 0);
    char *res, *want;

    res = http(f->port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_status(res, "HTTP/1.1 200 OK\r\n");
    assert_non_null(strstr(res, "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    want = metrics_render(f->m, NULL);
    assert_string_equal(body_of(res), want);
    free(want);
    free(res);

    /* Counters move between scrapes; a query string is ignored. */
    metrics_counter_add(f->req, 41);
    res = http(f->port, "GET /metrics?debug=1 HTTP/1.0\r\n\r\n");
    assert_status(res, "HTTP/1.1 200 OK\r\n");
    assert_non_null(
        strstr(body_of(res), "cedra_requests_total{decision=\"edge\",cache=\"HIT\"} 41\n"));
    free(res);

    /* HEAD: headers only. */
    res = http(f->port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_status(res, "HTTP/1.1 200 OK\r\n");
    assert_string_equal(body_of(res), "");
    free(res);

    /* Keep-alive: two scrapes on one connection. */
    {
        int fd = dial(f->port);
        const char *req = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        char *r;

        for (int i = 0; i < 2; i++) {
            assert_int_equal(send(fd, req, strlen(req), 0), (ssize_t)strlen(req));
            r = read_all(fd, 300);
            assert_status(r, "HTTP/1.1 200 OK\r\n");
            assert_null(strstr(r, "Connection: close"));
            free(r);
        }
        close(fd);
    }
    stop(f);
}

static void test_not_found_and_methods(void **state)
{
    struct fixture *f = start(0, 0);
    char *res;

    res = http(f->port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_status(res, "HTTP/1.1 404 Not Found\r\n");
    free(res);
    res = http(f->port, "GET /metrics/extra HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_status(res, "HTTP/1.1 404 Not Found\r\n");
    free(res);
    res = http(f->port, "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                        "Content-Length: 5\r\n\r\nhello");
    assert_status(res, "HTTP/1.1 405 Method Not Allowed\r\n");
    assert_non_null(strstr(res, "\r\nAllow: GET, HEAD\r\n"));
    free(res);
    res = http(f->port, "DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_status(res, "HTTP/1.1 405 Method Not Allowed\r\n");
    free(res);
    /* Garbage and oversized headers are MHD's to refuse; the server lives on. */
    res = http(f->port, "GARBAGE\r\n\r\n");
    assert_null(strstr(res, "200 OK"));
    free(res);
    {
        size_t n = 64 * 1024;
        char *big = malloc(n + 128);
        int len = snprintf(big, n + 128, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ");

        memset(big + len, 'a', n);
        strcpy(big + len + n, "\r\n\r\n");
        res = http(f->port, big);
        assert_true(strncmp(res, "HTTP/1.1 4", 10) == 0 || res[0] == '\0');
        assert_null(strstr(res, "200 OK"));
        free(res);
        free(big);
    }
    res = http(f->port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_status(res, "HTTP/1.1 200 OK\r\n");
    free(res);
    stop(f);
}

static void test_limits(void **state)
{
    struct fixture *f = start(2, 2);
    int a, b, c;
    char *res;
    double t0;

    /* Two idle connections fill the limit: a third waits in the backlog,
     * unserved, until a slot frees. */
    a = dial(f->port);
    b = dial(f->port);
    usleep(100 * 1000);
    c = dial(f->port);
    send(c, "GET /metrics HTTP/1.0\r\n\r\n", 25, MSG_NOSIGNAL);
    res = read_all(c, 700);
    assert_string_equal(res, "");
    free(res);
    close(a);
    res = read_all(c, 3000);
    assert_status(res, "HTTP/1.1 200 OK\r\n");
    free(res);
    close(c);

    /* Idle connections are closed after the timeout (2 s). */
    t0 = now_mono();
    res = read_all(b, 6000);
    assert_string_equal(res, "");
    assert_true(now_mono() - t0 < 5);
    free(res);
    close(b);
    stop(f);
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;

    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static void test_stop_releases(void **state)
{
    int before = count_fds();
    struct fixture *f = start(0, 0);
    struct endpoint ep;
    struct httpd_config cfg = {.listen = &ep};
    char err[256];
    struct sockaddr_in *sin = (struct sockaddr_in *)&ep.addr;
    unsigned port = f->port;

    /* The port is taken while the server runs... */
    loopback_any_port(&ep);
    sin->sin_port = htons((uint16_t)port);
    assert_null(httpd_start(&cfg, f->m, err, sizeof(err)));
    stop(f);
    /* ...and released, with every descriptor, once it stops. */
    assert_int_equal(count_fds(), before);
    f = calloc(1, sizeof(*f));
    f->m = metrics_new();
    f->h = httpd_start(&cfg, f->m, err, sizeof(err));
    if (!f->h)
        fail_msg("restart on port %u: %s", port, err);
    stop(f);
    /* UNIX paths are refused. */
    assert_int_equal(parse_endpoint("unix:/tmp/x.sock", &ep, err, sizeof(err)), 0);
    assert_null(httpd_start(&cfg, NULL, err, sizeof(err)));
}

static void test_promtool_scrape(void **state)
{
    struct fixture *f;
    char *res;
    const char *body;
    FILE *p;
    int st;

    if (system("command -v promtool >/dev/null 2>&1") != 0)
        skip();
    f = start(0, 0);
    res = http(f->port, "GET /metrics HTTP/1.0\r\n\r\n");
    body = body_of(res);
    p = popen("promtool check metrics", "w");
    assert_non_null(p);
    fputs(body, p);
    st = pclose(p);
    assert_true(WIFEXITED(st));
    if (WEXITSTATUS(st) != 0)
        fail_msg("promtool check metrics failed on:\n%s", body);
    free(res);
    stop(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_metrics),     cmocka_unit_test(test_not_found_and_methods),
        cmocka_unit_test(test_limits),          cmocka_unit_test(test_stop_releases),
        cmocka_unit_test(test_promtool_scrape),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
