/* Operator socket server: a real UNIX socket in a temporary directory, the
 * server's libev loop driven by bounded EVRUN_ONCE iterations (a 1 ms tick
 * keeps each one short), clients on non-blocking sockets in the same thread. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "opsock.h"
#include "util.h"

#define MAX_ITER 20000 /* 20 s at the 1 ms tick: only a hang gets near it */

struct fixture {
    char dir[64];
    char path[128];
    struct ev_loop *loop;
    ev_timer tick;
    struct opsock *srv;
};

struct cli {
    int fd;
    char *in;
    size_t in_len, in_cap;
    bool eof;
    const char *out;
    size_t out_len, out_off;
};

/* ---- commands used by the tests ----------------------------------------------- */

static int cmd_show_info(struct opsock_out *out, int argc, char **argv, void *ud)
{
    opsock_printf(out, "name: %s\npid: 42\n", (const char *)ud);
    return 0;
}

static int cmd_echo(struct opsock_out *out, int argc, char **argv, void *ud)
{
    for (int i = 1; i < argc; i++)
        opsock_printf(out, "%s%s", i > 1 ? " " : "", argv[i]);
    return 0; /* no final newline: the server adds it */
}

static int cmd_set_weight(struct opsock_out *out, int argc, char **argv, void *ud)
{
    uint64_t w;

    opsock_printf(out, "checking\n"); /* dropped on error */
    if (argc != 3)
        return opsock_error(out, "usage: set weight <0-100>");
    if (parse_uint(argv[2], 0, 100, &w) < 0)
        return opsock_error(out, "weight must be 0-100, not '%s'", argv[2]);
    opsock_printf(out, "weight set to %u\n", (unsigned)w);
    return 0;
}

static int cmd_fail(struct opsock_out *out, int argc, char **argv, void *ud)
{
    return -1;
}

static int cmd_blank_lines(struct opsock_out *out, int argc, char **argv, void *ud)
{
    opsock_write(out, "\na\n\n\nb\n", 7);
    return 0;
}

/* 64 lines of 1 KiB. */
static int cmd_big(struct opsock_out *out, int argc, char **argv, void *ud)
{
    char line[1025];

    memset(line, 'x', 1023);
    line[1023] = '\n';
    line[1024] = '\0';
    for (int i = 0; i < 64; i++)
        opsock_write(out, line, 1024);
    return 0;
}

static const struct opsock_cmd test_cmds[] = {
    {"show info", "show process information", cmd_show_info},
    {"echo", "<words...>: print the words", cmd_echo},
    {"set weight", "<0-100>: set a weight", cmd_set_weight},
    {"fail", "fail without a message", cmd_fail},
    {"blank", "write empty lines", cmd_blank_lines},
    {"big", "64 KiB of output", cmd_big},
    {NULL, NULL, NULL},
};

/* ---- harness -------------------------------------------------------------------- */

static void on_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
}

static struct opsock *start_server(struct fixture *f, struct opsock_config *cfg)
{
    char err[256] = "";
    struct opsock *s;

    cfg->path = f->path;
    s = opsock_new(f->loop, cfg, err, sizeof(err));
    if (!s)
        fail_msg("opsock_new: %s", err);
    assert_int_equal(opsock_register(s, test_cmds, "cedra-test", err, sizeof(err)), 0);
    return s;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct opsock_config cfg = {0};

    snprintf(f->dir, sizeof(f->dir), "/tmp/opsock-test-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/op.sock", f->dir);
    f->loop = ev_loop_new(EVFLAG_AUTO);
    ev_timer_init(&f->tick, on_tick, 0.001, 0.001);
    ev_timer_start(f->loop, &f->tick);
    f->srv = start_server(f, &cfg);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    opsock_free(f->srv);
    ev_timer_stop(f->loop, &f->tick);
    ev_loop_destroy(f->loop);
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static void restart_server(struct fixture *f, struct opsock_config *cfg)
{
    opsock_free(f->srv);
    f->srv = start_server(f, cfg);
}

static struct cli *cli_open(struct fixture *f)
{
    struct cli *c = calloc(1, sizeof(*c));
    struct sockaddr_un sun = {.sun_family = AF_UNIX};

