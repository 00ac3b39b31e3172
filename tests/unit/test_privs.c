/* lib/privs: user/group resolution, the root refusal, "-c" socket checks, and
 * a real drop in a forked child when the tests run as root (as in CI). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "privs.h"

static void test_user_and_group(void **state)
{
    struct privs p;
    char err[256];

    memset(&p, 0, sizeof(p));
    assert_int_equal(privs_set_user(&p, "root", err, sizeof(err)), 0);
    assert_true(p.has_user && p.user_known);
    assert_int_equal(p.uid, 0);
    assert_int_equal(p.user_gid, 0);
    assert_string_equal(p.user, "root");
    assert_int_equal(privs_finish(&p, err, sizeof(err)), 0);

    /* A number with a passwd entry takes its name and primary group. */
    memset(&p, 0, sizeof(p));
    assert_int_equal(privs_set_user(&p, "0", err, sizeof(err)), 0);
    assert_true(p.user_known);
    assert_string_equal(p.user, "root");

    /* Without one it needs a group. */
    memset(&p, 0, sizeof(p));
    assert_int_equal(privs_set_user(&p, "54321", err, sizeof(err)), 0);
    assert_false(p.user_known);
    assert_int_equal(p.uid, 54321);
    assert_int_equal(privs_finish(&p, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "group"));
    assert_int_equal(privs_set_group(&p, "54321", err, sizeof(err)), 0);
    assert_int_equal(privs_finish(&p, err, sizeof(err)), 0);
    assert_int_equal(privs_run_uid(&p), 54321);
    assert_int_equal(privs_run_gid(&p), 54321);

    memset(&p, 0, sizeof(p));
    assert_int_equal(privs_set_user(&p, "no-such-user-x", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "unknown user 'no-such-user-x'"));
    assert_int_equal(privs_set_user(&p, "", err, sizeof(err)), -1);
    assert_int_equal(privs_set_user(&p, "-1", err, sizeof(err)), -1);
    assert_int_equal(privs_set_group(&p, "no-such-group-x", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "unknown group"));
    assert_int_equal(privs_set_group(&p, "root", err, sizeof(err)), 0);
    assert_int_equal(p.gid, 0);

    /* Nothing configured: the current credentials. */
    memset(&p, 0, sizeof(p));
    assert_int_equal(privs_run_uid(&p), geteuid());
    assert_int_equal(privs_run_gid(&p), getegid());
}

static void test_equal(void **state)
{
    struct privs a, b;
    char err[256];

    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    assert_true(privs_equal(&a, &b));
    b.allow_root = true;
    assert_false(privs_equal(&a, &b));
    b.allow_root = false;
    assert_int_equal(privs_set_user(&b, "0", err, sizeof(err)), 0);
    assert_false(privs_equal(&a, &b));
    assert_int_equal(privs_set_user(&a, "root", err, sizeof(err)), 0);
    assert_true(privs_equal(&a, &b));
    assert_int_equal(privs_set_group(&a, "0", err, sizeof(err)), 0);
    assert_false(privs_equal(&a, &b));
}

static void test_refuse_root(void **state)
{
    struct privs p;
    char err[256] = "";

    memset(&p, 0, sizeof(p));
    if (geteuid() != 0) {
        assert_int_equal(privs_refuse_root(&p, "x.conf", err, sizeof(err)), 0);
        return;
    }
    assert_int_equal(privs_refuse_root(&p, "x.conf", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "refusing to run as root"));
    assert_non_null(strstr(err, "x.conf"));
    assert_non_null(strstr(err, "allow-root"));
    assert_int_equal(privs_set_user(&p, "root", err, sizeof(err)), 0);
    assert_int_equal(privs_refuse_root(&p, "x.conf", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "'user root' is root"));
    p.allow_root = true;
    assert_int_equal(privs_refuse_root(&p, "x.conf", err, sizeof(err)), 0);
    memset(&p, 0, sizeof(p));
    p.allow_root = true;
    assert_int_equal(privs_refuse_root(&p, "x.conf", err, sizeof(err)), 0);
    memset(&p, 0, sizeof(p));
    assert_int_equal(privs_set_user(&p, "54321", err, sizeof(err)), 0);
    assert_int_equal(privs_refuse_root(&p, "x.conf", err, sizeof(err)), 0);
}

/* Runs the checks on one socket; returns errors * 100 + warnings. */
static unsigned check(const struct privs *p, const char *path, unsigned mode,
                      enum privs_sock_kind kind)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    struct privs_report r = {.out = out, .prog = "test"};

    assert_non_null(out);
    privs_check_socket(&r, p, "stats-socket", path, mode, kind);
    fclose(out);
    /* Every finding is one line, said once. */
    {
        unsigned lines = 0;

        for (const char *c = buf; *c; c++)
            lines += *c == '\n';
        assert_int_equal(lines, r.errors + r.warnings);
    }
    free(buf);
    return r.errors * 100 + r.warnings;
}

