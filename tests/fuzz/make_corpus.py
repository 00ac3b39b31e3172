#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz/fuzz_spoe_frame.c.

Each seed is one SPOP frame as the agent receives it, without the 4-byte
length prefix. The encoder below follows HAProxy's doc/SPOE.txt on its own,
independently of spoa/spoe_codec.c, so that seeds do not inherit its bugs.
Output is deterministic: running it again rewrites identical files.

Usage: make_corpus.py [OUTDIR]   (default: corpus/spoe_frame next to this file)
"""
import os
import sys

HELLO, DISCONNECT, NOTIFY = 1, 2, 3
AGENT_HELLO, AGENT_DISCONNECT, ACK = 101, 102, 103
FIN, ABORT = 0x1, 0x2


def varint(v):
    # Peers encoding: 4 bits in the first byte, then 7 bits per byte, each
    # range starting where the previous one ends.
    if v < 240:
        return bytes([v])
    out = [(v | 0xF0) & 0xFF]
    v = (v - 240) >> 4
    while v >= 128:
        out.append((v | 0x80) & 0xFF)
        v = (v - 128) >> 7
    out.append(v)
    return bytes(out)


def s(text):
    b = text.encode() if isinstance(text, str) else bytes(text)
    return varint(len(b)) + b


def null():
    return b"\x00"


def boolean(v):
    return b"\x11" if v else b"\x01"


def int32(v):
    return b"\x02" + varint(v & 0xFFFFFFFFFFFFFFFF)


def uint32(v):
    return b"\x03" + varint(v)


def int64(v):
    return b"\x04" + varint(v & 0xFFFFFFFFFFFFFFFF)


def uint64(v):
    return b"\x05" + varint(v)


def ipv4(a, b, c, d):
    return b"\x06" + bytes([a, b, c, d])


def ipv6(hexstr):
    raw = bytes.fromhex(hexstr)
    assert len(raw) == 16
    return b"\x07" + raw


def string(text):
    return b"\x08" + s(text)


def binary(raw):
    return b"\x09" + s(raw)


def kv(items):
    return b"".join(s(name) + value for name, value in items)


def message(name, args):
    assert len(args) < 256
    return s(name) + bytes([len(args)]) + kv(args)


def frame(ftype, flags, sid, fid, payload):
    return bytes([ftype]) + flags.to_bytes(4, "big") + varint(sid) + varint(fid) + payload


UUID = "8c4fe1a4-6a6d-4b1c-9e0b-2f6a3c1d5e77"


def hello_items(versions="2.0", mfs=uint32(16380), caps="pipelining,async", extra=()):
    items = []
    if versions is not None:
        items.append(("supported-versions", string(versions)))
    if mfs is not None:
        items.append(("max-frame-size", mfs))
    if caps is not None:
        items.append(("capabilities", string(caps)))
    items.extend(extra)
    return kv(items)


def request_args(src):
    return [
        ("method", string("GET")),
        ("path", string("/fr/products/chair")),
        ("query", string("utm_source=x&page=2")),
        ("host", string("shop.example.com")),
        ("cookie", string("NEXT_LOCALE=fr; sid=3f9a1c0e7b2d4a6f8e1c0b9a7d6e5f40; _ga=GA1.2.1")),
        ("accept-language", string("nl-BE,nl;q=0.9,en;q=0.8,fr;q=0.7")),
        ("src", src),
    ]


def seeds():
    out = {}

    # HELLO exactly as HAProxy 2.6 sends it, then variants.
    real_hello = frame(HELLO, FIN, 0, 0,
                       hello_items(extra=[("engine-id", string(UUID))]))
    out["hello_real"] = real_hello
    out["hello_healthcheck"] = frame(HELLO, FIN, 0, 0, hello_items(
        caps="", extra=[("healthcheck", boolean(True))]))
    out["hello_healthcheck_false"] = frame(HELLO, FIN, 0, 0, hello_items(
        extra=[("healthcheck", boolean(False)), ("engine-id", string(UUID))]))
    out["hello_versions_list"] = frame(HELLO, FIN, 0, 0, hello_items(versions=" 2.1 ,1.0"))
    out["hello_bad_version"] = frame(HELLO, FIN, 0, 0, hello_items(versions="1.0"))
    out["hello_no_versions"] = frame(HELLO, FIN, 0, 0, hello_items(versions=None))
    out["hello_no_frame_size"] = frame(HELLO, FIN, 0, 0, hello_items(mfs=None))
    out["hello_no_caps"] = frame(HELLO, FIN, 0, 0, hello_items(caps=None))
    out["hello_frame_size_str"] = frame(HELLO, FIN, 0, 0, hello_items(mfs=string("16380")))
    out["hello_frame_size_u64"] = frame(HELLO, FIN, 0, 0, hello_items(mfs=uint64(1 << 32)))
    out["hello_frame_size_min"] = frame(HELLO, FIN, 0, 0, hello_items(mfs=uint32(256)))
    out["hello_unknown_item"] = frame(HELLO, FIN, 0, 0, hello_items(
        caps="pipelining, async, fragmentation", extra=[("future", binary(b"\x00\x01"))]))
    out["hello_truncated_mid_item"] = real_hello[:7 + 30]
    out["hello_truncated_in_uuid"] = real_hello[:-10]

    # NOTIFY as the cedra-spoa SPOE file sends it: one message per request.
    req_v4 = message("cedra-req", request_args(ipv4(192, 0, 2, 33)))
    req_v6 = message("cedra-req", request_args(ipv6("20010db8000000000000000000000021")))
    notify_v4 = frame(NOTIFY, FIN, 12, 1, req_v4)
    out["notify_request_ipv4"] = notify_v4
    out["notify_request_ipv6"] = frame(NOTIFY, FIN, 4242, 7, req_v6)
    out["notify_two_messages"] = frame(NOTIFY, FIN, 300, 2288, req_v4 + message(
        "log", [("", uint32(300)), ("flag", boolean(True)), ("n", null())]))
    out["notify_unnamed_args"] = frame(NOTIFY, FIN, 1, 1, message(
        "check-client-ip", [("", ipv4(10, 0, 0, 1)), ("", string("GET"))]))
    out["notify_all_types"] = frame(NOTIFY, FIN, 2, 3, message("types", [
        ("null", null()), ("t", boolean(True)), ("f", boolean(False)),
        ("i32", int32(-2)), ("u32", uint32(0xFFFFFFFF)), ("i64", int64(-(1 << 63))),
        ("u64", uint64((1 << 64) - 1)), ("v4", ipv4(127, 0, 0, 1)),
        ("v6", ipv6("00000000000000000000000000000001")), ("s", string("")),
        ("b", binary(bytes(range(32)))),
    ]))
    # HAProxy sends NULL for a sample that is not available (no cookie).
    out["notify_null_samples"] = frame(NOTIFY, FIN, 5, 1, message("cedra-req", [
        ("method", string("HEAD")), ("path", string("/")), ("cookie", null()),
        ("accept-language", null()), ("src", ipv4(198, 51, 100, 7))]))
    out["notify_zero_args"] = frame(NOTIFY, FIN, 1, 1, message("ping", []))
    out["notify_empty"] = frame(NOTIFY, FIN, 1, 1, b"")
    out["notify_long_path"] = frame(NOTIFY, FIN, 9, 9, message("cedra-req", [
        ("path", string("/fr/" + "a" * 300)), ("host", string("shop.example.com"))]))
    out["notify_nargs_255"] = frame(NOTIFY, FIN, 1, 1,
                                    s("msg") + b"\xff" + s("a") + uint32(5))
    out["notify_reserved_type"] = frame(NOTIFY, FIN, 1, 1,
                                        s("msg") + b"\x01" + s("a") + b"\x0a\x00")
    out["notify_i32_wide"] = frame(NOTIFY, FIN, 1, 1, message(
        "m", [("a", b"\x02" + varint(1 << 32)), ("b", b"\x03" + varint((1 << 32) + 5))]))
    out["notify_truncated_string"] = notify_v4[:-20]
    out["notify_truncated_after_name"] = frame(NOTIFY, FIN, 1, 1, s("cedra-req"))

    # HAProxy 2.6 fragments a NOTIFY larger than the frame: first fragment
    # without FIN, then UNSET frames, the last one with FIN; or ABORT.
    big = message("cedra-req", request_args(ipv4(192, 0, 2, 33)) +
                  [("body", binary(bytes(range(256)) * 2))])
    out["notify_frag_first"] = frame(NOTIFY, 0, 77, 1, big[:200])
    out["notify_frag_middle"] = frame(0, 0, 77, 1, big[200:500])
    out["notify_frag_last"] = frame(0, FIN, 77, 1, big[500:])
    out["notify_frag_abort"] = frame(0, FIN | ABORT, 77, 1, b"")

    # DISCONNECT in both directions.
    out["haproxy_disconnect_normal"] = frame(DISCONNECT, FIN, 0, 0, kv(
        [("status-code", uint32(0)), ("message", string("normal"))]))
    out["haproxy_disconnect_too_big"] = frame(DISCONNECT, FIN, 0, 0, kv(
        [("status-code", uint32(3)), ("message", string("frame is too big"))]))
    out["haproxy_disconnect_truncated"] = out["haproxy_disconnect_normal"][:-3]
    out["agent_disconnect"] = frame(AGENT_DISCONNECT, FIN, 0, 0, kv(
        [("status-code", uint32(8)), ("message", string("unsupported version"))]))
    out["agent_hello"] = frame(AGENT_HELLO, FIN, 0, 0, kv(
        [("version", string("2.0")), ("max-frame-size", uint32(16380)),
         ("capabilities", string("pipelining"))]))
    out["ack_set_vars"] = frame(ACK, FIN, 12, 1,
                                b"\x01\x03\x02" + s("locale") + string("fr") +
                                b"\x02\x02\x01" + s("x"))

    # Unknown types and broken metadata.
    out["unknown_type_42"] = frame(42, FIN, 1, 1, b"\x00\x01\x02\x03")
    out["unknown_type_255"] = frame(255, 0xFFFFFFFF, 0, 0, s("x") + null())
    out["ids_64bit"] = frame(NOTIFY, FIN, (1 << 64) - 1, 1 << 63, message("m", []))
    out["ids_overflow"] = (bytes([NOTIFY]) + FIN.to_bytes(4, "big") +
                           b"\xff\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x10" + b"\x00")
    out["ids_too_long"] = bytes([NOTIFY]) + FIN.to_bytes(4, "big") + b"\xff" * 11 + b"\x00"
    out["short_6_bytes"] = bytes([HELLO]) + FIN.to_bytes(4, "big") + b"\x00"
    out["frame_id_cut"] = bytes([NOTIFY]) + FIN.to_bytes(4, "big") + b"\x05\xfc"
    out["metadata_only"] = frame(HELLO, FIN, 0, 0, b"")
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "corpus", "spoe_frame")
    os.makedirs(outdir, exist_ok=True)
    all_seeds = seeds()
    for name in sorted(all_seeds):
        with open(os.path.join(outdir, name + ".bin"), "wb") as f:
            f.write(all_seeds[name])
    print("wrote %d seeds to %s" % (len(all_seeds), outdir))


if __name__ == "__main__":
    main()
