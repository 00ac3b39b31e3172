"""Black-box SPOP 2.0 client, written from HAProxy's doc/SPOE.txt (section 3).

It shares nothing with the C codec in spoa/: the tests that use it check the
agent against the specification, not against its own encoder.

Wire summary (SPOE.txt 3.1, 3.2):
  frame       = <LENGTH:4 bytes, network order> <TYPE:1> <FLAGS:4, network order>
                <STREAM-ID:varint> <FRAME-ID:varint> <PAYLOAD>
  typed data  = <TYPE:low 4 bits | FLAGS:high 4 bits> <DATA>
  KV-LIST     = [ <NAME:varint length + bytes> <TYPED-DATA> ]*
  messages    = [ <NAME:varint length + bytes> <NB-ARGS:1> <KV-LIST of NB-ARGS> ]*
  actions     = [ <TYPE:1> <NB-ARGS:1> <SCOPE:1> <NAME:varint length + bytes> [<TYPED-DATA>] ]*

Python stdlib only.
"""

import ipaddress
import socket
import struct
import time

# ---- constants (SPOE.txt 3.2.2, 3.2, 3.4, 3.5) ---------------------------------

FRAME_UNSET = 0
FRAME_HAPROXY_HELLO = 1
FRAME_HAPROXY_DISCONNECT = 2
FRAME_NOTIFY = 3
FRAME_AGENT_HELLO = 101
FRAME_AGENT_DISCONNECT = 102
FRAME_ACK = 103

FRAME_NAMES = {
    FRAME_UNSET: "UNSET",
    FRAME_HAPROXY_HELLO: "HAPROXY-HELLO",
    FRAME_HAPROXY_DISCONNECT: "HAPROXY-DISCONNECT",
    FRAME_NOTIFY: "NOTIFY",
    FRAME_AGENT_HELLO: "AGENT-HELLO",
    FRAME_AGENT_DISCONNECT: "AGENT-DISCONNECT",
    FRAME_ACK: "ACK",
}

FLAG_FIN = 0x00000001
FLAG_ABORT = 0x00000002

T_NULL = 0
T_BOOL = 1
T_INT32 = 2
T_UINT32 = 3
T_INT64 = 4
T_UINT64 = 5
T_IPV4 = 6
T_IPV6 = 7
T_STRING = 8
T_BINARY = 9
TYPE_MASK = 0x0F
BOOL_TRUE_FLAG = 0x10  # first bit of the FLAGS nibble

ACTION_SET_VAR = 1
ACTION_UNSET_VAR = 2

SCOPE_PROC = 0
SCOPE_SESS = 1
SCOPE_TXN = 2
SCOPE_REQ = 3
SCOPE_RES = 4
SCOPE_NAMES = {0: "proc", 1: "sess", 2: "txn", 3: "req", 4: "res"}

# status codes, SPOE.txt 3.5
ST_NORMAL = 0
ST_IO = 1
ST_TIMEOUT = 2
ST_TOO_BIG = 3
ST_INVALID = 4
ST_NO_VSN = 5
ST_NO_FRAME_SIZE = 6
ST_NO_CAP = 7
ST_BAD_VSN = 8
ST_BAD_FRAME_SIZE = 9
ST_FRAG_NOT_SUPPORTED = 10
ST_INTERLACED_FRAMES = 11
ST_FRAMEID_NOTFOUND = 12
ST_RES = 13
ST_UNKNOWN = 99

MIN_FRAME_SIZE = 256
U64_MASK = (1 << 64) - 1


class SpopError(Exception):
    """Malformed bytes (decode) or a value that cannot be encoded."""


class Truncated(SpopError):
    """The buffer ends before the item does."""


# ---- typed integers: int subclasses so that the wire type survives a decode --


class _TypedInt(int):
    TYPE = None
    LO = 0
    HI = 0

    def __new__(cls, value):
        v = int.__new__(cls, value)
        if not cls.LO <= v <= cls.HI:
            raise SpopError("%s out of range: %d" % (cls.__name__, value))
        return v

    def __repr__(self):
        return "%s(%d)" % (type(self).__name__, int(self))


class Int32(_TypedInt):
    TYPE = T_INT32
    LO, HI = -(1 << 31), (1 << 31) - 1


class Uint32(_TypedInt):
    TYPE = T_UINT32
    LO, HI = 0, (1 << 32) - 1


class Int64(_TypedInt):
    TYPE = T_INT64
    LO, HI = -(1 << 63), (1 << 63) - 1


class Uint64(_TypedInt):
    TYPE = T_UINT64
    LO, HI = 0, (1 << 64) - 1


