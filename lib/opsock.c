/* Operator socket server. See opsock.h for the protocol.
 *
 * Each client is a small state machine driven by one ev_io (read and/or
 * write), an idle timer and a zero-delay "resume" timer:
 *   read -> find a complete line -> run its ';'-separated commands one by one
 *   -> append each answer to the client's output buffer -> flush.
 * Per loop iteration a client runs at most cmds_per_run commands and reads at
 * most one buffer's worth, so a line of thousands of commands is spread over
 * many iterations (the resume timer brings us back next iteration). While more
 * than OUT_HIGH_WATER bytes of answers wait to be sent, the client's commands
 * stay queued: a client that does not read holds at most that much plus one
 * answer, and never the loop.
 *
 * Output bound: an answer is built whole, then sent. A handler snapshots the
 * state it reports in one call (under whatever lock that state needs) instead
 * of being resumed across loop iterations with a cursor into data that may
 * change in between; the price is a hard cap per answer (max_output), beyond
 * which the answer is cut at a line boundary with a final "# truncated" line,
 * and the operator narrows the command (e.g. "show cache <prefix>"). */
#include "opsock.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "net.h"
#include "util.h"

#define DEF_MODE 0600
#define DEF_MAX_CLIENTS 32
#define DEF_MAX_LINE (64 * 1024)
#define DEF_MAX_OUTPUT (4 * 1024 * 1024)
#define DEF_IDLE_TIMEOUT 30.0
#define DEF_CMDS_PER_RUN 64
/* Commands are not started while this much output is waiting for the client. */
#define OUT_HIGH_WATER (64 * 1024)
/* Accepts per loop iteration, and bytes of unread input discarded at close. */
#define ACCEPTS_PER_RUN 16
#define DRAIN_MAX (256 * 1024)
#define LISTEN_BACKLOG                                                                             \
    128 /* bursts of operator clients (cedra-agent, scrapers) must not see EAGAIN */

#define container_of(p, type, member) ((type *)(void *)((char *)(p)-offsetof(type, member)))

struct cmd_entry {
    char *keyword; /* "show info", for help and errors */
    char *kwbuf;   /* keyword copy split in place into words[] */
    char *words[OPSOCK_MAX_KW_WORDS];
    int nwords;
    char *help;
    opsock_fn fn;
    void *ud;
};

/* Pending bytes are data[off..len). */
struct obuf {
    char *data;
    size_t off, len, cap;
};

struct client {
    struct client *prev, *next;
    struct opsock *srv;
    int fd;
    ev_io io;
    int io_events;
    ev_timer idle;
    ev_timer resume;
    /* Input: unconsumed bytes are in[in_off..in_len); bytes up to in_scanned
     * were checked and hold no newline. */
    char *in;
    size_t in_off, in_len, in_scanned;
    /* The line being run: commands left in in[line_pos..line_end), the next
     * line starts at line_next. */
    bool line_active;
    size_t line_pos, line_end, line_next;
    bool interactive, eof, closing, failed;
    struct obuf out;
};

struct opsock {
    struct ev_loop *loop;
    int fd;
    ev_io lio;
    ev_timer accept_retry;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    dev_t dev;
    ino_t ino;
    unsigned max_clients, cmds_per_run;
    size_t max_line, max_output;
    double idle_timeout;
    struct cmd_entry *cmds;
    size_t ncmds;
    struct client *clients;
    unsigned nclients;
};

struct opsock_out {
    struct client *c;
    size_t start; /* where this answer begins in c->out */
    size_t cap;
    char last; /* last byte of the answer so far ('\n' at start) */
    bool truncated;
    bool has_err;
    char err[256];
};

static const char *const builtin_kw[] = {"help", "prompt", "quit"};

/* ---- output buffer ---------------------------------------------------------- */

static size_t obuf_pending(const struct obuf *b)
{
    return b->len - b->off;
}

/* Moves pending bytes to the front. Only between answers: an answer being
 * built holds offsets into the buffer. */
static void obuf_compact(struct obuf *b)
{
    if (b->off) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
}

