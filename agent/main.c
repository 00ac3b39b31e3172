/* cedra-agent: start-up, signals and reloads. The work happens in agent.c. */
#include "config.h"

#include <errno.h>
#include <ev.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "agent_cli.h"
#include "conf.h"
#include "httpd.h"
#include "log.h"
#include "net.h"
#include "opsock.h"
#include "privs.h"

struct daemon {
    const char *conf_path;
    bool debug;
    struct ev_loop *loop;
    struct agent *agent;
    struct opsock *opsock;
    struct httpd *httpd;
    ev_timer hard_stop;
    bool stopping;
    bool dropped;   /* privileges were dropped: reloads cannot change them */
    int metrics_fd; /* bound before the privilege drop, until handed over */
};

static void usage(FILE *f)
{
    fprintf(f, "usage: cedra-agent [-f FILE] [-c] [-v] [-h] [-d] [-p PIDFILE]\n"
               "  -f FILE   configuration file (default " AGENT_DEFAULT_CONF ")\n"
               "  -c        check the configuration and exit (0 when valid)\n"
               "  -v        print the version and exit\n"
               "  -d        debug logs (replaces 'log-level')\n"
               "  -p FILE   write the pid to FILE\n"
               "  -h        this help\n"
               "Started as root, it drops to the file's 'user'/'group' once its sockets are\n"
               "bound, and refuses to stay root without 'allow-root'.\n"
               "Environment: CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN(_FILE), CONSUL_HTTP_SSL,\n"
               "  CONSUL_CACERT, CONSUL_CAPATH, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY.\n"
               "Signals: SIGTERM/SIGINT deregister from Consul and exit, SIGHUP reloads.\n");
}

static struct agent_conf *load(struct daemon *d, char *err, size_t errlen)
{
    struct agent_conf *c = malloc(sizeof(*c));

    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    agent_conf_defaults(c);
    if (agent_conf_load(d->conf_path, c, err, errlen) < 0) {
        free(c);
        return NULL;
    }
    if (d->debug)
        c->log_level = LOG_LVL_DEBUG;
    return c;
}

static void stopped(void *ud)
{
    struct daemon *d = ud;

    ev_break(d->loop, EVBREAK_ALL);
}

static void hard_stop_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    log_warning("stop_timeout", "reason=\"Consul deregistration did not finish\"");
    ev_break(loop, EVBREAK_ALL);
}

static void on_stop(struct ev_loop *loop, ev_signal *s, int revents)
{
    struct daemon *d = s->data;

    if (d->stopping)
        return;
    d->stopping = true;
    log_notice("stopping", "signal=%d", s->signum);
    /* The deregistration is bounded by the Consul client (2 s); this is
     * only a backstop. */
    ev_timer_init(&d->hard_stop, hard_stop_cb, 5., 0.);
    ev_timer_start(loop, &d->hard_stop);
    agent_stop(d->agent, stopped, d);
}

static void on_hup(struct ev_loop *loop, ev_signal *s, int revents)
{
    struct daemon *d = s->data;
    char err[512];
    struct agent_conf *c = load(d, err, sizeof(err));

    if (!c) {
        char q[540];

        log_error("reload_failed", "file=%s reason=%s", d->conf_path,
                  log_quote(q, sizeof(q), err, strlen(err)));
        return;
    }
    /* Dropped privileges cannot be changed or taken back: keep everything. */
    if (!privs_equal(&c->privs, &d->agent->conf->privs)) {
        log_error("reload_failed",
                  "file=%s reason=\"user, group and allow-root need a restart\" dropped=%s",
                  d->conf_path, d->dropped ? "yes" : "no");
        free(c);
        return;
    }
    agent_reload(d->agent, c);
    free(c);
}

/* What needs the start-up credentials, before they are dropped: the
 * operator socket (not accepting before ev_run) and the /metrics listener. */
static int open_privileged(struct daemon *d, const struct agent_conf *c)
{
    char err[256], uid[16], gid[16];

    if (c->stats_socket[0]) {
        struct opsock_config oc = {.path = c->stats_socket,
                                   .mode = c->stats_mode,
                                   .owner = c->stats_user[0] ? c->stats_user : NULL,
                                   .group = c->stats_group[0] ? c->stats_group : NULL};

        /* Without its own owner, the socket belongs to the user the agent
         * runs as, which can then still replace and remove it. */
        if (geteuid() == 0 && (c->privs.has_user || c->privs.has_group)) {
            snprintf(uid, sizeof(uid), "%u", (unsigned)privs_run_uid(&c->privs));
            snprintf(gid, sizeof(gid), "%u", (unsigned)privs_run_gid(&c->privs));
            if (!oc.owner)
                oc.owner = uid;
            if (!oc.group)
                oc.group = gid;
        }
        d->opsock = opsock_new(d->loop, &oc, err, sizeof(err));
        if (!d->opsock || agent_cli_register(d->opsock, d->agent, err, sizeof(err)) < 0) {
            log_error("stats_socket_failed", "path=%s reason=\"%s\"", c->stats_socket, err);
            return -1;
        }
    }
    if (c->has_metrics) {
        d->metrics_fd = net_listen(&c->metrics, 64, false, 0, err, sizeof(err));
        if (d->metrics_fd < 0) {
            log_error("metrics_failed", "listen=%s reason=\"%s\"", c->metrics.text, err);
            return -1;
        }
    }
    return 0;
}

