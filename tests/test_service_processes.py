"""The service across processes: a process killed (SIGKILL) in the middle of recording an
attestation leaves no spent challenge without its record; two ``tpm2-attest serve`` processes on
one PostgreSQL behave as one service (single-use nonces, one enrollment per EK).
"""

from __future__ import annotations

import base64
import http.client
import json
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from sqlalchemy import text

from serveproc import Serve
from test_service import POSTGRES_URL, InProcess, TestClient, reset_postgres
from tpm2_attest import Tpm
from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.evidence import CredentialChallenge
from tpm2_attest.service import Settings, create_app, enroll
from tpm2_attest.service.store import Store

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(
    not POSTGRES_URL, reason="set TPM2_ATTEST_TEST_POSTGRES_URL to run against PostgreSQL"))]

CHILD = textwrap.dedent("""
    import json, os, signal, sys, warnings
    from pathlib import Path
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient
    from tpm2_attest.service import Settings, create_app

    from tpm2_attest.service.hotpath import HotConnection

    cfg = json.loads(sys.argv[1])
    app = create_app(Settings(**cfg["settings"]))
    execute = HotConnection.execute

    def execute_then_die(self, sql, params):   # every hot-path statement goes through execute
        cursor = execute(self, sql, params)
        if sql.lstrip().upper().startswith(cfg["kill_after"]):
            os.kill(os.getpid(), signal.SIGKILL)   # no commit, no rollback, no cleanup
        return cursor

    HotConnection.execute = execute_then_die

    with TestClient(app) as c:
        c.post("/v1/attest", content=Path(cfg["body"]).read_bytes(), headers={"content-type": "application/json"})
    sys.exit(3)  # not reached: the process dies in the middle of the request
""")


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'crash.db'}"
        return
    assert POSTGRES_URL
    reset_postgres(POSTGRES_URL)
    yield POSTGRES_URL


