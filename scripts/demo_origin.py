#!/usr/bin/env python3
"""A stand-in storefront origin for the demo until the Next.js fixture lands:
answers every GET with a small page naming the locale of the path."""
import argparse
import http.server

GREETING = {"fr": "Bonjour", "nl": "Hallo", "en": "Hello"}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        seg = self.path.split("?", 1)[0].split("/")
        loc = seg[1] if len(seg) > 1 else ""
        body = ("<h1>%s</h1><p>origin page for %s</p>\n"
                % (GREETING.get(loc, "Hi"), self.path)).encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, fmt, *args):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=3000)
    a = ap.parse_args()
    http.server.ThreadingHTTPServer((a.bind, a.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
