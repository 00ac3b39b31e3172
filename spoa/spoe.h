/*
 * libspoe: the SPOP 2.0 codec and connection engine (HAProxy doc/SPOE.txt).
 *
 * Two layers, usable separately:
 *   - the codec: varints, typed data, KV lists, frames, HELLO parsing, message
 *     iteration and ACK/action encoding. Pure functions over caller buffers,
 *     no allocation, every input bounded by an explicit end pointer.
 *   - the engine: one struct spoe_conn per accepted socket on a libev loop,
 *     doing the HELLO handshake, reassembly of fragmented NOTIFYs, pipelining
 *     (out-of-order ACKs), protocol errors (AGENT-DISCONNECT) and graceful
 *     shutdown. Business logic lives in the on_notify callback.
 *
 * libspoe depends on libev and libc only; nothing of cedra-edge.
 */
#ifndef CEDRA_SPOE_H
#define CEDRA_SPOE_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ev_loop;

#define SPOE_VERSION "2.0"
#define SPOE_FRAME_MIN 256u                        /* smallest max-frame-size the spec allows */
#define SPOE_FRAME_MAX (1u << 24)                  /* largest frame we ever accept to negotiate */
#define SPOE_VARINT_MAX 10                         /* bytes of the longest (64-bit) varint */
#define SPOE_HDR_MAX (1 + 4 + 2 * SPOE_VARINT_MAX) /* type, flags, two ids */

enum spoe_frame_type {
    SPOE_FRM_UNSET = 0,
    SPOE_FRM_HAPROXY_HELLO = 1,
    SPOE_FRM_HAPROXY_DISCONNECT = 2,
    SPOE_FRM_NOTIFY = 3,
    SPOE_FRM_AGENT_HELLO = 101,
    SPOE_FRM_AGENT_DISCONNECT = 102,
    SPOE_FRM_ACK = 103,
};

#define SPOE_FL_FIN 0x00000001u
#define SPOE_FL_ABORT 0x00000002u

/* Status codes of DISCONNECT frames (SPOE.txt 3.5). */
enum spoe_status {
    SPOE_ST_NONE = 0,
    SPOE_ST_IO = 1,
    SPOE_ST_TIMEOUT = 2,
    SPOE_ST_TOO_BIG = 3,
    SPOE_ST_INVALID = 4,
    SPOE_ST_NO_VSN = 5,
    SPOE_ST_NO_FRAME_SIZE = 6,
    SPOE_ST_NO_CAP = 7,
    SPOE_ST_BAD_VSN = 8,
    SPOE_ST_BAD_FRAME_SIZE = 9,
    SPOE_ST_FRAG_NOT_SUPPORTED = 10,
    SPOE_ST_INTERLACED_FRAMES = 11,
    SPOE_ST_FRAMEID_NOTFOUND = 12,
    SPOE_ST_RES_ALLOC = 13,
    SPOE_ST_UNKNOWN = 99,
};

enum spoe_type {
    SPOE_NULL = 0,
    SPOE_BOOL = 1,
    SPOE_INT32 = 2,
    SPOE_UINT32 = 3,
    SPOE_INT64 = 4,
    SPOE_UINT64 = 5,
    SPOE_IPV4 = 6,
    SPOE_IPV6 = 7,
    SPOE_STR = 8,
    SPOE_BIN = 9,
};

enum spoe_scope {
    SPOE_SCOPE_PROC = 0,
    SPOE_SCOPE_SESS = 1,
    SPOE_SCOPE_TXN = 2,
    SPOE_SCOPE_REQ = 3,
    SPOE_SCOPE_RES = 4,
};

enum spoe_action { SPOE_ACT_SET_VAR = 1, SPOE_ACT_UNSET_VAR = 2 };

/* A typed value. Strings and binaries point into the frame they were decoded
 * from (zero copy): valid only as long as that frame's bytes are. */
struct spoe_data {
    enum spoe_type type;
    union {
        bool b;
        int32_t i32;
        uint32_t u32;
        int64_t i64;
        uint64_t u64;
        struct in_addr v4;
        struct in6_addr v6;
        struct {
            const char *ptr;
            size_t len;
        } s; /* SPOE_STR and SPOE_BIN */
    } u;
};

/* ---- codec: decoding ---------------------------------------------------- */

/* A read cursor over untrusted bytes. Every getter returns 0 on success and -1
 * when the bytes are truncated or malformed; on error the cursor is left where
 * it was. */
struct spoe_cur {
    const uint8_t *p;
    const uint8_t *end;
};

/* Decodes one varint. Returns the number of bytes used, or -1 when truncated
 * or longer than 10 bytes / 64 bits. */
