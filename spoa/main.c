/* cedra-spoa: start-up, signals and reloads. The work happens in worker.c. */
#include "config.h"

#include <errno.h>
#include <ev.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "cli.h"
#include "conf.h"
#include "httpd.h"
#include "l1.h"
#include "fill.h"
#include "lane.h"
#include "opsock.h"
#include "stats.h"
#include "tracking.h"
#include "deliver.h"
#include "log.h"
#include "net.h"
#include "privs.h"
#include "worker.h"

#define DEFAULT_CONF SYSCONFDIR "/cedra/cedra-spoa.conf"

struct overrides {
    struct endpoint listen[SPOA_MAX_LISTEN];
    unsigned nlisten;
    unsigned threads;
    bool debug;
};

struct daemon {
    const char *conf_path;
    struct overrides ov;
    struct spoa_conf *conf;
    struct worker **workers;
    unsigned nworkers;
    int *fds; /* nworkers * nlisten, by worker then listener */
    unsigned nfds;
    struct deliver *deliver;
    struct l1 *l1;     /* in-process page cache, kept exact by tracking */
    struct lane *lane; /* the fast lane, kept exact through the cache's drop hook */
    struct fill *fill; /* edge pages by id for HAProxy's cache (haproxy-cache on), likewise */
    uint64_t conf_gen; /* of the last configuration published */
    struct tracking *tracking; /* on the main loop */
    struct spoa_stats *stats;
    struct opsock *opsock;
    struct httpd *httpd;
    struct cli_state cli;
    int deliver_fd, metrics_fd; /* bound before the privilege drop, until handed over */
    bool dropped;               /* privileges were dropped: reloads cannot change them */
};

static void usage(FILE *f)
{
    fprintf(f, "usage: cedra-spoa [-f FILE] [-c] [-v] [-h] [-l ADDR]... [-t N] [-d] [-p PIDFILE]\n"
               "  -f FILE   configuration file (default " DEFAULT_CONF ")\n"
               "  -c        check the configuration and exit (0 when valid)\n"
               "  -v        print the version and exit\n"
               "  -l ADDR   listen on ADDR (host:port, [v6]:port or unix:/path), replaces\n"
               "            the file's 'listen' lines; repeatable\n"
               "  -t N      worker threads (replaces 'threads')\n"
               "  -d        debug logs (replaces 'log-level')\n"
               "  -p FILE   write the pid to FILE\n"
               "  -h        this help\n"
               "Started as root, it drops to the file's 'user'/'group' once every socket is\n"
               "bound, and refuses to stay root without 'allow-root'.\n"
               "Signals: SIGTERM/SIGINT drain and exit, SIGHUP reloads the file.\n");
}

static void apply_overrides(struct spoa_conf *c, const struct overrides *ov)
{
    if (ov->nlisten) {
        memcpy(c->listen, ov->listen, sizeof(ov->listen));
        c->nlisten = ov->nlisten;
    }
    if (ov->threads)
        c->threads = ov->threads;
    if (ov->debug)
        c->log_level = LOG_LVL_DEBUG;
}

static struct spoa_conf *load(struct daemon *d, char *err, size_t errlen)
{
    struct spoa_conf *c = spoa_conf_new();

    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (spoa_conf_load(d->conf_path, c, err, errlen) < 0) {
        spoa_conf_release(c);
        return NULL;
    }
    apply_overrides(c, &d->ov);
    if (c->nlisten == 0) {
        snprintf(err, errlen, "%s: no 'listen' address (and no -l)", d->conf_path);
        spoa_conf_release(c);
        return NULL;
    }
    return c;
}

static void on_stop(struct ev_loop *loop, ev_signal *s, int revents)
{
    struct daemon *d = s->data;

    log_notice("stopping", "signal=%d workers=%u", s->signum, d->nworkers);
    for (unsigned i = 0; i < d->nworkers; i++)
        worker_stop(d->workers[i]);
    ev_break(loop, EVBREAK_ALL);
}

/* The pools' key prefixes: what the in-process cache may hold and tracking
 * must watch. */