static int obuf_reserve(struct obuf *b, size_t n)
{
    size_t cap;
    char *p;

    if (b->cap - b->len >= n)
        return 0;
    cap = b->cap ? b->cap : 4096;
    while (cap - b->len < n)
        cap *= 2;
    p = realloc(b->data, cap);
    if (!p)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

/* Appends outside any cap (end marks, prompts, error lines). */
static void client_put(struct client *c, const char *s, size_t n)
{
    if (c->failed)
        return;
    if (obuf_reserve(&c->out, n) < 0) {
        c->failed = true;
        return;
    }
    memcpy(c->out.data + c->out.len, s, n);
    c->out.len += n;
}

static void client_puts(struct client *c, const char *s)
{
    client_put(c, s, strlen(s));
}

/* Makes s printable on one line in place, so that a message can never break
 * the framing. */
static void one_line(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

/* ---- answer API for handlers ---------------------------------------------- */

void opsock_write(struct opsock_out *o, const void *data, size_t len)
{
    struct client *c = o->c;
    const char *p = data;
    size_t i = 0;

    while (i < len && !o->truncated && !c->failed) {
        const char *nl;
        size_t run, used;

        /* An empty line ends an answer: never let a handler emit one. */
        if (p[i] == '\n' && o->last == '\n') {
            i++;
            continue;
        }
        nl = memchr(p + i, '\n', len - i);
        run = nl ? (size_t)(nl - (p + i)) + 1 : len - i;
        used = c->out.len - o->start;
        if (used + run > o->cap) {
            /* Cut after the last complete line so that what is shown parses. */
            char *base = c->out.data + o->start;
            char *last_nl = used ? memrchr(base, '\n', used) : NULL;

            c->out.len = o->start + (last_nl ? (size_t)(last_nl - base) + 1 : 0);
            o->last = '\n';
            o->truncated = true;
            return;
        }
        client_put(c, p + i, run);
        o->last = p[i + run - 1];
        i += run;
    }
}

void opsock_vprintf(struct opsock_out *o, const char *fmt, va_list ap)
{
    char small[1024], *big;
    va_list ap2;
    int n;

    va_copy(ap2, ap);
    n = vsnprintf(small, sizeof(small), fmt, ap);
    if (n >= 0 && (size_t)n < sizeof(small)) {
        opsock_write(o, small, (size_t)n);
    } else if (n >= 0) {
        big = malloc((size_t)n + 1);
        if (big) {
            vsnprintf(big, (size_t)n + 1, fmt, ap2);
            opsock_write(o, big, (size_t)n);
            free(big);
        } else {
            o->c->failed = true;
        }
    }
    va_end(ap2);
}

void opsock_printf(struct opsock_out *o, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    opsock_vprintf(o, fmt, ap);
    va_end(ap);
}

int opsock_error(struct opsock_out *o, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(o->err, sizeof(o->err), fmt, ap);
    va_end(ap);
    one_line(o->err);
    o->has_err = true;
    return -1;
}

static void answer_begin(struct client *c, struct opsock_out *o)
{
    memset(o, 0, sizeof(*o));
    obuf_compact(&c->out);
    o->c = c;
    o->start = c->out.len;
    o->cap = c->srv->max_output;
    o->last = '\n';
}

/* Closes an answer: an error replaces whatever the handler wrote; then the
 * last line is terminated and the empty line appended. */
static void answer_end(struct opsock_out *o)
{
    struct client *c = o->c;

    if (o->has_err) {
        char line[sizeof(o->err) + 16];
        int n = snprintf(line, sizeof(line), "error: %s\n", o->err);

        c->out.len = o->start;
        client_put(c, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
    } else if (o->truncated) {
        char line[96];
        int n = snprintf(line, sizeof(line), "# truncated: answer exceeds %zu bytes\n", o->cap);

        client_put(c, line, (size_t)n);
    } else if (o->last != '\n') {
        client_put(c, "\n", 1);
    }
    client_put(c, "\n", 1);
}

/* A complete answer that is a single error line. */
static void answer_error(struct client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void answer_error(struct client *c, const char *fmt, ...)
{
    struct opsock_out o;
    va_list ap;

    answer_begin(c, &o);
    va_start(ap, fmt);
    vsnprintf(o.err, sizeof(o.err), fmt, ap);
    va_end(ap);
    one_line(o.err);
    o.has_err = true;
    answer_end(&o);
}

/* ---- commands ------------------------------------------------------------- */

static bool kw_is_builtin(const char *kw)
{
    for (size_t i = 0; i < sizeof(builtin_kw) / sizeof(builtin_kw[0]); i++)
        if (strcmp(kw, builtin_kw[i]) == 0)
            return true;
    return false;
}

static void cmd_help(struct client *c, int argc, char **argv)
{
    static const struct {
        const char *kw, *help;
    } builtins[] = {
        {"help [<prefix>]", "list the commands, or those starting with <prefix>"},
        {"prompt", "toggle interactive mode (\"> \" prompts, stay connected)"},
        {"quit", "close the connection"},
    };
    struct opsock *s = c->srv;
    char prefix[256] = "";
    size_t plen = 0, width = 0, shown = 0;
    struct opsock_out o;

    /* The prefix is the remaining words joined by single spaces. */
    for (int i = 1; i < argc; i++) {
        int n = snprintf(prefix + plen, sizeof(prefix) - plen, "%s%s", i > 1 ? " " : "", argv[i]);

        if (n < 0 || (size_t)n >= sizeof(prefix) - plen) {
            answer_error(c, "help prefix too long");
            return;
        }
        plen += (size_t)n;
    }
    for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++)
        if (strlen(builtins[i].kw) > width)
            width = strlen(builtins[i].kw);
    for (size_t i = 0; i < s->ncmds; i++)
        if (strlen(s->cmds[i].keyword) > width)
            width = strlen(s->cmds[i].keyword);

    answer_begin(c, &o);
    for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++) {
        if (strncmp(builtins[i].kw, prefix, plen) != 0)
            continue;
        opsock_printf(&o, "  %-*s : %s\n", (int)width, builtins[i].kw, builtins[i].help);
        shown++;
    }
    for (size_t i = 0; i < s->ncmds; i++) {
        if (strncmp(s->cmds[i].keyword, prefix, plen) != 0)
            continue;
        opsock_printf(&o, "  %-*s : %s\n", (int)width, s->cmds[i].keyword, s->cmds[i].help);
        shown++;
    }
    if (!shown)
        opsock_error(&o, "no command starts with '%s', type 'help' for the list of commands",
                     prefix);
    answer_end(&o);
}

/* Longest registered keyword that prefixes argv word by word. */
static const struct cmd_entry *cmd_match(const struct opsock *s, int argc, char **argv)
{
    const struct cmd_entry *best = NULL;

    for (size_t i = 0; i < s->ncmds; i++) {
        const struct cmd_entry *e = &s->cmds[i];
        int w;

        if (e->nwords > argc || (best && e->nwords <= best->nwords))
            continue;
        for (w = 0; w < e->nwords; w++)
            if (strcmp(e->words[w], argv[w]) != 0)
                break;
        if (w == e->nwords)
            best = e;
    }
    return best;
}

/* Runs one command: cmd is NUL-terminated and may be split in place. */
static void client_exec(struct client *c, char *cmd)
{
    char *argv[OPSOCK_MAX_ARGS + 1];
    int argc = 0;
    char *p = cmd;
    const struct cmd_entry *e;
    struct opsock_out o;

    for (;;) {
        char *w;

        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            break;
        if (argc == OPSOCK_MAX_ARGS) {
            answer_error(c, "too many words in command (max %d)", OPSOCK_MAX_ARGS);
            return;
        }
        w = argv[argc++] = p;
        while (*p && *p != ' ' && *p != '\t')
            p++;
        if ((size_t)(p - w) > OPSOCK_MAX_WORD) {
            answer_error(c, "word too long (max %d bytes)", OPSOCK_MAX_WORD);
            return;
        }
        if (*p)
            *p++ = '\0';
    }
    argv[argc] = NULL;
    if (argc == 0)
        return; /* blank command: no answer, as in HAProxy */

    if (strcmp(argv[0], "help") == 0) {
        cmd_help(c, argc, argv);
        return;
    }
    if (strcmp(argv[0], "quit") == 0 || strcmp(argv[0], "prompt") == 0) {
        if (argc > 1) {
            answer_error(c, "'%s' takes no argument", argv[0]);
            return;
        }
        if (argv[0][0] == 'q') {
            c->closing = true; /* no answer: the close is the answer */
            return;
        }
        c->interactive = !c->interactive;
        client_put(c, "\n", 1);
        return;
    }
    e = cmd_match(c->srv, argc, argv);
    if (!e) {
        char name[80] = "";
        size_t n = 0;

        for (int i = 0; i < argc && i < 3 && n < sizeof(name) - 1; i++)
            n += (size_t)snprintf(name + n, sizeof(name) - n, "%s%s", i ? " " : "", argv[i]);
        answer_error(c, "unknown command '%s', type 'help' for the list of commands", name);
        return;
    }
    answer_begin(c, &o);
    if (e->fn(&o, argc, argv, e->ud) != 0 && !o.has_err)
        opsock_error(&o, "'%s' failed", e->keyword);
    answer_end(&o);
}

/* ---- client state machine -------------------------------------------------- */

/* Looks for the end of the next line from in_off. Returns 1 with *nl set, 0 if
 * more input is needed, -1 on a forbidden byte, -2 if the line is too long. */
static int find_line(struct client *c, size_t *nl)
{
    size_t i;

    for (i = c->in_scanned; i < c->in_len; i++) {
        unsigned char b = (unsigned char)c->in[i];

        if (b == '\n') {
            *nl = i;
            return 1;
        }
        if (b == '\r') {
            if (i + 1 == c->in_len)
                break; /* decide once the next byte is here */
            if (c->in[i + 1] == '\n')
                continue;
            return -1;
        }
        if ((b < 0x20 && b != '\t') || b == 0x7f)
            return -1;
    }
    c->in_scanned = i;
    if (c->in_len - c->in_off > c->srv->max_line)
        return -2;
    return 0;
}

static void line_start(struct client *c, size_t nl)
{
    size_t end = nl;

    if (end > c->in_off && c->in[end - 1] == '\r')
        end--;
    c->line_active = true;
    c->line_pos = c->in_off;
    c->line_end = end;
    c->line_next = nl < c->in_len ? nl + 1 : nl;
}

static void line_done(struct client *c)
{
    c->line_active = false;
    c->in_off = c->line_next;
    c->in_scanned = c->in_off;
    if (c->in_off == c->in_len)
        c->in_off = c->in_len = c->in_scanned = 0;
    if (c->closing)
        return;
    if (c->interactive)
        client_puts(c, "> ");
    else
        c->closing = true; /* non-interactive: one line, then close */
}

/* Cuts the next command off the active line, undoing "\;" in place, and runs
 * it. */
static void line_step(struct client *c)
{
    char *s = c->in + c->line_pos, *end = c->in + c->line_end;
    char *r = s, *w = s;
    bool last;

    while (r < end) {
        if (r[0] == '\\' && r + 1 < end && r[1] == ';') {
            *w++ = ';';
            r += 2;
            continue;
        }
        if (*r == ';')
            break;
        *w++ = *r++;
    }
    last = r >= end;
    c->line_pos = last ? c->line_end : (size_t)(r - c->in) + 1;
    /* w <= r, and in[] has a spare byte past max_line for a line cut by EOF. */
    *w = '\0';
    client_exec(c, s);
    if (last || c->closing)
        line_done(c);
}

/* Runs queued commands. Returns true if it stopped on its budget or on the
 * output high-water mark with work possibly left, so that the caller comes
 * back: through the write watcher while output is above the mark, else
 * through the resume timer. */
static bool client_run(struct client *c)
{
    unsigned budget = c->srv->cmds_per_run;

    while (!c->closing && !c->failed) {
        size_t nl;
        int r;

        /* Maybe more to do: once flushed below the mark, or next iteration. */
        if (obuf_pending(&c->out) > OUT_HIGH_WATER || budget == 0)
            return true;
        if (c->line_active) {
            line_step(c);
            budget--;
            continue;
        }
        r = find_line(c, &nl);
        if (r == 0 && c->eof) {
            if (c->in_off == c->in_len) {
                c->closing = true;
                break;
            }
            nl = c->in_len; /* a last line without newline */
            r = 1;
        }
        if (r == 0)
            break;
        if (r < 0) {
            if (r == -1)
                answer_error(c, "binary data on the operator socket");
            else
                answer_error(c, "line too long (max %zu bytes)", c->srv->max_line);
            log_warning("opsock_client_error", "path=%s reason=%s", c->srv->path,
                        r == -1 ? "binary" : "line_too_long");
            c->closing = true;
            break;
        }
        line_start(c, nl);
    }
    return false;
}

static void client_destroy(struct client *c, bool drain)
{
    struct opsock *s = c->srv;

    ev_io_stop(s->loop, &c->io);
    ev_timer_stop(s->loop, &c->idle);
    ev_timer_stop(s->loop, &c->resume);
    if (drain) {
        /* Unread input makes Linux reset the peer instead of a clean EOF,
         * which would lose the answer it has not read yet. */
        char sink[4096];
        size_t total = 0;
        ssize_t n;

        while (total < DRAIN_MAX && (n = recv(c->fd, sink, sizeof(sink), MSG_DONTWAIT)) > 0)
            total += (size_t)n;
    }
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nclients--;
    free(c->in);
    free(c->out.data);
    free(c);
}

/* Bytes that may be appended at in + in_len, after moving consumed input
 * out of the way (never under a line being run: it points into in[]). */
static size_t client_in_room(struct client *c)
{
    if (c->in_off && !c->line_active) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_scanned -= c->in_off;
        c->in_off = 0;
    }
    return c->srv->max_line + 1 - c->in_len;
}

/* One recv per call: a fast client cannot hold the loop. */
static int client_read(struct client *c)
{
    size_t room = client_in_room(c);
    ssize_t n;

    if (room == 0)
        return 0;
    n = recv(c->fd, c->in + c->in_len, room, MSG_DONTWAIT);
    if (n > 0) {
        c->in_len += (size_t)n;
        ev_timer_again(c->srv->loop, &c->idle);
        return 0;
    }
    if (n == 0) {
        c->eof = true;
        return 0;
    }
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
}

static int client_flush(struct client *c)
{
    bool progress = false;

    while (obuf_pending(&c->out)) {
        ssize_t n = send(c->fd, c->out.data + c->out.off, obuf_pending(&c->out),
                         MSG_DONTWAIT | MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return -1;
        }
        c->out.off += (size_t)n;
        progress = true;
    }
    if (c->out.off == c->out.len)
        c->out.off = c->out.len = 0;
    if (progress)
        ev_timer_again(c->srv->loop, &c->idle);
    return 0;
}

/* Runs, flushes and re-arms the watchers; may free c. */
static void client_step(struct client *c)
{
    struct opsock *s = c->srv;
    bool more = client_run(c);
    int ev = 0;

    if (c->failed || client_flush(c) < 0) {
        client_destroy(c, false);
        return;
    }
    if (c->closing && !obuf_pending(&c->out)) {
        client_destroy(c, true);
        return;
    }
    if (obuf_pending(&c->out))
        ev |= EV_WRITE;
    if (!c->eof && !c->closing && !c->line_active && c->in_len - c->in_off < c->srv->max_line + 1)
        ev |= EV_READ;
    else if (!c->eof && !c->closing && c->line_active && c->in_len < c->srv->max_line + 1)
        ev |= EV_READ; /* interactive pipelining: room left behind the line */
    if (ev != c->io_events) {
        ev_io_stop(s->loop, &c->io);
        ev_io_set(&c->io, c->fd, ev);
        if (ev)
            ev_io_start(s->loop, &c->io);
        c->io_events = ev;
    }
    if (more && obuf_pending(&c->out) <= OUT_HIGH_WATER) {
        if (!ev_is_active(&c->resume)) {
            ev_timer_set(&c->resume, 0., 0.);
            ev_timer_start(s->loop, &c->resume);
        }
    } else if (ev_is_active(&c->resume)) {
        ev_timer_stop(s->loop, &c->resume);
    }
}

static void on_client_io(struct ev_loop *loop, ev_io *w, int revents)
{
    struct client *c = container_of(w, struct client, io);

    if ((revents & EV_READ) && client_read(c) < 0) {
        client_destroy(c, false);
        return;
    }
    if ((revents & EV_WRITE) && client_flush(c) < 0) {
        client_destroy(c, false);
        return;
    }
    client_step(c);
}

static void on_client_resume(struct ev_loop *loop, ev_timer *t, int revents)
{
    client_step(container_of(t, struct client, resume));
}

static void on_client_idle(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct client *c = container_of(t, struct client, idle);

    log_info("opsock_client_timeout", "path=%s", c->srv->path);
    client_destroy(c, false);
}

static struct client *client_alloc(struct opsock *s, int fd)
{
    struct client *c = calloc(1, sizeof(*c));

    /* +1: a last line cut by EOF gets its terminating NUL behind max_line. */
    if (c)
        c->in = malloc(s->max_line + 2);
    if (!c || !c->in) {
        free(c);
        return NULL;
    }
    c->srv = s;
    c->fd = fd;
    return c;
}

static void client_new(struct opsock *s, int fd)
{
    struct client *c = client_alloc(s, fd);

    if (!c) {
        close(fd);
        log_error("opsock_client_error", "path=%s reason=out_of_memory", s->path);
        return;
    }
    ev_io_init(&c->io, on_client_io, fd, EV_READ);
    ev_io_start(s->loop, &c->io);
    c->io_events = EV_READ;
    ev_init(&c->idle, on_client_idle);
    c->idle.repeat = s->idle_timeout;
    ev_timer_again(s->loop, &c->idle);
    ev_init(&c->resume, on_client_resume);
    c->next = s->clients;
    if (s->clients)
        s->clients->prev = c;
    s->clients = c;
    s->nclients++;
}

static void on_accept_retry(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct opsock *s = container_of(t, struct opsock, accept_retry);

    ev_io_start(loop, &s->lio);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    struct opsock *s = container_of(w, struct opsock, lio);

    for (int i = 0; i < ACCEPTS_PER_RUN; i++) {
        int fd = net_accept(s->fd);

        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: pause instead of spinning on a ready fd. */
                log_error("opsock_accept_error", "path=%s error=\"%s\"", s->path, strerror(errno));
                ev_io_stop(loop, &s->lio);
                ev_timer_set(&s->accept_retry, 1., 0.);
                ev_timer_start(loop, &s->accept_retry);
            }
            return;
        }
        if (s->nclients >= s->max_clients) {
            char msg[80];
            int n =
                snprintf(msg, sizeof(msg), "error: too many clients (max %u)\n\n", s->max_clients);
            char sink[512];

            send(fd, msg, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
            for (int k = 0; k < 8 && recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0; k++)
                ;
            close(fd);
            log_warning("opsock_client_refused", "path=%s reason=max_clients max=%u", s->path,
                        s->max_clients);
            continue;
        }
        client_new(s, fd);
    }
}

