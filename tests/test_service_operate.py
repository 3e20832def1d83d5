"""Operating the service: operator tokens and API, device status, policies in the database,
audit log, logs and metrics, settings, and hardening against bad bodies, slow clients and a
failing database. Devices are real (swtpm); the application runs in-process (TestClient)
unless a test needs a real server (uvicorn on 127.0.0.1).
"""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from serveproc import in_thread
from test_service import (
    Clock,
    InProcess,
    TestClient,
    b64,
    challenge,
    post_quote,
    refused,
)
from test_service import device as device  # a fixture: re-exported for the tests that take it
from test_service import tpm as tpm  # a fixture
from tpm2_attest import Tpm
from tpm2_attest.cli import main
from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.service import (
    Enrollment,
    ServiceError,
    Settings,
    SettingsError,
    StatusChange,
    StatusHooks,
    attest,
    auth,
    create_app,
    enroll,
    logs,
)
from tpm2_attest.service.http import parse_json
from tpm2_attest.service.store import Store


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(swtpm: EmbeddedSwtpm, tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'service.db'}", ek_roots=(Path(swtpm.ca_root_path),),
                    ek_intermediates=(Path(swtpm.ca_intermediate_path),), sweep_interval=0)


@pytest.fixture
def changes() -> list[StatusChange]:
    return []


@pytest.fixture
def http(settings: Settings, clock: Clock, changes: list[StatusChange]) -> Iterator[TestClient]:
    hooks = StatusHooks()
    hooks.subscribe(changes.append)
    with TestClient(create_app(settings, clock=clock, hooks=hooks)) as c:
        yield c


def make_token(settings: Settings, name: str, role: str) -> str:
    store = Store(settings.database_url)
    try:
        with store.session() as s:
            _rec, token = auth.create_token(s, name, role, "test", datetime.now(UTC))
            s.commit()
        return token
    finally:
        store.close()


@pytest.fixture
def admin(settings: Settings, http: TestClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(settings, 'root', 'admin')}"}


@pytest.fixture
def reader(settings: Settings, http: TestClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(settings, 'viewer', 'read')}"}


def ok(r: Any) -> Any:
    assert r.status_code == 200, r.text
    return r.json()


# -- tokens and roles -----------------------------------------------------------------------------


def test_tokens_roles_and_hashes(http: TestClient, settings: Settings, admin: dict[str, str],
                                 reader: dict[str, str]) -> None:
    refused(http.get("/v1/admin/devices"), 401, "UNAUTHORIZED")
    r = http.get("/v1/admin/devices", headers={"Authorization": "Bearer tpa_not-a-token"})
    refused(r, 401, "UNAUTHORIZED")
    assert r.headers["www-authenticate"].startswith("Bearer")
    ok(http.get("/v1/admin/devices", headers=reader))
    refused(http.post("/v1/admin/devices/x/revoke", headers=reader), 403, "FORBIDDEN")
    refused(http.put("/v1/admin/policies/p", headers=reader, json={"document": {}}), 403, "FORBIDDEN")
    refused(http.get("/v1/admin/tokens", headers=reader), 403, "FORBIDDEN")

    made = ok(http.post("/v1/admin/tokens", headers=admin, json={"name": "ci", "role": "read"}))
    assert made["token"].startswith("tpa_")
    listed = ok(http.get("/v1/admin/tokens", headers=admin))["items"]
    assert {t["name"] for t in listed} == {"root", "viewer", "ci"} and all("token" not in t for t in listed)
    # The database keeps the SHA-256 only.
    db = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"))
    hashes = [h for (h,) in db.execute("SELECT token_hash FROM tokens")]
    dump = "\n".join(db.iterdump())
    db.close()
    assert made["token"] not in dump and auth.store.token_hash(made["token"]) in hashes
    ok(http.get("/v1/admin/devices", headers={"Authorization": f"Bearer {made['token']}"}))
    ok(http.delete("/v1/admin/tokens/ci", headers=admin))
    refused(http.get("/v1/admin/devices", headers={"Authorization": f"Bearer {made['token']}"}), 401, "UNAUTHORIZED")
    refused(http.post("/v1/admin/tokens", headers=admin, json={"name": "root", "role": "read"}), 409, "CONFLICT")


