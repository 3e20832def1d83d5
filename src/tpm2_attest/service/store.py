"""Storage of the service (SQLAlchemy 2.x): the engine, sessions and every query.

SQLite by default (a file URL, in WAL mode with a busy timeout), PostgreSQL through psycopg 3
when the URL says ``postgresql://`` or ``postgresql+psycopg://``. The connection pool is sized
to the threads that serve requests. The schema is in :mod:`.tables`, its migrations in
:mod:`.migrate`.

Each request runs in one session (:meth:`Store.session`); every query here takes that session,
so the protocol (:mod:`.core`), the operator API (:mod:`.admin`) and any other reader (a
dashboard) share them. Single-use steps are *claimed* with a conditional ``UPDATE ... WHERE
state = <expected>`` whose row count says whether this request won: two concurrent requests,
in one process or several, cannot both pass the same enrollment step or answer the same
challenge. One active device per EK is a database constraint (partial unique indexes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import (
    and_,
    bindparam,
    case,
    delete,
    event,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import URL, Engine, create_engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from . import migrate
from .hotpath import HotPath, PendingAttestation
from .tables import (
    ADMIN,
    AK_CERTIFICATE,
    AK_RECEIVED,
    BEGUN,
    CREDENTIAL_ACTIVATION,
    DONE,
    FAILED,
    FAILED_STATUS,
    READ,
    REVOKED,
    ROLES,
    STALE,
    STATUSES,
    TRUSTED,
    AttestationRecord,
    AuditRecord,
    Base,
    ChallengeRecord,
    DeviceRecord,
    DeviceTag,
    EnrollmentRecord,
    PolicyAssignment,
    PolicyRecord,
    SessionRecord,
    TokenRecord,
)

DEFAULT_POOL_SIZE: Final = 16
SQLITE_BUSY_TIMEOUT: Final = 10.0
"""Seconds a SQLite writer waits for the write lock before the request fails (503)."""
MAX_PAGE: Final = 500
"""The largest page any listing returns."""
MAX_ID: Final = 2**31 - 1
"""The largest integer id or version a row can have (SQL INTEGER on every backend): larger
ones are not found, not an overflow in the driver."""


class AlreadyEnrolled(Exception):
    """The EK already belongs to an active device."""


class StateConflict(Exception):
    """The enrollment is no longer in the state the step expects (another request won)."""


class BadCursor(ValueError):
    """A pagination cursor this store did not make."""


def normalize_url(url: str | URL) -> URL:
    """``postgresql://`` means psycopg 3 here (the ``postgres`` extra), not psycopg2."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
    # WAL: readers never wait for the writer; NORMAL: a commit survives a crash of the
    # process (not necessarily a power loss), without an fsync per transaction.
    _wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _wal(cursor: Any) -> None:
    """Switch to WAL, waiting like the busy timeout: on a brand-new file that other processes
    are opening too, the switch meets their locks and SQLite answers "database is locked"
    at once, without its busy handler."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.1)


class Store:
    """The database of one service: an engine with a pool sized to ``pool_size`` threads.

    ``create_schema``: create the schema in an empty database and refuse a database whose
    schema is behind (:class:`.migrate.SchemaBehind`); False leaves the schema alone.
    """

    def __init__(self, url: str | URL, *, create_schema: bool = True, pool_size: int = DEFAULT_POOL_SIZE,
                 **engine_kw: Any) -> None:
        self.url = normalize_url(url)
        self.backend = self.url.get_backend_name()
        # A failed statement's exception (logged) would carry its parameters: ids that are
        # capabilities, nonces, hashes. The driver's message and the SQL are enough.
        kw: dict[str, Any] = {"hide_parameters": True}
        if self.backend == "sqlite":
            kw["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False}
        if not (self.backend == "sqlite" and self.url.database in (None, "", ":memory:")):
            kw.update(pool_size=pool_size, max_overflow=4, pool_timeout=30)
        kw.update(engine_kw)
        self.engine: Engine = create_engine(self.url, **kw)
        if self.backend == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time; threads of this process queue on a lock rather than
        # on SQLite's busy handler, which sleeps in steps of up to 100 ms (the p99 of a loaded
        # server). Other processes on the same file still meet the busy handler.
        self._writer: AbstractContextManager[Any] = threading.Lock() if self.backend == "sqlite" else nullcontext()
        self.hot = HotPath(self.engine)
        if create_schema:
            migrate.ensure(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def writer(self) -> AbstractContextManager[Any]:
        """Hold while a hot-path write transaction runs (a lock on SQLite, nothing elsewhere)."""
        return self._writer

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One session for one request; the caller commits. Rolled back if it raises."""
        with self._sessions() as s:
            try:
                yield s
            except BaseException:
                s.rollback()
                raise

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions.begin() as session:
            yield session

    def add(self, record: Base) -> None:
        with self.transaction() as s:
            s.add(record)

    # -- conveniences over one short session (tests, tools) ---------------------------------

    def enrollment(self, enrollment_id: str) -> EnrollmentRecord | None:
        with self.session() as s:
            return s.get(EnrollmentRecord, enrollment_id)

    def device(self, device_id: str) -> DeviceRecord | None:
        with self.session() as s:
            return s.get(DeviceRecord, device_id)

    def active_device_for_ek(self, ek_name: bytes, ek_key_id: bytes | None = None) -> DeviceRecord | None:
        with self.session() as s:
            return active_device_for_ek(s, ek_name, ek_key_id)

    def latest_attestation(self, device_id: str) -> AttestationRecord | None:
        """A device's most recent attestation, passed or refused."""
        with self._sessions() as s:
            return s.scalars(select(AttestationRecord).where(AttestationRecord.device_id == device_id)
                             .order_by(AttestationRecord.id.desc()).limit(1)).first()

    def attestations(self, device_id: str) -> list[AttestationRecord]:
        """A device's attestations, oldest first."""
        with self.session() as s:
            return list(s.scalars(select(AttestationRecord)
                                  .where(AttestationRecord.device_id == device_id)
                                  .order_by(AttestationRecord.id)))


