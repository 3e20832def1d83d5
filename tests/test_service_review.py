"""The service as an attacker and an operator meet it: races between operators and devices,
replays, ambiguous or out-of-range input, what reaches the logs, and the schema's bookkeeping
when processes start together. Real devices (swtpm), SQLite and (when configured) PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from test_service import (
    BACKENDS,
    POSTGRES_URL,
    Clock,
    InProcess,
    TestClient,
    b64,
    challenge,
    post_quote,
    refused,
    reset_postgres,
)
from test_service_operate import (
    changes as changes,  # fixtures: re-exported for the tests that take them
)
from test_service_operate import clock as clock
from test_service_operate import device as device
from test_service_operate import http as http
from test_service_operate import make_token, ok
from test_service_operate import tpm as tpm
from tpm2_attest import Tpm
from tpm2_attest.service import (
    Enrollment,
    ServiceError,
    Settings,
    StatusChange,
    create_app,
    enroll,
)
from tpm2_attest.service.store import Store
from tpm2_attest.service.tables import REVOKED, DeviceRecord


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, swtpm: Any, tmp_path: Path) -> Settings:
    base = Settings(database_url=f"sqlite:///{tmp_path / 'service.db'}", ek_roots=(Path(swtpm.ca_root_path),),
                    ek_intermediates=(Path(swtpm.ca_intermediate_path),), sweep_interval=0)
    if request.param == "sqlite":
        return base
    assert POSTGRES_URL
    reset_postgres(POSTGRES_URL)
    return base.replace(database_url=POSTGRES_URL)


@pytest.fixture
def admin(settings: Settings, http: TestClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(settings, 'root', 'admin')}"}


def _revoke_behind_the_service(settings: Settings, device_id: str) -> None:
    """An operator's revocation committed by another session (another request or process)."""
    store = Store(settings.database_url, create_schema=False, pool_size=1)
    try:
        with store.session() as s:
            d = s.get(DeviceRecord, device_id)
            assert d is not None
            d.revoked_at, d.status, d.status_since = datetime.now(UTC), REVOKED, datetime.now(UTC)
            s.commit()
    finally:
        store.close()


# -- revoked is sticky --------------------------------------------------------------------------------


def test_a_device_revoked_while_its_quote_is_judged_stays_revoked(
        http: TestClient, tpm: Tpm, device: Enrollment, admin: dict[str, str], settings: Settings,
        changes: list[StatusChange], monkeypatch: pytest.MonkeyPatch) -> None:
    """The quote verifies, the policies pass; meanwhile an operator revokes the device. The
    answer must not write the device back to ``trusted`` (nor tell the hooks it is)."""
    did = device.device_id
    service = http.app.state.service  # type: ignore[attr-defined]
    judge = service._judge

    def judge_then_revoke(*args: Any, **kwargs: Any) -> Any:
        outcome = judge(*args, **kwargs)
        assert outcome.error is None  # it would have passed
        _revoke_behind_the_service(settings, did)
        return outcome

    monkeypatch.setattr(service, "_judge", judge_then_revoke)
    cid, nonce = challenge(http, did)
    refused(post_quote(http, cid, tpm.quote(device.ak_blob, pcrs=[0], qualifying_data=nonce)), 404, "UNKNOWN_DEVICE")
    view = ok(http.get(f"/v1/admin/devices/{did}", headers=admin))
    assert view["status"] == "revoked" and view["revoked_at"] is not None and view["fresh_until"] is None
    assert [c.new for c in changes if c.device_id == did] == ["stale"]  # enrolled; never trusted
    [record] = ok(http.get(f"/v1/admin/devices/{did}/attestations", headers=admin))["items"]
    assert (record["ok"], record["code"]) == (False, "UNKNOWN_DEVICE")
    refused(post_quote(http, cid, tpm.quote(device.ak_blob, pcrs=[0], qualifying_data=nonce)), 409, "CHALLENGE_USED")


# -- replays ------------------------------------------------------------------------------------------


