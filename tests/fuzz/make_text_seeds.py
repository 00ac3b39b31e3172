#!/usr/bin/env python3
"""Writes the seed corpora of fuzz_routes, fuzz_cookie, fuzz_path and fuzz_opcmd
from the repository's real data: the route table cedra-routes made from the
Next.js 16 fixture build, the keys Next.js wrote in the ISR fixtures, the
request paths and Cookie headers of the integration tests, and operator
command lines as docs/ and the tests send them. Deterministic: rerunning it
rewrites identical files. (capture_seeds.py does consul/ and hapi/ from
running programs.)

Usage: make_text_seeds.py [CORPUS_DIR]   (default: corpus/ next to this file)
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIX = os.path.join(REPO, "tests", "fixtures", "isr")


def read(path):
    with open(path, "rb") as f:
        return f.read()


def fixture_paths():
    """Page paths Next.js keyed in the fixtures (pathname scheme keys)."""
    paths = set()
    for v in sorted(os.listdir(FIX)):
        for name in ("keys-after-pages.txt", "keys-after-product.txt", "keys-after-start.txt"):
            p = os.path.join(FIX, v, name)
            if not os.path.exists(p):
                continue
            for line in read(p).decode().splitlines():
                key = line.split(":", 1)[-1]
                if key.startswith("/route-cache/"):
                    key = key.split("$", 1)[1]
                if key.startswith("/"):
                    paths.add(key)
    return sorted(paths)


# Paths and queries the integration tests send (test_locale_routing.py, test_haproxy.py).
TEST_PATHS = [
    "/", "/fr", "/fr/", "/en/products/chair", "/fr/products/chair", "/nl/products/chair",
    "/de/products", "/fr/FR/products", "/fr/de/p", "/fr/cart", "/fr//evil",
    "/fr/%0d%0aSet-Cookie:%20x=1", "/fr/%2F%2Fevil", "/fr/%5Cevil", "/products/chair",
    "/about", "/_next/static/chunks/main.js", "/api/revalidate", "/favicon.ico", "/a/../b",
    "/x.y/z", "/[locale]/about",
]
TEST_QUERIES = ["", "colour=oak", "colour=oak&size=2", "%0d%0aX-Injected:%201", "a=/b?c",
                "q=%zz"]

# Cookie headers of the integration tests.
COOKIES = [
    "NEXT_LOCALE=nl", "NEXT_LOCALE=", "NEXT_LOCALE=\"nl\"", "NEXT_LOCALE=EN",
    "__prerender_bypass=0123456789abcdef", "a=1; __prerender_bypass=x", "a=1; b=2, c=3",
    "sid=abc; NEXT_LOCALE=nl; theme=dark", "theme=dark; sid=s3ss10n; lang=fr",
    "theme=dark; sidebar=1", "a=1; cedra_pool=canary.b2", "cedra_pool=stable.b1", "c", "c=",
    " cedra_pool = \"canary.b2\" ;NEXT_LOCALE=fr",
]
COOKIE_NAMES = ["cedra_pool", "NEXT_LOCALE", "__prerender_bypass", "__next_preview_data",
                "session", "a"]

# Operator command lines (docs/cedra-spoa.8, docs/cedra-agent.8, test_spoa_socket.py,
# test_agent.py). fuzz_opcmd: data[0] & 1 picks the daemon (0 cedra-spoa, 1 cedra-agent).
SPOA_LINES = [
    "show info", "show stat", "show stat json", "show pools", "help", "help show",
    "show cache", "show cache storefront:/fr", "purge path /fr/products/chair",
    "purge key storefront:/fr", "purge prefix storefront:", "purge all",
    "set log-level debug", "set log-level bogus", "show metrics",
    "set pool canary key-prefix storefront-b2: routes pathname build b2",
    "set pool canary weight 30", "set pool canary off",
    "set pool stable key-prefix storefront: routes pathname build b1",
    "show info;show pools;show stat", "prompt\nshow info\nshow pools\nquit",
    "set pool canary key-prefix a\\;b routes pathname", "unknown command here",
    "show  info\t", "\r\n", "show info\r\nshow stat\n",
]
AGENT_LINES = [
    "show info", "show services", "show servers", "show servers storefront", "show canary",
    "set canary weight 25", "set canary weight auto", "set canary weight 101", "pause",
    "resume", "pause;pause", "resync", "show stat", "set log-level info", "show metrics",
    "help set", "prompt\nset canary weight 10\nshow canary\nquit", "show servers nope",
]


def write(d, name, data):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    corpus = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus")
    paths = fixture_paths() + TEST_PATHS

    table = read(os.path.join(FIX, "v16", "routes.table"))
    d = os.path.join(corpus, "routes")
    write(d, "v16_table_fixture_paths", table + b"\0" + "\n".join(paths).encode())
    write(d, "v16_table_test_paths", table + b"\0" + "\n".join(TEST_PATHS).encode())
    write(d, "pathname_table", b"# pathname scheme\nscheme pathname\nbuild b1\n\0/\n/fr\n/fr/about")
    write(d, "catchall_table",
          b"scheme route-cache\nbuild abc\n"
          b"route /[locale]/docs/[...slug] APP_PAGE " + b"a" * 64 + b"\n"
          b"route /[locale]/shop/[[...all]] PAGES " + b"0" * 64 + b" /x/page\n"
          b"\0/fr/docs/a/b/c\n/fr/docs\n/fr/shop\n/fr/shop/x/y")

    d = os.path.join(corpus, "cookie")
    for i, c in enumerate(COOKIES):
        for j, n in enumerate(COOKIE_NAMES):
            write(d, "c%02d_n%d" % (i, j), bytes([j + 1]) + c.encode())
    write(d, "own_name", b"\x00sid\x00" + b"theme=dark; sid=s3ss10n; lang=fr")

    d = os.path.join(corpus, "path")
    for i, p in enumerate(TEST_PATHS + fixture_paths()):
        for j, q in enumerate(TEST_QUERIES[:2] if i % 3 else TEST_QUERIES):
            sel = ((i + j) % 5) | (6 << 5)  # locale i+j, 4096-byte buffer
            write(d, "p%02d_q%d" % (i, j), bytes([sel]) + p.encode() + b"\0" + q.encode())

    d = os.path.join(corpus, "opcmd")
    for i, l in enumerate(SPOA_LINES):
        write(d, "spoa%02d" % i, b"\0" + l.encode())
    for i, l in enumerate(AGENT_LINES):
        write(d, "agent%02d" % i, b"\1" + l.encode())
    for sub in ("routes", "cookie", "path", "opcmd"):
        print("%s: %d seeds" % (sub, len(os.listdir(os.path.join(corpus, sub)))))


if __name__ == "__main__":
    main()