# ---- varint (SPOE.txt 3.1, "Peers encoding") ---------------------------------
#
#        0 <= X < 240       : 1 byte   [ XXXX XXXX ]
#      240 <= X < 2288      : 2 bytes  [ 1111 XXXX ] [ 0XXX XXXX ]
#     2288 <= X < 264432    : 3 bytes  [ 1111 XXXX ] [ 1XXX XXXX ] [ 0XXX XXXX ]
#   ...
# The first byte carries 4 bits above the 240 offset, each following byte 7
# bits with the high bit meaning "more follows"; every continuation byte also
# carries an implicit offset (that is what makes the ranges contiguous).

VARINT_MAX_LEN = 10


def encode_varint(value):
    if value < 0 or value > U64_MASK:
        raise SpopError("varint out of range: %r" % (value,))
    if value < 240:
        return bytes((value,))
    out = bytearray()
    out.append((value & 0x0F) | 0xF0)
    value = (value - 240) >> 4
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value = (value - 128) >> 7
    out.append(value)
    return bytes(out)


def decode_varint(buf, off=0):
    """Return (value, new offset). Raises Truncated / SpopError."""
    if off >= len(buf):
        raise Truncated("varint: empty")
    value = buf[off]
    off += 1
    if value < 240:
        return value, off
    shift = 4
    for _ in range(VARINT_MAX_LEN - 1):
        if off >= len(buf):
            raise Truncated("varint: truncated")
        b = buf[off]
        off += 1
        value += b << shift
        shift += 7
        if b < 128:
            if value > U64_MASK:
                raise SpopError("varint overflows 64 bits")
            return value, off
    raise SpopError("varint too long")


def varint_len(value):
    return len(encode_varint(value))


# ---- strings and typed data --------------------------------------------------


def encode_bytes(b):
    """<LENGTH:varint><BYTES>, as used for names (KV, message, variable)."""
    if isinstance(b, str):
        b = b.encode("utf-8")
    return encode_varint(len(b)) + bytes(b)


def decode_bytes(buf, off):
    n, off = decode_varint(buf, off)
    if off + n > len(buf):
        raise Truncated("string: %d bytes announced, %d left" % (n, len(buf) - off))
    return bytes(buf[off:off + n]), off + n


def encode_typed(value):
    """Python value -> TYPED-DATA.

    None -> NULL, bool -> BOOL, Int32/Uint32/Int64/Uint64 -> that type,
    plain int -> INT64 if negative else UINT64, IPv4Address -> IPV4,
    IPv6Address -> IPV6, str -> STRING, bytes/bytearray -> BINARY.
    Signed integers are sent as their 64-bit two's complement in a varint
    (what HAProxy does with negative sample integers).
    """
    if value is None:
        return bytes((T_NULL,))
    if isinstance(value, bool):
        return bytes((T_BOOL | (BOOL_TRUE_FLAG if value else 0),))
    if isinstance(value, _TypedInt):
        return bytes((value.TYPE,)) + encode_varint(int(value) & U64_MASK)
    if isinstance(value, int):
        if value < 0:
            return encode_typed(Int64(value))
        return encode_typed(Uint64(value))
    if isinstance(value, ipaddress.IPv4Address):
        return bytes((T_IPV4,)) + value.packed
    if isinstance(value, ipaddress.IPv6Address):
        return bytes((T_IPV6,)) + value.packed
    if isinstance(value, str):
        return bytes((T_STRING,)) + encode_bytes(value.encode("utf-8"))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes((T_BINARY,)) + encode_bytes(bytes(value))
    raise SpopError("cannot encode %r" % (value,))


def _signed64(u):
    return u - (1 << 64) if u & (1 << 63) else u


def decode_typed(buf, off):
    """Return (value, new offset). Types are as produced by encode_typed;
    STRING decodes to str (UTF-8, undecodable bytes kept via surrogateescape)."""
    if off >= len(buf):
        raise Truncated("typed data: empty")
    tb = buf[off]
    off += 1
    t = tb & TYPE_MASK
    if t == T_NULL:
        return None, off
    if t == T_BOOL:
        return bool(tb & BOOL_TRUE_FLAG), off
    if t in (T_INT32, T_UINT32, T_INT64, T_UINT64):
        u, off = decode_varint(buf, off)
        if t == T_INT32:
            s = _signed64(u)
            return Int32(s) if Int32.LO <= s <= Int32.HI else Int64(s), off
        if t == T_UINT32:
            if u > Uint32.HI:
                raise SpopError("UINT32 value too large: %d" % u)
            return Uint32(u), off
        if t == T_INT64:
            return Int64(_signed64(u)), off
        return Uint64(u), off
    if t == T_IPV4:
        if off + 4 > len(buf):
            raise Truncated("IPV4")
        return ipaddress.IPv4Address(bytes(buf[off:off + 4])), off + 4
    if t == T_IPV6:
        if off + 16 > len(buf):
            raise Truncated("IPV6")
        return ipaddress.IPv6Address(bytes(buf[off:off + 16])), off + 16
    if t == T_STRING:
        b, off = decode_bytes(buf, off)
        return b.decode("utf-8", "surrogateescape"), off
    if t == T_BINARY:
        b, off = decode_bytes(buf, off)
        return b, off
    raise SpopError("unknown data type %d" % t)


