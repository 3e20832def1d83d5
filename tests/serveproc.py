"""``tpm2-attest serve`` as a real process on a free loopback port, for tests of what crosses
process boundaries: TLS, signals, webhooks from a running service; and an app under uvicorn
in a thread (``in_thread``), for tests that need real sockets but not a process."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def in_thread(app: Any, **config: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields its base URL.
    ``config``: more ``uvicorn.Config`` options (e.g. ``http=`` a protocol class path)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **config))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """``tpm2-attest serve ARGS`` in its own process group; ``tls`` (``ca``, and ``client_cert``
    / ``client_key`` for mutual TLS) is how this helper itself reaches an HTTPS server."""

    def __init__(self, *args: str | os.PathLike[str], tls: dict[str, Path] | None = None,
                 env: dict[str, str] | None = None, timeout: float = 60.0, port: int | None = None) -> None:
        self.port = port or free_port()
        self.tls = tls
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - read at the end, closed by stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "tpm2_attest.cli", "serve", "--port", str(self.port),
                                      *map(str, args)],
                                     stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.request("GET", "/v1/health")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"serve did not start: {self.stderr[-3000:]}")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def connection(self) -> http.client.HTTPConnection:
        if not self.tls:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        ctx = ssl.create_default_context(cafile=str(self.tls["ca"]))
        if "client_cert" in self.tls:
            ctx.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30, context=ctx)

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        conn = self.connection()
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={"Content-Type": "application/json", **(headers or {})})
            r = conn.getresponse()
            raw = r.read()
            if r.getheader("Content-Type", "").startswith("application/json"):
                return r.status, json.loads(raw or b"{}")
            return r.status, raw.decode(errors="replace")
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log.close()
