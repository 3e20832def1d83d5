"""A loopback HTTP server for tests that would otherwise reach the internet (vendor EK
certificate services, AIA caIssuers URLs). Routes map a path to a response, or to a
behaviour: redirect, stall, dribble. Listens on 127.0.0.1 only, on a free port."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_length: int | None = None
    """Announce this Content-Length instead of the body's (to test the size cap)."""
    chunked: bool = False
    stall: float = 0.0
    """Sleep this long before answering at all."""
    dribble: float = 0.0
    """Send the body one byte every `dribble` seconds."""


class LoopbackServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        self._stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.requests.append(self.path)
                route = server.routes.get(self.path)
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route.stall:
                    server._stop.wait(route.stall)
                self.send_response(route.status)
                for k, v in route.headers.items():
                    self.send_header(k, v)
                if route.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    length = route.content_length if route.content_length is not None else len(route.body)
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                try:
                    if route.chunked:
                        for i in range(0, len(route.body), 4096):
                            part = route.body[i : i + 4096]
                            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                        self.wfile.write(b"0\r\n\r\n")
                    elif route.dribble:
                        for b in route.body:
                            if server._stop.is_set():
                                return
                            self.wfile.write(bytes([b]))
                            self.wfile.flush()
                            time.sleep(route.dribble)
                    else:
                        self.wfile.write(route.body)
                except OSError:
                    pass  # the client gave up (that is what several tests check)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, path: str, body: bytes = b"", **kw: object) -> str:
        self.routes[path] = Route(body=body, **kw)  # type: ignore[arg-type]
        return self.url(path)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()


@contextmanager
def loopback_server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
