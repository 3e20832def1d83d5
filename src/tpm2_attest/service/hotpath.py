"""The SQL of the two requests every device makes (challenge, attest), run on the driver.

Every other query goes through SQLAlchemy (:mod:`.store`); these seven statements run on each
challenge and each attestation, where SQLAlchemy's execution layer cost several times what the
database did. They are written once per dialect (SQLite, PostgreSQL), with parameters converted
exactly as SQLAlchemy stores them (:class:`.tables.UtcDateTime` on SQLite: naive UTC text with
microseconds; JSON as text), so the ORM reads what they write and the other way round.

One :class:`HotConnection` per request: a pooled driver connection, committed or rolled back
by the caller's step; driver errors become :class:`DatabaseError` (the service answers 503).
On PostgreSQL the connection runs in autocommit for the request: a lone statement is its own
transaction, and only the writes that must be atomic open one (:meth:`HotConnection.begin`).
psycopg otherwise sends BEGIN before the first statement and COMMIT or ROLLBACK after the
last, each a round trip of its own: 13 round trips per challenge + attestation instead of 8.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Engine

# SQLAlchemy's storage format of SQLite DATETIME: "%Y-%m-%d %H:%M:%S.%f", naive UTC, the
# microseconds always written (isoformat(" ", "microseconds") writes exactly that, faster).

ATTESTATION_COLUMNS: Final = ("device_id", "challenge_id", "at", "ok", "code", "detail", "result", "policies",
                              "violations", "state")
DEVICE_COLUMNS: Final = frozenset({"status", "status_since", "last_attestation_at", "last_attestation_id",
                                   "last_ok_at", "fresh_until", "ima_offset"})
_JSON: Final = frozenset({"result", "policies", "violations", "state"})
_TIMES: Final = frozenset({"at", "status_since", "last_attestation_at", "last_ok_at", "fresh_until"})


class DatabaseError(Exception):
    """The database driver failed a hot-path statement (the original is ``__cause__``)."""


class DeviceRevoked(Exception):
    """The device was revoked (or replaced) after its challenge was read: its status is not
    written (nothing was committed)."""


@dataclass(frozen=True, slots=True)
class PendingAttestation:
    """What ``/v1/attest`` needs about a challenge and its device, read in one query."""

    challenge_id: str
    device_id: str
    nonce: bytes
    expires_at: datetime
    consumed: bool
    ak_public: bytes
    revoked: bool
    status: str
    fresh_until: datetime | None
    freshness: float | None


class HotPath:
    """The hot statements of one engine's dialect."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self.autocommit = engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
        dbapi = engine.dialect.loaded_dbapi
        self._errors: tuple[type[BaseException], ...] = (dbapi.Error,)
        p = "?" if self.sqlite else "%s"
        self.p = p
        self.issue_sql = (
            f"INSERT INTO challenges (id, device_id, nonce, created_at, expires_at) SELECT {p}, {p}, {p}, {p}, {p} "
            f"WHERE EXISTS (SELECT 1 FROM devices WHERE id = {p} AND revoked_at IS NULL) "
            f"AND (SELECT count(*) FROM challenges WHERE device_id = {p} AND created_at > {p}) < {p} "
            f"RETURNING (SELECT ima_offset FROM devices WHERE id = {p})")
        # No rate limit: nothing to count (the count scans every challenge of the window).
        self.issue_unlimited_sql = (
            f"INSERT INTO challenges (id, device_id, nonce, created_at, expires_at) SELECT {p}, {p}, {p}, {p}, {p} "
            f"WHERE EXISTS (SELECT 1 FROM devices WHERE id = {p} AND revoked_at IS NULL) "
            f"RETURNING (SELECT ima_offset FROM devices WHERE id = {p})")
        self.active_sql = f"SELECT 1 FROM devices WHERE id = {p} AND revoked_at IS NULL"
        self.last_sql = (f"SELECT ok, result, policies FROM attestations WHERE device_id = {p} "
                         "ORDER BY id DESC LIMIT 1")
        self.ima_reset_sql = f"UPDATE devices SET ima_offset = NULL WHERE id = {p}"
        self.pending_sql = (
            "SELECT c.id, c.device_id, c.nonce, c.expires_at, c.consumed_at, d.ak_public, d.revoked_at, "
            "d.status, d.fresh_until, d.freshness FROM challenges c JOIN devices d ON d.id = c.device_id "
            f"WHERE c.id = {p}")
        self.policies_sql = (
            "SELECT a.kind, p.name, p.version, p.document, p.freshness FROM policy_assignments a "
            "JOIN (SELECT name, max(version) AS v FROM policies GROUP BY name) n ON n.name = a.policy_name "
            "JOIN policies p ON p.name = n.name AND p.version = n.v "
            f"WHERE (a.kind = 'device' AND a.target = {p}) "
            f"OR (a.kind = 'tag' AND a.target IN (SELECT tag FROM device_tags WHERE device_id = {p})) "
            "OR a.kind = 'default' ORDER BY p.name")
        self.claim_sql = f"UPDATE challenges SET consumed_at = {p} WHERE id = {p} AND consumed_at IS NULL"
        self.replay_sql = f"UPDATE challenges SET replayed_at = {p} WHERE id = {p} AND replayed_at IS NULL"
        self.record_sql = (f"INSERT INTO attestations ({', '.join(ATTESTATION_COLUMNS)}) "
                           f"VALUES ({', '.join([p] * len(ATTESTATION_COLUMNS))}) RETURNING id")
        self._device_sql: dict[tuple[str, ...], str] = {}

    def device_sql(self, columns: tuple[str, ...]) -> str:
        """The UPDATE of these device columns; one that sets a status touches an active device
        only (a revoked device stays revoked, whatever answer was in flight)."""
        sql = self._device_sql.get(columns)
        if sql is None:
            unknown = set(columns) - DEVICE_COLUMNS
            if unknown:
                raise ValueError(f"not a device status column: {sorted(unknown)}")
            sets = ", ".join(f"{c} = {self.p}" for c in columns)
            active = " AND revoked_at IS NULL" if "status" in columns else ""
            sql = self._device_sql[columns] = f"UPDATE devices SET {sets} WHERE id = {self.p}{active}"
        return sql

    # -- conversions, as SQLAlchemy's types do them -------------------------------------------

    def time(self, value: datetime | None) -> Any:
        if value is None:
            return None
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None).isoformat(" ", "microseconds") if self.sqlite else value

    def read_time(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def value(self, column: str, value: Any) -> Any:
        if value is None:
            return None
        if column in _TIMES:
            return self.time(value)
        if column in _JSON:
            return json.dumps(value)
        if column == "ok" and self.sqlite:
            return 1 if value else 0
        return value

    @contextmanager
    def connection(self) -> Iterator[HotConnection]:
        """A pooled driver connection for one request (returned rolled back if not committed)."""
        try:
            raw = self.engine.raw_connection()
        except Exception as exc:
            raise DatabaseError(str(exc)) from exc
        try:
            if self.autocommit:
                _driver(raw).autocommit = True  # no round trip: idle between requests
            yield HotConnection(self, raw)
        except self._errors as exc:
            _rollback(raw)
            raise DatabaseError(type(exc).__name__) from exc
        except BaseException:
            _rollback(raw)
            raise
        finally:
            if self.autocommit:
                try:
                    driver = _driver(raw)
                    # A transaction begun and left open ends here (psycopg sends nothing when
                    # none is): autocommit cannot be turned off inside one, and a connection
                    # back in the pool in autocommit would run the ORM's sessions without one.
                    driver.rollback()
                    driver.autocommit = False  # the ORM's sessions expect transactions
                except Exception:
                    with contextlib.suppress(Exception):
                        raw.invalidate()  # never back in the pool in autocommit: closed instead
            raw.close()


def _driver(raw: Any) -> Any:
    """The driver's own connection under SQLAlchemy's pooled proxy."""
    driver = raw.driver_connection
    assert driver is not None  # a checked-out connection always has one
    return driver


def _rollback(raw: Any) -> None:
    with contextlib.suppress(Exception):  # the connection may be gone with the error
        raw.rollback()


class HotConnection:
    """The hot statements on one driver connection. ``execute`` is the single funnel every
    statement goes through."""

    def __init__(self, hot: HotPath, raw: Any) -> None:
        self.hot = hot
        self.raw = raw
        self.cursor = raw.cursor()

    def execute(self, sql: str, params: tuple[Any, ...]) -> Any:
        self.cursor.execute(sql, params)
        return self.cursor

    def begin(self) -> None:
        """Start a transaction for writes that must be atomic (SQLite's driver starts one by
        itself before the first write; PostgreSQL runs in autocommit here)."""
        if self.hot.autocommit:
            self.cursor.execute("BEGIN")

    def commit(self) -> None:
        self.raw.commit()

    def rollback(self) -> None:
        self.raw.rollback()

    def issue_challenge(self, challenge_id: str, device_id: str, nonce: bytes, created_at: datetime,
                        expires_at: datetime, since: datetime, limit: int | None) -> int | None:
        """Insert the challenge if the device is active and under ``limit`` challenges since
        ``since`` (None: no limit); one statement, not committed. None when refused, else
        where the device's IMA list continues (0: from the start), read by the same statement."""
        h = self.hot
        if limit is None:
            cur = self.execute(h.issue_unlimited_sql, (challenge_id, device_id, nonce, h.time(created_at),
                                                       h.time(expires_at), device_id, device_id))
        else:
            cur = self.execute(h.issue_sql, (challenge_id, device_id, nonce, h.time(created_at), h.time(expires_at),
                                             device_id, device_id, h.time(since), limit, device_id))
        row = cur.fetchone()
        if row is None:
            return None
        return int(row[0]) if row[0] is not None else 0

    def device_is_active(self, device_id: str) -> bool:
        return self.execute(self.hot.active_sql, (device_id,)).fetchone() is not None

    def last_result(self, device_id: str) -> tuple[dict[str, Any], list[Any]] | None:
        """The result of the device's latest attestation if it passed, with the policies
        (``[{"name", "version"}]``) that judged it (None otherwise)."""
        row = self.execute(self.hot.last_sql, (device_id,)).fetchone()
        if row is None or not row[0] or row[1] is None:
            return None
        result = json.loads(row[1]) if isinstance(row[1], str) else row[1]
        judged = json.loads(row[2]) if isinstance(row[2], str) else row[2]
        return (result, judged if isinstance(judged, list) else []) if isinstance(result, dict) else None

    def pending(self, challenge_id: str) -> PendingAttestation | None:
        """The challenge and its device (one join), or None for an unknown challenge."""
        h = self.hot
        row = self.execute(h.pending_sql, (challenge_id,)).fetchone()
        if row is None:
            return None
        expires_at = h.read_time(row[3])
        assert expires_at is not None
        return PendingAttestation(row[0], row[1], bytes(row[2]), expires_at, row[4] is not None, bytes(row[5]),
                                  row[6] is not None, row[7], h.read_time(row[8]),
                                  None if row[9] is None else float(row[9]))

    def policies_for(self, device_id: str) -> list[tuple[str, int, Any, float | None]]:
        """As :func:`.store.policies_for`: the device's own policy, else its tags', else the
        default, newest versions, as (name, version, document, freshness)."""
        rows = self.execute(self.hot.policies_sql, (device_id, device_id)).fetchall()
        for kind in ("device", "tag", "default"):
            chosen = {r[1]: (r[1], int(r[2]), json.loads(r[3]) if isinstance(r[3], str) else r[3],
                             None if r[4] is None else float(r[4])) for r in rows if r[0] == kind}
            if chosen:
                return list(chosen.values())
        return []

    def record_outcome(self, challenge_id: str, now: datetime, attestation: dict[str, Any],
                       device: dict[str, Any] | None) -> tuple[bool, int]:
        """Spend the challenge, record the outcome and update the device in ONE transaction
        (committed here). (False, 0) and nothing committed when another request spent it;
        :class:`DeviceRevoked` (nothing committed) when ``device`` sets a status and the device
        was revoked since :meth:`pending` read it."""
        h = self.hot
        self.begin()
        cur = self.execute(h.claim_sql, (h.time(now), challenge_id))
        if cur.rowcount != 1:
            self.rollback()
            return False, 0
        attestation_id = self._insert(attestation)
        if device is not None:
            values = dict(device)
            if "status" in values:
                values["last_attestation_id"] = attestation_id
            columns = tuple(values)
            cur = self.execute(h.device_sql(columns), (*(h.value(c, values[c]) for c in columns),
                                                       attestation["device_id"]))
            if "status" in values and cur.rowcount != 1:
                self.rollback()
                raise DeviceRevoked(attestation["device_id"])
        self.commit()
        return True, attestation_id

    def record_used(self, attestation: dict[str, Any]) -> int | None:
        """Record the first answer to an already spent challenge (committed); the device's IMA
        list starts over (its latest attestation is now a refusal). Later answers to it are
        not recorded (None): a replayed request must not grow the history without end."""
        h = self.hot
        self.begin()
        if self.execute(h.replay_sql, (h.time(attestation["at"]), attestation["challenge_id"])).rowcount != 1:
            self.rollback()
            return None
        attestation_id = self._insert(attestation)
        self.execute(self.hot.ima_reset_sql, (attestation["device_id"],))
        self.commit()
        return attestation_id

    def _insert(self, attestation: dict[str, Any]) -> int:
        h = self.hot
        row = self.execute(h.record_sql, tuple(h.value(c, attestation.get(c)) for c in ATTESTATION_COLUMNS)
                           ).fetchone()
        return int(row[0])


__all__ = ["ATTESTATION_COLUMNS", "DatabaseError", "DeviceRevoked", "HotConnection", "HotPath", "PendingAttestation"]
