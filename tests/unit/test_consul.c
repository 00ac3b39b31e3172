/* Tests of agent/consul.c over real HTTP against the Consul double
 * (tests/consul_double/consul_double.py), started here as a subprocess on a
 * free loopback port and stopped by its pid.
 *
 * The client runs on a private libev loop. Every wait is the loop running
 * under a watchdog timer until a condition holds (callbacks seen, or the
 * double's request log / registrations show something): no sleep anywhere,
 * and a hang fails the test at the watchdog instead of blocking the suite.
 * Windows of time ("count requests during 1.5 s") are the same loop run with
 * a condition that never holds. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <ev.h>
#include <jansson.h>

#include "consul.h"
#include "instances.h"
#include "log.h"
#include "pool.h"
#include "util.h"

#define SVC "web"
#define SVC_PATH "/v1/health/service/" SVC

/* ---- the double as a subprocess ------------------------------------------------ */

struct dbl {
    pid_t pid;
    int outfd;
    int port, cport;
    char addr[64];  /* CONSUL_HTTP_ADDR */
    char cbase[64]; /* control API base URL */
};

static struct dbl g_dbl; /* shared by most tests, reset between them */
static CURL *g_ctl;      /* control-API client (blocking, test side only) */

static const char *double_path(void)
{
    static char path[4096];
    const char *srcdir = getenv("srcdir"); /* set by automake's test harness */
    const char *cands[3] = {srcdir, ".", NULL};
    char here[4096];

    /* also next to this source file: tests/unit/../consul_double */
    snprintf(here, sizeof(here), "%s", __FILE__);
    char *slash = strrchr(here, '/');
    if (slash) {
        *slash = '\0';
        strncat(here, "/../..", sizeof(here) - strlen(here) - 1);
        cands[2] = here;
    }
    for (size_t i = 0; i < 3; i++) {
        if (!cands[i])
            continue;
        snprintf(path, sizeof(path), "%s/tests/consul_double/consul_double.py", cands[i]);
        if (access(path, R_OK) == 0)
            return path;
    }
    return NULL;
}