    str_copy(sun.sun_path, f->path, sizeof(sun.sun_path));
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    c->in_cap = 1 << 16;
    c->in = malloc(c->in_cap + 1);
    c->in[0] = '\0';
    return c;
}

static void cli_close(struct cli *c)
{
    close(c->fd);
    free(c->in);
    free(c);
}

/* Queues bytes to send; the pump sends them as the socket allows. */
static void cli_send(struct cli *c, const char *data, size_t len)
{
    c->out = data;
    c->out_len = len;
    c->out_off = 0;
}

static void cli_send_str(struct cli *c, const char *s)
{
    cli_send(c, s, strlen(s));
}

static void cli_io(struct cli *c, bool reading)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);

        if (n <= 0)
            break;
        c->out_off += (size_t)n;
    }
    while (reading && !c->eof) {
        ssize_t n;

        if (c->in_len == c->in_cap) {
            char *nb = realloc(c->in, c->in_cap * 2 + 1);

            assert_non_null(nb);
            c->in = nb;
            c->in_cap *= 2;
        }
        n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
            c->in[c->in_len] = '\0';
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            c->eof = true;
        } else {
            break;
        }
    }
}

static bool cli_done_eof(struct cli *c, const void *arg)
{
    return c->eof;
}

static bool cli_done_suffix(struct cli *c, const void *arg)
{
    size_t n = strlen(arg);

    return c->in_len >= n && memcmp(c->in + c->in_len - n, arg, n) == 0;
}

/* Runs the loop until done(c) or MAX_ITER iterations. */
static bool pump(struct fixture *f, struct cli *c, bool (*done)(struct cli *, const void *),
                 const void *arg)
{
    for (int i = 0; i < MAX_ITER; i++) {
        ev_run(f->loop, EVRUN_ONCE);
        cli_io(c, true);
        if (done(c, arg))
            return true;
    }
    return false;
}

static void pump_n(struct fixture *f, int n)
{
    for (int i = 0; i < n; i++)
        ev_run(f->loop, EVRUN_ONCE);
}

/* One non-interactive exchange: sends req, returns everything until EOF. */
static char *exchange(struct fixture *f, const char *req, size_t len)
{
    struct cli *c = cli_open(f);
    char *res;

    cli_send(c, req, len);
    assert_true(pump(f, c, cli_done_eof, NULL));
    res = strdup(c->in);
    cli_close(c);
    return res;
}