static size_t pool_prefixes(const struct spoa_conf *c, const char **out)
{
    size_t n = 0;

    for (unsigned i = 0; i < c->npools; i++)
        if (c->pools[i].key_prefix[0])
            out[n++] = c->pools[i].key_prefix;
    return n;
}

/* Whatever leaves the in-process cache leaves the lane and the fill table,
 * from the thread that dropped it. */
static void on_l1_drop(void *ud, const struct l1_ref *r)
{
    const struct daemon *d = ud;

    if (d->lane)
        lane_drop_hook(d->lane, r);
    if (d->fill)
        fill_drop_hook(d->fill, r);
}

/* Hands a new configuration (its reference) to every worker. */
static void publish(struct daemon *d, struct spoa_conf *c)
{
    /* Before the workers see it: what the lane holds was decided under the
     * previous pools and settings, and publishes still on their way from
     * the old configuration are refused from here on. */
    c->gen = ++d->conf_gen;
    if (d->lane)
        lane_reset(d->lane, c->gen);
    if (d->tracking) {
        const char *pfx[SPOA_MAX_POOLS];
        size_t n = pool_prefixes(c, pfx);

        tracking_set_prefixes(d->tracking, pfx, n);
    }
    for (unsigned i = 0; i < d->nworkers; i++)
        worker_reload(d->workers[i], c);
    spoa_conf_release(d->conf);
    d->conf = c;
}

static void publish_cb(void *ud, struct spoa_conf *c)
{
    publish(ud, c);
}

static bool tracking_up_cb(void *ud)
{
    const struct daemon *d = ud;

    return d->tracking && tracking_up(d->tracking);
}

/* Scrape-time gauges of the in-process cache (l1_get_stats is thread-safe). */
static double l1_stat(struct l1 *l1, int which)
{
    struct l1_stats ls;

    l1_get_stats(l1, &ls);
    switch (which) {
    case 0:
        return (double)ls.entries;
    case 1:
        return (double)ls.bytes;
    case 2:
        return (double)ls.evictions;
    case 3:
        return (double)ls.invalidations;
    default:
        return ls.enabled;
    }
}
static double l1_entries(void *ud)
{
    return l1_stat(ud, 0);
}
static double l1_bytes(void *ud)
{
    return l1_stat(ud, 1);
}
static double l1_evictions(void *ud)
{
    return l1_stat(ud, 2);
}
static double l1_invalidations(void *ud)
{
    return l1_stat(ud, 3);
}
static double l1_on(void *ud)
{
    return l1_stat(ud, 4);
}

static void register_l1_metrics(struct metrics *m, struct l1 *l1)
{
    /* Counters that only ever grow are exposed as gauges computed at scrape
     * time: the registry's counters cannot be set from a snapshot. */
    metrics_gauge_fn(m, "cedra_spoa_l1_entries", "Pages in the in-process cache.", l1_entries, l1);
    metrics_gauge_fn(m, "cedra_spoa_l1_bytes", "Bytes charged to the in-process cache.", l1_bytes,
                     l1);
    metrics_gauge_fn(m, "cedra_spoa_l1_evictions", "Pages evicted for room since start.",
                     l1_evictions, l1);
    metrics_gauge_fn(m, "cedra_spoa_l1_invalidations",
                     "Pages dropped by Valkey invalidations or purges since start.",
                     l1_invalidations, l1);
    metrics_gauge_fn(m, "cedra_spoa_l1_enabled",
                     "1 while Valkey tracking keeps the in-process cache exact.", l1_on, l1);
}