# -- enrollments --------------------------------------------------------------------------------


def advance_enrollment(s: Session, enrollment_id: str, from_state: str, to_state: str, **values: Any) -> bool:
    """Move an enrollment from ``from_state`` to ``to_state`` (setting ``values``) if it is
    still in ``from_state``; False when another request moved it first. Not committed."""
    res = s.execute(update(EnrollmentRecord)
                    .where(EnrollmentRecord.id == enrollment_id, EnrollmentRecord.state == from_state)
                    .values(state=to_state, **values))
    return _rowcount(res) == 1


def _same_ek(ek_name: bytes, ek_key_id: bytes | None) -> Any:
    """Devices of this EK: the same Name, or the same key in another public area."""
    if ek_key_id is None:
        return DeviceRecord.ek_name == ek_name
    return or_(DeviceRecord.ek_name == ek_name, DeviceRecord.ek_key_id == ek_key_id)


def active_device_for_ek(s: Session, ek_name: bytes, ek_key_id: bytes | None = None) -> DeviceRecord | None:
    """The active device whose EK has this Name or (when given) this key."""
    return s.scalars(select(DeviceRecord).where(
        _same_ek(ek_name, ek_key_id), DeviceRecord.revoked_at.is_(None))).first()


def enrollments_since(s: Session, ek_key_id: bytes, since: datetime) -> int:
    """How many enrollments of this EK key began after ``since`` (the rate limit of ``begin``)."""
    return int(s.scalar(select(func.count()).select_from(EnrollmentRecord).where(
        EnrollmentRecord.ek_key_id == ek_key_id, EnrollmentRecord.created_at > since)) or 0)


