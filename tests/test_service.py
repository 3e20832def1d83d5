"""The enrollment + attestation service end to end: a real TPM (swtpm) as the device, the
FastAPI application in-process (TestClient) as the server, SQLite files in tmp_path as the
store; and once, the stdlib client and CLI against a real uvicorn server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tpm2_attest import AkBlob, Tpm
from tpm2_attest.cli import main
from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.evidence import CredentialChallenge, Quote
from tpm2_attest.service import (
    Enrollment,
    ServiceClient,
    ServiceError,
    Settings,
    attest,
    create_app,
    enroll,
)

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

with warnings.catch_warnings():  # newest Starlette prefers httpx2 for its TestClient
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

import eventlog_synth as synth  # noqa: E402
from serveproc import in_thread  # noqa: E402
from tpm2_attest.service.store import (  # noqa: E402 (needs the extra)
    FAILED,
    DeviceRecord,
    EnrollmentRecord,
    Store,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Clock:
    """An injectable UTC clock that moves only when told."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class InProcess(ServiceClient):
    """The stdlib client's protocol code, carried by FastAPI's TestClient instead of urllib."""

    def __init__(self, http: TestClient, token: str | None = None) -> None:
        super().__init__("http://testserver", token=token)
        self.http = http

    def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        r = self.http.request(method, path, json=body, headers=headers)
        if r.status_code >= 400:
            raise self._refusal(r.status_code, r.content)
        return self._decode(r.status_code, r.content)


def refused(r: Any, status: int, code: str) -> dict[str, Any]:
    """Assert an HTTP refusal and return its error object."""
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code, err
    return err


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(swtpm: EmbeddedSwtpm, tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'service.db'}",
                    ek_roots=(Path(swtpm.ca_root_path),), ek_intermediates=(Path(swtpm.ca_intermediate_path),))


@pytest.fixture
def http(settings: Settings, clock: Clock) -> Iterator[TestClient]:
    with TestClient(create_app(settings, clock=clock)) as c:
        yield c


@pytest.fixture
def tpm(swtpm: EmbeddedSwtpm) -> Iterator[Tpm]:
    with Tpm.open(swtpm.tcti) as t:
        yield t


@pytest.fixture
def device(http: TestClient, tpm: Tpm) -> Enrollment:
    """A device enrolled through the client's protocol code."""
    return enroll(tpm, InProcess(http))


def begin(http: TestClient, tpm: Tpm, *, certificate: bool = True) -> tuple[str, bytes]:
    ek = tpm.ek("rsa")
    assert ek.certificate is not None
    r = http.post("/v1/enroll/begin", json={"ek_public": b64(ek.public),
                                            "ek_certificate": b64(ek.certificate) if certificate else None})
    assert r.status_code == 200, r.text
    return r.json()["enrollment_id"], base64.b64decode(r.json()["nonce"])


def send_ak(http: TestClient, enrollment_id: str, blob: AkBlob) -> Any:
    return http.post("/v1/enroll/ak", json={"enrollment_id": enrollment_id, "ak_blob": b64(blob.to_bytes())})


def secret_of(tpm: Tpm, blob: AkBlob, response: Any) -> bytes:
    ch = response.json()["challenge"]
    return tpm.activate_credential(blob, CredentialChallenge.from_bytes(
        base64.b64decode(ch["credential_blob"]) + base64.b64decode(ch["encrypted_secret"])))


def challenge(http: TestClient, device_id: str) -> tuple[str, bytes]:
    r = http.post("/v1/attest/challenge", json={"device_id": device_id})
    assert r.status_code == 200, r.text
    return r.json()["challenge_id"], base64.b64decode(r.json()["nonce"])


def post_quote(http: TestClient, challenge_id: str, quote: Quote | dict[str, Any], **extra: Any) -> Any:
    body = quote.to_dict() if isinstance(quote, Quote) else quote
    return http.post("/v1/attest", json={"challenge_id": challenge_id, "quote": body, **extra})


def store_of(settings: Settings) -> Store:
    return Store(settings.database_url)


# -- the happy path ---------------------------------------------------------------------------------


