/* libFuzzer target for the operator sockets: the command-line handling of
 * lib/opsock.c (lines, ';' and "\;", words, limits, prompt mode, answer
 * framing) and every command of cedra-spoa (spoa/cli.c) and cedra-agent
 * (agent/agent_cli.c). Whoever may connect to the socket writes these bytes;
 * a handler that crashes, or an answer that breaks the framing, takes the
 * daemon or cedra-agent's view of cedra-spoa down.
 *
 * data[0] & 1 picks the daemon, the rest is what one client sends before it
 * closes, fed through opsock_feed(), the socket's own code path without the
 * socket. The commands act on real state: cedra-spoa's configuration (the
 * pool table "set pool" replaces through the same publish step main.c uses),
 * its stats and an enabled L1 holding real entries; a whole cedra-agent made
 * by agent_start() from a configuration whose Consul, HAProxy and cedra-spoa
 * are addresses where nothing listens (loopback), its loop run once per input
 * so that commands' side effects (rounds, pushes) proceed and fail as they
 * would. cedra-spoa's state is reset before each input so that a crash
 * reproduces from its input alone.
 *
 * Invariants: no NUL or control byte but '\n' and '\t' in what the client
 * reads; without "prompt", the answers are the empty-line framed answers of
 * the first line's commands (at most one per command), an error answer is one
 * line; the configuration left behind is one a worker can use (stable pool
 * first, canary only beside it, weight 0..100, key prefixes and routes set);
 * the agent's canary weight stays 0..100. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>

#include "../../agent/agent.h"
#include "../../agent/agent_cli.h"
#include "../../spoa/cli.h"
#include "../../spoa/conf.h"
#include "../../spoa/isr.h"
#include "../../spoa/l1.h"
#include "../../spoa/stats.h"
#include "log.h"
#include "opsock.h"
#include "util.h"

#define L1_BYTES (8u << 20)

/* A page as Next.js 15 stores it (tests/fuzz/corpus/isr/small-pages). */
static const char page[] =
    "{\"lastModified\":1795479806953,\"lifespan\":{\"expireAge\":47304000,\"expireAt\":"
    "1842783806,\"lastModifiedAt\":1795479806,\"revalidate\":false,\"staleAge\":31536000,"
    "\"staleAt\":1827015806},\"tags\":[\"_N_T_/fr/p\"],\"value\":{\"kind\":\"PAGES\",\"html\":"
    "\"<html>a</html>\",\"pageData\":{\"a\":[1,2]}}}";
static const char *const keys[] = {"storefront:/fr", "storefront:/fr/about",
                                   "storefront:/nl/products/chair", "storefront-b2:/fr"};

static const char spoa_text[] = "locales fr nl en\n"
                                "default-locale en\n"
                                "pool stable key-prefix storefront: routes pathname build b1\n"
                                "pool canary key-prefix storefront-b2: routes pathname build b2\n";

static const char agent_text[] = "service storefront\n"
                                 "consul-addr 127.0.0.1:1\n"
                                 "haproxy-socket %s/haproxy.sock\n"
                                 "spoa-socket %s/spoa.sock\n"
                                 "register off\n"
                                 "key-prefix storefront:%%{build}:\n";

static struct {
    struct ev_loop *loop;
    char dir[64];
    /* cedra-spoa */
    struct opsock *spoa_sock;
    struct spoa_conf *initial, *conf;
    struct spoa_stats *stats;
    struct l1 *l1;
    struct cli_state cli;
    /* cedra-agent */
    struct opsock *agent_sock;
    struct agent *agent;
} g;

static void check(int cond)
{
    if (!cond)
        abort();
}