@pytest.mark.parametrize("kill_after", ["UPDATE CHALLENGES", "INSERT INTO ATTESTATIONS", "UPDATE DEVICES"])
def test_sigkill_while_recording_leaves_the_challenge_unspent(db_url: str, kill_after: str, swtpm: EmbeddedSwtpm,
                                                              tmp_path: Path) -> None:
    settings = Settings(database_url=db_url, ek_roots=(Path(swtpm.ca_root_path),),
                        ek_intermediates=(Path(swtpm.ca_intermediate_path),), sweep_interval=0)
    with Tpm.open(swtpm.tcti) as tpm:
        with TestClient(create_app(settings)) as c:
            dev = enroll(tpm, InProcess(c))
            r = c.post("/v1/attest/challenge", json={"device_id": dev.device_id})
            cid, nonce = r.json()["challenge_id"], base64.b64decode(r.json()["nonce"])
        quote = tpm.quote(dev.ak_blob, pcrs=[0], qualifying_data=nonce)
    body = tmp_path / "attest.json"
    body.write_text(json.dumps({"challenge_id": cid, "quote": quote.to_dict()}))
    cfg = {"settings": json.loads(settings.model_dump_json()), "body": str(body), "kill_after": kill_after}
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, timeout=120, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]

    store = Store(db_url)
    try:
        with store.engine.connect() as conn:
            consumed = conn.execute(text("SELECT consumed_at FROM challenges WHERE id = :id"), {"id": cid}).scalar_one()
            records = conn.execute(text("SELECT count(*) FROM attestations WHERE challenge_id = :id"),
                                   {"id": cid}).scalar_one()
        assert (consumed, records) == (None, 0)  # neither: the transaction died whole
    finally:
        store.close()
    with TestClient(create_app(settings)) as c:  # the device's answer still counts, once
        r = c.post("/v1/attest", content=body.read_bytes(), headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        r = c.post("/v1/attest", content=body.read_bytes(), headers={"content-type": "application/json"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "CHALLENGE_USED"
    store = Store(db_url)
    try:
        assert [a.ok for a in store.attestations(dev.device_id)] == [True, False]
    finally:
        store.close()


# -- two serve processes on one PostgreSQL --------------------------------------------------------


@pytest.fixture
def two_servers(swtpm: EmbeddedSwtpm) -> Iterator[tuple[Serve, Serve]]:
    if not POSTGRES_URL:
        pytest.skip("set TPM2_ATTEST_TEST_POSTGRES_URL to run against PostgreSQL")
    reset_postgres(POSTGRES_URL)
    args = ("--db", POSTGRES_URL, "--ek-root", swtpm.ca_root_path, "--ek-intermediate", swtpm.ca_intermediate_path)
    with Serve(*args, "--log-level", "warning") as a, \
            Serve(*args, "--log-level", "warning", "--workers", "2") as b:  # a creates the schema first
        yield a, b


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _race(*calls: Any) -> list[Any]:
    """Run the calls at the same moment in threads; their results in order."""
    out: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        barrier.wait()
        out[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_two_processes_behave_as_one_service(two_servers: tuple[Serve, Serve], swtpm: EmbeddedSwtpm) -> None:
    a, b = two_servers
    with Tpm.open(swtpm.tcti) as tpm:
        ek = tpm.ek("rsa")
        assert ek.certificate is not None

        # Two enrollments of one EK, begun on A and on B, race to finish: exactly one device.
        pending = []
        for srv in (a, b):
            st, begun = srv.request("POST", "/v1/enroll/begin", {"ek_public": _b64(ek.public),
                                                                 "ek_certificate": _b64(ek.certificate)})
            assert st == 200, begun
            blob = tpm.provision_ak(nonce=base64.b64decode(begun["nonce"]))
            st, sent = srv.request("POST", "/v1/enroll/ak", {"enrollment_id": begun["enrollment_id"],
                                                             "ak_blob": _b64(blob.to_bytes())})
            assert st == 200, sent
            ch = sent["challenge"]
            secret = tpm.activate_credential(blob, CredentialChallenge(
                base64.b64decode(ch["credential_blob"]), base64.b64decode(ch["encrypted_secret"])))
            pending.append((srv, begun["enrollment_id"], secret, blob))
        results = _race(*[lambda p=p: p[0].request("POST", "/v1/enroll/finish",
                                                    {"enrollment_id": p[1], "secret": _b64(p[2])})
                          for p in pending])
        statuses = sorted(st for st, _ in results)
        assert statuses == [200, 409], results
        winner = next(i for i, (st, _) in enumerate(results) if st == 200)
        device_id = results[winner][1]["device_id"]
        blob = pending[winner][3]
        assert next(body for st, body in results if st == 409)["error"]["code"] == "ALREADY_ENROLLED"

        # A challenge from A is answered at B; the same answer, raced at A and B, counts once.
        st, issued = a.request("POST", "/v1/attest/challenge", {"device_id": device_id})
        assert st == 200
        quote = tpm.quote(blob, pcrs=[0], qualifying_data=base64.b64decode(issued["nonce"]))
        body = {"challenge_id": issued["challenge_id"], "quote": quote.to_dict()}
        for _ in range(3):
            st, issued = a.request("POST", "/v1/attest/challenge", {"device_id": device_id})
            q = tpm.quote(blob, pcrs=[0], qualifying_data=base64.b64decode(issued["nonce"]))
            raced = {"challenge_id": issued["challenge_id"], "quote": q.to_dict()}
            got = _race(lambda r=raced: a.request("POST", "/v1/attest", r),
                        lambda r=raced: b.request("POST", "/v1/attest", r),
                        lambda r=raced: b.request("POST", "/v1/attest", r))
            assert sorted(st for st, _ in got) == [200, 409, 409], got
        st, verdict = b.request("POST", "/v1/attest", body)
        assert st == 200 and verdict["device_id"] == device_id
        st, again = a.request("POST", "/v1/attest", body)
        assert st == 409 and again["error"]["code"] == "CHALLENGE_USED"

        # B's two workers share their counters (PROMETHEUS_MULTIPROC_DIR): its /metrics counts
        # every /v1/attest it answered (6 raced + 1), whichever worker served the scrape.
        conn = http.client.HTTPConnection("127.0.0.1", b.port, timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        answered = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("tpm2_attest_requests_total{") and 'route="/v1/attest"' in line)
        assert answered == 7, text
        assert 'tpm2_attest_devices{status="trusted"} 1.0' in text

        # The rate limit counts the challenges of every process.
        st, _ = b.request("POST", "/v1/attest/challenge", {"device_id": device_id})
        codes = [srv.request("POST", "/v1/attest/challenge", {"device_id": device_id})[0]
                 for srv in (a, b) * 5]
        assert codes.count(429) >= 4 and 200 in codes