def test_enroll_then_attest(http: TestClient, tpm: Tpm, settings: Settings) -> None:
    dev = enroll(tpm, InProcess(http))
    assert dev.info["ek_certificate_verified"] is True
    assert dev.info["ak_format"] == "TPW1" and dev.info["ak_name"] == dev.ak_blob.name.hex()
    assert dev.info["ek_name"] == tpm.ek("rsa").name.hex()

    verdict = attest(tpm, InProcess(http), dev.device_id, dev.ak_blob, pcrs=[0, 1, 2, 16])
    assert verdict["ok"] is True and verdict["device_id"] == dev.device_id and verdict["bank"] == "sha256"
    current = tpm.pcr.read([0, 1, 2, 16])
    assert {int(k): bytes.fromhex(v) for k, v in verdict["pcrs"].items()} == current

    store = store_of(settings)
    try:
        [rec] = store.attestations(dev.device_id)
        assert rec.ok and rec.code is None and rec.result is not None and rec.result["pcrs"] == verdict["pcrs"]
        device = store.device(dev.device_id)
        assert device is not None and device.ak_public_der == dev.ak_blob.ak_public_der
        assert device.ek_cert_verified and device.ek_cert_fingerprint == hashlib.sha256(
            tpm.ek("rsa").certificate or b"").hexdigest()
    finally:
        store.close()


# -- attestation refusals ---------------------------------------------------------------------------


def test_replayed_nonce_is_refused(http: TestClient, tpm: Tpm, device: Enrollment, settings: Settings) -> None:
    cid, nonce = challenge(http, device.device_id)
    q = tpm.quote(device.ak_blob, pcrs=[0], qualifying_data=nonce)
    assert post_quote(http, cid, q).status_code == 200
    refused(post_quote(http, cid, q), 409, "CHALLENGE_USED")
    store = store_of(settings)
    try:
        assert [(a.ok, a.code) for a in store.attestations(device.device_id)] == [(True, None), (False, "CHALLENGE_USED")]
    finally:
        store.close()


def test_wrong_device(http: TestClient, tpm: Tpm, device: Enrollment) -> None:
    refused(http.post("/v1/attest/challenge", json={"device_id": "no-such-device"}), 404, "UNKNOWN_DEVICE")
    refused(post_quote(http, "no-such-challenge", tpm.quote(device.ak_blob, pcrs=[0], qualifying_data=b"x")),
            404, "UNKNOWN_CHALLENGE")

    # A quote by another AK of the same TPM (never enrolled) over the right nonce.
    cid, nonce = challenge(http, device.device_id)
    other = tpm.provision_ak()
    err = refused(post_quote(http, cid, tpm.quote(other, pcrs=[0], qualifying_data=nonce)), 403, "BAD_SIGNATURE")
    assert err["reason"] == "BAD_SIGNATURE"

    # The enrolled AK over another challenge's nonce.
    cid1, _ = challenge(http, device.device_id)
    _, nonce2 = challenge(http, device.device_id)
    refused(post_quote(http, cid1, tpm.quote(device.ak_blob, pcrs=[0], qualifying_data=nonce2)), 403, "NONCE_MISMATCH")


def test_tampered_quote_reason_reaches_the_client(http: TestClient, tpm: Tpm, device: Enrollment,
                                                  settings: Settings) -> None:
    cid, nonce = challenge(http, device.device_id)
    q = tpm.quote(device.ak_blob, pcrs=[0, 16], qualifying_data=nonce)
    bad = bytearray(q.attest)
    bad[-1] ^= 1
    err = refused(post_quote(http, cid, Quote(bytes(bad), q.signature, q.pcrs)), 403, "BAD_SIGNATURE")
    assert err["reason"] == "BAD_SIGNATURE" and err["detail"]
    # The nonce was spent by the failed attempt: the genuine quote cannot use it any more.
    refused(post_quote(http, cid, q), 409, "CHALLENGE_USED")

    # Lying about a PCR value: signature fine, digest not.
    cid, nonce = challenge(http, device.device_id)
    q = tpm.quote(device.ak_blob, pcrs=[0, 16], qualifying_data=nonce)
    pcrs = {"sha256": {**q.pcrs["sha256"], 16: bytes(x ^ 1 for x in q.pcrs["sha256"][16])}}
    refused(post_quote(http, cid, Quote(q.attest, q.signature, pcrs)), 403, "PCR_DIGEST_MISMATCH")

    # Malformed evidence is a refusal like any other: recorded, nonce spent.
    cid, _ = challenge(http, device.device_id)
    refused(post_quote(http, cid, {"version": 1, "attest": "!!", "signature": "", "pcrs": {}}), 403, "MALFORMED")
    refused(post_quote(http, cid, q), 409, "CHALLENGE_USED")

    # Through the client, the reason arrives as ServiceError.code.
    with pytest.raises(ServiceError) as info:
        attest(tpm, InProcess(http), "no-such-device", device.ak_blob)
    assert info.value.code == "UNKNOWN_DEVICE" and info.value.status == 404

    store = store_of(settings)
    try:
        codes = [a.code for a in store.attestations(device.device_id)]
        assert codes == ["BAD_SIGNATURE", "CHALLENGE_USED", "PCR_DIGEST_MISMATCH", "MALFORMED", "CHALLENGE_USED"]
    finally:
        store.close()