# ---- payloads ------------------------------------------------------------------


def encode_kv_list(items):
    """items: iterable of (name, value) or a dict."""
    if isinstance(items, dict):
        items = items.items()
    out = bytearray()
    for name, value in items:
        out += encode_bytes(name)
        out += encode_typed(value)
    return bytes(out)


def decode_kv_list(buf, off=0, end=None):
    """Return a list of (name:str, value)."""
    end = len(buf) if end is None else end
    buf = bytes(buf[:end])
    items = []
    while off < end:
        name, off = decode_bytes(buf, off)
        value, off = decode_typed(buf, off)
        items.append((name.decode("utf-8", "surrogateescape"), value))
    return items


def encode_messages(messages):
    """messages: list of (name, args) where args is a list of (name, value)
    or a dict. An unnamed argument has the name ""."""
    out = bytearray()
    for name, args in messages:
        if isinstance(args, dict):
            args = list(args.items())
        if len(args) > 255:
            raise SpopError("too many args")
        out += encode_bytes(name)
        out.append(len(args))
        out += encode_kv_list(args)
    return bytes(out)


def decode_messages(buf):
    off = 0
    msgs = []
    while off < len(buf):
        name, off = decode_bytes(buf, off)
        if off >= len(buf):
            raise Truncated("message: nb-args missing")
        nb = buf[off]
        off += 1
        args = []
        for _ in range(nb):
            an, off = decode_bytes(buf, off)
            av, off = decode_typed(buf, off)
            args.append((an.decode("utf-8", "surrogateescape"), av))
        msgs.append((name.decode("utf-8", "surrogateescape"), args))
    return msgs


class Action(object):
    """One action of an ACK: kind is "set-var" or "unset-var"."""

    __slots__ = ("kind", "scope", "name", "value")

    def __init__(self, kind, scope, name, value=None):
        self.kind, self.scope, self.name, self.value = kind, scope, name, value

    def __eq__(self, other):
        return (isinstance(other, Action) and
                (self.kind, self.scope, self.name, self.value) ==
                (other.kind, other.scope, other.name, other.value) and
                type(self.value) is type(other.value))

    def __repr__(self):
        return "Action(%s %s.%s=%r)" % (self.kind, SCOPE_NAMES.get(self.scope, self.scope),
                                        self.name, self.value)


def set_var(scope, name, value):
    return Action("set-var", scope, name, value)


def unset_var(scope, name):
    return Action("unset-var", scope, name)


def encode_actions(actions):
    out = bytearray()
    for a in actions:
        if a.kind == "set-var":
            out += bytes((ACTION_SET_VAR, 3, a.scope))
            out += encode_bytes(a.name)
            out += encode_typed(a.value)
        elif a.kind == "unset-var":
            out += bytes((ACTION_UNSET_VAR, 2, a.scope))
            out += encode_bytes(a.name)
        else:
            raise SpopError("unknown action %r" % (a.kind,))
    return bytes(out)


def decode_actions(buf):
    """LIST-OF-ACTIONS -> list of Action. Strict: NB-ARGS must be 3 for
    set-var and 2 for unset-var, the scope must be 0..4."""
    off = 0
    out = []
    buf = bytes(buf)
    while off < len(buf):
        if off + 3 > len(buf):
            raise Truncated("action header")
        atype, nb, scope = buf[off], buf[off + 1], buf[off + 2]
        off += 3
        if scope not in SCOPE_NAMES:
            raise SpopError("bad variable scope %d" % scope)
        name, off = decode_bytes(buf, off)
        name = name.decode("utf-8", "surrogateescape")
        if atype == ACTION_SET_VAR:
            if nb != 3:
                raise SpopError("set-var with %d args" % nb)
            value, off = decode_typed(buf, off)
            out.append(Action("set-var", scope, name, value))
        elif atype == ACTION_UNSET_VAR:
            if nb != 2:
                raise SpopError("unset-var with %d args" % nb)
            out.append(Action("unset-var", scope, name))
        else:
            raise SpopError("unknown action type %d" % atype)
    return out