static void assert_exchange(struct fixture *f, const char *req, const char *want)
{
    char *got = exchange(f, req, strlen(req));

    assert_string_equal(got, want);
    free(got);
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_single_command(void **state)
{
    struct fixture *f = *state;

    assert_exchange(f, "show info\n", "name: cedra-test\npid: 42\n\n");
    pump_n(f, 3);
    assert_int_equal(opsock_nclients(f->srv), 0);
    /* CRLF from telnet-like clients, and a last line cut by EOF. */
    assert_exchange(f, "show info\r\n", "name: cedra-test\npid: 42\n\n");
    {
        struct cli *c = cli_open(f);

        cli_send_str(c, "echo no newline");
        cli_io(c, false);
        shutdown(c->fd, SHUT_WR);
        assert_true(pump(f, c, cli_done_eof, NULL));
        assert_string_equal(c->in, "no newline\n\n");
        cli_close(c);
    }
    /* Only the first line is answered without "prompt". */
    assert_exchange(f, "echo one\necho two\n", "one\n\n");
}

static void test_command_list(void **state)
{
    struct fixture *f = *state;

    assert_exchange(f, "show info;echo a  b;echo c\n", "name: cedra-test\npid: 42\n\na b\n\nc\n\n");
    /* Blank commands get no answer. */
    assert_exchange(f, ";; echo x ;;\n", "x\n\n");
}

static void test_escaped_semicolon(void **state)
{
    struct fixture *f = *state;

    assert_exchange(f, "echo a\\;b;echo c\\\n", "a;b\n\nc\\\n\n");
    assert_exchange(f, "echo \\;\\;;echo end\n", ";;\n\nend\n\n");
}

static void test_help_lists_all(void **state)
{
    struct fixture *f = *state;
    char *got = exchange(f, "help\n", 5);
    int lines = 0;

    for (const struct opsock_cmd *c = test_cmds; c->keyword; c++) {
        char want[256];

        snprintf(want, sizeof(want), "  %s ", c->keyword);
        assert_non_null(strstr(got, want));
        assert_non_null(strstr(got, c->help));
    }
    assert_non_null(strstr(got, "  help [<prefix>] "));
    assert_non_null(strstr(got, "  prompt "));
    assert_non_null(strstr(got, "  quit "));
    for (char *p = got; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 3 + 6 + 1); /* built-ins, registered, the empty line */
    assert_int_equal(got[strlen(got) - 2], '\n');
    free(got);

    got = exchange(f, "help show\n", 10);
    assert_string_equal(got, "  show info       : show process information\n\n");
    free(got);
    assert_exchange(f, "help nope\n",
                    "error: no command starts with 'nope', type 'help' for the list of "
                    "commands\n\n");
}

static void test_unknown_command(void **state)
{
    struct fixture *f = *state;

    assert_exchange(f, "frobnicate x\n",
                    "error: unknown command 'frobnicate x', type 'help' for the list of "
                    "commands\n\n");
    /* "show" alone is not a command: no prefix of "show nothing" matches. */
    assert_exchange(f, "show nothing\n",
                    "error: unknown command 'show nothing', type 'help' for the list of "
                    "commands\n\n");
    /* The longest keyword wins, extra words go to the handler. */
    assert_exchange(f, "show info extra\n", "name: cedra-test\npid: 42\n\n");
}

static void test_bad_args(void **state)
{
    struct fixture *f = *state;

    assert_exchange(f, "set weight 30\n", "checking\nweight set to 30\n\n");
    assert_exchange(f, "set weight 200\n", "error: weight must be 0-100, not '200'\n\n");
    assert_exchange(f, "set weight\n", "error: usage: set weight <0-100>\n\n");
    assert_exchange(f, "fail\n", "error: 'fail' failed\n\n");
    assert_exchange(f, "quit now\n", "error: 'quit' takes no argument\n\n");
    /* Commands after an error still run. */
    assert_exchange(f, "set weight x;echo after\n",
                    "error: weight must be 0-100, not 'x'\n\nafter\n\n");
}

static void test_bounded_words(void **state)
{
    struct fixture *f = *state;
    char req[8192];
    size_t n = 0;

    n += (size_t)snprintf(req + n, sizeof(req) - n, "echo");
    for (int i = 0; i < OPSOCK_MAX_ARGS; i++)
        n += (size_t)snprintf(req + n, sizeof(req) - n, " w");
    snprintf(req + n, sizeof(req) - n, "\n");
    assert_exchange(f, req, "error: too many words in command (max 64)\n\n");

    memcpy(req, "echo ", 5);
    memset(req + 5, 'w', OPSOCK_MAX_WORD + 1);
    memcpy(req + 5 + OPSOCK_MAX_WORD + 1, "\n", 2);
    assert_exchange(f, req, "error: word too long (max 4096 bytes)\n\n");
}

static void test_empty_lines_collapsed(void **state)
{
    struct fixture *f = *state;

    assert_exchange(f, "blank;echo z\n", "a\nb\n\nz\n\n");
}

static void test_prompt_mode(void **state)
{
    struct fixture *f = *state;
    struct cli *c = cli_open(f);

    cli_send_str(c, "prompt\n");
    assert_true(pump(f, c, cli_done_suffix, "> "));
    assert_string_equal(c->in, "\n> ");
    cli_send_str(c, "show info\n");
    assert_true(pump(f, c, cli_done_suffix, "\n\n> "));
    cli_send_str(c, "echo x; echo y\n");
    assert_true(pump(f, c, cli_done_suffix, "y\n\n> "));
    cli_send_str(c, "\n");
    assert_true(pump(f, c, cli_done_suffix, "\n\n> > "));
    cli_send_str(c, "nope\n");
    assert_true(pump(f, c, cli_done_suffix, "commands\n\n> "));
    assert_int_equal(opsock_nclients(f->srv), 1);
    cli_send_str(c, "echo last; quit; echo never\n");
    assert_true(pump(f, c, cli_done_eof, NULL));
    assert_string_equal(c->in, "\n> "
                               "name: cedra-test\npid: 42\n\n> "
                               "x\n\ny\n\n> "
                               "> "
                               "error: unknown command 'nope', type 'help' for the list of "
                               "commands\n\n> "
                               "last\n\n");
    cli_close(c);
    pump_n(f, 3);
    assert_int_equal(opsock_nclients(f->srv), 0);

    /* Pipelined lines in interactive mode, then EOF instead of quit; a second
     * "prompt" leaves interactive mode, so the line ends the session. */
    c = cli_open(f);
    cli_send_str(c, "prompt\necho 1\necho 2\nprompt; echo 3\necho 4\n");
    assert_true(pump(f, c, cli_done_eof, NULL));
    assert_string_equal(c->in, "\n> 1\n\n> 2\n\n> \n3\n\n");
    cli_close(c);
}

static void test_long_line(void **state)
{
    struct fixture *f = *state;
    size_t max = 64 * 1024;
    char *req = malloc(max + 2);
    char *got;

    /* Exactly the limit passes: "help" padded with blanks. */
    memcpy(req, "help", 4);
    memset(req + 4, ' ', max - 4);
    req[max] = '\n';
    got = exchange(f, req, max + 1);
    assert_non_null(strstr(got, "  show info "));
    free(got);

    /* One byte more is refused and the connection closed. */
    memset(req, 'a', max + 1);
    req[max + 1] = '\n';
    got = exchange(f, req, max + 2);
    assert_string_equal(got, "error: line too long (max 65536 bytes)\n\n");
    free(got);
    free(req);
    pump_n(f, 3);
    assert_int_equal(opsock_nclients(f->srv), 0);
}

static void test_binary(void **state)
{
    struct fixture *f = *state;
    char *got;

    got = exchange(f, "show\0info\n", 10);
    assert_string_equal(got, "error: binary data on the operator socket\n\n");
    free(got);
    got = exchange(f, "echo \x01\n", 7);
    assert_string_equal(got, "error: binary data on the operator socket\n\n");
    free(got);
    /* A complete line before the bad bytes is still answered. */
    {
        struct cli *c = cli_open(f);

        cli_send(c, "prompt\necho ok\n\x7f\x00", 17);
        assert_true(pump(f, c, cli_done_eof, NULL));
        assert_string_equal(c->in, "\n> ok\n\n> error: binary data on the operator socket\n\n");
        cli_close(c);
    }
}

static void test_thousand_commands(void **state)
{
    struct fixture *f = *state;
    size_t cap = 16 * 1024, n = 0, wn = 0;
    char *req = malloc(cap), *want = malloc(cap);
    char *got;

    for (int i = 0; i < 1000; i++) {
        n += (size_t)snprintf(req + n, cap - n, "%secho %d", i ? ";" : "", i);
        wn += (size_t)snprintf(want + wn, cap - wn, "%d\n\n", i);
    }
    req[n++] = '\n';
    got = exchange(f, req, n);
    assert_string_equal(got, want);
    free(got);
    free(req);
    free(want);
}

/* A line of 8000 commands is spread over many loop iterations: another
 * client gets its answer long before the first one is done. */
static void test_long_line_yields(void **state)
{
    struct fixture *f = *state;
    size_t cap = 64 * 1024, n = 0;
    char *req = malloc(cap);
    struct cli *a = cli_open(f), *b;
    int answers = 0;

    for (int i = 0; i < 8000; i++)
        n += (size_t)snprintf(req + n, cap - n, "%secho %d", i ? ";" : "", i % 10);
    req[n++] = '\n';
    cli_send(a, req, n);
    cli_io(a, false);
    pump_n(f, 2);
    b = cli_open(f);
    cli_send_str(b, "show info\n");
    assert_true(pump(f, b, cli_done_eof, NULL));
    assert_string_equal(b->in, "name: cedra-test\npid: 42\n\n");
    cli_io(a, true);
    for (char *p = a->in; (p = strstr(p, "\n\n")); p += 2)
        answers++;
    assert_true(answers < 8000);
    assert_true(pump(f, a, cli_done_eof, NULL));
    answers = 0;
    for (char *p = a->in; (p = strstr(p, "\n\n")); p += 2)
        answers++;
    assert_int_equal(answers, 8000);
    cli_close(a);
    cli_close(b);
    free(req);
}

static void test_max_clients(void **state)
{
    struct fixture *f = *state;
    struct opsock_config cfg = {.max_clients = 2};
    struct cli *c1, *c2, *c3;

    restart_server(f, &cfg);
    c1 = cli_open(f);
    c2 = cli_open(f);
    cli_send_str(c1, "prompt\n");
    cli_send_str(c2, "prompt\n");
    assert_true(pump(f, c1, cli_done_suffix, "> "));
    assert_true(pump(f, c2, cli_done_suffix, "> "));
    assert_int_equal(opsock_nclients(f->srv), 2);
    c3 = cli_open(f);
    assert_true(pump(f, c3, cli_done_eof, NULL));
    assert_string_equal(c3->in, "error: too many clients (max 2)\n\n");
    cli_close(c3);
    /* A slot freed is a slot usable again. */
    cli_send_str(c1, "quit\n");
    assert_true(pump(f, c1, cli_done_eof, NULL));
    pump_n(f, 3);
    assert_int_equal(opsock_nclients(f->srv), 1);
    assert_exchange(f, "echo back\n", "back\n\n");
    cli_close(c1);
    cli_close(c2);
}

static void test_mode_and_owner(void **state)
{
    struct fixture *f = *state;
    struct opsock_config cfg = {0};
    struct stat st;
    mode_t old;

    assert_int_equal(lstat(f->path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0600);

    /* The configured mode, whatever the umask. */
    old = umask(0);
    restart_server(f, &cfg);
    assert_int_equal(lstat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    umask(077);
    cfg.mode = 0660;
    restart_server(f, &cfg);
    assert_int_equal(lstat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0660);
    umask(old);

    /* Owner and group by name. */
    {
        struct passwd *pw = getpwuid(geteuid());
        struct group *gr = getgrgid(getegid());
        char err[256];

        assert_non_null(pw);
        assert_non_null(gr);
        cfg.owner = pw->pw_name;
        cfg.group = gr->gr_name;
        cfg.mode = 0640;
        restart_server(f, &cfg);
        assert_int_equal(lstat(f->path, &st), 0);
        assert_int_equal(st.st_uid, geteuid());
        assert_int_equal(st.st_gid, getegid());
        assert_int_equal(st.st_mode & 07777, 0640);
        assert_exchange(f, "echo owned\n", "owned\n\n");

        if (geteuid() == 0 && (pw = getpwnam("nobody")) != NULL) {
            cfg.owner = "nobody";
            restart_server(f, &cfg);
            assert_int_equal(lstat(f->path, &st), 0);
            assert_int_equal(st.st_uid, pw->pw_uid);
        }

        opsock_free(f->srv);
        f->srv = NULL;
        cfg.owner = "no-such-user-cedra";
        cfg.path = f->path;
        assert_null(opsock_new(f->loop, &cfg, err, sizeof(err)));
        assert_string_equal(err, "unknown user 'no-such-user-cedra'");
        cfg.owner = NULL;
        cfg.mode = 01777;
        assert_null(opsock_new(f->loop, &cfg, err, sizeof(err)));
        cfg.mode = 0;
        cfg.group = NULL;
        f->srv = start_server(f, &cfg);
    }
}

static void test_replace_socket_file(void **state)
{
    struct fixture *f = *state;
    struct opsock_config cfg = {.path = f->path};
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    char err[256];
    int fd;

    /* A live socket (this server's) is not stolen. */
    assert_null(opsock_new(f->loop, &cfg, err, sizeof(err)));
    assert_non_null(strstr(err, "in use by a running process"));
    assert_exchange(f, "echo alive\n", "alive\n\n");

    /* A stale socket is replaced. */
    opsock_free(f->srv);
    str_copy(sun.sun_path, f->path, sizeof(sun.sun_path));
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
    close(fd);
    f->srv = start_server(f, &cfg);
    assert_exchange(f, "echo replaced\n", "replaced\n\n");

    /* Anything else is left alone. */
    opsock_free(f->srv);
    f->srv = NULL;
    fd = open(f->path, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_null(opsock_new(f->loop, &cfg, err, sizeof(err)));
    assert_non_null(strstr(err, "not a socket"));
    unlink(f->path);
    f->srv = start_server(f, &cfg);
    /* opsock_free removes its own socket file. */
    opsock_free(f->srv);
    assert_int_equal(access(f->path, F_OK), -1);
    f->srv = start_server(f, &cfg);
}

static void test_register_errors(void **state)
{
    struct fixture *f = *state;
    char err[256];
    static const struct opsock_cmd dup[] = {{"show info", "again", cmd_fail}, {NULL, NULL, NULL}};
    static const struct opsock_cmd builtin[] = {{"help me", "x", cmd_fail}, {NULL, NULL, NULL}};
    static const struct opsock_cmd bad[] = {{"show  info", "x", cmd_fail}, {NULL, NULL, NULL}};
    static const struct opsock_cmd semi[] = {{"a;b", "x", cmd_fail}, {NULL, NULL, NULL}};
    static const struct opsock_cmd deep[] = {{"a b c d e f", "x", cmd_fail}, {NULL, NULL, NULL}};
    static const struct opsock_cmd ok[] = {{"show", "show everything", cmd_echo},
                                           {NULL, NULL, NULL}};

    assert_int_equal(opsock_register(f->srv, dup, NULL, err, sizeof(err)), -1);
    assert_string_equal(err, "command 'show info' registered twice");
    assert_int_equal(opsock_register(f->srv, builtin, NULL, err, sizeof(err)), -1);
    assert_int_equal(opsock_register(f->srv, bad, NULL, err, sizeof(err)), -1);
    assert_int_equal(opsock_register(f->srv, semi, NULL, err, sizeof(err)), -1);
    assert_int_equal(opsock_register(f->srv, deep, NULL, err, sizeof(err)), -1);
    /* Nothing of a failed table stays; a shorter keyword coexists with a
     * longer one and the longest match wins. */
    assert_int_equal(opsock_register(f->srv, ok, NULL, err, sizeof(err)), 0);
    assert_exchange(f, "show info\n", "name: cedra-test\npid: 42\n\n");
    assert_exchange(f, "show pools\n", "pools\n\n");
}

static void test_output_cap(void **state)
{
    struct fixture *f = *state;
    struct opsock_config cfg = {.max_output = 3000};
    char *got;

    restart_server(f, &cfg);
    got = exchange(f, "big;echo next\n", 14);
    /* Two whole 1 KiB lines fit in 3000 bytes, then the mark. */
    assert_int_equal(strlen(got), 2 * 1024 + strlen("# truncated: answer exceeds 3000 bytes\n\n") +
                                      strlen("next\n\n"));
    assert_non_null(strstr(got, "x\n# truncated: answer exceeds 3000 bytes\n\nnext\n\n"));
    free(got);
}

/* A client that sends a lot and never reads holds its own buffers only. */
static void test_slow_client(void **state)
{
    struct fixture *f = *state;
    size_t n = 0;
    char req[4096];
    struct cli *slow = cli_open(f), *other;
    int i;

    n += (size_t)snprintf(req + n, sizeof(req) - n, "prompt");
    for (i = 0; i < 200; i++)
        n += (size_t)snprintf(req + n, sizeof(req) - n, ";big");
    req[n++] = '\n';
    cli_send(slow, req, n);
    cli_io(slow, false);
    /* Let the server fill the socket and stop on its high-water mark. */
    pump_n(f, 200);
    for (i = 0; i < 5; i++) {
        other = cli_open(f);
        cli_send_str(other, "show info\n");
        assert_true(pump(f, other, cli_done_eof, NULL));
        assert_string_equal(other->in, "name: cedra-test\npid: 42\n\n");
        cli_close(other);
    }
    assert_int_equal(opsock_nclients(f->srv), 1);
    /* Once it reads, it gets everything: 200 answers of 64 KiB. */
    cli_send_str(slow, "quit\n");
    if (!pump(f, slow, cli_done_eof, NULL))
        fail_msg("in_len=%zu tail=%s", slow->in_len, slow->in + slow->in_len - 10);
    assert_int_equal(slow->in_len, 1 + 200 * (64 * 1024 + 1) + 2);
    cli_close(slow);
}

static void test_idle_timeout(void **state)
{
    struct fixture *f = *state;
    struct opsock_config cfg = {.idle_timeout = 0.05};
    struct cli *c;
    double t0;

    restart_server(f, &cfg);
    c = cli_open(f);
    cli_send_str(c, "prompt\n");
    assert_true(pump(f, c, cli_done_suffix, "> "));
    t0 = now_mono();
    assert_true(pump(f, c, cli_done_eof, NULL));
    assert_true(now_mono() - t0 >= 0.04);
    assert_int_equal(opsock_nclients(f->srv), 0);
    cli_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_single_command, setup, teardown),
        cmocka_unit_test_setup_teardown(test_command_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_escaped_semicolon, setup, teardown),
        cmocka_unit_test_setup_teardown(test_help_lists_all, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_command, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_args, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bounded_words, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_lines_collapsed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prompt_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_binary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_thousand_commands, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_line_yields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mode_and_owner, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replace_socket_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_register_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_output_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_client, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