/* ---- server ----------------------------------------------------------------- */

static int resolve_ids(const struct opsock_config *cfg, uid_t *uid, gid_t *gid, char *err,
                       size_t errlen)
{
    char buf[16384];
    uint64_t v;

    *uid = (uid_t)-1;
    *gid = (gid_t)-1;
    if (cfg->owner && *cfg->owner) {
        struct passwd pw, *res = NULL;

        if (getpwnam_r(cfg->owner, &pw, buf, sizeof(buf), &res) == 0 && res)
            *uid = res->pw_uid;
        else if (parse_uint(cfg->owner, 0, (uid_t)-2, &v) == 0)
            *uid = (uid_t)v;
        else {
            snprintf(err, errlen, "unknown user '%s'", cfg->owner);
            return -1;
        }
    }
    if (cfg->group && *cfg->group) {
        struct group gr, *res = NULL;

        if (getgrnam_r(cfg->group, &gr, buf, sizeof(buf), &res) == 0 && res)
            *gid = res->gr_gid;
        else if (parse_uint(cfg->group, 0, (gid_t)-2, &v) == 0)
            *gid = (gid_t)v;
        else {
            snprintf(err, errlen, "unknown group '%s'", cfg->group);
            return -1;
        }
    }
    return 0;
}

/* A socket file that still accepts connections belongs to a running process:
 * replacing it would silently steal that daemon's operator socket. */
