/* Strict parsers for the HAProxy Runtime API answers cedra-agent relies on,
 * and plans run through the client of lib/hapi_client.c. */
#include "hapi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

/* ---- parsers --------------------------------------------------------------- */

/* A quoted excerpt of an offending line for error messages. */
static const char *excerpt(char *buf, size_t size, const char *s, size_t len)
{
    return log_quote(buf, size, s, len > 80 ? 80 : len);
}

struct lines {
    const char *p, *end;
};

/* Next line without its "\n"; false at the end. A last line without "\n" is
 * returned too (the callers then find the final empty line missing). */
static bool next_line(struct lines *ls, const char **line, size_t *len)
{
    const char *nl;

    if (ls->p >= ls->end)
        return false;
    nl = memchr(ls->p, '\n', (size_t)(ls->end - ls->p));
    *line = ls->p;
    if (nl) {
        *len = (size_t)(nl - ls->p);
        ls->p = nl + 1;
    } else {
        *len = (size_t)(ls->end - ls->p);
        ls->p = ls->end;
    }
    return true;
}

/* Common framing of "show ..." answers: no NUL byte, and the answer ends
 * with the empty line HAProxy prints after a complete dump. The final empty
 * line is cut off; what is left must hold no other empty line. */
static int check_dump(const char *text, size_t len, size_t *body_len, char *err, size_t errlen)
{
    char q[128];

    if (memchr(text, '\0', len)) {
        str_errf(err, errlen, "NUL byte in answer");
        return -1;
    }
    if (len < 2 || text[len - 1] != '\n' || text[len - 2] != '\n') {
        str_errf(err, errlen, "answer does not end with an empty line: %s",
                 excerpt(q, sizeof(q), text, len));
        return -1;
    }
    *body_len = len - 1;
    return 0;
}

static int parse_u64(const char *s, size_t len, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;

    if (!len || len > 20)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        if (v > (UINT64_MAX - (uint64_t)(s[i] - '0')) / 10)
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

/* Signed decimal, for fields such as srv_check_health. */
static int parse_i64(const char *s, size_t len, int64_t *out)
{
    uint64_t v;

    if (len && s[0] == '-') {
        if (parse_u64(s + 1, len - 1, INT64_MAX, &v) < 0)
            return -1;
        *out = -(int64_t)v;
        return 0;
    }
    if (parse_u64(s, len, INT64_MAX, &v) < 0)
        return -1;
    *out = (int64_t)v;
    return 0;
}

static bool visible(const char *s, size_t len, bool spaces)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < (spaces ? 0x20 : 0x21) || (unsigned char)s[i] > 0x7e)
            return false;
    return true;
}

static int copy_tok(char *dst, size_t size, const char *s, size_t len)
{
    if (!len || len >= size)
        return -1;
    memcpy(dst, s, len);
    dst[len] = '\0';
    return 0;
}

/* The 2.6.12 columns of "show servers state", format version 1, as printed
 * (management.txt lists them; measured: exactly these 25). Later versions
 * may append columns; a different order or a missing column is an error. */
static const char *const srv_cols[] = {
    "be_id",
    "be_name",
    "srv_id",
    "srv_name",
    "srv_addr",
    "srv_op_state",
    "srv_admin_state",
    "srv_uweight",
    "srv_iweight",
    "srv_time_since_last_change",
    "srv_check_status",
    "srv_check_result",
    "srv_check_health",
    "srv_check_state",
    "srv_agent_state",
    "bk_f_forced_id",
    "srv_f_forced_id",
    "srv_fqdn",
    "srv_port",
    "srvrecord",
    "srv_use_ssl",
    "srv_check_port",
    "srv_check_addr",
    "srv_agent_addr",
    "srv_agent_port",
};
#define NSRV_COLS (sizeof(srv_cols) / sizeof(srv_cols[0]))
#define MAX_COLS 256

struct tok {
    const char *s;
    size_t len;
};