/* Scrape-time values of the fast lane (lane_get_stats is thread-safe). */
static double lane_stat(struct lane *ln, int which)
{
    struct lane_stats ls;

    lane_get_stats(ln, &ls);
    switch (which) {
    case 0:
        return (double)ls.entries;
    case 1:
        return (double)ls.published;
    case 2:
        return (double)ls.withdrawn;
    case 3:
        return (double)ls.fills;
    case 4:
        return (double)ls.unknown_fills;
    case 5:
        return (double)ls.failures;
    case 7:
        return (double)ls.checks;
    default:
        return lane_up(ln, 0);
    }
}
static double lane_entries(void *ud)
{
    return lane_stat(ud, 0);
}
static double lane_published(void *ud)
{
    return lane_stat(ud, 1);
}
static double lane_withdrawn(void *ud)
{
    return lane_stat(ud, 2);
}
static double lane_fills(void *ud)
{
    return lane_stat(ud, 3);
}
static double lane_unknown_fills(void *ud)
{
    return lane_stat(ud, 4);
}
static double lane_failures(void *ud)
{
    return lane_stat(ud, 5);
}
static double lane_is_up(void *ud)
{
    return lane_stat(ud, 6);
}
static double lane_checks(void *ud)
{
    return lane_stat(ud, 7);
}

/* Scrape-time values of the haproxy-cache fill table (thread-safe). */
static double fill_entries(void *ud)
{
    struct fill_stats fs;

    fill_get_stats(ud, &fs);
    return (double)fs.entries;
}
static double fill_fills(void *ud)
{
    struct fill_stats fs;

    fill_get_stats(ud, &fs);
    return (double)(fs.fills + fs.grace_fills);
}
static double fill_unknown(void *ud)
{
    struct fill_stats fs;

    fill_get_stats(ud, &fs);
    return (double)fs.unknown_fills;
}

static void register_fill_metrics(struct metrics *m, struct fill *f)
{
    metrics_gauge_fn(m, "cedra_spoa_haproxy_cache_entries",
                     "Pages HAProxy's cache may be filled with (haproxy-cache on).", fill_entries,
                     f);
    metrics_gauge_fn(m, "cedra_spoa_haproxy_cache_fills",
                     "HAProxy cache fills of haproxy-cache answers served since start.", fill_fills,
                     f);
    metrics_gauge_fn(m, "cedra_spoa_haproxy_cache_unknown_fills",
                     "Fills asked for a page no longer known (answered 503).", fill_unknown, f);
}

static void register_lane_metrics(struct metrics *m, struct lane *ln)
{
    metrics_gauge_fn(m, "cedra_spoa_lane_up",
                     "1 while HAProxy may answer hot pages without asking (fast lane).", lane_is_up,
                     ln);
    metrics_gauge_fn(m, "cedra_spoa_lane_entries", "Pages on the fast lane.", lane_entries, ln);
    metrics_gauge_fn(m, "cedra_spoa_lane_published", "Pages put on the lane since start.",
                     lane_published, ln);
    metrics_gauge_fn(m, "cedra_spoa_lane_withdrawn", "Pages taken off the lane since start.",
                     lane_withdrawn, ln);
    metrics_gauge_fn(m, "cedra_spoa_lane_fills", "HAProxy cache fills served since start.",
                     lane_fills, ln);
    metrics_gauge_fn(m, "cedra_spoa_lane_unknown_fills",
                     "Fills asked for a page the lane no longer knew (answered 503).",
                     lane_unknown_fills, ln);
    metrics_gauge_fn(m, "cedra_spoa_lane_failures",
                     "Runtime API failures that closed the lane since start.", lane_failures, ln);
    metrics_gauge_fn(m, "cedra_spoa_lane_health_checks",
                     "Health checks of the lane by the HAProxy process it was set up in, since "
                     "start: flat while the lane is up means HAProxy runs without CEDRA_LANE=on.",
                     lane_checks, ln);
}