static bool socket_is_live(const struct endpoint *ep)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    bool live;

    if (fd < 0)
        return false;
    live = connect(fd, (const struct sockaddr *)&ep->addr, ep->len) == 0 || errno == EAGAIN;
    close(fd);
    return live;
}

static int make_socket(struct opsock *s, const struct opsock_config *cfg, char *err, size_t errlen)
{
    unsigned mode = cfg->mode ? cfg->mode : DEF_MODE;
    char spec[sizeof(s->path) + 8];
    struct endpoint ep;
    struct stat st;
    uid_t uid;
    gid_t gid;
    bool chown_needed;

    if (mode > 0777) {
        snprintf(err, errlen, "bad socket mode %o", mode);
        return -1;
    }
    if (resolve_ids(cfg, &uid, &gid, err, errlen) < 0)
        return -1;
    chown_needed = uid != (uid_t)-1 || gid != (gid_t)-1;
    snprintf(spec, sizeof(spec), "unix:%s", s->path);
    if (parse_endpoint(spec, &ep, err, errlen) < 0)
        return -1;
    if (socket_is_live(&ep)) {
        snprintf(err, errlen, "%s is in use by a running process", s->path);
        return -1;
    }
    /* net_listen chmods before listen(). With an owner or group to set, it
     * listens at most owner-only first, so that until chown+chmod are done the
     * socket admits nobody the final mode would not (the daemon's own user is
     * root or the owner anyway). */
    s->fd = net_listen(&ep, LISTEN_BACKLOG, false, chown_needed ? mode & 0700 : mode, err, errlen);
    if (s->fd < 0)
        return -1;
    if (chown_needed && (chown(s->path, uid, gid) < 0 || chmod(s->path, (mode_t)mode) < 0)) {
        snprintf(err, errlen, "chown/chmod(%s): %s", s->path, strerror(errno));
        goto fail;
    }
    if (lstat(s->path, &st) < 0) {
        snprintf(err, errlen, "stat(%s): %s", s->path, strerror(errno));
        goto fail;
    }
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    return 0;
fail:
    close(s->fd);
    s->fd = -1;
    unlink(s->path);
    return -1;
}