# ---- frames --------------------------------------------------------------------


class Frame(object):
    __slots__ = ("type", "flags", "stream_id", "frame_id", "payload")

    def __init__(self, ftype, flags, stream_id, frame_id, payload=b""):
        self.type, self.flags = ftype, flags
        self.stream_id, self.frame_id, self.payload = stream_id, frame_id, bytes(payload)

    @property
    def fin(self):
        return bool(self.flags & FLAG_FIN)

    @property
    def abort(self):
        return bool(self.flags & FLAG_ABORT)

    def kv(self):
        return dict(decode_kv_list(self.payload))

    def actions(self):
        return decode_actions(self.payload)

    def messages(self):
        return decode_messages(self.payload)

    def __repr__(self):
        return "Frame(%s flags=%#x sid=%d fid=%d len=%d)" % (
            FRAME_NAMES.get(self.type, str(self.type)), self.flags,
            self.stream_id, self.frame_id, len(self.payload))


def encode_frame(ftype, payload=b"", stream_id=0, frame_id=0, flags=FLAG_FIN):
    """Whole frame including the 4-byte length prefix."""
    body = (bytes((ftype,)) + struct.pack("!I", flags) + encode_varint(stream_id) +
            encode_varint(frame_id) + bytes(payload))
    return struct.pack("!I", len(body)) + body


def decode_frame_body(body):
    """body = frame without its length prefix."""
    if len(body) < 5:
        raise Truncated("frame header")
    ftype = body[0]
    (flags,) = struct.unpack("!I", bytes(body[1:5]))
    sid, off = decode_varint(body, 5)
    fid, off = decode_varint(body, off)
    return Frame(ftype, flags, sid, fid, body[off:])


def split_frames(buf):
    """Return (list of Frame, remaining bytes) for a byte stream."""
    frames = []
    off = 0
    while len(buf) - off >= 4:
        (n,) = struct.unpack("!I", bytes(buf[off:off + 4]))
        if len(buf) - off - 4 < n:
            break
        frames.append(decode_frame_body(bytes(buf[off + 4:off + 4 + n])))
        off += 4 + n
    return frames, bytes(buf[off:])


def haproxy_hello(max_frame_size=16380, versions="2.0", capabilities="pipelining,async",
                  healthcheck=None, engine_id="cedra-test-engine", extra=None, omit=()):
    """HAPROXY-HELLO frame. `omit` drops mandatory keys (to test errors);
    `extra` appends more (name, value) items."""
    items = []
    if "supported-versions" not in omit:
        items.append(("supported-versions", versions))
    if "max-frame-size" not in omit:
        items.append(("max-frame-size", Uint32(max_frame_size)))
    if "capabilities" not in omit:
        items.append(("capabilities", capabilities))
    if healthcheck is not None:
        items.append(("healthcheck", bool(healthcheck)))
    if engine_id is not None and "engine-id" not in omit:
        items.append(("engine-id", engine_id))
    if extra:
        items.extend(extra)
    return encode_frame(FRAME_HAPROXY_HELLO, encode_kv_list(items))


def haproxy_disconnect(status=ST_NORMAL, message="normal"):
    return encode_frame(FRAME_HAPROXY_DISCONNECT,
                        encode_kv_list([("status-code", Uint32(status)), ("message", message)]))


def notify(stream_id, frame_id, messages, flags=FLAG_FIN):
    return encode_frame(FRAME_NOTIFY, encode_messages(messages), stream_id, frame_id, flags)


def fragmented_notify(stream_id, frame_id, messages, chunk, abort=False):
    """List of frames carrying one NOTIFY payload split in `chunk`-byte pieces:
    NOTIFY without FIN, UNSET frames, the last with FIN (and ABORT if asked)."""
    payload = encode_messages(messages)
    pieces = [payload[i:i + chunk] for i in range(0, len(payload), chunk)]
    if len(pieces) < 2:
        raise SpopError("payload of %d bytes does not need fragmentation" % len(payload))
    frames = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        ftype = FRAME_NOTIFY if i == 0 else FRAME_UNSET
        flags = (FLAG_FIN | (FLAG_ABORT if abort else 0)) if last else 0
        frames.append(encode_frame(ftype, piece, stream_id, frame_id, flags))
    return frames


def ack(stream_id, frame_id, actions, flags=FLAG_FIN):
    """An ACK as an agent would send it (for client self-tests)."""
    return encode_frame(FRAME_ACK, encode_actions(actions), stream_id, frame_id, flags)