static void test_socket_checks(void **state)
{
    char dir[] = "/tmp/test-privs-XXXXXX", path[64], file[64];
    struct privs p;

    memset(&p, 0, sizeof(p));
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/a.sock", dir);
    assert_int_equal(chmod(dir, 0755), 0);
    assert_int_equal(check(&p, path, 0600, PRIVS_SOCK_ADMIN), 0);
    assert_int_equal(check(&p, path, 0660, PRIVS_SOCK_ADMIN), 1);   /* group may command */
    assert_int_equal(check(&p, path, 0604, PRIVS_SOCK_ADMIN), 1);   /* others: pointless */
    assert_int_equal(check(&p, path, 0602, PRIVS_SOCK_ADMIN), 100); /* anyone commands */
    assert_int_equal(check(&p, path, 0666, PRIVS_SOCK_ADMIN), 101);
    assert_int_equal(check(&p, path, 0660, PRIVS_SOCK_DATA), 0);
    assert_int_equal(check(&p, path, 0666, PRIVS_SOCK_DATA), 1);
    /* Anyone may replace what lives in a world-writable directory... */
    assert_int_equal(chmod(dir, 0777), 0);
    assert_int_equal(check(&p, path, 0600, PRIVS_SOCK_ADMIN), 100);
    assert_int_equal(check(&p, path, 0600, PRIVS_SOCK_DATA), 100);
    /* ...unless it is sticky, as /tmp. */
    assert_int_equal(chmod(dir, 01777), 0);
    assert_int_equal(check(&p, path, 0600, PRIVS_SOCK_ADMIN), 0);
    assert_int_equal(chmod(dir, 0755), 0);

    /* Something that is not a socket is in the way. */
    snprintf(file, sizeof(file), "%s/file", dir);
    fclose(fopen(file, "w"));
    assert_int_equal(check(&p, file, 0600, PRIVS_SOCK_ADMIN), 100);
    unlink(file);

    /* A socket there already, ours: fine; another user's: not ours to serve. */
    {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);

        snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
        assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
        close(fd);
    }
    assert_int_equal(check(&p, path, 0600, PRIVS_SOCK_ADMIN), 0);
    if (geteuid() == 0) {
        assert_int_equal(lchown(path, 54321, 54321), 0);
        assert_int_equal(check(&p, path, 0600, PRIVS_SOCK_ADMIN), 100);
        assert_int_equal(check(&p, path, 0660, PRIVS_SOCK_DATA), 1);
        /* The same file is right for a daemon that runs as that user. */
        p.has_user = true;
        p.uid = 54321;
        p.has_group = true;
        p.gid = 54321;
        assert_int_equal(check(&p, path, 0600, PRIVS_SOCK_ADMIN), 0);
    }
    unlink(path);
    rmdir(dir);
}

static void test_conf_checks(void **state)
{
    struct privs p;
    char err[256];
    FILE *null = fopen("/dev/null", "w");
    struct privs_report r = {.out = null, .prog = "test"};

    memset(&p, 0, sizeof(p));
    assert_int_equal(privs_set_user(&p, "root", err, sizeof(err)), 0);
    privs_check_conf(&r, &p);
    assert_int_equal(r.errors, 1);
    p.allow_root = true;
    privs_check_conf(&r, &p);
    assert_int_equal(r.errors, 1);
    assert_int_equal(r.warnings, 1);
    memset(&p, 0, sizeof(p));
    r.errors = r.warnings = 0;
    privs_check_conf(&r, &p);
    assert_int_equal(r.errors, 0);
    assert_int_equal(r.warnings, geteuid() == 0 ? 1 : 0);
    fclose(null);
}

/* The real thing, in a child: root -> nobody, and no way back. */
static void test_drop_in_child(void **state)
{
    struct passwd *pw = getpwnam("nobody");
    pid_t pid;
    int st;

    if (geteuid() != 0 || !pw)
        skip();
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct privs p;
        char err[256];
        bool dropped;
        uid_t ru, eu, su;
        gid_t groups[8];

        memset(&p, 0, sizeof(p));
        if (privs_set_user(&p, "nobody", err, sizeof(err)) < 0 ||
            privs_drop(&p, &dropped, err, sizeof(err)) < 0 || !dropped)
            _exit(10);
        if (getresuid(&ru, &eu, &su) < 0 || ru != pw->pw_uid || eu != pw->pw_uid ||
            su != pw->pw_uid || getgid() != pw->pw_gid || getegid() != pw->pw_gid)
            _exit(11);
        if (setuid(0) == 0 || seteuid(0) == 0 || setgid(0) == 0)
            _exit(12);
        for (int i = 0, n = getgroups(8, groups); i < n; i++)
            if (groups[i] == 0)
                _exit(13);
        /* Dropping again as the same user is a verified no-op. */
        if (privs_drop(&p, &dropped, err, sizeof(err)) < 0 || dropped)
            _exit(14);
        /* Another user is out of reach now, and says why. */
        memset(&p, 0, sizeof(p));
        if (privs_set_user(&p, "root", err, sizeof(err)) < 0 ||
            privs_drop(&p, &dropped, err, sizeof(err)) == 0 || !strstr(err, "not started as root"))
            _exit(15);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

static void test_nothing_to_drop(void **state)
{
    struct privs p;
    char err[256];
    bool dropped = true;

    memset(&p, 0, sizeof(p));
    assert_int_equal(privs_drop(&p, &dropped, err, sizeof(err)), 0);
    assert_false(dropped);
    assert_int_equal(privs_chown(&p, "/nonexistent/x", err, sizeof(err)), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_user_and_group),  cmocka_unit_test(test_equal),
        cmocka_unit_test(test_refuse_root),     cmocka_unit_test(test_socket_checks),
        cmocka_unit_test(test_conf_checks),     cmocka_unit_test(test_drop_in_child),
        cmocka_unit_test(test_nothing_to_drop),
    };

    return cmocka_run_group_tests_name("privs", tests, NULL, NULL);
}