def test_a_spent_challenge_replayed_again_and_again_adds_one_record(
        http: TestClient, tpm: Tpm, device: Enrollment, admin: dict[str, str]) -> None:
    """Whoever holds a spent challenge id (the device, or anyone who saw its request) must not
    grow the device's history with every replay: the first replay is recorded, the rest are
    refused the same way and not recorded."""
    did = device.device_id
    cid, nonce = challenge(http, did)
    q = tpm.quote(device.ak_blob, pcrs=[0], qualifying_data=nonce)
    assert post_quote(http, cid, q).status_code == 200
    for _ in range(20):
        refused(post_quote(http, cid, q), 409, "CHALLENGE_USED")
    history = ok(http.get(f"/v1/admin/devices/{did}/attestations", headers=admin, params={"limit": 500}))["items"]
    assert [(a["ok"], a["code"]) for a in history] == [(False, "CHALLENGE_USED"), (True, None)]
    # Another challenge's replay is recorded once too.
    cid2, nonce2 = challenge(http, did)
    assert post_quote(http, cid2, tpm.quote(device.ak_blob, pcrs=[0], qualifying_data=nonce2)).status_code == 200
    for _ in range(3):
        refused(post_quote(http, cid2, q), 409, "CHALLENGE_USED")
    history = ok(http.get(f"/v1/admin/devices/{did}/attestations", headers=admin))["items"]
    assert [a["code"] for a in history] == ["CHALLENGE_USED", None, "CHALLENGE_USED", None]


# -- ambiguous or out-of-range input ------------------------------------------------------------------


def test_a_key_given_twice_is_refused_not_collapsed(http: TestClient, admin: dict[str, str]) -> None:
    """JSON parsers keep one of two equal keys (Python the last, others the first): a policy
    with a rule written twice must not be stored as something else than the operator read,
    nor a device request mean one thing to a proxy and another to the service."""
    strict = '{"sha256": {"16": "' + "01" * 32 + '"}}'
    body = '{"document": {"pcrs": ' + strict + ', "pcrs": {}}}'
    err = refused(http.put("/v1/admin/policies/dup", headers={**admin, "content-type": "application/json"},
                           content=body), 422, "INVALID_REQUEST")
    assert "pcrs" in err["detail"] and "twice" in err["detail"]
    refused(http.get("/v1/admin/policies/dup", headers=admin), 404, "UNKNOWN_POLICY")  # nothing stored
    r = http.post("/v1/attest/challenge", content='{"device_id": "a", "device_id": "b"}',
                  headers={"content-type": "application/json"})
    assert "twice" in refused(r, 422, "INVALID_REQUEST")["detail"]
    ok(http.put("/v1/admin/policies/single", headers=admin, json={"document": {"pcrs": {"sha256": {}}}}))


def test_a_seed_file_with_a_key_given_twice_is_refused(settings: Settings, tmp_path: Path) -> None:
    """``--pcr-policy`` reads policy documents as ``Policy.load`` does: a key given twice is an
    error, not the last value (here: no PCR rule at all, every device trusted)."""
    from tpm2_attest.policy import PolicyError

    for text in ('{"pcrs": {"sha256": {"16": "' + "01" * 32 + '"}}, "pcrs": {}}',
                 '{"default": {"sha256": {"16": "' + "01" * 32 + '", "16": "' + "02" * 32 + '"}}}'):
        seed = tmp_path / "policy.json"
        seed.write_text(text)
        with pytest.raises(PolicyError, match="twice"):
            create_app(settings.replace(pcr_policy=seed))


def test_windows_beyond_the_calendar_are_refused_where_they_are_set(
        http: TestClient, tpm: Tpm, device: Enrollment, admin: dict[str, str], settings: Settings) -> None:
    """A freshness of 1e300 s validated, then every attestation it applied to failed with a 500
    (the end of its window is past the year 9999) and so did the device PATCH."""
    from tpm2_attest.service import SettingsError, attest

    did = device.device_id
    assert attest(tpm, InProcess(http), did, device.ak_blob, pcrs=[0])["ok"]
    for freshness in (1e300, 1e12):
        refused(http.put("/v1/admin/policies/long", headers=admin, json={"document": {}, "freshness": freshness}),
                422, "INVALID_REQUEST")
        refused(http.patch(f"/v1/admin/devices/{did}", headers=admin, json={"freshness": freshness}),
                422, "INVALID_REQUEST")
    ok(http.put("/v1/admin/policies/long", headers=admin, json={"document": {}, "freshness": 86400 * 3650}))
    ok(http.put("/v1/admin/assignments/default", headers=admin, json={"policy": "long"}))
    assert attest(tpm, InProcess(http), did, device.ak_blob, pcrs=[0])["status"] == "trusted"
    for name, flag in (("freshness", "--freshness"), ("nonce_ttl", "--nonce-ttl"),
                       ("enrollment_ttl", "--enrollment-ttl"), ("retention", "--retention"),
                       ("challenge_rate_window", "--challenge-rate-window"), ("sweep_interval", "--sweep-interval"),
                       ("header_timeout", "--header-timeout"), ("body_timeout", "--body-timeout")):
        with pytest.raises(SettingsError, match=flag):
            Settings.load(**{name: 1e300})


