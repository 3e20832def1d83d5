"""Storage of enrollments, devices, challenges and attestations (SQLAlchemy 2.x).

SQLite by default (a file URL), PostgreSQL through psycopg 3 when the URL says
``postgresql://`` or ``postgresql+psycopg://``. Every write runs in one transaction, so a
failure leaves no half-written record. Single-use steps are *claimed* with a conditional
``UPDATE ... WHERE state = <expected>`` whose row count says whether this request won: two
concurrent requests cannot both pass the same enrollment step or answer the same challenge.
One active device per EK is also a database constraint (a partial unique index), so a race
between two enrollments of the same EK cannot register it twice.

Nothing secret is stored in the clear: the credential secret is kept as its SHA-256. Nonces
are stored as they are; they are public by design (the device receives and signs them).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

BEGUN: Final = "begun"
"""Enrollment state after ``/v1/enroll/begin``: waiting for the AK."""
AK_RECEIVED: Final = "ak"
"""After ``/v1/enroll/ak``: the credential challenge was sent, waiting for its secret."""
DONE: Final = "done"
FAILED: Final = "failed"
"""Terminal: a step failed verification or came too late; the enrollment cannot continue."""


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the store keeps UTC-aware times only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {bytes: LargeBinary, datetime: UtcDateTime, dict[str, Any]: JSON}


class EnrollmentRecord(Base):
    """One enrollment attempt: begin -> ak -> done (or failed), within its TTL."""

    __tablename__ = "enrollments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    ek_public: Mapped[bytes]
    ek_name: Mapped[bytes] = mapped_column(index=True)
    ek_cert_fingerprint: Mapped[str | None] = mapped_column(String(64))
    """SHA-256 (hex) of the EK certificate DER, when one was sent."""
    ek_cert_verified: Mapped[bool] = mapped_column(default=False)
    """True when the certificate chained to a configured root and certified ``ek_public``."""
    nonce: Mapped[bytes]
    ak_public: Mapped[bytes | None]
    ak_public_der: Mapped[bytes | None]
    ak_name: Mapped[bytes | None]
    ak_format: Mapped[str | None] = mapped_column(String(8))
    secret_hash: Mapped[bytes | None]
    """SHA-256 of the credential secret; compared in constant time at ``finish``."""
    device_id: Mapped[str | None] = mapped_column(String(64))
    failure: Mapped[str | None] = mapped_column(String(64))
    """The code that failed the enrollment (state ``failed``)."""


class DeviceRecord(Base):
    """An enrolled device: the AK bound to an EK at enrollment time."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    enrolled_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    ek_public: Mapped[bytes]
    ek_name: Mapped[bytes]
    """At most one row per EK Name with ``revoked_at`` NULL (``ux_devices_active_ek``)."""
    ek_key_id: Mapped[bytes | None]
    """SHA-256 of the EK's SubjectPublicKeyInfo DER: the EK's identity whatever public area the
    device presented it in (the Name depends on the area, the certificate and MakeCredential do
    not); at most one active row per key (``ux_devices_active_ek_key``)."""
    ek_cert_fingerprint: Mapped[str | None] = mapped_column(String(64))
    ek_cert_verified: Mapped[bool]
    ak_public: Mapped[bytes]
    """The AK's TPM2B_PUBLIC: quotes are verified with ``AkPublic.from_public`` of it."""
    ak_public_der: Mapped[bytes]
    ak_name: Mapped[bytes]
    ak_format: Mapped[str] = mapped_column(String(8))
    """TPW1, TPP1, PCP1 or PCP2."""
    enrolled_by: Mapped[str] = mapped_column(String(24), default="credential_activation",
                                             server_default="credential_activation")
    """How the AK was tied to a TPM: ``credential_activation`` (with the EK) or ``ak_certificate``
    (a CA certified the AK; the EK was not bound to it)."""

    __table_args__ = (
        Index("ux_devices_active_ek", "ek_name", unique=True,
              sqlite_where=text("revoked_at IS NULL"), postgresql_where=text("revoked_at IS NULL")),
        Index("ux_devices_active_ek_key", "ek_key_id", unique=True,
              sqlite_where=text("revoked_at IS NULL"), postgresql_where=text("revoked_at IS NULL")),
    )


class ChallengeRecord(Base):
    """A single-use attestation nonce issued to one device."""

    __tablename__ = "challenges"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    nonce: Mapped[bytes]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    consumed_at: Mapped[datetime | None]


class AttestationRecord(Base):
    """The outcome of one answer to a challenge, passed or refused."""

    __tablename__ = "attestations"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    challenge_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]
    ok: Mapped[bool]
    code: Mapped[str | None] = mapped_column(String(64))
    """The ServiceCode or Reason of a refusal; None when ``ok``."""
    detail: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None]
    """What a passed attestation proved: bank, PCR values (hex), clock, event-log summary."""


class AlreadyEnrolled(Exception):
    """The EK already belongs to an active device."""


class StateConflict(Exception):
    """The enrollment is no longer in the state the step expects (another request won)."""