struct opsock *opsock_new(struct ev_loop *loop, const struct opsock_config *cfg, char *err,
                          size_t errlen)
{
    struct opsock *s;

    if (!cfg->path || !*cfg->path || strlen(cfg->path) >= sizeof(s->path)) {
        snprintf(err, errlen, "bad operator socket path");
        return NULL;
    }
    s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->loop = loop;
    s->fd = -1;
    str_copy(s->path, cfg->path, sizeof(s->path));
    s->max_clients = cfg->max_clients ? cfg->max_clients : DEF_MAX_CLIENTS;
    s->max_line = cfg->max_line ? cfg->max_line : DEF_MAX_LINE;
    s->max_output = cfg->max_output ? cfg->max_output : DEF_MAX_OUTPUT;
    s->idle_timeout = cfg->idle_timeout > 0 ? cfg->idle_timeout : DEF_IDLE_TIMEOUT;
    s->cmds_per_run = cfg->cmds_per_run ? cfg->cmds_per_run : DEF_CMDS_PER_RUN;
    if (make_socket(s, cfg, err, errlen) < 0) {
        free(s);
        return NULL;
    }
    ev_io_init(&s->lio, on_accept, s->fd, EV_READ);
    ev_io_start(loop, &s->lio);
    ev_init(&s->accept_retry, on_accept_retry);
    log_info("opsock_listen", "path=%s mode=%04o max_clients=%u", s->path,
             cfg->mode ? cfg->mode : DEF_MODE, s->max_clients);
    return s;
}

