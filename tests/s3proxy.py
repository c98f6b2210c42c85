"""A tiny HTTP proxy on 127.0.0.1 in front of the SeaweedFS test server that injects faults.

Requests are forwarded unchanged (Host included, so S3 signatures stay valid). `faults` holds
what to do to the next matching requests, one entry each, in order: (method, path, "500")
answers with an S3 InternalError instead of forwarding, (method, path, "cut") forwards but cuts
the response body after `cut_after` bytes (a connection dropped mid-body); `path` is the start
of the request path, e.g. "/bucket/key". `before(method, path)`, when set, is called first
(a test stops the server behind the proxy from it). `seen` records (method, path), `signed`
the paths of requests that carried an Authorization header or a signed query.

`listed_as` maps stored keys to the keys listings show instead, as a hostile (or differently
normalising) S3 server would list them: AWS keeps `data//abs/x` and `a/../b` in keys, which
SeaweedFS normalises or refuses when they are written.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, urlparse

INTERNAL_ERROR = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
                  b"<Message>injected by the test proxy</Message></Error>")


class FaultProxy:
    def __init__(self, upstream: str, cut_after: int = 100):
        target = urlparse(upstream)
        self.faults: list[tuple[str, str, str]] = []
        self.seen: list[tuple[str, str]] = []
        self.signed: list[str] = []
        self.listed_as: dict[str, str] = {}
        self.cut_after = cut_after
        self.before: Callable[[str, str], None] | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                proxy.seen.append((self.command, self.path))
                if "Authorization" in self.headers or "X-Amz-Signature" in self.path:
                    proxy.signed.append(self.path)
                if proxy.before is not None:
                    proxy.before(self.command, self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = next((f for f in proxy.faults
                              if f[0] == self.command and self.path.startswith(f[1])), None)
                if fault is not None:
                    proxy.faults.remove(fault)
                if fault is not None and fault[2] == "500":
                    self.send_response(500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(INTERNAL_ERROR)))
                    self.end_headers()
                    self.wfile.write(INTERNAL_ERROR)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "expect")}
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = proxy.relisted(response.read()) if "list-type=" in self.path \
                        else response.read()
                except OSError:  # the server is down: so is the connection to the client
                    self.close_connection = True
                    return
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault is not None and fault[2] == "cut":
                    self.wfile.write(data[:proxy.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                elif self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward  # noqa: N815

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def relisted(self, listing: bytes) -> bytes:
        for stored, shown in self.listed_as.items():
            for old, new in ((quote(stored), quote(shown)), (stored, shown)):
                listing = listing.replace(f"<Key>{old}</Key>".encode(),
                                          f"<Key>{new}</Key>".encode())
        return listing

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.seen if m == method)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
