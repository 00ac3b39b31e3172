/* libFuzzer target for the HAProxy Runtime API answer parsers of agent/hapi.c
 * (HAProxy is local, but its answers carry names and addresses that came
 * from configuration and DNS, and a wrong parse moves live traffic).
 *
 * data[0] % 4 picks the parser: 0 "show servers state", 1 "show stat",
 * 2 "show info", 3 "set server" replies (data[0] & 4: the "addr" kind, else
 * the silent one). The rest is the answer as read from the socket.
 * Invariants: success and failure are exclusive (an error has a reason and
 * no partial result), every string handed on is NUL-terminated, non-empty and
 * free of spaces and control bytes where the format says so, numbers stay in
 * their documented ranges, the row bound is exact, and the rows feed
 * hapi_observe_backend() without breaking its slot table. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hapi.h"

#define MAX_ROWS 16

static void check(int cond)
{
    if (!cond)
        abort();
}

/* NUL-terminated within size; visible ASCII only (spaces too when sp). */
static void check_tok(const char *s, size_t size, int sp)
{
    size_t l = strnlen(s, size);

    check(l > 0 && l < size);
    for (size_t i = 0; i < l; i++)
        check((unsigned char)s[i] >= (sp ? 0x20 : 0x21) && (unsigned char)s[i] <= 0x7e);
}

static void check_err(const char *err, size_t size)
{
    check(strnlen(err, size) < size && err[0] != '\0');
}

static void fuzz_state(const char *s, size_t len)
{
    static struct hapi_server rows[MAX_ROWS + 1];
    static struct slot_state slots[MAX_ROWS];
    char err[256] = "";
    int n = hapi_parse_servers_state(s, len, rows, MAX_ROWS, err, sizeof(err));
    size_t nslots = 0;

    check(n >= -1 && n <= MAX_ROWS);
    if (n < 0) {
        check_err(err, sizeof(err));
        return;
    }
    for (int i = 0; i < n; i++) {
        const struct hapi_server *r = &rows[i];
        enum slot_admin a = hapi_admin_decode(r->admin);

        check_tok(r->be_name, sizeof(r->be_name), 0);
        check_tok(r->srv_name, sizeof(r->srv_name), 0);
        check_tok(r->addr, sizeof(r->addr), 0);
        check(r->op_state <= 3 && r->admin <= 0xff && r->uweight <= 256 && r->iweight <= 256);
        check(r->check_result <= 4 && r->check_state <= 0xff);
        check(a == SLOT_READY || a == SLOT_DRAIN || a == SLOT_MAINT);
        check((a == SLOT_MAINT) == ((r->admin & HAPI_ADMF_MAINT) != 0));
    }
    /* The bound is exact: one row fewer is an error, not a truncated list. */
    if (n > 0)
        check(hapi_parse_servers_state(s, len, rows, (size_t)n - 1, err, sizeof(err)) == -1);
    check(hapi_parse_servers_state(s, len, rows, (size_t)n, err, sizeof(err)) == n);

    if (hapi_observe_backend(slots, &nslots, MAX_ROWS, POOL_STABLE, rows, (size_t)n, NULL, 0, 1.0,
                             err, sizeof(err)) == 0) {
        check(nslots <= (size_t)n);
        for (size_t i = 0; i < nslots; i++) {
            check_tok(slots[i].name, sizeof(slots[i].name), 0);
            check(slots[i].kind == POOL_STABLE && !slots[i].idle_known);
            check(strnlen(slots[i].addr, sizeof(slots[i].addr)) < sizeof(slots[i].addr));
        }
    }
}

static void fuzz_stat(const char *s, size_t len)
{
    static struct hapi_stat rows[MAX_ROWS];
    char err[256] = "";
    int n = hapi_parse_stat(s, len, rows, MAX_ROWS, err, sizeof(err));

    check(n >= -1 && n <= MAX_ROWS);
    if (n < 0) {
        check_err(err, sizeof(err));
        return;
    }
    for (int i = 0; i < n; i++) {
        /* Names are matched against slot names and shown to operators. */
        check_tok(rows[i].pxname, sizeof(rows[i].pxname), 0);
        check_tok(rows[i].svname, sizeof(rows[i].svname), 0);
        check_tok(rows[i].status, sizeof(rows[i].status), 1);
        check(strcmp(rows[i].svname, "FRONTEND") != 0 && strcmp(rows[i].svname, "BACKEND") != 0);
    }
    if (n > 0)
        check(hapi_parse_stat(s, len, rows, (size_t)n - 1, err, sizeof(err)) == -1);
}

static void fuzz_info(const char *s, size_t len)
{
    struct hapi_info a, b;
    char err[256] = "";
    int rc = hapi_parse_info(s, len, &a, err, sizeof(err));

    check(rc == 0 || rc == -1);
    if (rc < 0) {
        check_err(err, sizeof(err));
        return;
    }
    check(a.pid != 0);
    /* The version is shown on the operator socket and in logs. */
    if (a.version[0])
        check_tok(a.version, sizeof(a.version), 1);
    check(!hapi_info_restarted(&a, 10.0, &a, 10.0));
    b = a;
    b.pid = a.pid + 1;
    check(hapi_info_restarted(&a, 10.0, &b, 10.0));
}

static void fuzz_set(enum hapi_set_kind kind, const char *s, size_t len)
{
    char err[256] = "";
    int rc = hapi_check_set_reply(kind, s, len, err, sizeof(err));
    static const char tail[] = " by 'stats socket command'\n\n";

    check(rc == 0 || rc == -1);
    if (rc < 0) {
        check_err(err, sizeof(err));
        return;
    }
    if (kind == HAPI_SET_SILENT) {
        check(len == 1 && s[0] == '\n');
        return;
    }
    /* Exactly one line, then the empty line, and HAProxy's signature. */
    check(len >= sizeof(tail) - 1 &&
          memcmp(s + len - (sizeof(tail) - 1), tail, sizeof(tail) - 1) == 0);
    check(memchr(s, '\n', len - 2) == NULL);
    check(strncmp(s, "IP changed from '", 17) == 0 ||
          strncmp(s, "no need to change the addr", 26) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data + 1;
    size_t len;

    if (size == 0)
        return 0;
    len = size - 1;
    switch (data[0] & 3) {
    case 0:
        fuzz_state(s, len);
        break;
    case 1:
        fuzz_stat(s, len);
        break;
    case 2:
        fuzz_info(s, len);
        break;
    default:
        fuzz_set(data[0] & 4 ? HAPI_SET_ADDR : HAPI_SET_SILENT, s, len);
        break;
    }
    return 0;
}
