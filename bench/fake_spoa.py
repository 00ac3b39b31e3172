#!/usr/bin/env python3
"""An SPOP agent that does nothing: the HAProxy-side cost of the shipped design.

  fake_spoa.py LISTEN_PORT CEDRA_SPOA_PORT [PATH]
  fake_spoa.py --minimal LISTEN_PORT

--minimal answers every NOTIFY with one variable (txn.cedra.action = "edge")
and asks nothing of cedra-spoa: behind bench/edge.sh's variant S config (the
static return of variant A behind the shipped SPOE filter and message), it
measures what the SPOE exchange alone costs HAProxy: the ceiling of any
SPOE-based edge on this HAProxy, whatever the agent and its answer.

At start it asks the real cedra-spoa (CEDRA_SPOA_PORT) for PATH
[/fr/products/chair] with the message HAProxy sends, keeps the ACK's actions
(the exact set-var list cedra-spoa answers an edge hit with: body, headers,
status, locale, pool, cache) and from then on answers every NOTIFY with those
bytes at once, without looking at it. With it behind the shipped haproxy.cfg,
what HAProxy spends per request (SPOE NOTIFY/ACK, variables, the
"http-request return ... lf-string" rules) is measured apart from what an
agent spends: the floor under variant B, whatever cedra-spoa's L1 does.

Python: the agent itself is not free (its CPU is reported apart by edge.sh).
Runs until SIGTERM. Bench tool, not product code.
"""

import asyncio
import os
import signal
import struct
import time
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))

import spop_client as sc  # noqa: E402


def capture(spoa_port, path):
    args = [("method", "GET"), ("path", path), ("query", None), ("host", "127.0.0.1"),
            ("cookie", None), ("accept_language", None), ("src", "127.0.0.1"),
            ("if_none_match", None), ("cache_control", None),
            ("if_modified_since", sc.Int32(0)), ("rsc", sc.Int32(0)), ("prefetch", sc.Int32(0)),
            ("state_tree", sc.Int32(0)), ("segment_prefetch", sc.Int32(0)),
            ("authorization", sc.Int32(0))]
    with sc.Connection(("127.0.0.1", spoa_port), timeout=5) as c:
        c.send(sc.haproxy_hello(max_frame_size=16380, capabilities="pipelining"))
        f = c.recv_frame()
        assert f.type == sc.FRAME_AGENT_HELLO, f
        for i in range(50):
            c.send(sc.notify(1, i + 1, [("cedra-req", args)]))
            f = c.recv_frame()
            assert f.type == sc.FRAME_ACK, f
            acts = {a.name: a.value for a in f.actions()}
            if acts.get("cache") == "HIT":
                return f.payload, acts
            time.sleep(0.1)  # Valkey not connected yet
    raise SystemExit("fake_spoa: cedra-spoa never answered HIT for %s" % path)


class Agent(asyncio.Protocol):
    actions = b""

    def connection_made(self, tr):
        self.tr = tr
        self.buf = bytearray()

    def data_received(self, data):
        buf = self.buf
        buf += data
        off, n, out = 0, len(buf), []
        while n - off >= 4:
            (flen,) = struct.unpack_from("!I", buf, off)
            if n - off - 4 < flen:
                break
            body = bytes(buf[off + 4:off + 4 + flen])
            off += 4 + flen
            ftype = body[0]
            if ftype == sc.FRAME_NOTIFY:
                sid, o = sc.decode_varint(body, 5)
                fid, o = sc.decode_varint(body, o)
                out.append(sc.encode_frame(sc.FRAME_ACK, self.actions, sid, fid))
            elif ftype == sc.FRAME_HAPROXY_HELLO:
                kv = sc.decode_frame_body(body).kv()
                out.append(sc.encode_frame(sc.FRAME_AGENT_HELLO, sc.encode_kv_list([
                    ("version", "2.0"),
                    ("max-frame-size", sc.Uint32(min(16380, int(kv["max-frame-size"])))),
                    ("capabilities", "pipelining")])))
                if kv.get("healthcheck"):
                    self.tr.write(b"".join(out))
                    self.tr.close()
                    return
            elif ftype == sc.FRAME_HAPROXY_DISCONNECT:
                out.append(sc.agent_disconnect(0, "bye"))
                self.tr.write(b"".join(out))
                self.tr.close()
                return
            # UNSET (fragments) never happens for this small NOTIFY
        del buf[:off]
        if out:
            self.tr.write(b"".join(out))


async def serve(port):
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    srv = await loop.create_server(Agent, "127.0.0.1", port, reuse_port=True)
    async with srv:
        await stop


def main():
    if sys.argv[1] == "--minimal":
        port = int(sys.argv[2])
        # FAKE_SPOA_VARS="name=value,...": other txn string variables to answer.
        pairs = os.environ.get("FAKE_SPOA_VARS", "action=edge")
        Agent.actions = sc.encode_actions([sc.set_var(sc.SCOPE_TXN, k, v) for k, v in (
            kv.split("=", 1) for kv in pairs.split(","))])
        sys.stderr.write("fake_spoa: minimal ACK of %d bytes (action=edge)\n" % len(Agent.actions))
        asyncio.run(serve(port))
        return
    port, spoa_port = int(sys.argv[1]), int(sys.argv[2])
    path = sys.argv[3] if len(sys.argv) > 3 else "/fr/products/chair"
    Agent.actions, acts = capture(spoa_port, path)
    sys.stderr.write("fake_spoa: replaying a %d-byte ACK (%s)\n" % (
        len(Agent.actions), ", ".join(sorted(acts))))
    asyncio.run(serve(port))


if __name__ == "__main__":
    main()
