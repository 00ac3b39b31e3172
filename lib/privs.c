#include "privs.h"

#include "cfgfile.h"

#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* getpwnam_r buffers: glibc's sysconf hint is 1 KiB; entries with long
 * gecos or many group members need more, and 16 KiB covers real systems. */
#define NSS_BUF 16384

int privs_set_user(struct privs *p, const char *arg, char *err, size_t errlen)
{
    char buf[NSS_BUF];
    struct passwd pw, *res = NULL;
    uint64_t v;

    if (!*arg || strlen(arg) >= sizeof(p->user)) {
        snprintf(err, errlen, "user: empty or too long name");
        return -1;
    }
    if (getpwnam_r(arg, &pw, buf, sizeof(buf), &res) != 0 || !res) {
        res = NULL;
        if (parse_uint(arg, 0, (uid_t)-2, &v) < 0) {
            snprintf(err, errlen, "unknown user '%s'", arg);
            return -1;
        }
        /* A number may still have an entry, which gives its groups. */
        if (getpwuid_r((uid_t)v, &pw, buf, sizeof(buf), &res) != 0)
            res = NULL;
        p->uid = (uid_t)v;
    }
    p->has_user = true;
    p->user_known = res != NULL;
    if (res) {
        p->uid = res->pw_uid;
        p->user_gid = res->pw_gid;
        str_copy(p->user, res->pw_name, sizeof(p->user));
    } else {
        p->user_gid = 0;
        str_copy(p->user, arg, sizeof(p->user));
    }
    return 0;
}

int privs_set_group(struct privs *p, const char *arg, char *err, size_t errlen)
{
    char buf[NSS_BUF];
    struct group gr, *res = NULL;
    uint64_t v;

    if (!*arg || strlen(arg) >= sizeof(p->group)) {
        snprintf(err, errlen, "group: empty or too long name");
        return -1;
    }
    if (getgrnam_r(arg, &gr, buf, sizeof(buf), &res) == 0 && res) {
        p->gid = res->gr_gid;
    } else if (parse_uint(arg, 0, (gid_t)-2, &v) == 0) {
        p->gid = (gid_t)v;
    } else {
        snprintf(err, errlen, "unknown group '%s'", arg);
        return -1;
    }
    p->has_group = true;
    str_copy(p->group, arg, sizeof(p->group));
    return 0;
}

int privs_conf_line(struct privs *p, const struct cfg_line *l, char *err, size_t errlen)
{
    const char *kw = l->argv[0];

    if (!strcmp(kw, "user") || !strcmp(kw, "group")) {
        if (cfg_want_args(l, 1, err, errlen) < 0)
            return -1;
        if (!strcmp(kw, "user"))
            return privs_set_user(p, l->argv[1], err, errlen) < 0 ? -1 : 1;
        return privs_set_group(p, l->argv[1], err, errlen) < 0 ? -1 : 1;
    }
    if (!strcmp(kw, "allow-root")) {
        if (cfg_want_args(l, 0, err, errlen) < 0)
            return -1;
        p->allow_root = true;
        return 1;
    }
    return 0;
}

int privs_finish(const struct privs *p, char *err, size_t errlen)
{
    if (p->has_user && !p->user_known && !p->has_group) {
        snprintf(err, errlen, "user %s has no passwd entry: say which group with 'group <gid>'",
                 p->user);
        return -1;
    }
    return 0;
}

bool privs_equal(const struct privs *a, const struct privs *b)
{
    return a->has_user == b->has_user && a->has_group == b->has_group &&
           a->allow_root == b->allow_root && (!a->has_user || a->uid == b->uid) &&
           (!a->has_group || a->gid == b->gid) &&
           (!a->has_user || a->has_group || a->user_gid == b->user_gid);
}

static bool is_root(void)
{
    return getuid() == 0 || geteuid() == 0;
}

uid_t privs_run_uid(const struct privs *p)
{
    return p->has_user ? p->uid : geteuid();
}

gid_t privs_run_gid(const struct privs *p)
{
    if (p->has_group)
        return p->gid;
    return p->has_user && p->user_known ? p->user_gid : getegid();
}

int privs_refuse_root(const struct privs *p, const char *conf_path, char *err, size_t errlen)
{
    if (!is_root() || p->allow_root)
        return 0;
    if (p->has_user && p->uid != 0)
        return 0;
    if (p->has_user)
        snprintf(err, errlen,
                 "'user %s' is root: name an unprivileged user in %s, or add 'allow-root' "
                 "to run as root on purpose",
                 p->user, conf_path);
    else
        snprintf(err, errlen,
                 "refusing to run as root: set 'user <name>' (and 'group <name>') in %s to "
                 "drop privileges after binding, or add 'allow-root' to run as root on purpose",
                 conf_path);
    return -1;
}