static int start_operator(struct daemon *d, const struct agent_conf *c)
{
    char err[256];

    if (c->has_metrics) {
        struct httpd_config hc = {.listen = &c->metrics, .fd = d->metrics_fd};

        d->metrics_fd = -1; /* httpd_start owns it, failed or not */
        d->httpd = httpd_start(&hc, d->agent->m, err, sizeof(err));
        if (!d->httpd) {
            log_error("metrics_failed", "listen=%s reason=\"%s\"", c->metrics.text, err);
            return -1;
        }
    }
    return 0;
}

/* "-c": the file parsed; now what it would do with permissions. */
static int check_permissions(const struct agent_conf *c)
{
    struct privs_report r = {.out = stderr, .prog = "cedra-agent"};

    privs_check_conf(&r, &c->privs);
    if (c->stats_socket[0]) {
        struct privs owner = c->privs;
        char err[256];

        /* "stats-socket ... user <u>" gives the socket to another user. */
        if (c->stats_user[0] && privs_set_user(&owner, c->stats_user, err, sizeof(err)) < 0) {
            fprintf(stderr, "cedra-agent: [ALERT] stats-socket %s: %s\n", c->stats_socket, err);
            r.errors++;
        }
        privs_check_socket(&r, &owner, "stats-socket", c->stats_socket, c->stats_mode,
                           PRIVS_SOCK_ADMIN);
    }
    privs_check_client_socket(&r, &c->privs, "haproxy-socket", c->haproxy_socket);
    if (c->spoa_socket[0])
        privs_check_client_socket(&r, &c->privs, "spoa-socket", c->spoa_socket);
    return privs_report_end(&r);
}

int main(int argc, char **argv)
{
    struct daemon d = {.conf_path = AGENT_DEFAULT_CONF, .metrics_fd = -1};
    const char *pidfile = NULL;
    bool check = false;
    char err[512];
    struct agent_conf *conf;
    ev_signal sterm, sint, shup;
    int opt, rc = 0;

    while ((opt = getopt(argc, argv, "f:cvdp:h")) != -1) {
        switch (opt) {
        case 'f':
            d.conf_path = optarg;
            break;
        case 'c':
            check = true;
            break;
        case 'v':
            printf("cedra-agent %s\n", PACKAGE_VERSION);
            return 0;
        case 'd':
            d.debug = true;
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
    conf = load(&d, err, sizeof(err));
    if (!conf) {
        fprintf(stderr, "cedra-agent: %s\n", err);
        return 1;
    }
    if (check) {
        rc = check_permissions(conf);
        free(conf);
        return rc;
    }
    if (privs_refuse_root(&conf->privs, d.conf_path, err, sizeof(err)) < 0) {
        fprintf(stderr, "cedra-agent: %s\n", err);
        free(conf);
        return 1;
    }
    net_keep_std_fds();
    log_init("cedra-agent", conf->log_syslog);
    log_set_level(conf->log_level);
    signal(SIGPIPE, SIG_IGN);
    if (pidfile) {
        FILE *pf = fopen(pidfile, "w");

        if (!pf || fprintf(pf, "%ld\n", (long)getpid()) < 0 || fclose(pf) != 0) {
            log_error("pidfile_failed", "file=%s error=\"%s\"", pidfile, strerror(errno));
            free(conf);
            return 1;
        }
    }

    d.loop = ev_default_loop(EVFLAG_AUTO);
    ev_signal_init(&sterm, on_stop, SIGTERM);
    ev_signal_init(&sint, on_stop, SIGINT);
    ev_signal_init(&shup, on_hup, SIGHUP);
    sterm.data = sint.data = shup.data = &d;
    ev_signal_start(d.loop, &sterm);
    ev_signal_start(d.loop, &sint);
    ev_signal_start(d.loop, &shup);

    /* agent_start only prepares (no connection before ev_run); it reads
     * CONSUL_HTTP_TOKEN_FILE, which may be readable by root only. The
     * privileges go once every socket is bound: nothing after that needs the
     * start-up credentials, and no thread or outgoing connection exists yet. */
    d.agent = agent_start(d.loop, conf, d.conf_path, err, sizeof(err)); /* owns conf */
    if (!d.agent) {
        log_error("start_failed", "reason=\"%s\"", err);
        rc = 1;
    } else if (open_privileged(&d, d.agent->conf) < 0) {
        rc = 1;
    } else if (privs_drop_logged(&d.agent->conf->privs, &d.dropped) < 0) {
        rc = 1;
    } else if (start_operator(&d, d.agent->conf) < 0) {
        rc = 1;
    } else if (agent_register_self(d.agent, err, sizeof(err)) < 0) {
        log_error("register_failed", "reason=\"%s\"", err);
        rc = 1;
    } else {
        const struct agent_conf *c = d.agent->conf;

        log_notice("started",
                   "version=%s pid=%ld consul=%s service=%s haproxy=%s spoa=%s stats_socket=%s "
                   "metrics=%s",
                   PACKAGE_VERSION, (long)getpid(), consul_address(d.agent->consul), c->svc[0].name,
                   c->haproxy_socket, c->spoa_socket[0] ? c->spoa_socket : "none",
                   c->stats_socket[0] ? c->stats_socket : "none",
                   c->has_metrics ? c->metrics.text : "none");
        ev_run(d.loop, 0);
    }
    /* /metrics reads the registry from its own thread: stop it first. */
    httpd_stop(d.httpd);
    opsock_free(d.opsock);
    agent_free(d.agent);
    if (d.metrics_fd >= 0)
        close(d.metrics_fd);
    if (pidfile)
        unlink(pidfile);
    log_notice("stopped", "rc=%d", rc);
    ev_loop_destroy(d.loop);
    return rc;
}