/* main.c's publish() less the workers: L1 follows the pools' prefixes. */
static void publish(void *ud, struct spoa_conf *c)
{
    const char *pfx[SPOA_MAX_POOLS];
    size_t n = 0;

    for (unsigned i = 0; i < c->npools; i++)
        if (c->pools[i].key_prefix[0])
            pfx[n++] = c->pools[i].key_prefix;
    check(l1_set_prefixes(g.l1, pfx, n) == 0);
    spoa_conf_release(g.conf);
    g.conf = c;
}

static void spoa_reset(void)
{
    struct spoa_conf *c = spoa_conf_dup(g.initial);

    check(c != NULL);
    publish(NULL, c);
    l1_set_enabled(g.l1, true);
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        struct isr_entry *e = NULL;
        enum l1_put_result res;
        struct l1_ref *r;
        size_t pl = strchr(keys[i], ':') - keys[i] + 1;

        check(isr_entry_parse(page, sizeof(page) - 1, NULL, &e) == ISR_OK);
        r = l1_put(g.l1, keys[i], strlen(keys[i]), pl, e, sizeof(page) - 1, l1_epoch(g.l1), &res);
        check(r != NULL && res == L1_PUT_OK);
        l1_release(r);
    }
}

/* libFuzzer ends with exit(): leave no socket files behind. */
static void cleanup(void)
{
    static const char *const names[] = {"spoa.sock", "agent.sock"};
    char path[128];

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", g.dir, names[i]);
        unlink(path);
    }
    rmdir(g.dir);
}

static struct opsock *new_sock(const char *name)
{
    struct opsock_config oc = {0};
    char path[128], err[256];
    struct opsock *s;

    snprintf(path, sizeof(path), "%s/%s", g.dir, name);
    oc.path = path;
    /* Small limits, so that the limits themselves get exercised. */
    oc.max_line = 4096;
    oc.max_output = 16384;
    oc.cmds_per_run = 4;
    s = opsock_new(g.loop, &oc, err, sizeof(err));
    if (!s) {
        fprintf(stderr, "opsock_new: %s\n", err);
        abort();
    }
    return s;
}

static void setup(void)
{
    struct agent_conf *ac = calloc(1, sizeof(*ac));
    char err[256], text[512];
    int fd = open("/dev/null", O_RDONLY);

    /* "set pool ... routes <file>" opens what it is told: never a terminal. */
    check(fd >= 0 && dup2(fd, 0) == 0);
    close(fd);
    log_init("fuzz_opcmd", false);
    log_set_level(LOG_LVL_ERROR);
    check(snprintf(g.dir, sizeof(g.dir), "/tmp/fuzz_opcmd.XXXXXX") > 0 && mkdtemp(g.dir));
    atexit(cleanup);
    g.loop = ev_loop_new(EVFLAG_AUTO);
    check(g.loop && ac);

    g.initial = spoa_conf_new();
    check(g.initial != NULL);
    spoa_conf_defaults(g.initial);
    if (spoa_conf_load_string(spoa_text, g.initial, err, sizeof(err)) < 0) {
        fprintf(stderr, "spoa conf: %s\n", err);
        abort();
    }
    g.conf = spoa_conf_dup(g.initial);
    g.stats = spoa_stats_new();
    g.l1 = l1_new(L1_BYTES, 4);
    check(g.conf && g.stats && g.l1);
    g.cli = (struct cli_state){.conf_path = "fuzz.conf",
                               .started = now_mono(),
                               .threads = 1,
                               .conf = &g.conf,
                               .stats = g.stats,
                               .l1 = g.l1,
                               .publish = publish};
    g.spoa_sock = new_sock("spoa.sock");
    check(cli_register(g.spoa_sock, &g.cli, err, sizeof(err)) == 0);

    agent_conf_defaults(ac);
    snprintf(text, sizeof(text), agent_text, g.dir, g.dir);
    if (agent_conf_load_string(text, ac, err, sizeof(err)) < 0) {
        fprintf(stderr, "agent conf: %s\n", err);
        abort();
    }
    g.agent = agent_start(g.loop, ac, "fuzz.conf", err, sizeof(err));
    if (!g.agent) {
        fprintf(stderr, "agent_start: %s\n", err);
        abort();
    }
    g.agent_sock = new_sock("agent.sock");
    check(agent_cli_register(g.agent_sock, g.agent, err, sizeof(err)) == 0);
}