def test_token_cli_on_the_database(settings: Settings, http: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    db = settings.database_url
    assert main(["admin", "token", "create", "--db", db, "--name", "ops", "--role", "admin"]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert token.startswith("tpa_") and "shown only now" in out.err
    ok(http.get("/v1/admin/audit", headers={"Authorization": f"Bearer {token}"}))
    assert main(["admin", "token", "list", "--db", db, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["items"]
    assert [t["name"] for t in listed] == ["ops"] and token not in json.dumps(listed)
    assert main(["admin", "token", "create", "--db", db, "--name", "ops", "--role", "read"]) == 1
    assert main(["admin", "token", "revoke", "--db", db, "--name", "ops"]) == 0
    refused(http.get("/v1/admin/audit", headers={"Authorization": f"Bearer {token}"}), 401, "UNAUTHORIZED")


# -- devices, status, history ---------------------------------------------------------------------


def test_status_follows_attestations(http: TestClient, tpm: Tpm, device: Enrollment, admin: dict[str, str],
                                     clock: Clock, settings: Settings, changes: list[StatusChange]) -> None:
    did = device.device_id
    assert ok(http.get(f"/v1/admin/devices/{did}", headers=admin))["status"] == "stale"  # never attested
    assert attest(tpm, InProcess(http), did, device.ak_blob, pcrs=[0])["status"] == "trusted"
    view = ok(http.get(f"/v1/admin/devices/{did}", headers=admin))
    assert view["status"] == "trusted" and view["last_attestation"]["ok"] is True

    # Anyone can post garbage to a device's challenge: recorded, but the device stays trusted.
    cid, _nonce = challenge(http, did)
    refused(post_quote(http, cid, {"version": 1, "attest": "AA==", "signature": "", "pcrs": {}}), 403, "MALFORMED")
    assert ok(http.get(f"/v1/admin/devices/{did}", headers=admin))["status"] == "trusted"

    # A policy the device's own verified quote does not satisfy: failed, with the rule.
    doc = {"pcrs": {"sha256": {"16": "01" * 32}}}
    ok(http.put("/v1/admin/policies/strict", headers=admin, json={"document": doc}))
    ok(http.put(f"/v1/admin/assignments/device/{did}", headers=admin, json={"policy": "strict"}))
    with pytest.raises(ServiceError) as info:
        attest(tpm, InProcess(http), did, device.ak_blob, pcrs=[0, 16])
    assert info.value.code == "POLICY_VIOLATION" and info.value.extra["rules"] == ["pcrs.value"]
    view = ok(http.get(f"/v1/admin/devices/{did}", headers=admin))
    assert view["status"] == "failed" and view["last_attestation"]["rules"] == ["pcrs.value"]
    assert view["policies"] == [{"name": "strict", "version": 1}]
    failed = ok(http.get("/v1/admin/devices", headers=admin, params={"status": "failed"}))["items"]
    assert [d["device_id"] for d in failed] == [did]

    # Unassigned: the next attestation passes, then the freshness window runs out.
    ok(http.delete(f"/v1/admin/assignments/device/{did}", headers=admin))
    attest(tpm, InProcess(http), did, device.ak_blob, pcrs=[0])
    clock.advance(settings.freshness + 1)
    assert ok(http.get(f"/v1/admin/devices/{did}", headers=admin))["status"] == "stale"
    assert ok(http.get("/v1/admin/status", headers=admin))["devices"] == {
        "trusted": 0, "failed": 0, "stale": 1, "revoked": 0}
    http.app.state.service.sweep()  # writes stale down and tells the hooks  # type: ignore[attr-defined]
    assert [(c.old, c.new, c.cause) for c in changes] == [
        (None, "stale", "enrolled"), ("stale", "trusted", "attestation"), ("trusted", "failed", "attestation"),
        ("failed", "trusted", "attestation"), ("trusted", "stale", "stale")]
    assert changes[2].rules == ("pcrs.value",)

    history = ok(http.get(f"/v1/admin/devices/{did}/attestations", headers=admin, params={"limit": 2}))
    assert [a["ok"] for a in history["items"]] == [True, False] and history["next"]
    rest = ok(http.get(f"/v1/admin/devices/{did}/attestations", headers=admin,
                       params={"limit": 50, "cursor": history["next"]}))
    assert [a["code"] for a in rest["items"]] == ["MALFORMED", None] and rest["next"] is None
    refused(http.get(f"/v1/admin/devices/{did}/attestations", headers=admin, params={"cursor": "%%%"}),
            422, "INVALID_REQUEST")

    ok(http.post(f"/v1/admin/devices/{did}/revoke", headers=admin, json={"reason": "stolen"}))
    refused(http.post("/v1/attest/challenge", json={"device_id": did}), 404, "UNKNOWN_DEVICE")
    assert ok(http.get(f"/v1/admin/devices/{did}", headers=admin))["status"] == "revoked"
    assert changes[-1].new == "revoked"
    actions = [a["action"] for a in ok(http.get("/v1/admin/audit", headers=admin))["items"]]
    assert actions == ["device.revoke", "policy.unassign", "policy.assign", "policy.put", "token.create"]


def test_freshness_per_policy_and_device(http: TestClient, tpm: Tpm, device: Enrollment, admin: dict[str, str],
                                         clock: Clock) -> None:
    did = device.device_id
    ok(http.put("/v1/admin/policies/short", headers=admin, json={"document": {}, "freshness": 60}))
    ok(http.put("/v1/admin/assignments/default", headers=admin, json={"policy": "short"}))
    verdict = attest(tpm, InProcess(http), did, device.ak_blob, pcrs=[0])
    assert datetime.fromisoformat(verdict["fresh_until"]) == clock.now + __import__("datetime").timedelta(seconds=60)
    clock.advance(61)
    assert ok(http.get(f"/v1/admin/devices/{did}", headers=admin))["status"] == "stale"
    ok(http.patch(f"/v1/admin/devices/{did}", headers=admin, json={"freshness": 600}))  # the device's own window
    assert ok(http.get(f"/v1/admin/devices/{did}", headers=admin))["status"] == "trusted"


def test_lost_ak_reenrolls_once(http: TestClient, tpm: Tpm, device: Enrollment, admin: dict[str, str],
                                changes: list[StatusChange]) -> None:
    did = device.device_id
    ok(http.post(f"/v1/admin/devices/{did}/tags", headers=admin, json={"add": ["lab", "rack-7"]}))
    with pytest.raises(ServiceError) as info:  # the AK file is gone: the device tries again
        enroll(tpm, InProcess(http))
    assert info.value.code == "ALREADY_ENROLLED"
    assert ok(http.post(f"/v1/admin/devices/{did}/allow-reenroll", headers=admin))["reenroll_allowed"] is True
    again = enroll(tpm, InProcess(http))
    assert again.info["replaced_devices"] == [did]
    old = ok(http.get(f"/v1/admin/devices/{did}", headers=admin))
    assert old["status"] == "revoked" and old["replaced_by"] == again.device_id and not old["reenroll_allowed"]
    new = ok(http.get(f"/v1/admin/devices/{again.device_id}", headers=admin))
    assert new["tags"] == ["lab", "rack-7"] and new["status"] == "stale"
    assert attest(tpm, InProcess(http), again.device_id, again.ak_blob, pcrs=[0])["ok"]
    with pytest.raises(ServiceError) as info:  # once only
        enroll(tpm, InProcess(http))
    assert info.value.code == "ALREADY_ENROLLED"
    refused(http.post(f"/v1/admin/devices/{did}/allow-reenroll", headers=admin), 409, "CONFLICT")
    tagged = ok(http.get("/v1/admin/devices", headers=admin, params={"tag": "rack-7"}))["items"]
    assert sorted(d["device_id"] for d in tagged) == sorted([did, again.device_id])
    assert ("revoked", "replaced") in [(c.new, c.cause) for c in changes if c.device_id == did]


def test_device_listing_pages(settings: Settings, http: TestClient, admin: dict[str, str]) -> None:
    from tpm2_attest.service.tables import DeviceRecord

    store = Store(settings.database_url)
    now = datetime.now(UTC)
    try:
        for i in range(7):
            store.add(DeviceRecord(id=f"d{i}", enrolled_at=now, revoked_at=None, ek_public=b"e", ek_name=bytes([i]),
                                   ek_cert_fingerprint=None, ek_cert_verified=False, ak_public=b"a",
                                   ak_public_der=b"d", ak_name=b"n", ak_format="TPW1"))
    finally:
        store.close()
    seen, cursor = [], None
    while True:
        page = ok(http.get("/v1/admin/devices", headers=admin, params={"limit": 3, **({"cursor": cursor} if cursor else {})}))
        seen += [d["device_id"] for d in page["items"]]
        cursor = page["next"]
        if not cursor:
            break
    assert seen == [f"d{i}" for i in range(7)]
    refused(http.get("/v1/admin/devices", headers=admin, params={"limit": 0}), 422, "INVALID_REQUEST")
    refused(http.get("/v1/admin/devices", headers=admin, params={"status": "happy"}), 422, "INVALID_REQUEST")


# -- policies ---------------------------------------------------------------------------------------


def test_policies_are_versioned_validated_and_applied_without_restart(
        http: TestClient, tpm: Tpm, device: Enrollment, admin: dict[str, str]) -> None:
    did = device.device_id
    pcrs = tpm.pcr.read([0, 16])
    good = {"pcrs": {"sha256": {str(i): v.hex() for i, v in pcrs.items()}}}
    err = refused(http.put("/v1/admin/policies/fleet", headers=admin,
                           json={"document": {"pcrs": {"sha256": {"7": "zz"}}}}), 422, "INVALID_REQUEST")
    assert "pcrs.sha256.7" in err["detail"] and err["key"] == "pcrs.sha256.7"
    refused(http.put("/v1/admin/policies/fleet", headers=admin, json={"document": {"pcrz": {}}}),
            422, "INVALID_REQUEST")
    refused(http.put("/v1/admin/policies/bad name", headers=admin, json={"document": {}}), 422, "INVALID_REQUEST")
    v1 = ok(http.put("/v1/admin/policies/fleet", headers=admin, json={"document": good}))
    assert v1["version"] == 1 and v1["changed"] is True
    assert ok(http.put("/v1/admin/policies/fleet", headers=admin, json={"document": good}))["changed"] is False
    refused(http.put("/v1/admin/assignments/tag/lab", headers=admin, json={"policy": "nope"}), 404, "UNKNOWN_POLICY")
    ok(http.put("/v1/admin/assignments/tag/lab", headers=admin, json={"policy": "fleet"}))
    ok(http.post(f"/v1/admin/devices/{did}/tags", headers=admin, json={"add": ["lab"]}))
    assert attest(tpm, InProcess(http), did, device.ak_blob, pcrs=[0, 16])["policies"] == [
        {"name": "fleet", "version": 1}]

    bad = {"pcrs": {"sha256": {"16": "02" * 32}}}
    assert ok(http.put("/v1/admin/policies/fleet", headers=admin, json={"document": bad}))["version"] == 2
    with pytest.raises(ServiceError) as info:  # the next attestation, same process, no restart
        attest(tpm, InProcess(http), did, device.ak_blob, pcrs=[0, 16])
    assert info.value.code == "POLICY_VIOLATION"
    got = ok(http.get("/v1/admin/policies/fleet", headers=admin, params={"version": 1}))
    assert got["document"]["pcrs"] == good["pcrs"] and got["versions"] == [1, 2]
    listed = ok(http.get("/v1/admin/policies", headers=admin))
    assert [(p["name"], p["version"]) for p in listed["items"]] == [("fleet", 2)]
    assert listed["assignments"][0]["target"] == "lab"
    refused(http.get("/v1/admin/policies/none", headers=admin), 404, "UNKNOWN_POLICY")


# -- the admin CLI against a real server ------------------------------------------------------------


@pytest.fixture(params=["GuardedH11Protocol", "GuardedHttpToolsProtocol"])
def server(settings: Settings, request: pytest.FixtureRequest) -> Iterator[str]:
    with in_thread(create_app(settings.replace(header_timeout=1.0, max_connections=4)),
                   http=f"tpm2_attest.service.http:{request.param}") as url:
        yield url


def test_admin_cli(server: str, settings: Settings, swtpm: EmbeddedSwtpm, tmp_path: Path,
                   capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    ak = tmp_path / "ak.json"
    assert main(["enroll", "--server", server, "--tcti", swtpm.tcti, "--ak-out", str(ak), "--json"]) == 0
    did = json.loads(capsys.readouterr().out)["device_id"]
    monkeypatch.setenv("TPM2_ATTEST_TOKEN", make_token(settings, "cli", "admin"))
    api = ["--server", server, "--json"]
    assert main(["admin", "devices", *api]) == 0
    assert [d["device_id"] for d in json.loads(capsys.readouterr().out)["items"]] == [did]
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({"pcrs": {"sha256": {"16": "03" * 32}}}))
    assert main(["admin", "policy", "put", "strict", str(policy), *api]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    assert main(["admin", "tag", did, "--add", "kiosk", *api]) == 0
    capsys.readouterr()
    assert main(["admin", "policy", "assign", "strict", "--tag", "kiosk", *api]) == 0
    capsys.readouterr()
    assert main(["attest", "--server", server, "--tcti", swtpm.tcti, "--ak", str(ak), "--pcrs", "16", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["rules"] == ["pcrs.value"]
    assert main(["admin", "device", did]) == 2  # no --server, no $TPM2_ATTEST_SERVER
    capsys.readouterr()
    assert main(["admin", "device", did, "--server", server]) == 0
    text = capsys.readouterr().out
    assert "failed" in text and "pcrs.value" in text
    assert main(["admin", "history", did, *api]) == 0
    assert json.loads(capsys.readouterr().out)["items"][0]["rules"] == ["pcrs.value"]
    assert main(["admin", "revoke", did, "--reason", "test", *api]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "revoked"
    assert main(["admin", "audit", *api]) == 0
    audit = json.loads(capsys.readouterr().out)["items"]
    assert [a["action"] for a in audit][:4] == ["device.revoke", "policy.assign", "device.tags", "policy.put"]
    assert all(a["actor"] == "token:cli" for a in audit[:4])
    monkeypatch.setenv("TPM2_ATTEST_TOKEN", make_token(settings, "ro", "read"))
    assert main(["admin", "revoke", did, *api]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "FORBIDDEN"


# -- observability -----------------------------------------------------------------------------------


def test_logs_carry_request_ids_and_no_secrets(settings: Settings, clock: Clock, tpm: Tpm) -> None:
    stream = io.StringIO()
    handler = logs.configure("json", "debug", stream)
    try:
        with TestClient(create_app(settings, clock=clock)) as c:
            token = make_token(settings, "root", "admin")
            ek = tpm.ek("rsa")
            r = c.post("/v1/enroll/begin", json={"ek_public": b64(ek.public), "ek_certificate": b64(ek.certificate or b"")},
                       headers={"X-Request-ID": "req-begin-1"})
            assert r.headers["x-request-id"] == "req-begin-1"
            secrets = [r.json()["enrollment_id"], r.json()["nonce"], token]
            dev = enroll(tpm, InProcess(c))
            cid, nonce = challenge(c, dev.device_id)
            secrets += [cid, b64(nonce), nonce.hex()]
            q = tpm.quote(dev.ak_blob, pcrs=[0], qualifying_data=nonce)
            assert post_quote(c, cid, q).status_code == 200
            c.get("/v1/admin/devices", headers={"Authorization": f"Bearer {token}"})
    finally:
        logs.unconfigure(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines and all(set(line) >= {"time", "level", "logger", "request_id", "message"} for line in lines)
    begin = [line for line in lines if line["request_id"] == "req-begin-1"]
    assert any("enrollment" in line["message"] for line in begin)  # the service's own line, with the id
    assert any(line["logger"] == "tpm2_attest.access" and "/v1/enroll/begin 200" in line["message"] for line in begin)
    assert any("attestation of device" in line["message"] and line["request_id"] != "-" for line in lines)
    text = stream.getvalue()
    for secret in secrets:
        assert secret not in text


def test_metrics(http: TestClient, tpm: Tpm, device: Enrollment) -> None:
    attest(tpm, InProcess(http), device.device_id, device.ak_blob, pcrs=[0])
    refused(http.post("/v1/attest/challenge", json={"device_id": "nobody"}), 404, "UNKNOWN_DEVICE")
    body = http.get("/metrics").text
    assert 'tpm2_attest_requests_total{method="POST",route="/v1/attest",status="200"} 1.0' in body
    assert 'tpm2_attest_refusals_total{code="UNKNOWN_DEVICE"} 1.0' in body
    assert 'tpm2_attest_attestation_seconds_count{outcome="passed"} 1.0' in body
    assert 'tpm2_attest_devices{status="trusted"} 1.0' in body and 'tpm2_attest_devices{status="stale"} 0.0' in body


# -- settings ----------------------------------------------------------------------------------------


def test_settings_from_flags_environment_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "attest.toml"
    config.write_text('nonce_ttl = 100\nfreshness = 50\nek_roots = ["/etc/a.pem"]\n')
    monkeypatch.setenv("TPM2_ATTEST_NONCE_TTL", "200")
    monkeypatch.setenv("TPM2_ATTEST_EK_ROOTS", "/x.pem,/y.pem")
    s = Settings.load(config, nonce_ttl=None, enrollment_ttl=30)
    assert s.nonce_ttl == 200 and s.freshness == 50 and s.enrollment_ttl == 30  # env > file; flags > env
    assert s.ek_roots == (Path("/x.pem"), Path("/y.pem"))
    assert Settings.load(config, nonce_ttl=7).nonce_ttl == 7
    with pytest.raises(SettingsError) as info:
        Settings.load(config, nonce_ttl=-1)
    assert "--nonce-ttl / TPM2_ATTEST_NONCE_TTL" in str(info.value) and "nonce_ttl:" not in str(info.value)
    monkeypatch.setenv("TPM2_ATTEST_NONCE_TTL", "soon")
    with pytest.raises(SettingsError, match="TPM2_ATTEST_NONCE_TTL"):
        Settings.load(config)
    monkeypatch.delenv("TPM2_ATTEST_NONCE_TTL")
    config.write_text("nonce_tll = 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'nonce_tll'"):
        Settings.load(config)
    with pytest.raises(SettingsError, match="--ek-root / TPM2_ATTEST_EK_ROOTS"):
        create_app(Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}"))


def test_serve_names_flags_in_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["serve", "--db", f"sqlite:///{tmp_path / 's.db'}", "--nonce-ttl", "0"]) == 2
    assert "--nonce-ttl" in capsys.readouterr().err
    assert main(["serve", "--db", f"sqlite:///{tmp_path / 's.db'}"]) == 2  # no EK roots
    err = capsys.readouterr().err
    assert "--ek-root" in err and "--allow-missing-ek-certificate" in err and "ek_roots" not in err


def test_the_serve_flags_cover_every_setting() -> None:
    from tpm2_attest.cli import build_parser
    from tpm2_attest.service.settings import FLAGS

    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    serve_flags = {o for a in sub.choices["serve"]._actions for o in a.option_strings}
    assert set(FLAGS) == set(Settings.model_fields)
    assert set(FLAGS.values()) <= serve_flags


# -- hardening ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b"[" * 100_000,                                    # nesting deeper than the parser goes
    b'{"device_id": ' + b"9" * 5000 + b"}",            # an integer Python will not convert
    b'{"device_id": 1e999}',                            # a float that overflows
    b'{"device_id": NaN}',
    b'{"device_id": "\xff\xfe"}',                       # invalid UTF-8
    b'{"device_id": "\\ud800"}',                        # a lone surrogate
    b'\xef\xbb\xbf{"device_id": "x"}',                  # a BOM
])
def test_hostile_json_is_invalid_request(http: TestClient, body: bytes) -> None:
    r = http.post("/v1/attest/challenge", content=body, headers={"content-type": "application/json"})
    refused(r, 422, "INVALID_REQUEST")


def test_parse_json_is_linear_on_deep_input() -> None:
    for n in (10_000, 1_000_000):
        t0 = time.perf_counter()
        with pytest.raises(ValueError):
            parse_json(b"[" * n)
        assert time.perf_counter() - t0 < 2


def test_a_read_only_or_full_database_is_503_json(settings: Settings, clock: Clock, tpm: Tpm,
                                                  tmp_path: Path) -> None:
    with TestClient(create_app(settings, clock=clock)) as c:
        dev = enroll(tpm, InProcess(c))
    path = settings.database_url.removeprefix("sqlite:///")
    ro = settings.replace(database_url=f"sqlite:///file:{path}?mode=ro&uri=true")
    with TestClient(create_app(ro, clock=clock), raise_server_exceptions=False) as c:
        r = c.post("/v1/attest/challenge", json={"device_id": dev.device_id})
        err = refused(r, 503, "DATABASE_UNAVAILABLE")
        assert "readonly" not in err["detail"]  # the driver's words stay in the log
        assert r.headers["retry-after"]
    # A full database: the enrollments table is filled up to the page limit, and the service's
    # connections may not grow the file (SQLITE_FULL, "database or disk is full").
    full = settings.replace(database_url=f"sqlite:///{tmp_path / 'full.db'}")
    with TestClient(create_app(full, clock=clock), raise_server_exceptions=False) as c:
        from sqlalchemy import event

        eng = c.app.state.service.store.engine  # type: ignore[attr-defined]
        ek = tpm.ek("rsa")
        db = sqlite3.connect(str(tmp_path / "full.db"))
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count={pages + 4}")
        with pytest.raises(sqlite3.OperationalError, match="full"):
            for i in range(100_000):
                db.execute("INSERT INTO enrollments (id, state, created_at, expires_at, ek_public, ek_name, "
                           "ek_cert_verified, nonce) VALUES (?, 'failed', '2000-01-01 00:00:00.000000', "
                           "'2000-01-01 00:00:00.000000', ?, ?, 0, ?)",
                           (f"junk-{i:08d}-{'x' * 20}", ek.public, ek.name, bytes(32)))
                db.commit()
        db.close()

        @event.listens_for(eng, "connect")
        def _no_growth(dbapi: Any, _rec: Any) -> None:
            n = dbapi.execute("PRAGMA page_count").fetchone()[0]
            dbapi.execute(f"PRAGMA max_page_count={n}")

        eng.dispose()
        r = c.post("/v1/enroll/begin", json={"ek_public": b64(ek.public), "ek_certificate": b64(ek.certificate or b"")})
        err = refused(r, 503, "DATABASE_UNAVAILABLE")
        assert "full" not in err["detail"]


def test_challenges_are_rate_limited_and_swept(http: TestClient, device: Enrollment, settings: Settings,
                                               clock: Clock) -> None:
    for _ in range(settings.challenge_rate):
        challenge(http, device.device_id)
    r = http.post("/v1/attest/challenge", json={"device_id": device.device_id})
    refused(r, 429, "RATE_LIMITED")
    assert r.headers["retry-after"] == "60"
    clock.advance(settings.challenge_rate_window + 1)
    cid, _ = challenge(http, device.device_id)
    clock.advance(settings.nonce_ttl + settings.retention + 1)
    swept, _enrollments, _stale = http.app.state.service.sweep()  # type: ignore[attr-defined]
    assert swept == settings.challenge_rate + 1
    refused(post_quote(http, cid, {"version": 1, "attest": "", "signature": "", "pcrs": {}}), 404,
            "UNKNOWN_CHALLENGE")


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def test_slow_clients_are_cut_off_and_connections_capped(server: str) -> None:
    slow = _connect(server)
    slow.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")  # headers never finish
    t0 = time.monotonic()
    assert slow.recv(100) == b""  # closed by the server after header_timeout (1 s here)
    assert 0.5 < time.monotonic() - t0 < 4
    slow.close()

    held = [_connect(server) for _ in range(4)]
    extra = _connect(server)
    reply = extra.recv(1000)
    assert reply.startswith(b"HTTP/1.1 503") and b'"SERVER_BUSY"' in reply
    for s in [*held, extra]:
        s.close()


def test_pipelined_and_closing_requests_get_whole_answers(server: str) -> None:
    """Writes are coalesced per event-loop step: pipelined answers still come whole and in
    order, and the answer to ``Connection: close`` is sent before the connection ends."""
    conn = _connect(server)
    get = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
    conn.sendall(get * 3 + b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    conn.close()
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 4
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"200 OK")
        length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[1])
        assert len(body) == length and "version" in json.loads(body)


def test_writes_within_one_loop_step_leave_as_one() -> None:
    import asyncio

    from tpm2_attest.service.http import _Coalesced

    class Recorder:
        def __init__(self) -> None:
            self.writes: list[bytes] = []
            self.closed = False

        def write(self, data: bytes) -> None:
            assert not self.closed
            self.writes.append(data)

        def is_closing(self) -> bool:
            return self.closed

        def close(self) -> None:
            self.closed = True

        def get_extra_info(self, name: str) -> str:
            return f"info:{name}"

    async def run() -> Recorder:
        raw = Recorder()
        t = _Coalesced(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(memoryview(b"body"))
        assert raw.writes == []  # nothing leaves before this step ends
        await asyncio.sleep(0)
        assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        t.write(b"last")
        t.close()  # what was written leaves before the close
        assert raw.writes[-1] == b"last" and raw.closed
        t.write(b"after close")
        await asyncio.sleep(0)
        assert raw.writes[-1] == b"last"  # dropped, as a closing transport drops it
        assert t.get_extra_info("peername") == "info:peername"
        return raw

    assert len(asyncio.run(run()).writes) == 2


def test_a_slow_body_is_408(settings: Settings, clock: Clock) -> None:
    import asyncio

    app = create_app(settings.replace(body_timeout=0.2), clock=clock)
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        first = True

        async def receive() -> dict[str, Any]:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b'{"device_id"', "more_body": True}
            await asyncio.sleep(5)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "http_version": "1.1", "method": "POST", "path": "/v1/attest/challenge",
                 "raw_path": b"/v1/attest/challenge", "root_path": "", "scheme": "http", "query_string": b"",
                 "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 2), "state": {}}
        await asyncio.wait_for(app(scope, receive, send), 3)

    asyncio.run(run())
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"]["code"] == "REQUEST_TIMEOUT"


def test_the_device_lane_refuses_like_the_routes(http: TestClient) -> None:
    """/v1/attest/challenge and /v1/attest are answered by the fast lane: same errors as FastAPI's."""
    err = refused(http.post("/v1/attest", json={"challenge_id": "c"}), 422, "INVALID_REQUEST")
    assert err["detail"] == "body.quote: Field required"
    err = refused(http.post("/v1/attest", json={"challenge_id": "c", "quote": {"version": 1, "attest": "", "signature": "",
                                                                            "pcrs": {}}, "event_log": "!!"}),
                  422, "INVALID_REQUEST")
    assert err["detail"].startswith("body.event_log: invalid base64") and "!!" not in err["detail"]
    refused(http.post("/v1/attest/challenge", content=b'{"device_id": "d"}', headers={"content-type": "text/plain"}),
            422, "INVALID_REQUEST")
    refused(http.post("/v1/attest/challenge"), 422, "INVALID_REQUEST")  # no body
    r = http.get("/v1/attest/challenge")  # another method goes on to FastAPI
    assert r.status_code == 405 and r.json()["error"]["code"] == "HTTP_405"
    body = http.get("/metrics").text
    assert 'tpm2_attest_refusals_total{code="INVALID_REQUEST"} 4.0' in body
    assert 'route="/v1/attest",status="422"' in body


def test_fresh_request_ids_are_unique_within_and_across_processes() -> None:
    import os

    from tpm2_attest.service.logs import new_request_id

    ids = [new_request_id(None) for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    assert new_request_id("proxy-id.7") == "proxy-id.7" and len(new_request_id("bad id!")) == 16
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a forked worker: its ids must not repeat the parent's
        os.write(write, new_request_id(None).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert len(child) == 16 and child[:8] != ids[0][:8] and child not in ids


def test_request_ids_need_no_fork_hook_where_the_os_has_none() -> None:
    """Windows has no os.register_at_fork (its workers are spawned, each importing afresh):
    the service's logging must still import there and number requests."""
    import subprocess
    import sys

    code = ("import os, secrets  # random, under secrets, hooks fork only where os.fork exists\n"
            "del os.register_at_fork\n"
            "from tpm2_attest.service.logs import new_request_id\n"
            "a, b = new_request_id(None), new_request_id(None)\n"
            "assert len(a) == 16 and a != b and a[:8] == b[:8], (a, b)\n"
            "print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
