"""Self-tests of the black-box SPOP client (no daemon needed).

Byte vectors are worked out by hand from the tables in HAProxy's doc/SPOE.txt
(varint ranges 3.1, frame layout 3.2, actions 3.4), so that the client is
checked against the specification rather than against itself.
"""

import ipaddress
import os
import random
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import spop_client as sc  # noqa: E402


class VarintTest(unittest.TestCase):
    # Range boundaries from SPOE.txt 3.1.
    VECTORS = [
        (0, "00"),
        (1, "01"),
        (239, "ef"),
        (240, "f000"),            # first 2-byte value
        (241, "f100"),
        (255, "ff00"),
        (256, "f001"),
        (300, "fc03"),
        (2287, "ff7f"),           # last 2-byte value
        (2288, "f08000"),         # first 3-byte value
        (264431, "ffff7f"),       # last 3-byte value
        (264432, "f0808000"),     # first 4-byte value
        (33818863, "ffffff7f"),   # last 4-byte value
        (33818864, "f080808000"), # first 5-byte value
    ]

    def test_vectors(self):
        for value, hexs in self.VECTORS:
            with self.subTest(value=value):
                self.assertEqual(sc.encode_varint(value).hex(), hexs)
                self.assertEqual(sc.decode_varint(bytes.fromhex(hexs)), (value, len(hexs) // 2))

    def test_lengths_follow_the_table(self):
        bounds = [(0, 1), (239, 1), (240, 2), (2287, 2), (2288, 3), (264431, 3),
                  (264432, 4), (33818863, 4), (33818864, 5), (4328786159, 5), (4328786160, 6)]
        for value, n in bounds:
            with self.subTest(value=value):
                self.assertEqual(sc.varint_len(value), n)

    def test_round_trip(self):
        rng = random.Random(1)
        values = [0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 63, 2 ** 64 - 1]
        values += [rng.getrandbits(rng.randint(1, 64)) for _ in range(5000)]
        for v in values:
            enc = sc.encode_varint(v)
            self.assertLessEqual(len(enc), sc.VARINT_MAX_LEN)
            self.assertEqual(sc.decode_varint(enc + b"\x55"), (v, len(enc)))

    def test_decode_at_offset(self):
        buf = b"\xaa" + sc.encode_varint(5000) + sc.encode_varint(7)
        v, off = sc.decode_varint(buf, 1)
        self.assertEqual(v, 5000)
        self.assertEqual(sc.decode_varint(buf, off), (7, len(buf)))

    def test_truncated_and_invalid(self):
        with self.assertRaises(sc.Truncated):
            sc.decode_varint(b"")
        with self.assertRaises(sc.Truncated):
            sc.decode_varint(b"\xf0")
        with self.assertRaises(sc.Truncated):
            sc.decode_varint(b"\xf0\x80\x80")
        with self.assertRaises(sc.SpopError):
            sc.decode_varint(b"\xff" * 20)
        with self.assertRaises(sc.SpopError):
            sc.encode_varint(-1)
        with self.assertRaises(sc.SpopError):
            sc.encode_varint(2 ** 64)


class TypedDataTest(unittest.TestCase):
    def test_vectors(self):
        vectors = [
            (None, "00"),
            (False, "01"),
            (True, "11"),
            (sc.Int32(5), "0205"),
            (sc.Uint32(300), "03fc03"),
            (sc.Int64(7), "0407"),
            (sc.Uint64(240), "05f000"),
            (ipaddress.IPv4Address("127.0.0.1"), "067f000001"),
            (ipaddress.IPv6Address("::1"), "07" + "00" * 15 + "01"),
            ("ab", "08026162"),
            ("", "0800"),
            (b"\x00\xff", "090200ff"),
        ]
        for value, hexs in vectors:
            with self.subTest(value=value):
                self.assertEqual(sc.encode_typed(value).hex(), hexs)
                got, off = sc.decode_typed(bytes.fromhex(hexs), 0)
                self.assertEqual(off, len(hexs) // 2)
                self.assertEqual(got, value)
                self.assertIs(type(got), type(value))

    def test_negative_integers_are_64bit_twos_complement(self):
        enc = sc.encode_typed(sc.Int32(-1))
        self.assertEqual(enc[0], sc.T_INT32)
        self.assertEqual(sc.decode_varint(enc, 1)[0], 2 ** 64 - 1)
        for v in (sc.Int32(-1), sc.Int32(-(2 ** 31)), sc.Int64(-(2 ** 63)), sc.Int64(-12345)):
            got, _ = sc.decode_typed(sc.encode_typed(v), 0)
            self.assertEqual(got, v)
            self.assertIs(type(got), type(v))

    def test_plain_int_and_ranges(self):
        self.assertEqual(sc.encode_typed(3)[0], sc.T_UINT64)
        self.assertEqual(sc.encode_typed(-3)[0], sc.T_INT64)
        with self.assertRaises(sc.SpopError):
            sc.Uint32(2 ** 32)
        with self.assertRaises(sc.SpopError):
            sc.Int32(2 ** 31)
        with self.assertRaises(sc.SpopError):
            sc.decode_typed(b"\x03" + sc.encode_varint(2 ** 32), 0)

    def test_bool_ignores_other_flag_bits(self):
        self.assertIs(sc.decode_typed(b"\x31", 0)[0], True)
        self.assertIs(sc.decode_typed(b"\x21", 0)[0], False)

    def test_long_string(self):
        s = "x" * 100000
        got, off = sc.decode_typed(sc.encode_typed(s), 0)
        self.assertEqual(got, s)

    def test_non_utf8_string_survives(self):
        raw = b"\x08\x02\xff\xfe"
        got, _ = sc.decode_typed(raw, 0)
        self.assertEqual(got.encode("utf-8", "surrogateescape"), b"\xff\xfe")

    def test_truncated_and_reserved(self):
        for raw in ("", "06 7f00", "07 00", "08 05 6162", "09 f0", "02"):
            with self.subTest(raw=raw):
                with self.assertRaises(sc.Truncated):
                    sc.decode_typed(bytes.fromhex(raw.replace(" ", "")), 0)
        for t in range(10, 16):
            with self.assertRaises(sc.SpopError):
                sc.decode_typed(bytes((t,)), 0)


class PayloadTest(unittest.TestCase):
    def test_kv_list_vector(self):
        # name "a" (raw: len + bytes, no type byte), value UINT32 1
        self.assertEqual(sc.encode_kv_list([("a", sc.Uint32(1))]).hex(), "01610301")
        self.assertEqual(sc.decode_kv_list(bytes.fromhex("01610301")), [("a", 1)])

    def test_messages_round_trip(self):
        msgs = [sc.cedra_req("/fr/x", cookie="a=b", query="q=1"),
                ("other", []),
                ("third", [("", "unnamed"), ("n", None), ("b", True)])]
        enc = sc.encode_messages(msgs)
        dec = sc.decode_messages(enc)
        self.assertEqual(len(dec), 3)
        self.assertEqual(dec[0][0], "cedra-req")
        self.assertEqual(dict(dec[0][1])["path"], "/fr/x")
        self.assertEqual(dict(dec[0][1])["src"], ipaddress.IPv4Address("127.0.0.1"))
        self.assertEqual(dec[1], ("other", []))
        self.assertEqual(dec[2][1], [("", "unnamed"), ("n", None), ("b", True)])

    def test_message_vector(self):
        # "m" with one arg "p" = STRING "/"
        self.assertEqual(sc.encode_messages([("m", [("p", "/")])]).hex(), "016d" "01" "0170" "08012f")

    def test_actions_vectors(self):
        # set-var: <1><3><scope><name><typed value>; unset-var: <2><2><scope><name>
        acts = [sc.set_var(sc.SCOPE_TXN, "locale", "fr"), sc.unset_var(sc.SCOPE_REQ, "x")]
        enc = sc.encode_actions(acts)
        self.assertEqual(enc.hex(), "010302066c6f63616c65" "08026672" "02020301" "78")
        self.assertEqual(sc.decode_actions(enc), acts)

    def test_actions_all_types(self):
        values = [None, True, False, sc.Int32(-5), sc.Uint32(7), sc.Int64(-(2 ** 40)),
                  sc.Uint64(2 ** 63), ipaddress.IPv4Address("10.1.2.3"),
                  ipaddress.IPv6Address("2001:db8::1"), "str", b"\x00bin"]
        acts = [sc.set_var(i % 5, "v%d" % i, v) for i, v in enumerate(values)]
        acts.append(sc.unset_var(sc.SCOPE_SESS, "gone"))
        self.assertEqual(sc.decode_actions(sc.encode_actions(acts)), acts)
        self.assertEqual(sc.actions_to_vars([sc.set_var(2, "a", "1"), sc.set_var(2, "b", "2"),
                                             sc.unset_var(2, "a"), sc.set_var(1, "c", "3")]),
                         {"b": "2"})

    def test_actions_strict(self):
        with self.assertRaises(sc.SpopError):   # bad scope
            sc.decode_actions(bytes.fromhex("0103090161" "00"))
        with self.assertRaises(sc.SpopError):   # set-var with 2 args
            sc.decode_actions(bytes.fromhex("0102020161" "00"))
        with self.assertRaises(sc.SpopError):   # unknown action
            sc.decode_actions(bytes.fromhex("0702020161"))
        with self.assertRaises(sc.Truncated):
            sc.decode_actions(bytes.fromhex("0103"))


class FrameTest(unittest.TestCase):
    def test_frame_vector(self):
        # ACK, FIN, stream 5, frame 240, empty payload
        f = sc.encode_frame(sc.FRAME_ACK, b"", 5, 240)
        self.assertEqual(f.hex(), "00000008" "67" "00000001" "05" "f000")
        frames, rest = sc.split_frames(f)
        self.assertEqual(rest, b"")
        self.assertEqual((frames[0].type, frames[0].flags, frames[0].stream_id,
                          frames[0].frame_id, frames[0].payload), (103, 1, 5, 240, b""))

    def test_hello_round_trip(self):
        h = sc.haproxy_hello(max_frame_size=1024, healthcheck=True)
        frames, rest = sc.split_frames(h + b"\x00\x00")
        self.assertEqual(rest, b"\x00\x00")
        f = frames[0]
        self.assertEqual((f.type, f.stream_id, f.frame_id, f.fin), (sc.FRAME_HAPROXY_HELLO, 0, 0, True))
        kv = f.kv()
        self.assertEqual(kv["supported-versions"], "2.0")
        self.assertEqual(kv["max-frame-size"], 1024)
        self.assertIs(type(kv["max-frame-size"]), sc.Uint32)
        self.assertEqual(kv["capabilities"], "pipelining,async")
        self.assertIs(kv["healthcheck"], True)
        kv2 = sc.split_frames(sc.haproxy_hello(omit=("capabilities",)))[0][0].kv()
        self.assertNotIn("capabilities", kv2)

    def test_disconnect_round_trip(self):
        f = sc.split_frames(sc.agent_disconnect(3, "frame is too big"))[0][0]
        self.assertEqual(f.type, sc.FRAME_AGENT_DISCONNECT)
        self.assertEqual(f.kv(), {"status-code": 3, "message": "frame is too big"})

    def test_fragmented_notify(self):
        msgs = [sc.cedra_req("/nl/x", cookie="c" * 3000)]
        frames = sc.fragmented_notify(9, 2, msgs, 500)
        decoded = [sc.split_frames(f)[0][0] for f in frames]
        self.assertGreaterEqual(len(decoded), 6)
        self.assertEqual(decoded[0].type, sc.FRAME_NOTIFY)
        self.assertTrue(all(d.type == sc.FRAME_UNSET for d in decoded[1:]))
        self.assertTrue(all(not d.fin for d in decoded[:-1]))
        self.assertTrue(decoded[-1].fin and not decoded[-1].abort)
        self.assertTrue(all((d.stream_id, d.frame_id) == (9, 2) for d in decoded))
        self.assertEqual(sc.decode_messages(b"".join(d.payload for d in decoded)), sc.decode_messages(sc.encode_messages(msgs)))
        aborted = [sc.split_frames(f)[0][0] for f in sc.fragmented_notify(9, 2, msgs, 500, abort=True)]
        self.assertTrue(aborted[-1].fin and aborted[-1].abort)

    def test_split_partial(self):
        data = sc.notify(1, 1, [sc.cedra_req("/fr")]) * 3
        for cut in range(len(data)):
            frames, rest = sc.split_frames(data[:cut])
            self.assertEqual(sum(len(sc.notify(1, 1, [sc.cedra_req("/fr")])) for _ in frames) + len(rest), cut)


class ConnectionTest(unittest.TestCase):
    """The Connection class against an in-process fake agent that dribbles
    its answers one byte at a time."""

    def _serve(self, srv, script):
        conn, _ = srv.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = bytearray()
            pending = []
            for expect_type, reply, close in script:
                while not pending:
                    frames, rest = sc.split_frames(buf)
                    pending.extend(frames)
                    buf = bytearray(rest)
                    if pending:
                        break
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                f = pending.pop(0)
                self.assertEqual(f.type, expect_type)
                r = reply(f)
                for i in range(len(r)):
                    conn.sendall(r[i:i + 1])
                if close:
                    return

    def test_hello_notify_ack_disconnect(self):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        script = [
            (sc.FRAME_HAPROXY_HELLO,
             lambda f: sc.encode_frame(sc.FRAME_AGENT_HELLO, sc.encode_kv_list([
                 ("version", "2.0"), ("max-frame-size", sc.Uint32(min(4096, f.kv()["max-frame-size"]))),
                 ("capabilities", "pipelining")])), False),
            (sc.FRAME_NOTIFY,
             lambda f: sc.ack(f.stream_id, f.frame_id,
                              [sc.set_var(sc.SCOPE_TXN, "locale", dict(f.messages()[0][1])["path"][1:3])]),
             False),
            (sc.FRAME_HAPROXY_DISCONNECT, lambda f: sc.agent_disconnect(0, "bye"), True),
        ]
        t = threading.Thread(target=self._serve, args=(srv, script))
        t.start()
        try:
            with sc.Connection(srv.getsockname(), timeout=5) as c:
                kv = c.hello(max_frame_size=16380)
                self.assertEqual(kv["version"], "2.0")
                self.assertEqual(c.max_frame_size, 4096)
                self.assertEqual(sc.caps_set(kv["capabilities"]), {"pipelining"})
                c.notify(3, 4, [sc.cedra_req("/nl/p")])
                acts = c.ack_for(3, 4)
                self.assertEqual(sc.actions_to_vars(acts), {"locale": "nl"})
                c.send(sc.haproxy_disconnect())
                f = c.recv_frame()
                self.assertEqual((f.type, f.kv()["status-code"]), (sc.FRAME_AGENT_DISCONNECT, 0))
                self.assertEqual(c.expect_close(2), [])
        finally:
            t.join(5)
            srv.close()

    def test_timeout(self):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        try:
            with sc.Connection(srv.getsockname()) as c:
                t0 = time.monotonic()
                with self.assertRaises(socket.timeout):
                    c.recv_frame(timeout=0.2)
                self.assertLess(time.monotonic() - t0, 2)
        finally:
            srv.close()

    def test_close_mid_frame(self):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)

        def serve():
            conn, _ = srv.accept()
            conn.sendall(struct.pack("!I", 100) + b"\x65")
            conn.close()
        t = threading.Thread(target=serve)
        t.start()
        try:
            with sc.Connection(srv.getsockname()) as c:
                with self.assertRaises(sc.SpopError):
                    c.recv_frame(timeout=2)
        finally:
            t.join(5)
            srv.close()


if __name__ == "__main__":
    unittest.main()
