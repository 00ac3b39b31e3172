"""Issue 4 item 3, end to end: App Router client navigations and segment
prefetches answered from the edge, byte-identical to what Next.js answers
from the same cache entry, for the Next variants of the fixture storefront:

  v16    Next 16.4.6,  handler 3.3.0 (checks _rsc, has segmentData)
  v15    Next 15.5.29, handler 2.5.3 (no _rsc check, no segmentData)
  v1637  Next 16.3.7,  handler 3.3.0 (pathname keys)

Per class, once: setup.sh (build "edgeit", as test_nextjs.py), the route
table, redis-server, `next start` and one edge node (cedra-spoa + HAProxy 2.6
with the shipped config). Redis is flushed before every test.

The requests are those the Next client sends (FACTS.md §9): RSC: 1,
Next-Router-State-Tree / Next-Router-Prefetch / Next-Router-Segment-Prefetch,
and the _rsc search parameter, computed here the way the client computes it
(base64url of the first 12 bytes of SHA-256 over the four header values).
What the edge answers is compared with what Next answers to the very same
request sent to it directly (status, body, every header but the
per-connection ones), and with the bytes the cache handler stored in Redis
(rscData / segmentData, base64-decoded here). "Origin not contacted" is
HAProxy's stot counter of storefront_stable/origin, as in test_nextjs.py.
"""

import base64
import gzip
import hashlib
import json
import os
import re
import sys
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import nextjs_fixture as nf  # noqa: E402
from test_edge_cache import redis_cmd  # noqa: E402

SF = harness.slow_factor()
COMPARED = ("content-type", "cache-control", "vary", "etag", "location", "x-nextjs-cache",
            "x-nextjs-stale-time", "x-nextjs-prerender", "x-nextjs-postponed", "x-powered-by")
NOT_COMPARED = {"date", "connection", "keep-alive", "transfer-encoding", "content-length",
                "x-cedra-cache", "x-cedra-locale"}
# Scaled like valkey-timeout (80 ms x slow factor): HAProxy must not give up
# before cedra-spoa does, or a slowed daemon turns answers into ERROR.
PROCESSING = "%dms" % (200 * harness.slow_factor())

# The router state a client on /fr/about sends when it navigates
# (prepareFlightRouterStateForRequest: encodeURIComponent(JSON.stringify(tree))).
STATE_TREE = urllib.parse.quote(json.dumps(
    ["", {"children": [["locale", "fr", "d"], {"children": ["about", {"children": [
        "__PAGE__", {}, None, None]}, None, None]}, None, None]}, None, None, True],
    separators=(",", ":")), safe="")


def rsc_param(prefetch=None, segment=None, tree=None, next_url=None):
    """computeCacheBustingSearchParam() of the Next client (15.5, 16.x)."""
    if (prefetch is None or prefetch == "0") and segment is None and tree is None and next_url is None:
        return ""
    inp = ",".join([prefetch or "0", "0" if segment is None else segment,
                    "0" if tree is None else tree, "0" if next_url is None else next_url])
    return base64.urlsafe_b64encode(hashlib.sha256(inp.encode()).digest()[:12]).decode().rstrip("=")


def legacy_param(prefetch=None, segment=None, tree=None):
    """computeLegacyCacheBustingSearchParam(): djb2, base36, 5 characters."""
    if (prefetch is None or prefetch == "0") and segment is None and tree is None:
        return ""
    h = 5381
    for c in ",".join([prefetch or "0", segment or "0", tree or "0", "0"]).encode():
        h = (h * 33 + c) & 0xffffffff
    digits = ""
    while True:
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[h % 36] + digits
        h //= 36
        if not h:
            break
    return digits[:5]


def with_param(path, param):
    return path + ("?_rsc" if param == "" else "?_rsc=" + param)


def navigation(path, legacy=False):
    """What the client sends to navigate to path (fetchServerResponse)."""
    p = legacy_param(tree=STATE_TREE) if legacy else rsc_param(tree=STATE_TREE)
    return with_param(path, p), {"RSC": "1", "Next-Router-State-Tree": STATE_TREE}