static const char *cur_out;
static size_t cur_len;

/* An invariant of what the client read: show it, then abort. */
static void check_answer(int cond)
{
    if (!cond) {
        fprintf(stderr, "answer (%zu bytes):\n%.*s<end>\n", cur_len, (int)cur_len, cur_out);
        abort();
    }
}

/* The client's view: printable, framed answers. */
static void check_output(const uint8_t *in, size_t inlen, const char *out, size_t len)
{
    size_t ncmds = 1;

    cur_out = out;
    cur_len = len;

    check_answer(strlen(out) == len);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)out[i];

        check_answer(c == '\n' || c == '\t' || (c >= 0x20 && c != 0x7f));
    }
    if (memmem(in, inlen, "prompt", 6))
        return;
    /* Lines; an empty one ends an answer (a command that prints nothing
     * answers with the empty line alone). */
    check_answer(len == 0 || (out[len - 1] == '\n' && (len == 1 || out[len - 2] == '\n')));
    for (size_t i = 0; i < inlen && in[i] != '\n'; i++)
        ncmds += in[i] == ';';
    for (const char *l = out, *ans = out; l < out + len;) {
        const char *nl = memchr(l, '\n', (size_t)(out + len - l));

        if (nl == l) {
            check_answer(ncmds-- > 0);
            ans = nl + 1;
        } else if (l != ans) {
            /* An error replaces the whole answer. */
            check_answer(strncmp(ans, "error: ", 7) != 0);
        }
        l = nl + 1;
    }
}

static void check_spoa_state(void)
{
    const struct spoa_conf *c = g.conf;
    struct l1_stats ls;

    check(c->npools >= 1 && c->npools <= SPOA_MAX_POOLS);
    check(strcmp(c->pools[0].name, "stable") == 0);
    check(c->npools == 1 || strcmp(c->pools[1].name, "canary") == 0);
    check(c->canary_weight <= 100);
    for (unsigned i = 0; i < c->npools; i++) {
        check(c->pools[i].routes != NULL);
        check(strnlen(c->pools[i].key_prefix, sizeof(c->pools[i].key_prefix)) <
              sizeof(c->pools[i].key_prefix));
        check(strnlen(c->pools[i].build_id, sizeof(c->pools[i].build_id)) <
              sizeof(c->pools[i].build_id));
    }
    l1_get_stats(g.l1, &ls);
    check(ls.bytes <= ls.max_bytes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *out;
    size_t len;
    enum weight_source src;
    int w;

    if (!g.loop)
        setup();
    if (size == 0)
        return 0;
    if (data[0] & 1) {
        check(opsock_feed(g.agent_sock, data + 1, size - 1, &out, &len) == 0);
        check_output(data + 1, size - 1, out, len);
        free(out);
        w = agent_canary_weight(g.agent, &src);
        check(w >= 0 && w <= 100);
        check(src == WEIGHT_CONFIG || src == WEIGHT_META || src == WEIGHT_OPERATOR);
        check(g.agent->op_weight >= -1 && g.agent->op_weight <= 100);
        ev_run(g.loop, EVRUN_NOWAIT);
        /* Back to a state every input starts from. */
        if (g.agent->paused)
            agent_set_paused(g.agent, false);
        agent_set_operator_weight(g.agent, -1);
    } else {
        spoa_reset();
        check(opsock_feed(g.spoa_sock, data + 1, size - 1, &out, &len) == 0);
        check_output(data + 1, size - 1, out, len);
        free(out);
        check_spoa_state();
    }
    log_set_level(LOG_LVL_ERROR);
    return 0;
}