static void on_hup(struct ev_loop *loop, ev_signal *s, int revents)
{
    struct daemon *d = s->data;
    char err[512];
    struct spoa_conf *c = load(d, err, sizeof(err));

    if (!c) {
        log_error("reload_failed", "file=%s reason=\"%s\"", d->conf_path, err);
        return;
    }
    /* Dropped privileges cannot be changed or taken back: keep everything. */
    if (!privs_equal(&c->privs, &d->conf->privs)) {
        log_error("reload_failed",
                  "file=%s reason=\"user, group and allow-root need a restart\" dropped=%s",
                  d->conf_path, d->dropped ? "yes" : "no");
        spoa_conf_release(c);
        return;
    }
    /* Sockets, threads and frame sizes are fixed at start-up. */
    if (c->threads != d->conf->threads || c->nlisten != d->conf->nlisten ||
        c->max_frame_size != d->conf->max_frame_size ||
        c->max_connections != d->conf->max_connections)
        log_notice("reload_partial", "reason=\"listen, threads, max-frame-size and "
                                     "max-connections need a restart\"");
    memcpy(c->listen, d->conf->listen, sizeof(c->listen));
    c->nlisten = d->conf->nlisten;
    c->threads = d->conf->threads;
    c->max_frame_size = d->conf->max_frame_size;
    c->max_reassembly = d->conf->max_reassembly;
    c->max_inflight = d->conf->max_inflight;
    c->max_connections = d->conf->max_connections;
    /* So are the connections and servers built from these. */
    memcpy(c->valkey_addr, d->conf->valkey_addr, sizeof(c->valkey_addr));
    c->has_deliver = d->conf->has_deliver;
    c->deliver = d->conf->deliver;
    c->has_metrics = d->conf->has_metrics;
    c->metrics = d->conf->metrics;
    memcpy(c->stats_socket, d->conf->stats_socket, sizeof(c->stats_socket));
    if (strcmp(c->lane_socket, d->conf->lane_socket) != 0 ||
        strcmp(c->lane_map, d->conf->lane_map) != 0 ||
        strcmp(c->lane_cookies, d->conf->lane_cookies) != 0 ||
        c->lane_grace != d->conf->lane_grace || c->lane_max_entries != d->conf->lane_max_entries)
        log_notice("reload_partial", "reason=\"the lane-* settings need a restart\"");
    memcpy(c->lane_socket, d->conf->lane_socket, sizeof(c->lane_socket));
    memcpy(c->lane_map, d->conf->lane_map, sizeof(c->lane_map));
    memcpy(c->lane_cookies, d->conf->lane_cookies, sizeof(c->lane_cookies));
    c->lane_grace = d->conf->lane_grace;
    c->lane_max_entries = d->conf->lane_max_entries;
    if (c->haproxy_cache != d->conf->haproxy_cache ||
        c->haproxy_cache_entries != d->conf->haproxy_cache_entries)
        log_notice("reload_partial", "reason=\"the haproxy-cache settings need a restart\"");
    c->haproxy_cache = d->conf->haproxy_cache;
    c->haproxy_cache_entries = d->conf->haproxy_cache_entries;
    /* HAProxy's lane guard knows the session cookies from the start: a new
     * one it does not know would let a private request onto the lane. */
    if (d->lane &&
        (c->nsession != d->conf->nsession ||
         memcmp(c->session_cookie, d->conf->session_cookie, sizeof(c->session_cookie)) != 0)) {
        log_notice("reload_partial", "reason=\"session-cookie needs a restart while the fast "
                                     "lane is on\"");
        c->nsession = d->conf->nsession;
        memcpy(c->session_cookie, d->conf->session_cookie, sizeof(c->session_cookie));
    }
    /* "No canary", as cedra-agent said it, still holds; a canary it pushed is
     * gone with the file's pools until it pushes it again. */
    c->canary_known = d->conf->canary_known && !spoa_conf_pool(d->conf, "canary");
    log_set_level(c->log_level);
    publish(d, c);
    log_notice("reloaded", "file=%s locales=%u", d->conf_path, c->locales.n);
}

/* The operator socket and /metrics: on the main loop and MHD's thread, never
 * on a worker, so that a slow operator cannot slow requests down. */