def test_expired_nonce(http: TestClient, tpm: Tpm, device: Enrollment, clock: Clock, settings: Settings) -> None:
    cid, nonce = challenge(http, device.device_id)
    q = tpm.quote(device.ak_blob, pcrs=[0], qualifying_data=nonce)
    clock.advance(settings.nonce_ttl + 1)
    refused(post_quote(http, cid, q), 410, "CHALLENGE_EXPIRED")
    refused(post_quote(http, cid, q), 409, "CHALLENGE_USED")  # spent by the late attempt
    cid, nonce = challenge(http, device.device_id)  # a fresh one, on the moved clock, passes
    clock.advance(settings.nonce_ttl - 1)
    assert post_quote(http, cid, tpm.quote(device.ak_blob, pcrs=[0], qualifying_data=nonce)).status_code == 200


def test_pcr_policy_file_seeds_the_policies(http: TestClient, tpm: Tpm, device: Enrollment, settings: Settings,
                                            clock: Clock, tmp_path: Path) -> None:
    """The PCR file of earlier releases still works: it seeds the database's policies."""
    now = tpm.pcr.read([0, 16])
    file = tmp_path / "pcrs.json"
    file.write_text(json.dumps({"default": {"sha256": {str(i): v.hex() for i, v in now.items()}}}))
    good = settings.replace(pcr_policy=file)
    with TestClient(create_app(good, clock=clock)) as c:
        verdict = attest(tpm, InProcess(c), device.device_id, device.ak_blob, pcrs=[0, 16])
        assert verdict["ok"] and verdict["policies"] == [{"name": "default", "version": 1}]
        assert verdict["status"] == "trusted"
        with pytest.raises(ServiceError) as info:  # an expected PCR the quote does not cover
            attest(tpm, InProcess(c), device.device_id, device.ak_blob, pcrs=[0])
        assert info.value.code == "POLICY_VIOLATION" and info.value.status == 403
        assert info.value.extra["rules"] == ["pcrs.not_quoted"] and "PCR 16" in info.value.detail
    # A device's own policy replaces the default one.
    file.write_text(json.dumps({"default": {"sha256": {str(i): v.hex() for i, v in now.items()}},
                                "devices": {device.device_id: {"sha256": {"16": "01" * 32}}}}))
    with TestClient(create_app(good, clock=clock)) as c:
        with pytest.raises(ServiceError) as info:
            attest(tpm, InProcess(c), device.device_id, device.ak_blob, pcrs=[0, 16])
        assert info.value.code == "POLICY_VIOLATION" and info.value.extra["rules"] == ["pcrs.value"]
    store = store_of(settings)
    try:
        rec = store.device(device.device_id)
        assert rec is not None and rec.status == "failed"
        last = store.attestations(device.device_id)[-1]
        assert last.policies == [{"name": f"device-{device.device_id}", "version": 1}]
        assert last.violations is not None and last.violations[0]["rule"] == "pcrs.value"
        assert last.result is not None and last.result["pcrs"]["16"] == now[16].hex()  # what was seen
    finally:
        store.close()