/* Splits on single spaces; an empty token (two spaces, leading or trailing
 * space) is an error: HAProxy prints "-" for empty values. */
static int split_spaces(const char *line, size_t len, struct tok *tok, size_t max, size_t *n)
{
    size_t i = 0, start = 0;

    *n = 0;
    for (i = 0; i <= len; i++) {
        if (i == len || line[i] == ' ') {
            if (i == start || *n >= max)
                return -1;
            tok[*n].s = line + start;
            tok[*n].len = i - start;
            (*n)++;
            start = i + 1;
        } else if ((unsigned char)line[i] < 0x21 || (unsigned char)line[i] > 0x7e) {
            return -1;
        }
    }
    return 0;
}

static bool tok_is(const struct tok *t, const char *s)
{
    return t->len == strlen(s) && memcmp(t->s, s, t->len) == 0;
}

int hapi_parse_servers_state(const char *text, size_t len, struct hapi_server *out, size_t max,
                             char *err, size_t errlen)
{
    struct lines ls;
    const char *line;
    size_t llen, body, ncols = 0, nrows = 0, lineno = 0;
    struct tok tok[MAX_COLS];
    char q[128];

    if (check_dump(text, len, &body, err, errlen) < 0)
        return -1;
    ls.p = text;
    ls.end = text + body;
    if (!next_line(&ls, &line, &llen) || llen != 1 || line[0] != '1') {
        str_errf(err, errlen, "expected format version line \"1\", got %s",
                 excerpt(q, sizeof(q), text, body ? body - 1 : 0));
        return -1;
    }
    if (!next_line(&ls, &line, &llen) || llen < 2 || line[0] != '#' || line[1] != ' ' ||
        split_spaces(line + 2, llen - 2, tok, MAX_COLS, &ncols) < 0) {
        str_errf(err, errlen, "expected the \"# be_id ...\" header line");
        return -1;
    }
    if (ncols < NSRV_COLS) {
        str_errf(err, errlen, "header has %zu columns, expected at least %zu", ncols, NSRV_COLS);
        return -1;
    }
    for (size_t c = 0; c < NSRV_COLS; c++) {
        if (!tok_is(&tok[c], srv_cols[c])) {
            str_errf(err, errlen, "header column %zu is %s, expected %s", c + 1,
                     excerpt(q, sizeof(q), tok[c].s, tok[c].len), srv_cols[c]);
            return -1;
        }
    }
    lineno = 2;
    while (next_line(&ls, &line, &llen)) {
        struct hapi_server *s;
        size_t n;
        uint64_t v;
        int64_t sv;

        lineno++;
        if (llen && line[0] == '#')
            continue; /* "each line starting by a sharp ('#') is a comment" */
        if (split_spaces(line, llen, tok, MAX_COLS, &n) < 0 || n != ncols) {
            str_errf(err, errlen, "line %zu: expected %zu space-separated fields: %s", lineno,
                     ncols, excerpt(q, sizeof(q), line, llen));
            return -1;
        }
        if (nrows >= max) {
            str_errf(err, errlen, "more than %zu servers", max);
            return -1;
        }
        s = &out[nrows];
        memset(s, 0, sizeof(*s));
#define FIELD_ERR(col)                                                                             \
    do {                                                                                           \
        str_errf(err, errlen, "line %zu: bad %s %s", lineno, srv_cols[col],                        \
                 excerpt(q, sizeof(q), tok[col].s, tok[col].len));                                 \
        return -1;                                                                                 \
    } while (0)
        if (parse_u64(tok[0].s, tok[0].len, UINT32_MAX, &v) < 0)
            FIELD_ERR(0);
        s->be_id = (unsigned)v;
        if (copy_tok(s->be_name, sizeof(s->be_name), tok[1].s, tok[1].len) < 0)
            FIELD_ERR(1);
        if (parse_u64(tok[2].s, tok[2].len, UINT32_MAX, &v) < 0)
            FIELD_ERR(2);
        s->srv_id = (unsigned)v;
        if (copy_tok(s->srv_name, sizeof(s->srv_name), tok[3].s, tok[3].len) < 0)
            FIELD_ERR(3);
        if (copy_tok(s->addr, sizeof(s->addr), tok[4].s, tok[4].len) < 0)
            FIELD_ERR(4);
        if (parse_u64(tok[5].s, tok[5].len, 3, &v) < 0)
            FIELD_ERR(5);
        s->op_state = (unsigned)v;
        if (parse_u64(tok[6].s, tok[6].len, 0xff, &v) < 0)
            FIELD_ERR(6);
        s->admin = (unsigned)v;
        if (parse_u64(tok[7].s, tok[7].len, 256, &v) < 0)
            FIELD_ERR(7);
        s->uweight = (unsigned)v;
        if (parse_u64(tok[8].s, tok[8].len, 256, &v) < 0)
            FIELD_ERR(8);
        s->iweight = (unsigned)v;
        if (parse_i64(tok[9].s, tok[9].len, &sv) < 0)
            FIELD_ERR(9);
        if (parse_u64(tok[10].s, tok[10].len, UINT32_MAX, &v) < 0)
            FIELD_ERR(10);
        if (parse_u64(tok[11].s, tok[11].len, 4, &v) < 0)
            FIELD_ERR(11);
        s->check_result = (unsigned)v;
        if (parse_i64(tok[12].s, tok[12].len, &sv) < 0)
            FIELD_ERR(12);
        if (parse_u64(tok[13].s, tok[13].len, 0xff, &v) < 0)
            FIELD_ERR(13);
        s->check_state = (unsigned)v;
        if (parse_u64(tok[14].s, tok[14].len, 0xff, &v) < 0)
            FIELD_ERR(14);
        if (parse_u64(tok[15].s, tok[15].len, 1, &v) < 0)
            FIELD_ERR(15);
        if (parse_u64(tok[16].s, tok[16].len, 1, &v) < 0)
            FIELD_ERR(16);
        /* 17 srv_fqdn: any token ("-" when none) */
        if (parse_u64(tok[18].s, tok[18].len, 65535, &v) < 0)
            FIELD_ERR(18);
        s->port = (uint16_t)v;
        /* 19 srvrecord: any token */
        if (parse_u64(tok[20].s, tok[20].len, 1, &v) < 0)
            FIELD_ERR(20);
        if (parse_u64(tok[21].s, tok[21].len, 65535, &v) < 0)
            FIELD_ERR(21);
        /* 22 srv_check_addr, 23 srv_agent_addr: any token */
        if (parse_u64(tok[24].s, tok[24].len, 65535, &v) < 0)
            FIELD_ERR(24);
#undef FIELD_ERR
        nrows++;
    }
    return (int)nrows;
}

