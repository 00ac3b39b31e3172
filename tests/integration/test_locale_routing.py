"""Locale routing through the real HAProxy and the shipped config: a table of
requests (cookies, Accept-Language forms, excluded paths, query strings,
hostile paths) and what the client must see. Also SIGHUP reloading locales."""

import os
import signal
import socket
import unittest

import harness
from test_haproxy import HaproxyCase, SF

# (method, path-with-query, headers, expected)
#   expected: ("pass", locale-or-None)  -> origin answered, x-cedra-locale as given
#             ("redirect", code, location, locale)
R = "redirect"
P = "pass"
CASES = [
    # prefixed paths are routed as they are
    ("GET", "/fr", {}, (P, "fr")),
    ("GET", "/fr/", {}, (P, "fr")),
    ("GET", "/nl/products/chair", {}, (P, "nl")),
    ("GET", "/en/products/chair?colour=oak", {}, (P, "en")),
    ("GET", "/fr/products/chair", {"Accept-Language": "nl"}, (P, "fr")),
    ("GET", "/nl/x", {"Cookie": "NEXT_LOCALE=en"}, (P, "nl")),
    ("POST", "/fr/cart", {}, (P, "fr")),
    # unprefixed pages: cookie, then Accept-Language, then the default
    ("GET", "/", {}, (R, 307, "/fr", "fr")),
    ("GET", "/products/chair", {}, (R, 307, "/fr/products/chair", "fr")),
    ("GET", "/products/chair?colour=oak&size=2", {}, (R, 307, "/fr/products/chair?colour=oak&size=2", "fr")),
    ("GET", "/", {"Accept-Language": "nl"}, (R, 307, "/nl", "nl")),
    ("GET", "/", {"Accept-Language": "nl-BE"}, (R, 307, "/nl", "nl")),
    ("GET", "/", {"Accept-Language": "nl-BE,nl;q=0.9,en;q=0.8"}, (R, 307, "/nl", "nl")),
    ("GET", "/", {"Accept-Language": "de-DE, en;q=0.5"}, (R, 307, "/en", "en")),
    ("GET", "/", {"Accept-Language": "en;q=0.2, nl;q=0.8"}, (R, 307, "/nl", "nl")),
    ("GET", "/", {"Accept-Language": "de, *;q=0.1"}, (R, 307, "/fr", "fr")),
    ("GET", "/", {"Accept-Language": "fr;q=0, *"}, (R, 307, "/nl", "nl")),
    ("GET", "/", {"Accept-Language": "en;q=0"}, (R, 307, "/fr", "fr")),
    ("GET", "/", {"Accept-Language": "de"}, (R, 307, "/fr", "fr")),
    ("GET", "/", {"Accept-Language": "en;q=2, nl"}, (R, 307, "/nl", "nl")),
    ("GET", "/", {"Accept-Language": ";;;,,,=garbage"}, (R, 307, "/fr", "fr")),
    ("GET", "/", {"Accept-Language": "EN-gb"}, (R, 307, "/en", "en")),
    ("GET", "/", {"Cookie": "NEXT_LOCALE=en"}, (R, 307, "/en", "en")),
    ("GET", "/", {"Cookie": "sid=abc; NEXT_LOCALE=nl; theme=dark"}, (R, 307, "/nl", "nl")),
    ("GET", "/", {"Cookie": "NEXT_LOCALE=en", "Accept-Language": "nl"}, (R, 307, "/en", "en")),
    ("GET", "/", {"Cookie": "NEXT_LOCALE=de", "Accept-Language": "nl"}, (R, 307, "/nl", "nl")),
    ("GET", "/", {"Cookie": "NEXT_LOCALE=", "Accept-Language": "en"}, (R, 307, "/en", "en")),
    ("GET", "/", {"Cookie": "NEXT_LOCALE=EN"}, (R, 307, "/fr", "fr")),
    ("GET", "/", {"Cookie": "NEXT_LOCALE=\"nl\""}, (R, 307, "/nl", "nl")),
    ("HEAD", "/products/chair", {"Accept-Language": "en"}, (R, 307, "/en/products/chair", "en")),
    # never redirected: other methods, excluded prefixes, files
    ("POST", "/cart", {}, (P, None)),
    ("PUT", "/cart", {}, (P, None)),
    ("GET", "/api/health", {}, (P, None)),
    ("GET", "/api", {}, (P, None)),
    ("GET", "/_next/static/chunks/main.js", {}, (P, None)),
    ("GET", "/robots.txt", {}, (P, None)),
    ("GET", "/favicon.ico", {}, (P, None)),
    ("GET", "/images/chair.webp?w=640", {}, (P, None)),
    ("GET", "/de/products", {}, (R, 307, "/fr/de/products", "fr")),
    ("GET", "/FR/products", {}, (R, 307, "/fr/FR/products", "fr")),
    # hostile paths: the Location never leaves the site, nothing is injected
    ("GET", "//evil.example", {}, (P, None)),       # last segment looks like a file
    ("GET", "//evil", {}, (R, 307, "/fr//evil", "fr")),
    ("GET", "//evil.example/x?y=1", {}, (R, 307, "/fr//evil.example/x?y=1", "fr")),
    ("GET", "/%2F%2Fevil", {}, (R, 307, "/fr/%2F%2Fevil", "fr")),
    ("GET", "/%0d%0aSet-Cookie:%20x=1", {}, (R, 307, "/fr/%0d%0aSet-Cookie:%20x=1", "fr")),
    ("GET", "/a?%0d%0aX-Injected:%201", {}, (R, 307, "/fr/a?%0d%0aX-Injected:%201", "fr")),
    ("GET", "/%5Cevil", {}, (R, 307, "/fr/%5Cevil", "fr")),
    ("GET", "/%5C%5Cevil%2Fx", {}, (R, 307, "/fr/%5C%5Cevil%2Fx", "fr")),
    ("GET", "/a%zz", {}, (P, None)),                 # malformed escape: not redirected
    ("GET", "/a\"b", {}, (P, None)),                 # quote cannot go into a Location
    ("GET", "/a<script>", {}, (P, None)),
    ("GET", "/x?q=<b>", {}, (P, None)),
]