def test_event_log_is_replayed(fresh_swtpm: EmbeddedSwtpm, settings: Settings, clock: Clock) -> None:
    log = synth.LogBuilder(banks=("sha256",)).event(16, synth.EV_ACTION, b"tpm2-attest service test")
    with Tpm.open(fresh_swtpm.tcti) as tpm, TestClient(create_app(settings, clock=clock)) as c:
        for rec in log.records:
            tpm.pcr.extend(rec.pcr, rec.digests["sha256"], bank="sha256", digest=True)
        dev = enroll(tpm, InProcess(c))
        verdict = attest(tpm, InProcess(c), dev.device_id, dev.ak_blob, pcrs=[0, 16], event_log=log.build())
        assert verdict["event_log"]["verified"] == [16]
        assert verdict["pcrs"]["16"] == log.expected("sha256")[16].hex()
        [rec] = [a for a in c.app.state.service.store.attestations(dev.device_id) if a.ok]
        assert rec.state == verdict["event_log"]["state"] and isinstance(rec.state, dict)  # machine state kept
        lying = synth.LogBuilder(banks=("sha256",)).event(16, synth.EV_ACTION, b"something else")
        with pytest.raises(ServiceError) as info:
            attest(tpm, InProcess(c), dev.device_id, dev.ak_blob, pcrs=[16], event_log=lying.build())
        assert info.value.code == "EVENT_LOG_REPLAY_MISMATCH"
        with pytest.raises(ServiceError) as info:
            attest(tpm, InProcess(c), dev.device_id, dev.ak_blob, pcrs=[16], event_log=b"\x01" * 7)
        assert info.value.code == "EVENT_LOG_MALFORMED"


# -- enrollment refusals ----------------------------------------------------------------------------


def test_enrollment_steps_in_order_each_once(http: TestClient, tpm: Tpm, settings: Settings) -> None:
    refused(http.post("/v1/enroll/ak", json={"enrollment_id": "nope", "ak_blob": b64(b"x")}), 404, "UNKNOWN_ENROLLMENT")
    eid, nonce = begin(http, tpm)
    err = refused(http.post("/v1/enroll/finish", json={"enrollment_id": eid, "secret": b64(b"x")}), 409,
                  "ENROLLMENT_STATE")
    assert "/v1/enroll/ak" in err["detail"]
    blob = tpm.provision_ak(nonce=nonce)
    r = send_ak(http, eid, blob)
    assert r.status_code == 200
    refused(send_ak(http, eid, blob), 409, "ENROLLMENT_STATE")
    secret = secret_of(tpm, blob, r)
    r = http.post("/v1/enroll/finish", json={"enrollment_id": eid, "secret": b64(secret)})
    assert r.status_code == 200
    refused(http.post("/v1/enroll/finish", json={"enrollment_id": eid, "secret": b64(secret)}), 409, "ENROLLMENT_STATE")
    refused(send_ak(http, eid, blob), 409, "ENROLLMENT_STATE")


def test_wrong_secret_fails_the_enrollment(http: TestClient, tpm: Tpm, settings: Settings) -> None:
    eid, nonce = begin(http, tpm)
    blob = tpm.provision_ak(nonce=nonce)
    r = send_ak(http, eid, blob)
    secret = secret_of(tpm, blob, r)
    err = refused(http.post("/v1/enroll/finish", json={"enrollment_id": eid, "secret": b64(bytes(len(secret)))}),
                  403, "CREDENTIAL_MISMATCH")
    assert err["reason"] == "CREDENTIAL_MISMATCH"
    # One attempt only: the right secret now comes too late.
    refused(http.post("/v1/enroll/finish", json={"enrollment_id": eid, "secret": b64(secret)}), 409, "ENROLLMENT_STATE")
    store = store_of(settings)
    try:
        rec = store.enrollment(eid)
        assert rec is not None and rec.state == FAILED and rec.failure == "CREDENTIAL_MISMATCH"
        assert rec.secret_hash == hashlib.sha256(secret).digest()  # the secret itself is not stored
    finally:
        store.close()