def register_device(s: Session, enrollment_id: str, device: DeviceRecord, *, replace: bool,
                    now: datetime, from_state: str = AK_RECEIVED) -> list[DeviceRecord]:
    """Finish an enrollment and register its device, committed all or nothing.

    Raises StateConflict if the enrollment left ``from_state`` (``ak``; ``begun`` for an
    enrollment by AK certificate) meanwhile, AlreadyEnrolled if the
    EK has an active device and neither ``replace`` nor that device's one-time re-enrollment
    allows replacing it (or a concurrent enrollment of the same EK won), or when an enrollment
    by AK certificate (whose EK is unproven) would replace one by credential activation. Replaced devices are
    revoked (``replaced_by`` the new one); the new device inherits their tags, per-device
    policy and freshness. Returns the replaced devices.
    """
    try:
        if not advance_enrollment(s, enrollment_id, from_state, DONE, device_id=device.id):
            raise StateConflict(enrollment_id)
        current = list(s.scalars(select(DeviceRecord).where(
            _same_ek(device.ek_name, device.ek_key_id), DeviceRecord.revoked_at.is_(None))))
        if current and not (replace or all(d.reenroll_allowed for d in current)):
            raise AlreadyEnrolled(current[0].id)
        if device.enrolled_by == AK_CERTIFICATE and any(d.enrolled_by == CREDENTIAL_ACTIVATION for d in current):
            # This enrollment's EK is only what begin was sent (not bound to its AK); the
            # device it would replace proved its EK by credential activation.
            raise AlreadyEnrolled(current[0].id)
        for old in current:
            old.revoked_at = now
            old.status = REVOKED
            old.status_since = now
            old.replaced_by = device.id
            old.reenroll_allowed = False
            if old.freshness is not None and device.freshness is None:
                device.freshness = old.freshness
        s.flush()  # the revocations first, so the partial unique index admits the new row
        s.add(device)
        s.flush()
        old_ids = [d.id for d in current]
        if old_ids:
            tags = set(s.scalars(select(DeviceTag.tag).where(DeviceTag.device_id.in_(old_ids))))
            s.add_all(DeviceTag(device_id=device.id, tag=t) for t in sorted(tags))
            assigned = s.scalars(select(PolicyAssignment).where(
                PolicyAssignment.kind == "device", PolicyAssignment.target.in_(old_ids))).first()
            if assigned is not None:
                s.add(PolicyAssignment(kind="device", target=device.id, policy_name=assigned.policy_name,
                                       assigned_at=now, assigned_by=assigned.assigned_by))
        s.commit()
        return current
    except IntegrityError as exc:
        s.rollback()
        raise AlreadyEnrolled("") from exc
    except BaseException:
        s.rollback()
        raise


# -- policies that judge a device (the hot path runs the same query in .hotpath) ----------------

_NEWEST: Final = (select(PolicyRecord.name, func.max(PolicyRecord.version).label("v"))
                  .group_by(PolicyRecord.name).subquery())
_POLICIES: Final = (
    select(PolicyAssignment.kind, PolicyRecord.name, PolicyRecord.version, PolicyRecord.document,
           PolicyRecord.freshness)
    .join(_NEWEST, _NEWEST.c.name == PolicyAssignment.policy_name)
    .join(PolicyRecord, and_(PolicyRecord.name == _NEWEST.c.name, PolicyRecord.version == _NEWEST.c.v))
    .where(or_(and_(PolicyAssignment.kind == "device", PolicyAssignment.target == bindparam("device_id")),
               and_(PolicyAssignment.kind == "tag",
                    PolicyAssignment.target.in_(select(DeviceTag.tag)
                                                .where(DeviceTag.device_id == bindparam("device_id")))),
               PolicyAssignment.kind == "default"))
    .order_by(PolicyRecord.name))


def policies_for(c: Session, device_id: str) -> list[tuple[str, int, dict[str, Any], float | None]]:
    """The policies that judge ``device_id`` now, newest version of each, as (name, version,
    document, freshness): its own assignment if it has one; else those of its tags (all of
    them apply); else the fleet default; else none. One query."""
    rows = c.execute(_POLICIES, {"device_id": device_id}).all()
    for kind in ("device", "tag", "default"):
        chosen = {r[1]: (r[1], int(r[2]), r[3], r[4]) for r in rows if r[0] == kind}
        if chosen:
            return list(chosen.values())
    return []


# -- device status ----------------------------------------------------------------------------


def effective_status(now: datetime) -> Any:
    """The SQL expression of a device's status at ``now``: a trusted device whose freshness
    window has passed is stale even before the sweeper writes it down."""
    return case((and_(DeviceRecord.status == TRUSTED,
                      or_(DeviceRecord.fresh_until.is_(None), DeviceRecord.fresh_until <= now)), STALE),
                else_=DeviceRecord.status)


def status_of(device: DeviceRecord | PendingAttestation, now: datetime) -> str:
    """The same as :func:`effective_status`, for a loaded row."""
    status = device.status
    if status == TRUSTED and (device.fresh_until is None or device.fresh_until <= now):
        return STALE
    return status


