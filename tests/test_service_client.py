"""The client side of the service over real connections: TLS and mutual TLS against a real
``tpm2-attest serve --tls-*`` on loopback (a test PKI made with ``cryptography``), failures that
say what is wrong (an untrusted server, a missing or refused client certificate, plain HTTP),
and retries: only when the server cannot have acted on the request, never after a refusal.
"""

from __future__ import annotations

import http.server
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import pki
from serveproc import Serve, free_port
from tpm2_attest.cli import main
from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.service import Enrollment, ServiceClient, ServiceError


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return pki.tls_files(tmp_path_factory.mktemp("pki"))


def _serve_args(swtpm: EmbeddedSwtpm, db: str) -> list[Any]:
    return ["--db", db, "--ek-root", swtpm.ca_root_path, "--ek-intermediate", swtpm.ca_intermediate_path,
            "--log-level", "warning"]


@pytest.fixture(scope="module")
def https(swtpm: EmbeddedSwtpm, tls: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """serve over TLS (server authentication only)."""
    db = f"sqlite:///{tmp_path_factory.mktemp('https') / 'service.db'}"
    with Serve(*_serve_args(swtpm, db), "--tls-cert", tls["server_cert"], "--tls-key", tls["server_key"],
               tls={"ca": tls["ca"]}) as srv:
        srv.db = db  # type: ignore[attr-defined]
        yield srv


@pytest.fixture(scope="module")
def mtls(swtpm: EmbeddedSwtpm, tls: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """serve over mutual TLS: no request without a client certificate of the client CA."""
    db = f"sqlite:///{tmp_path_factory.mktemp('mtls') / 'service.db'}"
    with Serve(*_serve_args(swtpm, db), "--tls-cert", tls["server_cert"], "--tls-key", tls["server_key"],
               "--tls-client-ca", tls["client_ca"],
               tls={"ca": tls["ca"], "client_cert": tls["client_cert"], "client_key": tls["client_key"]}) as srv:
        srv.db = db  # type: ignore[attr-defined]
        yield srv


def _token(db: str, name: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["admin", "token", "create", "--db", db, "--name", name, "--role", "admin", "--json"]) == 0
    token: str = json.loads(capsys.readouterr().out)["token"]
    return token


def test_enroll_attest_and_admin_over_tls(https: Serve, swtpm: EmbeddedSwtpm, tls: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ak = tmp_path / "ak.json"
    assert main(["enroll", "--server", https.url, "--tcti", swtpm.tcti, "--ak-out", str(ak),
                 "--ca-file", str(tls["ca"]), "--json"]) == 0
    device = json.loads(capsys.readouterr().out)["device_id"]
    assert Enrollment.from_json(ak.read_bytes()).server == https.url
    # attest finds the server in the AK file, the CA in the environment
    monkeypatch.setenv("TPM2_ATTEST_CA_FILE", str(tls["ca"]))
    assert main(["attest", "--tcti", swtpm.tcti, "--ak", str(ak), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "trusted"
    token = _token(https.db, "ops", capsys)  # type: ignore[attr-defined]
    monkeypatch.setenv("TPM2_ATTEST_TOKEN", token)
    assert main(["admin", "device", device, "--server", https.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "trusted"


def test_an_untrusted_server_fails_clearly_and_is_not_retried(https: Serve, swtpm: EmbeddedSwtpm,
                                                              tls: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    for ca in ([], ["--ca-file", str(tls["other_ca"])]):  # the system's CAs, then the wrong one
        assert main(["enroll", "--server", https.url, "--tcti", swtpm.tcti, "--ak-out", str(tmp_path / "ak.json"),
                     *ca]) == 1
        err = capsys.readouterr().err
        assert "TLS_FAILURE" in err and "certificate is not trusted" in err and "hint: " in err and "--ca-file" in err
        assert not (tmp_path / "ak.json").exists()
    client = ServiceClient(https.url, ca_file=tls["other_ca"], retries=3, retry_base=0.01)
    with pytest.raises(ServiceError) as info:
        client.get("/v1/health")
    assert (info.value.code, info.value.extra["tls"], client.attempts) == ("TLS_FAILURE", "server_untrusted", 1)


def test_mutual_tls(mtls: Serve, swtpm: EmbeddedSwtpm, tls: dict[str, Path], tmp_path: Path,
                    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    ak = tmp_path / "ak.json"
    base = ["--server", mtls.url, "--tcti", swtpm.tcti, "--ca-file", str(tls["ca"])]
    mine = ["--client-cert", str(tls["client_cert"]), "--client-key", str(tls["client_key"])]

    # No client certificate: the server ends the session; the client says why and what to pass.
    assert main(["enroll", *base, "--ak-out", str(ak), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["error"]["code"] == "TLS_FAILURE" and out["error"]["tls"] == "client_certificate_required"
    assert "--client-cert" in out["hint"]
    # A certificate of a CA the server does not trust.
    assert main(["enroll", *base, "--ak-out", str(ak), "--client-cert", str(tls["stranger_cert"]),
                 "--client-key", str(tls["stranger_key"])]) == 1
    err = capsys.readouterr().err
    assert "does not accept the client certificate" in err and "--client-cert" in err
    assert not ak.exists()

    assert main(["enroll", *base, *mine, "--ak-out", str(ak), "--json"]) == 0
    device = json.loads(capsys.readouterr().out)["device_id"]
    monkeypatch.setenv("TPM2_ATTEST_CLIENT_CERT", str(tls["client_cert"]))  # the environment's, this time
    monkeypatch.setenv("TPM2_ATTEST_CLIENT_KEY", str(tls["client_key"]))
    assert main(["attest", *base, "--ak", str(ak), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["device_id"] == device
    monkeypatch.setenv("TPM2_ATTEST_TOKEN", _token(mtls.db, "ops", capsys))  # type: ignore[attr-defined]
    assert main(["admin", "devices", "--server", mtls.url, "--ca-file", str(tls["ca"]), "--json"]) == 0
    assert [d["device_id"] for d in json.loads(capsys.readouterr().out)["items"]] == [device]
    monkeypatch.delenv("TPM2_ATTEST_CLIENT_CERT")
    monkeypatch.delenv("TPM2_ATTEST_CLIENT_KEY")
    assert main(["admin", "devices", "--server", mtls.url, "--ca-file", str(tls["ca"])]) == 1
    assert "requires a client certificate" in capsys.readouterr().err


def test_client_option_errors_name_the_option(tls: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    ak = str(tmp_path / "ak.json")
    cases = [
        (["--server", "http://127.0.0.1:1", "--ca-file", str(tls["ca"])], "--ca-file need an https:// server"),
        (["--server", "https://127.0.0.1:1", "--client-key", str(tls["client_key"])], "--client-key needs --client-cert (or $TPM2_ATTEST_CLIENT_CERT)"),
        (["--server", "https://127.0.0.1:1", "--ca-file", str(tmp_path / "none.pem")], "--ca-file"),
        (["--server", "https://127.0.0.1:1", "--ca-file", str(junk)], "--ca-file"),
        (["--server", "https://127.0.0.1:1", "--client-cert", str(junk)], "--client-cert"),
        (["--server", "https://127.0.0.1:1", "--retries", "-1"], "--retries"),
    ]
    for args, words in cases:
        assert main(["enroll", "--embedded", "--ak-out", ak, *args]) == 2, args
        assert words in capsys.readouterr().err, args
    monkeypatch.setenv("TPM2_ATTEST_CA_FILE", str(junk))
    assert main(["admin", "status", "--server", "https://127.0.0.1:1", "--token", "t"]) == 2
    assert "$TPM2_ATTEST_CA_FILE" in capsys.readouterr().err
    assert main(["enroll", "--embedded", "--ak-out", ak]) == 2  # no server anywhere
    assert "--server" in capsys.readouterr().err


def test_serve_tls_option_errors(tls: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 's.db'}", "--allow-missing-ek-certificate", "--port", str(free_port())]
    assert main(["serve", *db, "--tls-key", str(tls["server_key"])]) == 2
    assert "--tls-key / TPM2_ATTEST_TLS_KEY and --tls-client-ca / TPM2_ATTEST_TLS_CLIENT_CA need --tls-cert" \
        in capsys.readouterr().err
    assert main(["serve", *db, "--tls-cert", str(tls["ca"])]) == 2  # a certificate without its key
    assert "--tls-cert" in capsys.readouterr().err
    assert main(["serve", *db, "--tls-cert", str(tls["server_cert"]), "--tls-key", str(tls["client_key"])]) == 2
    assert "--tls-key" in capsys.readouterr().err  # a key of another certificate
    assert main(["serve", *db, "--tls-cert", str(tls["server_cert"]), "--tls-key", str(tls["server_key"]),
                 "--tls-client-ca", str(tmp_path / "none.pem")]) == 2
    assert "--tls-client-ca" in capsys.readouterr().err


# -- TLS servers that are not ours -----------------------------------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _threaded(server: http.server.HTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_tls_alert_and_plain_http_are_named(tls: dict[str, Path]) -> None:
    """A server that does send TLS alerts (the standard library's, blocking) and a port that
    speaks plain HTTP."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls["server_cert"], tls["server_key"])
    ctx.load_verify_locations(tls["client_ca"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=True)
    for address in _threaded(server):
        with pytest.raises(ServiceError) as info:
            ServiceClient(f"https://{address}", ca_file=tls["ca"], retries=2, retry_base=0.01).get("/")
        assert info.value.code == "TLS_FAILURE" and info.value.extra["tls"] == "client_certificate_required"
        ok = ServiceClient(f"https://{address}", ca_file=tls["ca"], client_cert=tls["client_cert"],
                           client_key=tls["client_key"])
        assert ok.get("/") == {"ok": True}
    for address in _threaded(http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)):
        with pytest.raises(ServiceError) as info:
            ServiceClient(f"https://{address}", ca_file=tls["ca"]).get("/")
        assert info.value.code == "TLS_FAILURE" and info.value.extra["tls"] == "not_tls"


# -- retries ----------------------------------------------------------------------------------------


class _Counting(http.server.BaseHTTPRequestHandler):
    """Answers every request with ``server.answer`` (status, JSON), or reads the request and
    hangs up without answering when ``server.hang_up``."""

    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        srv: Any = self.server
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        srv.seen.append(self.command)
        if srv.hang_up:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        status, obj = srv.answer
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 503:
            self.send_header("Retry-After", "7")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _serve

    def log_message(self, *args: Any) -> None:
        pass


def _counting(port: int = 0) -> Any:
    srv: Any = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Counting)
    srv.seen, srv.hang_up, srv.answer = [], False, (200, {"ok": True})
    return srv


def test_retries_reach_a_server_that_comes_up() -> None:
    port = free_port()
    started: list[Any] = []

    def late_start() -> None:
        time.sleep(0.4)
        srv = _counting(port)
        started.append(srv)
        srv.serve_forever()

    thread = threading.Thread(target=late_start, daemon=True)
    thread.start()
    client = ServiceClient(f"http://127.0.0.1:{port}", retries=8, retry_base=0.1)
    try:
        assert client.post("/v1/attest/challenge", {"device_id": "d"}) == {"ok": True}
        assert client.attempts > 1  # refused at first, then through
        assert started[0].seen == ["POST"]  # the server saw it once
    finally:
        while not started:
            time.sleep(0.05)
        started[0].shutdown()
        started[0].server_close()
        thread.join(timeout=10)
    nobody = ServiceClient(f"http://127.0.0.1:{free_port()}", retries=2, retry_base=0.01)
    with pytest.raises(ServiceError) as info:
        nobody.get("/v1/health")
    assert info.value.code == "UNREACHABLE" and "could not connect" in info.value.detail and nobody.attempts == 3


def test_refusals_and_sent_posts_are_not_retried() -> None:
    srv = _counting()
    for address in _threaded(srv):
        url = f"http://{address}"
        for status, code in ((403, "POLICY_VIOLATION"), (503, "DATABASE_UNAVAILABLE")):
            srv.seen.clear()
            srv.answer = (status, {"error": {"code": code, "reason": None, "detail": "no"}})
            client = ServiceClient(url, retries=3, retry_base=0.01)
            with pytest.raises(ServiceError) as info:
                client.post("/v1/attest", {"challenge_id": "c"})
            assert info.value.code == code and srv.seen == ["POST"] and client.attempts == 1
        assert info.value.headers == {"Retry-After": "7"}  # kept for the agent

        # The request arrived and the connection broke before the answer: a POST may have been
        # acted on (a spent challenge), so it is not sent again; a GET is.
        srv.hang_up = True
        srv.seen.clear()
        client = ServiceClient(url, retries=2, retry_base=0.01)
        with pytest.raises(ServiceError) as info:
            client.post("/v1/attest", {"challenge_id": "c"})
        assert info.value.code == "UNREACHABLE" and "after the request was sent" in info.value.detail
        assert srv.seen == ["POST"]
        srv.seen.clear()
        with pytest.raises(ServiceError):
            client.get("/v1/admin/status")
        assert srv.seen == ["GET"] * 3


def test_a_stop_ends_the_waiting_between_attempts() -> None:
    stop = threading.Event()
    client = ServiceClient(f"http://127.0.0.1:{free_port()}", retries=5, retry_base=30.0, stop=stop)
    threading.Timer(0.2, stop.set).start()
    with pytest.raises(ServiceError) as info:
        client.get("/v1/health")  # would wait 15-30 s before its second attempt
    assert info.value.code == "UNREACHABLE" and client.attempts == 1
