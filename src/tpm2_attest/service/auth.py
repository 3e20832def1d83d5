"""Operator authentication: bearer tokens with a role (``read`` or ``admin``).

A token is shown once, when it is made; the database keeps its SHA-256 only. Requests to the
operator API carry ``Authorization: Bearer <token>``: none or an unknown/revoked token is 401,
a ``read`` token on a write endpoint 403. Device endpoints need no token: a device proves
itself by its TPM.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy.orm import Session

from . import store
from .errors import ServiceCode, ServiceError
from .tables import ADMIN, READ, ROLES, TokenRecord

TOKEN_PREFIX: Final = "tpa_"
"""Every token starts so (easy to spot in a leaked file, and by secret scanners)."""


@dataclass(frozen=True)
class Operator:
    """Who made an operator request: the token's name and role."""

    name: str
    role: str

    @property
    def actor(self) -> str:
        """How the audit log names this operator."""
        return f"token:{self.name}"


def new_token() -> str:
    """A fresh token: the prefix and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def create_token(s: Session, name: str, role: str, actor: str, now: datetime) -> tuple[TokenRecord, str]:
    """Store a new token and audit it (not committed); returns the record and the token, which
    exists nowhere else from here on."""
    if role not in ROLES:
        raise ServiceError(ServiceCode.INVALID_REQUEST, f"role must be one of {', '.join(ROLES)}")
    token = new_token()
    record = TokenRecord(id=secrets.token_hex(8), name=name, role=role, token_hash=store.token_hash(token),
                         created_at=now, created_by=actor[:128])
    store.add_token(s, record)
    store.audit(s, now, actor, "token.create", name, {"role": role})
    return record, token


def authenticate(s: Session, authorization: str | None, role: str) -> Operator:
    """The operator behind an ``Authorization`` header, allowed ``role``; else ServiceError."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ServiceError(ServiceCode.UNAUTHORIZED, "the operator API needs 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": "Bearer"})
    record = store.token_for(s, token) if len(token) <= 256 else None
    if record is None:
        raise ServiceError(ServiceCode.UNAUTHORIZED, "unknown or revoked token",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    if role == ADMIN and record.role != ADMIN:
        raise ServiceError(ServiceCode.FORBIDDEN, f"token {record.name!r} has role {record.role}; this needs admin")
    return Operator(record.name, record.role)


__all__ = ["ADMIN", "READ", "TOKEN_PREFIX", "Operator", "authenticate", "create_token", "new_token"]
