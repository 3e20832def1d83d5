"""Schema migrations: a database made by the release before migrations (commit 939a279), with
data, is upgraded by ``tpm2-attest db upgrade`` and loses nothing; ``serve`` refuses it until
then; the newest migration produces exactly the schema of ``tables.py``. SQLite always,
PostgreSQL when ``TPM2_ATTEST_TEST_POSTGRES_URL`` is set.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("alembic")
pytest.importorskip("fastapi")

from sqlalchemy import create_engine, text

from test_service import POSTGRES_URL, TestClient, reset_postgres
from tpm2_attest import Tpm
from tpm2_attest.cli import main
from tpm2_attest.embedded import EmbeddedSwtpm
from tpm2_attest.service import (
    Settings,
    create_app,
    migrate,
)
from tpm2_attest.service.store import Store, normalize_url

DATA = Path(__file__).parent / "data" / "schema"
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(
    not POSTGRES_URL, reason="set TPM2_ATTEST_TEST_POSTGRES_URL to run against PostgreSQL"))]


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    assert POSTGRES_URL
    reset_postgres(POSTGRES_URL)
    yield POSTGRES_URL


def old_schema(url: str, *, without_ek_key_id: bool = False) -> None:
    """Create the 939a279 schema from its captured DDL."""
    dialect = "postgresql" if url.startswith("postgresql") else "sqlite"
    ddl = "\n".join(line for line in (DATA / f"release-939a279.{dialect}.sql").read_text().splitlines()
                    if not line.startswith("--"))
    statements = [s.strip() for s in ddl.split(";") if s.strip()]
    engine = create_engine(normalize_url(url))
    with engine.begin() as conn:
        for stmt in statements:
            if without_ek_key_id:
                if "ux_devices_active_ek_key" in stmt:
                    continue
                stmt = stmt.replace("ek_key_id BLOB, ", "").replace("ek_key_id BYTEA, ", "")
                stmt = "\n".join(line for line in stmt.splitlines() if "ek_key_id" not in line)
            conn.execute(text(stmt))
    engine.dispose()


def _when(url: str, dt: datetime) -> Any:
    """A datetime as the old release's SQLAlchemy stored it."""
    if url.startswith("sqlite"):
        return dt.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    return dt