int privs_chown(const struct privs *p, const char *path, char *err, size_t errlen)
{
    uid_t uid = p->has_user ? p->uid : (uid_t)-1;
    gid_t gid = p->has_group || (p->has_user && p->user_known) ? privs_run_gid(p) : (gid_t)-1;

    if (geteuid() != 0 || (uid == (uid_t)-1 && gid == (gid_t)-1))
        return 0;
    /* lchown: the path was just bound by us; never follow a link there. */
    if (lchown(path, uid, gid) < 0) {
        snprintf(err, errlen, "chown(%s): %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int privs_drop(const struct privs *p, bool *dropped, char *err, size_t errlen)
{
    /* -1 ("unknown") in the error message when getresuid/getresgid fail. */
    uid_t ru = (uid_t)-1, eu = (uid_t)-1, su = (uid_t)-1;
    gid_t rg = (gid_t)-1, eg = (gid_t)-1, sg = (gid_t)-1, g = privs_run_gid(p);

    *dropped = false;
    if (!p->has_user && !p->has_group)
        return 0;
    if (geteuid() != 0) {
        /* Started by the configured user already (systemd User=, a
         * container's USER): nothing to drop, but nothing else will do. */
        if (p->has_user && (getuid() != p->uid || geteuid() != p->uid)) {
            snprintf(err, errlen, "not started as root: cannot become user %s (uid %u) from uid %u",
                     p->user, (unsigned)p->uid, (unsigned)geteuid());
            return -1;
        }
        if (p->has_group && getegid() != p->gid) {
            snprintf(err, errlen,
                     "not started as root: cannot become group %s (gid %u) from gid %u", p->group,
                     (unsigned)p->gid, (unsigned)getegid());
            return -1;
        }
        return 0;
    }
    /* Groups first: once the uid is gone, so is the right to change them. */
    if (p->has_user && p->user_known) {
        if (initgroups(p->user, g) < 0) {
            snprintf(err, errlen, "initgroups(%s, %u): %s", p->user, (unsigned)g, strerror(errno));
            return -1;
        }
    } else if (setgroups(1, &g) < 0) {
        snprintf(err, errlen, "setgroups(%u): %s", (unsigned)g, strerror(errno));
        return -1;
    }
    if (setresgid(g, g, g) < 0) {
        snprintf(err, errlen, "setresgid(%u): %s", (unsigned)g, strerror(errno));
        return -1;
    }
    if (p->has_user && setresuid(p->uid, p->uid, p->uid) < 0) {
        snprintf(err, errlen, "setresuid(%u): %s", (unsigned)p->uid, strerror(errno));
        return -1;
    }
    if (getresuid(&ru, &eu, &su) < 0 || getresgid(&rg, &eg, &sg) < 0 ||
        (p->has_user && (ru != p->uid || eu != p->uid || su != p->uid)) || rg != g || eg != g ||
        sg != g) {
        snprintf(err, errlen, "credentials did not change as asked (uid %u/%u/%u gid %u/%u/%u)",
                 (unsigned)ru, (unsigned)eu, (unsigned)su, (unsigned)rg, (unsigned)eg,
                 (unsigned)sg);
        return -1;
    }
    /* A process that could take root back has dropped nothing. */
    if (p->has_user && p->uid != 0 && (setuid(0) == 0 || seteuid(0) == 0)) {
        snprintf(err, errlen, "could regain root after dropping to uid %u", (unsigned)p->uid);
        return -1;
    }
    if (p->has_user && p->uid != 0 && g != 0 && setegid(0) == 0) {
        snprintf(err, errlen, "could regain gid 0 after dropping to gid %u", (unsigned)g);
        return -1;
    }
    *dropped = true;
    return 0;
}

int privs_drop_logged(const struct privs *p, bool *dropped)
{
    char err[256];

    if (privs_drop(p, dropped, err, sizeof(err)) < 0) {
        log_error("privileges_failed", "reason=\"%s\"", err);
        return -1;
    }
    if (*dropped)
        log_notice("privileges_dropped", "user=%s uid=%u gid=%u", p->has_user ? p->user : "-",
                   (unsigned)getuid(), (unsigned)getgid());
    return 0;
}

/* ---- "-c" ------------------------------------------------------------------ */

__attribute__((format(printf, 3, 4))) static void report(struct privs_report *r, bool error,
                                                         const char *fmt, ...)
{
    va_list ap;

    if (error)
        r->errors++;
    else
        r->warnings++;
    fprintf(r->out, "%s: [%s] ", r->prog, error ? "ALERT" : "WARNING");
    va_start(ap, fmt);
    vfprintf(r->out, fmt, ap);
    va_end(ap);
    fputc('\n', r->out);
}

void privs_check_conf(struct privs_report *r, const struct privs *p)
{
    if (p->has_user && p->uid == 0) {
        if (p->allow_root)
            report(r, false, "'user %s' with 'allow-root': runs as root", p->user);
        else
            report(r, true,
                   "'user %s' is root: nothing would be dropped (name an unprivileged user, or "
                   "add 'allow-root' to run as root on purpose)",
                   p->user);
    } else if (!p->has_user && !p->allow_root && is_root()) {
        report(r, false,
               "no 'user': started as root, %s refuses to start (set 'user', or 'allow-root'); "
               "fine if it starts as an unprivileged user",
               r->prog);
    }
}

static void check_dir(struct privs_report *r, const char *what, const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    struct stat st;

    if (!slash)
        str_copy(dir, ".", sizeof(dir));
    else if (slash == path)
        str_copy(dir, "/", sizeof(dir));
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    if (stat(dir, &st) == 0 && (st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX))
        report(r, true,
               "%s %s: directory %s is writable by anyone without the sticky bit: any local "
               "user can replace the socket",
               what, path, dir);
}

void privs_check_socket(struct privs_report *r, const struct privs *p, const char *what,
                        const char *path, unsigned mode, enum privs_sock_kind kind)
{
    uid_t uid = privs_run_uid(p);
    struct stat st;

    /* Connecting to a UNIX socket takes write permission on it. */
    if (kind == PRIVS_SOCK_ADMIN) {
        if (mode & S_IWOTH)
            report(r, true,
                   "%s %s: mode %04o lets any local user connect and run commands (use 0600, or "
                   "0660 with a group)",
                   what, path, mode);
        else if (mode & (S_IROTH | S_IXOTH))
            report(r, false, "%s %s: mode %04o grants others access; use 0600", what, path, mode);
        if (mode & S_IWGRP)
            report(r, false,
                   "%s %s: mode %04o lets every member of the socket's group run commands", what,
                   path, mode);
    } else if (mode & S_IWOTH) {
        report(r, false, "%s %s: mode %04o lets any local user connect", what, path, mode);
    }
    check_dir(r, what, path);
    if (lstat(path, &st) < 0)
        return;
    if (!S_ISSOCK(st.st_mode))
        report(r, true, "%s %s: exists and is not a socket", what, path);
    else if (st.st_uid != uid)
        report(r, kind == PRIVS_SOCK_ADMIN,
               "%s %s: exists and belongs to uid %u, not to uid %u that %s runs as (another "
               "process's socket, or a stale one: remove it)",
               what, path, (unsigned)st.st_uid, (unsigned)uid, r->prog);
}

/* Connecting takes write permission, judged as the kernel does: owner bits
 * for the owner, else group bits for a member, else other bits. */
static bool may_connect(const struct privs *p, const struct stat *st)
{
    uid_t uid = privs_run_uid(p);
    gid_t gid = privs_run_gid(p), groups[64];
    int n = 64;

    if (uid == 0)
        return true;
    if (st->st_uid == uid)
        return st->st_mode & S_IWUSR;
    if (st->st_gid == gid)
        return st->st_mode & S_IWGRP;
    if (p->has_user && p->user_known) {
        if (getgrouplist(p->user, gid, groups, &n) < 0)
            n = 0;
    } else if (!p->has_user) {
        n = getgroups(64, groups);
    } else {
        n = 0;
    }
    for (int i = 0; i < n; i++)
        if (groups[i] == st->st_gid)
            return st->st_mode & S_IWGRP;
    return st->st_mode & S_IWOTH;
}

void privs_check_client_socket(struct privs_report *r, const struct privs *p, const char *what,
                               const char *path)
{
    struct stat st;

    if (stat(path, &st) < 0 || !S_ISSOCK(st.st_mode))
        return;
    if (!may_connect(p, &st))
        report(r, false,
               "%s %s: uid %u cannot connect (owner %u, group %u, mode %04o): give the socket "
               "to that user, or to a group of it with mode 0660",
               what, path, (unsigned)privs_run_uid(p), (unsigned)st.st_uid, (unsigned)st.st_gid,
               (unsigned)(st.st_mode & 07777));
}

int privs_report_end(const struct privs_report *r)
{
    if (r->errors) {
        fprintf(r->out, "%s: configuration has %u error(s) and %u warning(s)\n", r->prog, r->errors,
                r->warnings);
        return 1;
    }
    printf("Configuration file is valid\n");
    return 0;
}