/* A keyword is 1..OPSOCK_MAX_KW_WORDS words of visible ASCII (no ';' nor
 * '\\', which the line syntax owns) separated by single spaces. */
static int kw_split(struct cmd_entry *e, const char *kw, char *err, size_t errlen)
{
    char *p;

    if (!kw || !*kw || strlen(kw) > 128)
        goto bad;
    for (const char *q = kw; *q; q++)
        if (*q != ' ' && (*q <= 0x20 || *q >= 0x7f || *q == ';' || *q == '\\'))
            goto bad;
    e->keyword = strdup(kw);
    e->kwbuf = strdup(kw);
    if (!e->keyword || !e->kwbuf) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    p = e->kwbuf;
    for (;;) {
        char *sp = strchr(p, ' ');

        if (!*p || *p == ' ' || e->nwords == OPSOCK_MAX_KW_WORDS)
            goto bad;
        e->words[e->nwords++] = p;
        if (!sp)
            break;
        *sp = '\0';
        p = sp + 1;
    }
    return 0;
bad:
    snprintf(err, errlen, "bad command keyword '%s'", kw ? kw : "(null)");
    return -1;
}

static void cmd_entry_clear(struct cmd_entry *e)
{
    free(e->keyword);
    free(e->kwbuf);
    free(e->help);
}

