"""Webhooks on device status changes: a receiver on loopback checks every signature (with the
package's helper and with hmac directly), fails the first attempts, holds requests to show that
nothing waits for it; drops, give-ups and shutdown are counted; ``serve --webhook`` end to end.
Devices are real (swtpm)."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from serveproc import Serve
from test_service import BACKENDS, POSTGRES_URL, InProcess, TestClient, reset_postgres
from tpm2_attest import Tpm
from tpm2_attest.cli import main
from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.service import Settings, StatusChange, attest, create_app, enroll
from tpm2_attest.service.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Webhooks,
    WebhookSignatureError,
    sign,
    verify_signature,
)

SECRET = b"0123456789abcdef-webhook-test-secret"


class Receiver:
    """A webhook receiver on 127.0.0.1: records every request; answers 500 to the first
    ``fail_first``, holds each request while ``hold`` is set (until ``release``), answers
    ``status`` otherwise."""

    def __init__(self, *, fail_first: int = 0, status: int = 204, headers: dict[str, str] | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_first, self.status, self.headers = fail_first, status, headers or {}
        self.hold = False
        self.release = threading.Event()
        self.arrived = threading.Event()
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with owner.lock:
                    n = len(owner.requests)
                    owner.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                                           "received": time.time()})
                owner.arrived.set()
                if owner.hold:
                    owner.release.wait(120)
                status = 500 if n < owner.fail_first else owner.status
                self.send_response(status)
                for k, v in owner.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/tpm"

    def accepted(self) -> list[dict[str, Any]]:
        """The notifications this receiver answered with success, checked and decoded."""
        with self.lock:
            got = list(self.requests[self.fail_first:]) if self.status < 300 else []
        return [check(r) for r in got]

    def wait_for(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n + self.fail_first:
            assert time.monotonic() < deadline, f"{len(self.requests)} requests, wanted {n + self.fail_first}"
            time.sleep(0.01)
        return self.requests

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def check(request: dict[str, Any]) -> dict[str, Any]:
    """What a receiver must do: the signature over timestamp.body, recomputed independently
    with hmac and with the package's helper, and a fresh timestamp."""
    h = request["headers"]  # HTTP header names are case-insensitive: kept lower-case here
    body, ts, sig = request["body"], h[TIMESTAMP_HEADER.lower()], h[SIGNATURE_HEADER.lower()]
    expected = "sha256=" + hmac.new(SECRET, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(sig, expected)
    assert verify_signature(SECRET, body, ts, sig) == int(ts)
    assert abs(int(ts) - request["received"]) <= 2
    assert h["content-type"] == "application/json" and h["user-agent"].startswith("tpm2-attest/")
    obj: dict[str, Any] = json.loads(body)
    assert obj["type"] == "device.status" and obj["id"] == h[DELIVERY_HEADER.lower()]
    return obj


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.close()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.secret"
    path.write_bytes(SECRET + b"\n")  # trailing newline (echo > file) is not part of it
    return path


def settings_for(swtpm: EmbeddedSwtpm, tmp_path: Path, secret_file: Path, *urls: str, **kw: Any) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'service.db'}", ek_roots=(Path(swtpm.ca_root_path),),
                    ek_intermediates=(Path(swtpm.ca_intermediate_path),), sweep_interval=0, challenge_rate=0,
                    webhook_urls=urls, webhook_secret_file=secret_file, **{"webhook_backoff": 0.02, **kw})