def fill(url: str, tpm: Tpm, now: datetime, *, with_key_id: bool = True) -> dict[str, Any]:
    """Rows as the old release wrote them: a device whose AK lives in ``tpm``, a revoked one,
    enrollments, challenges (open and spent) and attestations (passed and refused)."""
    blob = tpm.provision_ak()
    ek = tpm.ek("rsa")
    engine = create_engine(normalize_url(url))
    w = lambda dt: _when(url, dt)  # noqa: E731
    device = {"id": "dev-1", "enrolled_at": w(now - timedelta(days=2)), "revoked_at": None, "ek_public": ek.public,
              "ek_name": ek.name, "ek_cert_fingerprint": "ab" * 32, "ek_cert_verified": True,
              "ak_public": blob.public, "ak_public_der": blob.ak_public_der, "ak_name": blob.name, "ak_format": "TPW1"}
    revoked = {**device, "id": "dev-0", "revoked_at": w(now - timedelta(days=3)), "ek_cert_verified": False}
    if with_key_id:
        device["ek_key_id"] = b"k" * 32
        revoked["ek_key_id"] = b"k" * 32
    result = {"bank": "sha256", "pcrs": {"0": "00" * 32}, "clock": 1, "reset_count": 0, "restart_count": 0,
              "safe": True, "firmware_version": 1, "event_log": None}
    with engine.begin() as conn:
        for d in (revoked, device):
            cols = ", ".join(d)
            conn.execute(text(f"INSERT INTO devices ({cols}) VALUES ({', '.join(':' + k for k in d)})"), d)
        conn.execute(text(
            "INSERT INTO enrollments (id, state, created_at, expires_at, ek_public, ek_name, ek_cert_fingerprint, "
            "ek_cert_verified, nonce, ak_public, ak_public_der, ak_name, ak_format, secret_hash, device_id, failure) "
            "VALUES ('enr-1', 'done', :c, :e, :ek, :n, NULL, :v, :nonce, :ak, :der, :akn, 'TPW1', :sh, 'dev-1', NULL)"),
            {"c": w(now - timedelta(days=2)), "e": w(now - timedelta(days=2) + timedelta(minutes=5)),
             "ek": ek.public, "n": ek.name, "v": True, "nonce": b"n" * 32, "ak": blob.public,
             "der": blob.ak_public_der, "akn": blob.name, "sh": b"s" * 32})
        for cid, consumed in (("ch-spent", now - timedelta(hours=1)), ("ch-open", None)):
            conn.execute(text("INSERT INTO challenges (id, device_id, nonce, created_at, expires_at, consumed_at) "
                              "VALUES (:id, 'dev-1', :nonce, :c, :e, :u)"),
                         {"id": cid, "nonce": os.urandom(32), "c": w(now - timedelta(hours=1)),
                          "e": w(now + timedelta(hours=1)), "u": None if consumed is None else w(consumed)})
        conn.execute(text("INSERT INTO attestations (device_id, challenge_id, at, ok, code, detail, result) "
                          "VALUES ('dev-1', 'ch-spent', :at, :ok, NULL, NULL, :r)"),
                     {"at": w(now - timedelta(hours=1)), "ok": True, "r": json.dumps(result)})
        conn.execute(text("INSERT INTO attestations (device_id, challenge_id, at, ok, code, detail, result) "
                          "VALUES ('dev-1', 'ch-x', :at, :ok, 'BAD_SIGNATURE', 'tampered', NULL)"),
                     {"at": w(now - timedelta(minutes=30)), "ok": False})
    engine.dispose()
    return {"blob": blob, "result": result}


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every old column of every old table, row by row, as Python values."""
    cols = {
        "devices": "id, enrolled_at, revoked_at, ek_public, ek_name, ek_key_id, ek_cert_fingerprint, ek_cert_verified, "
                   "ak_public, ak_public_der, ak_name, ak_format",
        "enrollments": "id, state, created_at, expires_at, ek_public, ek_name, ek_cert_fingerprint, ek_cert_verified, "
                       "nonce, ak_public, ak_public_der, ak_name, ak_format, secret_hash, device_id, failure",
        "challenges": "id, device_id, nonce, created_at, expires_at, consumed_at",
        "attestations": "id, device_id, challenge_id, at, ok, code, detail, result",
    }
    engine = create_engine(normalize_url(url))
    out = {}
    with engine.connect() as conn:
        for table, c in cols.items():
            rows = conn.execute(text(f"SELECT {c} FROM {table} ORDER BY id")).all()
            out[table] = [tuple(bytes(v) if isinstance(v, memoryview) else
                                json.loads(v) if isinstance(v, str) and v.startswith("{") else
                                bool(v) if isinstance(v, bool) else v for v in r) for r in rows]
    engine.dispose()
    return out


def test_upgrade_a_database_of_the_release_before_migrations(empty_url: str, swtpm: EmbeddedSwtpm,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    url = empty_url
    now = datetime.now(UTC)
    old_schema(url)
    with Tpm.open(swtpm.tcti) as tpm:
        filled = fill(url, tpm, now)
        before = snapshot(url)

        # serve refuses it, naming the command that fixes it
        with pytest.raises(migrate.SchemaBehind, match="tpm2-attest db upgrade"):
            Store(url)
        assert main(["db", "status", "--db", url, "--json"]) == 1
        status = json.loads(capsys.readouterr().out)
        assert status["legacy"] is True and status["current"] is None

        assert main(["db", "upgrade", "--db", url, "--json"]) == 0
        up = json.loads(capsys.readouterr().out)
        assert up["before"] is None and up["after"] == migrate.head()
        assert main(["db", "status", "--db", url]) == 0
        assert "up to date" in capsys.readouterr().out

        after = snapshot(url)
        assert after == before  # nothing lost, nothing changed
        assert {r[0] for r in after["attestations"]} == {r[0] for r in before["attestations"]}

        # The upgraded database serves: the old device attests with its AK, its history is kept.
        settings = Settings(database_url=url, require_ek_certificate=False)
        with TestClient(create_app(settings)) as c:
            r = c.post("/v1/attest/challenge", json={"device_id": "dev-1"})
            assert r.status_code == 200, r.text
            q = tpm.quote(filled["blob"], pcrs=[0], qualifying_data=base64.b64decode(r.json()["nonce"]))
            r = c.post("/v1/attest", json={"challenge_id": r.json()["challenge_id"], "quote": q.to_dict()})
            assert r.status_code == 200 and r.json()["status"] == "trusted", r.text
            # The challenge spent by the old release stays spent.
            r = c.post("/v1/attest", json={"challenge_id": "ch-spent", "quote": q.to_dict()})
            assert r.status_code == 409 and r.json()["error"]["code"] == "CHALLENGE_USED"
    store = Store(url)
    try:
        history = store.attestations("dev-1")
        assert [a.code for a in history[:2]] == [None, "BAD_SIGNATURE"]
        assert history[0].result == filled["result"]
        old = store.device("dev-0")
        assert old is not None and old.status == "revoked"
        dev = store.device("dev-1")
        assert dev is not None and dev.last_ok_at is not None and dev.status == "trusted"
    finally:
        store.close()
    assert main(["db", "upgrade", "--db", url]) == 0  # idempotent
    assert "already up to date" in capsys.readouterr().out


def test_upgrade_adopts_a_database_from_before_the_ek_key_column(tmp_path: Path, swtpm: EmbeddedSwtpm) -> None:
    url = f"sqlite:///{tmp_path / 'older.db'}"
    old_schema(url, without_ek_key_id=True)
    with Tpm.open(swtpm.tcti) as tpm:
        fill(url, tpm, datetime.now(UTC), with_key_id=False)
    store = Store(url, create_schema=False)
    try:
        migrate.upgrade(store.engine)
        assert migrate.state(store.engine).up_to_date
        dev = store.device("dev-1")
        assert dev is not None and dev.ek_key_id is None
    finally:
        store.close()


def test_upgrade_keeps_an_enrolled_by_column_added_by_hand(tmp_path: Path, swtpm: EmbeddedSwtpm) -> None:
    """The release that added enrollment by AK certificate asked for this ALTER TABLE by hand."""
    url = f"sqlite:///{tmp_path / 'hand.db'}"
    old_schema(url)
    with Tpm.open(swtpm.tcti) as tpm:
        fill(url, tpm, datetime.now(UTC))
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE devices ADD COLUMN enrolled_by VARCHAR(24) NOT NULL "
                          "DEFAULT 'credential_activation'"))
        conn.execute(text("UPDATE devices SET enrolled_by = 'ak_certificate' WHERE id = 'dev-1'"))
    engine.dispose()
    store = Store(url, create_schema=False)
    try:
        migrate.upgrade(store.engine)
        dev, old = store.device("dev-1"), store.device("dev-0")
        assert dev is not None and dev.enrolled_by == "ak_certificate"
        assert old is not None and old.enrolled_by == "credential_activation"
    finally:
        store.close()


def test_an_empty_database_is_created_and_matches_the_models(empty_url: str) -> None:
    """serve creates an empty database at head; head is exactly tables.py (no drift)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from tpm2_attest.service.tables import Base

    store = Store(empty_url)  # create_schema: empty -> head
    try:
        assert migrate.state(store.engine).up_to_date
        with store.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = [d for d in compare_metadata(ctx, Base.metadata)
                    if not (isinstance(d, tuple) and d[0] == "remove_table" and d[1].name == "alembic_version")]
        assert diff == []
    finally:
        store.close()


def test_an_unknown_revision_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'future.db'}"
    Store(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(migrate.SchemaError, match="does not know"):
        Store(url)