static int start_operator(struct daemon *d, struct ev_loop *loop)
{
    char err[256];

    d->cli = (struct cli_state){.conf_path = d->conf_path,
                                .started = now_mono(),
                                .threads = d->nworkers,
                                .conf = &d->conf,
                                .stats = d->stats,
                                .deliver = d->deliver,
                                .l1 = d->l1,
                                .lane = d->lane,
                                .fill = d->fill,
                                .publish = publish_cb,
                                .tracking_up = d->l1 ? tracking_up_cb : NULL,
                                .ud = d};
    if (d->opsock && cli_register(d->opsock, &d->cli, err, sizeof(err)) < 0) {
        log_error("stats_socket_failed", "path=%s reason=\"%s\"", d->conf->stats_socket, err);
        return 1;
    }
    if (d->l1)
        register_l1_metrics(d->stats->m, d->l1);
    if (d->lane)
        register_lane_metrics(d->stats->m, d->lane);
    if (d->fill)
        register_fill_metrics(d->stats->m, d->fill);
    if (d->conf->has_metrics) {
        struct httpd_config hc = {.listen = &d->conf->metrics, .fd = d->metrics_fd};

        d->metrics_fd = -1; /* httpd_start owns it, failed or not */
        d->httpd = httpd_start(&hc, d->stats->m, err, sizeof(err));
        if (!d->httpd) {
            log_error("metrics_failed", "reason=\"%s\"", err);
            return 1;
        }
    }
    return 0;
}

/* TCP listeners get one SO_REUSEPORT socket per worker so the kernel spreads
 * connections; a UNIX socket is shared by all workers. */
static int open_listeners(struct daemon *d, char *err, size_t errlen)
{
    const struct spoa_conf *c = d->conf;
    unsigned nl = c->nlisten;

    d->nfds = c->threads * nl;
    /* calloc: clang-tidy's analyzer cannot pair the reads with the -1 loop. */
    d->fds = calloc(d->nfds, sizeof(int));
    if (!d->fds)
        return -1;
    for (unsigned i = 0; i < d->nfds; i++)
        d->fds[i] = -1;
    for (unsigned l = 0; l < nl; l++) {
        const struct endpoint *ep = &c->listen[l];

        for (unsigned w = 0; w < c->threads; w++) {
            if (ep->is_unix && w > 0) {
                d->fds[w * nl + l] = d->fds[l];
                continue;
            }
            d->fds[w * nl + l] = net_listen(ep, (int)c->backlog, true, c->unix_mode, err, errlen);
            if (d->fds[w * nl + l] < 0)
                return -1;
            if (ep->is_unix &&
                privs_chown(&c->privs, ((const struct sockaddr_un *)&ep->addr)->sun_path, err,
                            errlen) < 0)
                return -1;
        }
    }
    return 0;
}

/* Everything that needs the start-up credentials, before they are dropped:
 * the delivery and /metrics listeners and the operator socket (on loop, not
 * accepting before ev_run). The SPOP listeners are already open. */
static int open_privileged(struct daemon *d, struct ev_loop *loop, char *err, size_t errlen)
{
    const struct spoa_conf *c = d->conf;

    if (c->has_deliver) {
        d->deliver_fd = net_listen(&c->deliver, 256, false, 0600, err, errlen);
        if (d->deliver_fd < 0)
            return -1;
        if (c->deliver.is_unix &&
            privs_chown(&c->privs, ((const struct sockaddr_un *)&c->deliver.addr)->sun_path, err,
                        errlen) < 0)
            return -1;
    }
    if (c->has_metrics) {
        if (c->metrics.is_unix) {
            snprintf(err, errlen, "the metrics server needs a TCP address");
            return -1;
        }
        d->metrics_fd = net_listen(&c->metrics, 128, false, 0, err, errlen);
        if (d->metrics_fd < 0)
            return -1;
    }
    if (c->stats_socket[0]) {
        char uid[16], gid[16];
        bool chown_it = geteuid() == 0 && (c->privs.has_user || c->privs.has_group);
        struct opsock_config oc = {
            .path = c->stats_socket, .mode = c->stats_mode, .max_clients = c->stats_maxconn};

        /* Owned by the user it will run as, so that it can still replace
         * and remove its socket once dropped. */
        if (chown_it) {
            snprintf(uid, sizeof(uid), "%u", (unsigned)privs_run_uid(&c->privs));
            snprintf(gid, sizeof(gid), "%u", (unsigned)privs_run_gid(&c->privs));
            oc.owner = uid;
            oc.group = gid;
        }
        d->opsock = opsock_new(loop, &oc, err, errlen);
        if (!d->opsock)
            return -1;
    }
    return 0;
}