int opsock_register(struct opsock *s, const struct opsock_cmd *cmds, void *ud, char *err,
                    size_t errlen)
{
    size_t n = 0, i;
    struct cmd_entry *tab;

    while (cmds[n].keyword)
        n++;
    tab = realloc(s->cmds, (s->ncmds + n) * sizeof(*tab));
    if (!tab && s->ncmds + n) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->cmds = tab;
    for (i = 0; i < n; i++) {
        struct cmd_entry *e = &tab[s->ncmds + i];

        memset(e, 0, sizeof(*e));
        if (kw_split(e, cmds[i].keyword, err, errlen) < 0)
            goto fail;
        if (!cmds[i].fn || !cmds[i].help) {
            snprintf(err, errlen, "command '%s' lacks a handler or help", e->keyword);
            goto fail;
        }
        if (kw_is_builtin(e->words[0])) {
            snprintf(err, errlen, "command '%s' shadows the built-in '%s'", e->keyword,
                     e->words[0]);
            goto fail;
        }
        for (size_t j = 0; j < s->ncmds + i; j++) {
            if (strcmp(tab[j].keyword, e->keyword) == 0) {
                snprintf(err, errlen, "command '%s' registered twice", e->keyword);
                goto fail;
            }
        }
        e->help = strdup(cmds[i].help);
        if (!e->help) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        one_line(e->help);
        e->fn = cmds[i].fn;
        e->ud = ud;
    }
    s->ncmds += n;
    return 0;
fail:
    /* All or nothing: the table is left as it was. */
    for (size_t j = 0; j <= i && j < n; j++)
        cmd_entry_clear(&tab[s->ncmds + j]);
    return -1;
}

