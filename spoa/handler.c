#include "handler.h"

#include <string.h>

#include "locale.h"

/* Variable names without scope and prefix: HAProxy adds "txn.cedra.". */
#define VAR_LOCALE "locale"
#define VAR_ACTION "action"
#define VAR_CACHE "cache"

/* What the decision needs from one cedra-req message; strings point into the
 * NOTIFY frame. */
struct request {
    const char *path;
    size_t path_len;
};

static bool arg_is(const char *n, size_t nl, const char *lit)
{
    return nl == strlen(lit) && memcmp(n, lit, nl) == 0;
}

static void read_request(struct spoe_msg *m, struct request *rq)
{
    const char *n;
    size_t nl;
    struct spoe_data d;

    memset(rq, 0, sizeof(*rq));
    while (spoe_arg_next(m, &n, &nl, &d) == 1) {
        /* A sample HAProxy could not fetch arrives as NULL: leave it empty. */
        if (d.type != SPOE_STR && d.type != SPOE_BIN)
            continue;
        if (arg_is(n, nl, "path")) {
            rq->path = d.u.s.ptr;
            rq->path_len = d.u.s.len;
        }
    }
}

static void put_str_var(struct spoe_wbuf *w, const char *name, const char *val, size_t len)
{
    struct spoe_data d = spoe_str(val, len);

    spoe_put_set_var(w, SPOE_SCOPE_TXN, name, strlen(name), &d);
}

static void decide(const struct request *rq, const struct spoa_conf *conf, struct spoe_wbuf *w,
                   struct handler_stats *st)
{
    int loc = locale_from_path(&conf->locales, rq->path, rq->path_len);

    if (loc >= 0) {
        put_str_var(w, VAR_LOCALE, conf->locales.name[loc], conf->locales.len[loc]);
        st->locale_found++;
    } else {
        st->locale_none++;
    }
    put_str_var(w, VAR_ACTION, "pass", 4);
    put_str_var(w, VAR_CACHE, "BYPASS", 6);
}

void handler_notify(struct spoe_req *req, struct spoe_cur msgs, const struct spoa_conf *conf,
                    uint8_t *scratch, size_t scratch_len, struct handler_stats *st)
{
    struct spoe_wbuf w;
    struct spoe_msg m;
    size_t room = spoe_req_max_actions(req);

    st->notifies++;
    spoe_wbuf_init(&w, scratch, room < scratch_len ? room : scratch_len);
    while (spoe_msg_next(&msgs, &m) == 1) {
        struct request rq;

        if (!arg_is(m.name, m.name_len, conf->message)) {
            st->other_messages++;
            continue;
        }
        st->requests++;
        read_request(&m, &rq);
        decide(&rq, conf, &w, st);
    }
    if (w.overflow) {
        /* HAProxy would reject an oversized ACK with DISCONNECT 3 and fail
         * every stream on the connection: answer with nothing instead, the
         * request passes to the origin. */
        st->ack_too_big++;
        w.len = 0;
    }
    spoe_req_ack(req, scratch, w.len);
}
