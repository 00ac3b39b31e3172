/* Who a daemon runs as: the "user", "group" and "allow-root" configuration
 * keywords of both daemons, the refusal to run as root by accident, the
 * privilege drop after every socket is bound, and the socket permission
 * checks of "-c".
 *
 * Start-up order (both daemons):
 *   privs_refuse_root()          before anything is opened
 *   bind listeners, create sockets, privs_chown() the UNIX ones, pid file
 *   privs_drop()                 before any thread starts or any connection
 *                                goes out
 * There is no chroot: the daemons re-read route tables and their
 * configuration by path on reload, and libcurl/NSS need /etc. */
#ifndef CEDRA_PRIVS_H
#define CEDRA_PRIVS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>

#define PRIVS_NAME_MAX 64

/* A value type, embedded in both daemons' configurations. Zeroed = nothing
 * configured. */
struct privs {
    bool has_user;
    bool has_group;
    bool user_known; /* the user has a passwd entry: initgroups() applies */
    bool allow_root; /* "allow-root": started as root without "user" is fine */
    uid_t uid;
    gid_t user_gid; /* the user's primary group (user_known) */
    gid_t gid;      /* "group" */
    char user[PRIVS_NAME_MAX];
    char group[PRIVS_NAME_MAX];
};

/* "user <name|uid>" / "group <name|gid>". A name is looked up now, as
 * HAProxy does, so that "-c" catches a typo; a number needs no entry. 0, or
 * -1 with a reason. */
int privs_set_user(struct privs *p, const char *arg, char *err, size_t errlen);
int privs_set_group(struct privs *p, const char *arg, char *err, size_t errlen);
struct cfg_line;
/* The keywords both daemons' files share: "user", "group", "allow-root".
 * 1 when the line was one of them (applied), 0 when it is another keyword,
 * -1 with a reason. */
int privs_conf_line(struct privs *p, const struct cfg_line *l, char *err, size_t errlen);
/* After the whole file: a numeric user without a passwd entry needs "group".
 * 0, or -1 with a reason. */
int privs_finish(const struct privs *p, char *err, size_t errlen);

/* Same user, group and allow-root (what a reload cannot change). */
bool privs_equal(const struct privs *a, const struct privs *b);

/* The uid/gid the daemon serves as once started: the configured ones, else
 * the current ones. */
uid_t privs_run_uid(const struct privs *p);
gid_t privs_run_gid(const struct privs *p);

/* -1 with a one-line reason when the process is root (real or effective)
 * and would stay root: no "user" (or "user root") and no "allow-root". */
int privs_refuse_root(const struct privs *p, const char *conf_path, char *err, size_t errlen);

/* Gives path to the configured user and group when there is something to
 * drop (root with "user"/"group"), so that the dropped process still owns
 * the socket it serves and can replace or remove it. 0, or -1 with a reason. */
int privs_chown(const struct privs *p, const char *path, char *err, size_t errlen);

/* Drops to the configured user and group: supplementary groups, then gid,
 * then uid (real, effective and saved), then verifies that none of them can
 * be taken back. Applies to every thread of the process (glibc's setxid),
 * but call it before starting any. Not root: only verifies that the process
 * already is who the configuration says. *dropped tells whether anything
 * changed. 0, or -1 with a reason: the caller must exit. */
int privs_drop(const struct privs *p, bool *dropped, char *err, size_t errlen);
/* privs_drop() as both daemons call it at start-up: the failure
 * ("privileges_failed") or the drop ("privileges_dropped") is logged. 0, or
 * -1: the caller must exit. */
int privs_drop_logged(const struct privs *p, bool *dropped);

/* ---- "-c": socket permission checks ------------------------------------ */

enum privs_sock_kind {
    PRIVS_SOCK_ADMIN, /* operator sockets: whoever connects runs commands */
    PRIVS_SOCK_DATA,  /* SPOP and delivery sockets HAProxy connects to */
};

struct privs_report {
    FILE *out;
    const char *prog; /* "cedra-spoa" */
    unsigned errors, warnings;
};

/* Configuration-level findings: "user root", root with no "user". */
void privs_check_conf(struct privs_report *r, const struct privs *p);
/* One UNIX socket the daemon will create with mode, as the daemon's user:
 * group/other access, its directory writable by anyone without the sticky
 * bit, an existing file that is not a socket or belongs to another user. */
void privs_check_socket(struct privs_report *r, const struct privs *p, const char *what,
                        const char *path, unsigned mode, enum privs_sock_kind kind);

/* A socket the daemon connects to (HAProxy's or cedra-spoa's operator
 * socket): when it exists, whether the user the daemon runs as may connect. */
void privs_check_client_socket(struct privs_report *r, const struct privs *p, const char *what,
                               const char *path);

/* The verdict of "-c" once every check has run: the counts on r->out and 1
 * when anything is wrong, else "Configuration file is valid" on stdout and
 * 0; the daemon's exit code. */
int privs_report_end(const struct privs_report *r);

#endif
