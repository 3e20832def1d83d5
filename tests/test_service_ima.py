"""The service verifies IMA lists incrementally: the challenge says from which byte offset
the device sends its list, the attestation continues from the state the previous one left.
A real swtpm is the device (PCR 10 extended as the kernel does), the FastAPI app runs
in-process, SQLite in tmp_path is the store."""

from __future__ import annotations

import base64
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tpm2_attest import Tpm
from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.service import ServiceClient, ServiceError, Settings, attest, create_app, enroll

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
pytest.importorskip("httpx")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

import ima_synth as synth


class InProcess(ServiceClient):
    def __init__(self, http: TestClient) -> None:
        super().__init__("http://testserver")
        self.http = http
        self.sent: list[dict[str, Any]] = []

    def post(self, path: str, body: Any) -> dict[str, Any]:
        self.sent.append(body)
        r = self.http.post(path, json=body)
        if r.status_code >= 400:
            raise self._refusal(r.status_code, r.content)
        return self._decode(r.status_code, r.content)


class Machine:
    """A kernel's IMA over swtpm: measures into PCR 10 and lists in a securityfs directory."""

    def __init__(self, tpm: Tpm, root: Path) -> None:
        self.tpm, self.root = tpm, root
        (root / "ima").mkdir(parents=True, exist_ok=True)
        for i in range(10):
            tpm.pcr.extend(i, os.urandom(8))
        self.entries: list[synth.Entry] = []
        self.measure(synth.boot_aggregate_entry(tpm.pcr.read(range(10), "sha256"), "sha256"))

    def measure(self, *entries: synth.Entry) -> None:
        for e in entries:
            self.tpm.backend.pcr_extend(e.pcr, {b: synth.bank_digest(e, b) for b in self.tpm.pcr.banks()})
            self.entries.append(e)
        (self.root / "ima" / "binary_runtime_measurements").write_bytes(synth.binary(self.entries))


