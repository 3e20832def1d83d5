"""The service's database schema (SQLAlchemy 2.x declarative tables), one class per table.

This is the schema at the newest migration (``migrations/versions``); Alembic revisions change
it, never ``create_all`` on a live database. Queries live in :mod:`.store`.

Nothing secret is stored in the clear: the credential secret and operator tokens are kept as
their SHA-256. Nonces are stored as they are; they are public by design (the device receives
and signs them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

BEGUN: Final = "begun"
"""Enrollment state after ``/v1/enroll/begin``: waiting for the AK."""
AK_RECEIVED: Final = "ak"
"""After ``/v1/enroll/ak``: the credential challenge was sent, waiting for its secret."""
DONE: Final = "done"
FAILED: Final = "failed"
"""Terminal: a step failed verification or came too late; the enrollment cannot continue."""

TRUSTED: Final = "trusted"
"""Device status: the last attestation passed, within the device's freshness window."""
FAILED_STATUS: Final = "failed"
"""Device status: the last attestation was refused (its violations say which rules)."""
STALE: Final = "stale"
"""Device status: no passing attestation within the freshness window (or none yet)."""
REVOKED: Final = "revoked"
"""Device status: revoked by an operator, or replaced by a re-enrollment of its EK."""
STATUSES: Final = (TRUSTED, FAILED_STATUS, STALE, REVOKED)

CREDENTIAL_ACTIVATION: Final = "credential_activation"
"""How a device enrolled: its AK activated a credential made for its EK (the AK is in that TPM)."""
AK_CERTIFICATE: Final = "ak_certificate"
"""How a device enrolled: a configured CA certified its AK (the EK was recorded, not bound)."""

READ: Final = "read"
"""Token role: the operator API's GET endpoints."""
ADMIN: Final = "admin"
"""Token role: everything, writes included."""
ROLES: Final = (READ, ADMIN)


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
    type_annotation_map = {bytes: LargeBinary, datetime: UtcDateTime, dict[str, Any]: JSON,
                           list[Any]: JSON}


class EnrollmentRecord(Base):
    """One enrollment attempt: begin -> ak -> done (or failed), within its TTL."""

    __tablename__ = "enrollments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    ek_public: Mapped[bytes]
    ek_name: Mapped[bytes] = mapped_column(index=True)
    ek_key_id: Mapped[bytes | None]
    """The EK key's id (as ``DeviceRecord.ek_key_id``): enrollments are rate limited per EK key."""
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

    __table_args__ = (Index("ix_enrollments_ek_key_created", "ek_key_id", "created_at"),)


class DeviceRecord(Base):
    """An enrolled device: the AK bound to an EK at enrollment time, and its current status."""

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
    enrolled_by: Mapped[str] = mapped_column(String(24), default=CREDENTIAL_ACTIVATION,
                                             server_default=CREDENTIAL_ACTIVATION)
    """How the AK was tied to a TPM: ``credential_activation`` (with the EK) or ``ak_certificate``
    (a CA certified the AK; the EK was not bound to it)."""
    status: Mapped[str] = mapped_column(String(16), default=STALE, server_default=STALE, index=True)
    """trusted, failed, stale or revoked as of the last event; a trusted device whose
    ``fresh_until`` has passed reads as stale (see :func:`.store.effective_status`)."""
    status_since: Mapped[datetime | None]
    last_attestation_at: Mapped[datetime | None]
    last_attestation_id: Mapped[int | None]
    last_ok_at: Mapped[datetime | None]
    fresh_until: Mapped[datetime | None]
    """The end of the freshness window of the last passing attestation."""
    freshness: Mapped[float | None] = mapped_column(Float)
    """Seconds a passing attestation keeps this device trusted (overrides its policies')."""
    reenroll_allowed: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    """An operator allowed this EK one new enrollment (the lost-AK case); consumed by it."""
    replaced_by: Mapped[str | None] = mapped_column(String(64))
    """The device that re-enrolled this EK (and revoked this one)."""
    ima_offset: Mapped[int | None]
    """Where the device's IMA list continues: the byte offset the state of its latest
    attestation (when it passed with an IMA list) ends at; NULL: send the whole list."""

    __table_args__ = (
        Index("ux_devices_active_ek", "ek_name", unique=True,
              sqlite_where=text("revoked_at IS NULL"), postgresql_where=text("revoked_at IS NULL")),
        Index("ux_devices_active_ek_key", "ek_key_id", unique=True,
              sqlite_where=text("revoked_at IS NULL"), postgresql_where=text("revoked_at IS NULL")),
        Index("ix_devices_enrolled", "enrolled_at", "id"),
    )


class ChallengeRecord(Base):
    """A single-use attestation nonce issued to one device."""

    __tablename__ = "challenges"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    nonce: Mapped[bytes]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    consumed_at: Mapped[datetime | None]
    replayed_at: Mapped[datetime | None]
    """When the spent challenge was first answered again (that answer is recorded, later ones
    are not)."""

    __table_args__ = (Index("ix_challenges_device_created", "device_id", "created_at"),)


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
    """What the evidence proved: bank, PCR values (hex), clock, event-log summary (also kept
    for an attestation refused by policy: what was seen)."""
    policies: Mapped[list[Any] | None]
    """``[{"name", "version"}]`` of the policies the evidence was judged by."""
    violations: Mapped[list[Any] | None]
    """Every policy violation (``Violation.to_dict()`` with the policy's name)."""
    state: Mapped[dict[str, Any] | None]
    """The machine state the event log showed (``EventLogResult.state.summary()``), bounded."""


class TokenRecord(Base):
    """An operator's bearer token; only its SHA-256 is kept."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(8))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None]


class SessionRecord(Base):
    """A dashboard login: a browser session bound to the operator token it was opened with.

    The browser holds a random session secret in a cookie; the row keeps its SHA-256 only.
    Revoking the token ends its sessions; logging out deletes the row."""

    __tablename__ = "dashboard_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """SHA-256 (hex) of the session secret."""
    token_id: Mapped[str] = mapped_column(ForeignKey("tokens.id"), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class AuditRecord(Base):
    """One operator action: who, what, when, on what."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[dict[str, Any] | None]


class DeviceTag(Base):
    """A label on a device; policies can be assigned to tags."""

    __tablename__ = "device_tags"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class PolicyRecord(Base):
    """One version of a named policy document; versions are never changed, only added."""

    __tablename__ = "policies"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    document: Mapped[dict[str, Any]]
    """``tpm2_attest.policy.Policy.to_dict()``."""
    freshness: Mapped[float | None] = mapped_column(Float)
    """Seconds a passing attestation under this policy keeps a device trusted."""
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(128))

    __table_args__ = (UniqueConstraint("name", "version", name="uq_policies_name_version"),)


class PolicyAssignment(Base):
    """Which policy applies to the fleet (``default``), to a tag, or to one device."""

    __tablename__ = "policy_assignments"

    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    """``default``, ``tag`` or ``device``."""
    target: Mapped[str] = mapped_column(String(64), primary_key=True)
    """The tag or device id; empty for ``default``."""
    policy_name: Mapped[str] = mapped_column(String(64), index=True)
    assigned_at: Mapped[datetime]
    assigned_by: Mapped[str] = mapped_column(String(128))


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
    "ROLES",
    "STALE",
    "STATUSES",
    "TRUSTED",
    "AttestationRecord",
    "AuditRecord",
    "Base",
    "ChallengeRecord",
    "DeviceRecord",
    "DeviceTag",
    "EnrollmentRecord",
    "PolicyAssignment",
    "PolicyRecord",
    "SessionRecord",
    "TokenRecord",
    "UtcDateTime",
]