static int dbl_start(struct dbl *d, const char *const *extra)
{
    const char *script = double_path();
    const char *argv[32];
    int n = 0, pfd[2];
    char line[256];
    size_t len = 0;
    double deadline;

    memset(d, 0, sizeof(*d));
    d->pid = -1;
    if (!script || pipe2(pfd, O_CLOEXEC) < 0)
        return -1;
    argv[n++] = "python3";
    argv[n++] = script;
    argv[n++] = "--bind";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--port";
    argv[n++] = "0";
    for (size_t i = 0; extra && extra[i] && n < 30; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    d->pid = fork();
    if (d->pid < 0)
        return -1;
    if (d->pid == 0) {
        int devnull = open("/dev/null", O_RDWR);

        prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive a crashed test */
        dup2(pfd[1], 1);
        dup2(devnull, 0);
        if (!getenv("CEDRA_TEST_VERBOSE"))
            dup2(devnull, 2);
        execvp("python3", (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    d->outfd = pfd[0];
    deadline = now_mono() + 10;
    while (!memchr(line, '\n', len)) {
        struct pollfd p = {.fd = d->outfd, .events = POLLIN};
        int left = (int)((deadline - now_mono()) * 1000);
        ssize_t r;

        if (left <= 0 || poll(&p, 1, left) <= 0)
            return -1;
        r = read(d->outfd, line + len, sizeof(line) - 1 - len);
        if (r <= 0)
            return -1;
        len += (size_t)r;
        line[len] = '\0';
    }
    /* "listening 127.0.0.1:PORT[ control 127.0.0.1:CPORT]" */
    if (sscanf(line, "listening 127.0.0.1:%d control 127.0.0.1:%d", &d->port, &d->cport) < 1)
        return -1;
    if (!d->cport)
        d->cport = d->port;
    snprintf(d->addr, sizeof(d->addr), "127.0.0.1:%d", d->port);
    snprintf(d->cbase, sizeof(d->cbase), "http://127.0.0.1:%d", d->cport);
    return 0;
}

static void dbl_stop(struct dbl *d)
{
    int status;

    if (d->pid <= 0)
        return;
    kill(d->pid, SIGTERM);
#ifdef SYS_pidfd_open
    {
        int pfd = (int)syscall(SYS_pidfd_open, d->pid, 0);

        if (pfd >= 0) {
            struct pollfd p = {.fd = pfd, .events = POLLIN};

            if (poll(&p, 1, 5000) <= 0)
                kill(d->pid, SIGKILL);
            close(pfd);
        }
    }
#endif
    waitpid(d->pid, &status, 0);
    close(d->outfd);
    d->pid = -1;
}

/* ---- control API (blocking libcurl on the test side) --------------------------- */

struct buf {
    char *p;
    size_t len;
};

static size_t buf_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct buf *b = ud;
    size_t n = size * nmemb;
    char *p = realloc(b->p, b->len + n + 1);

    if (!p)
        return 0;
    memcpy(p + b->len, ptr, n);
    b->p = p;
    b->len += n;
    p[b->len] = '\0';
    return n;
}

/* Returns the HTTP status (0 on transport error); *out gets the JSON answer. */
static long ctl_raw(const char *base, const char *method, const char *path, const char *body,
                    const char *hdr, json_t **out)
{
    struct buf b = {0};
    struct curl_slist *h = NULL;
    char url[1024];
    long status = 0;

    if (out)
        *out = NULL;
    snprintf(url, sizeof(url), "%s%s", base, path);
    curl_easy_reset(g_ctl);
    curl_easy_setopt(g_ctl, CURLOPT_URL, url);
    curl_easy_setopt(g_ctl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(g_ctl, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(g_ctl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(g_ctl, CURLOPT_WRITEFUNCTION, buf_write);
    curl_easy_setopt(g_ctl, CURLOPT_WRITEDATA, &b);
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Expect:");
    if (hdr)
        h = curl_slist_append(h, hdr);
    curl_easy_setopt(g_ctl, CURLOPT_HTTPHEADER, h);
    if (body) {
        curl_easy_setopt(g_ctl, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(g_ctl, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    if (curl_easy_perform(g_ctl) == CURLE_OK)
        curl_easy_getinfo(g_ctl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    if (out && b.p && b.len)
        *out = json_loadb(b.p, b.len, 0, NULL);
    free(b.p);
    return status;
}

static json_t *ctl(const struct dbl *d, const char *method, const char *path, const char *body)
{
    json_t *j;
    long st = ctl_raw(d->cbase, method, path, body, NULL, &j);

    if (st != 200)
        fail_msg("control %s %s -> %ld", method, path, st);
    return j;
}

static void ctl_do(const struct dbl *d, const char *method, const char *path, const char *body)
{
    json_decref(ctl(d, method, path, body));
}

static json_t *dbl_requests(const struct dbl *d, const char *query)
{
    char path[512];
    json_t *j, *r;

    snprintf(path, sizeof(path), "/_double/requests%s%s", query && *query ? "?" : "",
             query ? query : "");
    j = ctl(d, "GET", path, NULL);
    r = json_incref(json_object_get(j, "requests"));
    json_decref(j);
    assert_true(json_is_array(r));
    return r;
}

static size_t dbl_count(const struct dbl *d, const char *query)
{
    json_t *r = dbl_requests(d, query);
    size_t n = json_array_size(r);

    json_decref(r);
    return n;
}

static uint64_t dbl_service_index(const struct dbl *d)
{
    json_t *j = ctl(d, "GET", "/_double/service/" SVC, NULL);
    uint64_t idx = (uint64_t)json_integer_value(json_object_get(j, "index"));

    json_decref(j);
    return idx;
}

/* One instance for PUT /_double/service/<name>. */
static char *inst_json(const char *id, const char *addr, int port, const char *tags,
                       const char *meta)
{
    char *s;

    assert_true(asprintf(&s,
                         "{\"id\":\"%s\",\"address\":\"%s\",\"port\":%d,\"tags\":%s,\"meta\":%s,"
                         "\"node_address\":\"10.1.1.1\"}",
                         id, addr, port, tags ? tags : "[]", meta ? meta : "null") > 0);
    return s;
}

static void set_service_n(const struct dbl *d, int n, int canaries)
{
    size_t cap = 256 + (size_t)n * 256, len = 1;
    char *body = malloc(cap);

    body[0] = '[';
    for (int i = 0; i < n; i++) {
        char id[32], addr[32];
        char *e;

        snprintf(id, sizeof(id), "web-%02d", i);
        snprintf(addr, sizeof(addr), "10.0.0.%d", i + 1);
        e = inst_json(id, addr, 8000 + i, i < canaries ? "[\"canary\"]" : "[\"v1\"]",
                      "{\"build_id\":\"b1\"}");
        len += (size_t)snprintf(body + len, cap - len, "%s%s", i ? "," : "", e);
        free(e);
    }
    snprintf(body + len, cap - len, "]");
    ctl_do(d, "PUT", "/_double/service/" SVC, body);
    free(body);
}

/* ---- the client under test --------------------------------------------------------- */

struct tctx {
    struct ev_loop *loop;
    struct consul *c;
    struct consul_watch *w;
    int pools;
    struct pool_set last;
    double last_pool_at;
    int errors;
    int err_kind[CONSUL_ERR_KINDS];
    enum consul_err last_err;
    char last_reason[256];
    /* consumer side of the panic threshold */
    double panic_ratio;
    bool have_good;
    struct pool_set good;
    int accepted, refused;
    char why[128];
    /* registration */
    enum consul_health health;
    char note[64];
    int health_calls;
    bool done;
    bool done_ok;
    double done_at;
};

static void on_pool(struct consul_watch *w, const struct pool_set *ps, void *ud)
{
    struct tctx *t = ud;

    t->pools++;
    t->last_pool_at = now_mono();
    pool_set_free(&t->last);
    assert_int_equal(pool_set_copy(&t->last, ps), 0);
    if (instances_accept(t->have_good ? &t->good : NULL, ps, t->panic_ratio, t->why,
                         sizeof(t->why))) {
        pool_set_free(&t->good);
        assert_int_equal(pool_set_copy(&t->good, ps), 0);
        t->have_good = true;
        t->accepted++;
    } else {
        t->refused++;
    }
}

static void on_error(struct consul_watch *w, enum consul_err kind, const char *reason, void *ud)
{
    struct tctx *t = ud;

    t->errors++;
    t->err_kind[kind]++;
    t->last_err = kind;
    snprintf(t->last_reason, sizeof(t->last_reason), "%s", reason);
}

static enum consul_health health_cb(void *ud, char *note, size_t notelen)
{
    struct tctx *t = ud;

    t->health_calls++;
    snprintf(note, notelen, "%s", t->note);
    return t->health;
}

static void on_done(struct consul *c, bool ok, void *ud)
{
    struct tctx *t = ud;

    t->done = true;
    t->done_ok = ok;
    t->done_at = now_mono();
}

static void test_cfg(struct consul_cfg *cfg, const struct dbl *d)
{
    consul_cfg_defaults(cfg);
    cfg->addr = d->addr;
    cfg->wait = 2;
    cfg->timeout_margin = 0.5;
    cfg->retry_min = 0.05;
    cfg->retry_max = 0.4;
    cfg->same_index_interval = 0.2;
    cfg->rate_burst = 10;
    cfg->rate_interval = 0.01;
    cfg->request_timeout = 2;
    cfg->connect_timeout = 1;
    cfg->shutdown_timeout = 1;
}

static void ctx_init(struct tctx *t, const struct consul_cfg *cfg)
{
    char err[256];

    memset(t, 0, sizeof(*t));
    pool_set_init(&t->last);
    pool_set_init(&t->good);
    t->panic_ratio = 0.5;
    t->loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(t->loop);
    t->c = consul_new(t->loop, cfg, err, sizeof(err));
    if (!t->c)
        fail_msg("consul_new: %s", err);
}

static void ctx_free(struct tctx *t)
{
    consul_free(t->c);
    ev_loop_destroy(t->loop);
    pool_set_free(&t->last);
    pool_set_free(&t->good);
}

/* ---- bounded waits on the loop ------------------------------------------------------- */

typedef bool pred_fn(struct tctx *t, void *arg);

static void wd_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    *(bool *)w->data = true;
}

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    /* only wakes ev_run so that predicates on the double are re-evaluated */
}

/* Runs the loop until pred holds (true) or timeout passes (false). */
static bool run_until(struct tctx *t, pred_fn *pred, void *arg, double timeout)
{
    ev_timer wd, tick;
    bool expired = false;

    ev_timer_init(&wd, wd_cb, timeout, 0.);
    wd.data = &expired;
    ev_timer_init(&tick, tick_cb, 0.01, 0.01);
    ev_timer_start(t->loop, &wd);
    ev_timer_start(t->loop, &tick);
    while (!(pred && pred(t, arg)) && !expired)
        ev_run(t->loop, EVRUN_ONCE);
    ev_timer_stop(t->loop, &wd);
    ev_timer_stop(t->loop, &tick);
    return !expired;
}

static void run_for(struct tctx *t, double seconds)
{
    run_until(t, NULL, NULL, seconds);
}

static bool p_pools_at_least(struct tctx *t, void *arg)
{
    return t->pools >= *(int *)arg;
}

static bool p_errors_at_least(struct tctx *t, void *arg)
{
    return t->errors >= *(int *)arg;
}

static bool p_done(struct tctx *t, void *arg)
{
    return t->done;
}

/* A query on SVC is parked in the double (state "blocking"), optionally with
 * a given ?index=. */
struct park {
    const struct dbl *d;
    uint64_t index; /* 0: any */
    int since;      /* request seq */
};

static bool p_parked(struct tctx *t, void *arg)
{
    struct park *p = arg;
    char q[256];
    json_t *r, *e;
    size_t i;
    bool found = false;

    snprintf(q, sizeof(q), "state=blocking&path=%s&since=%d", SVC_PATH, p->since);
    r = dbl_requests(p->d, q);
    json_array_foreach(r, i, e)
    {
        const char *idx = json_string_value(json_object_get(e, "index"));

        if (p->index == 0 || (idx && strtoull(idx, NULL, 10) == p->index))
            found = true;
    }
    json_decref(r);
    return found;
}

static void wait_pools(struct tctx *t, int n, double timeout)
{
    if (!run_until(t, p_pools_at_least, &n, timeout))
        fail_msg("no pool callback #%d within %.1fs (pools=%d errors=%d last=%s)", n, timeout,
                 t->pools, t->errors, t->last_reason);
}

static void wait_parked(struct tctx *t, const struct dbl *d, uint64_t index, double timeout)
{
    struct park p = {.d = d, .index = index};

    if (!run_until(t, p_parked, &p, timeout))
        fail_msg("no blocking query with index %llu parked in the double within %.1fs",
                 (unsigned long long)index, timeout);
}

static int last_seq(const struct dbl *d)
{
    json_t *j = ctl(d, "GET", "/_double/requests?path=/nothing", NULL);
    int seq = (int)json_integer_value(json_object_get(j, "last_seq"));

    json_decref(j);
    return seq;
}

/* ---- fixtures --------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    static const char *const extra[] = {"--control-port", "0", NULL};

    /* The client reads these: the tests set what they need explicitly. */
    unsetenv("CONSUL_HTTP_ADDR");
    unsetenv("CONSUL_HTTP_TOKEN");
    unsetenv("CONSUL_HTTP_TOKEN_FILE");
    unsetenv("CONSUL_HTTP_SSL");
    unsetenv("CONSUL_HTTP_SSL_VERIFY");
    unsetenv("CONSUL_CACERT");
    unsetenv("CONSUL_CAPATH");
    unsetenv("CONSUL_CLIENT_CERT");
    unsetenv("CONSUL_CLIENT_KEY");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    g_ctl = curl_easy_init();
    if (!g_ctl || dbl_start(&g_dbl, extra) < 0) {
        fprintf(stderr, "cannot start the Consul double (%s)\n",
                double_path() ? double_path() : "consul_double.py not found");
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    dbl_stop(&g_dbl);
    curl_easy_cleanup(g_ctl);
    curl_global_cleanup();
    return 0;
}

static int test_setup(void **state)
{
    ctl_do(&g_dbl, "POST", "/_double/reset-all", "");
    return 0;
}

/* ---- watch tests -------------------------------------------------------------------------- */

static void test_initial_answer(void **state)
{
    struct consul_cfg cfg;
    struct tctx t;
    json_t *r, *e;
    char *a, *b, *c, body[2048];

    a = inst_json("web-a", "10.0.0.1", 8081, "[\"v1\"]", "{\"build_id\":\"b1\"}");
    b = inst_json("web-b", "", 8082, "[\"v1\"]", "{\"build_id\":\"b1\"}"); /* no address */
    c = inst_json("web-c", "10.0.0.3", 8083, "[\"canary\",\"v2\"]",
                  "{\"build_id\":\"b2\",\"canary_weight\":\"25\"}");
    snprintf(body, sizeof(body), "[%s,%s,%s]", a, b, c);
    free(a);
    free(b);
    free(c);
    ctl_do(&g_dbl, "PUT", "/_double/service/" SVC, body);

    test_cfg(&cfg, &g_dbl);
    ctx_init(&t, &cfg);
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    assert_non_null(t.w);
    assert_string_equal(consul_watch_service(t.w), SVC);
    wait_pools(&t, 1, 5);

    assert_int_equal(t.last.n, 3);
    assert_int_equal(t.last.index, dbl_service_index(&g_dbl));
    assert_string_equal(t.last.inst[0].id, "web-a");
    assert_string_equal(t.last.inst[0].build_id, "b1");
    assert_string_equal(t.last.inst[1].id, "web-b");
    assert_string_equal(t.last.inst[1].addr, "10.1.1.1"); /* Node.Address */
    assert_int_equal(t.last.inst[1].port, 8082);
    assert_string_equal(t.last.inst[2].id, "web-c");
    assert_int_equal(t.last.inst[2].kind, POOL_CANARY);
    assert_string_equal(t.last.inst[2].build_id, "b2");
    assert_int_equal(t.last.canary_weight, 25);
    assert_int_equal(t.errors, 0);

    /* then a blocking query on that index, with wait */
    wait_parked(&t, &g_dbl, t.last.index, 5);
    r = dbl_requests(&g_dbl, "path=" SVC_PATH);
    assert_true(json_array_size(r) >= 2);
    e = json_array_get(r, 0); /* first: no index */
    assert_true(json_is_null(json_object_get(e, "index")));
    assert_string_equal(json_string_value(json_array_get(
                            json_object_get(json_object_get(e, "query"), "passing"), 0)),
                        "1");
    e = json_array_get(r, 1);
    assert_int_equal(strtoull(json_string_value(json_object_get(e, "index")), NULL, 10),
                     t.last.index);
    assert_string_equal(json_string_value(json_object_get(e, "wait")), "2000ms");
    assert_false(json_is_true(json_object_get(e, "token")));
    json_decref(r);

    {
        struct consul_watch_stats st;
        struct consul_stats cs;

        consul_watch_stats(t.w, &st);
        assert_int_equal(st.index, t.last.index);
        assert_true(st.last_success > 1e9);
        assert_int_equal(st.updates, 1);
        assert_int_equal(st.failures, 0);
        consul_stats(t.c, &cs);
        assert_true(cs.requests >= 1);
        assert_true(cs.latency_count >= 1); /* the first query did not block */
        assert_true(cs.latency_sum / (double)cs.latency_count < 1.0);
    }
    ctx_free(&t);
}

static void test_change_wakes_query(void **state)
{
    struct consul_cfg cfg;
    struct tctx t;
    uint64_t idx;
    double t0, lat;
    int since;
    json_t *r, *e;

    set_service_n(&g_dbl, 2, 0);
    test_cfg(&cfg, &g_dbl);
    cfg.wait = 30; /* a wake-up that waited for the timeout would fail the watchdog */
    ctx_init(&t, &cfg);
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    wait_pools(&t, 1, 5);
    idx = t.last.index;
    since = last_seq(&g_dbl);
    wait_parked(&t, &g_dbl, idx, 5);

    t0 = now_mono();
    set_service_n(&g_dbl, 3, 1); /* scale up, one canary */
    wait_pools(&t, 2, 3);
    lat = t.last_pool_at - t0;
    assert_true(lat < 0.5);
    assert_int_equal(t.last.n, 3);
    assert_int_equal(pool_set_count(&t.last, POOL_CANARY), 1);
    assert_true(t.last.index > idx);

    /* the double saw our blocking query end because of the change */
    {
        char q[128];

        snprintf(q, sizeof(q), "path=%s&since=%d", SVC_PATH, since);
        r = dbl_requests(&g_dbl, q);
    }
    e = json_array_get(r, 0);
    assert_non_null(e);
    assert_int_equal(strtoull(json_string_value(json_object_get(e, "index")), NULL, 10), idx);
    assert_string_equal(json_string_value(json_object_get(e, "wait")), "30000ms");
    assert_string_equal(json_string_value(json_object_get(e, "reason")), "changed");
    json_decref(r);

    /* promotion in place: the canary flips to stable, same id */
    wait_parked(&t, &g_dbl, t.last.index, 5);
    ctl_do(&g_dbl, "PATCH", "/_double/service/" SVC "/instance/web-00", "{\"tags\":[\"v1\"]}");
    wait_pools(&t, 3, 3);
    assert_int_equal(t.last.n, 3);
    assert_int_equal(pool_set_count(&t.last, POOL_CANARY), 0);
    assert_string_equal(t.last.inst[0].id, "web-00");

    /* an index bump without a data change is still delivered (index changed) */
    wait_parked(&t, &g_dbl, t.last.index, 5);
    ctl_do(&g_dbl, "POST", "/_double/touch/" SVC, "");
    wait_pools(&t, 4, 3);
    assert_int_equal(t.last.n, 3);
    assert_int_equal(t.errors, 0);
    ctx_free(&t);
}

static void test_index_reset(void **state)
{
    struct consul_cfg cfg;
    struct tctx t;
    struct consul_watch_stats st;
    uint64_t idx;
    int since;
    json_t *r, *e;
    size_t i;
    bool saw_no_index = false;

    set_service_n(&g_dbl, 2, 0);
    ctl_do(&g_dbl, "PUT", "/_double/service/other", "[{\"id\":\"o1\",\"port\":1}]");
    ctl_do(&g_dbl, "PUT", "/_double/service/other", "[{\"id\":\"o1\",\"port\":2}]");
    set_service_n(&g_dbl, 3, 0); /* our index is now well above 2 */
    test_cfg(&cfg, &g_dbl);
    cfg.wait = 30;
    ctx_init(&t, &cfg);
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    wait_pools(&t, 1, 5);
    idx = t.last.index;
    assert_true(idx > 3);
    wait_parked(&t, &g_dbl, idx, 5);
    since = last_seq(&g_dbl);

    /* a snapshot restore: every index goes back to 2, in-flight queries return */
    ctl_do(&g_dbl, "POST", "/_double/reset-index", "{\"index\":2,\"abandon\":true}");
    /* we must restart without an index, then block on the new, lower one */
    wait_parked(&t, &g_dbl, 2, 3);
    consul_watch_stats(t.w, &st);
    assert_int_equal(st.resets, 1);
    assert_int_equal(st.index, 2);

    /* a change after the restore wakes us at once; without the reset we
     * would block on the old index for the whole 30 s wait */
    set_service_n(&g_dbl, 4, 0);
    {
        int want = t.pools + 1;

        if (!run_until(&t, p_pools_at_least, &want, 3))
            fail_msg("change after an index reset not seen: the watch hangs");
    }
    assert_int_equal(t.last.n, 4);
    assert_true(t.last.index < idx);

    {
        char q[128];

        snprintf(q, sizeof(q), "path=%s&since=%d", SVC_PATH, since);
        r = dbl_requests(&g_dbl, q);
    }
    json_array_foreach(r, i, e)
    {
        const char *ix = json_string_value(json_object_get(e, "index"));

        if (!ix)
            saw_no_index = true;
        else
            assert_true(strtoull(ix, NULL, 10) >= 1); /* never index=0 */
    }
    assert_true(saw_no_index);
    json_decref(r);
    assert_int_equal(t.errors, 0);
    ctx_free(&t);
}

static void test_acl_403(void **state)
{
    static const char *const extra[] = {"--token", "s3cret", NULL};
    struct dbl d;
    struct consul_cfg cfg;
    struct tctx t;
    int want = 3;

    assert_int_equal(dbl_start(&d, extra), 0);
    assert_int_equal(ctl_raw(d.cbase, "PUT", "/_double/service/" SVC,
                             "[{\"id\":\"a\",\"address\":\"10.0.0.1\",\"port\":80}]", NULL, NULL),
                     200);

    /* wrong token: 403, errors only, never a pool */
    test_cfg(&cfg, &d);
    cfg.token = "wrong";
    ctx_init(&t, &cfg);
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    if (!run_until(&t, p_errors_at_least, &want, 5))
        fail_msg("no 403 errors (errors=%d)", t.errors);
    assert_int_equal(t.pools, 0);
    assert_int_equal(t.err_kind[CONSUL_ERR_HTTP_403], t.errors);
    assert_non_null(strstr(t.last_reason, "403"));
    assert_non_null(strstr(t.last_reason, "ACL not found"));
    {
        struct consul_stats cs;

        consul_stats(t.c, &cs);
        assert_true(cs.errors[CONSUL_ERR_HTTP_403] >= 3);
    }
    ctx_free(&t);

    /* no token: Consul filters reads, so the answer is a 200 empty array.
     * The consumer must refuse it when it had instances (panic threshold). */
    test_cfg(&cfg, &d);
    ctx_init(&t, &cfg);
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    wait_pools(&t, 1, 5);
    assert_int_equal(t.last.n, 0);
    ctx_free(&t);

    /* right token, from the environment as Consul's clients read it */
    setenv("CONSUL_HTTP_TOKEN", "s3cret", 1);
    test_cfg(&cfg, &d);
    ctx_init(&t, &cfg);
    unsetenv("CONSUL_HTTP_TOKEN");
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    wait_pools(&t, 1, 5);
    assert_int_equal(t.last.n, 1);
    assert_int_equal(t.errors, 0);
    {
        json_t *j = NULL;
        json_t *r;

        assert_int_equal(
            ctl_raw(d.cbase, "GET", "/_double/requests?path=" SVC_PATH, NULL, NULL, &j), 200);
        r = json_object_get(j, "requests");
        assert_true(
            json_is_true(json_object_get(json_array_get(r, json_array_size(r) - 1), "token")));
        json_decref(j);
    }
    ctx_free(&t);
    dbl_stop(&d);
}

static bool p_recovered(struct tctx *t, void *arg)
{
    struct consul_watch_stats st;

    consul_watch_stats(t->w, &st);
    return st.failures == 0;
}

/* Fault injected after a good answer: errors of the expected kind, no pool
 * callback, a bounded number of requests with growing gaps (backoff), and
 * recovery without a spurious update once the fault is gone. */
static void fault_case(const char *fault_json, enum consul_err kind, double window,
                       size_t max_requests)
{
    struct consul_cfg cfg;
    struct tctx t;
    int since, want = 1;
    size_t n;
    json_t *r;
    char q[128];
    double t0;

    set_service_n(&g_dbl, 3, 0);
    test_cfg(&cfg, &g_dbl);
    cfg.wait = 0.3; /* the parked query returns soon and meets the fault */
    cfg.timeout_margin = 0.2;
    cfg.request_timeout = 0.6;
    cfg.retry_min = 0.1;
    ctx_init(&t, &cfg);
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    wait_pools(&t, 1, 5);
    since = last_seq(&g_dbl);
    ctl_do(&g_dbl, "PUT", "/_double/fault", fault_json);
    if (!run_until(&t, p_errors_at_least, &want, 5))
        fail_msg("no error for fault %s", fault_json);
    run_for(&t, window);
    ctl_do(&g_dbl, "PUT", "/_double/fault", "{\"mode\":\"none\"}");
    t0 = now_mono();

    assert_true(t.errors >= 2);
    if (t.err_kind[kind] != t.errors)
        fail_msg("fault %s: %d errors, %d of kind %s (last %s: %s)", fault_json, t.errors,
                 t.err_kind[kind], consul_err_name(kind), consul_err_name(t.last_err),
                 t.last_reason);
    assert_int_equal(t.pools, 1);

    snprintf(q, sizeof(q), "path=%s&since=%d", SVC_PATH, since);
    r = dbl_requests(&g_dbl, q);
    n = json_array_size(r);
    if (n > max_requests)
        fail_msg("fault %s: %zu requests in %.1fs: busy loop", fault_json, n, window);
    /* backoff: the gaps between query starts grow */
    if (n >= 4) {
        double s0 = json_real_value(json_object_get(json_array_get(r, 1), "start"));
        double s1 = json_real_value(json_object_get(json_array_get(r, 2), "start"));
        double sl = json_real_value(json_object_get(json_array_get(r, n - 1), "start"));
        double sp = json_real_value(json_object_get(json_array_get(r, n - 2), "start"));

        if (!(sl - sp > s1 - s0))
            fail_msg("fault %s: no backoff: first gap %.3f, last gap %.3f", fault_json, s1 - s0,
                     sl - sp);
        assert_true(s1 - s0 >= cfg.retry_min / 2 - 0.01);
    }
    json_decref(r);

    /* recovery: the same data and index, so no pool callback */
    {
        struct consul_watch_stats st;
        int errors = t.errors;

        if (!run_until(&t, p_recovered, NULL, 3))
            fail_msg("fault %s: no recovery", fault_json);
        consul_watch_stats(t.w, &st);
        assert_int_equal(st.failures, 0);
        assert_true(st.last_success_mono > t0);
        assert_true(t.errors <= errors + 1); /* one may have been in flight */
        assert_int_equal(t.pools, 1);
        assert_int_equal(st.errors[kind], (uint64_t)t.err_kind[kind]);
    }
    ctx_free(&t);
}

static void test_fault_500(void **state)
{
    fault_case("{\"mode\":\"500\",\"scope\":\"health\"}", CONSUL_ERR_HTTP_5XX, 1.2, 12);
}

static void test_fault_garbage(void **state)
{
    fault_case("{\"mode\":\"garbage\",\"scope\":\"health\"}", CONSUL_ERR_BAD_ANSWER, 1.2, 12);
}

static void test_fault_down(void **state)
{
    fault_case("{\"mode\":\"down\",\"scope\":\"health\"}", CONSUL_ERR_TRANSPORT, 1.2, 12);
}

static void test_fault_stall(void **state)
{
    /* held longer than the client timeout (0.3 * 17/16 + 0.2 s, or 0.6 s) */
    fault_case("{\"mode\":\"stall\",\"seconds\":5,\"scope\":\"health\"}", CONSUL_ERR_TIMEOUT, 1.5,
               6);
}

static void test_fault_403(void **state)
{
    fault_case("{\"mode\":\"403\",\"scope\":\"health\"}", CONSUL_ERR_HTTP_403, 1.2, 12);
}

static void test_fault_empty_and_panic(void **state)
{
    struct consul_cfg cfg;
    struct tctx t;
    int since;

    set_service_n(&g_dbl, 4, 0);
    test_cfg(&cfg, &g_dbl);
    cfg.wait = 0.3;
    ctx_init(&t, &cfg);
    t.panic_ratio = 0.5;
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    wait_pools(&t, 1, 5);
    assert_int_equal(t.accepted, 1);
    assert_int_equal(t.good.n, 4);

    /* Consul answers 200 [] (same index): delivered, refused by the consumer */
    ctl_do(&g_dbl, "PUT", "/_double/fault", "{\"mode\":\"empty\",\"scope\":\"health\"}");
    wait_pools(&t, 2, 3);
    assert_int_equal(t.last.n, 0);
    assert_int_equal(t.refused, 1);
    assert_non_null(strstr(t.why, "empty"));
    assert_int_equal(t.good.n, 4); /* last known good kept */
    /* and it does not spin: same index, so the same-index interval applies */
    since = last_seq(&g_dbl);
    run_for(&t, 1.0);
    {
        char q[128];

        snprintf(q, sizeof(q), "path=%s&since=%d", SVC_PATH, since);
        assert_true(dbl_count(&g_dbl, q) <= 7);
    }
    ctl_do(&g_dbl, "PUT", "/_double/fault", "{\"mode\":\"none\"}");
    wait_pools(&t, 3, 3);
    assert_int_equal(t.last.n, 4);
    assert_int_equal(t.accepted, 2);

    /* 4 -> 1: fewer than half, refused */
    set_service_n(&g_dbl, 1, 0);
    wait_pools(&t, 4, 3);
    assert_int_equal(t.last.n, 1);
    assert_int_equal(t.refused, 2);
    assert_non_null(strstr(t.why, "stable pool"));
    assert_int_equal(t.good.n, 4);

    /* 4 -> 3: fine */
    set_service_n(&g_dbl, 3, 0);
    wait_pools(&t, 5, 3);
    assert_int_equal(t.accepted, 3);
    assert_int_equal(t.good.n, 3);
    assert_int_equal(t.errors, 0);
    ctx_free(&t);
}

static void test_too_big(void **state)
{
    struct consul_cfg cfg;
    struct tctx t;
    int want = 2;

    set_service_n(&g_dbl, 20, 0); /* ~20 KB of JSON */
    test_cfg(&cfg, &g_dbl);
    cfg.max_body = 4096;
    ctx_init(&t, &cfg);
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    if (!run_until(&t, p_errors_at_least, &want, 5))
        fail_msg("no too_big error (errors=%d)", t.errors);
    assert_int_equal(t.pools, 0);
    assert_int_equal(t.err_kind[CONSUL_ERR_TOO_BIG], t.errors);
    ctx_free(&t);

    /* the same answer fits in the default bound */
    test_cfg(&cfg, &g_dbl);
    ctx_init(&t, &cfg);
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    wait_pools(&t, 1, 5);
    assert_int_equal(t.last.n, 20);
    ctx_free(&t);
}

static void test_connect_refused(void **state)
{
    struct consul_cfg cfg;
    struct tctx t;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    char addr[64];
    int fd = socket(AF_INET, SOCK_STREAM, 0), want = 3;

    /* a port that was just free: nobody listens there */
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    close(fd);
    snprintf(addr, sizeof(addr), "http://127.0.0.1:%d", ntohs(sa.sin_port));
    test_cfg(&cfg, &g_dbl);
    cfg.addr = addr;
    ctx_init(&t, &cfg);
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    if (!run_until(&t, p_errors_at_least, &want, 5))
        fail_msg("no connect errors");
    assert_int_equal(t.err_kind[CONSUL_ERR_CONNECT], t.errors);
    assert_int_equal(t.pools, 0);
    {
        struct consul_watch_stats st;

        consul_watch_stats(t.w, &st);
        assert_int_equal(st.failures, (unsigned)t.errors);
        assert_int_equal(st.last_success, 0);
    }
    ctx_free(&t);
}

/* Consul returning at once with the same index (a bug, or max_query_time
 * tiny) must not become a busy loop. */
static void test_same_index_rate_limited(void **state)
{
    struct consul_cfg cfg;
    struct tctx t;
    int since;
    size_t n;
    char q[128];

    set_service_n(&g_dbl, 2, 0);
    ctl_do(&g_dbl, "PUT", "/_double/config", "{\"max_query_time\":0.01,\"jitter\":false}");
    test_cfg(&cfg, &g_dbl);
    cfg.same_index_interval = 0.25;
    ctx_init(&t, &cfg);
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    wait_pools(&t, 1, 5);
    since = last_seq(&g_dbl);
    run_for(&t, 1.5);
    snprintf(q, sizeof(q), "path=%s&since=%d", SVC_PATH, since);
    n = dbl_count(&g_dbl, q);
    if (n < 3 || n > 8)
        fail_msg("%zu queries in 1.5 s with a 0.25 s same-index interval", n);
    assert_int_equal(t.pools, 1); /* same index, same data: no callback */
    assert_int_equal(t.errors, 0);
    ctx_free(&t);
}

struct churn {
    const struct dbl *d;
};

static void churn_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct churn *ch = w->data;

    ctl_do(ch->d, "POST", "/_double/touch/" SVC, "");
}

/* The index changing fast (every 20 ms): the token bucket lets a burst
 * through, then one query per rate_interval. */
static void test_churn_rate_limited(void **state)
{
    struct consul_cfg cfg;
    struct tctx t;
    struct churn ch = {.d = &g_dbl};
    ev_timer churn;
    int since;
    size_t n;
    char q[128];

    set_service_n(&g_dbl, 2, 0);
    test_cfg(&cfg, &g_dbl);
    cfg.rate_burst = 3;
    cfg.rate_interval = 0.2;
    ctx_init(&t, &cfg);
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    wait_pools(&t, 1, 5);
    since = last_seq(&g_dbl);
    ev_timer_init(&churn, churn_cb, 0.02, 0.02);
    churn.data = &ch;
    ev_timer_start(t.loop, &churn);
    run_for(&t, 1.5);
    ev_timer_stop(t.loop, &churn);
    snprintf(q, sizeof(q), "path=%s&since=%d", SVC_PATH, since);
    n = dbl_count(&g_dbl, q);
    /* at most the 3 tokens left + 1.5 / 0.2 refills (+1 in flight) */
    if (n > 3 + 8 + 1)
        fail_msg("%zu queries in 1.5 s of churn: not rate limited", n);
    assert_true(n >= 5); /* but it keeps up */
    assert_true(t.pools >= 5);
    assert_int_equal(t.errors, 0);
    ctx_free(&t);
}

/* ---- registration -------------------------------------------------------------------------- */

struct hist {
    const struct dbl *d;
    const char *op;
    int count;
};

static int count_history(const struct dbl *d, const char *op, const char *status, json_t **last)
{
    json_t *j = ctl(d, "GET", "/_double/registrations", NULL), *h, *e;
    size_t i;
    int n = 0;

    h = json_object_get(j, "history");
    json_array_foreach(h, i, e)
    {
        const char *o = json_string_value(json_object_get(e, "op"));

        if (o && strcmp(o, op) == 0 &&
            (!status || json_integer_value(json_object_get(e, "http_status")) == atoi(status))) {
            n++;
            if (last) {
                json_decref(*last);
                *last = json_incref(e);
            }
        }
    }
    json_decref(j);
    return n;
}

static bool p_history(struct tctx *t, void *arg)
{
    struct hist *h = arg;

    return count_history(h->d, h->op, "200", NULL) >= h->count;
}

static void wait_history(struct tctx *t, const char *op, int count, double timeout)
{
    struct hist h = {.d = &g_dbl, .op = op, .count = count};

    if (!run_until(t, p_history, &h, timeout))
        fail_msg("fewer than %d \"%s\" events within %.1fs (saw %d)", count, op, timeout,
                 count_history(&g_dbl, op, "200", NULL));
}

static void test_registration(void **state)
{
    static const char *const tags[] = {"cedra", "metrics"};
    static const char *const meta[] = {"version", "1.2.3", "node", "edge-1"};
    struct consul_cfg cfg;
    struct consul_reg_cfg rc = {
        .name = "cedra-agent",
        .id = "cedra-agent-edge-1",
        .address = "127.0.0.1",
        .port = 9100,
        .tags = tags,
        .ntags = 2,
        .meta = meta,
        .nmeta = 2,
        .ttl = 0.6,
        .deregister_after = 90,
    };
    struct tctx t;
    char err[256];
    json_t *j, *svc, *chk, *def, *last = NULL;
    int passes;

    test_cfg(&cfg, &g_dbl);
    ctx_init(&t, &cfg);
    t.health = CONSUL_HEALTH_PASS;
    assert_int_equal(consul_register(t.c, &rc, health_cb, &t, err, sizeof(err)), 0);
    assert_int_equal(consul_register(t.c, &rc, health_cb, &t, err, sizeof(err)), -1);
    wait_history(&t, "register", 1, 3);
    /* the first pass right after registering, then every ttl/3 = 0.2 s */
    wait_history(&t, "pass", 4, 3);
    assert_true(consul_registered(t.c));

    j = ctl(&g_dbl, "GET", "/_double/registrations", NULL);
    svc = json_object_get(json_object_get(j, "services"), "cedra-agent-edge-1");
    assert_non_null(svc);
    assert_string_equal(json_string_value(json_object_get(svc, "Service")), "cedra-agent");
    assert_string_equal(json_string_value(json_object_get(svc, "Address")), "127.0.0.1");
    assert_int_equal(json_integer_value(json_object_get(svc, "Port")), 9100);
    assert_string_equal(json_string_value(json_array_get(json_object_get(svc, "Tags"), 1)),
                        "metrics");
    assert_string_equal(json_string_value(json_object_get(json_object_get(svc, "Meta"), "version")),
                        "1.2.3");
    chk = json_object_get(json_object_get(j, "checks"), "service:cedra-agent-edge-1");
    assert_non_null(chk);
    assert_string_equal(json_string_value(json_object_get(chk, "Type")), "ttl");
    assert_string_equal(json_string_value(json_object_get(chk, "Status")), "passing");
    assert_string_equal(json_string_value(json_object_get(chk, "TTL")), "600ms");
    assert_true(json_real_value(json_object_get(chk, "DeregisterCriticalServiceAfter_s")) == 90.0);
    def = json_object_get(json_array_get(json_object_get(j, "history"), 0), "definition");
    assert_string_equal(json_string_value(json_object_get(json_object_get(def, "Check"),
                                                          "DeregisterCriticalServiceAfter")),
                        "90000ms");
    json_decref(j);

    /* unhealthy: warn, then fail, with the note as output */
    t.health = CONSUL_HEALTH_WARN;
    snprintf(t.note, sizeof(t.note), "haproxy slow");
    wait_history(&t, "warn", 1, 2);
    count_history(&g_dbl, "warn", "200", &last);
    assert_string_equal(json_string_value(json_object_get(last, "output")), "haproxy slow");
    t.health = CONSUL_HEALTH_FAIL;
    snprintf(t.note, sizeof(t.note), "haproxy down");
    wait_history(&t, "fail", 1, 2);
    count_history(&g_dbl, "fail", "200", &last);
    assert_string_equal(json_string_value(json_object_get(last, "output")), "haproxy down");
    json_decref(last);
    t.health = CONSUL_HEALTH_PASS;
    t.note[0] = '\0';
    passes = count_history(&g_dbl, "pass", "200", NULL);
    wait_history(&t, "pass", passes + 1, 2);

    /* the Consul agent forgets us (restart without state): the next pass
     * gets 404 and we register again */
    {
        char base[96];

        snprintf(base, sizeof(base), "http://%s", g_dbl.addr);
        assert_int_equal(
            ctl_raw(base, "PUT", "/v1/agent/service/deregister/cedra-agent-edge-1", "", NULL, NULL),
            200);
    }
    wait_history(&t, "register", 2, 3);
    passes = count_history(&g_dbl, "pass", "200", NULL);
    wait_history(&t, "pass", passes + 1, 2);
    assert_true(consul_registered(t.c));
    {
        struct consul_stats cs;

        consul_stats(t.c, &cs);
        assert_int_equal(cs.registrations, 2);
        assert_true(cs.ttl_updates >= 6);
        assert_true(cs.errors[CONSUL_ERR_HTTP_404] >= 1);
    }

    /* clean exit: deregistered, done called once */
    consul_shutdown(t.c, on_done, &t);
    if (!run_until(&t, p_done, NULL, 3))
        fail_msg("shutdown did not finish");
    assert_true(t.done_ok);
    j = ctl(&g_dbl, "GET", "/_double/registrations", NULL);
    assert_null(json_object_get(json_object_get(j, "services"), "cedra-agent-edge-1"));
    assert_true(json_array_size(json_object_get(j, "deregistered")) >= 1);
    json_decref(j);
    assert_int_equal(count_history(&g_dbl, "deregister", "200", NULL), 2);
    ctx_free(&t);
}

static void test_shutdown_bounded(void **state)
{
    struct consul_cfg cfg;
    struct consul_reg_cfg rc = {.name = "cedra-agent", .port = 9100, .ttl = 10};
    struct tctx t;
    char err[256];
    double t0;
    int since;

    set_service_n(&g_dbl, 2, 0);
    test_cfg(&cfg, &g_dbl);
    cfg.shutdown_timeout = 0.5;
    ctx_init(&t, &cfg);
    t.health = CONSUL_HEALTH_PASS;
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    assert_int_equal(consul_register(t.c, &rc, health_cb, &t, err, sizeof(err)), 0);
    wait_pools(&t, 1, 5);
    wait_history(&t, "pass", 1, 3);

    /* Consul hangs on agent endpoints: the deregistration gives up in time */
    ctl_do(&g_dbl, "PUT", "/_double/fault",
           "{\"mode\":\"stall\",\"seconds\":10,\"scope\":\"agent\"}");
    t0 = now_mono();
    consul_shutdown(t.c, on_done, &t);
    consul_shutdown(t.c, on_done, &t); /* twice is harmless */
    if (!run_until(&t, p_done, NULL, 3))
        fail_msg("shutdown not bounded");
    assert_false(t.done_ok);
    assert_true(t.done_at - t0 < 1.0);
    assert_true(t.done_at - t0 >= 0.4);
    ctl_do(&g_dbl, "PUT", "/_double/fault", "{\"mode\":\"none\"}");

    /* the watch is gone: no more queries */
    since = last_seq(&g_dbl);
    run_for(&t, 0.5);
    {
        char q[128];

        snprintf(q, sizeof(q), "path=%s&since=%d", SVC_PATH, since);
        assert_int_equal(dbl_count(&g_dbl, q), 0);
    }
    ctx_free(&t);
}

static void test_shutdown_without_registration(void **state)
{
    struct consul_cfg cfg;
    struct tctx t;

    test_cfg(&cfg, &g_dbl);
    ctx_init(&t, &cfg);
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    consul_shutdown(t.c, on_done, &t);
    assert_false(t.done); /* always from the loop */
    assert_true(run_until(&t, p_done, NULL, 1));
    assert_true(t.done_ok);
    assert_null(consul_watch(t.c, SVC, on_pool, on_error, &t));
    ctx_free(&t);
}

/* Freeing from inside a callback and from the done callback. */
static void free_in_cb(struct consul_watch *w, const struct pool_set *ps, void *ud)
{
    struct tctx *t = ud;

    t->pools++;
    consul_watch_free(w);
    t->w = NULL;
}

static void free_in_done(struct consul *c, bool ok, void *ud)
{
    struct tctx *t = ud;

    consul_free(c);
    t->c = NULL;
    t->done = true;
}

static void test_free_from_callbacks(void **state)
{
    struct consul_cfg cfg;
    struct tctx t;
    int since;

    set_service_n(&g_dbl, 2, 0);
    test_cfg(&cfg, &g_dbl);
    ctx_init(&t, &cfg);
    t.w = consul_watch(t.c, SVC, free_in_cb, on_error, &t);
    wait_pools(&t, 1, 5);
    since = last_seq(&g_dbl);
    run_for(&t, 0.3);
    {
        char q[128];

        snprintf(q, sizeof(q), "path=%s&since=%d", SVC_PATH, since);
        assert_int_equal(dbl_count(&g_dbl, q), 0);
    }
    consul_shutdown(t.c, free_in_done, &t);
    assert_true(run_until(&t, p_done, NULL, 1));
    assert_null(t.c);
    ctx_free(&t);
}

/* ---- a one-shot HTTP server for answers the double never gives ------------------------------ */

/* Answers each request with responses[i] (the last one repeats), then closes
 * the connection. Runs on the test's loop, next to the client. */
struct fake {
    struct ev_loop *loop;
    int lfd, port;
    ev_io lio;
    const char *const *responses;
    size_t nresp, served;
    char reqs[64][256]; /* request lines */
    size_t nreqs;
};

struct fconn {
    ev_io io;
    struct fake *f;
    char buf[4096];
    size_t len;
};

static void fconn_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct fconn *fc = w->data;
    struct fake *f = fc->f;
    ssize_t n = read(w->fd, fc->buf + fc->len, sizeof(fc->buf) - 1 - fc->len);
    const char *resp;
    char *eol;

    if (n > 0) {
        fc->len += (size_t)n;
        fc->buf[fc->len] = '\0';
        if (!strstr(fc->buf, "\r\n\r\n"))
            return;
        eol = strstr(fc->buf, "\r\n");
        if (f->nreqs < 64) {
            *eol = '\0';
            str_copy(f->reqs[f->nreqs++], fc->buf, sizeof(f->reqs[0]));
        }
        resp = f->responses[f->served < f->nresp ? f->served : f->nresp - 1];
        f->served++;
        /* small answers: the loopback socket buffer takes them at once */
        assert_int_equal(write(w->fd, resp, strlen(resp)), (ssize_t)strlen(resp));
    }
    ev_io_stop(loop, w);
    close(w->fd);
    free(fc);
}

static void fake_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct fake *f = w->data;
    int fd = accept4(f->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    struct fconn *fc;

    if (fd < 0)
        return;
    fc = calloc(1, sizeof(*fc));
    assert_non_null(fc);
    fc->f = f;
    ev_io_init(&fc->io, fconn_cb, fd, EV_READ);
    fc->io.data = fc;
    ev_io_start(loop, &fc->io);
}

static void fake_start(struct fake *f, struct ev_loop *loop, const char *const *responses,
                       size_t nresp)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);

    memset(f, 0, sizeof(*f));
    f->loop = loop;
    f->responses = responses;
    f->nresp = nresp;
    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(f->lfd >= 0);
    assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(f->lfd, 16), 0);
    assert_int_equal(getsockname(f->lfd, (struct sockaddr *)&sa, &sl), 0);
    f->port = ntohs(sa.sin_port);
    ev_io_init(&f->lio, fake_accept_cb, f->lfd, EV_READ);
    f->lio.data = f;
    ev_io_start(loop, &f->lio);
}

static void fake_stop(struct fake *f)
{
    ev_io_stop(f->loop, &f->lio);
    close(f->lfd);
}

static void fake_cfg(struct consul_cfg *cfg, const struct fake *f, char *addr, size_t addrlen)
{
    consul_cfg_defaults(cfg);
    snprintf(addr, addrlen, "127.0.0.1:%d", f->port);
    cfg->addr = addr;
    cfg->wait = 2;
    cfg->retry_min = 0.05;
    cfg->retry_max = 0.2;
    cfg->same_index_interval = 0.2;
    cfg->rate_interval = 0.01;
    cfg->request_timeout = 2;
}

#define OK_HDRS "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"

/* X-Consul-Index: 0 (a Consul bug the docs warn about): the next query uses
 * index=1 and blocks, never index=0 in a loop. */
static void test_index_zero(void **state)
{
    static const char *const resp[] = {OK_HDRS "X-Consul-Index: 0\r\nContent-Length: 2\r\n\r\n[]"};
    struct consul_cfg cfg;
    struct tctx t;
    struct fake f;
    char addr[64];

    test_cfg(&cfg, &g_dbl);
    ctx_init(&t, &cfg);
    consul_free(t.c);
    fake_start(&f, t.loop, resp, 1);
    fake_cfg(&cfg, &f, addr, sizeof(addr));
    t.c = consul_new(t.loop, &cfg, NULL, 0);
    assert_non_null(t.c);
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    wait_pools(&t, 1, 3);
    assert_int_equal(t.last.index, 1);
    run_for(&t, 1.0);
    /* first without an index, then index=1 each time, at the same-index pace */
    assert_true(f.nreqs >= 3 && f.nreqs <= 8);
    assert_null(strstr(f.reqs[0], "index="));
    for (size_t i = 1; i < f.nreqs; i++)
        if (!strstr(f.reqs[i], "?passing=1&index=1&wait=2000ms "))
            fail_msg("request %zu: %s", i, f.reqs[i]);
    assert_int_equal(t.pools, 1);
    assert_int_equal(t.errors, 0);
    consul_free(t.c);
    t.c = NULL;
    fake_stop(&f);
    ctx_free(&t);
}

static void expect_fake_error(const char *resp, enum consul_err kind, size_t max_body)
{
    const char *const r[] = {resp};
    struct consul_cfg cfg;
    struct tctx t;
    struct fake f;
    char addr[64];
    int want = 2;

    test_cfg(&cfg, &g_dbl);
    ctx_init(&t, &cfg);
    consul_free(t.c);
    fake_start(&f, t.loop, r, 1);
    fake_cfg(&cfg, &f, addr, sizeof(addr));
    if (max_body)
        cfg.max_body = max_body;
    t.c = consul_new(t.loop, &cfg, NULL, 0);
    assert_non_null(t.c);
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    if (!run_until(&t, p_errors_at_least, &want, 3))
        fail_msg("no error for %.60s", resp);
    if (t.err_kind[kind] != t.errors)
        fail_msg("%.60s: got %s (%s), wanted %s", resp, consul_err_name(t.last_err), t.last_reason,
                 consul_err_name(kind));
    assert_int_equal(t.pools, 0);
    consul_free(t.c);
    t.c = NULL;
    fake_stop(&f);
    ctx_free(&t);
}

static void test_bad_answers(void **state)
{
    char big[4096 + 512];
    size_t o;

    expect_fake_error(OK_HDRS "Content-Length: 2\r\n\r\n[]", CONSUL_ERR_NO_INDEX, 0);
    expect_fake_error(OK_HDRS "X-Consul-Index: 12abc\r\nContent-Length: 2\r\n\r\n[]",
                      CONSUL_ERR_NO_INDEX, 0);
    expect_fake_error(OK_HDRS "X-Consul-Index: -3\r\nContent-Length: 2\r\n\r\n[]",
                      CONSUL_ERR_NO_INDEX, 0);
    expect_fake_error(OK_HDRS "X-Consul-Index: 99999999999999999999999\r\nContent-Length: "
                              "2\r\n\r\n[]",
                      CONSUL_ERR_NO_INDEX, 0);
    expect_fake_error(OK_HDRS "X-Consul-Index: 5\r\nContent-Length: 2\r\n\r\n{}",
                      CONSUL_ERR_BAD_ANSWER, 0);
    expect_fake_error(OK_HDRS "X-Consul-Index: 5\r\nContent-Length: 0\r\n\r\n",
                      CONSUL_ERR_BAD_ANSWER, 0);
    expect_fake_error("HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\n"
                      "not found",
                      CONSUL_ERR_HTTP_404, 0);
    expect_fake_error("HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nConnection: "
                      "close\r\n\r\n",
                      CONSUL_ERR_HTTP_4XX, 0);
    expect_fake_error("HTTP/1.1 301 Moved\r\nLocation: http://evil/\r\nContent-Length: "
                      "0\r\nConnection: close\r\n\r\n",
                      CONSUL_ERR_HTTP_OTHER, 0);
    expect_fake_error("HTTP/1.1 200 OK\r\nX-Consul-Index: 5\r\nContent-Length: 10\r\n"
                      "Connection: close\r\n\r\n[]",
                      CONSUL_ERR_TRANSPORT, 0); /* cut short */
    expect_fake_error("garbage\r\n\r\n", CONSUL_ERR_TRANSPORT, 0);
    /* chunked, no Content-Length: the write callback enforces the bound */
    o = (size_t)snprintf(big, sizeof(big),
                         "HTTP/1.1 200 OK\r\nX-Consul-Index: 5\r\nTransfer-Encoding: chunked\r\n"
                         "Connection: close\r\n\r\n");
    for (int i = 0; i < 6; i++) {
        o += (size_t)snprintf(big + o, sizeof(big) - o, "200\r\n");
        memset(big + o, ' ', 0x200);
        o += 0x200;
        o += (size_t)snprintf(big + o, sizeof(big) - o, "\r\n");
    }
    snprintf(big + o, sizeof(big) - o, "0\r\n\r\n");
    expect_fake_error(big, CONSUL_ERR_TOO_BIG, 1024);
}

/* ?stale, ?dc, and no ?passing: then Consul returns critical and warning
 * instances, and the client sorts them out from Checks itself. */
static void test_query_params(void **state)
{
    struct consul_cfg cfg;
    struct tctx t;
    json_t *r, *q;

    ctl_do(&g_dbl, "PUT", "/_double/service/" SVC,
           "[{\"id\":\"ok\",\"address\":\"10.0.0.1\",\"port\":1},"
           "{\"id\":\"warn\",\"address\":\"10.0.0.2\",\"port\":2,\"status\":\"warning\","
           "\"weights\":{\"passing\":10,\"warning\":2}},"
           "{\"id\":\"crit\",\"address\":\"10.0.0.3\",\"port\":3,\"status\":\"critical\"}]");
    test_cfg(&cfg, &g_dbl);
    cfg.stale = true;
    cfg.datacenter = "dc1";
    cfg.passing_only = false;
    ctx_init(&t, &cfg);
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    wait_pools(&t, 1, 5);
    assert_int_equal(t.last.n, 2);
    assert_string_equal(t.last.inst[0].id, "ok");
    assert_string_equal(t.last.inst[1].id, "warn");
    assert_true(t.last.inst[1].warning);
    assert_int_equal(t.last.inst[1].weight, 2);
    {
        struct consul_watch_stats st;

        consul_watch_stats(t.w, &st);
        assert_int_equal(st.last_report.critical, 1);
    }
    r = dbl_requests(&g_dbl, "path=" SVC_PATH);
    q = json_object_get(json_array_get(r, 0), "query");
    assert_null(json_object_get(q, "passing"));
    assert_non_null(json_object_get(q, "stale"));
    assert_string_equal(json_string_value(json_array_get(json_object_get(q, "dc"), 0)), "dc1");
    json_decref(r);
    ctx_free(&t);

    /* with ?passing=1 (the default) Consul drops the warning one as well */
    test_cfg(&cfg, &g_dbl);
    ctx_init(&t, &cfg);
    t.w = consul_watch(t.c, SVC, on_pool, on_error, &t);
    wait_pools(&t, 1, 5);
    assert_int_equal(t.last.n, 1);
    assert_string_equal(t.last.inst[0].id, "ok");
    ctx_free(&t);
}

/* ---- configuration -------------------------------------------------------------------------- */

static void test_addresses(void **state)
{
    static const struct {
        const char *addr;
        const char *want; /* NULL: refused */
    } cases[] = {
        {"127.0.0.1:8500", "http://127.0.0.1:8500"},
        {"http://127.0.0.1:8500", "http://127.0.0.1:8500"},
        {"https://consul.example:8501", "https://consul.example:8501"},
        {"http://10.0.0.1:8500/consul/", "http://10.0.0.1:8500/consul"},
        {"[::1]:8500", "http://[::1]:8500"},
        {"unix:///run/consul.sock", "unix:/run/consul.sock"},
        {"ftp://x:21", NULL},
        {"unix://", NULL},
        {"http://", NULL},
        {"host name:1", NULL},
        {"user@host:1", NULL},
    };
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct consul_cfg cfg;
    struct consul *c;
    char err[256];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        consul_cfg_defaults(&cfg);
        cfg.addr = cases[i].addr;
        c = consul_new(loop, &cfg, err, sizeof(err));
        if (!cases[i].want) {
            if (c)
                fail_msg("%s accepted as %s", cases[i].addr, consul_address(c));
            continue;
        }
        if (!c)
            fail_msg("%s refused: %s", cases[i].addr, err);
        assert_string_equal(consul_address(c), cases[i].want);
        consul_free(c);
    }

    /* environment: CONSUL_HTTP_ADDR, CONSUL_HTTP_SSL (and http:// stays https) */
    consul_cfg_defaults(&cfg);
    c = consul_new(loop, &cfg, err, sizeof(err));
    assert_string_equal(consul_address(c), "http://127.0.0.1:8500");
    consul_free(c);
    setenv("CONSUL_HTTP_ADDR", "http://consul.local:8501", 1);
    setenv("CONSUL_HTTP_SSL", "true", 1);
    c = consul_new(loop, &cfg, err, sizeof(err));
    assert_non_null(c);
    assert_string_equal(consul_address(c), "https://consul.local:8501");
    consul_free(c);
    setenv("CONSUL_HTTP_SSL", "maybe", 1);
    assert_null(consul_new(loop, &cfg, err, sizeof(err)));
    unsetenv("CONSUL_HTTP_SSL");
    cfg.ssl = 1;
    setenv("CONSUL_HTTP_ADDR", "10.0.0.1:8501", 1);
    c = consul_new(loop, &cfg, err, sizeof(err));
    assert_string_equal(consul_address(c), "https://10.0.0.1:8501");
    consul_free(c);
    unsetenv("CONSUL_HTTP_ADDR");

    /* tokens go into a header: no CR/LF */
    consul_cfg_defaults(&cfg);
    cfg.token = "abc\r\nX-Evil: 1";
    assert_null(consul_new(loop, &cfg, err, sizeof(err)));
    /* a client certificate needs its key */
    consul_cfg_defaults(&cfg);
    cfg.client_cert = "/etc/cert.pem";
    assert_null(consul_new(loop, &cfg, err, sizeof(err)));
    assert_non_null(strstr(err, "CONSUL_CLIENT_KEY"));
    /* token file, trimmed */
    {
        char path[] = "/tmp/cedra-token-XXXXXX";
        int fd = mkstemp(path);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, " tok-123\n", 9), 9);
        close(fd);
        setenv("CONSUL_HTTP_TOKEN_FILE", path, 1);
        setenv("CONSUL_HTTP_TOKEN", "ignored", 1);
        consul_cfg_defaults(&cfg);
        c = consul_new(loop, &cfg, err, sizeof(err));
        assert_non_null(c);
        consul_free(c);
        unlink(path);
        assert_null(consul_new(loop, &cfg, err, sizeof(err))); /* unreadable now */
        unsetenv("CONSUL_HTTP_TOKEN_FILE");
        unsetenv("CONSUL_HTTP_TOKEN");
    }
    /* registration arguments */
    {
        struct consul_reg_cfg rc = {.name = "x y", .ttl = 10};

        consul_cfg_defaults(&cfg);
        c = consul_new(loop, &cfg, err, sizeof(err));
        assert_int_equal(consul_register(c, &rc, NULL, NULL, err, sizeof(err)), -1);
        rc.name = "ok";
        rc.ttl = 0.1;
        assert_int_equal(consul_register(c, &rc, NULL, NULL, err, sizeof(err)), -1);
        rc.ttl = 10;
        rc.address = "bad address";
        assert_int_equal(consul_register(c, &rc, NULL, NULL, err, sizeof(err)), -1);
        consul_free(c);
    }
    assert_string_equal(consul_err_name(CONSUL_ERR_HTTP_403), "http_403");
    assert_string_equal(consul_err_name(CONSUL_ERR_KINDS), "?");
    ev_loop_destroy(loop);
}