def normalize_url(url: str | URL) -> URL:
    """``postgresql://`` means psycopg 3 here (the ``postgres`` extra), not psycopg2."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Store:
    """The repository the service talks to; records come back detached and fully loaded."""

    def __init__(self, url: str | URL, *, create_schema: bool = True, **engine_kw: Any) -> None:
        self.url = normalize_url(url)
        self.engine: Engine = create_engine(self.url, **engine_kw)
        if self.url.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if create_schema:
            Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions.begin() as session:
            yield session

    def add(self, record: Base) -> None:
        with self.transaction() as s:
            s.add(record)

    # -- enrollments ----------------------------------------------------------------------------

    def enrollment(self, enrollment_id: str) -> EnrollmentRecord | None:
        with self._sessions() as s:
            return s.get(EnrollmentRecord, enrollment_id)

    def advance_enrollment(self, enrollment_id: str, from_state: str, to_state: str,
                           **values: Any) -> bool:
        """Move an enrollment from ``from_state`` to ``to_state`` (setting ``values``) if it is
        still in ``from_state``; False when another request moved it first."""
        with self.transaction() as s:
            res = s.execute(update(EnrollmentRecord)
                            .where(EnrollmentRecord.id == enrollment_id,
                                   EnrollmentRecord.state == from_state)
                            .values(state=to_state, **values))
            return _rowcount(res) == 1

    def register_device(self, enrollment_id: str, device: DeviceRecord, *, replace: bool,
                        now: datetime, from_state: str = AK_RECEIVED) -> list[str]:
        """Finish an enrollment and register its device, all or nothing.

        Raises StateConflict if the enrollment left `from_state` (``ak``; ``begun`` for an
        enrollment by AK certificate) meanwhile, AlreadyEnrolled if
        the EK has an active device and ``replace`` is False (or a concurrent enrollment of the
        same EK won). With ``replace`` the previous devices of the EK are revoked; their ids are
        returned.
        """
        try:
            with self.transaction() as s:
                res = s.execute(update(EnrollmentRecord)
                                .where(EnrollmentRecord.id == enrollment_id,
                                       EnrollmentRecord.state == from_state)
                                .values(state=DONE, device_id=device.id))
                if _rowcount(res) != 1:
                    raise StateConflict(enrollment_id)
                current = list(s.scalars(select(DeviceRecord).where(
                    _same_ek(device.ek_name, device.ek_key_id), DeviceRecord.revoked_at.is_(None))))
                if current and not replace:
                    raise AlreadyEnrolled(current[0].id)
                for old in current:
                    old.revoked_at = now
                s.flush()  # the revocations first, so the partial unique index admits the new row
                s.add(device)
            return [old.id for old in current]
        except IntegrityError as exc:
            raise AlreadyEnrolled("") from exc

    # -- devices --------------------------------------------------------------------------------

    def device(self, device_id: str) -> DeviceRecord | None:
        with self._sessions() as s:
            return s.get(DeviceRecord, device_id)

    def active_device_for_ek(self, ek_name: bytes, ek_key_id: bytes | None = None) -> DeviceRecord | None:
        """The active device whose EK has this Name or (when given) this key."""
        with self._sessions() as s:
            return s.scalars(select(DeviceRecord).where(
                _same_ek(ek_name, ek_key_id), DeviceRecord.revoked_at.is_(None))).first()

    # -- challenges and attestations ------------------------------------------------------------

    def consume_challenge(self, challenge_id: str, now: datetime) -> tuple[ChallengeRecord, bool] | None:
        """Mark a challenge used; return it and whether this call was the first to use it
        (None for an unknown id). Committed before the evidence is looked at, so a nonce is
        spent even when verification fails or the process dies."""
        with self.transaction() as s:
            res = s.execute(update(ChallengeRecord)
                            .where(ChallengeRecord.id == challenge_id,
                                   ChallengeRecord.consumed_at.is_(None))
                            .values(consumed_at=now))
            first = _rowcount(res) == 1
            record = s.get(ChallengeRecord, challenge_id)
        return None if record is None else (record, first)

    def record_attestation(self, record: AttestationRecord) -> int:
        with self.transaction() as s:
            s.add(record)
            s.flush()
            return record.id

    def latest_attestation(self, device_id: str) -> AttestationRecord | None:
        """A device's most recent attestation, passed or refused."""
        with self._sessions() as s:
            return s.scalars(select(AttestationRecord).where(AttestationRecord.device_id == device_id)
                             .order_by(AttestationRecord.id.desc()).limit(1)).first()

    def attestations(self, device_id: str) -> list[AttestationRecord]:
        """A device's attestations, oldest first."""
        with self._sessions() as s:
            return list(s.scalars(select(AttestationRecord)
                                  .where(AttestationRecord.device_id == device_id)
                                  .order_by(AttestationRecord.id)))


def _same_ek(ek_name: bytes, ek_key_id: bytes | None) -> Any:
    """Devices of this EK: the same Name, or the same key in another public area."""
    if ek_key_id is None:
        return DeviceRecord.ek_name == ek_name
    return or_(DeviceRecord.ek_name == ek_name, DeviceRecord.ek_key_id == ek_key_id)


def _rowcount(result: Any) -> int:
    """Rows matched by an UPDATE (a CursorResult attribute the generic Result type hides)."""
    count: int = result.rowcount
    return count