def test_ids_beyond_the_columns_are_not_found_not_500(http: TestClient, device: Enrollment,
                                                       admin: dict[str, str]) -> None:
    """Integers that no row can have (past SQL INTEGER) in paths, queries and cursors."""
    import base64

    did = device.device_id
    ok(http.put("/v1/admin/policies/p", headers=admin, json={"document": {}}))
    for huge in (2**31, 2**62, 10**30):
        refused(http.get("/v1/admin/policies/p", headers=admin, params={"version": huge}), 404, "UNKNOWN_POLICY")
        refused(http.get(f"/v1/admin/devices/{did}/attestations/{huge}", headers=admin), 404, "NOT_FOUND")
        cursor = base64.urlsafe_b64encode(str(huge).encode()).decode().rstrip("=")
        for path in ("/v1/admin/audit", f"/v1/admin/devices/{did}/attestations"):
            refused(http.get(path, headers=admin, params={"cursor": cursor}), 422, "INVALID_REQUEST")


# -- logs ---------------------------------------------------------------------------------------------


def test_a_database_failure_logs_no_query_parameters(swtpm: Any, tmp_path: Path, clock: Clock, tpm: Tpm) -> None:
    """SQLAlchemy writes a failed statement's parameters into the exception the log shows:
    here the whole enrollment id, a capability the logs must never hold. A read-only SQLite
    file stands for a failing database (the logging path is the same for PostgreSQL)."""
    import io

    from tpm2_attest.service import logs

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'service.db'}", ek_roots=(Path(swtpm.ca_root_path),),
                        ek_intermediates=(Path(swtpm.ca_intermediate_path),), sweep_interval=0)
    ek = tpm.ek("rsa")
    with TestClient(create_app(settings, clock=clock)) as c:
        r = c.post("/v1/enroll/begin", json={"ek_public": b64(ek.public), "ek_certificate": b64(ek.certificate or b"")})
        enrollment_id = r.json()["enrollment_id"]
    path = settings.database_url.removeprefix("sqlite:///")
    ro = settings.replace(database_url=f"sqlite:///file:{path}?mode=ro&uri=true")
    stream = io.StringIO()
    handler = logs.configure("text", "info", stream)
    try:
        with TestClient(create_app(ro, clock=clock), raise_server_exceptions=False) as c:
            r = c.post("/v1/enroll/ak", json={"enrollment_id": enrollment_id, "ak_blob": b64(b"not an AK")})
            refused(r, 503, "DATABASE_UNAVAILABLE")  # failing the enrollment is a write
    finally:
        logs.unconfigure(handler)
    text = stream.getvalue()
    assert "database error" in text and "readonly" in text  # the cause is in the log ...
    assert enrollment_id not in text  # ... the capability is not


# -- the schema's bookkeeping ------------------------------------------------------------------------


def _open_store(url: str) -> str:
    """In a child process: open the store (creating an empty schema) and say how it went."""
    try:
        Store(url, pool_size=1).close()
        return "ok"
    except Exception as exc:  # reported to the parent, which asserts there was none
        return f"{type(exc).__name__}: {str(exc)[-300:]}"


def test_processes_starting_together_on_an_empty_sqlite_file_create_it_once(tmp_path: Path) -> None:
    """``serve`` and ``admin token create --db`` (or two ``serve``) started together on a new
    SQLite file raced through the migrations: 'table ... already exists', a schema reported as
    behind, even an alembic_version table with two rows that no command could read again."""
    import multiprocessing

    from sqlalchemy import create_engine, text

    ctx = multiprocessing.get_context("fork")
    for attempt in range(6):
        url = f"sqlite:///{tmp_path / f'new{attempt}.db'}"
        with ctx.Pool(4) as pool:
            assert pool.map(_open_store, [url] * 4) == ["ok"] * 4
        engine = create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
        engine.dispose()