def test_ak_bound_to_another_nonce_is_refused(http: TestClient, tpm: Tpm) -> None:
    eid, _nonce = begin(http, tpm)
    refused(send_ak(http, eid, tpm.provision_ak(nonce=b"not the server's nonce")), 403, "NONCE_MISMATCH")
    refused(send_ak(http, eid, tpm.provision_ak()), 409, "ENROLLMENT_STATE")  # the enrollment is over
    eid, _nonce = begin(http, tpm)
    refused(http.post("/v1/enroll/ak", json={"enrollment_id": eid, "ak_blob": b64(b"TPW1garbage")}), 403, "MALFORMED")


def test_enrollment_expires(http: TestClient, tpm: Tpm, clock: Clock, settings: Settings) -> None:
    eid, nonce = begin(http, tpm)
    blob = tpm.provision_ak(nonce=nonce)
    clock.advance(settings.enrollment_ttl + 1)
    refused(send_ak(http, eid, blob), 410, "ENROLLMENT_EXPIRED")
    refused(send_ak(http, eid, blob), 409, "ENROLLMENT_STATE")


def test_reenrollment_is_a_policy_decision(http: TestClient, tpm: Tpm, device: Enrollment, settings: Settings,
                                           clock: Clock) -> None:
    with pytest.raises(ServiceError) as info:
        enroll(tpm, InProcess(http))
    assert info.value.code == "ALREADY_ENROLLED" and info.value.status == 409

    with TestClient(create_app(settings.replace(allow_reenroll=True), clock=clock)) as c:
        again = enroll(tpm, InProcess(c))
        assert again.device_id != device.device_id and again.info["replaced_devices"] == [device.device_id]
        refused(c.post("/v1/attest/challenge", json={"device_id": device.device_id}), 404, "UNKNOWN_DEVICE")
        assert attest(tpm, InProcess(c), again.device_id, again.ak_blob, pcrs=[0])["ok"]


def test_ek_certificate_policy(swtpm: EmbeddedSwtpm, tpm: Tpm, settings: Settings, clock: Clock,
                               tmp_path: Path) -> None:
    with TestClient(create_app(settings, clock=clock)) as c:
        ek = tpm.ek("rsa")
        refused(c.post("/v1/enroll/begin", json={"ek_public": b64(ek.public)}), 403, "EK_CERTIFICATE_REQUIRED")
        ecc = tpm.ek("ecc384")  # a genuine certificate, but for another key
        assert ecc.certificate is not None
        refused(c.post("/v1/enroll/begin", json={"ek_public": b64(ek.public), "ek_certificate": b64(ecc.certificate)}),
                403, "EK_KEY_MISMATCH")
        refused(c.post("/v1/enroll/begin", json={"ek_public": b64(b"\x00\x01junk")}), 403, "MALFORMED")
    # Roots that did not issue the certificate: a directory holding only an unrelated one.
    other = tmp_path / "roots"
    other.mkdir()
    (other / "unrelated.der").write_bytes(ecc.certificate)
    (other / "README").write_text("ignored")
    wrong = settings.replace(ek_roots=(other,), ek_intermediates=())
    with TestClient(create_app(wrong, clock=clock)) as c:
        refused(c.post("/v1/enroll/begin", json={"ek_public": b64(ek.public), "ek_certificate": b64(ek.certificate or b"")}),
                403, "EK_CERT_CHAIN")
    with pytest.raises(ValueError, match="no EK root"):
        create_app(settings.replace(ek_roots=()), clock=clock)
    # Trust on first use, when the operator says so.
    tofu = settings.replace(ek_roots=(), ek_intermediates=(), require_ek_certificate=False,
                   database_url=f"sqlite:///{tmp_path / 'tofu.db'}")
    with TestClient(create_app(tofu, clock=clock)) as c:
        dev = enroll(tpm, InProcess(c))
        assert dev.info["ek_certificate_verified"] is False