def agent_disconnect(status, message):
    return encode_frame(FRAME_AGENT_DISCONNECT,
                        encode_kv_list([("status-code", Uint32(status)), ("message", message)]))


def caps_set(s):
    """Parse a capabilities string: comma-separated, spaces ignored."""
    return set(c.strip() for c in (s or "").split(",") if c.strip())


# ---- connection ------------------------------------------------------------------


class Closed(Exception):
    """The peer closed (EOF) or reset the connection."""


class Connection(object):
    """A blocking SPOP connection with a receive buffer.

    addr is (host, port) for TCP or a filesystem path (str) for a UNIX socket.
    """

    def __init__(self, addr, timeout=5.0):
        self.timeout = timeout
        if isinstance(addr, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
            self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(addr)
        if not isinstance(addr, str):
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.max_frame_size = None
        self.agent_hello = None

    # -- sending
    def send(self, data):
        self.sock.sendall(data)

    def send_bytewise(self, data, pause=0.0005):
        for i in range(len(data)):
            self.sock.sendall(data[i:i + 1])
            if pause:
                time.sleep(pause)

    def shutdown_write(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- receiving
    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out waiting for data")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            self.eof = self.reset = True
            raise Closed("connection reset by peer")
        if not data:
            self.eof = True
            return
        self.buf += data

    def recv_frame(self, timeout=None, max_len=1 << 24):
        """Next frame; raises Closed on EOF/reset, socket.timeout on timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack("!I", bytes(self.buf[:4]))
                if n > max_len:
                    raise SpopError("peer announced a %d-byte frame" % n)
                if len(self.buf) >= 4 + n:
                    body = bytes(self.buf[4:4 + n])
                    del self.buf[:4 + n]
                    return decode_frame_body(body)
            if self.eof:
                if self.buf and not self.reset:
                    raise SpopError("peer closed after %d bytes of a partial frame" % len(self.buf))
                raise Closed("connection %s by peer" % ("reset" if self.reset else "closed"))
            self._fill(deadline)

    def expect_close(self, timeout=None):
        """Wait for EOF/reset; returns the frames received before it."""
        frames = []
        while True:
            try:
                frames.append(self.recv_frame(timeout))
            except Closed:
                return frames

    def is_closed_within(self, timeout):
        try:
            self.expect_close(timeout)
            return True
        except socket.timeout:
            return False

    # -- protocol helpers
    def hello(self, max_frame_size=16380, capabilities="pipelining,async", **kw):
        """Send HAPROXY-HELLO, return the AGENT-HELLO KV dict (raise otherwise)."""
        self.send(haproxy_hello(max_frame_size=max_frame_size, capabilities=capabilities, **kw))
        f = self.recv_frame()
        if f.type != FRAME_AGENT_HELLO:
            detail = f.kv() if f.type == FRAME_AGENT_DISCONNECT else f
            raise SpopError("expected AGENT-HELLO, got %r %r" % (f, detail))
        kv = f.kv()
        self.agent_hello = kv
        self.max_frame_size = int(kv.get("max-frame-size", 0))
        return kv

    def notify(self, stream_id, frame_id, messages):
        self.send(notify(stream_id, frame_id, messages))

    def ack_for(self, stream_id, frame_id, timeout=None):
        """Receive the next frame; it must be the ACK of (stream_id, frame_id)."""
        f = self.recv_frame(timeout)
        if f.type != FRAME_ACK or (f.stream_id, f.frame_id) != (stream_id, frame_id):
            detail = f.kv() if f.type == FRAME_AGENT_DISCONNECT else ""
            raise SpopError("expected ACK %d/%d, got %r %s" % (stream_id, frame_id, f, detail))
        return f.actions()


def actions_to_vars(actions, scope=SCOPE_TXN):
    """Apply actions in order and return {name: value} for `scope`."""
    out = {}
    for a in actions:
        if a.scope != scope:
            continue
        if a.kind == "set-var":
            out[a.name] = a.value
        else:
            out.pop(a.name, None)
    return out


def cedra_req(path="/", method="GET", query=None, host="shop.example", cookie=None,
              accept_language=None, src="127.0.0.1"):
    """The `cedra-req` message as haproxy/cedra-spoe.conf sends it (absent
    samples are NULL)."""
    if isinstance(src, str):
        src = ipaddress.ip_address(src)
    return ("cedra-req", [
        ("method", method),
        ("path", path),
        ("query", query),
        ("host", host),
        ("cookie", cookie),
        ("accept_language", accept_language),
        ("src", src),
    ])