def series(http: TestClient) -> dict[str, float]:
    """The webhook series of /metrics: {'tpm2_attest_webhook_attempts_total{result="ok"}': 2.0, ...}."""
    out = {}
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("tpm2_attest_webhook_") and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_changes_are_signed_retried_and_delivered_in_order(swtpm: EmbeddedSwtpm, tmp_path: Path, secret_file: Path,
                                                           receivers: list[Receiver]) -> None:
    flaky, steady = Receiver(fail_first=2), Receiver()
    receivers += [flaky, steady]
    settings = settings_for(swtpm, tmp_path, secret_file, flaky.url, steady.url)
    with Tpm.open(swtpm.tcti) as tpm, TestClient(create_app(settings)) as http:
        dev = enroll(tpm, InProcess(http))  # new: None -> stale
        attest(tpm, InProcess(http), dev.device_id, dev.ak_blob)  # stale -> trusted
        attest(tpm, InProcess(http), dev.device_id, dev.ak_blob)  # still trusted: no change
        flaky.wait_for(2)
        steady.wait_for(2)
        for r in (flaky, steady):
            got = r.accepted()
            assert [(n["device_id"], n["old"], n["new"], n["cause"]) for n in got] == [
                (dev.device_id, None, "stale", "enrolled"), (dev.device_id, "stale", "trusted", "attestation")]
            assert isinstance(got[1]["attestation_id"], int) and got[1]["rules"] == []
        ids = [r["headers"][DELIVERY_HEADER.lower()] for r in flaky.requests]
        assert ids[0] == ids[1] == ids[2] != ids[3]  # the first notification, tried three times
        assert {n["id"] for n in steady.accepted()} == {n["id"] for n in flaky.accepted()}
        assert all(r["path"] == "/hooks/tpm" for r in flaky.requests)
        m = series(http)
        assert m['tpm2_attest_webhook_attempts_total{result="error"}'] == 2
        assert m['tpm2_attest_webhook_attempts_total{result="ok"}'] == 4
        assert m['tpm2_attest_webhook_deliveries_total{result="delivered"}'] == 4
        assert m["tpm2_attest_webhook_queue"] == 0


def _five_changes(tpm: Tpm, http: TestClient) -> list[str]:
    """d1 enrolls (stale), passes (trusted); its EK enrolls again as d2 (d2 stale, d1 revoked); d2 passes."""
    d1 = enroll(tpm, InProcess(http))
    attest(tpm, InProcess(http), d1.device_id, d1.ak_blob)
    d2 = enroll(tpm, InProcess(http))
    attest(tpm, InProcess(http), d2.device_id, d2.ak_blob)
    return [d1.device_id, d2.device_id]


def test_a_stuck_receiver_blocks_no_request(swtpm: EmbeddedSwtpm, tmp_path: Path, secret_file: Path,
                                            receivers: list[Receiver]) -> None:
    stuck = Receiver()
    stuck.hold = True  # holds every request until released
    receivers.append(stuck)
    settings = settings_for(swtpm, tmp_path, secret_file, stuck.url, allow_reenroll=True, webhook_timeout=60.0)
    with Tpm.open(swtpm.tcti) as tpm, TestClient(create_app(settings)) as http:
        done: list[list[str]] = []
        worker = threading.Thread(target=lambda: done.append(_five_changes(tpm, http)))
        worker.start()
        worker.join(timeout=90)  # enrollments and attestations finish while the receiver holds
        assert done and stuck.arrived.is_set() and not stuck.release.is_set()
        assert len(stuck.requests) == 1  # one in flight, the rest waiting in the queue
        assert series(http)["tpm2_attest_webhook_queue"] == 4
        stuck.release.set()
        stuck.wait_for(5)
        d1, d2 = done[0]
        assert [(n["device_id"], n["new"]) for n in stuck.accepted()] == [
            (d1, "stale"), (d1, "trusted"), (d2, "stale"), (d1, "revoked"), (d2, "trusted")]