enum slot_admin hapi_admin_decode(unsigned admin)
{
    /* CMAINT (0x04) alone is not maintenance: a "disabled" template slot
     * keeps it after "state ready" and serves (2.6.12). */
    if (admin & HAPI_ADMF_MAINT)
        return SLOT_MAINT;
    if (admin & HAPI_ADMF_DRAIN)
        return SLOT_DRAIN;
    return SLOT_READY;
}

/* One CSV record of "show stat": fields separated by ',', a field may be
 * double-quoted with "" inside (HAProxy quotes strings that need it). */
static int split_csv(const char *line, size_t len, struct tok *tok, size_t max, size_t *n,
                     char *unq, size_t unqsize)
{
    size_t i = 0, u = 0;

    *n = 0;
    for (;;) {
        if (*n >= max)
            return -1;
        if (i < len && line[i] == '"') {
            size_t st = u;

            i++;
            for (;;) {
                if (i >= len)
                    return -1; /* unterminated quote */
                if (line[i] == '"') {
                    if (i + 1 < len && line[i + 1] == '"') {
                        if (u >= unqsize)
                            return -1;
                        unq[u++] = '"';
                        i += 2;
                        continue;
                    }
                    i++;
                    break;
                }
                if (u >= unqsize)
                    return -1;
                unq[u++] = line[i++];
            }
            tok[*n].s = unq + st;
            tok[*n].len = u - st;
            (*n)++;
            if (i == len)
                return 0;
            if (line[i] != ',')
                return -1;
            i++;
            continue;
        }
        {
            size_t st = i;

            while (i < len && line[i] != ',') {
                if (line[i] == '"')
                    return -1;
                i++;
            }
            tok[*n].s = line + st;
            tok[*n].len = i - st;
            (*n)++;
            if (i == len)
                return 0;
            i++;
        }
    }
}