int spoe_varint_decode(const uint8_t *p, size_t len, uint64_t *v);
int spoe_get_varint(struct spoe_cur *c, uint64_t *v);
int spoe_get_str(struct spoe_cur *c, const char **s, size_t *len);
int spoe_get_data(struct spoe_cur *c, struct spoe_data *d);
/* One KV-LIST item. Returns 1 with an item, 0 at the end of the list, -1 on
 * malformed bytes. */
int spoe_kv_next(struct spoe_cur *c, const char **name, size_t *nlen, struct spoe_data *val);

/* A frame as received, without its 4-byte length prefix. */
struct spoe_frame {
    uint8_t type;
    uint32_t flags;
    uint64_t stream_id;
    uint64_t frame_id;
    const uint8_t *payload;
    size_t len;
};

/* Returns 0, or SPOE_ST_INVALID when the metadata is truncated/malformed. */
int spoe_frame_parse(const uint8_t *buf, size_t len, struct spoe_frame *f);

/* The items of a HAPROXY-HELLO we act on. Strings point into the frame. */
struct spoe_hello {
    const char *versions;
    size_t versions_len;
    const char *caps;
    size_t caps_len;
    const char *engine_id;
    size_t engine_id_len;
    uint32_t max_frame_size;
    bool healthcheck;
};

/* Parses and validates a HAPROXY-HELLO payload. Returns SPOE_ST_NONE or the
 * status code the agent must answer with in an AGENT-DISCONNECT
 * (invalid, version/max-frame-size/capabilities missing, bad version). */
enum spoe_status spoe_hello_parse(const uint8_t *payload, size_t len, struct spoe_hello *h);

/* True when a comma-separated list (spaces ignored) holds the item. */
bool spoe_list_has(const char *list, size_t len, const char *item);
/* True when the comma-separated "Major.Minor" list holds a 2.x version. */
bool spoe_version_ok(const char *list, size_t len);

/* One message of a NOTIFY payload. spoe_msg_next validates every argument of
 * the message before returning it, so iterating m->args cannot fail. */
struct spoe_msg {
    const char *name;
    size_t name_len;
    unsigned nargs;
    struct spoe_cur args;
};

/* Returns 1 with a message, 0 at the end, -1 on malformed bytes. */
int spoe_msg_next(struct spoe_cur *c, struct spoe_msg *m);
/* Returns 1 with an argument (name may be empty), 0 after the last one. */
int spoe_arg_next(struct spoe_msg *m, const char **name, size_t *nlen, struct spoe_data *val);
/* Walks a whole NOTIFY payload; 0 when every message is well formed. */
int spoe_notify_validate(const uint8_t *payload, size_t len);

/* ---- codec: encoding ---------------------------------------------------- */

/* Returns the bytes written (1..10), or -1 when room is too small. */
int spoe_varint_encode(uint64_t v, uint8_t *buf, size_t room);

/* A write buffer that never overflows: once a put does not fit, `overflow`
 * sticks and later puts are no-ops, so a sequence of puts is checked once. */
struct spoe_wbuf {
    uint8_t *buf;
    size_t cap;
    size_t len;
    bool overflow;
};

void spoe_wbuf_init(struct spoe_wbuf *w, uint8_t *buf, size_t cap);
void spoe_put_varint(struct spoe_wbuf *w, uint64_t v);
void spoe_put_bytes(struct spoe_wbuf *w, const void *p, size_t len);
void spoe_put_str(struct spoe_wbuf *w, const char *s, size_t len);
void spoe_put_data(struct spoe_wbuf *w, const struct spoe_data *d);
void spoe_put_kv(struct spoe_wbuf *w, const char *name, const struct spoe_data *d);
void spoe_put_set_var(struct spoe_wbuf *w, enum spoe_scope scope, const char *name, size_t nlen,
                      const struct spoe_data *d);
void spoe_put_unset_var(struct spoe_wbuf *w, enum spoe_scope scope, const char *name, size_t nlen);

/* Starts a frame (4-byte length placeholder + metadata). */
void spoe_frame_begin(struct spoe_wbuf *w, uint8_t type, uint32_t flags, uint64_t stream_id,
                      uint64_t frame_id);
/* Fills in the length of the frame started at offset `start`. Returns the
 * total bytes of the frame including the prefix, or -1 on overflow or when
 * the frame exceeds max_frame. */
long spoe_frame_end(struct spoe_wbuf *w, size_t start, uint32_t max_frame);

/* Helpers to build typed data. */
static inline struct spoe_data spoe_str(const char *s, size_t len)
{
    struct spoe_data d = {.type = SPOE_STR};
    d.u.s.ptr = s;
    d.u.s.len = len;
    return d;
}