def _newer(url: str) -> None:
    """Make the database look like one of a newer release (a revision this one does not know)."""
    from sqlalchemy import create_engine, text

    Store(url, pool_size=1).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()


def test_db_commands_refuse_a_newer_schema_in_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``db upgrade`` on a newer release's database ended in Alembic's traceback, and ``db
    status`` told the operator to run ``db upgrade``: a downgrade is refused, saying why."""
    from tpm2_attest.cli import main

    url = f"sqlite:///{tmp_path / 'newer.db'}"
    _newer(url)
    assert main(["db", "upgrade", "--db", url]) == 1
    err = capsys.readouterr().err
    assert "9999" in err and "newer release" in err and "Traceback" not in err
    assert main(["db", "status", "--db", url]) == 1
    out = capsys.readouterr().out
    assert "9999" in out and "newer release" in out and "db upgrade" not in out
    assert main(["admin", "token", "create", "--db", url, "--name", "ops", "--role", "read"]) == 1
    err = capsys.readouterr().err
    assert "9999" in err and "Traceback" not in err
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:  # untouched
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["9999"]
    engine.dispose()


@pytest.mark.parametrize("argv", [["db", "status"], ["db", "upgrade"], ["admin", "token", "list"],
                                  ["serve", "--allow-missing-ek-certificate", "--port", "0"]])
def test_a_database_that_cannot_be_opened_is_an_error_line(argv: list[str], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from tpm2_attest.cli import main

    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"
    assert main([*argv, "--db", url]) == 1
    err = capsys.readouterr().err
    assert "--db" in err and "unable to open database file" in err and "Traceback" not in err


# -- what an unauthenticated client can make the service store ---------------------------------------


def test_enrollments_per_ek_are_rate_limited(http: TestClient, tpm: Tpm, settings: Settings, clock: Clock) -> None:
    """``begin`` needs no more than an EK and its (public) certificate: without a limit, one
    certificate let anyone add enrollment rows at request rate (kept for the TTL and the
    retention). Counted per EK *key*: another public area of the same key (another authPolicy,
    so another Name, which the certificate check does not look at) is the same EK."""
    import dataclasses

    from tpm2_attest.tpm2.structures import TPM2B_PUBLIC

    ek = tpm.ek("rsa")
    cert = b64(ek.certificate or b"")
    public = TPM2B_PUBLIC.from_bytes(ek.public).public_area

    def other_area(policy: bytes) -> bytes:
        return TPM2B_PUBLIC(dataclasses.replace(public, auth_policy=policy)).to_bytes()

    for i in range(settings.challenge_rate):
        variant = ek.public if i % 2 == 0 else other_area(bytes([i]) * 32)
        r = http.post("/v1/enroll/begin", json={"ek_public": b64(variant), "ek_certificate": cert})
        assert r.status_code == 200, r.text
    other = other_area(b"\xee" * 32)
    for body in (ek.public, other):
        r = http.post("/v1/enroll/begin", json={"ek_public": b64(body), "ek_certificate": cert})
        refused(r, 429, "RATE_LIMITED")
        assert r.headers["retry-after"]
    clock.advance(settings.challenge_rate_window + 1)
    assert enroll(tpm, InProcess(http)).device_id  # the window moved on: the device enrolls


# -- status ----------------------------------------------------------------------------------------------


def test_a_longer_window_revives_a_stale_pass_whether_or_not_the_sweeper_wrote_it_down(
        http: TestClient, tpm: Tpm, device: Enrollment, admin: dict[str, str], clock: Clock,
        changes: list[StatusChange]) -> None:
    """A device past its window reads ``stale``; a PATCH that widens the window makes its last
    pass count again. Before the sweeper wrote ``stale`` down that was so; after, the device
    stayed stale for ever (until its next pass), the same operation giving two answers."""
    from tpm2_attest.service import attest

    did = device.device_id
    ok(http.put("/v1/admin/policies/short", headers=admin, json={"document": {}, "freshness": 60}))
    ok(http.put("/v1/admin/assignments/default", headers=admin, json={"policy": "short"}))
    assert attest(tpm, InProcess(http), did, device.ak_blob, pcrs=[0])["status"] == "trusted"
    clock.advance(61)
    http.app.state.service.sweep()  # type: ignore[attr-defined]
    assert ok(http.get(f"/v1/admin/devices/{did}", headers=admin))["status"] == "stale"
    view = ok(http.patch(f"/v1/admin/devices/{did}", headers=admin, json={"freshness": 600}))
    assert view["status"] == "trusted"
    assert [(c.old, c.new, c.cause) for c in changes][-2:] == [("trusted", "stale", "stale"),
                                                                 ("stale", "trusted", "freshness")]
    clock.advance(600)  # the widened window runs out in its turn
    assert ok(http.get(f"/v1/admin/devices/{did}", headers=admin))["status"] == "stale"
    # A device whose last answer failed stays failed, however wide its window.
    ok(http.put("/v1/admin/policies/strict", headers=admin, json={"document": {"pcrs": {"sha256": {"0": "01" * 32}}}}))
    ok(http.put(f"/v1/admin/assignments/device/{did}", headers=admin, json={"policy": "strict"}))
    with pytest.raises(ServiceError, match="POLICY_VIOLATION"):
        attest(tpm, InProcess(http), did, device.ak_blob, pcrs=[0])
    assert ok(http.patch(f"/v1/admin/devices/{did}", headers=admin, json={"freshness": 6000}))["status"] == "failed"


def test_token_names_are_checked_on_the_database_path_too(settings: Settings,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The API refuses token names outside letters, digits, ``.``, ``_``, ``-`` (64 at most);
    ``admin token create --db`` stored any, e.g. one with a line break (a forged line in
    ``token list``) or one the API's ``DELETE /tokens/{name}`` can never name."""
    from tpm2_attest.cli import main

    for bad in ("ops\nadmin  admin  2026", "x" * 65, "a/b", ""):
        assert main(["admin", "token", "create", "--db", settings.database_url, "--name", bad, "--role", "read"]) == 2
        assert "--name" in capsys.readouterr().err
    assert main(["admin", "token", "list", "--db", settings.database_url, "--json"]) == 0
    assert '"items": []' in capsys.readouterr().out