/* "-c": the file parsed; now what it would do with permissions. */
static int check_permissions(const struct spoa_conf *c)
{
    struct privs_report r = {.out = stderr, .prog = "cedra-spoa"};

    privs_check_conf(&r, &c->privs);
    for (unsigned i = 0; i < c->nlisten; i++)
        if (c->listen[i].is_unix)
            privs_check_socket(&r, &c->privs, "listen",
                               ((const struct sockaddr_un *)&c->listen[i].addr)->sun_path,
                               c->unix_mode, PRIVS_SOCK_DATA);
    if (c->has_deliver && c->deliver.is_unix)
        privs_check_socket(&r, &c->privs, "deliver",
                           ((const struct sockaddr_un *)&c->deliver.addr)->sun_path, 0600,
                           PRIVS_SOCK_DATA);
    if (c->stats_socket[0])
        privs_check_socket(&r, &c->privs, "stats-socket", c->stats_socket, c->stats_mode,
                           PRIVS_SOCK_ADMIN);
    return privs_report_end(&r);
}

static void close_listeners(struct daemon *d)
{
    const struct spoa_conf *c = d->conf;

    for (unsigned l = 0; l < c->nlisten && d->fds; l++) {
        const struct endpoint *ep = &c->listen[l];

        for (unsigned w = 0; w < c->threads; w++) {
            int fd = d->fds[w * c->nlisten + l];

            if (fd >= 0 && !(ep->is_unix && w > 0))
                close(fd);
        }
        if (ep->is_unix)
            unlink(((const struct sockaddr_un *)&ep->addr)->sun_path);
    }
    free(d->fds);
    d->fds = NULL;
}