def test_pcp_device_enrolls_and_attests(swtpm: EmbeddedSwtpm, http: TestClient, settings: Settings, clock: Clock,
                                        tmp_path: Path) -> None:
    """The Windows flow: machine-scope PCP2 AK provisioned as SYSTEM, quotes as a standard user."""
    state = tmp_path / "pcp"
    with Tpm.open_pcp_emulator(swtpm.tcti, state, privilege="system") as system:
        dev = enroll(system, InProcess(http), key_name="acme-device-ak", scope="machine", overwrite=True)
    assert dev.ak_blob.format == "PCP2" and dev.info["ak_format"] == "PCP2"
    with Tpm.open_pcp_emulator(swtpm.tcti, state, privilege="standard") as user:
        assert attest(user, InProcess(http), dev.device_id, dev.ak_blob, pcrs=[0, 7])["ok"]
    # PCP identity keys sign with SHA-1: a service that refuses SHA-1 refuses them at enrollment.
    strict = settings.replace(allow_sha1=False, database_url=f"sqlite:///{tmp_path / 'strict.db'}")
    with TestClient(create_app(strict, clock=clock)) as c, \
            Tpm.open_pcp_emulator(swtpm.tcti, state, privilege="system") as system:
        with pytest.raises(ServiceError) as info:
            enroll(system, InProcess(c), key_name="acme-device-ak-2", scope="machine", overwrite=True)
        assert info.value.code == "WEAK_KEY"


# -- requests -------------------------------------------------------------------------------------


def test_oversized_and_invalid_bodies(http: TestClient, settings: Settings) -> None:
    big = b'{"device_id": "' + b"a" * settings.max_body_bytes + b'"}'
    r = http.post("/v1/attest/challenge", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"device_id": "'
        for _ in range(settings.max_body_bytes // 65536 + 1):
            yield b"a" * 65536
        yield b'"}'

    refused(http.post("/v1/attest/challenge", content=chunks(), headers={"content-type": "application/json"}),
            413, "BODY_TOO_LARGE")
    secret = "c2VjcmV0IHZhbHVl!"
    err = refused(http.post("/v1/enroll/finish", json={"enrollment_id": "e", "secret": secret}), 422, "INVALID_REQUEST")
    assert "secret" in err["detail"] and secret not in json.dumps(err)  # named, never echoed
    refused(http.post("/v1/attest/challenge", json={"device_id": "d", "extra": 1}), 422, "INVALID_REQUEST")
    for version in ("1", 1.0, True):  # the quote's version is the integer 1, as Quote.from_json reads it
        quote = {"version": version, "attest": "AA==", "signature": "AA==", "pcrs": {}}
        err = refused(http.post("/v1/attest", json={"challenge_id": "c", "quote": quote}), 422, "INVALID_REQUEST")
        assert "version" in err["detail"], err
    refused(http.post("/v1/attest/challenge", content=b"not json", headers={"content-type": "application/json"}),
            422, "INVALID_REQUEST")
    refused(http.get("/v1/nothing-here"), 404, "NOT_FOUND")
    assert http.get("/v1/health").json()["ok"] is True


# -- persistence ----------------------------------------------------------------------------------


def test_store_survives_restart(settings: Settings, tpm: Tpm, clock: Clock) -> None:
    with TestClient(create_app(settings, clock=clock)) as c:
        eid, nonce = begin(c, tpm)  # an enrollment left half-way across the restart...
        blob = tpm.provision_ak(nonce=nonce)
        dev = enroll(tpm, InProcess(c))  # ...while the same EK enrolls to the end
        cid, cnonce = challenge(c, dev.device_id)  # and an open challenge
    with TestClient(create_app(settings, clock=clock)) as c:
        assert post_quote(c, cid, tpm.quote(dev.ak_blob, pcrs=[0], qualifying_data=cnonce)).status_code == 200
        assert attest(tpm, InProcess(c), dev.device_id, dev.ak_blob)["ok"]
        r = send_ak(c, eid, blob)
        assert r.status_code == 200
        # The EK is enrolled already (survived the restart): the second device is refused.
        refused(c.post("/v1/enroll/finish", json={"enrollment_id": eid, "secret": b64(secret_of(tpm, blob, r))}),
                409, "ALREADY_ENROLLED")
    store = store_of(settings)
    try:
        assert [a.ok for a in store.attestations(dev.device_id)] == [True, True]
        rec = store.enrollment(eid)
        assert isinstance(rec, EnrollmentRecord) and rec.state == FAILED and rec.failure == "ALREADY_ENROLLED"
    finally:
        store.close()


def test_failed_write_leaves_nothing(settings: Settings) -> None:
    """A transaction that raises leaves no row behind."""
    store = store_of(settings)
    try:
        now = datetime.now(UTC)
        with pytest.raises(RuntimeError), store.transaction() as s:
            s.add(EnrollmentRecord(id="e1", state="begun", created_at=now, expires_at=now, ek_public=b"",
                                   ek_name=b"", nonce=b""))
            s.flush()
            raise RuntimeError("crash mid-write")
        assert store.enrollment("e1") is None
    finally:
        store.close()


POSTGRES_URL = os.environ.get("TPM2_ATTEST_TEST_POSTGRES_URL")
"""e.g. postgresql://postgres@/attest?host=/tmp/pg&port=5432 (its tables are dropped first)."""
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(
    not POSTGRES_URL, reason="set TPM2_ATTEST_TEST_POSTGRES_URL to run against PostgreSQL"))]