void opsock_free(struct opsock *s)
{
    struct stat st;

    if (!s)
        return;
    while (s->clients)
        /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): the call unlinks the head */
        client_destroy(s->clients, false);
    ev_io_stop(s->loop, &s->lio);
    ev_timer_stop(s->loop, &s->accept_retry);
    if (s->fd >= 0)
        close(s->fd);
    /* A newer process may already have replaced the file: only remove ours. */
    if (lstat(s->path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == s->dev &&
        st.st_ino == s->ino)
        unlink(s->path);
    for (size_t i = 0; i < s->ncmds; i++)
        cmd_entry_clear(&s->cmds[i]);
    free(s->cmds);
    free(s);
}

unsigned opsock_nclients(const struct opsock *s)
{
    return s->nclients;
}

int opsock_feed(struct opsock *s, const void *data, size_t len, char **out, size_t *outlen)
{
    struct client *c = client_alloc(s, -1);
    struct obuf res = {0};
    const char *p = data;
    int rc = 0;

    *out = NULL;
    *outlen = 0;
    if (!c)
        return -1;
    /* The socket path with the socket taken out: client_read() becomes a
     * copy, client_flush() an append to res, and the watchers' re-arming is
     * this loop. Every pass consumes input or runs commands, and EOF ends
     * the last line, so it terminates. */
    for (;;) {
        size_t room = client_in_room(c), n = len < room ? len : room;

        if (n) {
            memcpy(c->in + c->in_len, p, n);
            c->in_len += n;
            p += n;
            len -= n;
        }
        c->eof = len == 0;
        (void)client_run(c);
        if (c->failed || obuf_reserve(&res, obuf_pending(&c->out) + 1) < 0) {
            rc = -1;
            break;
        }
        if (obuf_pending(&c->out)) {
            /* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): reserved above */
            memcpy(res.data + res.len, c->out.data + c->out.off, obuf_pending(&c->out));
            res.len += obuf_pending(&c->out);
            c->out.off = c->out.len = 0;
        }
        if (c->closing)
            break;
    }
    free(c->in);
    free(c->out.data);
    free(c);
    if (rc < 0) {
        free(res.data);
        return -1;
    }
    res.data[res.len] = '\0'; /* obuf_reserve() above left room for it */
    *out = res.data;
    *outlen = res.len;
    return 0;
}