def mark_stale(s: Session, now: datetime) -> list[str]:
    """Write down ``stale`` for trusted devices whose window has passed; the ids of the rows
    this call changed (committed). ``RETURNING`` names only those: when the sweepers of two
    processes race, each device is reported by one of them (one status-change notice)."""
    ids = list(s.scalars(update(DeviceRecord).where(DeviceRecord.status == TRUSTED, DeviceRecord.fresh_until <= now)
                         .values(status=STALE, status_since=DeviceRecord.fresh_until)
                         .returning(DeviceRecord.id)))
    s.commit()
    return ids


def sweep(s: Session, now: datetime, *, grace: timedelta) -> tuple[int, int]:
    """Delete challenges and unfinished enrollments that expired more than ``grace`` ago, and
    expired dashboard sessions; returns how many challenges and enrollments (committed). A
    swept challenge id is simply unknown."""
    cutoff = now - grace
    challenges = _rowcount(s.execute(delete(ChallengeRecord).where(ChallengeRecord.expires_at < cutoff)))
    enrollments = _rowcount(s.execute(delete(EnrollmentRecord).where(
        EnrollmentRecord.state != DONE, EnrollmentRecord.expires_at < cutoff)))
    s.execute(delete(SessionRecord).where(SessionRecord.expires_at <= now))
    s.commit()
    return challenges, enrollments


def count_by_status(s: Session, now: datetime) -> dict[str, int]:
    """Devices per status (every status present, zeros included)."""
    status = effective_status(now)
    counts = {name: 0 for name in STATUSES}
    for name, n in s.execute(select(status, func.count()).group_by(status)):
        counts[str(name)] = int(n)
    return counts


# -- listings for the operator API and dashboards -----------------------------------------------


def _cursor(*parts: Any) -> str:
    text_ = "\x1f".join(p.isoformat() if isinstance(p, datetime) else str(p) for p in parts)
    return base64.urlsafe_b64encode(text_.encode()).decode().rstrip("=")


def _cursor_id(cursor: str) -> int:
    """The row id in a cursor of :func:`_cursor` (``BadCursor`` otherwise)."""
    (before,) = _uncursor(cursor, 1)
    if not (before.isascii() and before.isdigit() and len(before) <= 10 and int(before) <= MAX_ID):
        raise BadCursor("not a cursor of this listing")
    return int(before)


def _uncursor(cursor: str, n: int) -> list[str]:
    try:
        parts = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("\x1f")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("not a cursor of this listing") from None
    if len(parts) != n:
        raise BadCursor("not a cursor of this listing")
    return parts


@dataclass(frozen=True)
class Page:
    """One page of a listing; ``next`` is the cursor of the following page (None: the last)."""

    items: list[Any]
    next: str | None


def list_devices(s: Session, now: datetime, *, status: str | None = None, tag: str | None = None,
                 limit: int = 100, cursor: str | None = None) -> Page:
    """Devices in enrollment order, optionally of one status or carrying one tag. Items are
    ``(DeviceRecord, status)``."""
    limit = max(1, min(limit, MAX_PAGE))
    eff = effective_status(now)
    q = select(DeviceRecord, eff).order_by(DeviceRecord.enrolled_at, DeviceRecord.id)
    if status is not None:
        q = q.where(eff == status)
    if tag is not None:
        q = q.where(exists().where(DeviceTag.device_id == DeviceRecord.id, DeviceTag.tag == tag))
    if cursor:
        at, device_id = _uncursor(cursor, 2)
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            raise BadCursor("not a cursor of this listing") from None
        q = q.where(or_(DeviceRecord.enrolled_at > when,
                        and_(DeviceRecord.enrolled_at == when, DeviceRecord.id > device_id)))
    rows = [(d, str(st)) for d, st in s.execute(q.limit(limit + 1))]
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, _cursor(rows[-1][0].enrolled_at, rows[-1][0].id) if more else None)


def tags_of(s: Session, device_ids: Sequence[str]) -> dict[str, list[str]]:
    """The tags of each device (sorted)."""
    out: dict[str, list[str]] = {d: [] for d in device_ids}
    if device_ids:
        for device_id, tag in s.execute(select(DeviceTag.device_id, DeviceTag.tag)
                                        .where(DeviceTag.device_id.in_(list(device_ids)))
                                        .order_by(DeviceTag.tag)):
            out[device_id].append(tag)
    return out