int hapi_parse_stat(const char *text, size_t len, struct hapi_stat *out, size_t max, char *err,
                    size_t errlen)
{
    struct lines ls;
    const char *line;
    size_t llen, body, ncols, nrows = 0, lineno = 1;
    struct tok hdr[MAX_COLS], tok[MAX_COLS];
    char unq[4096], q[128];
    size_t c_px = SIZE_MAX, c_sv = SIZE_MAX, c_qcur = SIZE_MAX, c_scur = SIZE_MAX,
           c_status = SIZE_MAX;

    if (check_dump(text, len, &body, err, errlen) < 0)
        return -1;
    ls.p = text;
    ls.end = text + body;
    if (!next_line(&ls, &line, &llen) || llen < 2 || line[0] != '#' || line[1] != ' ' ||
        split_csv(line + 2, llen - 2, hdr, MAX_COLS, &ncols, unq, sizeof(unq)) < 0) {
        str_errf(err, errlen, "expected the \"# pxname,svname,...\" header, got %s",
                 excerpt(q, sizeof(q), text, body ? body - 1 : 0));
        return -1;
    }
    for (size_t c = 0; c < ncols; c++) {
        if (tok_is(&hdr[c], "pxname"))
            c_px = c;
        else if (tok_is(&hdr[c], "svname"))
            c_sv = c;
        else if (tok_is(&hdr[c], "qcur"))
            c_qcur = c;
        else if (tok_is(&hdr[c], "scur"))
            c_scur = c;
        else if (tok_is(&hdr[c], "status"))
            c_status = c;
    }
    /* The CSV's first two columns are fixed by the format. */
    if (c_px != 0 || c_sv != 1 || c_qcur == SIZE_MAX || c_scur == SIZE_MAX ||
        c_status == SIZE_MAX) {
        str_errf(err, errlen, "header lacks pxname,svname,qcur,scur,status");
        return -1;
    }
    while (next_line(&ls, &line, &llen)) {
        struct hapi_stat *s;
        size_t n;
        uint64_t v;

        lineno++;
        if (split_csv(line, llen, tok, MAX_COLS, &n, unq, sizeof(unq)) < 0 || n != ncols) {
            str_errf(err, errlen, "line %zu: expected %zu CSV fields: %s", lineno, ncols,
                     excerpt(q, sizeof(q), line, llen));
            return -1;
        }
        if (tok_is(&tok[c_sv], "FRONTEND") || tok_is(&tok[c_sv], "BACKEND")) {
            str_errf(err, errlen, "line %zu: not a server line (ask for type 4)", lineno);
            return -1;
        }
        if (nrows >= max) {
            str_errf(err, errlen, "more than %zu servers", max);
            return -1;
        }
        s = &out[nrows];
        memset(s, 0, sizeof(*s));
        if (copy_tok(s->pxname, sizeof(s->pxname), tok[c_px].s, tok[c_px].len) < 0 ||
            copy_tok(s->svname, sizeof(s->svname), tok[c_sv].s, tok[c_sv].len) < 0 ||
            copy_tok(s->status, sizeof(s->status), tok[c_status].s, tok[c_status].len) < 0 ||
            !visible(s->pxname, strlen(s->pxname), false) ||
            !visible(s->svname, strlen(s->svname), false) ||
            !visible(s->status, strlen(s->status), true)) {
            /* Quoted CSV fields may hold any byte; HAProxy names and states never do. */
            str_errf(err, errlen, "line %zu: bad pxname, svname or status", lineno);
            return -1;
        }
        if (parse_u64(tok[c_qcur].s, tok[c_qcur].len, UINT32_MAX, &v) < 0) {
            str_errf(err, errlen, "line %zu: bad qcur %s", lineno,
                     excerpt(q, sizeof(q), tok[c_qcur].s, tok[c_qcur].len));
            return -1;
        }
        s->qcur = (unsigned)v;
        if (parse_u64(tok[c_scur].s, tok[c_scur].len, UINT32_MAX, &v) < 0) {
            str_errf(err, errlen, "line %zu: bad scur %s", lineno,
                     excerpt(q, sizeof(q), tok[c_scur].s, tok[c_scur].len));
            return -1;
        }
        s->scur = (unsigned)v;
        nrows++;
    }
    return (int)nrows;
}