def reset_postgres(url: str) -> None:
    """An empty database: every table of an earlier run (and Alembic's version table) dropped."""
    from sqlalchemy import text

    store = Store(url, create_schema=False, pool_size=1)
    try:
        with store.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        store.close()


@pytest.fixture(params=BACKENDS)
def backend_settings(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Settings]:
    if request.param == "sqlite":
        yield settings
        return
    assert POSTGRES_URL
    reset_postgres(POSTGRES_URL)
    yield settings.replace(database_url=POSTGRES_URL)


def test_one_active_device_per_ek_is_a_database_constraint(backend_settings: Settings) -> None:
    """Even a writer that skips the service's check cannot register an EK twice."""
    from sqlalchemy.exc import IntegrityError

    store = store_of(backend_settings)
    now = datetime.now(UTC)

    def device(device_id: str, revoked: datetime | None = None) -> DeviceRecord:
        return DeviceRecord(id=device_id, enrolled_at=now, revoked_at=revoked, ek_public=b"ek", ek_name=b"ek-name",
                            ek_cert_fingerprint=None, ek_cert_verified=False, ak_public=b"ak", ak_public_der=b"der",
                            ak_name=b"ak-name", ak_format="TPW1")
    try:
        store.add(device("d1"))
        store.add(device("d0", revoked=now))  # revoked devices do not count
        with pytest.raises(IntegrityError):
            store.add(device("d2"))
        assert store.device("d2") is None
        active = store.active_device_for_ek(b"ek-name")
        assert active is not None and active.id == "d1" and active.enrolled_at == now
    finally:
        store.close()


def test_a_hot_connection_left_in_a_transaction_goes_back_rolled_back_and_transactional(
        backend_settings: Settings) -> None:
    """The hot path's connection (autocommit on PostgreSQL) is returned rolled back if not
    committed, and the ORM's next transaction on it is still one: a statement of a block that
    raises is undone."""
    from sqlalchemy import text

    store = Store(backend_settings.database_url, pool_size=1, max_overflow=0)
    try:
        with store.engine.begin() as conn:
            conn.execute(text("CREATE TABLE hot_probe (x INTEGER)"))
        with store.hot.connection() as db:
            db.begin()
            db.execute(f"INSERT INTO hot_probe (x) VALUES ({store.hot.p})", (1,))  # never committed
        with pytest.raises(RuntimeError), store.transaction() as s:  # the same pooled connection
            s.execute(text("INSERT INTO hot_probe (x) VALUES (2)"))
            raise RuntimeError("the block fails: its insert must not stay")
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM hot_probe")).scalar() == 0
    finally:
        store.close()