@pytest.fixture
def env(fresh_swtpm: EmbeddedSwtpm, tmp_path: Path) -> Iterator[tuple[Tpm, TestClient, Machine]]:
    """(device TPM, in-process service, the kernel's IMA on that TPM)."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'service.db'}",
                        ek_roots=(Path(fresh_swtpm.ca_root_path),),
                        ek_intermediates=(Path(fresh_swtpm.ca_intermediate_path),))
    with Tpm.open(fresh_swtpm.tcti) as tpm, TestClient(create_app(settings)) as http:
        yield tpm, http, Machine(tpm, tmp_path / "securityfs")


POSTGRES_URL = os.environ.get("TPM2_ATTEST_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(
    not POSTGRES_URL, reason="set TPM2_ATTEST_TEST_POSTGRES_URL to run against PostgreSQL"))])
def store_env(request: pytest.FixtureRequest, fresh_swtpm: EmbeddedSwtpm,
              tmp_path: Path) -> Iterator[tuple[Tpm, TestClient, Machine]]:
    """``env`` on SQLite and, when configured, on PostgreSQL."""
    url = f"sqlite:///{tmp_path / 'service.db'}"
    if request.param == "postgres":
        from test_service import reset_postgres

        assert POSTGRES_URL
        reset_postgres(POSTGRES_URL)
        url = POSTGRES_URL
    settings = Settings(database_url=url, ek_roots=(Path(fresh_swtpm.ca_root_path),),
                        ek_intermediates=(Path(fresh_swtpm.ca_intermediate_path),))
    with Tpm.open(fresh_swtpm.tcti) as tpm, TestClient(create_app(settings)) as http:
        yield tpm, http, Machine(tpm, tmp_path / "securityfs")


def test_incremental_ima_attestation(env: tuple[Tpm, TestClient, Machine]) -> None:
    tpm, http, machine = env
    client = InProcess(http)
    dev = enroll(tpm, client)
    machine.measure(*(synth.ima_ng(f"/usr/bin/tool{i}") for i in range(20)))

    def run() -> dict[str, Any]:
        return attest(tpm, client, dev.device_id, dev.ak_blob, ima=True, ima_securityfs=machine.root)

    first = run()
    assert first["ima"]["count"] == 21 and first["ima"]["verified"] == 21
    assert first["ima"]["boot_aggregate"] == "verified" and "10" in first["pcrs"]
    assert client.sent[-1]["ima_offset"] == 0
    offset = first["ima"]["state"]["offset"]
    assert offset == len(synth.binary(machine.entries))

    machine.measure(synth.ima_ng("/usr/bin/new"), synth.ima_sig("/usr/bin/newer"))
    second = run()
    assert client.sent[-1]["ima_offset"] == offset  # only the new entries travel
    assert len(base64.b64decode(client.sent[-1]["ima_log"])) == len(synth.binary(machine.entries[-2:]))
    assert (second["ima"]["count"], second["ima"]["verified"]) == (23, 2)
    assert second["ima"]["boot_aggregate"] == "verified"  # carried by the state

    nothing = run()  # nothing new: an empty tail against the same PCR 10
    assert (nothing["ima"]["count"], nothing["ima"]["verified"]) == (23, 0)


def test_a_refused_ima_list_is_sent_whole_next_time(env: tuple[Tpm, TestClient, Machine]) -> None:
    tpm, http, machine = env
    client = InProcess(http)
    dev = enroll(tpm, client)
    machine.measure(synth.ima_ng("/bin/a"))
    attest(tpm, client, dev.device_id, dev.ak_blob, ima=True, ima_securityfs=machine.root)
    # the device lies about its new entry: the list no longer replays to PCR 10
    machine.measure(synth.ima_ng("/bin/evil"))
    machine.entries[-1] = synth.ima_ng("/bin/innocent")
    (machine.root / "ima" / "binary_runtime_measurements").write_bytes(synth.binary(machine.entries))
    with pytest.raises(ServiceError) as exc:
        attest(tpm, client, dev.device_id, dev.ak_blob, ima=True, ima_securityfs=machine.root)
    assert exc.value.code == "IMA_REPLAY_MISMATCH"
    r = http.post("/v1/attest/challenge", json={"device_id": dev.device_id})
    assert r.json()["ima_offset"] == 0  # after a refusal: the whole list again


def test_offsets_the_service_did_not_give_are_refused(env: tuple[Tpm, TestClient, Machine]) -> None:
    tpm, http, machine = env
    client = InProcess(http)
    dev = enroll(tpm, client)
    r = http.post("/v1/attest/challenge", json={"device_id": dev.device_id}).json()
    q = tpm.quote(dev.ak_blob, pcrs=[0, 10], qualifying_data=base64.b64decode(r["nonce"]))
    raw = synth.binary(machine.entries)
    resp = http.post("/v1/attest", json={"challenge_id": r["challenge_id"], "quote": q.to_dict(),
                                         "ima_log": base64.b64encode(raw[5:]).decode(), "ima_offset": 5})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "IMA_STATE_MISMATCH"
    # the client recovers by itself when the server's state went away (a reboot)
    machine.measure(synth.ima_ng("/bin/b"))
    verdict = attest(tpm, client, dev.device_id, dev.ak_blob, ima=True, ima_securityfs=machine.root)
    assert verdict["ima"]["count"] == 2


def test_after_a_reboot_the_whole_list_is_sent_again(fresh_swtpm: EmbeddedSwtpm,
                                                    env: tuple[Tpm, TestClient, Machine], tmp_path: Path) -> None:
    tpm, http, machine = env
    client = InProcess(http)
    dev = enroll(tpm, client)
    machine.measure(*(synth.ima_ng(f"/bin/x{i}") for i in range(5)))
    before = attest(tpm, client, dev.device_id, dev.ak_blob, ima=True, ima_securityfs=machine.root)
    for extra in (30, 0):  # the new boot's list is longer, then shorter, than the saved offset
        saved = before["ima"]["state"]["offset"]
        fresh_swtpm.reboot()
        booted = Machine(tpm, tmp_path / f"boot{extra}")
        booted.measure(*(synth.ima_ng(f"/bin/y{i}") for i in range(extra)))
        after = attest(tpm, client, dev.device_id, dev.ak_blob, ima=True, ima_securityfs=booted.root)
        assert after["reset_count"] > before["reset_count"]
        assert after["ima"]["count"] == after["ima"]["verified"] == extra + 1
        # the stale offset was tried and refused, then the whole list went on a new challenge
        assert [b.get("ima_offset") for b in client.sent[-4:] if "quote" in b] == [saved, 0]
        before = after


def _admin(http: TestClient) -> dict[str, str]:
    from datetime import UTC, datetime

    from tpm2_attest.service import auth

    with http.app.state.service.store.session() as s:  # type: ignore[attr-defined]
        _rec, token = auth.create_token(s, "root", "admin", "test", datetime.now(UTC))
        s.commit()
    return {"Authorization": f"Bearer {token}"}


def test_a_file_name_that_is_not_utf8_is_shown_not_crashed_on(store_env: tuple[Tpm, TestClient, Machine]) -> None:
    """A hostile device runs /tmp/<0xff 0xfe>: the kernel lists the raw bytes. The refusal is
    recorded and the operator API still answers (before: a lone surrogate in the stored
    violation made every read of the device a 500, on either store)."""
    tpm, http, machine = store_env
    client = InProcess(http)
    dev = enroll(tpm, client)
    admin = _admin(http)
    assert http.put("/v1/admin/policies/ima", headers=admin,
                    json={"document": {"ima": {"excludes": ["/usr/.*"]}}}).status_code == 200
    assert http.put(f"/v1/admin/assignments/device/{dev.device_id}", headers=admin,
                    json={"policy": "ima"}).status_code == 200
    machine.measure(synth.ima_ng(b"/tmp/\xff\xfeevil".decode("utf-8", "surrogateescape"), digest=bytes(32)))
    with pytest.raises(ServiceError) as exc:
        attest(tpm, client, dev.device_id, dev.ak_blob, ima=True, ima_securityfs=machine.root)
    assert exc.value.code == "POLICY_VIOLATION"
    r = http.get(f"/v1/admin/devices/{dev.device_id}", headers=admin)
    assert r.status_code == 200, r.text
    (violation,) = r.json()["last_attestation"]["violations"]
    assert violation["rule"] == "ima.unknown_file" and violation["seen"]["path"] == "/tmp/\\xff\\xfeevil"
    assert http.get(f"/v1/admin/devices/{dev.device_id}/attestations", headers=admin).status_code == 200


def test_a_new_policy_judges_the_whole_list_again(env: tuple[Tpm, TestClient, Machine]) -> None:
    """Entries verified earlier were judged by the policies of then. When the device's policies
    change (a new version, another assignment), the files it already ran must meet the new
    ones: the next attestation verifies and judges its whole list again (keylime re-reads the
    whole list when an agent's runtime policy is updated)."""
    tpm, http, machine = env
    client = InProcess(http)
    dev = enroll(tpm, client)
    admin = _admin(http)
    tool = synth.ima_ng("/usr/bin/tool")
    machine.measure(tool)
    digest = synth.file_digest("/usr/bin/tool").hex()

    def policy(version_digest: str) -> dict[str, Any]:
        return {"document": {"ima": {"digests": {"/usr/bin/tool": [version_digest]}}}}

    assert http.put("/v1/admin/policies/ima", headers=admin, json=policy(digest)).status_code == 200
    assert http.put(f"/v1/admin/assignments/device/{dev.device_id}", headers=admin,
                    json={"policy": "ima"}).status_code == 200

    def run() -> dict[str, Any]:
        return attest(tpm, client, dev.device_id, dev.ak_blob, ima=True, ima_securityfs=machine.root)

    first = run()
    assert first["ima"]["count"] == 2 and first["policies"] == [{"name": "ima", "version": 1}]
    assert run()["ima"]["verified"] == 0  # same policy: only new entries (none) are judged
    # version 2 no longer allows the tool the device already ran
    assert http.put("/v1/admin/policies/ima", headers=admin, json=policy("00" * 32)).status_code == 200
    issued = http.post("/v1/attest/challenge", json={"device_id": dev.device_id}).json()
    assert issued["ima_offset"] == 0  # the challenge already asks for the whole list
    with pytest.raises(ServiceError) as exc:
        run()
    assert exc.value.code == "POLICY_VIOLATION" and "/usr/bin/tool" in exc.value.detail
    # back to a version that allows it: the whole list is judged once, then increments again
    assert http.put("/v1/admin/policies/ima", headers=admin, json=policy(digest)).status_code == 200
    again = run()
    assert (again["ima"]["count"], again["ima"]["verified"]) == (2, 2)
    assert run()["ima"]["verified"] == 0
    # the same holds when the assignment changes rather than the version
    assert http.put("/v1/admin/policies/strict", headers=admin, json=policy("11" * 32)).status_code == 200
    assert http.put(f"/v1/admin/assignments/device/{dev.device_id}", headers=admin,
                    json={"policy": "strict"}).status_code == 200
    with pytest.raises(ServiceError) as exc:
        run()
    assert exc.value.code == "POLICY_VIOLATION"


def test_entries_an_ima_policy_sends_to_other_pcrs(env: tuple[Tpm, TestClient, Machine]) -> None:
    """An IMA policy rule with pcr=11 measures into PCR 11: the device quotes the PCRs its list
    extends (it reads the list after quoting, so it quotes again when the list shows more),
    and, told by the challenge, those the verified entries extended (else it could leave out
    later PCR 11 entries unseen)."""
    tpm, http, machine = env
    client = InProcess(http)
    dev = enroll(tpm, client)
    machine.measure(synth.ima_ng("/usr/bin/a"), synth.ima_ng("/etc/app.conf", pcr=11))

    def run() -> dict[str, Any]:
        return attest(tpm, client, dev.device_id, dev.ak_blob, ima=True, ima_securityfs=machine.root)

    first = run()
    assert first["ima"]["count"] == 3 and set(first["ima"]["pcrs"]) == {"10", "11"}
    assert "11" in first["pcrs"]
    machine.measure(synth.ima_ng("/usr/bin/b"))
    issued = http.post("/v1/attest/challenge", json={"device_id": dev.device_id}).json()
    assert issued["ima_pcrs"] == [10, 11] and issued["ima_offset"] == first["ima"]["state"]["offset"]
    second = run()
    assert second["ima"]["verified"] == 1 and "11" in second["pcrs"]
    assert second["ima"]["state"]["pcrs"]["11"] == first["ima"]["pcrs"]["11"]
    machine.measure(synth.ima_ng("/etc/other.conf", pcr=12))
    third = run()
    assert third["ima"]["verified"] == 1 and "12" in third["pcrs"]