def test_a_full_queue_drops_and_says_so(swtpm: EmbeddedSwtpm, tmp_path: Path, secret_file: Path,
                                        receivers: list[Receiver], caplog: pytest.LogCaptureFixture) -> None:
    stuck = Receiver()
    stuck.hold = True
    receivers.append(stuck)
    settings = settings_for(swtpm, tmp_path, secret_file, stuck.url, allow_reenroll=True, webhook_queue=2)
    caplog.set_level(logging.WARNING, logger="tpm2_attest.service.webhooks")
    with Tpm.open(swtpm.tcti) as tpm, TestClient(create_app(settings)) as http:
        d1 = enroll(tpm, InProcess(http))
        assert stuck.arrived.wait(30)  # the first change is in flight, held
        attest(tpm, InProcess(http), d1.device_id, d1.ak_blob)  # queued (1 of 2)
        d2 = enroll(tpm, InProcess(http))  # d2 stale queued (2 of 2), d1 revoked dropped
        attest(tpm, InProcess(http), d2.device_id, d2.ak_blob)  # dropped
        m = series(http)
        assert m['tpm2_attest_webhook_dropped_total{reason="queue_full"}'] == 2
        assert m["tpm2_attest_webhook_queue"] == 2
        assert any("queue full" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)
        stuck.release.set()
        stuck.wait_for(3)
        assert [n["new"] for n in stuck.accepted()] == ["stale", "trusted", "stale"]


def test_giving_up_redirects_and_shutdown(tmp_path: Path, receivers: list[Receiver],
                                          caplog: pytest.LogCaptureFixture) -> None:
    from tpm2_attest.service.metrics import Metrics
    from tpm2_attest.service.store import Store

    down = Receiver(status=503)
    moved = Receiver(status=307, headers={"Location": "/elsewhere"})
    receivers += [down, moved]
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    metrics = Metrics(store, lambda: datetime.now(UTC))
    caplog.set_level(logging.WARNING, logger="tpm2_attest.service.webhooks")
    hooks = Webhooks([down.url, moved.url], SECRET, attempts=3, backoff=0.01, metrics=metrics)
    change = StatusChange("dev-1", "trusted", "failed", datetime.now(UTC), "attestation", 9, ("pcrs.value",))
    try:
        hooks.notify(change)
        down.wait_for(3)
        moved.wait_for(3)
        deadline = time.monotonic() + 10
        while metrics.webhook_deliveries.labels("failed")._value.get() < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert metrics.webhook_attempts.labels("error")._value.get() == 6
        assert [r["path"] for r in moved.requests] == ["/hooks/tpm"] * 3  # never /elsewhere
        assert check(down.requests[0])["rules"] == ["pcrs.value"]
        assert any("gave up" in r.getMessage() for r in caplog.records)

        slow = Webhooks([down.url], SECRET, attempts=5, backoff=60.0, metrics=metrics)  # waits a minute to retry
        slow.notify(change)
        down.wait_for(4)
        started = time.monotonic()
        slow.stop(grace=0.5)
        assert not slow.receivers[0].thread.is_alive() and time.monotonic() - started < 30
        assert metrics.webhook_dropped.labels("shutdown")._value.get() == 1
        assert any("shutting down: dropped 1 status change(s)" in r.getMessage() for r in caplog.records)
        slow.notify(change)  # after stop: counted, not queued
        assert metrics.webhook_dropped.labels("shutdown")._value.get() == 2
    finally:
        hooks.stop(grace=0.1)
        store.close()


def test_signature_checks() -> None:
    body = b'{"id":"x","type":"device.status"}'
    now = 1_767_225_600
    sig = sign(SECRET, now, body)
    assert sig.startswith("sha256=") and verify_signature(SECRET, body, str(now), sig, now=now + 299) == now
    bad = [(SECRET, body + b" ", str(now), sig, now),  # body changed
           (b"another secret of some length", body, str(now), sig, now),
           (SECRET, body, str(now + 1), sig, now),  # timestamp changed
           (SECRET, body, str(now), sig, now + 301),  # too old: a replay
           (SECRET, body, str(now), sig, now - 301),
           (SECRET, body, None, sig, now), (SECRET, body, str(now), None, now),
           (SECRET, body, "12e3", sig, now), (SECRET, body, "\uff11\uff12", sig, now), (SECRET, body, str(now), "sha256=é", now)]
    for secret, b, ts, s, at in bad:
        with pytest.raises(WebhookSignatureError):
            verify_signature(secret, b, ts, s, now=at)