# -- error responses --------------------------------------------------------------------------------


def test_a_declared_oversized_body_is_a_json_413_everywhere(http: TestClient, settings: Settings,
                                                             admin: dict[str, str]) -> None:
    """FastAPI's body limiter replaced any answer to a request whose Content-Length was over the
    limit with a plain-text 413 (a 401, a 404 included); the device lane waited for the body
    instead. Every such request is now the JSON ``BODY_TOO_LARGE``, refused before its body."""
    big = b'{"x": "' + b"a" * settings.max_body_bytes + b'"}'
    kind = {"content-type": "application/json"}
    for method, path, headers in (("POST", "/v1/enroll/begin", kind), ("POST", "/v1/attest/challenge", kind),
                                  ("POST", "/v1/attest", kind), ("PUT", "/v1/admin/policies/p", {**kind, **admin}),
                                  ("PUT", "/v1/admin/policies/p", kind), ("POST", "/v1/nothing-here", kind),
                                  ("POST", "/dashboard/login", {"content-type": "application/x-www-form-urlencoded"})):
        r = http.request(method, path, content=big, headers=headers)
        err = refused(r, 413, "BODY_TOO_LARGE")
        assert str(settings.max_body_bytes) in err["detail"], path


# -- authentication ----------------------------------------------------------------------------------


def test_every_operator_route_wants_a_token_and_every_write_an_admin_one(
        http: TestClient, settings: Settings, admin: dict[str, str]) -> None:
    """Walks the application's operator routes (its OpenAPI), so that an endpoint added later
    without its check fails here: no token is 401, a revoked one 401, a read token on anything
    but GET 403."""
    reader = {"Authorization": f"Bearer {make_token(settings, 'viewer', 'read')}"}
    gone = make_token(settings, "gone", "admin")
    ok(http.delete("/v1/admin/tokens/gone", headers=admin))
    schema = ok(http.get("/openapi.json"))["paths"]
    routes = [(m.upper(), path) for path, ops in schema.items() if path.startswith("/v1/admin") for m in ops]
    assert len(routes) >= 20
    for method, template in routes:
        path = template.replace("{kind}", "tag").replace("{attestation_id}", "1")
        path = path.replace("{device_id}", "d").replace("{name}", "n").replace("{target}", "t")
        body = {} if method in ("POST", "PUT", "PATCH") else None
        refused(http.request(method, path, json=body), 401, "UNAUTHORIZED")
        refused(http.request(method, path, json=body, headers={"Authorization": f"Bearer {gone}"}),
                401, "UNAUTHORIZED")
        r = http.request(method, path, json=body, headers=reader)
        if method != "GET" or template == "/v1/admin/tokens":
            refused(r, 403, "FORBIDDEN")
        else:
            assert r.status_code != 403, (method, path)