def test_a_hot_connection_whose_server_session_died_is_not_pooled_again() -> None:
    """PostgreSQL ends the session under a request (a restart, pg_terminate_backend): the
    connection cannot be put back out of autocommit, so it is discarded, never pooled in
    autocommit; the next request gets a working, transactional connection."""
    from tpm2_attest.service.hotpath import DatabaseError

    if not POSTGRES_URL:
        pytest.skip("set TPM2_ATTEST_TEST_POSTGRES_URL to run against PostgreSQL")
    from sqlalchemy import text

    reset_postgres(POSTGRES_URL)
    store = Store(POSTGRES_URL, pool_size=1, max_overflow=0)
    try:
        with store.engine.begin() as conn:
            conn.execute(text("CREATE TABLE hot_probe (x INTEGER)"))
        with pytest.raises(DatabaseError), store.hot.connection() as db:
            pid = db.execute("SELECT pg_backend_pid()", ()).fetchone()[0]
            killer = Store(POSTGRES_URL, pool_size=1, max_overflow=0, create_schema=False)
            try:
                with killer.engine.begin() as conn:
                    conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            finally:
                killer.close()
            db.execute("SELECT 1", ())  # the session is gone
        with pytest.raises(RuntimeError), store.transaction() as s:  # a fresh, transactional connection
            s.execute(text("INSERT INTO hot_probe (x) VALUES (2)"))
            raise RuntimeError("the block fails: its insert must not stay")
        with store.hot.connection() as db:
            assert db.execute("SELECT count(*) FROM hot_probe", ()).fetchone()[0] == 0
    finally:
        store.close()


def test_enroll_and_attest_on_each_backend(backend_settings: Settings, tpm: Tpm, clock: Clock) -> None:
    with TestClient(create_app(backend_settings.replace(challenge_rate=0), clock=clock)) as c:  # no rate limit
        dev = enroll(tpm, InProcess(c))
        assert attest(tpm, InProcess(c), dev.device_id, dev.ak_blob)["ok"]
        cid, nonce = challenge(c, dev.device_id)
        q = tpm.quote(dev.ak_blob, pcrs=[0], qualifying_data=nonce)
        clock.advance(backend_settings.nonce_ttl + 1)
        refused(post_quote(c, cid, q), 410, "CHALLENGE_EXPIRED")
        with pytest.raises(ServiceError) as info:
            enroll(tpm, InProcess(c))
        assert info.value.code == "ALREADY_ENROLLED"
        for _ in range(12):  # more than the default limit: none applies
            challenge(c, dev.device_id)
        # Without a limit the challenge statement has no count, and still only serves enrolled devices.
        refused(c.post("/v1/attest/challenge", json={"device_id": "no-such-device"}), 404, "UNKNOWN_DEVICE")
    store = store_of(backend_settings)
    try:
        assert [(a.ok, a.code) for a in store.attestations(dev.device_id)] == [(True, None), (False, "CHALLENGE_EXPIRED")]
    finally:
        store.close()


# -- the stdlib client and the CLI against a real server ------------------------------------------


@pytest.fixture
def server(settings: Settings) -> Iterator[str]:
    """uvicorn on a free 127.0.0.1 port (bound by the test), stopped at the end."""
    with in_thread(create_app(settings)) as url:
        yield url


def test_cli_against_uvicorn(server: str, swtpm: EmbeddedSwtpm, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    ak = tmp_path / "ak.json"
    assert main(["enroll", "--server", server, "--tcti", swtpm.tcti, "--ak-out", str(ak), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    saved = Enrollment.from_json(ak.read_bytes())
    assert out["ok"] and saved.device_id == out["device_id"] and saved.server == server
    assert ak.stat().st_mode & 0o777 == 0o600

    assert main(["attest", "--server", server, "--tcti", swtpm.tcti, "--ak", str(ak), "--pcrs", "0-3,16",
                 "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["ok"] and sorted(map(int, verdict["pcrs"])) == [0, 1, 2, 3, 16]

    # Refusals come back as exit 1 with the server's code.
    assert main(["attest", "--server", server, "--tcti", swtpm.tcti, "--ak", str(ak), "--device-id", "nobody",
                 "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "UNKNOWN_DEVICE"
    # An existing AK file is not overwritten by accident.
    assert main(["enroll", "--server", server, "--tcti", swtpm.tcti, "--ak-out", str(ak)]) == 2
    assert "--force" in capsys.readouterr().err
    # Nothing listening: UNREACHABLE, not a traceback.
    with pytest.raises(ServiceError) as info:
        ServiceClient(server.rsplit(":", 1)[0] + ":1", timeout=2).post("/v1/health", {})
    assert info.value.code == "UNREACHABLE"


def test_serve_without_the_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve", "--ek-root", "/nonexistent"]) == 2
    assert "pip install 'tpm2-attest[service]'" in capsys.readouterr().err
