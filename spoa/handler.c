#include "handler.h"

#include <string.h>

#include "cookie.h"
#include "locale.h"

/* Variable names without scope and prefix: HAProxy adds "txn.cedra.". */
#define VAR_LOCALE "locale"
#define VAR_ACTION "action"
#define VAR_CACHE "cache"
#define VAR_LOCATION "location"
#define VAR_STATUS "status"

/* Longest redirect target we build; longer requests are passed unchanged. */
#define LOCATION_MAX 4096

struct str {
    const char *p;
    size_t len;
};

/* What the decision needs from one cedra-req message; strings point into the
 * NOTIFY frame. */
struct request {
    struct str method;
    struct str path;
    struct str query;
    struct str cookie;
    struct str accept_language;
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
        struct str v = {d.u.s.ptr, d.u.s.len};

        if (arg_is(n, nl, "path"))
            rq->path = v;
        else if (arg_is(n, nl, "method"))
            rq->method = v;
        else if (arg_is(n, nl, "query"))
            rq->query = v;
        else if (arg_is(n, nl, "cookie"))
            rq->cookie = v;
        else if (arg_is(n, nl, "accept_language"))
            rq->accept_language = v;
    }
}

static void put_str_var(struct spoe_wbuf *w, const char *name, const char *val, size_t len)
{
    struct spoe_data d = spoe_str(val, len);

    spoe_put_set_var(w, SPOE_SCOPE_TXN, name, strlen(name), &d);
}

static bool str_is(struct str s, const char *lit)
{
    return s.len == strlen(lit) && memcmp(s.p, lit, s.len) == 0;
}

/* The locale for an unprefixed page: a valid NEXT_LOCALE cookie, then
 * Accept-Language, then the default — the order Next.js itself uses. */
static int preferred_locale(const struct request *rq, const struct spoa_conf *conf)
{
    const char *v;
    size_t vl;
    int loc;

    if (rq->cookie.len && cookie_get(rq->cookie.p, rq->cookie.len, conf->locale_cookie, &v, &vl) &&
        (loc = locale_find(&conf->locales, v, vl)) >= 0)
        return loc;
    if (rq->accept_language.len &&
        (loc = locale_from_accept_language(&conf->locales, rq->accept_language.p,
                                           rq->accept_language.len)) >= 0)
        return loc;
    return (int)conf->locales.def;
}

/* Returns true when the request was answered with a locale redirect. */
static bool try_redirect(const struct request *rq, const struct spoa_conf *conf,
                         struct spoe_wbuf *w, struct handler_stats *st)
{
    char target[LOCATION_MAX];
    struct spoe_data code;
    int loc, n;

    /* Only safe methods: a redirected POST would lose or change its body. */
    if (!str_is(rq->method, "GET") && !str_is(rq->method, "HEAD"))
        return false;
    if (!locale_path_redirectable(conf->exclude, conf->nexclude, rq->path.p, rq->path.len))
        return false;
    loc = preferred_locale(rq, conf);
    n = locale_redirect_target(target, sizeof(target), conf->locales.name[loc],
                               conf->locales.len[loc], rq->path.p, rq->path.len, rq->query.p,
                               rq->query.len);
    if (n < 0) {
        st->redirect_refused++;
        return false;
    }
    put_str_var(w, VAR_LOCALE, conf->locales.name[loc], conf->locales.len[loc]);
    put_str_var(w, VAR_ACTION, "redirect", 8);
    put_str_var(w, VAR_LOCATION, target, (size_t)n);
    code = spoe_sint((int32_t)conf->redirect_code);
    spoe_put_set_var(w, SPOE_SCOPE_TXN, VAR_STATUS, strlen(VAR_STATUS), &code);
    put_str_var(w, VAR_CACHE, "BYPASS", 6);
    st->redirects++;
    return true;
}

static void decide(const struct request *rq, const struct spoa_conf *conf, struct spoe_wbuf *w,
                   struct handler_stats *st)
{
    int loc = locale_from_path(&conf->locales, rq->path.p, rq->path.len);

    if (loc >= 0) {
        put_str_var(w, VAR_LOCALE, conf->locales.name[loc], conf->locales.len[loc]);
        st->locale_found++;
    } else {
        st->locale_none++;
        if (try_redirect(rq, conf, w, st))
            return;
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