static bool p_registered_and_passed(struct tctx *t, void *arg)
{
    struct consul_stats cs;

    consul_stats(t->c, &cs);
    return cs.registrations == 1 && cs.ttl_updates >= 1;
}

/* Token sent as X-Consul-Token, read from the token-enabled double's log. */
static void test_token_header(void **state)
{
    static const char *const extra[] = {"--token", "tok-9", NULL};
    struct dbl d;
    struct consul_cfg cfg;
    struct consul_reg_cfg rc = {.name = "cedra-agent", .port = 1, .ttl = 10};
    struct tctx t;
    char err[256];
    json_t *j = NULL;

    assert_int_equal(dbl_start(&d, extra), 0);
    test_cfg(&cfg, &d);
    cfg.token = "tok-9";
    ctx_init(&t, &cfg);
    t.health = CONSUL_HEALTH_PASS;
    assert_int_equal(consul_register(t.c, &rc, health_cb, &t, err, sizeof(err)), 0);
    /* a registration with a good token succeeds (anonymous would get 403) */
    if (!run_until(&t, p_registered_and_passed, NULL, 3))
        fail_msg("no registration with the token");
    assert_int_equal(ctl_raw(d.cbase, "GET", "/_double/requests?kind=agent", NULL, NULL, &j), 200);
    assert_true(json_array_size(json_object_get(j, "requests")) >= 2);
    assert_true(
        json_is_true(json_object_get(json_array_get(json_object_get(j, "requests"), 0), "token")));
    json_decref(j);
    consul_shutdown(t.c, on_done, &t);
    assert_true(run_until(&t, p_done, NULL, 2));
    assert_true(t.done_ok);
    ctx_free(&t);
    dbl_stop(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_addresses),
        cmocka_unit_test_setup(test_initial_answer, test_setup),
        cmocka_unit_test_setup(test_change_wakes_query, test_setup),
        cmocka_unit_test_setup(test_index_reset, test_setup),
        cmocka_unit_test_setup(test_acl_403, test_setup),
        cmocka_unit_test_setup(test_token_header, test_setup),
        cmocka_unit_test_setup(test_fault_500, test_setup),
        cmocka_unit_test_setup(test_fault_garbage, test_setup),
        cmocka_unit_test_setup(test_fault_down, test_setup),
        cmocka_unit_test_setup(test_fault_stall, test_setup),
        cmocka_unit_test_setup(test_fault_403, test_setup),
        cmocka_unit_test_setup(test_fault_empty_and_panic, test_setup),
        cmocka_unit_test_setup(test_too_big, test_setup),
        cmocka_unit_test_setup(test_connect_refused, test_setup),
        cmocka_unit_test_setup(test_same_index_rate_limited, test_setup),
        cmocka_unit_test_setup(test_churn_rate_limited, test_setup),
        cmocka_unit_test_setup(test_registration, test_setup),
        cmocka_unit_test_setup(test_shutdown_bounded, test_setup),
        cmocka_unit_test_setup(test_shutdown_without_registration, test_setup),
        cmocka_unit_test_setup(test_free_from_callbacks, test_setup),
        cmocka_unit_test_setup(test_query_params, test_setup),
        cmocka_unit_test(test_index_zero),
        cmocka_unit_test(test_bad_answers),
    };
    const char *lvl = getenv("CEDRA_TEST_LOG");
    enum log_level l;

    log_init("test_consul", false);
    log_set_level(lvl && log_level_parse(lvl, &l) == 0 ? l : LOG_LVL_ERROR);
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