int hapi_parse_info(const char *text, size_t len, struct hapi_info *out, char *err, size_t errlen)
{
    struct lines ls;
    const char *line;
    size_t llen, body, lineno = 0;
    bool have_pid = false, have_up = false, have_start = false, have_ver = false;
    char q[128];

    memset(out, 0, sizeof(*out));
    if (check_dump(text, len, &body, err, errlen) < 0)
        return -1;
    ls.p = text;
    ls.end = text + body;
    while (next_line(&ls, &line, &llen)) {
        const char *colon = memchr(line, ':', llen);
        const char *val;
        size_t klen, vlen;
        uint64_t v;

        lineno++;
        /* "Key: value"; HAProxy prints "Key: " for an empty value. */
        if (!colon || colon == line || (size_t)(colon - line) + 2 > llen || colon[1] != ' ') {
            str_errf(err, errlen, "line %zu is not \"Key: value\": %s", lineno,
                     excerpt(q, sizeof(q), line, llen));
            return -1;
        }
        klen = (size_t)(colon - line);
        val = colon + 2;
        vlen = (size_t)(line + llen - val);
#define KEY(k) (klen == sizeof(k) - 1 && memcmp(line, k, klen) == 0)
        if (KEY("Pid") || KEY("Uptime_sec") || KEY("Start_time_sec")) {
            bool *have = KEY("Pid") ? &have_pid : KEY("Uptime_sec") ? &have_up : &have_start;

            if (*have || parse_u64(val, vlen, UINT64_MAX, &v) < 0) {
                str_errf(err, errlen, "line %zu: bad or repeated %.*s: %s", lineno, (int)klen, line,
                         excerpt(q, sizeof(q), val, vlen));
                return -1;
            }
            *have = true;
            if (KEY("Pid"))
                out->pid = v;
            else if (KEY("Uptime_sec"))
                out->uptime_sec = v;
            else
                out->start_time_sec = v;
        } else if (KEY("Version")) {
            /* Shown on the operator socket and in logs: printable ASCII only. */
            if (have_ver || !visible(val, vlen, true) ||
                copy_tok(out->version, sizeof(out->version), val, vlen) < 0) {
                str_errf(err, errlen, "line %zu: bad Version", lineno);
                return -1;
            }
            have_ver = true;
        }
#undef KEY
    }
    if (!have_pid || !have_up || out->pid == 0) {
        str_errf(err, errlen, "Pid or Uptime_sec missing");
        return -1;
    }
    return 0;
}