def test_serve_delivers_webhooks(swtpm: EmbeddedSwtpm, tmp_path: Path, secret_file: Path,
                                 receivers: list[Receiver], capsys: pytest.CaptureFixture[str]) -> None:
    hook = Receiver(fail_first=1)
    receivers.append(hook)
    with Serve("--db", f"sqlite:///{tmp_path / 's.db'}", "--ek-root", swtpm.ca_root_path,
               "--ek-intermediate", swtpm.ca_intermediate_path, "--log-level", "warning",
               "--webhook", hook.url, "--webhook-secret-file", secret_file, "--webhook-backoff", "0.05") as srv:
        ak = tmp_path / "ak.json"
        assert main(["enroll", "--server", srv.url, "--tcti", swtpm.tcti, "--ak-out", str(ak), "--json"]) == 0
        device = json.loads(capsys.readouterr().out)["device_id"]
        assert main(["attest", "--tcti", swtpm.tcti, "--ak", str(ak)]) == 0
        hook.wait_for(2)
        assert [(n["device_id"], n["new"]) for n in hook.accepted()] == [(device, "stale"), (device, "trusted")]
        deadline = time.monotonic() + 10
        while 'tpm2_attest_webhook_deliveries_total{result="delivered"} 2.0' not in (text := srv.request(
                "GET", "/metrics")[1]):
            assert time.monotonic() < deadline, text
            time.sleep(0.05)
        assert 'tpm2_attest_webhook_attempts_total{result="error"} 1.0' in text


def test_serve_webhook_option_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    short = tmp_path / "short"
    short.write_text("tiny\n")
    base = ["serve", "--db", f"sqlite:///{tmp_path / 's.db'}", "--allow-missing-ek-certificate"]
    for args, words in ((["--webhook", "http://127.0.0.1:9/x"], "--webhook-secret-file"),
                        (["--webhook", "ftp://h/x", "--webhook-secret-file", str(short)], "--webhook"),
                        (["--webhook", "http://127.0.0.1:9/x", "--webhook-secret-file", str(short)], "at least 16"),
                        (["--webhook", "http://127.0.0.1:9/x", "--webhook-secret-file", str(tmp_path / "none")],
                         "cannot read"),
                        (["--webhook", "http://127.0.0.1:9/x", "--webhook-secret-file", str(short),
                          "--webhook-attempts", "0"], "--webhook-attempts")):
        assert main([*base, *args]) == 2, args
        err = capsys.readouterr().err
        assert words in err and "webhook_" not in err.replace("TPM2_ATTEST_WEBHOOK", "").replace(str(tmp_path), ""), err


@pytest.mark.parametrize("backend", BACKENDS)
def test_racing_sweepers_report_each_stale_device_once(backend: str, tmp_path: Path) -> None:
    """Every process sweeps; each device that went stale must be told to the hooks by one."""
    from tpm2_attest.service import store as st
    from tpm2_attest.service.store import DeviceRecord, Store

    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    if backend == "postgres":
        assert POSTGRES_URL
        reset_postgres(POSTGRES_URL)
        url = POSTGRES_URL
    db = Store(url)
    now = datetime.now(UTC)
    try:
        for round_ in range(5):
            ids = [f"r{round_}-d{i}" for i in range(20)]
            for i, device_id in enumerate(ids):
                db.add(DeviceRecord(id=device_id, enrolled_at=now, ek_public=b"ek", ek_name=device_id.encode(),
                                    ek_cert_fingerprint=None, ek_cert_verified=False, ak_public=b"ak",
                                    ak_public_der=b"der", ak_name=b"ak-%d" % i, ak_format="TPW1",
                                    status=st.TRUSTED, fresh_until=now - timedelta(seconds=1)))
            barrier = threading.Barrier(4)
            reported: list[list[str]] = []

            def sweep(barrier: threading.Barrier = barrier, reported: list[list[str]] = reported) -> None:
                barrier.wait()
                with db.session() as s:
                    reported.append(st.mark_stale(s, now))

            threads = [threading.Thread(target=sweep) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            flat = [d for r in reported for d in r]
            assert sorted(flat) == sorted(ids), reported
    finally:
        db.close()