def set_tags(s: Session, device_id: str, add: Iterable[str] = (), remove: Iterable[str] = ()) -> list[str]:
    """Add and remove tags of a device; its tags afterwards (not committed)."""
    have = set(s.scalars(select(DeviceTag.tag).where(DeviceTag.device_id == device_id)))
    drop = set(remove) & have
    if drop:
        s.execute(delete(DeviceTag).where(DeviceTag.device_id == device_id, DeviceTag.tag.in_(drop)))
    new = sorted(set(add) - have)
    s.add_all(DeviceTag(device_id=device_id, tag=t) for t in new)
    return sorted((have - drop) | set(new))


def attestations_by_id(s: Session, ids: Sequence[int]) -> dict[int, AttestationRecord]:
    """Attestations by id (those that exist), one query."""
    if not ids:
        return {}
    return {a.id: a for a in s.scalars(select(AttestationRecord).where(AttestationRecord.id.in_(list(ids))))}


def attestation_history(s: Session, device_id: str, *, limit: int = 50,
                        cursor: str | None = None) -> Page:
    """A device's attestations, newest first."""
    limit = max(1, min(limit, MAX_PAGE))
    q = (select(AttestationRecord).where(AttestationRecord.device_id == device_id)
         .order_by(AttestationRecord.id.desc()))
    if cursor:
        q = q.where(AttestationRecord.id < _cursor_id(cursor))
    rows = list(s.scalars(q.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, _cursor(rows[-1].id) if more else None)


# -- operator tokens and the audit log ---------------------------------------------------------


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_token(s: Session, record: TokenRecord) -> None:
    """Store a new token (its hash); IntegrityError when the name is taken. Not committed."""
    if record.role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    s.add(record)
    s.flush()


def token_for(s: Session, token: str) -> TokenRecord | None:
    """The live token record of a presented bearer token."""
    return s.scalars(select(TokenRecord).where(TokenRecord.token_hash == token_hash(token),
                                               TokenRecord.revoked_at.is_(None))).first()


def list_tokens(s: Session) -> list[TokenRecord]:
    return list(s.scalars(select(TokenRecord).order_by(TokenRecord.created_at, TokenRecord.name)))


def revoke_token(s: Session, name: str, now: datetime) -> bool:
    """Revoke a token by name; False when no live token has that name. Not committed."""
    return _rowcount(s.execute(update(TokenRecord).where(TokenRecord.name == name,
                                                         TokenRecord.revoked_at.is_(None))
                               .values(revoked_at=now))) == 1


def audit(s: Session, now: datetime, actor: str, action: str, target: str | None = None,
          detail: dict[str, Any] | None = None) -> None:
    """Append to the audit log (in the caller's transaction: the action and its record
    commit together)."""
    s.add(AuditRecord(at=now, actor=actor[:128], action=action, target=None if target is None else target[:200],
                      detail=detail))


def audit_entries(s: Session, *, limit: int = 100, cursor: str | None = None) -> Page:
    """The audit log, newest first."""
    limit = max(1, min(limit, MAX_PAGE))
    q = select(AuditRecord).order_by(AuditRecord.id.desc())
    if cursor:
        q = q.where(AuditRecord.id < _cursor_id(cursor))
    rows = list(s.scalars(q.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, _cursor(rows[-1].id) if more else None)


# -- dashboard sessions -------------------------------------------------------------------------


def add_session(s: Session, record: SessionRecord, now: datetime, *, keep: int) -> None:
    """Store a new dashboard session; delete expired sessions, and this token's oldest beyond
    the newest ``keep`` (a token cannot pile up rows by logging in again and again). Not
    committed."""
    s.execute(delete(SessionRecord).where(SessionRecord.expires_at <= now))
    s.add(record)
    s.flush()
    older = list(s.scalars(select(SessionRecord.id)
                           .where(SessionRecord.token_id == record.token_id, SessionRecord.id != record.id)
                           .order_by(SessionRecord.created_at.desc(), SessionRecord.id).offset(max(keep - 1, 0))))
    if older:
        s.execute(delete(SessionRecord).where(SessionRecord.id.in_(older)))


def session_token(s: Session, session_hash: str, now: datetime) -> TokenRecord | None:
    """The token of a live session: the session has not expired and its token is not revoked."""
    return s.scalars(select(TokenRecord).join(SessionRecord, SessionRecord.token_id == TokenRecord.id)
                     .where(SessionRecord.id == session_hash, SessionRecord.expires_at > now,
                            TokenRecord.revoked_at.is_(None))).first()


def delete_session(s: Session, session_hash: str) -> bool:
    """End a dashboard session; False when there was none. Not committed."""
    return _rowcount(s.execute(delete(SessionRecord).where(SessionRecord.id == session_hash))) == 1


# -- policies ---------------------------------------------------------------------------------


def latest_policy(s: Session, name: str, version: int | None = None) -> PolicyRecord | None:
    """A policy's newest version (or ``version``)."""
    if version is not None and not 0 < version <= MAX_ID:
        return None
    q = select(PolicyRecord).where(PolicyRecord.name == name)
    q = q.where(PolicyRecord.version == version) if version is not None else q.order_by(PolicyRecord.version.desc())
    return s.scalars(q.limit(1)).first()


def add_policy_version(s: Session, name: str, document: dict[str, Any], freshness: float | None,
                       actor: str, now: datetime) -> PolicyRecord:
    """Store ``document`` as the next version of ``name`` (IntegrityError when a concurrent
    writer took that version number). Not committed."""
    current = s.scalar(select(func.max(PolicyRecord.version)).where(PolicyRecord.name == name))
    record = PolicyRecord(name=name, version=(current or 0) + 1, document=document, freshness=freshness,
                          created_at=now, created_by=actor[:128])
    s.add(record)
    s.flush()
    return record


def list_policies(s: Session) -> list[PolicyRecord]:
    """The newest version of every policy, by name."""
    newest = (select(PolicyRecord.name, func.max(PolicyRecord.version).label("v"))
              .group_by(PolicyRecord.name).subquery())
    return list(s.scalars(select(PolicyRecord).join(newest, and_(PolicyRecord.name == newest.c.name,
                                                                 PolicyRecord.version == newest.c.v))
                          .order_by(PolicyRecord.name)))


def policy_versions(s: Session, name: str) -> list[PolicyRecord]:
    return list(s.scalars(select(PolicyRecord).where(PolicyRecord.name == name).order_by(PolicyRecord.version)))


def assign_policy(s: Session, kind: str, target: str, policy_name: str | None, actor: str,
                  now: datetime) -> None:
    """Set (or with None remove) the policy of the fleet (``default``), a tag or a device.
    Not committed."""
    s.execute(delete(PolicyAssignment).where(PolicyAssignment.kind == kind, PolicyAssignment.target == target))
    if policy_name is not None:
        s.add(PolicyAssignment(kind=kind, target=target, policy_name=policy_name, assigned_at=now,
                               assigned_by=actor[:128]))


def assignment(s: Session, kind: str, target: str) -> PolicyAssignment | None:
    return s.get(PolicyAssignment, (kind, target))


def list_assignments(s: Session) -> list[PolicyAssignment]:
    return list(s.scalars(select(PolicyAssignment).order_by(PolicyAssignment.kind, PolicyAssignment.target)))


def _rowcount(result: Any) -> int:
    """Rows matched by an UPDATE/DELETE (a CursorResult attribute the generic Result type hides)."""
    count: int = result.rowcount
    return count


__all__ = [
    "ADMIN",
    "AK_CERTIFICATE",
    "AK_RECEIVED",
    "BEGUN",
    "CREDENTIAL_ACTIVATION",
    "DONE",
    "FAILED",
    "FAILED_STATUS",
    "READ",
    "REVOKED",
    "STALE",
    "STATUSES",
    "TRUSTED",
    "AlreadyEnrolled",
    "AttestationRecord",
    "AuditRecord",
    "BadCursor",
    "Base",
    "ChallengeRecord",
    "DeviceRecord",
    "DeviceTag",
    "EnrollmentRecord",
    "Page",
    "PolicyAssignment",
    "PolicyRecord",
    "SessionRecord",
    "StateConflict",
    "Store",
    "TokenRecord",
    "normalize_url",
]