bool hapi_info_restarted(const struct hapi_info *prev, double prev_at, const struct hapi_info *cur,
                         double cur_at)
{
    double elapsed = cur_at - prev_at;

    if (prev->pid != cur->pid)
        return true;
    if (prev->start_time_sec && cur->start_time_sec && prev->start_time_sec != cur->start_time_sec)
        return true;
    if (cur->uptime_sec < prev->uptime_sec)
        return true;
    /* Same pid, uptime grew, but less than the time that passed: another
     * process that got the same pid (pid namespaces of containers). The
     * 2 s slack absorbs the whole-second rounding of both readings. */
    if (elapsed > 0 && (double)cur->uptime_sec + 2.0 < (double)prev->uptime_sec + elapsed)
        return true;
    return false;
}

static bool starts(const char **p, const char *end, const char *lit)
{
    size_t l = strlen(lit);

    if ((size_t)(end - *p) < l || memcmp(*p, lit, l) != 0)
        return false;
    *p += l;
    return true;
}

/* "'<value>'" with no quote inside. */
static bool quoted(const char **p, const char *end)
{
    const char *s = *p;

    if (s >= end || *s != '\'')
        return false;
    s++;
    while (s < end && *s != '\'') {
        if ((unsigned char)*s < 0x20)
            return false;
        s++;
    }
    if (s >= end)
        return false;
    *p = s + 1;
    return true;
}

int hapi_check_set_reply(enum hapi_set_kind kind, const char *text, size_t len, char *err,
                         size_t errlen)
{
    const char *p = text, *end;
    char q[160];

    if (kind == HAPI_SET_SILENT) {
        if (len == 1 && text[0] == '\n')
            return 0;
        str_errf(err, errlen, "expected an empty answer, got %s", excerpt(q, sizeof(q), text, len));
        return -1;
    }
    /* HAPI_SET_ADDR: one line, then the empty line (measured on 2.6.12):
     *   IP changed from 'A' to 'B', port changed from 'P' to 'Q' by 'stats socket command'
     *   no need to change the addr, no need to change the port by 'stats socket command'
     * and the mixes of both; without "port" in the command, no port part. */
    if (len < 3 || text[len - 1] != '\n' || text[len - 2] != '\n' || memchr(text, '\n', len - 2)) {
        str_errf(err, errlen, "expected one line and an empty line, got %s",
                 excerpt(q, sizeof(q), text, len));
        return -1;
    }
    end = text + len - 2;
    if (starts(&p, end, "IP changed from ")) {
        if (!quoted(&p, end) || !starts(&p, end, " to ") || !quoted(&p, end))
            goto bad;
    } else if (!starts(&p, end, "no need to change the addr")) {
        goto bad;
    }
    if (starts(&p, end, ", port changed from ")) {
        if (!quoted(&p, end) || !starts(&p, end, " to ") || !quoted(&p, end))
            goto bad;
    } else {
        (void)starts(&p, end, ", no need to change the port");
    }
    if (!starts(&p, end, " by 'stats socket command'") || p != end)
        goto bad;
    return 0;
bad:
    str_errf(err, errlen, "unexpected answer to set server addr: %s",
             excerpt(q, sizeof(q), text, len - 2));
    return -1;
}

/* ---- slots <-> HAProxy ------------------------------------------------------ */