def raw_request(port, method, target, headers, timeout=5.0 * SF):
    """Sends the request line as given (no client-side normalisation) and
    returns (status, headers dict lower-cased, body). headers: a dict, or a
    list of (name, value) for a name on several lines."""
    lines = ["%s %s HTTP/1.1" % (method, target), "Host: shop.example", "Connection: close"]
    lines += ["%s: %s" % kv for kv in (headers.items() if hasattr(headers, "items") else headers)]
    if method in ("POST", "PUT"):
        lines.append("Content-Length: 0")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        raw = harness.send_and_read_to_eof(s, data)
    head, _, body = raw.partition(b"\r\n\r\n")
    hl = head.decode("latin-1").split("\r\n")
    status = int(hl[0].split()[1])
    hdrs = {}
    for line in hl[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body, head


class LocaleRoutingTest(HaproxyCase):
    def test_table(self):
        self.start_stack()
        self.wait_spoa_check()
        self.assertGreaterEqual(len(CASES), 40)
        for method, target, headers, want in CASES:
            with self.subTest(method=method, target=target, headers=headers):
                st, hdrs, body, head = raw_request(self.hap.port, method, target, headers)
                # Nothing the client sent may appear as a header of its own.
                self.assertNotIn(b"\r\nx-injected", head.lower())
                self.assertNotIn(b"\r\nset-cookie", head.lower())
                if want[0] == P:
                    self.assertEqual(st, 200, hdrs)
                    self.assertEqual(hdrs.get("x-origin"), "1", hdrs)
                    self.assertEqual(hdrs.get("x-cedra-locale"), want[1], hdrs)
                    self.assertEqual(hdrs.get("x-cedra-cache"), "BYPASS", hdrs)
                else:
                    _, code, location, loc = want
                    self.assertEqual(st, code, hdrs)
                    self.assertNotIn("x-origin", hdrs)
                    self.assertEqual(hdrs.get("location"), location, hdrs)
                    self.assertEqual(hdrs.get("x-cedra-locale"), loc, hdrs)
                    self.assertTrue(hdrs["location"].startswith("/" + loc), hdrs)
                    self.assertFalse(hdrs["location"].startswith("//"), hdrs)
                    vary = [v.strip().lower() for v in hdrs.get("vary", "").split(",")]
                    self.assertIn("accept-language", vary, hdrs)
                    self.assertIn("cookie", vary, hdrs)

    def test_accept_language_on_several_lines(self):
        """Next.js reads every Accept-Language line (Node joins them), HAProxy
        hands cedra-spoa the last one: with two lines the edge does not pick a
        locale from them, and the origin answers (and redirects itself)."""
        self.start_stack()
        self.wait_spoa_check()
        st, hdrs, _, _ = raw_request(self.hap.port, "GET", "/de/x", [("Accept-Language", "nl")])
        self.assertEqual((st, hdrs.get("location")), (307, "/nl/de/x"), hdrs)
        two = [("Accept-Language", "fr"), ("Accept-Language", "nl")]
        st, hdrs, body, _ = raw_request(self.hap.port, "GET", "/de/x", two)
        self.assertOrigin(st, hdrs, body)
        self.assertEqual(hdrs.get("x-cedra-cache"), "BYPASS", hdrs)
        # the cookie comes first, for Next.js as for the edge: it still decides
        st, hdrs, _, _ = raw_request(self.hap.port, "GET", "/de/x",
                                     two + [("Cookie", "NEXT_LOCALE=en")])
        self.assertEqual((st, hdrs.get("location")), (307, "/en/de/x"), hdrs)

    def test_redirect_code_302_and_reload(self):
        """locale-redirect 302 from the file; SIGHUP adds a locale and changes
        the default without a restart."""
        self.start_stack(extra="locale-redirect 302")
        self.wait_spoa_check()
        st, hdrs, _, _ = raw_request(self.hap.port, "GET", "/p", {})
        self.assertEqual((st, hdrs.get("location")), (302, "/fr/p"))
        st, hdrs, _, _ = raw_request(self.hap.port, "GET", "/de/p", {})
        self.assertEqual(hdrs.get("location"), "/fr/de/p")

        cfg = self.agent.config
        with open(cfg) as f:
            text = f.read()
        text = text.replace("locales fr nl en", "locales fr nl en de").replace(
            "default-locale fr", "default-locale en")
        with open(cfg, "w") as f:
            f.write(text)
        self.agent.signal(signal.SIGHUP)
        harness.wait_until(
            lambda: raw_request(self.hap.port, "GET", "/de/p", {})[1].get("x-cedra-locale") == "de",
            10 * SF, what="locale de after SIGHUP")
        st, hdrs, _, _ = raw_request(self.hap.port, "GET", "/p", {})
        self.assertEqual((st, hdrs.get("location")), (302, "/en/p"))
        self.assertTrue(self.agent.alive())

    def test_bad_reload_keeps_running_config(self):
        self.start_stack()
        self.wait_spoa_check()
        with open(self.agent.config, "a") as f:
            f.write("bogus-keyword 1\n")
        self.agent.signal(signal.SIGHUP)
        harness.wait_until(lambda: "reload_failed" in self.agent.stderr_text(), 10 * SF,
                           what="reload_failed logged")
        st, hdrs, _, _ = raw_request(self.hap.port, "GET", "/nl/x", {})
        self.assertEqual((st, hdrs.get("x-cedra-locale")), (200, "nl"))


if __name__ == "__main__":
    unittest.main()