int main(int argc, char **argv)
{
    struct daemon d = {.conf_path = DEFAULT_CONF, .deliver_fd = -1, .metrics_fd = -1};
    const char *pidfile = NULL;
    bool check = false;
    char err[512];
    struct ev_loop *loop;
    ev_signal sterm, sint, shup;
    sigset_t block, old;
    int opt, rc = 0;

    while ((opt = getopt(argc, argv, "f:cvl:t:dp:h")) != -1) {
        uint64_t v;

        switch (opt) {
        case 'f':
            d.conf_path = optarg;
            break;
        case 'c':
            check = true;
            break;
        case 'v':
            printf("cedra-spoa %s (SPOP 2.0)\n", PACKAGE_VERSION);
            return 0;
        case 'l':
            if (d.ov.nlisten >= SPOA_MAX_LISTEN ||
                parse_endpoint(optarg, &d.ov.listen[d.ov.nlisten++], err, sizeof(err)) < 0) {
                fprintf(stderr, "cedra-spoa: -l %s: %s\n", optarg, err);
                return 1;
            }
            break;
        case 't':
            if (parse_uint(optarg, 1, 64, &v) < 0) {
                fprintf(stderr, "cedra-spoa: -t wants 1..64\n");
                return 1;
            }
            d.ov.threads = (unsigned)v;
            break;
        case 'd':
            d.ov.debug = true;
            break;
        case 'p':
            pidfile = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 1;
    }
    d.conf = load(&d, err, sizeof(err));
    if (!d.conf) {
        fprintf(stderr, "cedra-spoa: %s\n", err);
        return 1;
    }
    if (check) {
        rc = check_permissions(d.conf);
        spoa_conf_release(d.conf);
        return rc;
    }
    if (privs_refuse_root(&d.conf->privs, d.conf_path, err, sizeof(err)) < 0) {
        fprintf(stderr, "cedra-spoa: %s\n", err);
        spoa_conf_release(d.conf);
        return 1;
    }
    net_keep_std_fds();
    log_init("cedra-spoa", d.conf->log_syslog);
    log_set_level(d.conf->log_level);
    signal(SIGPIPE, SIG_IGN);
    loop = ev_default_loop(EVFLAG_AUTO);

    if (open_listeners(&d, err, sizeof(err)) < 0 ||
        open_privileged(&d, loop, err, sizeof(err)) < 0) {
        log_error("listen_failed", "reason=\"%s\"", err);
        goto early_exit;
    }
    if (pidfile) {
        FILE *pf = fopen(pidfile, "w");
        bool ok = pf && fprintf(pf, "%ld\n", (long)getpid()) >= 0;

        if (pf && fclose(pf) != 0)
            ok = false;
        if (!ok) {
            log_error("pidfile_failed", "file=%s error=\"%s\"", pidfile, strerror(errno));
            pidfile = NULL;
            goto early_exit;
        }
    }
    /* Every socket is bound: nothing below needs the start-up credentials,
     * and no thread or outgoing connection exists yet. */
    if (privs_drop_logged(&d.conf->privs, &d.dropped) < 0)
        goto early_exit;

    d.stats = spoa_stats_new();
    if (!d.stats) {
        log_error("stats_failed", "reason=\"out of memory\"");
        goto early_exit;
    }
    if (d.conf->valkey_addr[0] && d.conf->l1_size) {
        /* Starts disabled: tracking turns it on once invalidations flow. */
        d.l1 = l1_new(d.conf->l1_size, 16);
        if (!d.l1)
            log_warning("l1_failed", "reason=\"out of memory\" size=%llu",
                        (unsigned long long)d.conf->l1_size);
    }
    if (d.l1 && d.conf->lane_socket[0]) {
        struct lane_cfg lc = {.socket = d.conf->lane_socket,
                              .map = d.conf->lane_map,
                              .cookies = d.conf->lane_cookies,
                              .timeout = 1.0,
                              .grace = d.conf->lane_grace,
                              .max_lag = 0.5,
                              .max_entries = d.conf->lane_max_entries};

        /* What keeps a request off the lane, as handler.c's must_bypass()
         * and choose_pool() read cookies. */
        lc.patterns[lc.npatterns++] = "__prerender_bypass";
        lc.patterns[lc.npatterns++] = "__next_preview_data";
        lc.patterns[lc.npatterns++] = "cedra_pool";
        for (unsigned i = 0; i < d.conf->nsession && lc.npatterns < LANE_MAX_COOKIES; i++)
            lc.patterns[lc.npatterns++] = d.conf->session_cookie[i];
        d.lane = lane_new(loop, &lc, err, sizeof(err));
        if (!d.lane) {
            log_error("lane_failed", "reason=\"%s\"", err);
            l1_free(d.l1);
            spoa_stats_free(d.stats);
            goto early_exit;
        }
        d.conf->gen = ++d.conf_gen;
        lane_reset(d.lane, d.conf->gen);
        log_info("lane_on", "socket=%s map=%s", d.conf->lane_socket, d.conf->lane_map);
    }
    if (d.l1 && d.conf->haproxy_cache) {
        d.fill = fill_new(d.conf->haproxy_cache_entries, FILL_GRACE);
        if (!d.fill) {
            log_error("haproxy_cache_failed", "reason=\"out of memory\"");
            lane_free(d.lane);
            l1_free(d.l1);
            spoa_stats_free(d.stats);
            goto early_exit;
        }
        log_info("haproxy_cache_on", "entries=%u", d.conf->haproxy_cache_entries);
    }
    if (d.l1 && (d.lane || d.fill))
        l1_set_drop_hook(d.l1, on_l1_drop, &d);
    if (d.conf->has_deliver) {
        struct deliver_cfg dc = {
            .listen = &d.conf->deliver, .fd = d.deliver_fd, .lane = d.lane, .fill = d.fill};

        d.deliver_fd = -1; /* deliver_start owns it, failed or not */
        d.deliver = deliver_start(&dc, err, sizeof(err));
        if (!d.deliver) {
            log_error("deliver_failed", "reason=\"%s\"", err);
            fill_free(d.fill);
            lane_free(d.lane);
            l1_free(d.l1);
            spoa_stats_free(d.stats);
            goto early_exit;
        }
    }

    /* Handlers before the workers answer: a SIGTERM right after the first
     * health check must not meet the default action, in whichever thread the
     * kernel delivers it (libmicrohttpd's, a sanitizer runtime's). */
    ev_signal_init(&sterm, on_stop, SIGTERM);
    ev_signal_init(&sint, on_stop, SIGINT);
    ev_signal_init(&shup, on_hup, SIGHUP);
    sterm.data = sint.data = shup.data = &d;
    ev_signal_start(loop, &sterm);
    ev_signal_start(loop, &sint);
    ev_signal_start(loop, &shup);
    /* Workers must not take the signals: only the main loop handles them. */
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    d.workers = calloc(d.conf->threads, sizeof(*d.workers));
    if (!d.workers) {
        log_error("worker_failed", "error=\"out of memory\"");
        rc = 1;
    }
    for (unsigned i = 0; d.workers && i < d.conf->threads; i++) {
        struct worker *w = worker_new(i, d.conf, d.fds + i * d.conf->nlisten, d.conf->nlisten,
                                      d.deliver, d.l1, d.lane, d.fill, d.stats);

        if (!w || worker_start(w) < 0) {
            log_error("worker_failed", "worker=%u error=\"%s\"", i, strerror(errno));
            worker_free(w);
            rc = 1;
            break;
        }
        d.workers[d.nworkers++] = w;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    if (rc == 0 && d.l1) {
        const char *pfx[SPOA_MAX_POOLS];
        struct tracking_cfg tc = {.addr = d.conf->valkey_addr,
                                  .username = getenv("CEDRA_VALKEY_USERNAME"),
                                  .password = getenv("CEDRA_VALKEY_PASSWORD"),
                                  .db = d.conf->valkey_db};

        tc.prefixes = pfx;
        tc.nprefixes = pool_prefixes(d.conf, pfx);
        d.tracking = tracking_new(loop, &tc, d.l1);
        if (!d.tracking)
            log_warning("tracking_failed", "reason=\"cannot start\" l1=off");
    }
    if (rc == 0)
        rc = start_operator(&d, loop);
    if (rc == 0) {
        char l0[160];

        log_notice(
            "started", "version=%s threads=%u listen=%s pid=%ld", PACKAGE_VERSION, d.nworkers,
            log_quote(l0, sizeof(l0), d.conf->listen[0].text, strlen(d.conf->listen[0].text)),
            (long)getpid());
        ev_run(loop, 0);
    } else {
        for (unsigned i = 0; d.workers && i < d.nworkers; i++)
            worker_stop(d.workers[i]);
    }
    for (unsigned i = 0; d.workers && i < d.nworkers; i++) {
        worker_join(d.workers[i]);
        worker_free(d.workers[i]);
    }
    free(d.workers);
    opsock_free(d.opsock);
    httpd_stop(d.httpd);
    tracking_free(d.tracking); /* after the workers: they read the cache it keeps exact */
    deliver_stop(d.deliver);   /* after the workers: they park pages in it */
    lane_free(d.lane);         /* after delivery (it fills from the lane) and tracking (hook) */
    fill_free(d.fill);         /* likewise */
    l1_free(d.l1);             /* after delivery: parked pages hold cache references */
    close_listeners(&d);
    if (d.metrics_fd >= 0)
        close(d.metrics_fd);
    if (pidfile)
        unlink(pidfile);
    log_notice("stopped", "rc=%d", rc);
    spoa_conf_release(d.conf);
    spoa_stats_free(d.stats);
    ev_loop_destroy(loop);
    return rc;

early_exit:
    /* Nothing started yet: only sockets, the pid file and the loop. */
    opsock_free(d.opsock);
    if (d.deliver_fd >= 0)
        close(d.deliver_fd);
    if (d.metrics_fd >= 0)
        close(d.metrics_fd);
    close_listeners(&d);
    if (pidfile)
        unlink(pidfile);
    spoa_conf_release(d.conf);
    ev_loop_destroy(loop);
    return 1;
}