int hapi_observe_backend(struct slot_state *slots, size_t *nslots, size_t max, enum pool_kind kind,
                         const struct hapi_server *rows, size_t nrows,
                         const struct hapi_stat *stats, size_t nstats, double now, char *err,
                         size_t errlen)
{
    size_t n = *nslots, w;
    bool *seen;

    if ((unsigned)kind >= POOL_KINDS)
        return -1;
    seen = calloc(n + nrows + 1, sizeof(*seen));
    if (!seen) {
        str_errf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t r = 0; r < nrows; r++) {
        const struct hapi_server *row = &rows[r];
        struct slot_seen sn;
        size_t s;

        if (strlen(row->srv_name) >= SLOT_NAME_MAX || strlen(row->addr) >= POOL_ADDR_MAX) {
            str_errf(err, errlen, "server name or address too long: %s", row->srv_name);
            free(seen);
            return -1;
        }
        for (s = 0; s < n; s++)
            if (slots[s].kind == kind && strcmp(slots[s].name, row->srv_name) == 0)
                break;
        if (s == n) {
            if (n >= max) {
                str_errf(err, errlen, "more than %zu slots", max);
                free(seen);
                return -1;
            }
            memset(&slots[n], 0, sizeof(slots[n]));
            slots[n].kind = kind;
            str_copy(slots[n].name, row->srv_name, sizeof(slots[n].name));
            /* Unknown before: never a match for the previous-address test. */
            slots[n].admin = SLOT_MAINT;
            n++;
        } else if (seen[s]) {
            str_errf(err, errlen, "server %s listed twice", row->srv_name);
            free(seen);
            return -1;
        }
        seen[s] = true;
        sn.addr = row->addr;
        sn.port = row->port;
        sn.weight = row->uweight;
        sn.admin = hapi_admin_decode(row->admin);
        reconcile_observe(&slots[s], &sn, now);
        for (size_t t = 0; t < nstats; t++) {
            if (strcmp(stats[t].svname, row->srv_name) == 0) {
                reconcile_observe_load(&slots[s], stats[t].scur, stats[t].qcur);
                break;
            }
        }
    }
    /* Slots of this backend that HAProxy no longer has (a reload with a
     * smaller template) leave the table. */
    w = 0;
    for (size_t s = 0; s < n; s++) {
        if (slots[s].kind == kind && !seen[s])
            continue;
        if (w != s)
            slots[w] = slots[s];
        w++;
    }
    *nslots = w;
    free(seen);
    return 0;
}

struct plan_run {
    struct hapi *h;
    struct plan_op *ops;
    size_t n, i;
    struct slot_state *slots;
    size_t nslots;
    hapi_plan_cb *cb;
    void *priv;
};

static void run_end(struct plan_run *run, int status, const char *err)
{
    run->cb(run->h, status, run->i, err, run->priv);
    free(run->ops);
    free(run);
}

static void run_step_cb(struct hapi *h, int status, const char *ans, size_t len, void *priv)
{
    struct plan_run *run = priv;
    const struct plan_op *op = &run->ops[run->i];
    char err[256];

    if (status != HAPI_OK) {
        run_end(run, status, hapi_strerror(status));
        return;
    }
    if (hapi_check_set_reply(op->action == PLAN_ADDR ? HAPI_SET_ADDR : HAPI_SET_SILENT, ans, len,
                             err, sizeof(err)) < 0) {
        hapi_report_error(h, op->cmd, HAPI_EANSWER, err);
        run_end(run, HAPI_EANSWER, err);
        return;
    }
    log_info("haproxy_slot_set", "cmd=\"%s\"", op->cmd);
    reconcile_apply_op(run->slots, run->nslots, op, now_mono());
    run->i++;
    if (run->i == run->n) {
        run_end(run, HAPI_OK, NULL);
        return;
    }
    if (hapi_command(h, run->ops[run->i].cmd, run_step_cb, run) < 0)
        run_end(run, HAPI_EABORT, "cannot queue the next command");
}

int hapi_apply_plan(struct hapi *h, const struct plan *p, struct slot_state *slots, size_t nslots,
                    hapi_plan_cb *cb, void *priv)
{
    struct plan_run *run;

    if (!p->n)
        return 1;
    run = calloc(1, sizeof(*run));
    if (!run)
        return -1;
    run->ops = malloc(p->n * sizeof(*run->ops));
    if (!run->ops) {
        free(run);
        return -1;
    }
    memcpy(run->ops, p->op, p->n * sizeof(*run->ops));
    run->h = h;
    run->n = p->n;
    run->slots = slots;
    run->nslots = nslots;
    run->cb = cb;
    run->priv = priv;
    if (hapi_command(h, run->ops[0].cmd, run_step_cb, run) < 0) {
        free(run->ops);
        free(run);
        return -1;
    }
    return 0;
}