def prefetch(path):
    """A full prefetch (Next-Router-Prefetch: 1, no segment)."""
    return with_param(path, rsc_param("1")), {"RSC": "1", "Next-Router-Prefetch": "1"}


def segment_prefetch(path, segment):
    """A segment prefetch of the Segment Cache (fetchSegmentOnCacheMiss)."""
    return with_param(path, rsc_param("1", segment)), {
        "RSC": "1", "Next-Router-Prefetch": "1", "Next-Router-Segment-Prefetch": segment}


class _RscEdge(object):
    VARIANT = None
    # cedra-spoa "haproxy-cache on" for one variant: navigations and segment
    # prefetches then come from HAProxy's cache by entry id, held to what the
    # real Next sends just as the delivery path is for the others.
    HAPROXY_CACHE = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        try:
            env = cls.cenv
            cls.proj = nf.setup_variant(cls.VARIANT)
            cls.table = nf.route_table(env, cls.proj)
            cls.keys = nf.CacheKeys(cls.table)
            cls.redis = env.start_redis()
            cls.rport = cls.redis.port
            cls.data = nf.copy_catalogue(env)
            cls.next = nf.start_next(env, cls.VARIANT, cls.rport, cls.data)
            cls.a = nf.EdgeNode(env, "a", cls.rport, cls.table, cls.next.port, processing=PROCESSING,
                                haproxy_cache=cls.HAPROXY_CACHE)
            harness.wait_until(lambda: cls.a.get("/fr/about").cache in ("HIT", "MISS"), 15 * SF,
                               what="%s: the edge looks up Valkey" % cls.VARIANT)
        except BaseException:
            cls.cenv.dump()
            try:
                cls.tearDownClass()
            except AssertionError as e:
                sys.stderr.write("%s\n" % e)
            raise

    def setUp(self):
        super().setUp()
        self.assertTrue(self.next.alive(), "%s: next start died" % self.VARIANT)
        self.assertEqual(redis_cmd(self.rport, "FLUSHALL"), "OK")

    # ------------------------------------------------------------ helpers
    def key(self, path):
        return self.keys.key(path)

    def entry(self, path):
        raw = redis_cmd(self.rport, "GET", nf.PREFIX + self.key(path))
        self.assertIsNotNone(raw, "%s: no entry for %s" % (self.VARIANT, path))
        return json.loads(raw)

    def stored_rsc(self, path):
        return base64.b64decode(self.entry(path)["value"]["rscData"])

    def stored_segments(self, path):
        seg = self.entry(path)["value"].get("segmentData") or {}
        return {k: base64.b64decode(v) for k, v in seg.items()}

    def warm(self, path):
        """Next renders path (through the edge) and the edge answers its
        HTML as a HIT: the entry is in Redis and fresh."""
        self.a.get(path)

        def written():
            if nf.redis_key_ready(self.rport, self.key(path)):
                return True
            self.a.get(path)
            return nf.redis_key_ready(self.rport, self.key(path))
        harness.wait_until(written, 30 * SF, interval=0.5,
                           what="%s: Next writes %s to Redis" % (self.VARIANT, path))
        harness.wait_until(lambda: self.a.get(path).cache == "HIT", 10 * SF, interval=0.05,
                           what="%s: HTML HIT on %s" % (self.VARIANT, path))

    def edge_hit(self, target, headers, what):
        """The edge answers target from the cache: HIT, and HAProxy did not
        send the request to Next."""
        n0, c0 = self.a.origin_requests(), self.cache_answers()
        r = self.a.get(target, headers)
        self.assertEqual(r.cache, "HIT", "%s %s: %r" % (self.VARIANT, what, r))
        self.assertEqual(self.a.origin_requests(), n0, "%s %s: reached Next" % (self.VARIANT, what))
        # With haproxy-cache, every fresh 200 answer comes from HAProxy's
        # cache (a 404 navigation goes through the delivery server).
        self.assertEqual(self.cache_answers() - c0, int(self.HAPROXY_CACHE and r.status == 200),
                         "%s %s: the answer did not come the expected way" % (self.VARIANT, what))
        return r

    def cache_answers(self):
        """cedra-spoa's "cache" answers so far (haproxy-cache on)."""
        text = harness.unix_command(self.a.spoa_sock, "show metrics", errors="strict")
        return sum(int(float(m)) for m in re.findall(
            r'^cedra_spoa_requests_total\{decision="cache",[^}]*\} (\S+)$', text, re.M))

    def direct(self, target, headers):
        return nf.http_request(self.next.port, target, headers)

    def assertSameAsNext(self, edge, nxt, what):
        v = self.VARIANT
        self.assertEqual(edge.status, nxt.status, "%s %s: status (%r vs %r)" % (v, what, edge, nxt))
        self.assertEqual(edge.body, nxt.body, "%s %s: body differs (%d vs %d bytes)" % (
            v, what, len(edge.body), len(nxt.body)))
        for h in COMPARED:
            self.assertEqual(edge.all(h), nxt.all(h), "%s %s: header %s" % (v, what, h))
        self.assertEqual(edge.names - NOT_COMPARED, nxt.names - NOT_COMPARED,
                         "%s %s: header sets differ" % (v, what))
        if edge.h("content-length") is not None:
            self.assertEqual(int(edge.h("content-length")), len(edge.body), v)

    def assertRsc(self, r, body, what):
        self.assertEqual(r.status, 200, "%s %s: %r" % (self.VARIANT, what, r))
        self.assertEqual(r.h("content-type"), "text/x-component", "%s %s" % (self.VARIANT, what))
        self.assertEqual(r.body, body, "%s %s: not the stored payload" % (self.VARIANT, what))

    def assertHtml(self, r, html, what):
        self.assertEqual(r.status, 200, "%s %s: %r" % (self.VARIANT, what, r))
        self.assertEqual(r.h("content-type"), "text/html; charset=utf-8", "%s %s" % (self.VARIANT, what))
        self.assertEqual(r.body, html, "%s %s: not the stored html" % (self.VARIANT, what))

    # ------------------------------------------------------------ 1. navigation
    def test_01_navigation_and_prefetch_from_the_edge(self):
        path = "/fr/products/chair"
        self.warm(path)
        rsc = self.stored_rsc(path)
        self.assertIn(b"product:fr:chair", rsc, self.VARIANT)
        for name, (target, headers) in (("navigation", navigation(path)),
                                        ("navigation, legacy _rsc", navigation(path, legacy=True)),
                                        ("full prefetch", prefetch(path)),
                                        ("navigation without state tree", (with_param(path, ""), {"RSC": "1"}))):
            with self.subTest(variant=self.VARIANT, request=name):
                r = self.edge_hit(target, headers, name)
                self.assertRsc(r, rsc, name)
                nxt = self.direct(target, headers)
                self.assertEqual(nxt.h("x-nextjs-cache"), "HIT", "%s %s: Next %r" % (self.VARIANT, name, nxt))
                self.assertSameAsNext(r, nxt, name)

    # ------------------------------------------------------------ 2. segment prefetch
    def test_02_segment_prefetch_from_the_edge(self):
        path = "/fr/products/table"
        self.warm(path)
        segments = self.stored_segments(path)
        if not segments:
            # Next 15: no segmentData; Next answers a segment prefetch with
            # the whole payload, and so does the edge.
            self.assertEqual(self.VARIANT, "v15")
            segments = {"/_tree": self.stored_rsc(path)}
        else:
            self.assertIn("/_tree", segments, self.VARIANT)
        for seg, body in sorted(segments.items()):
            with self.subTest(variant=self.VARIANT, segment=seg):
                target, headers = segment_prefetch(path, seg)
                r = self.edge_hit(target, headers, "segment %s" % seg)
                self.assertRsc(r, body, "segment %s" % seg)
                nxt = self.direct(target, headers)
                self.assertSameAsNext(r, nxt, "segment %s" % seg)
        # A segment the entry does not have: Next's answer (404 on 16), from Next.
        if self.VARIANT != "v15":
            target, headers = segment_prefetch(path, "/nope/__PAGE__")
            n0 = self.a.origin_requests()
            r = self.a.get(target, headers)
            self.assertEqual(self.a.origin_requests(), n0 + 1, self.VARIANT)
            self.assertNotIn(r.cache, ("HIT", "STALE"), self.VARIANT)
            self.assertSameAsNext(r, self.direct(target, headers), "unknown segment")
            self.assertEqual(r.status, 404, self.VARIANT)

    # ------------------------------------------------------------ 3. not answered by the edge
    def test_03_wrong_or_missing_rsc_go_to_next(self):
        path = "/fr/products/lamp"
        self.warm(path)
        target, headers = navigation(path)
        good = target.split("?", 1)[1]
        cases = [
            ("_rsc missing", path, headers),
            ("_rsc wrong", with_param(path, "AAAAAAAAAAAAAAAA"), headers),
            ("_rsc of another state tree", with_param(path, rsc_param(tree=STATE_TREE + "x")), headers),
            ("_rsc of a navigation on a prefetch", target, dict(headers, **{"Next-Router-Prefetch": "1"})),
            ("another search parameter", path + "?x=1&" + good, headers),
            ("Next-Url (interception routes)",
             with_param(path, rsc_param(tree=STATE_TREE, next_url="/fr/about")),
             dict(headers, **{"Next-Url": "/fr/about"})),
            ("runtime prefetch", with_param(path, rsc_param("2", tree=STATE_TREE)),
             dict(headers, **{"Next-Router-Prefetch": "2"})),
            ("RSC: 2", target, dict(headers, RSC="2")),
            ("segment without prefetch",
             with_param(path, rsc_param(None, "/_tree", STATE_TREE)),
             dict(headers, **{"Next-Router-Segment-Prefetch": "/_tree"})),
        ]
        seen = []
        for name, tgt, hdrs in cases:
            with self.subTest(variant=self.VARIANT, case=name):
                n0 = self.a.origin_requests()
                r = self.a.get(tgt, hdrs)
                self.assertEqual(r.cache, "BYPASS", "%s %s: %r" % (self.VARIANT, name, r))
                self.assertEqual(self.a.origin_requests(), n0 + 1, "%s %s: not sent to Next" % (self.VARIANT, name))
                nxt = self.direct(tgt, hdrs)
                # The same answer as Next's own (its 307 to the right _rsc on 16).
                self.assertEqual(r.status, nxt.status, "%s %s" % (self.VARIANT, name))
                self.assertEqual(r.h("location"), nxt.h("location"), "%s %s" % (self.VARIANT, name))
                self.assertEqual(r.h("content-type"), nxt.h("content-type"), "%s %s" % (self.VARIANT, name))
                if nxt.h("x-nextjs-cache") == r.h("x-nextjs-cache") == "HIT":
                    self.assertEqual(r.body, nxt.body, "%s %s" % (self.VARIANT, name))
                seen.append((name, r.status))
        sys.stderr.write("\n[%s rsc bypass] Next answered %r\n" % (self.VARIANT, seen))
        if self.VARIANT != "v15":
            self.assertEqual(dict(seen)["_rsc missing"], 307, "Next 16 redirects a missing _rsc")
        # Control: the right request is still a HIT.
        self.edge_hit(target, headers, "control")

    # ------------------------------------------------------------ 4. variants never mixed
    def test_04_html_and_rsc_never_mixed(self):
        path = "/nl/products/sofa"
        # The first request for the page is a navigation: Next renders the
        # whole entry (html and payloads) from it.
        target, headers = navigation(path)
        first = self.a.get(target, headers)
        self.assertEqual(first.status, 200, "%s: %r" % (self.VARIANT, first))
        self.assertEqual(first.h("content-type"), "text/x-component", self.VARIANT)
        self.assertNotIn(first.cache, ("HIT", "STALE"), self.VARIANT)
        harness.wait_until(lambda: nf.redis_key_ready(self.rport, self.key(path)), 30 * SF,
                           what="%s: Next writes %s" % (self.VARIANT, path))
        html = self.entry(path)["value"]["html"].encode()
        rsc = self.stored_rsc(path)
        segs = self.stored_segments(path)
        seg_target, seg_headers = segment_prefetch(path, "/_tree")
        order = [("html", path, {}), ("rsc", target, headers), ("html", path, {}),
                 ("segment", seg_target, seg_headers), ("html", path, {}), ("rsc", target, headers),
                 ("rsc", target, headers), ("segment", seg_target, seg_headers), ("html", path, {})]
        for i, (kind, tgt, hdrs) in enumerate(order):
            r = self.a.get(tgt, hdrs)
            what = "request %d (%s)" % (i, kind)
            self.assertIn(r.cache, ("HIT", "MISS"), "%s %s: %r" % (self.VARIANT, what, r))
            if kind == "html":
                self.assertHtml(r, html, what)
            elif kind == "rsc" or not segs:
                self.assertRsc(r, rsc, what)
            else:
                self.assertRsc(r, segs["/_tree"], what)
        # Every one of them was answered by the edge once the entry existed.
        n0 = self.a.origin_requests()
        for kind, tgt, hdrs in order:
            self.assertEqual(self.a.get(tgt, hdrs).cache, "HIT", "%s %s" % (self.VARIANT, kind))
        self.assertEqual(self.a.origin_requests(), n0, self.VARIANT)

    # ------------------------------------------------------------ 5. revalidateTag
    def test_05_revalidate_tag_drops_rsc_answers(self):
        path, slug = "/en/products/chair", "chair"
        self.warm(path)
        target, headers = navigation(path)
        old = self.edge_hit(target, headers, "before revalidateTag").body
        new_version = nf.bump_version(self.data, slug)
        rv = self.a.get("/api/revalidate?secret=%s&tag=product-%s" % (nf.SECRET, slug))
        self.assertEqual(rv.status, 200, "%s: %r" % (self.VARIANT, rv))
        harness.wait_until(lambda: not redis_cmd(self.rport, "EXISTS", nf.PREFIX + self.key(path)), 5,
                           interval=0.001, what="%s: revalidateTag applied" % self.VARIANT)
        # The deletion's invalidation reaches the L1 within its own latency
        # (sub-millisecond here, more under sanitizers): from the first answer
        # without the old payload on, the old payload never comes back.
        harness.wait_until(lambda: self.a.get(target, headers).body != old, 2 * SF, interval=0.001,
                           what="%s: the edge drops the old payload" % self.VARIANT)
        for i in range(6):
            r = self.a.get(target, headers)
            self.assertEqual(r.status, 200, self.VARIANT)
            self.assertNotEqual(r.body, old, "%s: old payload after revalidateTag (request %d, %r)" % (
                self.VARIANT, i, r))
            self.assertIn(b'"data-version":%d' % new_version, r.body, self.VARIANT)
        harness.wait_until(lambda: nf.redis_key_ready(self.rport, self.key(path)), 30 * SF,
                           what="%s: Next writes %s again" % (self.VARIANT, path))
        r = self.edge_hit(target, headers, "after revalidateTag")
        self.assertRsc(r, self.stored_rsc(path), "after revalidateTag")

    # ------------------------------------------------------------ 6. stale
    def test_06_stale_navigation_one_request_revalidates(self):
        """A stale entry: navigations are answered STALE from the edge, but
        one (the holder of the revalidation lock) goes to Next, which
        regenerates the page; then the new payload is a HIT."""
        path = "/fr/products/sofa"
        self.warm(path)
        target, headers = navigation(path)
        stored = self.entry(path)
        old = base64.b64decode(stored["value"]["rscData"])
        revalidate_ms = stored["lifespan"]["revalidate"] * 1000
        # Stale by the clock Next and the edge use: lastModified + revalidate.
        harness.wait_until(lambda: time.time() * 1000 > stored["lastModified"] + revalidate_ms + 50,
                           revalidate_ms / 1000.0 + 5, interval=0.05, what="%s: stale" % self.VARIANT)
        answers = []
        for i in range(8):
            n0 = self.a.origin_requests()
            r = self.a.get(target, headers)
            answers.append((r.cache, self.a.origin_requests() - n0, r.body == old))
            self.assertEqual(r.status, 200, self.VARIANT)
            self.assertEqual(r.h("content-type"), "text/x-component", self.VARIANT)
        sys.stderr.write("\n[%s stale rsc] (cache, origin requests, old body): %r\n" % (self.VARIANT, answers))
        self.assertEqual(sum(a[1] for a in answers), 1, "%s: exactly one request revalidates: %r" % (
            self.VARIANT, answers))
        self.assertEqual(answers[0][:2], ("STALE", 1), "%s: the first stale request revalidates" % self.VARIANT)
        for cache, origin, is_old in answers[1:]:
            # Served by the edge: the stale payload (STALE), or the new one (HIT).
            self.assertEqual(origin, 0, self.VARIANT)
            self.assertIn((cache, is_old), (("STALE", True), ("HIT", False)), "%s: %r" % (self.VARIANT, answers))
        harness.wait_until(lambda: self.entry(path)["lastModified"] > stored["lastModified"], 10 * SF,
                           what="%s: regenerated" % self.VARIANT)
        r = self.edge_hit(target, headers, "after regeneration")
        self.assertRsc(r, self.stored_rsc(path), "after regeneration")
        self.assertNotEqual(r.body, old, self.VARIANT)


    # ------------------------------------------------------------ 7. notFound()
    def test_07_not_found_page(self):
        """A product that does not exist is a cached 404 (notFound()): its
        navigation is a 404 with the payload, its segments are 200s (Next
        answers them before it applies the entry's status)."""
        path = "/nl/products/nope"
        self.warm(path)
        self.assertEqual(self.entry(path)["value"].get("status"), 404, self.VARIANT)
        rsc = self.stored_rsc(path)
        segments = self.stored_segments(path)
        cases = [("navigation", navigation(path), 404, rsc)]
        if segments:
            cases.append(("segment /_tree", segment_prefetch(path, "/_tree"), 200, segments["/_tree"]))
        else:
            cases.append(("segment /_tree", segment_prefetch(path, "/_tree"), 404, rsc))
        for name, (target, headers), status, body in cases:
            with self.subTest(variant=self.VARIANT, request=name):
                r = self.edge_hit(target, headers, name)
                self.assertEqual((r.status, r.h("content-type")), (status, "text/x-component"),
                                 "%s %s: %r" % (self.VARIANT, name, r))
                self.assertEqual(r.body, body, "%s %s" % (self.VARIANT, name))
                self.assertSameAsNext(r, self.direct(target, headers), name)


    # ------------------------------------------------------------ 8. gzip
    def test_08_gzip_where_next_compresses(self):
        """A browser's Accept-Encoding: Next compresses the RSC payloads it
        would (text/x-component, at least 1 KiB), the edge too, with the
        same headers; decoded, the bytes Next stored."""
        path, ae = "/fr/products/chair", {"Accept-Encoding": "gzip, deflate, br, zstd"}
        self.warm(path)
        cases = [("navigation",) + navigation(path)]
        segments = self.stored_segments(path)
        for seg in sorted(segments):
            cases.append(("segment %s" % seg,) + segment_prefetch(path, seg))
        coded = 0
        for name, target, headers in cases:
            with self.subTest(variant=self.VARIANT, request=name):
                h = dict(headers, **ae)
                r = self.edge_hit(target, h, name)
                nxt = self.direct(target, h)
                self.assertEqual(r.h("content-encoding"), nxt.h("content-encoding"),
                                 "%s %s: %r vs Next %r" % (self.VARIANT, name, r, nxt))
                bodies = [gzip.decompress(x.body) if x.h("content-encoding") == "gzip" else x.body
                          for x in (r, nxt)]
                coded += r.h("content-encoding") == "gzip"
                strip = [nf.Response(x.status, [(k, y) for k, y in x.header_list
                                                if k not in ("content-length", "content-encoding")], b)
                         for x, b in zip((r, nxt), bodies)]
                self.assertSameAsNext(strip[0], strip[1], name + " (gzip)")
        # The navigation payload of this page is over 1 KiB: at least it is coded.
        self.assertGreaterEqual(len(self.stored_rsc(path)), 1024, self.VARIANT)
        self.assertGreaterEqual(coded, 1, self.VARIANT)


class RscV16Test(_RscEdge, harness.IntegrationTestCase):
    VARIANT = "v16"
    HAPROXY_CACHE = True


class RscV15Test(_RscEdge, harness.IntegrationTestCase):
    VARIANT = "v15"


class RscV1637Test(_RscEdge, harness.IntegrationTestCase):
    VARIANT = "v1637"


if __name__ == "__main__":
    unittest.main()