static inline struct spoe_data spoe_bin(const void *p, size_t len)
{
    struct spoe_data d = {.type = SPOE_BIN};
    d.u.s.ptr = (const char *)p;
    d.u.s.len = len;
    return d;
}

static inline struct spoe_data spoe_sint(int32_t v)
{
    struct spoe_data d = {.type = SPOE_INT32};
    d.u.i32 = v;
    return d;
}

static inline struct spoe_data spoe_uint(uint32_t v)
{
    struct spoe_data d = {.type = SPOE_UINT32};
    d.u.u32 = v;
    return d;
}

static inline struct spoe_data spoe_bool(bool v)
{
    struct spoe_data d = {.type = SPOE_BOOL};
    d.u.b = v;
    return d;
}

const char *spoe_status_str(enum spoe_status st);

/* ---- engine ------------------------------------------------------------- */

struct spoe_conn;
struct spoe_req;

/* What the engine reports for logs and metrics. */
enum spoe_event_kind {
    SPOE_EV_HELLO,       /* handshake done (healthcheck or not) */
    SPOE_EV_DISCONNECT,  /* HAProxy sent HAPROXY-DISCONNECT */
    SPOE_EV_ERROR,       /* we sent AGENT-DISCONNECT with an error status */
    SPOE_EV_CLOSED,      /* socket closed (reset, EOF or after a DISCONNECT) */
    SPOE_EV_ABORTED,     /* HAProxy aborted a fragmented NOTIFY */
    SPOE_EV_ACK_TOO_BIG, /* an ACK exceeded the frame: sent empty instead */
};

struct spoe_event {
    enum spoe_event_kind kind;
    enum spoe_status status;
    const char *message; /* static text; for DISCONNECT, HAProxy's (not NUL-terminated) */
    size_t message_len;
    const struct spoe_hello *hello; /* SPOE_EV_HELLO only */
};

struct spoe_conn_cfg {
    uint32_t max_frame_size; /* ours; the negotiated one is min(ours, HAProxy's) */
    size_t max_reassembly;   /* largest reassembled NOTIFY payload */
    unsigned max_inflight;   /* NOTIFYs pending per connection before we stop reading */
    double hello_timeout;    /* seconds to receive HAPROXY-HELLO */
    double idle_timeout;     /* seconds of silence before closing (0: never) */
    bool pipelining;         /* announce pipelining */
    bool fragmentation;      /* announce (and accept) fragmented NOTIFYs */
    /* A complete NOTIFY. `msgs` iterates its messages; their bytes live until
     * the callback returns. The request must be completed exactly once with
     * spoe_req_ack(), now or later on the same loop. */
    void (*on_notify)(struct spoe_req *req, struct spoe_cur msgs, void *udata);
    void (*on_event)(struct spoe_conn *conn, const struct spoe_event *ev, void *udata);
    /* Called once, just before the connection is freed. */
    void (*on_free)(struct spoe_conn *conn, void *udata);
    void *udata;
};

/* Takes ownership of a connected, non-blocking socket. cfg must outlive the
 * connection. Returns NULL (and closes fd) on allocation failure. */
struct spoe_conn *spoe_conn_new(struct ev_loop *loop, int fd, const struct spoe_conn_cfg *cfg);

/* Graceful end: stop reading, let pending ACKs go out, then send an
 * AGENT-DISCONNECT (status 0) and close. */
void spoe_conn_shutdown(struct spoe_conn *conn);
/* Immediate close (pending requests become orphans: their ACK is dropped). */
void spoe_conn_close(struct spoe_conn *conn);

/* One pointer of the application's, e.g. its bookkeeping node. */
void spoe_conn_set_udata(struct spoe_conn *conn, void *udata);
void *spoe_conn_udata(const struct spoe_conn *conn);

unsigned spoe_conn_inflight(const struct spoe_conn *conn);
uint32_t spoe_conn_frame_size(const struct spoe_conn *conn);
const char *spoe_conn_engine_id(const struct spoe_conn *conn);

uint64_t spoe_req_stream_id(const struct spoe_req *req);
uint64_t spoe_req_frame_id(const struct spoe_req *req);
/* Largest actions payload an ACK for this request can carry. */
size_t spoe_req_max_actions(const struct spoe_req *req);
/* False once the connection is gone: the ACK would be dropped. */
bool spoe_req_alive(const struct spoe_req *req);

/* Completes a request with a LIST-OF-ACTIONS built with spoe_put_set_var /
 * spoe_put_unset_var (may be empty). Frees req. Returns 0 when queued, -1 when
 * the actions did not fit (an empty ACK is sent instead so that HAProxy does
 * not wait), -2 when the connection was already gone. */
int spoe_req_ack(struct spoe_req *req, const uint8_t *actions, size_t len);

#endif