# -- enrollment by AK certificate --------------------------------------------------------------------


def test_an_ak_certificate_enrollment_never_replaces_a_device_whose_ek_was_proven(
        swtpm: Any, fresh_swtpm: Any, tpm2_tools: Any, tmp_path: Path) -> None:
    """An enrollment by AK certificate records the EK sent to ``begin`` without binding it to
    the AK: anyone with an AK that a configured CA certified (with ``vendors:Google``: any
    Compute Engine VM) can present another machine's EK, public like its certificate. With
    re-enrollment allowed that revoked the machine's own device, enrolled by credential
    activation (its EK proven); it is now ALREADY_ENROLLED, and the device stays."""
    from gce import provision
    from pki import make_ca, pem

    root = make_ca("Test vTPM AK Root")
    inter = make_ca("Test vTPM AK Intermediate", root)
    provision(tpm2_tools, fresh_swtpm, "ecc", (root, inter), tmp_path)
    (tmp_path / "ak-root.pem").write_bytes(pem(root[0]))
    (tmp_path / "ak-inter.pem").write_bytes(pem(inter[0]))
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'svc.db'}", allow_reenroll=True,
                        ek_roots=(Path(swtpm.ca_root_path), Path(fresh_swtpm.ca_root_path)),
                        ek_intermediates=(Path(swtpm.ca_intermediate_path), Path(fresh_swtpm.ca_intermediate_path)),
                        ak_certificate_enrollment=True, ak_roots=(tmp_path / "ak-root.pem",),
                        ak_intermediates=(tmp_path / "ak-inter.pem",))
    with TestClient(create_app(settings)) as http:
        with Tpm.open(swtpm.tcti) as victim:
            mine = enroll(victim, InProcess(http))
            ek = victim.ek("rsa")
        begun = http.post("/v1/enroll/begin", json={"ek_public": b64(ek.public), "ek_certificate": b64(ek.certificate)})
        assert begun.status_code == 200, begun.text
        with Tpm.open(fresh_swtpm.tcti) as attacker:
            got = attacker.certified_ak("ecc", nonce=__import__("base64").b64decode(begun.json()["nonce"]))
        r = http.post("/v1/enroll/ak-certificate", json={"enrollment_id": begun.json()["enrollment_id"],
                                                           "ak_blob": b64(got.blob.to_bytes()),
                                                           "ak_certificate": b64(got.certificate)})
        refused(r, 409, "ALREADY_ENROLLED")
        with Tpm.open(swtpm.tcti) as victim:
            from tpm2_attest.service import attest

            assert attest(victim, InProcess(http), mine.device_id, mine.ak_blob, pcrs=[0])["ok"]
        # The machine itself may still enroll again by credential activation (allow_reenroll).
        with Tpm.open(swtpm.tcti) as victim:
            assert enroll(victim, InProcess(http)).info["replaced_devices"] == [mine.device_id]


# -- dashboard -------------------------------------------------------------------------------------------


def test_logging_in_again_ends_the_session_the_browser_had(http: TestClient, settings: Settings) -> None:
    """A login replaces the browser's cookie; the session it held must end with it, not live on
    for its 8 hours where only a copy of the old cookie (a shared machine, a backup) can use it."""
    from tpm2_attest.service.dashboard import COOKIE

    reader = make_token(settings, "viewer", "read")
    first = http.post("/dashboard/login", data={"token": reader}, follow_redirects=False)
    old = first.cookies[COOKIE]
    assert http.get("/dashboard/devices", follow_redirects=False).status_code == 200
    again = http.post("/dashboard/login", data={"token": make_token(settings, "other", "read")}, follow_redirects=False)
    new = again.cookies[COOKIE]
    assert new != old
    http.cookies.clear()
    http.cookies.set(COOKIE, old, path="/dashboard")
    assert http.get("/dashboard/devices", follow_redirects=False).status_code == 303  # to the login page
    http.cookies.clear()
    http.cookies.set(COOKIE, new, path="/dashboard")
    assert http.get("/dashboard/devices", follow_redirects=False).status_code == 200
